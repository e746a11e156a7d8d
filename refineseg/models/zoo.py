"""The model zoo: trained weights shipped inside the package, each one a row of data with its numbers.

Modelled on torchvision's ``WeightsEnum``: every entry (:class:`ZooEntry`) names its file and
SHA-256, the dataset and classes it was trained on, the recipe (training config), the commit, its
validation metrics and a licence note. The entries live in one index,
``refineseg/models/zoo_weights/index.json``; each entry's checkpoint is the folder
``zoo_weights/<name>/`` (``model.safetensors`` + ``config.json``, as written by ``save_pretrained``),
declared as package data so wheels and editable installs both carry it.

* ``refineseg.from_pretrained("<name>")`` and ``--checkpoint <name>`` load an entry offline; both
  files are SHA-256 checked first (:func:`resolve_checkpoint`). A folder of that name wins.
* ``refineseg zoo`` lists the entries with their numbers.
* :func:`add_entry` (run by ``benchmarks/zoo_add.py``) writes an entry from a trained checkpoint,
  its evaluation ``metrics.json`` and its recipe; the weights are stored as float16 only when the
  float16 model's val mIoU is within :data:`FP16_MAX_DELTA` points of the float32 one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from refineseg.errors import CheckpointError, RefineSegError, file_error
from refineseg.models.config import ModelConfig
from refineseg.models.hub import sha256_file
from refineseg.models.segmentation import CONFIG_NAME, WEIGHTS_NAME
from refineseg.models.weights import StateDict, load_weights_file, save_weights_file
from refineseg.utils.config import load_yaml
from refineseg.utils.files import write_text

#: The zoo folder inside the package (tests point it elsewhere); holds :data:`INDEX_NAME` and ``<name>/``.
ZOO_DIR = Path(__file__).resolve().parent / "zoo_weights"
INDEX_NAME = "index.json"
#: All zoo files together stay under this many bytes (the wheel carries them).
MAX_ZOO_BYTES = 15_000_000
#: float16 weights are shipped only when val mIoU moves by less than this many points (0.1 = 0.001 mIoU).
FP16_MAX_DELTA = 0.1
#: Scalar metrics of ``metrics.json`` kept in an entry (fractions, as ``refineseg evaluate`` writes them).
METRIC_KEYS = ("mIoU", "aAcc", "mAcc", "mDice", "fwIoU", "mFscore", "mBoundaryIoU")
#: Default licence notes by dataset; any other dataset needs an explicit note.
LICENCES = {
    "camvid": "CamVid: research use only",  # Brostow et al. 2008; the weights inherit the data's terms
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_BATCH_NORM_STATS = ("running_mean", "running_var")


@dataclass(frozen=True)
class ZooEntry:
    """One trained model of the zoo: where its weights are, how they were made, how well they score."""

    name: str  # what from_pretrained / --checkpoint accept, e.g. "lw_refinenet_mbv2_camvid"
    model: str  # the registry variant, e.g. "lw_refinenet_mbv2"
    file: str  # the weights, relative to the zoo folder: "<name>/model.safetensors"
    sha256: str  # of ``file``
    config_sha256: str  # of ``<name>/config.json``
    dataset: str
    classes: list[str]
    precision: str  # "float16" or "float32": the dtype of the stored weights (models load as float32)
    metrics: dict[str, float]  # val metrics of the stored weights, fractions: {"mIoU": 0.61, "IoU/road": ...}
    evaluation: dict[str, Any]  # how they were measured: split, mode, scales, images, fp32/fp16 mIoU
    recipe_file: str  # the training config it came from, e.g. "configs/lw_refinenet_mbv2_camvid.yaml"
    recipe: dict[str, Any]  # that config's contents
    commit: str  # git commit of the code that trained it
    licence: str
    notes: str = ""

    @property
    def directory(self) -> str:
        """The checkpoint folder, relative to the zoo folder."""
        return str(Path(self.file).parent)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], origin: str | os.PathLike = INDEX_NAME) -> ZooEntry:
        """An entry of the index; CheckpointError naming ``origin`` when fields are missing or unknown."""
        known = {f.name for f in dataclasses.fields(cls)}
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        label = data.get("name", "?") if isinstance(data, Mapping) else "?"
        if not isinstance(data, Mapping) or set(data) - known or required - set(data):
            got = set(data) if isinstance(data, Mapping) else set()
            problems = [
                f"missing {', '.join(sorted(required - got))}" if required - got else "",
                f"unknown {', '.join(sorted(got - known))}" if got - known else "",
            ]
            raise file_error(
                CheckpointError,
                origin,
                f"zoo entry {label}: bad fields ({'; '.join(p for p in problems if p) or 'not an object'})",
            )
        entry = cls(**data)
        file = Path(entry.file)
        if not _NAME.match(entry.name) or file.is_absolute() or ".." in file.parts or len(file.parts) != 2:
            raise file_error(CheckpointError, origin, f"zoo entry {label}: bad name or file {entry.file!r}")
        return entry


def zoo_dir() -> Path:
    """The zoo folder (:data:`ZOO_DIR`)."""
    return ZOO_DIR


def load_index(root: str | os.PathLike | None = None) -> dict[str, ZooEntry]:
    """``{name: entry}`` from the zoo's index; an absent index is an empty zoo."""
    path = Path(root or zoo_dir()) / INDEX_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        rows = data["entries"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise file_error(CheckpointError, path, f"unreadable model-zoo index ({type(e).__name__}: {e})") from e
    if not isinstance(rows, list):
        raise file_error(CheckpointError, path, "unreadable model-zoo index (entries must be a list)")
    entries = [ZooEntry.from_dict(row, path) for row in rows]
    return {entry.name: entry for entry in entries}


def list_zoo() -> list[ZooEntry]:
    """Every zoo entry, sorted by name."""
    return [entry for _, entry in sorted(load_index().items())]


def zoo_names() -> list[str]:
    return sorted(load_index())


def _known(names: list[str]) -> str:
    return f"model-zoo names: {', '.join(names)}" if names else "the model zoo is empty"


def get_entry(name: str) -> ZooEntry:
    """The entry called ``name``; CheckpointError listing the zoo's names otherwise."""
    entries = load_index()
    if name not in entries:
        raise CheckpointError(f"{name}: not a model-zoo name; {_known(sorted(entries))} (see `refineseg zoo`)")
    return entries[name]


def check_sha256(path: Path, expected: str, name: str) -> None:
    """CheckpointError naming ``path`` and both hashes unless the file's SHA-256 is ``expected``."""
    if not path.is_file():
        raise file_error(CheckpointError, path, f"not found (file of model-zoo entry {name}; reinstall refineseg)")
    actual = sha256_file(path)
    if actual != expected:
        raise file_error(
            CheckpointError,
            path,
            f"SHA-256 mismatch for model-zoo entry {name}: expected {expected}, "
            f"got {actual} (the file is corrupted or was changed; reinstall refineseg)",
        )


def verify_entry(entry: ZooEntry, root: str | os.PathLike | None = None) -> Path:
    """The entry's checkpoint folder, after checking the SHA-256 of its weights and config."""
    root = Path(root or zoo_dir())
    check_sha256(root / entry.file, entry.sha256, entry.name)
    check_sha256(root / entry.directory / CONFIG_NAME, entry.config_sha256, entry.name)
    return root / entry.directory


def resolve_checkpoint(source: str | os.PathLike) -> Path:
    """A checkpoint folder for ``source``: an existing path as is, else a zoo entry's verified folder.

    Neither: one-line CheckpointError listing the zoo's names.
    """
    path = Path(source)
    if path.exists():
        return path
    entries = load_index()
    name = os.fspath(source)
    if name in entries:
        return verify_entry(entries[name])
    raise file_error(
        CheckpointError,
        path,
        f"not found (expected a directory written by save_pretrained or a model-zoo name; {_known(sorted(entries))})",
    )


# ---------------------------------------------------------------------------------------------
# Adding an entry (benchmarks/zoo_add.py)


def half_state_dict(state: Mapping[str, torch.Tensor]) -> StateDict:
    """float32 tensors as float16, except BatchNorm running statistics and values beyond float16's range."""
    limit = torch.finfo(torch.float16).max
    out = {}
    for key, tensor in state.items():
        convert = (
            tensor.dtype == torch.float32
            and not key.endswith(_BATCH_NORM_STATS)
            and (tensor.numel() == 0 or float(tensor.abs().max()) <= limit)
        )
        out[key] = tensor.half() if convert else tensor
    return out


def miou(metrics: Mapping[str, Any]) -> float:
    """The ``mIoU`` of a ``metrics.json`` (a fraction); RefineSegError when it has none."""
    value = metrics.get("mIoU")
    if not isinstance(value, (int, float)):
        raise RefineSegError(f"metrics without a numeric mIoU (got {value!r})")
    return float(value)


def choose_precision(fp32_metrics: Mapping[str, Any], fp16_metrics: Mapping[str, Any] | None) -> str:
    """``"float16"`` when the float16 model's mIoU is within :data:`FP16_MAX_DELTA` points, else ``"float32"``."""
    if fp16_metrics is None:
        return "float32"
    delta = round(100 * abs(miou(fp16_metrics) - miou(fp32_metrics)), 6)  # in points; 0.1 is 0.1, not 0.0999...
    return "float16" if delta < FP16_MAX_DELTA else "float32"


def write_checkpoint(checkpoint: str | os.PathLike, directory: str | os.PathLike, precision: str) -> Path:
    """Copy a ``save_pretrained`` folder to ``directory``, its weights as ``precision`` (float16 or float32)."""
    if precision not in ("float16", "float32"):
        raise ValueError(f"precision must be float16 or float32, got {precision!r}")
    source, directory = Path(checkpoint), Path(directory)
    read_model_config(source)
    directory.mkdir(parents=True, exist_ok=True)
    write_text(directory / CONFIG_NAME, (source / CONFIG_NAME).read_text())
    state = load_weights_file(source / WEIGHTS_NAME)
    if precision == "float16":
        state = half_state_dict(state)
    save_weights_file(state, directory / WEIGHTS_NAME)
    return directory


def read_model_config(checkpoint: str | os.PathLike) -> ModelConfig:
    """The :class:`ModelConfig` of a ``save_pretrained`` folder (CheckpointError when absent or invalid)."""
    path = Path(checkpoint) / CONFIG_NAME
    if not path.is_file() or not (Path(checkpoint) / WEIGHTS_NAME).is_file():
        raise file_error(CheckpointError, checkpoint, "not a checkpoint directory (model.safetensors + config.json)")
    try:
        return ModelConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise file_error(CheckpointError, path, f"invalid model config ({e})") from e


def entry_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The scalar metrics of a ``metrics.json`` and each class's IoU as ``IoU/<class>``."""
    out = {key: float(metrics[key]) for key in METRIC_KEYS if isinstance(metrics.get(key), (int, float))}
    for row in metrics.get("per_class", []):
        if isinstance(row.get("IoU"), (int, float)):
            out[f"IoU/{row['name']}"] = float(row["IoU"])
    return out


def evaluation_info(fp32_metrics: Mapping[str, Any], fp16_metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """How the numbers were measured: split, mode, scales, flip, images and both precisions' mIoU."""
    config = fp32_metrics.get("config") or {}
    info = {key: fp32_metrics.get(key, config.get(key)) for key in ("split", "mode", "num_images")}
    info.update({key: config[key] for key in ("scales", "flip", "resize", "crop") if key in config})
    info["fp32_mIoU"] = miou(fp32_metrics)
    if fp16_metrics is not None:
        info["fp16_mIoU"] = miou(fp16_metrics)
    return info


def _display_path(path: str | os.PathLike) -> str:
    """``path`` relative to the working directory when inside it (``configs/x.yaml``), POSIX-style."""
    path = Path(path)
    if path.is_absolute() and path.is_relative_to(Path.cwd()):
        path = path.relative_to(Path.cwd())
    return path.as_posix()


def zoo_bytes(entries: Mapping[str, ZooEntry], root: Path) -> int:
    """Bytes of every entry's weights and config."""
    files = [root / e.file for e in entries.values()] + [root / e.directory / CONFIG_NAME for e in entries.values()]
    return sum(f.stat().st_size for f in files if f.is_file())


def write_index(entries: Mapping[str, ZooEntry], root: str | os.PathLike | None = None) -> Path:
    """Write the index (entries sorted by name), atomically."""
    path = Path(root or zoo_dir()) / INDEX_NAME
    rows = [entries[name].to_dict() for name in sorted(entries)]
    write_text(path, json.dumps({"entries": rows}, indent=2) + "\n")
    return path


@dataclass
class EntrySource:
    """What :func:`add_entry` builds an entry from: a trained checkpoint, its evaluation and its recipe."""

    checkpoint: str | os.PathLike  # a save_pretrained folder, e.g. runs/lw_refinenet_mbv2_camvid/best
    metrics: Mapping[str, Any]  # its metrics.json (float32), from `refineseg evaluate` on the val split
    recipe_file: str | os.PathLike  # the training config YAML
    fp16_metrics: Mapping[str, Any] | None = None  # the same evaluation of the float16 weights, if measured
    name: str | None = None  # default: the recipe file's stem
    commit: str = "unknown"
    licence: str | None = None  # default: LICENCES[dataset]
    notes: str = ""


def add_entry(source: EntrySource, root: str | os.PathLike | None = None, replace: bool = False) -> ZooEntry:
    """Write ``<root>/<name>/`` and its row in the index; returns the new entry.

    float16 weights when :func:`choose_precision` allows, float32 otherwise. Refused (nothing
    changed) when the name exists without ``replace``, or when the zoo would exceed :data:`MAX_ZOO_BYTES`.
    """
    root = Path(root or zoo_dir())
    config = read_model_config(source.checkpoint)
    name = source.name or Path(source.recipe_file).stem
    dataset = str(source.metrics.get("dataset") or "unknown")
    licence = source.licence or LICENCES.get(dataset.lower())
    if not _NAME.match(name):
        raise RefineSegError(f"{name!r}: a zoo name is letters, digits, '_', '.' and '-'")
    if licence is None:
        raise RefineSegError(f"no licence note known for dataset {dataset!r}: give one (--licence)")
    recipe = load_yaml(source.recipe_file)
    entries = load_index(root)
    if name in entries and not replace:
        raise RefineSegError(f"{name}: already in the model zoo ({root / INDEX_NAME}); pass --replace to overwrite")
    precision = choose_precision(source.metrics, source.fp16_metrics)
    staging = root / f".{name}.new"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        write_checkpoint(source.checkpoint, staging, precision)
        shipped = source.fp16_metrics if precision == "float16" else source.metrics
        entry = ZooEntry(
            name=name,
            model=config.name,
            file=f"{name}/{WEIGHTS_NAME}",
            sha256=sha256_file(staging / WEIGHTS_NAME),
            config_sha256=sha256_file(staging / CONFIG_NAME),
            dataset=dataset,
            classes=list(config.class_names),
            precision=precision,
            metrics=entry_metrics(shipped),
            evaluation=evaluation_info(source.metrics, source.fp16_metrics),
            recipe_file=_display_path(source.recipe_file),
            recipe=recipe,
            commit=source.commit,
            licence=licence,
            notes=source.notes,
        )
        others = {k: v for k, v in entries.items() if k != name}
        total = zoo_bytes(others, root) + sum(f.stat().st_size for f in staging.iterdir())
        if total > MAX_ZOO_BYTES:
            raise RefineSegError(
                f"{name}: the model zoo would hold {total / 1e6:.1f} MB, over its "
                f"{MAX_ZOO_BYTES / 1e6:g} MB budget ({precision} weights); nothing was changed"
            )
        shutil.rmtree(root / name, ignore_errors=True)
        staging.rename(root / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_index({**others, name: entry}, root)
    return entry
