"""The ``refineseg`` command line: a thin layer of argument parsing over the library.

Every user-facing error (:class:`~refineseg.errors.RefineSegError`) is printed as one line,
``error: <file>: <cause>``, with exit status 2 and no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from .errors import RefineSegError, one_line

Handler = Callable[[argparse.Namespace], int | None]


def _cmd_models(args: argparse.Namespace) -> None:
    from .models import list_models
    from .profiling import summarize_model
    from .visualize import model_table

    names = args.names or list_models()
    rows = [summarize_model(n, args.num_classes, args.size, args.size) for n in names]
    for row in rows:
        row["GMACs"] = round(row["GMACs"], 2)
    print(model_table(rows, ["model", "params", "GMACs", "output"]))


def _cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(args.config, args.out)


def _cmd_train(args: argparse.Namespace) -> None:
    from .config_utils import build_config
    from .training import TrainConfig, train

    result = train(build_config(TrainConfig, args, args.config))
    print(f"best val mIoU {result['best_miou']:.4f}; checkpoints in {result['last']} and {result['best']}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from .config_utils import build_config
    from .evaluation import EvalConfig, run_evaluate

    run_evaluate(build_config(EvalConfig, args, args.config))


def _cmd_predict(args: argparse.Namespace) -> None:
    from .config_utils import build_config
    from .prediction import PredictConfig, run_predict

    run_predict(build_config(PredictConfig, args, args.config))


def _cmd_export(args: argparse.Namespace) -> None:
    from .config_utils import build_config
    from .export import ExportConfig, run_export

    run_export(build_config(ExportConfig, args, args.config))


def _cmd_make_synthetic(args: argparse.Namespace) -> None:
    from .data import write_synthetic

    write_synthetic(args.dir, num_train=args.num_train, num_val=args.num_val, size=args.size, seed=args.seed)
    print(f"wrote the synthetic dataset to {args.dir} (use --dataset folder --data-root {args.dir})")


def _dataclass_command(sub, name: str, help_text: str, module: str, cls_name: str, handler: Handler,
                       positional: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """A sub-command whose flags are the fields of a config dataclass (plus ``--config FILE``)."""
    import importlib

    from .config_utils import add_dataclass_arguments

    cls = getattr(importlib.import_module(f"refineseg.{module}"), cls_name)
    p = sub.add_parser(name, help=help_text, description=help_text)
    for field_name in positional:
        p.add_argument(field_name, nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--config", metavar="FILE", help="YAML file of options; flags given here override it")
    add_dataclass_arguments(p, cls, skip=positional)
    p.set_defaults(handler=handler)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refineseg", description="RefineNet semantic segmentation toolkit.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the model variants with parameters, GMACs and output shape")
    p.add_argument("names", nargs="*", help="variants to show (default: all)")
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--size", type=int, default=512, help="input side for the GMAC count (default 512)")
    p.set_defaults(handler=_cmd_models)

    _dataclass_command(sub, "train", "train a model (DDP under torchrun)", "training.config", "TrainConfig", _cmd_train)
    _dataclass_command(sub, "evaluate", "measure mIoU and friends of a checkpoint on a dataset split",
                       "evaluation", "EvalConfig", _cmd_evaluate)
    _dataclass_command(sub, "predict", "segment images; writes label PNGs and overlays", "prediction",
                       "PredictConfig", _cmd_predict, positional=("inputs",))

    _dataclass_command(sub, "export", "export a checkpoint to ONNX (dynamic batch, height and width)", "export",
                       "ExportConfig", _cmd_export)

    p = sub.add_parser("make-synthetic", help="write the built-in synthetic dataset in the folder layout")
    p.add_argument("dir", help="output folder")
    p.add_argument("--num-train", type=int, default=512)
    p.add_argument("--num-val", type=int, default=64)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_cmd_make_synthetic)

    p = sub.add_parser("demo", help="train, evaluate and predict on the synthetic dataset (what `make demo` runs)")
    p.add_argument("--config", default="configs/demo.yaml", help="training config (default configs/demo.yaml)")
    p.add_argument("--out", default=None, help="run directory (default: the config's `out`)")
    p.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    handler: Handler = args.handler
    try:
        return int(handler(args) or 0)
    except RefineSegError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except ImportError as e:  # an optional extra is missing; the message names the pip command
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
