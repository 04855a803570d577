"""`bridgeseg export`: a checkpoint to a safetensors folder, ONNX, OpenVINO or ExecuTorch, checked against PyTorch."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bridgeseg.cli._options import add_checkpoint_argument
from bridgeseg.errors import UserError
from bridgeseg.io import check_output_folder, check_writable, refuse_existing, refuse_input_as_output
from bridgeseg.options import DEFAULT_CALIBRATION_IMAGES, DEFAULT_CALIBRATION_SIZE

FORMATS = ("safetensors", "onnx", "openvino", "executorch")
_SUFFIXES = {"openvino": ".xml", "executorch": ".pte"}
# The IR keeps the ONNX graph's dynamic sizes: checked at the traced size and another one, as for ONNX.
_OPENVINO_PARITY_SIZES = ((64, 96), (128, 64))


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("export", help="convert a checkpoint to safetensors, ONNX, OpenVINO or ExecuTorch")
    add_checkpoint_argument(parser, "model folder, .safetensors or .ckpt")
    parser.add_argument(
        "--format", choices=list(FORMATS), help="default: onnx when --onnx is given (see docs/export.md)"
    )
    parser.add_argument(
        "--out", help="output folder for --format safetensors; output file for openvino (.xml) and executorch (.pte)"
    )
    parser.add_argument("--onnx", help="output .onnx file (never the checkpoint itself)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output (--onnx or --out)")
    parser.add_argument("--classes", help="comma-separated class names baked into a fixed-vocabulary ONNX model")
    parser.add_argument("--open-vocab", action="store_true", help="text embeddings [K, D] as a second ONNX input")
    parser.add_argument(
        "--opset",
        type=int,
        default=18,
        help="ONNX opset: 14 or later with the torchscript exporter, 18 or later with dynamo (default: %(default)s)",
    )
    parser.add_argument(
        "--size",
        default="512",
        metavar="HxW",
        help="--format executorch: the program's static input size, e.g. 512 or 384x512, multiples of 32 "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--exporter",
        choices=["torchscript", "dynamo"],
        default="torchscript",
        help="PyTorch's TorchScript-based exporter (deprecated by PyTorch, seconds) or the torch.export-based one "
        "(needs onnxscript, minutes); see docs/export.md",
    )
    parser.add_argument(
        "--coarse-logits",
        action="store_true",
        help="output the logits before the final upsampling (1/4 or 1/8 of the input size): `bridgeseg predict` "
        "then takes exact labels without upsampling every class (faster); other consumers upsample them "
        "(bilinear, align_corners=False) themselves",
    )
    int8 = parser.add_argument_group(
        "int8 (ONNX Runtime static quantisation, also for OpenVINO; ExecuTorch's XNNPACK quantiser; see docs/export.md)"
    )
    int8.add_argument(
        "--int8",
        action="store_true",
        help="quantise the ONNX model to int8 (weights per channel, activations calibrated on --calibration); "
        "its agreement with PyTorch is printed, not held to the 99.9 %% rule of float32 exports",
    )
    int8.add_argument("--calibration", metavar="DIR", help="folder of training images to calibrate --int8 on")
    int8.add_argument(
        "--calibration-images",
        type=int,
        default=DEFAULT_CALIBRATION_IMAGES,
        metavar="N",
        help="calibration images, spread over the folder (default: %(default)s)",
    )
    int8.add_argument(
        "--calibration-size",
        type=int,
        default=DEFAULT_CALIBRATION_SIZE,
        metavar="S",
        help="side the calibration images are resized and cropped to, a multiple of 32 (default: %(default)s)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Export a checkpoint to safetensors (`--format safetensors --out DIR`) or ONNX (`--onnx FILE`).

    For ONNX the export is checked against PyTorch with onnxruntime and the numbers printed. With `--int8` the
    float32 export goes to a temporary file and its int8 quantisation to `--onnx FILE`; its agreement with PyTorch
    is printed for information (int8 moves some arg-maxes, more so on a model whose logits are close).

    Returns:
        0 on success, 1 when a float32 ONNX model disagrees with PyTorch.

    Neither output may be the checkpoint or lie inside its folder (refused even with `--overwrite`), and an
    existing output is replaced only with `--overwrite`; both are checked before the checkpoint is loaded.

    Raises:
        UserError: Missing or contradictory arguments.
        OutputExistsError: The output is the checkpoint, or exists and `--overwrite` was not given.
        ValueError: An opset the exporter cannot give; a closed-set model with --open-vocab or new classes
            (`export_onnx` says so).
    """
    # Here, not at the top: the parser is built without torch, so `bridgeseg --help` stays fast.
    from bridgeseg.checkpoints import CONFIG_NAME, WEIGHTS_NAME, checkpoint_files, convert_checkpoint, load_model
    from bridgeseg.vocabulary import parse_class_list

    fmt = args.format or ("onnx" if args.onnx else None)
    if fmt is None:
        raise UserError("nothing to export to: give --onnx FILE, or --format safetensors --out DIR")
    _check_int8_arguments(args, fmt)
    inputs = checkpoint_files(args.checkpoint)
    if fmt in ("openvino", "executorch"):
        return _export_runtime(args, fmt, inputs)
    if fmt == "safetensors":
        if not args.out:
            raise UserError("--format safetensors needs --out DIR (the output folder)")
        if args.onnx or args.classes or args.open_vocab or args.coarse_logits:
            raise UserError("--onnx, --classes, --open-vocab and --coarse-logits apply to ONNX exports only; drop them")
        out = Path(args.out)
        check_output_folder(out)
        outputs = [out / WEIGHTS_NAME, out / CONFIG_NAME]
        for output in (out, *outputs):
            refuse_input_as_output(output, inputs, "--out")
        refuse_existing(outputs, args.overwrite, "--out", folder=out)
        check_writable(out / WEIGHTS_NAME)  # before the checkpoint is loaded
        written = convert_checkpoint(args.checkpoint, args.out)
        print(f"wrote {written}")
        return 0
    if not args.onnx:
        raise UserError("--format onnx needs --onnx FILE (the output .onnx file)")
    if args.out:
        raise UserError("--out is for --format safetensors; give the ONNX file with --onnx FILE")
    from bridgeseg.onnx import check_opset, check_parity, export_onnx  # onnx is an optional extra

    check_opset(args.opset, args.exporter)
    classes = parse_class_list(args.classes)
    refuse_input_as_output(args.onnx, inputs, "--onnx")
    check_writable(args.onnx)  # before the checkpoint is loaded and the model traced; a folder is named as such
    refuse_existing([args.onnx], args.overwrite, "--onnx")
    model = load_model(args.checkpoint)

    output = "coarse_logits" if args.coarse_logits else "logits"
    options = {
        "open_vocab": args.open_vocab,
        "classes": classes,
        "opset": args.opset,
        "exporter": args.exporter,
        "output": output,
    }
    if args.int8:
        from bridgeseg.quantization import calibration_images, quantize_onnx

        calibration_images(args.calibration, args.calibration_images)  # an empty folder fails before the export
        with tempfile.TemporaryDirectory(prefix="bridgeseg-export-") as work:
            float32 = export_onnx(model, Path(work) / "float32.onnx", **options)
            path = quantize_onnx(
                float32, args.onnx, args.calibration, num_images=args.calibration_images, size=args.calibration_size
            )
    else:
        path = export_onnx(model, args.onnx, **options)
    report = check_parity(model, path)  # with the embeddings of the classes in the file's metadata
    vocabulary = "open vocabulary" if args.open_vocab else "fixed vocabulary"
    precision = ", int8" if args.int8 else ""
    print(
        f"wrote {path} ({vocabulary}{precision}, output {output}, {report.num_classes} classes, opset {args.opset}, "
        f"{args.exporter} exporter)"
    )
    print(f"parity with PyTorch (onnxruntime): {report}")
    if args.int8:
        print(
            "int8: agreement on random images, for information (the 99.9 % rule is for float32 exports); measure "
            "the int8 model on your validation data"
        )
        return 0
    if report.argmax_agreement < 0.999:
        print("error: the ONNX model disagrees with PyTorch on more than 0.1 % of pixels", flush=True)
        return 1
    return 0


