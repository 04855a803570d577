"""`bridgeseg data mosaic|nuclei --out DIR`: generate an offline dataset."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("data", help="generate an offline dataset")
    parser.add_argument("dataset", choices=["mosaic", "nuclei"])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-train", type=int, default=400)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    if args.dataset == "mosaic":
        from bridgeseg.data.mosaic import generate_mosaic

        out = generate_mosaic(args.out, num_train=args.num_train, num_val=args.num_val, size=args.size, seed=args.seed)
    else:
        from bridgeseg.data.nuclei import generate_nuclei

        out = generate_nuclei(args.out, seed=args.seed)
    print(f"wrote {out}")
