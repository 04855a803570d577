"""What bf16 and the inference optimisations change in mIoU: the demo model on the mosaic val split.

The model `make demo` trains (`outputs/demo/model`, on `data/mosaic`) is evaluated as validation evaluates it
(`_evaluation.evaluate`: the val loader of `SegmentationDataModule`, whole-image `segment` at each image's own size,
`SegmentationMetric`), four ways:

- fp32, the model as trained: `model.predict`, validation's own call;
- fp32, the inference-optimised copy (`optimize_for_inference`: BatchNorms folded, channels last);
- bf16 autocast, the model as trained;
- bf16 autocast, the optimised copy: what `Predictor(..., precision="bf16")` runs.

On a CPU without native bf16 the bf16 forwards are emulated, slowly, but with bf16's rounding: the mIoU is what a
CPU with AVX512-BF16 or AMX would give (up to kernel differences), only the time is not.

Usage:
    python benchmarks/precision.py --out benchmarks/results/precision
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import sys
from pathlib import Path

import torch
from _evaluation import Predict, evaluate
from _results import script_main

from bridgeseg.checkpoints import load_model
from bridgeseg.models.inference import bf16_is_fast
from bridgeseg.models.prediction import TorchBackend, segment

logger = logging.getLogger("benchmarks.precision")

REFERENCE = "fp32, as trained"


def measure(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    checkpoint, data = Path(args.checkpoint), Path(args.data)
    missing = [str(path) for path in (checkpoint, data / "images" / "val") if not path.exists()]
    if missing:
        raise SystemExit(f"error: {', '.join(missing)} not found; `make demo` trains the model and makes the data")
    model = load_model(checkpoint).eval()
    embeddings = model.text_embeddings()
    backends = {
        "fp32, optimised": TorchBackend(model, optimize=True),
        "bf16, as trained": TorchBackend(model, autocast_dtype=torch.bfloat16),
        "bf16, optimised": TorchBackend(model, autocast_dtype=torch.bfloat16, optimize=True),
    }

    def validation(image: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        return model.predict(image, mode="whole", output_size=output_size)  # as `SegmentationTask._segment`

    def backend_predict(backend: TorchBackend) -> Predict:
        return lambda image, output_size: segment(backend, image, embeddings, mode="whole", output_size=output_size)

    predictors = {REFERENCE: validation, **{name: backend_predict(backend) for name, backend in backends.items()}}
    results, images = evaluate(predictors, data, model.num_classes, REFERENCE)
    for result in results.values():
        result["mIoU_delta"] = result["mIoU"] - results[REFERENCE]["mIoU"]
    return {
        "settings": {
            "command": args.command,
            "checkpoint": str(checkpoint),
            "data": str(data),
            "split": "val",
            "images": images,
            "method": model.method,
            "backbone": model.config.backbone,
            "threads": args.threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_is_fast": bf16_is_fast(),
            "cpus": os.cpu_count(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
        "reference": REFERENCE,
        "results": results,
    }


def to_markdown(summary: dict) -> str:
    settings = summary["settings"]
    native = "native" if settings["bf16_is_fast"] else "emulated (no AVX512-BF16 or AMX)"
    lines = [
        f"# mIoU of the demo model in bf16 and optimised, mosaic {settings['split']}",
        "",
        f"`{settings['command']}` — {settings['method']} / {settings['backbone']} from `{settings['checkpoint']}`, "
        f"{settings['images']} images of `{settings['data']}` at their own size, whole-image inference as "
        f"validation runs it, torch {settings['torch']}, {settings['threads']} thread(s), {settings['date']}. "
        f"bf16 here was {native}: its rounding is bf16's, so the mIoU carries over to CPUs with native bf16 "
        "(their kernels may round a little differently); its time does not, and the cores were shared with other "
        "work, so the seconds are only a rough cost of emulation.",
        "",
        "| forward | mIoU | Δ mIoU | mAcc | aAcc | labels equal to fp32 as trained | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in summary["results"].items():
        lines.append(
            f"| {name} | {result['mIoU']:.2f} | {result['mIoU_delta']:+.2f} | {result['mAcc']:.2f} | "
            f"{result['aAcc']:.2f} | {100 * result['labels_equal_to_reference']:.3f} % | {result['seconds']:.0f} |"
        )
    lines += [
        "",
        '"As trained" runs the model itself (fp32: `model.predict`, validation\'s call); "optimised" runs '
        "`optimize_for_inference(model)` (BatchNorms folded, channels last), as `bridgeseg.Predictor` does. The "
        "label agreement counts the evaluated pixels (ignored ones excluded).",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="outputs/demo/model", help="the demo model (`make demo`)")
    parser.add_argument("--data", default="data/mosaic", help="the mosaic it was trained on")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch intra-op threads")
    parser.add_argument("--out", default="benchmarks/results/precision", help="output path without suffix")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return script_main("precision.py", parse_args, measure, to_markdown, argv)


if __name__ == "__main__":
    sys.exit(main())