def _check_int8_arguments(args: argparse.Namespace, fmt: str) -> None:
    """`--int8` needs `--onnx` and `--calibration DIR`; `--calibration` needs `--int8`."""
    int8 = args.int8
    if int8 and fmt == "safetensors":
        raise UserError(
            "--int8 applies to ONNX exports only (and to OpenVINO and ExecuTorch); give --onnx FILE instead of "
            "--format safetensors"
        )
    if int8 and not args.calibration:
        raise UserError("--int8 needs --calibration DIR, a folder of training images to calibrate the int8 ranges on")
    if not int8 and args.calibration:
        raise UserError("--calibration is for --int8; add --int8, or drop --calibration")
    if int8 and args.calibration_images < 1:
        raise UserError(f"--calibration-images must be at least 1, got {args.calibration_images}")
    if int8 and (args.calibration_size < 32 or args.calibration_size % 32):
        raise UserError(f"--calibration-size must be a positive multiple of 32, got {args.calibration_size}")


def _parse_size(text: str) -> tuple[int, int]:
    """`--size`: "S" or "HxW", positive multiples of 32."""
    parts = text.lower().split("x")
    try:
        height, width = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        raise UserError(f"--size must be S or HxW (e.g. 512 or 384x512), got {text!r}") from None
    if len(parts) > 2 or min(height, width) < 32 or height % 32 or width % 32:
        raise UserError(f"--size must be positive multiples of 32 (e.g. 512 or 384x512), got {text!r}")
    return height, width


