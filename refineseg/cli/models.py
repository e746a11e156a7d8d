"""``refineseg models`` (the variants and their recipes) and ``refineseg weights`` (ImageNet backbones)."""

from __future__ import annotations

import argparse

from refineseg.models import list_models, model_spec
from refineseg.models.hub import fetch_weights, list_weights, parse_name, weights_name
from refineseg.models.profiling import summarize_model
from refineseg.report.visualize import model_table
from refineseg.utils.progress import progress


def run_models(args: argparse.Namespace) -> None:
    """Print parameters, GMACs, output shape and the default recipe of each variant (a progress bar
    while they are measured: about a second each)."""
    names = args.names or list_models()
    rows = [summarize_model(n, args.num_classes, args.size, args.size) for n in progress(names, "models")]
    for row in rows:
        recipe = model_spec(row["model"]).recipe
        row.update(
            GMACs=round(row["GMACs"], 2),
            lr=f"{recipe.lr:g}",
            decoder_lr_mult=f"{recipe.decoder_lr_mult:g}",
            warmup=recipe.warmup_iters,
            clip=f"{recipe.clip_grad_norm:g}",
        )
    print(model_table(rows, ["model", "params", "GMACs", "output", "lr", "decoder_lr_mult", "warmup", "clip"]))


def run_weights(args: argparse.Namespace) -> None:
    print(model_table(list_weights(), ["name", "sha256", "url", "local"]))


def run_weights_fetch(args: argparse.Namespace) -> None:
    for backbone, tag in [parse_name(name) for name in args.names]:  # every name checked before any download
        path, source = fetch_weights(backbone, tag)
        print(f"{weights_name(backbone, tag)}: {path} ({source}, SHA-256 verified)")


def register(sub) -> None:
    p = sub.add_parser(
        "models",
        allow_abbrev=False,
        help="list the model variants: parameters, GMACs, output shape, default training recipe",
    )
    p.add_argument("names", nargs="*", help="variants to show (default: all)")
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--size", type=int, default=512, help="input side for the GMAC count (default 512)")
    p.set_defaults(handler=run_models)

    p = sub.add_parser(
        "weights",
        help="list torchvision's ImageNet backbone files: URL, hash, local copy",
        description="List the backbone weights `--backbone-weights imagenet` / `imagenet_v2` "
        "resolve to, or download them into the cache with `weights fetch NAME...`.",
        allow_abbrev=False,
    )
    p.set_defaults(handler=run_weights)
    weights_sub = p.add_subparsers(dest="weights_command", metavar="ACTION")
    fetch = weights_sub.add_parser(
        "fetch", help="download weights into the cache (verified by SHA-256)", allow_abbrev=False
    )
    fetch.add_argument(
        "names",
        nargs="+",
        metavar="NAME",
        help="e.g. resnet101, mobilenet_v2, resnet101:imagenet_v2 (see `refineseg weights`)",
    )
    fetch.set_defaults(handler=run_weights_fetch)
