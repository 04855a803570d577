"""Cost and CPU latency of the four methods and their peers, in PyTorch eager and in ONNX Runtime.

One run times every model on the same input and thread count:

- ours: bridge / lseg / denseclip / fpn on EfficientNet-Lite0 and MobileNetV2-1.0 (150 classes, random class
  embeddings, so no text encoder is loaded; random weights, which do not change the timing);
- peers: torchvision's LR-ASPP and DeepLabV3 on MobileNetV3-Large (150 classes);
- DenseCLIP's own heavy setting: CLIP's RN50 visual tower with the DenseCLIP head (text dim 1024).

Each model is timed in PyTorch eager (`torch.inference_mode`) and in ONNX Runtime (fixed-vocabulary export),
round-robin: every round runs each model once in eager and once in ORT, so that load changes on a shared machine
hit all models and both runtimes alike. The fusion module of `bridge` is timed inside the full forward with hooks.
Outputs: a Markdown table and a JSON file.

Both runtimes' idle threads wait passively by default (`OMP_WAIT_POLICY=PASSIVE` for PyTorch's OpenMP, ORT's
`session.intra_op.allow_spinning=0`): on shared cores, spinning threads steal the CPU from the threads doing the
work, and in trials eager latencies then swung by 10x from run to run. On a dedicated machine, run with
`OMP_WAIT_POLICY=ACTIVE` to let both spin.

Usage:
    python benchmarks/latency.py --size 512 --threads 2 --repeats 15 --warmup 3 --out benchmarks/results/latency
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

# Read by OpenMP when torch starts it, so before torch is imported; see the module docstring.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
SPINNING = os.environ["OMP_WAIT_POLICY"].upper() == "ACTIVE"

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from bridgeseg.io import write_atomically  # noqa: E402
from bridgeseg.models import create_model  # noqa: E402
from bridgeseg.models.cost import cost_report  # noqa: E402
from bridgeseg.onnx import export_onnx  # noqa: E402

logger = logging.getLogger("benchmarks.latency")

NUM_CLASSES = 150
TEXT_DIM = 384  # MiniLM's, the default text encoder; CLIP RN50's is 1024
OUR_METHODS = ("bridge", "lseg", "denseclip", "fpn")
OUR_BACKBONES = {"efficientnet_lite0": "Lite0", "mobilenetv2_100": "MNv2"}
REFERENCE = "bridge / Lite0"
RN50_LABEL = "denseclip / CLIP-RN50"
TARGETS = {
    "fusion_share": ("fusion share of bridge / Lite0 latency (eager)", "<= 10 %", lambda v: v <= 0.10),
    "rn50_over_bridge": ("DenseCLIP-RN50 ÷ bridge / Lite0 latency (eager)", ">= 5x", lambda v: v >= 5.0),
    "eager_over_ort": ("eager ÷ ORT latency, bridge / Lite0", ">= 1.5x", lambda v: v >= 1.5),
}


@dataclasses.dataclass
class Result:
    """One model's cost and latency (milliseconds: medians, and the fastest run)."""

    label: str
    kind: str
    params: int
    flops: int
    eager_ms: float
    ort_ms: float
    eager_min_ms: float | None = None
    ort_min_ms: float | None = None
    fusion_ms: float | None = None
    fusion_share: float | None = None
    flops_by_component: dict[str, int] | None = None


class _OutputOnly(nn.Module):
    """torchvision segmentation models return {"out": logits}; export and time the tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)["out"]


def build_models(only: list[str] | None) -> list[tuple[str, str, nn.Module]]:
    """(label, kind, model) for every model of the table, in table order, filtered by `only` substrings."""
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large, lraspp_mobilenet_v3_large

    classes = [f"class {i}" for i in range(NUM_CLASSES)]
    specs: list[tuple[str, str, Callable[[], nn.Module]]] = []
    for backbone, short in OUR_BACKBONES.items():
        for method in OUR_METHODS:

            def build(method: str = method, backbone: str = backbone) -> nn.Module:
                embeddings = None if method == "fpn" else torch.randn(NUM_CLASSES, TEXT_DIM)
                return create_model(method, backbone=backbone, classes=classes, class_embeddings=embeddings)

            specs.append((f"{method} / {short}", "ours", build))
    specs.append(
        (
            "LR-ASPP / MNv3-L",
            "peer",
            lambda: _OutputOnly(
                lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
            ),
        )
    )
    specs.append(
        (
            "DeepLabV3 / MNv3-L",
            "peer",
            lambda: _OutputOnly(
                deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
            ),
        )
    )
    specs.append(
        (
            RN50_LABEL,
            "ours",
            lambda: create_model(
                "denseclip",
                backbone="openclip:RN50",
                classes=classes,
                class_embeddings=torch.randn(NUM_CLASSES, 1024),
            ),
        )
    )
    selected = [spec for spec in specs if not only or any(part in spec[0] for part in only)]
    return [(label, kind, build().eval()) for label, kind, build in selected]


def count_flops(model: nn.Module, images: Tensor) -> int:
    """FLOPs of one forward (2 per multiply-add), as `bridgeseg.models.cost`."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(images)
    return counter.get_total_flops()


