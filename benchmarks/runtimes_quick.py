"""One quick look at every runtime of the prediction loop on the demo model: latency and parity with PyTorch.

PyTorch fp32, ONNX Runtime fp32 / int8, OpenVINO fp32 / int8 and ExecuTorch (XNNPACK) fp32 / int8, each giving the
labels of one `--size`² image through the shared loop (`segment`: coarse logits, then the exact fast labels), timed
round-robin (each round runs every runtime once, in alternating order, so load changes on shared cores hit all of
them alike), median of `--repeats` rounds, `--threads` threads each. Parity: each runtime's coarse logits against
PyTorch fp32's on the timed image (max |difference|) and its labels (share of pixels equal).

The int8 models are calibrated on `--calibration-images` images of the mosaic's train split: ONNX Runtime's QDQ
graph (`quantize_onnx`), the OpenVINO IR converted from it, and ExecuTorch's PT2E XNNPACK quantisation. The quick
demo model is barely trained: this is a timing and parity run, not an accuracy one.

Usage:
    python -m bridgeseg.cli demo --quick --out /tmp/rt_demo
    python benchmarks/runtimes_quick.py --checkpoint /tmp/rt_demo/model --out benchmarks/results/runtimes_quick.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bridgeseg.checkpoints import load_model
from bridgeseg.models.inference import cpuinfo_flags
from bridgeseg.models.prediction import TorchBackend, segment
from bridgeseg.onnx import OnnxBackend, export_onnx
from bridgeseg.quantization import quantize_onnx
from bridgeseg.runtime.executorch import ExecuTorchBackend, export_executorch
from bridgeseg.runtime.openvino import OpenVinoBackend, convert_onnx

_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="/tmp/rt_demo/model")
    parser.add_argument("--calibration", default="data/mosaic/images/train")
    parser.add_argument("--calibration-images", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/runtimes_quick.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint).eval()
    size, calibration = (args.size, args.size), {"num_images": args.calibration_images, "size": args.size}
    export_seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="runtimes-quick-") as work:
        work = Path(work)

        def timed(name: str, make: Callable[[], Path]) -> Path:
            started = time.perf_counter()
            result = make()
            export_seconds[name] = round(time.perf_counter() - started, 1)
            return result

        fp32_onnx = timed("ORT fp32", lambda: export_onnx(model, work / "fp32.onnx", output="coarse_logits"))
        int8_onnx = timed(
            "ORT int8", lambda: quantize_onnx(fp32_onnx, work / "int8.onnx", args.calibration, **calibration)
        )
        fp32_xml = timed("OpenVINO fp32", lambda: convert_onnx(fp32_onnx, work / "fp32.xml"))
        int8_xml = timed("OpenVINO int8", lambda: convert_onnx(int8_onnx, work / "int8.xml"))
        options = {"size": size, "output": "coarse_logits"}
        fp32_pte = timed("ExecuTorch fp32", lambda: export_executorch(model, work / "fp32.pte", **options))
        int8_pte = timed(
            "ExecuTorch int8",
            lambda: export_executorch(
                model, work / "int8.pte", calibration=args.calibration, num_images=args.calibration_images, **options
            ),
        )
        backends = {
            "PyTorch fp32": TorchBackend(model, optimize=True),
            "ORT fp32": OnnxBackend(fp32_onnx, threads=args.threads),
            "ORT int8": OnnxBackend(int8_onnx, threads=args.threads),
            "OpenVINO fp32": OpenVinoBackend(fp32_xml, threads=args.threads),
            "OpenVINO int8": OpenVinoBackend(int8_xml, threads=args.threads),
            "ExecuTorch fp32": ExecuTorchBackend(fp32_pte, threads=args.threads),
            "ExecuTorch int8": ExecuTorchBackend(int8_pte, threads=args.threads),
        }
        image = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
        embeddings = model.text_embeddings(None)
        times: dict[str, list[float]] = {name: [] for name in backends}
        outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        with torch.inference_mode():
            for name, backend in backends.items():
                outputs[name] = (backend.coarse_logits(image, embeddings), segment(backend, image, embeddings))
            for round_index in range(args.warmup + args.repeats):
                order = list(backends) if round_index % 2 == 0 else list(reversed(backends))
                for name in order:
                    started = time.perf_counter()
                    segment(backends[name], image, embeddings)
                    if round_index >= args.warmup:
                        times[name].append(1000 * (time.perf_counter() - started))
    reference_logits, reference_labels = outputs["PyTorch fp32"]
    reference_ms = statistics.median(times["ORT fp32"])
    rows = {}
    for name, backend in backends.items():
        logits, labels = outputs[name]
        median = statistics.median(times[name])
        rows[name] = {
            "median_ms": round(median, 1),
            "ort_fp32_over_this": round(reference_ms / median, 2),
            "max_abs_logit_diff_vs_pytorch": float((logits - reference_logits).abs().max()),
            "labels_equal_to_pytorch": float((labels == reference_labels).float().mean()),
            "precision": getattr(backend, "precision", "fp32"),
            "export_s": export_seconds.get(name),
        }
    flags = cpuinfo_flags()
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": args.checkpoint,
        "size": args.size,
        "threads": args.threads,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "cpu": platform.processor() or platform.machine(),
        "cpu_flags": sorted(flag for flag in _FLAGS if flag in flags),
        "load_average_end": os.getloadavg(),
        "torch": torch.__version__,
        "runtimes": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for name, row in rows.items():
        print(
            f"{name:16s} {row['median_ms']:8.1f} ms  {row['ort_fp32_over_this']:5.2f}x  "
            f"diff {row['max_abs_logit_diff_vs_pytorch']:.2e}  labels {100 * row['labels_equal_to_pytorch']:.3f} %"
        )


if __name__ == "__main__":
    main()
