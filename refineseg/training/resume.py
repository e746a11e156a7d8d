"""Resuming a run with its own options: ``OUT/config.yaml`` is the run's configuration.

``refineseg train --out DIR --resume`` continues the run in ``DIR`` with the options of
``DIR/config.yaml``; flags and ``--config`` keys given on that command line replace them, subject to:

* **Free** (:data:`FREE_KEYS`): how the run is carried out, not what it learns: the device, data
  workers, validation/checkpoint/log intervals, skipping the data check, channels-last, gradient
  checkpointing (and ``out``, ``resume``, ``overwrite``, ``override`` themselves). Never recorded.
* ``iters`` may grow: the poly schedule is stretched. The LR of step ``s`` becomes
  ``lr × (1 - s/iters) ** poly_power`` with the new ``iters`` from the resumed step on, so it
  jumps up there (from 0 when a finished run is extended) and decays to 0 at the new end.
  Recorded. Shrinking ``iters`` needs ``--override``; below the checkpoint's step it is an error.
* **Everything else** (model, dataset, data root, splits, crop, scales, batch size, accumulation,
  LR, decoder LR multiplier, momentum, weight decay, warm-up, poly power, clipping, loss and its
  options, class weights, amp, seed, sync BN, the synthetic dataset's size, initial weights)
  changes what the run means: a different value is refused with one line naming both values,
  unless ``--override`` is given; the change then takes effect from the resumed step and is
  logged and appended to ``DIR/config_changes.yaml`` (step, time, old and new values).
* **Fixed by the checkpoint** (:data:`FIXED_KEYS`): model, output stride, frozen BN, dropout and
  optimizer are stored in ``last/`` (architecture, optimizer buffers), so not even ``--override``
  changes them: start a new run, e.g. with ``--init-from DIR/last``.

The Python API (:func:`refineseg.training.train` with ``resume=True``) applies the same check to
every field of the :class:`TrainConfig` it is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import yaml

from refineseg.errors import ConfigError
from refineseg.training.config import TrainConfig
from refineseg.training.run_dir import has_checkpoint
from refineseg.utils.config import build_config, check_values, config_from_values, load_yaml
from refineseg.utils.files import write_text

log = logging.getLogger("refineseg.train")

CONFIG_NAME = "config.yaml"
CHANGES_NAME = "config_changes.yaml"
#: Options of one invocation, never taken from config.yaml.
INVOCATION_KEYS = ("out", "resume", "overwrite", "override")
#: Options a resumed run may change freely: how it runs, not what it learns.
FREE_KEYS = (
    *INVOCATION_KEYS,
    "device",
    "workers",
    "val_interval",
    "ckpt_interval",
    "log_interval",
    "skip_data_check",
    "channels_last",
    "grad_checkpointing",
)
#: Options the checkpoint itself fixes (the model's architecture, the optimizer's buffers).
FIXED_KEYS = ("model", "output_stride", "freeze_bn", "dropout", "optimizer")
#: Options holding file paths: the same file spelled differently is no change.
PATH_KEYS = ("data_root", "backbone_weights", "init_from", "class_weights")


def resumes_run(out: str | os.PathLike, resume: bool | str) -> bool:
    """Whether ``resume`` continues a run in ``out``: set, and ``out`` holds a checkpoint."""
    return bool(resume) and has_checkpoint(out)


def saved_options(out: str | os.PathLike) -> dict[str, Any] | None:
    """The options in ``out/config.yaml``, type-checked (keys this version lacks are dropped); None without one."""
    path = Path(out) / CONFIG_NAME
    if not path.is_file():
        return None
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = load_yaml(path)
    dropped = sorted(set(values) - names)
    if dropped:
        log.info("note: %s: ignoring options this version does not know: %s", path, ", ".join(dropped))
    return check_values(TrainConfig, {k: v for k, v in values.items() if k in names}, str(path))


def train_config(args: argparse.Namespace, config_file: str | None = None) -> TrainConfig:
    """``build_config`` for ``refineseg train``; on a resume, options given neither as flags nor in
    ``config_file`` come from the run's ``OUT/config.yaml``, so ``train --out DIR --resume`` alone continues it.

    What was given is checked against the run later, in :func:`check_resume` (under the run's lock).
    """
    config = build_config(TrainConfig, args, config_file)
    saved = saved_options(config.out) if resumes_run(config.out, config.resume) else None
    if saved is None:
        return config
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k for k in vars(args) if k in names} | (set(load_yaml(config_file)) & names if config_file else set())
    values = {k: v for k, v in saved.items() if k not in INVOCATION_KEYS}
    values.update({k: getattr(config, k) for k in given | set(INVOCATION_KEYS)})
    return config_from_values(TrainConfig, values, f"{Path(config.out) / CONFIG_NAME} + command line")


def _same(key: str, a: Any, b: Any) -> bool:
    if key in PATH_KEYS and isinstance(a, str) and isinstance(b, str):
        return os.path.abspath(a) == os.path.abspath(b)
    return a == b


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "unset" if value is None else str(value)


def _differ(changes: dict[str, tuple[Any, Any]], path: Path) -> str:
    """``--crop 128 differs from the run's 96, --lr 0.1 from its 0.01 (path)``."""
    parts = [
        f"--{key.replace('_', '-')} {_show(new)} " + ("differs from the run's " if i == 0 else "from its ") + _show(old)
        for i, (key, (old, new)) in enumerate(changes.items())
    ]
    return f"{', '.join(parts)} ({path})"


def check_resume(config: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """The options a resume of ``config.out`` changes, as ``{key: (run's value, new value)}``; raises a
    one-line ConfigError for a change that is not allowed (see the module docstring). Free options are left out.

    ``config.amp`` must be resolved already (config.yaml records the resolved value). Reads, never writes.
    """
    saved = saved_options(config.out) if resumes_run(config.out, config.resume) else None
    if not saved:
        return {}
    path = Path(config.out) / CONFIG_NAME
    changes = {
        key: (old, getattr(config, key))
        for key, old in saved.items()
        if key not in FREE_KEYS and not _same(key, old, getattr(config, key))
    }
    refused = {k: v for k, v in changes.items() if not (k == "iters" and v[1] > v[0])}
    fixed = {k: v for k, v in refused.items() if k in FIXED_KEYS}
    if fixed:
        raise ConfigError(
            f"{_differ(fixed, path)}; the checkpoint fixes {'it' if len(fixed) == 1 else 'them'}, "
            f"so not even --override can: start a new run (--init-from {Path(config.out) / 'last'} "
            "keeps the weights)"
        )
    if refused and not config.override:
        raise ConfigError(
            f"{_differ(refused, path)}; pass --override to change {'it' if len(refused) == 1 else 'them'}"
        )
    return changes


def record_changes(out: str | os.PathLike, changes: dict[str, tuple[Any, Any]], step: int, override: bool) -> None:
    """Log the options a resume changed and append them to ``out/config_changes.yaml`` (rank 0, after every check)."""
    if not changes:
        return
    path = Path(out) / CHANGES_NAME
    for key, (old, new) in changes.items():
        why = f"the poly schedule is stretched to end at step {new}" if key == "iters" and new > old else "--override"
        log.info(
            "resuming at step %d with --%s %s instead of the run's %s (%s); recorded in %s",
            step,
            key.replace("_", "-"),
            _show(new),
            _show(old),
            why,
            path,
        )
    history = (yaml.safe_load(path.read_text()) or []) if path.is_file() else []
    history.append(
        {
            "step": step,
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "override": override,
            "changes": {key: {"from": old, "to": new} for key, (old, new) in changes.items()},
        }
    )
    write_text(path, yaml.safe_dump(history, sort_keys=False))
