"""The ``refineseg`` command line: a thin layer of argument parsing over the library.

Every user-facing error (:class:`~refineseg.errors.RefineSegError`) is printed as one line,
``error: <file>: <cause>``, with exit status 2 and no traceback. That includes a missing optional
extra (:class:`~refineseg.errors.MissingDependencyError`, naming the pip command): the library
imports onnx, onnxruntime, matplotlib, albumentations and tifffile only inside the functions that
need them, so importing this module loads none of them. Any other exception keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from refineseg.cli.check_data import CheckDataConfig, run_check_data
from refineseg.cli.demo import run_demo
from refineseg.data import write_synthetic
from refineseg.errors import DataCheckError, RefineSegError, one_line
from refineseg.evaluation.evaluate import EvalConfig, run_evaluate
from refineseg.inference.export import ExportConfig, run_export
from refineseg.inference.predict import PredictConfig, run_predict
from refineseg.models import list_models, model_spec
from refineseg.models.hub import fetch_weights, list_weights, parse_name, weights_name
from refineseg.models.profiling import summarize_model
from refineseg.report import MAX_SIDE, write_compare_report, write_report
from refineseg.report.visualize import model_table
from refineseg.training import TrainConfig, train
from refineseg.utils.config import add_dataclass_arguments, build_config
from refineseg.utils.files import is_write_failure, write_error

Handler = Callable[[argparse.Namespace], int | None]


def _cmd_models(args: argparse.Namespace) -> None:
    names = args.names or list_models()
    rows = [summarize_model(n, args.num_classes, args.size, args.size) for n in names]
    for row in rows:
        recipe = model_spec(row["model"]).recipe
        row.update(GMACs=round(row["GMACs"], 2), lr=f"{recipe.lr:g}", decoder_lr_mult=f"{recipe.decoder_lr_mult:g}",
                   warmup=recipe.warmup_iters, clip=f"{recipe.clip_grad_norm:g}")
    print(model_table(rows, ["model", "params", "GMACs", "output", "lr", "decoder_lr_mult", "warmup", "clip"]))


def _cmd_demo(args: argparse.Namespace) -> None:
    run_demo(args.config, args.out)


def _cmd_train(args: argparse.Namespace) -> int | None:
    result = train(build_config(TrainConfig, args, args.config))
    if result["preempted"]:  # stopped on a signal; train() printed the step and how to resume
        return result["exit_code"]
    saved = [str(result[name]) for name in ("best", "last") if (result[name] / "model.safetensors").is_file()]
    print(f"best val mIoU {result['best_miou']:.4f}; checkpoints: {', '.join(saved) or 'none written'}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    run_evaluate(build_config(EvalConfig, args, args.config))


def _count(text: str) -> int:
    """An argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _side(text: str) -> int:
    """An argparse type: a picture side in pixels, >= 16."""
    value = int(text)
    if value < 16:
        raise argparse.ArgumentTypeError(f"must be >= 16 px, got {value}")
    return value


def _cmd_report(args: argparse.Namespace) -> None:
    path = write_report(args.run_dir, out=args.out, worst=args.worst, best=args.best, max_side=args.max_side)
    print(f"Report: {path}")


def _cmd_compare(args: argparse.Namespace) -> None:
    path = write_compare_report(args.eval_a, args.eval_b, args.out, top=args.top, max_side=args.max_side)
    print(f"Comparison: {path}")


def _cmd_check_data(args: argparse.Namespace) -> None:
    run_check_data(build_config(CheckDataConfig, args, args.config))


def _cmd_predict(args: argparse.Namespace) -> int:
    """0, or 3 (EXIT_SOME_FAILED) when some inputs failed: they are listed in OUT/errors.txt."""
    return run_predict(build_config(PredictConfig, args, args.config)).exit_code


def _cmd_export(args: argparse.Namespace) -> None:
    run_export(build_config(ExportConfig, args, args.config))


def _cmd_make_synthetic(args: argparse.Namespace) -> None:
    write_synthetic(args.dir, num_train=args.num_train, num_val=args.num_val, size=args.size, seed=args.seed)
    print(f"wrote the synthetic dataset to {args.dir} (use --dataset folder --data-root {args.dir})")


def _cmd_weights(args: argparse.Namespace) -> None:
    print(model_table(list_weights(), ["name", "sha256", "url", "local"]))


def _cmd_weights_fetch(args: argparse.Namespace) -> None:
    for backbone, tag in [parse_name(name) for name in args.names]:  # every name checked before any download
        path, source = fetch_weights(backbone, tag)
        print(f"{weights_name(backbone, tag)}: {path} ({source}, SHA-256 verified)")