def export(model: nn.Module, kind: str, path: Path) -> Path:
    """Fixed-vocabulary export for ours; the same TorchScript exporter with dynamic sizes for peers."""
    if kind == "ours":
        return export_onnx(model, path)
    dims = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.rand(1, 3, 64, 96),),
            str(path),
            dynamo=False,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": dims, "logits": dims},
            opset_version=18,
        )
    return path


class FusionTimer:
    """Forward hooks that time a model's fusion module inside the full forward.

    `bridge`'s `fusion` is one module; DenseCLIP's is a container whose parts (attention pool, context decoder)
    are called one after the other, so each part is timed and the times added.
    """

    def __init__(self, fusion: nn.Module) -> None:
        parts = list(fusion.children()) if isinstance(fusion, nn.ModuleDict) else [fusion]
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.handles = []
        for part in parts:
            self.handles.append(part.register_forward_pre_hook(lambda *_: self.starts.append(time.perf_counter())))
            self.handles.append(part.register_forward_hook(lambda *_: self.ends.append(time.perf_counter())))

    def reset(self) -> None:
        self.starts.clear()
        self.ends.clear()

    def elapsed(self) -> float:
        """Seconds spent in the fusion parts since the last reset."""
        return sum(end - start for start, end in zip(self.starts, self.ends, strict=True))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@dataclasses.dataclass
class _Entry:
    """A model ready to time, and the latencies (seconds) collected so far."""

    label: str
    kind: str
    model: nn.Module
    session: ort.InferenceSession
    params: int
    flops: int
    flops_by_component: dict[str, int] | None
    timer: FusionTimer | None
    eager: list[float] = dataclasses.field(default_factory=list)
    onnx: list[float] = dataclasses.field(default_factory=list)
    fusion: list[float] = dataclasses.field(default_factory=list)


def _time_once(entry: _Entry, images: Tensor, feed: dict[str, np.ndarray], record: bool) -> None:
    """One eager run, then one ORT run, of one model."""
    if entry.timer is not None:
        entry.timer.reset()
    start = time.perf_counter()
    entry.model(images)
    eager_time = time.perf_counter() - start
    start = time.perf_counter()
    entry.session.run(["logits"], feed)
    ort_time = time.perf_counter() - start
    if record:
        entry.eager.append(eager_time)
        entry.onnx.append(ort_time)
        if entry.timer is not None:
            entry.fusion.append(entry.timer.elapsed())


