"""`bridgeseg export`: a checkpoint to a safetensors folder or to ONNX, checked against PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path

from bridgeseg.checkpoints import WEIGHTS_NAME, convert_checkpoint, load_model
from bridgeseg.cli._options import add_checkpoint_argument
from bridgeseg.errors import UserError
from bridgeseg.io import check_writable
from bridgeseg.vocabulary import parse_class_list


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("export", help="convert a checkpoint to safetensors or ONNX")
    add_checkpoint_argument(parser, "model folder, .safetensors or .ckpt")
    parser.add_argument("--format", choices=["safetensors", "onnx"], help="default: onnx when --onnx is given")
    parser.add_argument("--out", help="output folder for --format safetensors")
    parser.add_argument("--onnx", help="output .onnx file")
    parser.add_argument("--classes", help="comma-separated class names baked into a fixed-vocabulary ONNX model")
    parser.add_argument("--open-vocab", action="store_true", help="text embeddings [K, D] as a second ONNX input")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument(
        "--exporter",
        choices=["torchscript", "dynamo"],
        default="torchscript",
        help="PyTorch's TorchScript-based exporter (deprecated by PyTorch, seconds) or the torch.export-based one "
        "(needs onnxscript, minutes); see docs/export.md",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Export a checkpoint to safetensors (`--format safetensors --out DIR`) or ONNX (`--onnx FILE`).

    For ONNX the export is checked against PyTorch with onnxruntime and the numbers printed.

    Returns:
        0 on success, 1 when the ONNX model disagrees with PyTorch.

    Raises:
        UserError: Missing or contradictory arguments.
        ValueError: A closed-set model with --open-vocab or new classes (`export_onnx` says so).
    """
    fmt = args.format or ("onnx" if args.onnx else None)
    if fmt is None:
        raise UserError("nothing to export to: give --onnx FILE, or --format safetensors --out DIR")
    if fmt == "safetensors":
        if not args.out:
            raise UserError("--format safetensors needs --out DIR (the output folder)")
        if args.onnx or args.classes or args.open_vocab:
            raise UserError("--onnx, --classes and --open-vocab apply to ONNX exports only; drop them")
        check_writable(Path(args.out) / WEIGHTS_NAME)  # before the checkpoint is loaded
        written = convert_checkpoint(args.checkpoint, args.out)
        print(f"wrote {written}")
        return 0
    if not args.onnx:
        raise UserError("--format onnx needs --onnx FILE (the output .onnx file)")
    if args.out:
        raise UserError("--out is for --format safetensors; give the ONNX file with --onnx FILE")
    classes = parse_class_list(args.classes)
    check_writable(args.onnx)  # before the checkpoint is loaded and the model traced
    model = load_model(args.checkpoint)
    from bridgeseg.onnx import check_parity, export_onnx  # onnx is an optional extra

    path = export_onnx(
        model, args.onnx, open_vocab=args.open_vocab, classes=classes, opset=args.opset, exporter=args.exporter
    )
    report = check_parity(model, path)  # with the embeddings of the classes in the file's metadata
    vocabulary = "open vocabulary" if args.open_vocab else "fixed vocabulary"
    print(f"wrote {path} ({vocabulary}, {report.num_classes} classes, opset {args.opset}, {args.exporter} exporter)")
    print(f"parity with PyTorch (onnxruntime): {report}")
    if report.argmax_agreement < 0.999:
        print("error: the ONNX model disagrees with PyTorch on more than 0.1 % of pixels", flush=True)
        return 1
    return 0
