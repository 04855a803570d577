"""int8 ONNX Runtime quantisation of the demo model: mIoU against float32 and PyTorch, and CPU latency.

With the model `make demo` trains (`outputs/demo/model`, `bridge` / EfficientNet-Lite0 on the mosaic
`data/mosaic`), one run

1. exports the fixed-vocabulary float32 ONNX model (`bridgeseg.runtime.onnx.export_onnx`) and quantises it to int8
   (`bridgeseg.runtime.quantization.quantize_onnx`), calibrated on images of the mosaic's train split: the default, and
   for the record of its choices two variants without them (`VARIANTS`);
2. evaluates PyTorch, ORT float32 and ORT int8 on the mosaic's val split as validation does (`_evaluation.evaluate`:
   the val loader of `SegmentationDataModule`, the shared prediction loop `segment` on whole images, as the demo
   config validates, and `SegmentationMetric`, mmseg's mIoU);
3. times ORT float32 and the int8 models round-robin at `--size` (one image, `--threads` intra-op threads): each
   round runs each once, in alternating order, so load changes on shared cores hit them alike. The ratios are the
   result; the absolute times depend on what else runs on the cores.

Idle ORT threads wait passively (`session.intra_op.allow_spinning=0`), as in `benchmarks/latency.py`.

Usage:
    python benchmarks/quantization.py --out benchmarks/results/quantization
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch
from _evaluation import Predict, evaluate
from _results import script_main

from bridgeseg.checkpoints import load_model
from bridgeseg.models.prediction import segment
from bridgeseg.runtime.cpu import cpuinfo_flags
from bridgeseg.runtime.onnx import OnnxBackend, export_onnx, ort_session, read_metadata
from bridgeseg.runtime.pytorch import TorchBackend
from bridgeseg.runtime.quantization import quantize_onnx

logger = logging.getLogger("benchmarks.quantization")

# The default int8 model and, for the record of the choices behind it, the same calibration without them.
VARIANTS = {
    "ORT int8": {},
    "ORT int8, stem quantised": {"float_stride": 0},
    "ORT int8, stem quantised, 8-bit weights": {"float_stride": 0, "reduce_range": False},
}

# ISA extensions that decide how fast ORT's int8 kernels can be (read from /proc/cpuinfo where it exists).
_INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="outputs/demo/model", help="the demo model folder (`make demo`)")
    parser.add_argument("--data", default="data/mosaic", help="the mosaic it was trained on")
    parser.add_argument("--calibration-images", type=int, default=32)
    parser.add_argument(
        "--calibration-size", type=int, default=None, help="default: the mosaic's image side (as evaluated)"
    )
    parser.add_argument("--size", type=int, default=512, help="side of the timed image")
    parser.add_argument("--threads", type=int, default=1, help="torch and ORT intra-op threads")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--out", default="benchmarks/results/quantization", help="writes OUT.md and OUT.json")
    return parser.parse_args(argv)


def check_inputs(model_dir: Path, data_dir: Path) -> dict[str, Any]:
    """The demo model and its mosaic, and that they belong together; a one-line error otherwise."""
    meta_path, config_path = data_dir / "meta.json", model_dir / "config.json"
    missing = [str(path) for path in (meta_path, config_path) if not path.is_file()]
    if missing:
        sys.exit(f"error: {', '.join(missing)} not found; `make demo` trains the demo model on the mosaic")
    meta = json.loads(meta_path.read_text())
    config = json.loads(config_path.read_text())
    model = config.get("model", {})
    if (model.get("method"), model.get("backbone")) != ("bridge", "efficientnet_lite0"):
        sys.exit(f"error: {model_dir} is {model.get('method')} / {model.get('backbone')}, not bridge / Lite0")
    if config.get("classes") != meta.get("classes"):
        sys.exit(f"error: {model_dir} was not trained on {data_dir} (other classes); run `make demo` again")
    return meta


def evaluate_runtimes(backends: dict[str, Any], data_dir: Path, num_classes: int) -> dict[str, Any]:
    """mIoU of each backend on val, as validation computes it, and the int8 labels' agreement with float32."""
    embeddings = {name: backend.text_embeddings(None) for name, backend in backends.items()}

    def predict(name: str) -> Predict:
        backend = backends[name]
        return lambda image, size: segment(backend, image, embeddings[name], mode="whole", output_size=size)

    results, images = evaluate({name: predict(name) for name in backends}, data_dir, num_classes, "ORT float32")
    runtimes = {}
    for name, values in results.items():
        runtimes[name] = {key: round(values[key], 2) for key in ("mIoU", "mAcc", "aAcc")}
        if name.startswith("ORT int8"):
            runtimes[name]["label_agreement_with_float32"] = round(values["labels_equal_to_reference"], 4)
    return {"images": images, "runtimes": runtimes}