def _export_runtime(args: argparse.Namespace, fmt: str, inputs: list[Path]) -> int:
    """`--format openvino|executorch --out FILE`: export, load on the runtime, compare with PyTorch, print.

    Args:
        args: The parsed arguments.
        fmt: "openvino" or "executorch".
        inputs: The checkpoint's files, which the output may never replace.
    """
    from bridgeseg.checkpoints import load_model
    from bridgeseg.vocabulary import parse_class_list

    suffix = _SUFFIXES[fmt]
    if not args.out or not str(args.out).endswith(suffix):
        raise UserError(f"--format {fmt} needs --out FILE{suffix} (the output file)")
    if args.onnx:
        raise UserError(f"--onnx is for ONNX exports; give the {fmt} file with --out FILE{suffix}")
    if fmt == "executorch" and args.open_vocab:
        raise UserError("--open-vocab is not available for ExecuTorch (its class list is baked in); drop it")
    size = _parse_size(getattr(args, "size", "512"))
    classes = parse_class_list(args.classes)
    outputs = [Path(args.out)] if fmt == "executorch" else [Path(args.out), Path(args.out).with_suffix(".bin")]
    for output_file in outputs:
        refuse_input_as_output(output_file, inputs, "--out")
    check_writable(args.out)  # before the checkpoint is loaded and the model traced
    refuse_existing(outputs, args.overwrite, "--out")
    model = load_model(args.checkpoint)
    output = "coarse_logits" if args.coarse_logits else "logits"
    calibration = args.calibration if args.int8 else None
    if fmt == "openvino":
        from bridgeseg.runtime.openvino import OpenVinoBackend, export_openvino

        quantize = {"num_images": args.calibration_images, "size": args.calibration_size} if args.int8 else {}
        path = export_openvino(
            model,
            args.out,
            open_vocab=args.open_vocab,
            classes=classes,
            output=output,
            calibration=calibration,
            **quantize,
        )
        backend, sizes = OpenVinoBackend(path), _OPENVINO_PARITY_SIZES
    else:
        from bridgeseg.runtime.executorch import ExecuTorchBackend, export_executorch

        path = export_executorch(
            model,
            args.out,
            size=size,
            classes=classes,
            output=output,
            calibration=calibration,
            num_images=args.calibration_images,
        )
        backend, sizes = ExecuTorchBackend(path), (size,)
    from bridgeseg.runtime.parity import compare_with_pytorch

    report = compare_with_pytorch(model, backend, sizes)
    vocabulary = "open vocabulary" if args.open_vocab else "fixed vocabulary"
    print(f"wrote {path} ({vocabulary}, {backend.precision}, output {output}, {report.num_classes} classes)")
    print(f"parity with PyTorch ({fmt}): {report}")
    if args.int8:
        print("int8: agreement on random images, for information; measure the int8 model on your validation data")
        return 0
    if report.argmax_agreement < 0.999:
        print(f"error: the {fmt} model disagrees with PyTorch on more than 0.1 % of pixels", flush=True)
        return 1
    return 0