def prepare(args: argparse.Namespace, images: Tensor, folder: Path) -> list[_Entry]:
    """Build every model, count its cost, export it and open its ONNX Runtime session."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if SPINNING else "0")
    entries = []
    for index, (label, kind, model) in enumerate(build_models(args.models)):
        if hasattr(model, "config"):
            report = cost_report(model, args.size)
            params, flops, by_component = report.total_params, report.total_flops, report.flops
        else:
            params = sum(p.numel() for p in model.parameters())
            flops, by_component = count_flops(model, images), None
        path = export(model, kind, folder / f"model_{index}.onnx")
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        fusion = getattr(model, "fusion", None)
        timer = FusionTimer(fusion) if fusion is not None else None
        entries.append(_Entry(label, kind, model, session, params, flops, by_component, timer))
        logger.info("%-22s %6.2f M params, %6.2f GFLOPs, exported", label, params / 1e6, flops / 1e9)
    return entries


def run(args: argparse.Namespace) -> dict:
    """Build, count, export and time every model; returns the summary (see `summarize`).

    Timing goes round-robin: each round runs every model once in eager and once in ORT, so that load changes on
    shared cores hit every model alike and the ratios stay meaningful even when the absolute times are not.
    """
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.rand(1, 3, args.size, args.size)
    feed = {"images": images.numpy()}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
        entries = prepare(args, images, Path(folder))
        for step in range(args.warmup + args.repeats):
            began = time.perf_counter()
            for entry in entries:
                _time_once(entry, images, feed, record=step >= args.warmup)
            kind = "warm-up" if step < args.warmup else "timed"
            logger.info(
                "round %d/%d (%s): %.0f s", step + 1, args.warmup + args.repeats, kind, time.perf_counter() - began
            )
        results = []
        for entry in entries:
            if entry.timer is not None:
                entry.timer.remove()
            result = Result(
                entry.label,
                entry.kind,
                entry.params,
                entry.flops,
                1e3 * statistics.median(entry.eager),
                1e3 * statistics.median(entry.onnx),
                eager_min_ms=1e3 * min(entry.eager),
                ort_min_ms=1e3 * min(entry.onnx),
                flops_by_component=entry.flops_by_component,
            )
            if entry.fusion:
                result.fusion_ms = 1e3 * statistics.median(entry.fusion)
                result.fusion_share = statistics.median(f / e for f, e in zip(entry.fusion, entry.eager, strict=True))
            results.append(result)
    args.load_average = (load_before[0], os.getloadavg()[0])
    return summarize(results, args)


def summarize(results: list[Result], args: argparse.Namespace) -> dict:
    """The JSON document: settings, one entry per model, and the three targets as measured."""
    by_label = {r.label: r for r in results}
    reference = by_label.get(REFERENCE)
    measured: dict[str, float] = {}
    if reference is not None:
        measured["eager_over_ort"] = reference.eager_ms / reference.ort_ms
        if reference.fusion_share is not None:
            measured["fusion_share"] = reference.fusion_share
        if RN50_LABEL in by_label:
            measured["rn50_over_bridge"] = by_label[RN50_LABEL].eager_ms / reference.eager_ms
    targets = {
        key: {"what": what, "target": target, "measured": measured[key], "met": bool(check(measured[key]))}
        for key, (what, target, check) in TARGETS.items()
        if key in measured
    }
    return {
        "settings": {
            "size": args.size,
            "threads": args.threads,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "num_classes": NUM_CLASSES,
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "python": platform.python_version(),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": args.command,
            # 1-minute load average at the start and the end: above the thread count, other work competed.
            "load_average": [round(v, 2) for v in args.load_average],
            "cpus": os.cpu_count(),
            "idle_threads": "spin" if SPINNING else "passive",
        },
        "reference": REFERENCE,
        "results": [dataclasses.asdict(r) for r in results],
        "targets": targets,
    }


def to_markdown(summary: dict) -> str:
    """The summary as a Markdown page: settings, the table, and the targets."""
    settings = summary["settings"]
    reference = next((r for r in summary["results"] if r["label"] == summary["reference"]), None)
    lines = [
        f"# Cost and CPU latency at {settings['size']}×{settings['size']}, {settings['num_classes']} classes",
        "",
        f"`{settings['command']}` — torch {settings['torch']}, onnxruntime {settings['onnxruntime']}, "
        f"{settings['threads']} threads (`torch.set_num_threads`, ORT `intra_op_num_threads`), batch 1, "
        f"median of {settings['repeats']} runs after {settings['warmup']} warm-up runs, {settings['date']}.",
        "",
        "The cores were shared with other work while this ran (1-minute load average "
        f"{settings['load_average'][0]:.1f} at the start, {settings['load_average'][1]:.1f} at the end, on "
        f"{settings['cpus']} cores), so absolute latencies are noisy; the ratios within the run are what we report "
        "(timing goes round-robin: each round runs every model once in eager and once in ORT, so load changes hit "
        "all of them alike; the JSON also keeps each model's fastest run). Parameters exclude the text encoder "
        "(class embeddings are cached); "
        f"idle threads of both runtimes {'spin' if settings['idle_threads'] == 'spin' else 'wait passively'} "
        "(see the script's docstring); GFLOPs count 2 per multiply-add (`torch.utils.flop_counter`: convolutions, "
        "matrix products and attention only). Weights are random: latency does not depend on them.",
        "",
        "| model | params (M) | GFLOPs | eager (ms) | ORT (ms) | eager ÷ ORT | eager vs bridge / Lite0 "
        "| fusion (ms) | fusion share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary["results"]:
        relative = f"{r['eager_ms'] / reference['eager_ms']:.2f}×" if reference else "–"
        fusion = "–" if r["fusion_ms"] is None else f"{r['fusion_ms']:.1f}"
        share = "–" if r["fusion_share"] is None else f"{100 * r['fusion_share']:.1f} %"
        name = r["label"] if r["kind"] == "ours" else f"{r['label']} (torchvision)"
        lines.append(
            f"| {name} | {r['params'] / 1e6:.2f} | {r['flops'] / 1e9:.2f} | {r['eager_ms']:.1f} | {r['ort_ms']:.1f} "
            f"| {r['eager_ms'] / r['ort_ms']:.2f}× | {relative} | {fusion} | {share} |"
        )
    lines += [
        "",
        "Fusion: `bridge`'s BridgeFusion module, and DenseCLIP's dense attention pool + context decoder, timed with "
        "forward hooks inside the eager forward; the share is the median over runs of fusion time ÷ total time.",
        "",
        "## Targets",
        "",
        "| target | goal | measured | met |",
        "|---|---|---:|---|",
    ]
    for key, target in summary["targets"].items():
        value = target["measured"]
        shown = f"{100 * value:.1f} %" if key == "fusion_share" else f"{value:.2f}×"
        lines.append(f"| {target['what']} | {target['target']} | {shown} | {'yes' if target['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="input side in pixels (a multiple of 32)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for PyTorch and ONNX Runtime")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per model and runtime")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    parser.add_argument("--out", default="benchmarks/results/latency", help="output path without suffix")
    parser.add_argument("--models", nargs="*", help="only models whose label contains one of these strings")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.command = " ".join(["python", "benchmarks/latency.py", *argv])
    if args.size % 32:
        raise SystemExit(f"error: --size must be a multiple of 32, got {args.size}")
    summary = run(args)
    out = Path(args.out)
    table = to_markdown(summary)
    write_atomically(out.with_suffix(".md"), lambda f: f.write(table.encode()))
    write_atomically(out.with_suffix(".json"), lambda f: f.write((json.dumps(summary, indent=2) + "\n").encode()))
    print(table)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
