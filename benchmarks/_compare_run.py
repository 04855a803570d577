"""One run of the comparison: train through the real engine, evaluate, and write its record; and which records
count as finished."""

from __future__ import annotations

import datetime
import json
import logging
import math
import platform
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _compare_plan import BENCHMARK_MODEL, DECISION_BACKBONE, HELDOUT_DATASET, PARAPHRASES, Run
from _compare_vocabulary import heldout_metrics, vocabulary_metrics


def cli_arguments(run: Run, data_dir: Path, run_dir: Path) -> list[str]:
    """The `bridgeseg fit` arguments of `run`: the demo's config under the run's budget, seed and model options."""
    from bridgeseg.app.demo import DEMO_CONFIG

    budget = run.budget
    overrides = {
        "--config": str(DEMO_CONFIG),
        "--seed_everything": str(run.seed),
        "--data.root": str(data_dir),
        "--data.crop_size": str(budget.crop_size),
        "--data.batch_size": str(budget.batch_size),
        "--data.scale_range": json.dumps(list(budget.scale_range)),
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
    for key, value in (BENCHMARK_MODEL | dict(run.options)).items():
        overrides[f"--model.net.{key}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return [item for pair in overrides.items() for item in pair]


def execute(
    run: Run,
    data_root: Path,
    raw_dir: Path,
    *,
    extra_arguments: Sequence[str] = (),
    save_model: Path | None = None,
    vocabulary: bool = True,
    extra_record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train and evaluate one run in this process; write and return its record.

    Args:
        run: The run.
        data_root: Where the datasets are.
        raw_dir: Where the record goes.
        extra_arguments: More `bridgeseg fit` arguments (another study's, e.g. `--model.init_from`).
        save_model: Keep the trained model there, as a checkpoint folder (the run's own folder is deleted).
        vocabulary: Record the open-vocabulary protocol where `records_vocabulary` says so.
        extra_record: More fields of the record.
    """
    import lightning.pytorch as pl
    import torch

    from bridgeseg.engine.lightning import run_lightning_cli
    from bridgeseg.io import write_atomically
    from bridgeseg.models.cost import cost_report

    budget = run.budget
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

    data_dir = data_root / run.dataset
    run_dir = raw_dir / "runs" / run.name
    started = time.perf_counter()
    cli = run_lightning_cli([*cli_arguments(run, data_dir, run_dir), *extra_arguments], run=False)
    timer = StepTimer()
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    check_complete(cli.trainer, budget.iterations)
    results = cli.model.last_val_results
    train_wall = time.perf_counter() - started
    model = cli.model.model
    classes = list(cli.model.classes)
    record: dict[str, Any] = {
        "run": run.name,
        "method": run.method,
        "backbone": run.backbone,
        "pretrained": run.pretrained,
        "dataset": run.dataset,
        "seed": run.seed,
        "variant": run.variant,
        "options": dict(run.options),
        "mIoU": float(results["mIoU"]),
        "mAcc": float(results["mAcc"]),
        "aAcc": float(results["aAcc"]),
        "per_class_IoU": [None if math.isnan(v) else v for v in results["IoU"].tolist()],
        "classes": classes,
    }
    paraphrases = json.loads(PARAPHRASES.read_text())
    if run.dataset == HELDOUT_DATASET:
        # Trained on the seen names only; evaluated on the complete mosaic's val with every name.
        record["heldout"] = heldout_metrics(model, data_root / "mosaic", record["mIoU"])
    elif vocabulary and records_vocabulary(run):
        record["vocabulary"] = vocabulary_metrics(model, data_dir, classes, paraphrases)
    # How much of each residual update the trained fusion module lets through (identity start begins at 1e-4):
    # near 1e-4 after training means the bridge is not used.
    scales = {
        name.removesuffix(".gamma"): round(float(parameter.detach().abs().mean()), 5)
        for name, parameter in model.named_parameters()
        if name.endswith("_scale.gamma")
    }
    if scales:
        record["layer_scales"] = scales
    cost = cost_report(model, budget.crop_size)
    measured_steps = budget.iterations - warmup_steps
    images_per_s = measured_steps * budget.batch_size / (timer.end - timer.start) if timer.end and timer.start else None
    record |= {
        "iterations": int(cli.trainer.global_step),
        "params": cost.total_params,
        "trainable_params": cost.trainable_params,
        "flops": cost.total_flops,
        "train_images_per_s": images_per_s,
        "train_wall_time_s": train_wall,
        "wall_time_s": time.perf_counter() - started,
        "budget": budget.to_dict(),
        "cpu": platform.processor() or platform.machine(),
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    record |= extra_record or {}
    if save_model is not None:
        from bridgeseg.checkpoints import save_checkpoint

        save_checkpoint(model, save_model)
    shutil.rmtree(run_dir, ignore_errors=True)  # only the record is kept
    text = json.dumps(record, indent=1) + "\n"
    write_atomically(raw_dir / f"{run.name}.json", lambda handle: handle.write(text.encode()))
    return record


def check_complete(trainer: Any, iterations: int) -> None:
    """Refuse to record a run that stopped early: Lightning ends `fit` quietly on Ctrl-C (`trainer.interrupted`)."""
    if trainer.interrupted or trainer.global_step != iterations:
        raise RuntimeError(f"training stopped at step {trainer.global_step} of {iterations}; no record written")


def records_vocabulary(run: Run) -> bool:
    """Whether the run's record holds the vocabulary metrics: every Lite0 run on a mosaic, ablation rows included."""
    return run.backbone == DECISION_BACKBONE[0] and run.dataset != HELDOUT_DATASET


def finished_record(run: Run, raw_dir: Path) -> dict | None:
    """The run's record if it exists and holds what this version records (older ablation records lack the
    vocabulary, older held-out records come from training with the unseen names in the vocabulary), else None."""
    path = raw_dir / f"{run.name}.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if run.dataset == HELDOUT_DATASET:
        current = record.get("heldout", {}).get("protocol") == "seen names only"
    else:
        current = not records_vocabulary(run) or "vocabulary" in record
    return record if current else None


def is_finished(run: Run, raw_dir: Path) -> bool:
    """Whether the run has a record this version would not redo (`finished_record`)."""
    return finished_record(run, raw_dir) is not None


def load_records(runs: list[Run], raw_dir: Path) -> dict[str, dict]:
    """The records of the plan's finished runs; a record the next run would redo (`is_finished`) is left out."""
    records = {run.name: finished_record(run, raw_dir) for run in runs}
    return {name: record for name, record in records.items() if record is not None}
