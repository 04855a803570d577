"""Where eager PyTorch spends the CPU forward of `bridge` / EfficientNet-Lite0, before and after the inference
optimisations (`bridgeseg.runtime.cpu.optimize_for_inference`), and what they and the decoder stride buy.

One run, at one size and thread count, batch 1, `torch.inference_mode`, 150 classes, random class embeddings of
width 384 (no text encoder) and random weights (the time does not depend on them), models built as
`benchmarks/latency.py` builds them:

1. `torch.profiler` on the plain model ("before") and on its optimised copy ("after"): the operators by self CPU
   time, and the time per stage (backbone, fusion, decoder, head, the final upsampling of the logits to the input
   size, and the rest: input normalisation and glue). Stages are `record_function` ranges opened and closed by
   forward hooks on the model's modules; an operator counts in the innermost stage around it.
2. Timing, round-robin (each round runs every variant once, so load changes on shared cores hit all alike): the
   plain model, BatchNorms folded, folded and channels last (the optimised copy), at decoder stride 4 and 8, and
   the optimised copy under bf16 autocast.

Idle OpenMP threads wait passively (`OMP_WAIT_POLICY=PASSIVE`, as in `benchmarks/latency.py`), so that on shared
cores they do not steal the CPU from the threads doing the work.

The file is not named `profile.py`: run as a script, that name would shadow the standard library's `profile`,
which PyTorch imports (through `cProfile`).

Usage:
    python benchmarks/profile_inference.py --threads 1 --out benchmarks/results/profile
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable

# Read by OpenMP when torch starts it, so before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from _results import script_main
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile, record_function

from bridgeseg.models import SegmentationModel, create_model
from bridgeseg.runtime.cpu import bf16_is_fast, optimize_for_inference

logger = logging.getLogger("benchmarks.profile")

NUM_CLASSES = 150
TEXT_DIM = 384  # MiniLM's, the default text encoder
# Stage name -> the model's modules that make it up (those it has).
STAGES = {
    "backbone": ("backbone",),
    "fusion": ("fusion_c4", "fusion"),
    "decoder": ("decoder",),
    "head": ("head", "regularization"),
}
FORWARD = "forward"
FINAL_UPSAMPLING = "final upsampling"
OTHER = "input normalisation and glue"
STAGE_ORDER = [*STAGES, FINAL_UPSAMPLING, OTHER]


def build_model(decoder_stride: int = 4) -> SegmentationModel:
    """`bridge` / EfficientNet-Lite0 as `benchmarks/latency.py` builds it, in eval mode."""
    classes = [f"class {i}" for i in range(NUM_CLASSES)]
    embeddings = torch.randn(NUM_CLASSES, TEXT_DIM)
    model = create_model(
        "bridge",
        backbone="efficientnet_lite0",
        classes=classes,
        class_embeddings=embeddings,
        decoder_stride=decoder_stride,
    )
    return model.eval()


def add_stage_ranges(model: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """Forward hooks that open a `record_function` range named after its stage around each stage's modules."""
    handles = []
    for stage, names in STAGES.items():
        for name in names:
            module = getattr(model, name, None)
            if module is None:
                continue
            ranges: list[record_function] = []

            def enter(*_: object, stage: str = stage, ranges: list = ranges) -> None:
                ranges.append(record_function(stage))
                ranges[-1].__enter__()

            def leave(*_: object, ranges: list = ranges) -> None:
                ranges.pop().__exit__(None, None, None)

            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave))
    return handles


def _stage_of(event: object) -> str:
    """The innermost stage range around a profiler event; outside them, the final upsampling or the rest."""
    top = event
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in STAGES:
            return parent.name
        if parent.name == FORWARD:
            break
        top, parent = parent, parent.cpu_parent
    return FINAL_UPSAMPLING if top.name == "aten::upsample_bilinear2d" else OTHER