def time_round_robin(paths: dict[str, Path], size: int, threads: int, repeats: int, warmup: int) -> dict[str, Any]:
    sessions = {name: ort_session(path, threads, spinning=False) for name, path in paths.items()}
    images = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).numpy()
    times: dict[str, list[float]] = {name: [] for name in sessions}
    names = list(sessions)
    for round_index in range(warmup + repeats):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            start = time.perf_counter()
            sessions[name].run(["logits"], {"images": images})
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) * 1000 for name, values in times.items()}
    reference = times["ORT float32"]
    return {
        "median_ms": {name: round(value, 1) for name, value in medians.items()},
        # float32 time ÷ this runtime's time: > 1 is faster than float32.
        "speedup": {name: round(medians["ORT float32"] / value, 3) for name, value in medians.items()},
        "speedup_per_round_median": {
            name: round(statistics.median(a / b for a, b in zip(reference, values, strict=True)), 3)
            for name, values in times.items()
        },
        "times_ms": {name: [round(v * 1000, 1) for v in values] for name, values in times.items()},
    }


def cpu_flags() -> list[str]:
    """The int8-relevant flags this CPU reports (Linux's /proc/cpuinfo; none elsewhere)."""
    flags = cpuinfo_flags()
    return [flag for flag in _INT8_FLAGS if flag in flags]


