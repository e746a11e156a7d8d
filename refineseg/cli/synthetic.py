"""``refineseg make-synthetic``: write the built-in synthetic dataset in the folder layout."""

from __future__ import annotations

import argparse

from refineseg.data import write_synthetic


def run_make_synthetic(args: argparse.Namespace) -> None:
    write_synthetic(args.dir, num_train=args.num_train, num_val=args.num_val, size=args.size, seed=args.seed)
    print(f"wrote the synthetic dataset to {args.dir} (use --dataset folder --data-root {args.dir})")


def register(sub) -> None:
    p = sub.add_parser(
        "make-synthetic", help="write the built-in synthetic dataset in the folder layout", allow_abbrev=False
    )
    p.add_argument("dir", help="output folder")
    p.add_argument("--num-train", type=int, default=512)
    p.add_argument("--num-val", type=int, default=64)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=run_make_synthetic)