def profile_model(model: nn.Module, images: Tensor, runs: int, top: int) -> dict:
    """Operators by self CPU time and time per stage, per forward (averaged over `runs`)."""
    handles = add_stage_ranges(model)
    try:
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            for _ in range(runs):
                with record_function(FORWARD):
                    model(images)
    finally:
        for handle in handles:
            handle.remove()
    annotations = {FORWARD, *STAGES}
    events = [event for event in profiler.events() if event.name not in annotations]
    total_us = sum(event.self_cpu_time_total for event in events)
    stages: dict[str, float] = defaultdict(float)
    for event in events:
        stages[_stage_of(event)] += event.self_cpu_time_total
    operators = sorted(
        (entry for entry in profiler.key_averages() if entry.key not in annotations),
        key=lambda entry: entry.self_cpu_time_total,
        reverse=True,
    )
    return {
        "total_ms": total_us / runs / 1e3,
        "stages": {name: {"ms": stages[name] / runs / 1e3, "share": stages[name] / total_us} for name in STAGE_ORDER},
        "operators": [
            {
                "name": entry.key,
                "self_ms": entry.self_cpu_time_total / runs / 1e3,
                "share": entry.self_cpu_time_total / total_us,
                "calls": entry.count // runs,
            }
            for entry in operators[:top]
        ],
    }


