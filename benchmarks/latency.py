"""CPU latency of the four methods and their peers: eager PyTorch, ONNX Runtime fp32 and int8, and the labels path.

One run times every model on the same input and thread count:

- ours: bridge / lseg / denseclip / fpn on EfficientNet-Lite0, `bridge` also at decoder stride 8 and on
  MobileNetV2 (150 classes, random class embeddings of MiniLM's width, so no text encoder is loaded), and the
  classic light heads as our methods on the same backbone: `lraspp` (LR-ASPP's head) and `segformer` (SegFormer's
  all-MLP head), trained in the comparison's `peers` study, so they have a mosaic mIoU;
- peers: torchvision's LR-ASPP and DeepLabV3 on MobileNetV3-Large, and SegFormer-B0 (transformers'
  `SegformerForSemanticSegmentation` built from its default config, which is MiT-B0), all with 150 classes;
- DenseCLIP's own heavy setting: CLIP's RN50 visual tower with the DenseCLIP head (text dim 1024).

Weights are random: the networks' latency does not depend on them (int8 is calibrated on random images for the
same reason). The labels step does: its cost grows with the share of pixels on a region boundary, which random
weights put everywhere, so it is timed on the logits of a fixed layout instead (`--regions` Voronoi cells drawn
at the image's size, sampled at each model's output resolution; `region_logits`), the same for every model.

Every model is split the same way: a *coarse* module (images → logits at the model's own output resolution: 1/4
for ours and SegFormer, 1/8 for `lraspp` and the torchvision models) and the final bilinear upsampling to the input
size, which all of them end with. Columns (milliseconds, medians):

- eager logits: the full forward in PyTorch (`torch.inference_mode`) of the copy `Predictor` runs
  (`optimize_for_inference`: BatchNorms folded into the convolutions, channels last; peers folded the same way);
- eager labels: the coarse forward, then the exact fast labels (`bridgeseg.models.prediction.upsampled_argmax`)
  of the layout's logits at the model's resolution: what `Predictor.predict` does when only labels are asked for;
- ORT logits: the full graph (fixed vocabulary, the upsampling inside) in ONNX Runtime;
- ORT labels (naive): the full graph and an arg-max over [1, 150, H, W], as a user of a logits graph would;
- ORT labels: the coarse graph, then the same labels step, as `bridgeseg predict --runtime onnx` does with a
  coarse export (`bridgeseg export --coarse-logits`);
- ORT int8 labels: the same with the coarse graph quantised by `bridgeseg.runtime.quantization` (QDQ, per channel);
- bf16 labels: eager labels under bf16 autocast, only on CPUs where bf16 is fast (`bf16_is_fast`).

Peers get the same runtimes, the same exporter and the same arg-max. Timing goes round-robin: every round runs
each model once in every column, so that load changes on a shared machine hit all of them alike. Effective GFLOP/s
is the model's FLOPs (2 per multiply-add, `torch.utils.flop_counter`: convolutions, matrix products and attention)
divided by its logits latency. The fusion module of `bridge` is timed inside the eager forward with hooks.

Both runtimes' idle threads wait passively by default (`OMP_WAIT_POLICY=PASSIVE` for PyTorch's OpenMP, ORT's
`session.intra_op.allow_spinning=0`): on shared cores, spinning threads steal the CPU from the threads doing the
work. On a dedicated machine, run with `OMP_WAIT_POLICY=ACTIVE` to let both spin.

Outputs: a Markdown table, a JSON file and the Pareto plot (mosaic mIoU from `benchmarks/results/compare.json`
against ORT labels latency; `--plot-only` redraws it from the JSON).

Usage:
    python benchmarks/latency.py --size 512 --threads 2 --repeats 15 --warmup 3 --out benchmarks/results/latency
"""

from __future__ import annotations

import argparse
import copy
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
import torch.nn.functional as F  # noqa: E402
from _results import script_main  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from bridgeseg.io import write_atomically  # noqa: E402
from bridgeseg.models import create_model  # noqa: E402
from bridgeseg.models.methods.base import method_class  # noqa: E402
from bridgeseg.models.prediction import boundary_share, upsampled_argmax  # noqa: E402
from bridgeseg.runtime.onnx import export_onnx, ort_session  # noqa: E402

