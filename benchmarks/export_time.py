"""How long each ONNX exporter takes, and whether both give the same graph, for `bridge` / EfficientNet-Lite0.

For each form (fixed vocabulary, open vocabulary; the coarse output traces the same network less one resize, and
is left out) and each exporter (`torchscript`, PyTorch's
deprecated TorchScript-based one, our default; `dynamo`, the `torch.export`-based one), export a 150-class model
(random weights and class embeddings: export time does not depend on them), time the export (tracing, ONNX
conversion, `onnx.checker`, writing) and check the graph against PyTorch with `check_parity`. The exporters run
one after the other in the same process, so their times share the machine's load; the ratio is what carries.

Usage:
    python benchmarks/export_time.py --out benchmarks/results/export_time
"""

from __future__ import annotations

import argparse
import datetime
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from _results import script_main

from bridgeseg.models import create_model
from bridgeseg.runtime.onnx import EXPORTERS, check_parity, export_onnx

logger = logging.getLogger("benchmarks.export_time")

NUM_CLASSES = 150
TEXT_DIM = 384
FORMS = (("fixed", False, "logits"), ("open", True, "logits"))


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    classes = [f"class {i}" for i in range(NUM_CLASSES)]
    model = create_model(
        "bridge", backbone=args.backbone, classes=classes, class_embeddings=torch.randn(NUM_CLASSES, TEXT_DIM)
    ).eval()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, open_vocab, output in FORMS:
            for exporter in args.exporters:
                path = Path(folder) / f"{name}_{output}_{exporter}.onnx"
                started = time.perf_counter()
                export_onnx(model, path, open_vocab=open_vocab, exporter=exporter, output=output)
                seconds = time.perf_counter() - started
                report = check_parity(model, path)
                rows.append(
                    {
                        "form": name,
                        "output": output,
                        "exporter": exporter,
                        "seconds": seconds,
                        "megabytes": path.stat().st_size / 1e6,
                        "max_abs_diff": report.max_abs_diff,
                        "argmax_agreement": report.argmax_agreement,
                    }
                )
                logger.info("%s %s %s: %.1f s, %s", name, output, exporter, seconds, report)
    return {
        "settings": {
            "backbone": args.backbone,
            "num_classes": NUM_CLASSES,
            "threads": args.threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": args.command,
        },
        "rows": rows,
    }


def to_markdown(summary: dict) -> str:
    settings = summary["settings"]
    lines = [
        f"# ONNX export time, `bridge` / {settings['backbone']}, {settings['num_classes']} classes",
        "",
        f"`{settings['command']}` — torch {settings['torch']}, {settings['threads']} thread(s), {settings['date']}. "
        "Both exporters ran in the same process one after the other; the cores may have been shared, so compare the "
        "exporters by their ratio. Parity: the ONNX Runtime graph against PyTorch at 64×96 and 128×64.",
        "",
        "| form | output | exporter | export (s) | size (MB) | max abs diff | arg-max agreement |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row in summary["rows"]:
        lines.append(
            f"| {row['form']} | `{row['output']}` | {row['exporter']} | {row['seconds']:.1f} | {row['megabytes']:.1f} "
            f"| {row['max_abs_diff']:.1e} | {100 * row['argmax_agreement']:.3f} % |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--exporters",
        nargs="+",
        choices=EXPORTERS,
        default=list(EXPORTERS),
        help="which exporters to time (dynamo did not finish within an hour on bridge / Lite0 with torch 2.14.1)",
    )
    parser.add_argument("--out", default="benchmarks/results/export_time", help="output path without suffix")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return script_main("export_time.py", parse_args, run, to_markdown, argv)


if __name__ == "__main__":
    sys.exit(main())
