"""`bridgeseg data mosaic|nuclei --out DIR`: generate an offline dataset; `data check|convert|split PATH`: your own."""

from __future__ import annotations

import argparse
from pathlib import Path

from bridgeseg.cli import _data_formats


def add_parser(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="generate an offline dataset; check, convert or split your own")
    kinds = data.add_subparsers(dest="dataset", required=True, metavar="KIND")
    for name, about in (("mosaic", "the offline texture-mosaic dataset"), ("nuclei", "the fluorescence-nuclei set")):
        parser = kinds.add_parser(name, help=f"generate {about}")
        parser.add_argument("--out", required=True, help="output folder")
        parser.add_argument("--overwrite", action="store_true", help="replace a dataset generated earlier in --out")
        parser.add_argument("--num-train", type=int, default=400)
        parser.add_argument("--num-val", type=int, default=100)
        parser.add_argument("--size", type=int, default=192)
        parser.add_argument("--seed", type=int, default=0)
        parser.set_defaults(run=run)
    _data_formats.add_parsers(kinds)


def run(args: argparse.Namespace) -> None:
    from bridgeseg.io import check_output_folder, refuse_existing

    out = Path(args.out)
    check_output_folder(out)
    # A folder holding anything else than an earlier generated dataset is refused by the generator, --overwrite or not.
    generated = (out / name for name in ("meta.json", "classes.txt", "images", "masks"))
    refuse_existing(generated, args.overwrite, "--out", folder=out)
    if args.dataset == "mosaic":
        from bridgeseg.data.mosaic import generate_mosaic

        out = generate_mosaic(
            out,
            num_train=args.num_train,
            num_val=args.num_val,
            size=args.size,
            seed=args.seed,
            overwrite=args.overwrite,
        )
    else:
        from bridgeseg.data.nuclei import generate_nuclei

        out = generate_nuclei(out, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {out}")