logger = logging.getLogger("benchmarks.latency")

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 150
TEXT_DIM = 384  # MiniLM's, the default text encoder; CLIP RN50's is 1024
REFERENCE = "bridge / Lite0"
LIGHT_HEADS = ("lraspp", "segformer")  # the classic light heads as methods of ours, on Lite0
LRASPP = "LR-ASPP / MNv3-L"
RN50_LABEL = "denseclip / CLIP-RN50"
COLUMNS = {
    "eager_logits": "eager logits",
    "eager_labels": "eager labels",
    "ort_logits": "ORT logits",
    "ort_naive_labels": "ORT labels (naive)",
    "ort_labels": "ORT labels",
    "ort_int8_labels": "ORT int8 labels",
    "bf16_labels": "bf16 labels",
}


@dataclasses.dataclass
class Spec:
    """A model of the table: how to build its coarse module, and where its mosaic mIoU comes from."""

    label: str
    kind: str  # "ours" or "peer"
    build: Callable[[], nn.Module]
    method: str | None = None  # ours: the row of compare.json's decision table that gives the mosaic mIoU
    backbone: str | None = None
    decoder_stride: int = 4


class _Coarse(nn.Module):
    """A peer's forward without its final upsampling: images → logits at the model's own resolution."""

    def __init__(self, model: nn.Module, run: Callable[[nn.Module, Tensor], Tensor]) -> None:
        super().__init__()
        self.model, self.run = model, run

    def forward(self, images: Tensor) -> Tensor:
        return self.run(self.model, images)


class _Full(nn.Module):
    """A coarse module followed by the bilinear upsampling every model here ends with."""

    def __init__(self, coarse: nn.Module) -> None:
        super().__init__()
        self.coarse = coarse

    def forward(self, images: Tensor) -> Tensor:
        return F.interpolate(self.coarse(images), size=images.shape[-2:], mode="bilinear", align_corners=False)


def _ours(method: str, backbone: str, text_dim: int = TEXT_DIM, **options: object) -> nn.Module:
    embeddings = torch.randn(NUM_CLASSES, text_dim) if method_class(method).uses_text else None
    classes = [f"class {i}" for i in range(NUM_CLASSES)]
    return create_model(method, backbone=backbone, classes=classes, class_embeddings=embeddings, **options)


def _lraspp() -> nn.Module:
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    model = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
    return _Coarse(model, lambda m, x: m.classifier(m.backbone(x)))  # torchvision's forward, less the upsampling


def _deeplabv3() -> nn.Module:
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    model = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
    return _Coarse(model, lambda m, x: m.classifier(m.backbone(x)["out"]))


def _segformer_b0() -> nn.Module:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    model = SegformerForSemanticSegmentation(SegformerConfig(num_labels=NUM_CLASSES))  # the default config: MiT-B0
    return _Coarse(model, lambda m, x: m(pixel_values=x).logits)  # logits at 1/4, upsampled by the caller


def specs() -> list[Spec]:
    """Every model of the table, in table order."""
    table = [
        Spec(f"{method} / Lite0", "ours", lambda m=method: _ours(m, "efficientnet_lite0"), method, "efficientnet_lite0")
        for method in ("bridge", "lseg", "denseclip", "fpn", *LIGHT_HEADS)
    ]
    table.append(
        Spec(
            "bridge / Lite0, stride 8",
            "ours",
            lambda: _ours("bridge", "efficientnet_lite0", decoder_stride=8),
            "bridge",
            "efficientnet_lite0",
            decoder_stride=8,
        )
    )
    table.append(Spec("bridge / MNv2", "ours", lambda: _ours("bridge", "mobilenetv2_100"), "bridge", "mobilenetv2_100"))
    table += [
        Spec(LRASPP, "peer", _lraspp),
        Spec("DeepLabV3 / MNv3-L", "peer", _deeplabv3),
        Spec("SegFormer-B0", "peer", _segformer_b0),
        Spec(RN50_LABEL, "ours", lambda: _ours("denseclip", "openclip:RN50", text_dim=1024)),
    ]
    return table


