"""The `bridgeseg` command line.

Subcommands:
    cost     parameters and FLOPs per component for the four methods on one backbone
    demo     the offline quickstart
    data     generate offline datasets (`bridgeseg data mosaic --out DIR`)
    predict  segment images with any class list (masks, overlays, JSON)
    export   convert a checkpoint to safetensors or ONNX
    serve    a local web page to try a model
    fit, validate, test
             training and evaluation (Lightning; `bridgeseg fit --help`)

Errors a user can fix (bad files, values or configs, a full disk, a diverged loss) are printed as one line
(`error: ...`) with exit code 2; `--debug` shows the traceback. docs/troubleshooting.md lists them.
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
    first_with_text = None  # its text encoder and class embeddings serve every other method
    for method in args.methods or list_methods():
        embeddings = first_with_text.class_embeddings if first_with_text is not None else None
        model = create_model(
            method,
            class_embeddings=embeddings,
            backbone=args.backbone,
            text_encoder=args.text_encoder,
            classes=classes,
            pretrained=False,
        )
        if model.uses_text:
            if first_with_text is None:
                first_with_text = model
            elif model.text_encoder is None:
                model.text_encoder = first_with_text.text_encoder  # counted in its parameters, never run
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


def _predict(args: argparse.Namespace) -> int:
    from bridgeseg.inference import predict_command

    return predict_command(args)


def _export(args: argparse.Namespace) -> int:
    from bridgeseg.export import export_command

    return export_command(args)


def _serve(args: argparse.Namespace) -> int:
    from bridgeseg.app import serve_command

    return serve_command(args)


DEFAULT_CHECKPOINT = "outputs/demo/model"


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
    predict = sub.add_parser("predict", help="segment images, folders or globs with any class list")
    predict.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    predict.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="model folder, .safetensors, .ckpt or .onnx")
    predict.add_argument("--out", required=True, help="output folder (nothing is written outside it)")
    predict.add_argument("--classes", help='comma-separated class names, e.g. "sky,road,car" (default: the model\'s)')
    predict.add_argument("--mode", choices=["whole", "slide"], default="whole")
    predict.add_argument("--crop-size", type=int, default=512, help="window side for --mode slide")
    predict.add_argument("--stride", type=int, default=341, help="window stride for --mode slide")
    predict.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    predict.add_argument("--runtime", choices=["torch", "onnx"], default="torch")
    predict.add_argument("--device", default="cpu")
    predict.set_defaults(run=_predict)

    export = sub.add_parser("export", help="convert a checkpoint to safetensors or ONNX")
    export.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="model folder, .safetensors or .ckpt")
    export.add_argument("--format", choices=["safetensors", "onnx"], help="default: onnx when --onnx is given")
    export.add_argument("--out", help="output folder for --format safetensors")
    export.add_argument("--onnx", help="output .onnx file")
    export.add_argument("--classes", help="comma-separated class names baked into a fixed-vocabulary ONNX model")
    export.add_argument("--open-vocab", action="store_true", help="text embeddings [K, D] as a second ONNX input")
    export.add_argument("--opset", type=int, default=18)
    export.set_defaults(run=_export)

    serve = sub.add_parser("serve", help="a local web page to try a model")
    serve.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    serve.add_argument("--host", default="127.0.0.1", help="default: loopback only")
    serve.add_argument("--port", type=int, default=7860)
    serve.set_defaults(run=_serve)

    for name in LIGHTNING_COMMANDS:
        sub.add_parser(name, help=f"{name} with a YAML config (see `bridgeseg {name} --help`)", add_help=False)
    return parser


def _unwrap_worker_message(error: BaseException) -> str:
    """The original message of an error re-raised from a DataLoader worker, without the worker's traceback.

    PyTorch re-raises a worker's exception as the same type with the message "Caught X in DataLoader worker
    process N.\nOriginal Traceback ...\n<module>.X: <message>"; the user only needs the last part.
    """
    message = str(error)
    if not message.startswith("Caught ") or "Original Traceback" not in message:
        return message
    kind = type(error)
    for name in (f"{kind.__module__}.{kind.__qualname__}: ", f"{kind.__qualname__}: "):
        start = message.rfind("\n" + name)
        if start >= 0:
            return message[start + 1 + len(name) :].strip()
    return message.strip().splitlines()[-1]


def user_message(error: BaseException) -> str:
    """The text `main` prints for an error a user can fix: its message and any notes added on the way up."""
    notes = [str(note) for note in getattr(error, "__notes__", ())]
    return "; ".join([_unwrap_worker_message(error), *notes])


def _run_guarded(function: Callable[[], int | None], debug: bool) -> int:
    try:
        code = function()
    except (UserError, ValueError, FileNotFoundError, OSError, FloatingPointError) as error:
        if debug:
            raise
        print(f"error: {user_message(error)}", file=sys.stderr)
        return 2
    return int(code or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `bridgeseg` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Lightning prints through a handler of its own on the "lightning" logger and passes every record on to the
    # root logger as well, which would print it a second time.
    logging.getLogger("lightning").propagate = False
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from bridgeseg.engine.cli import run_lightning_cli

        def run_lightning() -> None:
            run_lightning_cli(argv)

        return _run_guarded(run_lightning, debug)
    args = build_parser().parse_args(argv)
    return _run_guarded(lambda: args.run(args), debug)


if __name__ == "__main__":
    sys.exit(main())
