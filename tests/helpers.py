"""Helpers the tests import (``from helpers import make_model``): the repository root, reference manifests,
random state dicts, small models, synthetic batches, free ports, gloo groups.

Fixtures live in ``conftest.py`` (``checkpoint``, ``one_thread``, ``run_cli``, ``gloo_group``); what is here is
plain functions and constants, for module-level code, parametrization and other fixtures. ``tests/`` is on
``sys.path`` because ``tests/conftest.py`` is (pytest's default ``prepend`` import mode), in the test
processes and in the processes they spawn.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import refineseg

#: The repository root (``tests/..``), for files outside the tests: ``ROOT / "configs"``, ``ROOT / "docs"``.
ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "tests" / "manifests"
CLASS_NAMES = ["background", "road", "car", "tree"]
PALETTE = [(0, 0, 0), (128, 64, 128), (0, 0, 142), (107, 142, 35)]


@functools.cache
def manifest(name: str) -> dict[str, Any]:
    """``tests/manifests/<name>.json``: ``{"source", "num_classes", "num_parameters", "state_dict": {key: shape}}``."""
    return json.loads((MANIFESTS / f"{name}.json").read_text())


def random_state(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of the given shapes: He-scaled convs, BN scales and variances in [0.5, 1.5)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        prefix, _, leaf = key.rpartition(".")
        is_bn = f"{prefix}.running_mean" in shapes
        if leaf == "num_batches_tracked":
            t = torch.tensor(0)
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            t = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
        elif is_bn and leaf in ("weight", "running_var"):
            t = torch.rand(shape, generator=g) + 0.5
        else:  # BN bias / running_mean, conv and linear biases, linear weights
            t = torch.randn(shape, generator=g) * 0.1
        state[key] = t
    return state


def make_model(
    name: str = "lw_refinenet_mbv2",
    class_names: Sequence[str] = CLASS_NAMES,
    palette: Sequence[tuple[int, int, int]] | None = PALETTE,
    seed: int = 0,
    warm_batch_norm: bool = False,
) -> refineseg.SegmentationModel:
    """A small untrained model in eval mode whose predictions vary over classes and pixels.

    ``warm_batch_norm`` moves BN running statistics away from (0, 1) with a few train-mode passes.
    The classifier bias is set so every class has mean logit 0 on random inputs.
    """
    torch.manual_seed(seed)
    options = {"palette": list(palette)} if palette else {}
    model = refineseg.create_model(name, num_classes=len(class_names), class_names=list(class_names), **options)
    with torch.no_grad():
        if warm_batch_norm:
            model.train()
            for _ in range(3):
                model(torch.randn(2, 3, 64, 64) * 2 + 0.5)
        model.eval()
        model.head.conv.bias.zero_()
        model.head.conv.bias -= model(torch.randn(2, 3, 64, 64)).mean((0, 2, 3))
    return model


class Exported(NamedTuple):
    """A model and its ONNX file written by ``refineseg export`` (the ``exported_mbv2`` fixture)."""

    model: refineseg.SegmentationModel
    checkpoint: Path
    path: Path
    stdout: str
    stderr: str


def saved_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``save_pretrained`` directory, read straight from its safetensors file."""
    from safetensors.torch import load_file

    return load_file(str(Path(directory) / "model.safetensors"))


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_worker(rank: int, world_size: int, port: int, fn: Callable[..., None], args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def run_gloo_group(fn: Callable[..., None], world_size: int, *args: Any) -> None:
    """Run ``fn(rank, *args)`` in ``world_size`` processes joined in one gloo process group.

    ``fn`` must be a module-level function (it is pickled into the spawned processes). Tests get this
    through the ``gloo_group`` fixture.
    """
    mp.spawn(_gloo_worker, args=(world_size, free_port(), fn, args), nprocs=world_size, join=True)


def synthetic_batch(n: int, split: str = "train", size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` normalized synthetic images (n, 3, size, size) and their masks (n, size, size), on the CPU."""
    from refineseg.data import SyntheticSegmentation, eval_transform

    dataset = SyntheticSegmentation(split, n, size, transform=eval_transform())
    images, masks = zip(*(dataset[i] for i in range(n)))
    return torch.stack(images), torch.stack(masks)


def briefly_trained_model(device: str | torch.device = "cpu") -> refineseg.SegmentationModel:
    """lw_refinenet18 fitted briefly (30 Adam steps of 4 images) to 64 px synthetic scenes, in eval mode:
    confident, 'trained-like' logits for comparing inference paths."""
    from refineseg.data import SYNTHETIC_CLASSES

    torch.manual_seed(0)
    x, y = (t.to(device) for t in synthetic_batch(32))
    model = (
        refineseg.create_model(
            "lw_refinenet18", num_classes=len(SYNTHETIC_CLASSES), dropout=0.0, class_names=list(SYNTHETIC_CLASSES)
        )
        .to(device)
        .train()
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(30):
        index = torch.arange(step * 4, step * 4 + 4) % len(x)
        loss = torch.nn.functional.cross_entropy(model(x[index]), y[index], ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


#: A tiny training run (seconds on a CPU), the shared part of the training tests: as ``TrainConfig`` fields
#: (:func:`tiny_train_config`) and as ``refineseg train`` flags (``TINY_TRAIN``).
_TINY_RUN = {
    "model": "lw_refinenet_mbv2",
    "dataset": "synthetic",
    "crop": 64,
    "batch_size": 2,
    "lr": 0.001,
    "decoder_lr_mult": 1.0,
    "warmup_iters": 0,
    "synthetic_train": 16,
    "synthetic_val": 2,
    "synthetic_size": 64,
    "workers": 0,
    "log_interval": 1,
    "val_interval": 0,
}
TINY_TRAIN = [arg for key, value in _TINY_RUN.items() for arg in (f"--{key.replace('_', '-')}", str(value))]


def tiny_train_config(**changes: Any):
    """The tiny run as a ``TrainConfig``, with ``changes`` (other fields, or other values)."""
    from refineseg.training import TrainConfig

    return TrainConfig(**{**_TINY_RUN, **changes})


#: Headless Chromium for the page tests (Debian's chromium + chromium-driver; .ci/run installs them).
BROWSER = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
CHROMEDRIVER = shutil.which("chromedriver")
NEEDS_CHROMIUM = [
    pytest.mark.skipif(BROWSER is None, reason="Chromium is not installed (apt-get install chromium chromium-driver)"),
    pytest.mark.skipif(CHROMEDRIVER is None, reason="chromedriver is not installed (apt-get install chromium-driver)"),
]


def chromium(window_size: str = "1400,1000"):
    """A headless Chromium WebDriver that keeps the browser console log (``get_log("browser")``)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={window_size}",
        "--disable-extensions",
        "--no-first-run",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    browser.set_page_load_timeout(30)
    browser.set_script_timeout(30)
    return browser
