"""The paper's experiment at a fixed CPU budget: bridge vs DenseCLIP vs LSeg vs FPN on three backbones, and the
ablation of the bridge fusion module.

Every run trains through the real engine (`run_lightning_cli` + `Trainer.fit`) on the offline photo mosaic with
identical data, crop, batch, iterations and optimiser; only the method (or, for the ablation, one fusion switch)
and the seed change. The learning-rate multiplier of the backbone follows the backbone, never the method:
x0.1 for the ImageNet-pretrained EfficientNet-Lite0 (DenseCLIP's recipe), x1 for the backbones trained from
scratch.

Each finished run writes `benchmarks/results/compare.raw/<run>.json`; a restarted comparison skips those, so it
can be killed and resumed at any time. The aggregate goes to `benchmarks/results/compare.md` and `.json`.

Usage:
    python benchmarks/compare.py                      # everything: 57 runs, about 65 min on 2 idle CPU cores
    python benchmarks/compare.py --only main          # the method x backbone table only
    python benchmarks/compare.py --aggregate-only     # rebuild the tables from the finished runs
    nohup .venv/bin/python benchmarks/compare.py > benchmarks/results/compare.raw/log.txt 2>&1 &
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import json
import logging
import math
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("compare")

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
RAW = RESULTS / "compare.raw"

METHODS = ("bridge", "denseclip", "lseg", "fpn")
# (backbone, pretrained): the offline ImageNet weights for Lite0; the others from scratch (no network here).
BACKBONES = (("efficientnet_lite0", True), ("mobilenetv2_100", False), ("resnet18", False))
# Ablation of bridge on EfficientNet-Lite0: name -> the fusion options that differ from the default
# (N = 2 blocks, bridge both ways, CNN branch on, no score-map concatenation). The default itself is the
# bridge / efficientnet_lite0 row of the main table, with the same seeds.
ABLATIONS: dict[str, dict[str, Any]] = {
    "blocks_1": {"fusion_blocks": 1},
    "blocks_4": {"fusion_blocks": 4},
    "bridge_none": {"bridge": "none"},
    "bridge_v2t": {"bridge": "v2t"},
    "bridge_t2v": {"bridge": "t2v"},
    "no_cnn_branch": {"cnn_branch": False},
    "concat_score_map": {"concat_score_map": True},
}
ABLATION_BACKBONE = "efficientnet_lite0"


@dataclasses.dataclass(frozen=True)
class Budget:
    """The training budget shared by every run.

    Attributes:
        iterations: Optimiser steps.
        batch_size: Images per step.
        crop_size: Training crop side (the mosaic images are 192 px; validation is on whole images).
        lr: AdamW base learning rate (the head's).
        warmup_iters: Linear warmup iterations, then poly decay (power 0.9).
        threads: Torch threads per run.
    """

    iterations: int = 200
    batch_size: int = 8
    crop_size: int = 96
    lr: float = 1e-3
    warmup_iters: int = 10
    threads: int = 1


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of the comparison."""

    name: str
    table: str  # "main" or "ablation"
    method: str
    backbone: str
    pretrained: bool
    seed: int
    variant: str = "default"
    options: tuple[tuple[str, Any], ...] = ()


def plan_runs(seeds: list[int], ablation_seeds: list[int], only: str | None) -> list[Run]:
    """Every run, seed by seed (main table, then the ablation), so a partial comparison has every cell."""
    runs: list[Run] = []
    pretrained = dict(BACKBONES)[ABLATION_BACKBONE]
    for seed in sorted(set(seeds) | set(ablation_seeds)):
        if only in (None, "main") and seed in seeds:
            for backbone, backbone_pretrained in BACKBONES:
                for method in METHODS:
                    name = f"{method}_{backbone}_s{seed}"
                    runs.append(Run(name, "main", method, backbone, backbone_pretrained, seed))
        if only in (None, "ablation") and seed in ablation_seeds:
            for variant, options in ABLATIONS.items():
                name = f"bridge_{ABLATION_BACKBONE}_{variant}_s{seed}"
                options_tuple = tuple(sorted(options.items()))
                runs.append(
                    Run(name, "ablation", "bridge", ABLATION_BACKBONE, pretrained, seed, variant, options_tuple)
                )
    return runs


def _cli_arguments(run: Run, budget: Budget, data_dir: Path, run_dir: Path) -> list[str]:
    from bridgeseg.demo import DEMO_CONFIG

    overrides = {
        "--config": str(DEMO_CONFIG),
        "--seed_everything": str(run.seed),
        "--data.root": str(data_dir),
        "--data.crop_size": str(budget.crop_size),
        "--data.batch_size": str(budget.batch_size),
        "--data.num_workers": "0",
        "--model.net.method": run.method,
        "--model.net.backbone": run.backbone,
        "--model.net.pretrained": str(run.pretrained).lower(),
        "--model.lr": str(budget.lr),
        "--model.backbone_lr_mult": "0.1" if run.pretrained else "1.0",
        "--model.warmup_iters": str(budget.warmup_iters),
        "--trainer.max_steps": str(budget.iterations),
        "--trainer.val_check_interval": str(budget.iterations),
        "--trainer.default_root_dir": str(run_dir),
        "--trainer.enable_progress_bar": "false",
        "--trainer.enable_model_summary": "false",
    }
    for key, value in run.options:
        overrides[f"--model.net.{key}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return [item for pair in overrides.items() for item in pair]


def _execute(run: Run, budget: Budget, data_dir: Path, raw_dir: Path) -> dict[str, Any]:
    """Train and evaluate one run in this process; write and return its record."""
    import lightning.pytorch as pl
    import torch

    from bridgeseg.engine.cli import run_lightning_cli
    from bridgeseg.io import write_atomically
    from bridgeseg.models.cost import cost_report

    torch.set_num_threads(budget.threads)
    # Lightning sets its loggers' levels on import; its per-run chatter would drown the progress lines.
    for name in ("lightning.pytorch", "lightning.fabric", "bridgeseg"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warmup_steps = min(10, budget.iterations // 4)

    class StepTimer(pl.Callback):
        """Training throughput after `warmup_steps` steps, without validation."""

        def __init__(self) -> None:
            self.start: float | None = None
            self.end: float | None = None

        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            if trainer.global_step == warmup_steps:
                self.start = time.perf_counter()
            if trainer.global_step == budget.iterations:
                self.end = time.perf_counter()

    run_dir = raw_dir / "runs" / run.name
    started = time.perf_counter()
    cli = run_lightning_cli(_cli_arguments(run, budget, data_dir, run_dir), run=False)
    timer = StepTimer()
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    results = cli.model.last_val_results
    wall = time.perf_counter() - started
    measured_steps = budget.iterations - warmup_steps
    images_per_s = measured_steps * budget.batch_size / (timer.end - timer.start) if timer.end and timer.start else None
    cost = cost_report(cli.model.model, budget.crop_size)
    record = {
        "run": run.name,
        "table": run.table,
        "method": run.method,
        "backbone": run.backbone,
        "pretrained": run.pretrained,
        "seed": run.seed,
        "variant": run.variant,
        "options": dict(run.options),
        "mIoU": float(results["mIoU"]),
        "mAcc": float(results["mAcc"]),
        "aAcc": float(results["aAcc"]),
        "per_class_IoU": [None if math.isnan(v) else v for v in results["IoU"].tolist()],
        "classes": list(cli.model.classes),
        "iterations": int(cli.trainer.global_step),
        "params": cost.total_params,
        "trainable_params": cost.trainable_params,
        "flops": cost.total_flops,
        "train_images_per_s": images_per_s,
        "wall_time_s": wall,
        "budget": dataclasses.asdict(budget),
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints are not needed, only the record
    path = raw_dir / f"{run.name}.json"
    text = json.dumps(record, indent=2) + "\n"
    write_atomically(path, lambda handle: handle.write(text.encode()))  # a killed run leaves no half record
    return record


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)


def run_all(runs: list[Run], budget: Budget, data_dir: Path, raw_dir: Path, workers: int) -> None:
    """Run every unfinished run, `workers` at a time, each in a worker process that keeps its imports."""
    todo = [run for run in runs if not (raw_dir / f"{run.name}.json").is_file()]
    logger.info("%d runs planned, %d finished already, %d to do", len(runs), len(runs) - len(todo), len(todo))
    if not todo:
        return
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_worker_init, initargs=(budget.threads,)
    ) as pool:
        futures = {pool.submit(_execute, run, budget, data_dir, raw_dir): run for run in todo}
        for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
            run = futures[future]
            try:
                record = future.result()
            except Exception:
                logger.exception("run %s failed", run.name)
                continue
            elapsed = time.perf_counter() - started
            logger.info(
                "[%d/%d] %s: mIoU %.2f, %.1f img/s, %.0f s (total %.1f min)",
                done,
                len(todo),
                run.name,
                record["mIoU"],
                record["train_images_per_s"] or float("nan"),
                record["wall_time_s"],
                elapsed / 60,
            )


# -- aggregation --------------------------------------------------------------------------------------------------


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    mean, std = _mean_std(values)
    return f"{mean:.2f} ± {std:.2f} (n={len(values)})" if len(values) > 1 else f"{mean:.2f} (n=1)"


def aggregate(runs: list[Run], raw_dir: Path, budget: Budget) -> dict[str, Any]:
    """Group the finished runs of the plan into the main and ablation tables."""
    records = {}
    for run in runs:
        path = raw_dir / f"{run.name}.json"
        if path.is_file():
            records[run.name] = json.loads(path.read_text())
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for run in runs:
        if run.name in records:
            key = (run.table, run.method, run.backbone) if run.table == "main" else (run.table, run.variant, "")
            groups.setdefault(key, []).append(records[run.name])

    def summary(items: list[dict]) -> dict[str, Any]:
        mious = [round(item["mIoU"], 2) for item in items]  # rounded first, so every table shows the same mean
        speeds = [item["train_images_per_s"] for item in items if item["train_images_per_s"]]
        mean, std = _mean_std(mious)
        return {
            "mIoU_mean": round(mean, 2),
            "mIoU_std": round(std, 2),
            "mIoU_runs": [round(v, 2) for v in mious],
            "seeds": [item["seed"] for item in items],
            "n": len(items),
            "params_M": round(items[0]["params"] / 1e6, 2),
            "GFLOPs": round(items[0]["flops"] / 1e9, 3),
            "train_images_per_s": round(statistics.fmean(speeds), 1) if speeds else None,
            "wall_time_s_mean": round(statistics.fmean(item["wall_time_s"] for item in items), 1),
        }

    main = [
        {"method": method, "backbone": backbone, "pretrained": pretrained} | summary(groups[("main", method, backbone)])
        for backbone, pretrained in BACKBONES
        for method in METHODS
        if ("main", method, backbone) in groups
    ]
    ablation = []
    default = groups.get(("main", "bridge", ABLATION_BACKBONE))
    if default:
        ablation.append({"variant": "default (N=2, both, CNN on, no concat)", **summary(default)})
    for variant, options in ABLATIONS.items():
        if ("ablation", variant, "") in groups:
            ablation.append({"variant": variant, "options": options, **summary(groups[("ablation", variant, "")])})
    return {
        "budget": dataclasses.asdict(budget),
        "planned_runs": len(runs),
        "finished_runs": len(records),
        "complete": len(records) == len(runs),
        "total_train_wall_time_s": round(sum(r["wall_time_s"] for r in records.values()), 1),
        "median_wall_time_s": round(statistics.median(r["wall_time_s"] for r in records.values()), 1)
        if records
        else 0.0,
        "main": main,
        "ablation": ablation,
        "runs": [
            {key: records[run.name][key] for key in ("run", "seed", "mIoU", "wall_time_s", "finished")}
            | {"mIoU": round(records[run.name]["mIoU"], 2), "wall_time_s": round(records[run.name]["wall_time_s"], 1)}
            for run in runs
            if run.name in records
        ],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads per run {budget.threads}",
    }


def to_markdown(summary: dict[str, Any], runs: list[Run], raw_dir: Path) -> str:
    """Markdown tables of an aggregate."""
    budget = summary["budget"]
    lines = ["# Comparison on the offline mosaic (generated by `benchmarks/compare.py`)", ""]
    if not summary["complete"]:
        lines += [
            f"**PARTIAL: {summary['finished_runs']} of {summary['planned_runs']} planned runs finished.** "
            "Re-run `python benchmarks/compare.py` to finish (finished runs are skipped).",
            "",
        ]
    lines += [
        f"Budget, identical for every run: {budget['iterations']} iterations, batch {budget['batch_size']}, "
        f"crop {budget['crop_size']}x{budget['crop_size']}, AdamW lr {budget['lr']:g} (backbone x0.1 when "
        f"ImageNet-pretrained, x1 from scratch), wd 1e-4, {budget['warmup_iters']} warmup iterations then poly 0.9; "
        "MiniLM text embeddings; validation on the 100 whole 192x192 val images of the default mosaic. "
        f"{budget['threads']} torch thread per run, two runs at a time on 2 CPU cores.",
        "",
        f"Wall time: the runs' sum is {summary['total_train_wall_time_s'] / 3600:.2f} h, i.e. "
        f"{summary['total_train_wall_time_s'] / 3600 / 2:.2f} h elapsed with two in parallel, including runs "
        f"slowed by other work on the machine (see the last table); the median run took "
        f"{summary['median_wall_time_s']:.0f} s, which puts all {summary['planned_runs']} runs at about "
        f"{summary['planned_runs'] * summary['median_wall_time_s'] / 2 / 60:.0f} min on two otherwise idle cores.",
        "",
        "## Methods x backbones",
        "",
        "mIoU on mosaic val (mean ± sample std over seeds). Params without the text encoder; GFLOPs for one "
        f"{budget['crop_size']}x{budget['crop_size']} image (2 FLOPs per multiply-add, 13 classes); train img/s is "
        "end to end (data loading included), one thread, with another run beside it; where other work shared the "
        "machine, identical settings varied up to 3x between runs, so use throughput.md for speed.",
        "",
        "| backbone | method | mIoU | params (M) | GFLOPs | train img/s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in summary["main"]:
        backbone = row["backbone"] + (" (ImageNet)" if row["pretrained"] else " (scratch)")
        lines.append(
            f"| {backbone} | {row['method']} | {_cell(row['mIoU_runs'])} | {row['params_M']:.2f} | "
            f"{row['GFLOPs']:.3f} | {row['train_images_per_s'] or '–'} |"
        )
    lines += ["", "mIoU at a glance (mean over seeds):", ""]
    backbones = [backbone for backbone, _ in BACKBONES]
    lines += ["| method | " + " | ".join(backbones) + " |", "|---|" + "---:|" * len(backbones)]
    by_key = {(row["method"], row["backbone"]): row for row in summary["main"]}
    for method in METHODS:
        cells = []
        for backbone in backbones:
            row = by_key.get((method, backbone))
            cells.append(f"{row['mIoU_mean']:.2f}" if row else "–")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## Ablation: bridge on {ABLATION_BACKBONE}, same budget",
        "",
        "| variant | mIoU | params (M) | GFLOPs |",
        "|---|---:|---:|---:|",
    ]
    for row in summary["ablation"]:
        lines.append(f"| {row['variant']} | {_cell(row['mIoU_runs'])} | {row['params_M']:.2f} | {row['GFLOPs']:.3f} |")
    lines += [
        "",
        "## Every run",
        "",
        "Wall time covers building the model, training, validation and the cost count, with another run beside it.",
        "",
        "| run | seed | mIoU | wall time (s) | finished |",
        "|---|---:|---:|---:|---|",
    ]
    for record in summary["runs"]:
        lines.append(
            f"| {record['run']} | {record['seed']} | {record['mIoU']:.2f} | {record['wall_time_s']:.0f} | "
            f"{record['finished']} |"
        )
    shown = raw_dir.resolve().relative_to(REPO) if raw_dir.resolve().is_relative_to(REPO) else raw_dir
    lines += ["", f"Per-run records: `{shown}/<run>.json` (git-ignored).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(REPO / "data" / "mosaic"), help="mosaic folder (generated if absent)")
    parser.add_argument("--raw-dir", default=str(RAW), help="per-run records")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ablation-seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the ablation runs")
    parser.add_argument("--only", choices=["main", "ablation"])
    parser.add_argument("--iterations", type=int, default=Budget.iterations)
    parser.add_argument("--batch-size", type=int, default=Budget.batch_size)
    parser.add_argument("--crop-size", type=int, default=Budget.crop_size)
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel")
    parser.add_argument("--threads", type=int, default=Budget.threads, help="torch threads per run")
    parser.add_argument("--aggregate-only", action="store_true", help="only rebuild the tables")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    sys.path.insert(0, str(REPO / "src"))
    from bridgeseg.demo import DEMO_DATA, ensure_mosaic

    budget = Budget(
        iterations=args.iterations,
        batch_size=args.batch_size,
        crop_size=args.crop_size,
        warmup_iters=max(1, args.iterations // 20),
        threads=args.threads,
    )
    raw_dir = Path(args.raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(args.data_dir)
    runs = plan_runs(args.seeds, args.ablation_seeds, args.only)
    if not args.aggregate_only:
        ensure_mosaic(data_dir, **DEMO_DATA)
        run_all(runs, budget, data_dir, raw_dir, args.workers)
    summary = aggregate(runs, raw_dir, budget)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "compare.json").write_text(json.dumps(summary, indent=2) + "\n")
    markdown = to_markdown(summary, runs, raw_dir)
    (RESULTS / "compare.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
