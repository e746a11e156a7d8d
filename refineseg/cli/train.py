"""``refineseg train``: one process or DDP under torchrun; exit 75 when stopped by a signal."""

from __future__ import annotations

import argparse

from refineseg.cli.common import dataclass_command
from refineseg.training import TrainConfig, train
from refineseg.training.resume import train_config


def run_train(args: argparse.Namespace) -> int | None:
    result = train(train_config(args, args.config))  # on --resume, options left out come from OUT/config.yaml
    if result.preempted:  # stopped on a signal; train() printed the step and how to resume
        return result.exit_code
    saved = [str(path) for path in (result.best, result.last) if (path / "model.safetensors").is_file()]
    print(f"best val mIoU {result.best_miou:.4f}; checkpoints: {', '.join(saved) or 'none written'}")
    return None


def register(sub) -> None:
    dataclass_command(sub, "train", "train a model (DDP under torchrun)", TrainConfig, run_train)