def _dataclass_command(sub, name: str, help_text: str, cls: type, handler: Handler,
                       positional: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """A sub-command whose flags are the fields of the config dataclass ``cls`` (plus ``--config FILE``)."""
    p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
    for field_name in positional:
        p.add_argument(field_name, nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--config", metavar="FILE", help="YAML file of options; flags given here override it")
    add_dataclass_arguments(p, cls, skip=positional)
    p.set_defaults(handler=handler)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refineseg", description="RefineNet semantic segmentation toolkit.",
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", allow_abbrev=False,
                       help="list the model variants: parameters, GMACs, output shape, default training recipe")
    p.add_argument("names", nargs="*", help="variants to show (default: all)")
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--size", type=int, default=512, help="input side for the GMAC count (default 512)")
    p.set_defaults(handler=_cmd_models)

    _dataclass_command(sub, "train", "train a model (DDP under torchrun)", TrainConfig, _cmd_train)
    _dataclass_command(sub, "evaluate", "measure mIoU and friends of a checkpoint on a dataset split",
                       EvalConfig, _cmd_evaluate)
    p = sub.add_parser("report", allow_abbrev=False,
                       help="rebuild report.html of an evaluate output folder or a training run folder",
                       description="Rebuild the self-contained report.html from saved outputs: an evaluate "
                                   "folder (metrics.json, per_image.csv, predictions/) or a training run "
                                   "(metrics.jsonl, last_validation.json).")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", default=None, help="output file (default: RUN_DIR/report.html)")
    p.add_argument("--worst", type=_count, default=6, help="images with the lowest mIoU to show (default 6)")
    p.add_argument("--best", type=_count, default=3, help="images with the highest mIoU to show (default 3)")
    p.add_argument("--max-side", type=_side, default=MAX_SIDE, help=f"longer side of the pictures in px "
                                                                  f"(default {MAX_SIDE})")
    p.set_defaults(handler=_cmd_report)

    p = sub.add_parser("compare", allow_abbrev=False,
                       help="side-by-side page of two evaluations: per-class deltas, images that differ most",
                       description="Compare two evaluate output folders of the same dataset (written with "
                                   "--report or --save-predictions) in one self-contained HTML page.")
    p.add_argument("eval_a", metavar="EVAL_A")
    p.add_argument("eval_b", metavar="EVAL_B")
    p.add_argument("--out", default="compare.html", help="output file (default compare.html)")
    p.add_argument("--top", type=_count, default=6, help="images with the largest mIoU difference to show (default 6)")
    p.add_argument("--max-side", type=_side, default=MAX_SIDE, help=f"longer side of the pictures in px "
                                                                  f"(default {MAX_SIDE})")
    p.set_defaults(handler=_cmd_compare)

    _dataclass_command(sub, "check-data", "check every image and mask of a dataset (full decode) and count "
                       "labels: table, data_report.json, class_frequencies.png", CheckDataConfig, _cmd_check_data)
    _dataclass_command(sub, "predict", "segment images; writes label PNGs and overlays", PredictConfig,
                       _cmd_predict, positional=("inputs",))
    _dataclass_command(sub, "export", "export a checkpoint to ONNX (dynamic batch, height and width)",
                       ExportConfig, _cmd_export)

    p = sub.add_parser("make-synthetic", help="write the built-in synthetic dataset in the folder layout",
                       allow_abbrev=False)
    p.add_argument("dir", help="output folder")
    p.add_argument("--num-train", type=int, default=512)
    p.add_argument("--num-val", type=int, default=64)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_cmd_make_synthetic)

    p = sub.add_parser("weights", help="list torchvision's ImageNet backbone files: URL, hash, local copy",
                       description="List the backbone weights `--backbone-weights imagenet` / `imagenet_v2` "
                                   "resolve to, or download them into the cache with `weights fetch NAME...`.",
                       allow_abbrev=False)
    p.set_defaults(handler=_cmd_weights)
    weights_sub = p.add_subparsers(dest="weights_command", metavar="ACTION")
    fetch = weights_sub.add_parser("fetch", help="download weights into the cache (verified by SHA-256)",
                                   allow_abbrev=False)
    fetch.add_argument("names", nargs="+", metavar="NAME",
                       help="e.g. resnet101, mobilenet_v2, resnet101:imagenet_v2 (see `refineseg weights`)")
    fetch.set_defaults(handler=_cmd_weights_fetch)

    p = sub.add_parser("demo", help="train, evaluate and predict on the synthetic dataset (what `make demo` runs)",
                       allow_abbrev=False)
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
    except DataCheckError as e:  # every bad file, one per line (first 20, then a count)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RefineSegError as e:  # includes MissingDependencyError: the message names the pip command
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk or a permission problem outside the writes that report it themselves
        if not is_write_failure(e):
            raise
        print(f"error: {one_line(write_error(e.filename or '<output>', e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
