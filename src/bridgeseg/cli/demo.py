"""`bridgeseg demo`: the offline quickstart (`bridgeseg.demo.run_demo`)."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("demo", help="the offline quickstart: data, training, evaluation, overlays")
    parser.add_argument("--out", help="output folder (default: outputs/demo, or outputs/demo-quick with --quick)")
    parser.add_argument("--data", default="data/mosaic", help="mosaic folder (generated when missing)")
    parser.add_argument(
        "--quick", action="store_true", help="a few iterations only (a smoke test; never replaces a full demo)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from bridgeseg.demo import run_demo

    run_demo(args.out, quick=args.quick, overwrite=args.overwrite, data_dir=args.data)