def time_round_robin(variants: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Seconds of every run of each variant after `warmup` rounds; each round runs every variant once."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for step in range(warmup + repeats):
        began = time.perf_counter()
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            if step >= warmup:
                times[name].append(time.perf_counter() - start)
        logger.info("round %d/%d: %.1f s", step + 1, warmup + repeats, time.perf_counter() - began)
    return times


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.rand(1, 3, args.size, args.size)
    load_before = os.getloadavg()
    plain = {stride: build_model(stride) for stride in (4, 8)}
    folded = optimize_for_inference(plain[4], channels_last=False)
    optimized = {stride: optimize_for_inference(model) for stride, model in plain.items()}
    with torch.inference_mode():
        for model in (plain[4], optimized[4]):  # warm up oneDNN's kernels before profiling
            model(images)
        difference = float((optimized[4](images) - plain[4](images)).abs().max())
        same_labels = float((optimized[4](images).argmax(1) == plain[4](images).argmax(1)).float().mean())
        logger.info("profiling")
        profiles = {
            "before": profile_model(plain[4], images, args.profile_runs, args.top),
            "after": profile_model(optimized[4], images, args.profile_runs, args.top),
        }

        def bf16() -> Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return optimized[4](images).float()

        variants = {
            "plain, stride 4": lambda: plain[4](images),
            "BatchNorm folded, stride 4": lambda: folded(images),
            "optimised (folded, channels last), stride 4": lambda: optimized[4](images),
            "plain, stride 8": lambda: plain[8](images),
            "optimised, stride 8": lambda: optimized[8](images),
            "optimised, stride 4, bf16 autocast": bf16,
            # What `Predictor` runs when only labels are asked for: the logits before the final upsampling.
            "plain, stride 4, coarse logits": lambda: plain[4].coarse_logits(images),
            "optimised, stride 4, coarse logits": lambda: optimized[4].coarse_logits(images),
        }
        logger.info("timing")
        times = time_round_robin(variants, args.warmup, args.repeats)
    reference = statistics.median(times["plain, stride 4"])
    timings = {
        name: {
            "median_ms": 1e3 * statistics.median(values),
            "min_ms": 1e3 * min(values),
            "vs_plain_stride_4": statistics.median(values) / reference,
            # Paired per round: the same load hit both runs.
            "paired_vs_plain_stride_4": statistics.median(
                v / p for v, p in zip(values, times["plain, stride 4"], strict=True)
            ),
        }
        for name, values in times.items()
    }
    load_after = os.getloadavg()
    return {
        "settings": {
            "command": args.command,
            "size": args.size,
            "threads": args.threads,
            "batch": 1,
            "num_classes": NUM_CLASSES,
            "text_dim": TEXT_DIM,
            "profile_runs": args.profile_runs,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_is_fast": bf16_is_fast(),
            "cpus": os.cpu_count(),
            "load_average": [round(load_before[0], 2), round(load_after[0], 2)],
            "idle_threads": os.environ["OMP_WAIT_POLICY"].lower(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
        "optimised_vs_plain": {"max_abs_logit_difference": difference, "same_label_share": same_labels},
        "profiles": profiles,
        "timings": timings,
    }


def to_markdown(summary: dict) -> str:
    settings, profiles, timings = summary["settings"], summary["profiles"], summary["timings"]
    check = summary["optimised_vs_plain"]
    lines = [
        f"# Eager CPU profile of bridge / EfficientNet-Lite0 at {settings['size']}×{settings['size']}, "
        f"{settings['num_classes']} classes",
        "",
        f"`{settings['command']}` — torch {settings['torch']} ({settings['cpu_capability']} kernels, native bf16: "
        f"{'yes' if settings['bf16_is_fast'] else 'no'}), {settings['threads']} thread(s), batch 1, "
        f"`torch.inference_mode`, random weights and class embeddings, {settings['date']}.",
        "",
        "The cores were shared with other work while this ran (1-minute load average "
        f"{settings['load_average'][0]:.1f} at the start, {settings['load_average'][1]:.1f} at the end, on "
        f"{settings['cpus']} cores), so absolute times are noisy; the ratios within the run are what we report. "
        "They hold for this CPU's kind of kernels and this thread count: with more threads, or on a CPU with other "
        "vector units, the split between operators moves (oneDNN takes the 1×1 convolutions, which PyTorch keeps "
        "on its own kernel when single-threaded), so measure there before relying on them.",
        "",
        '"Before" is the model as trained; "after" is `optimize_for_inference(model)`: BatchNorms folded into '
        "the convolutions before them and weights stored channels last. The two agree to "
        f"{check['max_abs_logit_difference']:.1e} in the logits and on {100 * check['same_label_share']:.2f} % "
        "of the labels of this input.",
        "",
        "## Time per stage (profiler, CPU time per forward)",
        "",
        "| stage | before (ms) | share | after (ms) | share |",
        "|---|---:|---:|---:|---:|",
    ]
    before, after = profiles["before"], profiles["after"]
    for stage in STAGE_ORDER:
        b, a = before["stages"][stage], after["stages"][stage]
        lines.append(
            f"| {stage} | {b['ms']:.1f} | {100 * b['share']:.1f} % | {a['ms']:.1f} | {100 * a['share']:.1f} % |"
        )
    lines.append(f"| **total** | {before['total_ms']:.1f} | | {after['total_ms']:.1f} | |")
    lines += [
        "",
        "The final upsampling is `forward`'s bilinear resize of the 150-class logits from stride 4 to the input "
        "size; `bridgeseg.Predictor` skips most of it when only labels are asked for (see docs/inference.md).",
        "",
    ]
    for label, key in (("Before", "before"), ("After", "after")):
        lines += [
            f"## {label}: operators by self CPU time (per forward)",
            "",
            "| operator | self (ms) | share | calls |",
            "|---|---:|---:|---:|",
        ]
        for op in profiles[key]["operators"]:
            lines.append(f"| `{op['name']}` | {op['self_ms']:.1f} | {100 * op['share']:.1f} % | {op['calls']} |")
        lines.append("")
    lines += [
        f"## Forward time, round-robin ({settings['repeats']} rounds after {settings['warmup']} warm-up rounds)",
        "",
        "| variant | median (ms) | fastest (ms) | ÷ plain stride 4 (medians) | ÷ plain stride 4 (paired) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, timing in timings.items():
        lines.append(
            f"| {name} | {timing['median_ms']:.1f} | {timing['min_ms']:.1f} | {timing['vs_plain_stride_4']:.2f}× "
            f"| {timing['paired_vs_plain_stride_4']:.2f}× |"
        )
    lines += [
        "",
        "Paired: the median over rounds of (variant ÷ plain stride 4) in the same round. The forward includes the "
        'final upsampling; "coarse logits" is the forward without it (`coarse_logits`), which is what '
        "`bridgeseg.Predictor` runs when only labels are asked for (it then reads the labels off them with "
        "`upsampled_argmax`). Stride 8 (`ModelConfig.decoder_stride=8`) is another model (the stride-4 level "
        "skipped), not a free switch: it changes the accuracy, see docs/models.md. bf16 autocast on a CPU "
        "without native bf16 is emulated, so it measures the cost of choosing it there, not its speed on a CPU "
        "with AVX512-BF16 or AMX.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="input side in pixels (a multiple of 32)")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch intra-op threads")
    parser.add_argument("--profile-runs", type=int, default=3, help="profiled forwards per model (averaged)")
    parser.add_argument("--top", type=int, default=20, help="operators listed")
    parser.add_argument("--repeats", type=int, default=8, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--out", default="benchmarks/results/profile", help="output path without suffix")
    args = parser.parse_args(argv)
    if args.size % 32:
        parser.error(f"--size must be a multiple of 32, got {args.size}")
    return args


def main(argv: list[str] | None = None) -> int:
    return script_main("profile_inference.py", parse_args, run, to_markdown, argv)


if __name__ == "__main__":
    sys.exit(main())
