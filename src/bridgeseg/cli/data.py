"""`bridgeseg data mosaic|nuclei --out DIR`: generate an offline dataset; `data check|convert|split PATH`: your own."""

from __future__ import annotations

import argparse

from bridgeseg.cli import _data_formats


def add_parser(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="generate an offline dataset; check, convert or split your own")
    kinds = data.add_subparsers(dest="dataset", required=True, metavar="KIND")
    for name, about in (("mosaic", "the offline texture-mosaic dataset"), ("nuclei", "the fluorescence-nuclei set")):
        parser = kinds.add_parser(name, help=f"generate {about}")
        parser.add_argument("--out", required=True, help="output folder")
        parser.add_argument("--num-train", type=int, default=400)
        parser.add_argument("--num-val", type=int, default=100)
        parser.add_argument("--size", type=int, default=192)
        parser.add_argument("--seed", type=int, default=0)
        parser.set_defaults(run=run)
    _data_formats.add_parsers(kinds)


def run(args: argparse.Namespace) -> None:
    if args.dataset == "mosaic":
        from bridgeseg.data.mosaic import generate_mosaic

        out = generate_mosaic(args.out, num_train=args.num_train, num_val=args.num_val, size=args.size, seed=args.seed)
    else:
        from bridgeseg.data.nuclei import generate_nuclei

        out = generate_nuclei(args.out, seed=args.seed)
    print(f"wrote {out}")