def region_logits(coarse_size: tuple[int, int], size: tuple[int, int], regions: int, seed: int = 0) -> Tensor:
    """Logits [1, 150, h, w] whose arg-max is a segmentation of the image into `regions` Voronoi cells.

    The cells are drawn at the image's size and sampled at the coarse pixels' centres, so every model, whatever
    its stride, labels the same layout; each cell is one of the 150 classes, with a margin of 4 over the others and
    a little noise (no ties). This stands in for a trained model's logits in the labels step.
    """
    generator = torch.Generator().manual_seed(seed)
    height, width = size
    centres = torch.rand(regions, 2, generator=generator) * torch.tensor([height, width])
    classes = torch.randint(0, NUM_CLASSES, (regions,), generator=generator)
    rows = (torch.arange(coarse_size[0]) + 0.5) * height / coarse_size[0]
    cols = (torch.arange(coarse_size[1]) + 0.5) * width / coarse_size[1]
    points = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)
    cells = torch.cdist(points, centres).argmin(dim=1).reshape(coarse_size)
    logits = 4.0 * F.one_hot(classes[cells], NUM_CLASSES).permute(2, 0, 1).float()
    # Contiguous [1, K, h, w], as every model here returns its logits (PyTorch's bilinear kernel for a channels-last
    # tensor with 150 channels took ten times as long).
    return (logits + 0.1 * torch.randn(logits.shape, generator=generator)).unsqueeze(0).contiguous()


def _optimized(model: nn.Module, ours: bool, images: Tensor) -> nn.Module:
    """The eager model as `Predictor` runs it (`optimize_for_inference`), and a peer folded the same way."""
    from bridgeseg.runtime.pytorch import fold_batch_norms, optimize_for_inference

    if ours:
        return optimize_for_inference(model)
    # A peer is no `SegmentationModel`: `optimize_for_inference` shares its text encoder and checks the copy on
    # `coarse_logits` with the class embeddings, which a peer has neither of. So the same two steps, with the
    # library's folding: BatchNorms folded (found by a forward on the timed images), then channels last.
    with torch.inference_mode(False), torch.no_grad():
        optimized = copy.deepcopy(model).eval()
        fold_batch_norms(optimized, lambda: optimized(images.clone()))
        return optimized.to(memory_format=torch.channels_last)


def count_flops(model: nn.Module, images: Tensor) -> int:
    """FLOPs of one forward (2 per multiply-add), as `bridgeseg.models.cost`."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(images)
    return counter.get_total_flops()


def _export_peer(module: nn.Module, path: Path, output: str) -> Path:
    """The TorchScript exporter with dynamic sizes, as `export_onnx` uses for ours."""
    dims = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        # Tracer warnings about shape arithmetic; the parity check below catches a graph that is wrong at our size.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            (torch.rand(1, 3, 64, 96),),
            str(path),
            dynamo=False,
            input_names=["images"],
            output_names=[output],
            dynamic_axes={"images": dims, output: {0: "batch"}},
            opset_version=18,
        )
    return path


def _quantize(fp32: Path, out: Path, size: int, images: int) -> Path:
    """int8 QDQ, per channel, with the library's settings (`quantize_graph`); calibrated on random images, which
    is enough for timing. Ours and the peers alike (a fixed-vocabulary graph has the one input `images`)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader

    from bridgeseg.runtime.quantization import quantize_graph

    generator = np.random.default_rng(0)
    feeds = iter([{"images": generator.random((1, 3, size, size), dtype=np.float32)} for _ in range(images)])

    class RandomImages(CalibrationDataReader):
        def get_next(self) -> dict | None:
            return next(feeds, None)

    proto = quantize_graph(fp32, RandomImages())
    onnx.save(proto, str(out))
    return out


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
    """A model ready to time: one callable per column, and the latencies (seconds) collected so far."""

    spec: Spec
    params: int
    flops: int
    runs: dict[str, Callable[[], object]]
    parity: dict[str, float]
    export_s: float
    timer: FusionTimer | None
    times: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    fusion: list[float] = dataclasses.field(default_factory=list)


