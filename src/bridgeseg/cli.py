"""The `bridgeseg` command line.

Subcommands:
    cost     parameters and FLOPs per component for the four methods on one backbone
    demo     the offline quickstart
    data     generate offline datasets (`bridgeseg data mosaic --out DIR`)
    fit, validate, test
             training and evaluation (Lightning; `bridgeseg fit --help`)

Errors a user can fix are printed as one line (`error: ...`) with exit code 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

logger = logging.getLogger("bridgeseg")

LIGHTNING_COMMANDS = ("fit", "validate", "test")


class UserError(Exception):
    """An error caused by the user's input, reported as one line without a traceback."""


def _cost(args: argparse.Namespace) -> None:
    from bridgeseg.models import create_model, list_methods
    from bridgeseg.models.cost import cost_report, format_cost_table

    classes = [f"class {i}" for i in range(args.num_classes)]
    reports = {}
    for method in args.methods or list_methods():
        model = create_model(
            method, backbone=args.backbone, text_encoder=args.text_encoder, classes=classes, pretrained=False
        )
        reports[f"{method} / {args.backbone}"] = cost_report(model, args.size)
    print(f"Cost at {args.size}x{args.size}, {args.num_classes} classes (FLOPs: 2 per multiply-add)")
    print(format_cost_table(reports))


def _data(args: argparse.Namespace) -> None:
    if args.dataset == "mosaic":
        from bridgeseg.data.mosaic import generate_mosaic

        out = generate_mosaic(args.out, num_train=args.num_train, num_val=args.num_val, size=args.size, seed=args.seed)
    else:
        from bridgeseg.data.nuclei import generate_nuclei

        out = generate_nuclei(args.out, seed=args.seed)
    print(f"wrote {out}")


def _demo(args: argparse.Namespace) -> None:
    from bridgeseg.demo import run_demo

    run_demo(args.out, quick=args.quick)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every non-Lightning subcommand."""
    parser = argparse.ArgumentParser(prog="bridgeseg", description="Language-guided lightweight semantic segmentation")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cost = sub.add_parser("cost", help="parameters and FLOPs per component of the four methods")
    cost.add_argument("--backbone", default="efficientnet_lite0")
    cost.add_argument("--text-encoder", default="minilm")
    cost.add_argument("--size", type=int, default=512, help="input side in pixels")
    cost.add_argument("--num-classes", type=int, default=150)
    cost.add_argument("--methods", nargs="*", help="default: all four")
    cost.set_defaults(run=_cost)

    data = sub.add_parser("data", help="generate an offline dataset")
    data.add_argument("dataset", choices=["mosaic", "nuclei"])
    data.add_argument("--out", required=True, help="output folder")
    data.add_argument("--num-train", type=int, default=400)
    data.add_argument("--num-val", type=int, default=100)
    data.add_argument("--size", type=int, default=192)
    data.add_argument("--seed", type=int, default=0)
    data.set_defaults(run=_data)

    demo = sub.add_parser("demo", help="the offline quickstart: data, training, evaluation, overlays")
    demo.add_argument("--out", default="outputs/demo", help="output folder")
    demo.add_argument("--quick", action="store_true", help="a few iterations only (a smoke test)")
    demo.set_defaults(run=_demo)
    for name in LIGHTNING_COMMANDS:
        sub.add_parser(name, help=f"{name} with a YAML config (see `bridgeseg {name} --help`)", add_help=False)
    return parser


def _run_guarded(function: Callable[[], None], debug: bool) -> int:
    try:
        function()
    except (UserError, ValueError, FileNotFoundError) as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `bridgeseg` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from bridgeseg.engine.cli import run_lightning_cli

        return _run_guarded(lambda: run_lightning_cli(argv), debug)
    args = build_parser().parse_args(argv)
    return _run_guarded(lambda: args.run(args), debug)


if __name__ == "__main__":
    sys.exit(main())
