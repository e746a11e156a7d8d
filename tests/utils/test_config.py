"""YAML configs and value checks: repeated keys, non-finite numbers and syntax errors are one-line errors
naming the file, the key and the line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from refineseg.errors import ConfigError
from refineseg.utils.config import build_config, check_values, load_yaml, option, read_yaml


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def refused(path: Path) -> str:
    """load_yaml's one-line ConfigError message for ``path`` (which it must name)."""
    with pytest.raises(ConfigError) as err:
        load_yaml(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message.removeprefix(f"{path}: ")


@pytest.mark.parametrize(
    "text, want",
    [
        ("lr: 0.1\nbatch_size: 4\nlr: 0.2\n", "line 3, column 1: duplicate key 'lr' (first on line 1)"),
        ("model:\n  name: a\n  width: 2\n  name: b\n", "line 4, column 3: duplicate key 'name' (first on line 2)"),
        ("weights: {a: 1, a: 2}\n", "line 1, column 17: duplicate key 'a' (first on line 1)"),
    ],
)
def test_repeated_key_is_refused_naming_key_and_line(tmp_path, text, want):
    assert refused(write(tmp_path, text)) == want


def test_merge_keys_may_be_overridden(tmp_path):
    path = write(tmp_path, "base: &b {x: 1, y: 2}\nrun:\n  <<: *b\n  x: 3\n")
    assert load_yaml(path) == {"base": {"x": 1, "y": 2}, "run": {"x": 3, "y": 2}}


@pytest.mark.parametrize(
    "text, want",
    [
        ("lr: .nan\n", "line 1, column 5: lr: .nan is not a finite number"),
        ("iters: 10\nweight_decay: -.inf\n", "line 2, column 15: weight_decay: -.inf is not a finite number"),
        ("scales: [0.5, 1.0, .Inf]\n", "line 1, column 20: scales: .Inf is not a finite number"),
        ("lr: 1.0e+400\n", "line 1, column 5: lr: 1.0e+400 is not a finite number"),  # overflows to inf
        ("loss:\n  weights:\n    - 1.0\n    - .NaN\n", "line 4, column 7: weights: .NaN is not a finite number"),
    ],
)
def test_non_finite_number_is_refused_naming_the_key(tmp_path, text, want):
    assert refused(write(tmp_path, text)) == want


@pytest.mark.parametrize(
    "text, want",
    [
        ("lr: 0.1\n  crop: 512\n", "invalid YAML: line 2, column 7: mapping values are not allowed here"),
        ("scales: [1.0, 2.0\n", "invalid YAML: line 2, column 1: expected ',' or ']', but got '<stream end>'"),
        ("a: 'open\n", "invalid YAML: line 2, column 1: found unexpected end of stream"),
        ("- lr\n- 0.1\n", "expected a mapping of option names to values"),
    ],
)
def test_syntax_error_names_file_and_line(tmp_path, text, want):
    assert refused(write(tmp_path, text)).startswith(want)


def test_plain_config_still_loads(tmp_path):
    assert load_yaml(write(tmp_path, "lr: 1e-3\nscales: [0.5, 1.0]\nname: nan\n")) == {
        "lr": "1e-3",
        "scales": [0.5, 1.0],
        "name": "nan",
    }  # YAML 1.1: 1e-3 is text, "nan" is a word
    assert load_yaml(write(tmp_path, "", "empty.yaml")) == {}
    assert read_yaml(write(tmp_path, "- a\n- b\n", "list.yaml")) == ["a", "b"]


def test_unreadable_file_is_one_line(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00")
    assert refused(path).startswith("cannot read it")


@dataclasses.dataclass
class Small:
    lr: float = option(0.1, "learning rate")
    scales: list[float] = option([1.0], "scales")
    ratio: float | None = option(None, "optional number")


@pytest.mark.parametrize(
    "values, want",
    [
        ({"lr": float("nan")}, "here: lr: expected a finite number, got nan"),
        ({"scales": [1.0, float("inf")]}, "here: scales: expected a finite number, got inf"),
        ({"lr": "1e999"}, "here: lr: expected a finite number, got '1e999'"),
        ({"ratio": float("-inf")}, "here: ratio: expected a number or null, got -inf"),
    ],
)
def test_value_checks_refuse_non_finite_numbers(values, want):
    with pytest.raises(ConfigError) as err:
        check_values(Small, values, "here")
    assert str(err.value) == want
    assert check_values(Small, {"lr": "2e-4", "ratio": None}, "here") == {"lr": 2e-4, "ratio": None}


def test_command_line_nan_is_refused_naming_the_flag():
    from refineseg.cli.app import build_parser
    from refineseg.cli.evaluate import EvalConfig

    args = build_parser().parse_args(
        ["evaluate", "--checkpoint", "ckpt", "--dataset", "synthetic", "--boundary-ratio", "nan"]
    )
    with pytest.raises(ConfigError, match="^command line: boundary_ratio: expected a finite number, got nan$"):
        build_config(EvalConfig, args, None)


def test_cli_reports_a_bad_config_in_one_line(tmp_path, run_cli):
    path = write(tmp_path, "checkpoint: ckpt\ndataset: synthetic\nboundary_ratio: 0.02\nboundary_ratio: .nan\n")
    proc = run_cli("evaluate", "--config", str(path), check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert lines == [f"error: {path}: line 4, column 1: duplicate key 'boundary_ratio' (first on line 3)"]