def prepare(spec: Spec, args: argparse.Namespace, images: Tensor, folder: Path, index: int, bf16: bool) -> _Entry:
    """Build one model, count its cost, export and quantise it, check the graphs, and bind every column."""
    built = spec.build().eval()
    ours = spec.kind == "ours"
    coarse: nn.Module = built if not ours else _Coarse(built, lambda m, x: m.coarse_logits(x))
    full: nn.Module = built if ours else _Full(coarse).eval()
    params = sum(p.numel() for p in built.parameters())
    flops = count_flops(full, images)
    # Eager columns time what `Predictor` runs: BatchNorms folded, channels last; the peers get the same.
    fast = _optimized(built, ours, images)
    fast_coarse = _Coarse(fast, lambda m, x: m.coarse_logits(x)) if ours else fast
    fast_full = fast if ours else _Full(fast_coarse)
    size = tuple(images.shape[-2:])
    started = time.perf_counter()
    if ours:
        full_path = export_onnx(built, folder / f"model_{index}.onnx")
        coarse_path = export_onnx(built, folder / f"model_{index}_coarse.onnx", output="coarse_logits")
    else:
        full_path = _export_peer(_Full(coarse).eval(), folder / f"model_{index}.onnx", "logits")
        coarse_path = _export_peer(coarse, folder / f"model_{index}_coarse.onnx", "coarse_logits")
    export_s = (time.perf_counter() - started) / 2
    int8_path = _quantize(coarse_path, folder / f"model_{index}_int8.onnx", args.size, args.calibration_images)
    paths = {"full": full_path, "coarse": coarse_path, "int8": int8_path}
    sessions = {name: ort_session(path, args.threads, spinning=SPINNING) for name, path in paths.items()}
    feed = {"images": images.numpy()}
    # Each graph against PyTorch at the timed size: a wrong trace would time the wrong thing.
    with torch.inference_mode():
        reference_coarse = coarse(images)
        reference_labels = upsampled_argmax(reference_coarse, size)
    difference = np.abs(sessions["coarse"].run(None, feed)[0] - reference_coarse.numpy())
    parity = {"ort_coarse_max_abs_diff": float(difference.max())}

    def int8_labels() -> Tensor:
        return upsampled_argmax(torch.from_numpy(sessions["int8"].run(None, feed)[0]), size)

    parity["int8_label_agreement"] = float((int8_labels() == reference_labels).float().mean())
    # The labels step is timed on logits laid out as a segmentation (see `region_logits`), not on the random
    # model's own: its cost depends on how many pixels sit on a boundary, and random weights put them everywhere.
    layout = region_logits(tuple(reference_coarse.shape[-2:]), size, args.regions)
    parity["boundary_share"] = boundary_share(layout, size)

    def ort_labels(session: ort.InferenceSession) -> Tensor:
        session.run(None, feed)
        return upsampled_argmax(layout, size)

    def eager_labels() -> Tensor:
        fast_coarse(images)
        return upsampled_argmax(layout, size)

    runs: dict[str, Callable[[], object]] = {
        "eager_logits": lambda: fast_full(images),
        "eager_labels": eager_labels,
        "ort_logits": lambda: sessions["full"].run(None, feed),
        "ort_naive_labels": lambda: torch.from_numpy(sessions["full"].run(None, feed)[0]).argmax(1),
        "ort_labels": lambda: ort_labels(sessions["coarse"]),
        "ort_int8_labels": lambda: ort_labels(sessions["int8"]),
    }
    if bf16:

        def bf16_labels() -> Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                fast_coarse(images)
            return upsampled_argmax(layout, size)

        runs["bf16_labels"] = bf16_labels
    fusion = getattr(fast, "fusion", None)
    timer = FusionTimer(fusion) if fusion is not None else None
    logger.info(
        "%-26s %6.2f M params, %6.2f GFLOPs, exported in %.1f s, int8 label agreement %.3f",
        spec.label,
        params / 1e6,
        flops / 1e9,
        export_s,
        parity["int8_label_agreement"],
    )
    return _Entry(spec, params, flops, runs, parity, export_s, timer, {name: [] for name in runs})


def _time_round(entry: _Entry, record: bool) -> None:
    """Every column of one model, once."""
    for name, run in entry.runs.items():
        if name == "eager_logits" and entry.timer is not None:
            entry.timer.reset()
        start = time.perf_counter()
        run()
        elapsed = time.perf_counter() - start
        if record:
            entry.times[name].append(elapsed)
            if name == "eager_logits" and entry.timer is not None:
                entry.fusion.append(entry.timer.elapsed())


def bf16_available() -> bool:
    """Whether this CPU runs bf16 fast (the library's detector)."""
    from bridgeseg.runtime.cpu import bf16_is_fast

    return bf16_is_fast()