def markdown(record: dict[str, Any]) -> str:
    evaluation, timing = record["evaluation"], record["timing"]
    runtimes = evaluation["runtimes"]
    fp32 = runtimes["ORT float32"]["mIoU"]
    calibration = record["calibration"]

    per_round = ", ".join(
        f"{name} {value:.2f}×" for name, value in timing["speedup_per_round_median"].items() if "int8" in name
    )

    def row(name: str, values: dict[str, Any]) -> str:
        agreement = values.get("label_agreement_with_float32")
        cells = [
            f"{values['mIoU']:.2f}",
            f"{values['mIoU'] - fp32:+.2f}" if name != "PyTorch" else "",
            f"{100 * agreement:.2f} %" if agreement is not None else "",
            f"{timing['median_ms'][name]:.1f}" if name in timing["median_ms"] else "",
            f"{timing['speedup'][name]:.2f}×" if name in timing["speedup"] else "",
        ]
        return f"| {name} | " + " | ".join(cells) + " |"

    lines = [
        "# int8 quantisation of the demo model (ONNX Runtime, static, QDQ)",
        "",
        f"`{record['command']}`",
        "",
        f"`bridge` / EfficientNet-Lite0 from `{record['model']}`, fixed-vocabulary export, "
        f"{len(record['classes'])} classes. int8 (`bridgeseg.runtime.quantization.quantize_onnx`): weights int8 "
        "per channel, "
        f"activations uint8 calibrated (min / max) on {calibration['images']} train images at "
        f"{calibration['size']}×{calibration['size']}. onnxruntime {record['versions']['onnxruntime']}, torch "
        f"{record['versions']['torch']}; the CPU's int8-relevant flags: {', '.join(record['cpu_flags']) or 'none'}.",
        "",
        f"mIoU on `{record['data']}` val ({evaluation['images']} images, whole image, the validation code); "
        f"latency of one {record['timing_size']}×{record['timing_size']} image, {record['threads']} thread(s), "
        f"median of {record['repeats']} round-robin rounds after {record['warmup']} warm-up rounds.",
        "",
        "| runtime | mIoU | vs float32 | labels = float32's | latency (ms) | speed-up vs float32 |",
        "|---|---:|---:|---:|---:|---:|",
        *(row(name, values) for name, values in runtimes.items()),
        "",
        "- **ORT int8** is what `quantize_onnx` and `bridgeseg export --int8` write: the layers before the network "
        "first goes coarser than stride 4 stay float, weights on 7 bits (`reduce_range`).",
        "- *stem quantised*: the same with every layer quantised (`float_stride=0`); *8-bit weights*: and "
        "`reduce_range=False`.",
        "- Speed-up from the per-round ratios (median): " + per_round + ".",
        f"- Files: float32 {record['file_mb']['ORT float32']:.1f} MB, int8 {record['file_mb']['ORT int8']:.1f} MB.",
        "",
        f"The cores were shared with other work (1-minute load average {record['load_average'][0]:.1f} at the "
        f"start, {record['load_average'][1]:.1f} at the end): the absolute times are noisy; the ratios, from "
        "interleaved rounds, are the result.",
        "",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Export, quantise, evaluate and time; the record `markdown` renders."""
    torch.set_num_threads(args.threads)
    model_dir, data_dir = Path(args.model), Path(args.data)
    meta = check_inputs(model_dir, data_dir)
    calibration_size = args.calibration_size or int(meta["size"])
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    model = load_model(model_dir).eval()

    with tempfile.TemporaryDirectory(prefix="bridgeseg-quantization-") as work:
        paths = {"ORT float32": Path(work) / "float32.onnx"}
        export_onnx(model, paths["ORT float32"])
        for index, (name, options) in enumerate(VARIANTS.items()):
            logger.info("%s: calibrating on %d train images at %d", name, args.calibration_images, calibration_size)
            paths[name] = quantize_onnx(
                paths["ORT float32"],
                Path(work) / f"int8_{index}.onnx",
                data_dir / "images" / "train",
                num_images=args.calibration_images,
                size=calibration_size,
                **options,
            )
        metadata = read_metadata(paths["ORT int8"])
        backends = {"PyTorch": TorchBackend(model)}
        backends |= {name: OnnxBackend(path, threads=args.threads) for name, path in paths.items()}
        logger.info("evaluating on val")
        evaluation = evaluate_runtimes(backends, data_dir, len(model.classes))
        logger.info("%s", json.dumps(evaluation["runtimes"]))
        logger.info("timing at %d", args.size)
        timing = time_round_robin(paths, args.size, args.threads, args.repeats, args.warmup)
        file_mb = {
            name: path.stat().st_size / 2**20 for name, path in paths.items() if name in ("ORT float32", "ORT int8")
        }

    return {
        "command": args.command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": str(model_dir),
        "data": str(data_dir),
        "classes": list(model.classes),
        "calibration": {"images": int(metadata["calibration_images"]), "size": int(metadata["calibration_size"])},
        "threads": args.threads,
        "timing_size": args.size,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "evaluation": evaluation,
        "int8_minus_float32_mIoU": round(
            evaluation["runtimes"]["ORT int8"]["mIoU"] - evaluation["runtimes"]["ORT float32"]["mIoU"], 2
        ),
        "int8_speedup": timing["speedup"]["ORT int8"],
        "timing": timing,
        "file_mb": {name: round(value, 2) for name, value in file_mb.items()},
        "variants": VARIANTS,
        "cpu_flags": cpu_flags(),
        "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "versions": {"onnxruntime": ort.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "wall_time_s": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    return script_main("quantization.py", parse_args, run, markdown, argv)


if __name__ == "__main__":
    raise SystemExit(main())