def run(args: argparse.Namespace) -> dict:
    """Build, count, export and time every model; returns the summary (see `summarize`)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.rand(1, 3, args.size, args.size)
    bf16 = bf16_available()
    load_before = os.getloadavg()
    selected = [spec for spec in specs() if not args.models or any(part in spec.label for part in args.models)]
    with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
        entries = [prepare(spec, args, images, Path(folder), index, bf16) for index, spec in enumerate(selected)]
        for step in range(args.warmup + args.repeats):
            began = time.perf_counter()
            for entry in entries:
                _time_round(entry, record=step >= args.warmup)
            kind = "warm-up" if step < args.warmup else "timed"
            logger.info(
                "round %d/%d (%s): %.0f s", step + 1, args.warmup + args.repeats, kind, time.perf_counter() - began
            )
        for entry in entries:
            if entry.timer is not None:
                entry.timer.remove()
    args.load_average = (load_before[0], os.getloadavg()[0])
    args.bf16 = bf16
    return summarize(entries, args)


def _result(entry: _Entry) -> dict:
    medians = {name: 1e3 * statistics.median(values) for name, values in entry.times.items()}
    result = {
        "label": entry.spec.label,
        "kind": entry.spec.kind,
        "method": entry.spec.method,
        "backbone": entry.spec.backbone,
        "decoder_stride": entry.spec.decoder_stride,
        "params": entry.params,
        "flops": entry.flops,
        "ms": medians,
        "min_ms": {name: 1e3 * min(values) for name, values in entry.times.items()},
        "gflops_per_s": {
            runtime: entry.flops / 1e9 / (medians[f"{runtime}_logits"] / 1e3) for runtime in ("eager", "ort")
        },
        "export_s": entry.export_s,
        "parity": entry.parity,
        "fusion_ms": None,
        "fusion_share": None,
    }
    if entry.fusion:
        result["fusion_ms"] = 1e3 * statistics.median(entry.fusion)
        eager = entry.times["eager_logits"]
        result["fusion_share"] = statistics.median(f / e for f, e in zip(entry.fusion, eager, strict=True))
    return result


def summarize(entries: list[_Entry], args: argparse.Namespace) -> dict:
    """The JSON document: settings, one entry per model, and the targets as measured."""
    results = [_result(entry) for entry in entries]
    by_label = {r["label"]: r for r in results}
    targets = {}
    reference = by_label.get(REFERENCE)
    if reference is not None:
        ours = reference["ms"]
        if LRASPP in by_label:
            value = ours["ort_labels"] / by_label[LRASPP]["ms"]["ort_labels"]
            targets["labels_vs_lraspp"] = _target(
                "bridge / Lite0 ÷ LR-ASPP labels, ORT fp32", "<= 1.00×", value, value <= 1.0
            )
        value = ours["ort_int8_labels"] / ours["ort_labels"]
        targets["int8_vs_fp32"] = _target("bridge / Lite0 ORT int8 ÷ fp32 labels", "< 1.00×", value, value < 1.0)
        if RN50_LABEL in by_label:
            value = by_label[RN50_LABEL]["ms"]["ort_labels"] / ours["ort_labels"]
            targets["rn50_over_bridge"] = _target(
                "DenseCLIP-RN50 ÷ bridge / Lite0 labels, ORT fp32", ">= 5×", value, value >= 5
            )
        if reference["fusion_share"] is not None:
            value = reference["fusion_share"]
            targets["fusion_share"] = _target(
                "fusion share of bridge / Lite0 latency (eager)", "<= 10 %", value, value <= 0.1
            )
    return {
        "settings": {
            "size": args.size,
            "threads": args.threads,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "num_classes": NUM_CLASSES,
            "calibration_images": args.calibration_images,
            "regions": args.regions,
            "bf16": args.bf16,
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "python": platform.python_version(),
            "machine": f"{platform.machine()} {_cpu_name()}".strip(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": args.command,
            # 1-minute load average at the start and the end: above the thread count, other work competed.
            "load_average": [round(v, 2) for v in args.load_average],
            "cpus": os.cpu_count(),
            "idle_threads": "spin" if SPINNING else "passive",
        },
        "reference": REFERENCE,
        "results": results,
        "targets": targets,
    }


def _target(what: str, goal: str, value: float, met: bool) -> dict:
    return {"what": what, "target": goal, "measured": value, "met": bool(met)}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or ""


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def to_markdown(summary: dict) -> str:
    """The summary as a Markdown page: settings, the tables, and the targets."""
    settings = summary["settings"]
    results = summary["results"]
    columns = [name for name in COLUMNS if any(name in r["ms"] for r in results)]
    lines = [
        f"# CPU latency at {settings['size']}×{settings['size']}, {settings['num_classes']} classes",
        "",
        f"`{settings['command']}` — torch {settings['torch']}, onnxruntime {settings['onnxruntime']}, "
        f"{settings['threads']} threads (`torch.set_num_threads`, ORT `intra_op_num_threads`), batch 1, "
        f"median of {settings['repeats']} rounds after {settings['warmup']} warm-up rounds, {settings['date']}, "
        f"{settings['machine']} ({settings['cpus']} cores; 1-minute load average {settings['load_average'][0]:.1f} "
        f"at the start, {settings['load_average'][1]:.1f} at the end).",
        "",
        "Timing is round-robin (each round runs every model once in every column), so the ratios within the run are "
        "what carries to other machines; absolute times depend on the CPU. Labels columns include the arg-max; "
        "*naive* upsamples all 150 classes to full size first, the others take the exact fast labels from the coarse "
        "logits (identical labels), timed on the logits of a fixed layout of "
        f"{settings['regions']} regions (random weights put boundaries everywhere; see the script's docstring). "
        "int8: the coarse graph quantised (QDQ, per channel, "
        f"{settings['calibration_images']} random calibration images). bf16: "
        + ("timed (this CPU has fast bf16)." if settings["bf16"] else "not timed: this CPU has no AVX512-BF16 or AMX.")
        + " Weights are random (the networks' latency does not depend on them). Parameters exclude the text encoder.",
        "",
        "| model | params (M) | GFLOPs | " + " | ".join(f"{COLUMNS[c]} (ms)" for c in columns) + " | GFLOP/s eager "
        "| GFLOP/s ORT | ORT labels vs bridge / Lite0 |",
        "|---|---:|---:|" + "---:|" * len(columns) + "---:|---:|---:|",
    ]
    reference = next((r for r in results if r["label"] == summary["reference"]), None)
    for r in results:
        name = r["label"] if r["kind"] == "ours" else f"{r['label']} (peer)"
        cells = " | ".join(_ms(r["ms"].get(c)) for c in columns)
        relative = f"{r['ms']['ort_labels'] / reference['ms']['ort_labels']:.2f}×" if reference else "–"
        lines.append(
            f"| {name} | {r['params'] / 1e6:.2f} | {r['flops'] / 1e9:.2f} | {cells} | "
            f"{r['gflops_per_s']['eager']:.0f} | {r['gflops_per_s']['ort']:.0f} | {relative} |"
        )
    lines += [
        "",
        "| model | export (s, TorchScript exporter) | max abs diff, ORT coarse vs PyTorch | int8 labels = fp32 labels "
        "| boundary pixels of the layout | fusion (ms) | fusion share |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        share = "–" if r["fusion_share"] is None else f"{100 * r['fusion_share']:.1f} %"
        lines.append(
            f"| {r['label']} | {r['export_s']:.1f} | {r['parity']['ort_coarse_max_abs_diff']:.1e} | "
            f"{100 * r['parity']['int8_label_agreement']:.1f} % of pixels | "
            f"{100 * r['parity']['boundary_share']:.1f} % | {_ms(r['fusion_ms'])} | {share} |"
        )
    lines += [
        "",
        "int8 agreement is on one random image with random weights, so it says the graph runs, not how accurate int8 "
        "is: the mIoU change of int8 on a trained model is in `quantization.md`.",
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


def _mosaic_miou(compare_path: Path) -> dict[tuple[str, str], tuple[float, float, int]]:
    """Mosaic mIoU of each (method, backbone) in the decision table and the light-heads table (pretrained
    backbones): the mean, the sample std over seeds and the number of seeds."""
    if not compare_path.is_file():
        return {}
    summary = json.loads(compare_path.read_text())
    rows = summary.get("main", []) + summary.get("peers", [])
    return {
        (row["method"], row["backbone"]): (row["mIoU_mean"], row["mIoU_std"], row["n"])
        for row in rows
        if row.get("dataset") == "mosaic" and row.get("pretrained") and row.get("n")
    }


def plot_pareto(summary: dict, out: Path, compare_path: Path, quantization_path: Path) -> Path:
    """Mosaic mIoU (mean ± std over seeds) against ORT labels latency; peers (no mosaic mIoU) as vertical lines at
    their latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    miou = _mosaic_miou(compare_path)
    int8_delta = None
    if quantization_path.is_file():
        int8_delta = json.loads(quantization_path.read_text()).get("int8_minus_float32_mIoU")
    figure, axis = plt.subplots(figsize=(7, 4.5))
    lines = 0
    seeds = sorted({n for _, _, n in miou.values()})
    for r in summary["results"]:
        key = (r["method"], r["backbone"])
        if r["kind"] == "peer" or key not in miou or r["decoder_stride"] != 4:
            axis.axvline(r["ms"]["ort_labels"], color="0.75", linestyle="--", linewidth=1)
            axis.annotate(
                r["label"],
                (r["ms"]["ort_labels"], 0.02 + 0.45 * (lines % 2)),  # staggered: close lines do not overlap
                xycoords=("data", "axes fraction"),
                rotation=90,
                fontsize=7,
                color="0.4",
            )
            lines += 1
            continue
        mean, std, _ = miou[key]
        colour = "C0" if r["method"] == "bridge" else "C2" if r["method"] in LIGHT_HEADS else "C1"
        axis.errorbar(r["ms"]["ort_labels"], mean, yerr=std, fmt="o", color=colour, capsize=3)
        axis.annotate(
            f"{r['label']} fp32", (r["ms"]["ort_labels"], mean), fontsize=8, xytext=(4, 4), textcoords="offset points"
        )
        if r["label"] == REFERENCE and int8_delta is not None:
            # The demo model's int8 change moves the fp32 seeds alike: the same spread around the shifted mean.
            axis.errorbar(r["ms"]["ort_int8_labels"], mean + int8_delta, yerr=std, fmt="s", color=colour, capsize=3)
            axis.annotate(
                "bridge / Lite0 int8",
                (r["ms"]["ort_int8_labels"], mean + int8_delta),
                fontsize=8,
                xytext=(4, -10),
                textcoords="offset points",
            )
    settings = summary["settings"]
    axis.set_xlabel(f"ONNX Runtime labels latency, ms ({settings['size']}², {settings['threads']} threads)")
    spread = f"mean ± std over {'/'.join(map(str, seeds))} seeds"
    axis.set_ylabel(f"mosaic mIoU (compare.md, {spread};\nint8: plus the demo model's int8 change)", fontsize=9)
    axis.set_title("Accuracy against CPU latency (up and left is better; dashed: no mosaic mIoU)", fontsize=10)
    axis.set_xscale("log")
    figure.tight_layout()
    path = out.with_name(out.name + "_pareto.png")
    write_atomically(path, lambda file: figure.savefig(file, format="png", dpi=120))
    plt.close(figure)
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="input side in pixels (a multiple of 32)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for PyTorch and ONNX Runtime")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--calibration-images", type=int, default=4, help="random images to calibrate int8 on")
    parser.add_argument("--regions", type=int, default=16, help="regions of the layout the labels step is timed on")
    parser.add_argument("--out", default="benchmarks/results/latency", help="output path without suffix")
    parser.add_argument("--models", nargs="*", help="only models whose label contains one of these strings")
    parser.add_argument("--plot-only", action="store_true", help="redraw the Pareto plot from the JSON")
    args = parser.parse_args(argv)
    if args.size % 32:
        raise SystemExit(f"error: --size must be a multiple of 32, got {args.size}")
    return args


def plot(args: argparse.Namespace, summary: dict) -> None:
    """The Pareto plot of `summary`, beside `--out`, with the mIoU of `compare.json` and the int8 change of
    `quantization.json` (beside `--out`)."""
    out = Path(args.out)
    path = plot_pareto(summary, out, REPO / "benchmarks/results/compare.json", out.with_name("quantization.json"))
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    return script_main("latency.py", parse_args, run, to_markdown, argv, plot=plot)


if __name__ == "__main__":
    sys.exit(main())
