"""The paper's experiment on CPU: bridge vs DenseCLIP vs LSeg vs FPN, with the statistics to decide it.

Every run trains through the real engine (`run_lightning_cli` + `Trainer.fit`) on a generated photo mosaic; within
a study every run has the same data, crop, batch, iterations, optimiser and schedule, and only the method (or one
fusion switch) and the seed change. The backbone's learning-rate multiplier follows the backbone, never the method:
x0.1 for the ImageNet-pretrained EfficientNet-Lite0 (DenseCLIP's recipe), x1 for backbones trained from scratch.

Studies, run in this order (`--studies` picks and orders them):

- `decision`: the four methods on Lite0 at the decision budget, `--seeds` (5) on both mosaics; paired differences
  `bridge - X` per seed with a paired t-test, a Wilcoxon signed-rank test and a 95 % confidence interval.
  `bridge` and `lseg` runs are also evaluated with paraphrased class names and with vocabulary subsets.
- `curve`: `bridge` and `fpn` on Lite0 at `--curve-iterations`, the learning curve that justifies the budget.
- `heldout`: `bridge` and `lseg` trained without `HELDOUT_CLASSES` (names out of the vocabulary, pixels ignored),
  evaluated with every name (seen mIoU, unseen mIoU, harmonic mean: the generalised zero-shot protocol).
- `ablation`: one switch of the bridge (or of LSeg's head) at a time, on the first mosaic.
- `scratch`: MobileNetV2 and ResNet-18 from scratch, seed 0; reported apart, and decide nothing while `fpn` is below
  25.

Each finished run writes `benchmarks/results/compare.raw/<run>.json` (committed, small); a restarted comparison
skips the runs whose record exists, so it can be killed and resumed at any time, on another machine too. The
aggregate goes to `benchmarks/results/compare.{md,json}` and the learning curve to `compare_curve.png`
(`--out` names others, for a study at another budget).

Usage:
    python benchmarks/compare.py                          # every study (see docs/benchmark.md for its cost)
    python benchmarks/compare.py --studies decision curve # some studies, in this order
    python benchmarks/compare.py --aggregate-only         # rebuild the tables and the plot from the records
    nohup .venv/bin/python benchmarks/compare.py > benchmarks/results/compare.log 2>&1 &
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
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _results import write_results

logger = logging.getLogger("compare")

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
RAW = RESULTS / "compare.raw"
PARAPHRASES = REPO / "benchmarks" / "paraphrases.json"

METHODS = ("bridge", "denseclip", "lseg", "fpn")
LANGUAGE_METHODS = ("bridge", "lseg")
DECISION_BACKBONE = ("efficientnet_lite0", True)  # offline ImageNet weights
SCRATCH_BACKBONES = (("mobilenetv2_100", False), ("resnet18", False))  # no network: no pretrained weights here

# The two mosaics. `mosaic` is the demo's data (generate_mosaic's defaults). `mosaic_hard` is generated with another
# seed and harder settings, so no design is tuned to one dataset: 15 classes instead of 13 (the two CC BY photos),
# 8-14 regions per image instead of 4-8, twice the boundary jitter (other, more ragged region shapes), stronger
# colour jitter and noise, rotations up to 90 degrees.
DATASETS: dict[str, dict[str, Any]] = {
    "mosaic": {"num_train": 400, "num_val": 100, "size": 192, "seed": 0},
    "mosaic_hard": {
        "num_train": 400,
        "num_val": 100,
        "size": 192,
        "seed": 1,
        "include_cc_by": True,
        "num_regions": [8, 14],
        "boundary_jitter": 0.12,
        "colour_jitter": 0.8,
        "noise": 0.05,
        "max_rotation": 90.0,
    },
}
DATASETS_ORDER = tuple(DATASETS)
# Held-out classes of the generalised zero-shot protocol (on `mosaic`): one texture, one object, one scene-like
# class, fixed before any run.
HELDOUT_CLASSES = ("gravel", "cat", "galaxies")
HELDOUT_DATASET = "mosaic_heldout"
# Vocabulary subsets: this many fixed random halves of the classes.
NUM_SUBSETS = 5

# Ablation: variant -> (method, options that differ from the default model). The default is the decision run of
# the same seed on `mosaic`.
ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    # The three fixes of issue 11 (identity start, kept C5, pixel projection before the cosine): all off, one off.
    "legacy": ("bridge", {"identity_start": False, "keep_c5": False, "pixel_projection": False}),
    "no_identity_start": ("bridge", {"identity_start": False}),
    "c5_replaced": ("bridge", {"keep_c5": False}),
    "no_pixel_projection": ("bridge", {"pixel_projection": False}),
    "lseg_no_pixel_projection": ("lseg", {"pixel_projection": False}),
    # Four fusion blocks collapsed before the identity start; with and without it.
    "blocks_4": ("bridge", {"fusion_blocks": 4}),
    "blocks_4_no_identity_start": ("bridge", {"fusion_blocks": 4, "identity_start": False}),
    # Which direction of the bridge buys what (the paraphrase edge over LSeg in particular).
    "bridge_none": ("bridge", {"bridge": "none"}),
    "bridge_v2t": ("bridge", {"bridge": "v2t"}),
    "bridge_t2v": ("bridge", {"bridge": "t2v"}),
    "blocks_1": ("bridge", {"fusion_blocks": 1}),
    "no_cnn_branch": ("bridge", {"cnn_branch": False}),
    "concat_score_map": ("bridge", {"concat_score_map": True}),
    "two_levels": ("bridge", {"fusion_levels": 2}),
    "slim_full_projection": ("bridge", {"fusion_dim": 128, "full_projection": True}),
    "aux_0": ("bridge", {"aux_weight": 0.0}),
    "aux_1": ("bridge", {"aux_weight": 1.0}),
    # A speed option, not a fusion switch: its mIoU cost, so users can choose.
    "decoder_stride_8": ("bridge", {"decoder_stride": 8}),
}
# Variants that answer their question against another variant rather than the default (same seeds): the identity
# start's effect at four blocks is `blocks_4_no_identity_start - blocks_4`.
ABLATION_REFERENCES = {"blocks_4_no_identity_start": "blocks_4"}
STUDIES = ("decision", "curve", "heldout", "ablation", "scratch")
# The model every run starts from, under a variant's own options: the library's defaults as they were when this
# comparison ran, pinned so that a later change of a library default does not change what a committed record means.
# The ablation then took the pixel projection out of the library's defaults (the `no_pixel_projection` rows).
BENCHMARK_MODEL: dict[str, Any] = {"pixel_projection": True}


@dataclasses.dataclass(frozen=True)
class Budget:
    """A training budget.

    Attributes:
        iterations: Optimiser steps.
        batch_size: Images per step.
        crop_size: Training crop side (the mosaic images are 192 px; validation is on whole images).
        lr: AdamW base learning rate (the head's).
        scale_range: Random resize range of the training augmentation.
        threads: Torch threads per run.
    """

    iterations: int = 600
    batch_size: int = 8
    crop_size: int = 128
    lr: float = 1e-3
    scale_range: tuple[float, float] = (0.5, 2.0)
    threads: int = 1

    @property
    def warmup_iters(self) -> int:
        """Linear warmup, then poly 0.9: the demo's share of the schedule (30 of 600)."""
        return max(1, self.iterations // 20)

    @property
    def tag(self) -> str:
        """What sets this budget apart in a run's name (the default parts are left out)."""
        default = Budget()
        parts = [f"{self.iterations}it"]
        if self.batch_size != default.batch_size:
            parts.append(f"b{self.batch_size}")
        if self.crop_size != default.crop_size:
            parts.append(f"c{self.crop_size}")
        if self.lr != default.lr:
            parts.append(f"lr{self.lr:g}")
        if tuple(self.scale_range) != default.scale_range:
            parts.append(f"sc{self.scale_range[0]:g}-{self.scale_range[1]:g}")
        return "_".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"warmup_iters": self.warmup_iters, "scale_range": list(self.scale_range)}


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run; its name is its identity, so studies that need the same run share it."""

    method: str
    backbone: str
    pretrained: bool
    dataset: str
    seed: int
    budget: Budget
    variant: str = "default"
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        return f"{self.method}_{self.backbone}_{self.dataset}_{self.budget.tag}_{self.variant}_s{self.seed}"


@dataclasses.dataclass
class Plan:
    """The runs of every selected study, in execution order, with the study each belongs to."""

    studies: dict[str, list[Run]]

    def ordered_runs(self) -> list[Run]:
        seen: dict[str, Run] = {}
        for runs in self.studies.values():
            for run in runs:
                seen.setdefault(run.name, run)
        return list(seen.values())


def plan(args: argparse.Namespace) -> Plan:
    """Every run of the selected studies, interleaved seed by seed so a partial comparison has complete pairs."""
    budget = Budget(args.iterations, args.batch_size, args.crop_size, args.lr, tuple(args.scale_range), args.threads)
    backbone, pretrained = DECISION_BACKBONE
    studies: dict[str, list[Run]] = {}
    for study in args.studies:
        runs: list[Run] = []
        if study == "decision":
            for dataset in args.datasets:
                for seed in args.seeds:
                    runs += [Run(method, backbone, pretrained, dataset, seed, budget) for method in args.methods]
        elif study == "curve":
            for iterations in args.curve_iterations:
                curve_budget = dataclasses.replace(budget, iterations=iterations)
                for seed in args.curve_seeds:
                    runs += [
                        Run(m, backbone, pretrained, args.datasets[0], seed, curve_budget) for m in ("bridge", "fpn")
                    ]
        elif study == "ablation":
            # Variant by variant, so that a partial ablation has complete rows (the default runs are the
            # decision's); `legacy` first: it says what the fixes bought.
            for variant, (method, options) in ABLATIONS.items():
                if args.variants and variant not in args.variants:
                    continue
                opts = tuple(sorted(options.items()))
                for seed in args.ablation_seeds:
                    runs.append(Run(method, backbone, pretrained, args.datasets[0], seed, budget, variant, opts))
        elif study == "heldout":
            for seed in args.heldout_seeds:
                runs += [Run(m, backbone, pretrained, HELDOUT_DATASET, seed, budget) for m in LANGUAGE_METHODS]
        elif study == "scratch":
            for seed in args.scratch_seeds:
                for name, scratch_pretrained in SCRATCH_BACKBONES:
                    runs += [Run(m, name, scratch_pretrained, "mosaic", seed, budget) for m in args.methods]
        studies[study] = runs
    return Plan(studies)


# -- data -----------------------------------------------------------------------------------------------------------


def prepare_data(data_root: Path, datasets: set[str]) -> None:
    """Generate the mosaics the plan needs (reused when present) and the held-out copy of `mosaic`."""
    from bridgeseg.demo import ensure_mosaic

    for name in sorted(datasets - {HELDOUT_DATASET}):
        ensure_mosaic(data_root / name, **DATASETS[name])
    if HELDOUT_DATASET in datasets:
        ensure_mosaic(data_root / "mosaic", **DATASETS["mosaic"])
        _make_heldout(data_root / "mosaic", data_root / HELDOUT_DATASET)


def _make_heldout(source: Path, target: Path) -> None:
    """Copy a mosaic without the held-out classes: their names leave `classes.txt`, their pixels become ignore (255)
    in train and val, and the other labels are renumbered to the shorter list.

    The generalised zero-shot protocol of the segmentation literature (SPNet, ZS3Net): the classifier never sees
    the unseen names while it trains. Keeping them in the training vocabulary with their pixels ignored would make
    them a negative of every pixel, which teaches the model never to predict them.
    """
    import numpy as np
    from PIL import Image

    stamp = target / "heldout.json"
    wanted = {
        "source_meta": json.loads((source / "meta.json").read_text()),
        "heldout": list(HELDOUT_CLASSES),
        "protocol": "seen names only",
    }
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return
    classes = dataset_classes(source)
    seen = [name for name in classes if name not in HELDOUT_CLASSES]
    lookup = np.full(256, 255, dtype=np.uint8)  # held-out classes and ignore map to ignore
    for new_index, name in enumerate(seen):
        lookup[classes.index(name)] = new_index
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    (target / "classes.txt").write_text("\n".join(seen) + "\n")
    meta = json.loads((source / "meta.json").read_text())
    (target / "meta.json").write_text(json.dumps(meta | {"classes": seen, "heldout": list(HELDOUT_CLASSES)}) + "\n")
    for path in sorted((target / "masks").glob("*/*.png")):
        mask = Image.open(path)
        out = Image.fromarray(lookup[np.array(mask)])
        out.putpalette(mask.getpalette())
        out.save(path)
    stamp.write_text(json.dumps(wanted) + "\n")


def dataset_classes(data_dir: Path) -> list[str]:
    return (data_dir / "classes.txt").read_text().splitlines()


# -- one run --------------------------------------------------------------------------------------------------------


def _cli_arguments(run: Run, data_dir: Path, run_dir: Path) -> list[str]:
    from bridgeseg.demo import DEMO_CONFIG

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


def _val_iou(
    model: Any, samples: list[tuple[Any, Any]], num_classes: int, names: list[str] | None, keep: list[int] | None = None
) -> Any:
    """Per-class IoU (percent, NaN where a class is neither labelled nor predicted) of `model` on `samples`
    (`_evaluation.val_samples`).

    `names`: the vocabulary a language model predicts with (None: its training names). `keep`: a class subset;
    other pixels are ignored and the prediction is the arg-max over the subset (its names for a language model,
    its logits for a closed-set one).
    """
    import torch

    from bridgeseg.engine.metrics import SegmentationMetric

    metric = SegmentationMetric(num_classes)
    for image, mask in samples:
        if keep is not None:
            mask = torch.where(torch.isin(mask, torch.tensor(keep)), mask, torch.full_like(mask, 255))
        if keep is not None and model.open_vocabulary:
            labels = torch.tensor(keep)[model.predict(image, classes=names)]
        elif keep is not None:
            logits = model(image)  # [1, K, H, W]
            labels = torch.tensor(keep)[logits[:, keep].argmax(1)]
        else:
            labels = model.predict(image, classes=names)
        metric.update(labels, mask)
    return metric.compute()["IoU"].numpy()


def _vocabulary_metrics(
    model: Any, data_dir: Path, train_classes: list[str], paraphrases: dict[str, str]
) -> dict[str, Any]:
    """mIoU on val with the training names, with paraphrased names, and over vocabulary subsets.

    Subsets: `NUM_SUBSETS` fixed random halves of the classes (numpy seed = subset index). Pixels whose label is
    outside the subset are ignored; the language methods get the subset's names as their vocabulary, the closed-set
    methods the arg-max over the subset's logits. mIoU is over the subset's classes, averaged over the subsets.
    """
    import numpy as np
    import torch
    from _evaluation import val_samples

    samples = val_samples(data_dir)
    num_classes = len(train_classes)
    language = model.open_vocabulary

    def evaluate(names: list[str] | None, keep: list[int] | None = None) -> float:
        iou = _val_iou(model, samples, num_classes, names, keep)
        return float(np.nanmean(iou[keep if keep is not None else list(range(num_classes))]))

    model.eval()
    results: dict[str, Any] = {}
    with torch.inference_mode():
        results["mIoU_train_names"] = evaluate(None)
        if language:
            results["mIoU_paraphrased"] = evaluate([paraphrases[name] for name in train_classes])
        subsets = []
        for index in range(NUM_SUBSETS):
            keep = sorted(np.random.default_rng(index).permutation(num_classes)[: num_classes // 2].tolist())
            subsets.append(evaluate([train_classes[i] for i in keep] if language else None, keep))
        results["mIoU_subsets"] = subsets
        results["mIoU_subset_mean"] = float(np.mean(subsets))
    return results


def seen_unseen_miou(classes: list[str], per_class_iou: list[float | None]) -> tuple[float, float]:
    """mIoU (percent) over the classes outside `HELDOUT_CLASSES` and over those inside; None / NaN IoU skipped."""
    import numpy as np

    iou = np.array([np.nan if v is None else v for v in per_class_iou], dtype=float)
    held = np.isin(classes, HELDOUT_CLASSES)
    return float(np.nanmean(iou[~held])), float(np.nanmean(iou[held]))


def _execute(run: Run, data_root: Path, raw_dir: Path) -> dict[str, Any]:
    """Train and evaluate one run in this process; write and return its record."""
    import lightning.pytorch as pl
    import torch
    from _evaluation import val_samples

    from bridgeseg.engine.cli import run_lightning_cli
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
    cli = run_lightning_cli(_cli_arguments(run, data_dir, run_dir), run=False)
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
        all_classes = dataset_classes(data_root / "mosaic")
        with torch.inference_mode():
            iou = _val_iou(model.eval(), val_samples(data_root / "mosaic"), len(all_classes), all_classes)
        per_class = [None if math.isnan(v) else float(v) for v in iou.tolist()]
        seen_miou, unseen_miou = seen_unseen_miou(all_classes, per_class)
        harmonic = 2 * seen_miou * unseen_miou / (seen_miou + unseen_miou) if seen_miou + unseen_miou > 0 else 0.0
        record["heldout"] = {
            "classes": list(HELDOUT_CLASSES),
            "protocol": "seen names only",
            "all_names": all_classes,
            "per_class_IoU_all_names": per_class,
            "seen_mIoU": seen_miou,
            "unseen_mIoU": unseen_miou,
            "harmonic_mIoU": harmonic,
            "seen_mIoU_seen_names_only": record["mIoU"],
        }
    elif _records_vocabulary(run):
        record["vocabulary"] = _vocabulary_metrics(model, data_dir, classes, paraphrases)
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
    shutil.rmtree(run_dir, ignore_errors=True)  # only the record is kept
    text = json.dumps(record, indent=1) + "\n"
    write_atomically(raw_dir / f"{run.name}.json", lambda handle: handle.write(text.encode()))
    return record


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)
    _exit_when_orphaned(os.getppid())


def _exit_when_orphaned(parent: int, poll_s: float = 1.0) -> None:
    """Exit this worker as soon as `parent` (the comparison) is gone, however it was stopped.

    Lightning catches SIGTERM in the worker and trains on, so a killed comparison would leave its workers running
    unseen, sharing the cores with the next comparison and writing records of a plan that was stopped.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-when-orphaned", daemon=True).start()


def check_complete(trainer: Any, iterations: int) -> None:
    """Refuse to record a run that stopped early: Lightning ends `fit` quietly on Ctrl-C (`trainer.interrupted`)."""
    if trainer.interrupted or trainer.global_step != iterations:
        raise RuntimeError(f"training stopped at step {trainer.global_step} of {iterations}; no record written")


def _records_vocabulary(run: Run) -> bool:
    """Whether the run's record holds the vocabulary metrics: every Lite0 run on a mosaic, ablation rows included."""
    return run.backbone == DECISION_BACKBONE[0] and run.dataset != HELDOUT_DATASET


def _finished_record(run: Run, raw_dir: Path) -> dict | None:
    """The run's record if it exists and holds what this version records (older ablation records lack the
    vocabulary, older held-out records come from training with the unseen names in the vocabulary), else None."""
    path = raw_dir / f"{run.name}.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if run.dataset == HELDOUT_DATASET:
        current = record.get("heldout", {}).get("protocol") == "seen names only"
    else:
        current = not _records_vocabulary(run) or "vocabulary" in record
    return record if current else None


def is_finished(run: Run, raw_dir: Path) -> bool:
    """Whether the run has a record this version would not redo (`_finished_record`)."""
    return _finished_record(run, raw_dir) is not None


def run_all(runs: list[Run], data_root: Path, raw_dir: Path, workers: int) -> None:
    """Run every unfinished run, `workers` at a time, each in a worker process that keeps its imports."""
    todo = [run for run in runs if not is_finished(run, raw_dir)]
    logger.info("%d runs planned, %d finished already, %d to do", len(runs), len(runs) - len(todo), len(todo))
    if not todo:
        return
    started = time.perf_counter()
    threads = max(run.budget.threads for run in todo)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_worker_init, initargs=(threads,)
    ) as pool:
        futures = {pool.submit(_execute, run, data_root, raw_dir): run for run in todo}
        for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
            run = futures[future]
            try:
                record = future.result()
            except Exception:
                logger.exception("run %s failed", run.name)
                continue
            logger.info(
                "[%d/%d] %s: mIoU %.2f, %.0f s (total %.1f min)",
                done,
                len(todo),
                run.name,
                record["mIoU"],
                record["wall_time_s"],
                (time.perf_counter() - started) / 60,
            )


# -- statistics -----------------------------------------------------------------------------------------------------


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """`a - b` over paired seeds: mean, 95 % CI and paired t-test (scipy), Wilcoxon signed-rank p-value.

    With n pairs the two-sided Wilcoxon test cannot go below 2 / 2**n (0.0625 for 5 pairs), so its p-value alone
    can never reach 0.05 with 5 seeds; the t-test and the interval carry the decision there.
    """
    from scipy import stats

    diffs = [x - y for x, y in zip(a, b, strict=True)]
    result: dict[str, Any] = {"n": len(diffs), "differences": [round(d, 2) for d in diffs]}
    result["mean"] = round(statistics.fmean(diffs), 2) if diffs else None
    if len(diffs) < 2:
        return result | {"ci95": None, "t_p": None, "wilcoxon_p": None}
    if statistics.pstdev(diffs) == 0:
        return result | {"ci95": [result["mean"], result["mean"]], "t_p": None, "wilcoxon_p": None}
    test = stats.ttest_rel(a, b)
    low, high = test.confidence_interval(0.95)
    wilcoxon = stats.wilcoxon(diffs)
    return result | {
        "ci95": [round(float(low), 2), round(float(high), 2)],
        "t_p": float(test.pvalue),
        "wilcoxon_p": float(wilcoxon.pvalue),
    }


def _paired_by_seed(a: dict[int, float], b: dict[int, float]) -> tuple[list[int], dict[str, Any]]:
    """`paired_difference` of two seed -> value maps over the seeds they share, and those seeds."""
    seeds = sorted(set(a) & set(b))
    return seeds, paired_difference([a[s] for s in seeds], [b[s] for s in seeds])


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _cell(values: Sequence[float]) -> str:
    if not values:
        return "–"
    mean, std = _mean_std(values)
    return f"{mean:.2f} ± {std:.2f} (n={len(values)})" if len(values) > 1 else f"{mean:.2f} (n=1)"


def _p(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


# -- aggregation ----------------------------------------------------------------------------------------------------


def load_records(runs: list[Run], raw_dir: Path) -> dict[str, dict]:
    """The records of the plan's finished runs; a record the next run would redo (`is_finished`) is left out."""
    records = {run.name: _finished_record(run, raw_dir) for run in runs}
    return {name: record for name, record in records.items() if record is not None}


def _summary(items: list[dict]) -> dict[str, Any]:
    mious = [round(item["mIoU"], 2) for item in items]  # rounded first, so every table shows the same mean
    mean, std = _mean_std(mious)
    return {
        "mIoU_mean": round(mean, 2),
        "mIoU_std": round(std, 2),
        "mIoU_runs": mious,
        "seeds": [item["seed"] for item in items],
        "n": len(items),
        "params_M": round(items[0]["params"] / 1e6, 2),
        "GFLOPs": round(items[0]["flops"] / 1e9, 3),
        "wall_time_s_mean": round(statistics.fmean(item["wall_time_s"] for item in items), 1),
    }


def _per_class_differences(bridge: list[dict], other: list[dict]) -> list[dict[str, Any]]:
    """Per class, `bridge - other` in IoU over paired records (same seeds, same order): mean and paired t p-value.

    Descriptive: where the bridge should show an edge (look-alike classes) it would show here first; with K classes
    and three baselines, a few p-values below 0.05 come by chance.
    """
    rows = []
    for index, name in enumerate(bridge[0]["classes"]):
        # A class absent from val and never predicted has no IoU (None): pair only the seeds where both have one.
        pairs = [(a["per_class_IoU"][index], b["per_class_IoU"][index]) for a, b in zip(bridge, other, strict=True)]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        diff = paired_difference([a for a, _ in pairs], [b for _, b in pairs])
        rows.append({"class": name, "mean": diff["mean"], "t_p": diff["t_p"]})
    return rows


def _shown_path(path: Path) -> str:
    """`path` relative to the repository when it lies inside it (as the committed tables show it), else absolute."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def aggregate(the_plan: Plan, raw_dir: Path, budget: Budget) -> dict[str, Any]:
    """Every table of the comparison, from the finished runs of the plan."""
    runs = the_plan.ordered_runs()
    records = load_records(runs, raw_dir)
    summary: dict[str, Any] = {
        "records": _shown_path(raw_dir),
        "budget": budget.to_dict(),
        "planned_runs": len(runs),
        "finished_runs": len(records),
        "complete": len(records) == len(runs),
        "total_wall_time_s": round(sum(r["wall_time_s"] for r in records.values()), 1),
        "median_wall_time_s": round(statistics.median(r["wall_time_s"] for r in records.values()), 1) if records else 0,
        "datasets": {
            name: DATASETS.get(name, {"derived_from": "mosaic", "heldout": list(HELDOUT_CLASSES)})
            for name in sorted({run.dataset for run in runs})
        },
        "main": [],
        "paired": [],
        "per_class": [],
        "curve": [],
        "ablation": [],
        "vocabulary": [],
        "vocabulary_paired": [],
        "ablation_paired": [],
        "heldout": [],
        "heldout_paired": [],
        "scratch": [],
    }

    def done(study: str) -> list[tuple[Run, dict]]:
        return [(run, records[run.name]) for run in the_plan.studies.get(study, []) if run.name in records]

    def group(pairs: list[tuple[Run, dict]], key: Any) -> dict[Any, list[dict]]:
        groups: dict[Any, list[dict]] = {}
        for run, record in pairs:
            groups.setdefault(key(run), []).append(record)
        return groups

    decision = done("decision")
    by_cell = group(decision, lambda run: (run.dataset, run.method))
    for (dataset, method), items in by_cell.items():
        summary["main"].append(
            {"method": method, "backbone": DECISION_BACKBONE[0], "pretrained": DECISION_BACKBONE[1], "dataset": dataset}
            | _summary(items)
        )
    for dataset in sorted({run.dataset for run, _ in decision}):
        by_seed = {m: {r["seed"]: r for r in by_cell.get((dataset, m), [])} for m in METHODS}
        for other in ("denseclip", "lseg", "fpn"):
            seeds = sorted(set(by_seed["bridge"]) & set(by_seed[other]))
            mine, theirs = [by_seed["bridge"][s] for s in seeds], [by_seed[other][s] for s in seeds]
            diff = paired_difference([r["mIoU"] for r in mine], [r["mIoU"] for r in theirs])
            comparison = {"dataset": dataset, "comparison": f"bridge - {other}", "seeds": seeds}
            summary["paired"].append(comparison | diff)
            if len(seeds) >= 2:
                summary["per_class"] += [comparison | row for row in _per_class_differences(mine, theirs)]
        for method in METHODS:
            items = by_cell.get((dataset, method), [])
            vocab = [r["vocabulary"] for r in items if "vocabulary" in r]
            if not vocab:
                continue
            row = {"dataset": dataset, "method": method, "n": len(vocab), "open_vocabulary": method in LANGUAGE_METHODS}
            for key in ("mIoU_train_names", "mIoU_paraphrased", "mIoU_subset_mean"):
                values = [v[key] for v in vocab if key in v]
                row[key] = [round(v, 2) for v in values]
            if row["mIoU_paraphrased"]:
                kept = [p / t * 100 for p, t in zip(row["mIoU_paraphrased"], row["mIoU_train_names"], strict=True)]
                row["paraphrase_kept_percent"] = [round(v, 1) for v in kept]
            summary["vocabulary"].append(row)
        # The two open-vocabulary methods under renamed classes, seed by seed.
        paraphrased = {
            m: {
                r["seed"]: r["vocabulary"]["mIoU_paraphrased"]
                for r in by_cell.get((dataset, m), [])
                if "vocabulary" in r
            }
            for m in LANGUAGE_METHODS
        }
        seeds, diff = _paired_by_seed(paraphrased["bridge"], paraphrased["lseg"])
        if seeds:
            summary["vocabulary_paired"].append(
                {"dataset": dataset, "comparison": "bridge - lseg, paraphrased names", "seeds": seeds} | diff
            )

    for (method, iterations), items in sorted(
        group(done("curve"), lambda run: (run.method, run.budget.iterations)).items(), key=lambda kv: kv[0][1]
    ):
        summary["curve"].append({"method": method, "iterations": iterations} | _summary(items))

    ablation_runs = the_plan.studies.get("ablation") or [None]
    ablation_dataset = ablation_runs[0].dataset if ablation_runs[0] else DATASETS_ORDER[0]
    references = {
        method: {r["seed"]: r for run, r in decision if run.dataset == ablation_dataset and run.method == method}
        for method in ("bridge", "lseg")
    }
    default, default_lseg = references["bridge"], references["lseg"]

    def paraphrased(records: list[dict]) -> dict[int, float]:
        """Seed -> mIoU with renamed classes; closed-set variants (`concat_score_map`) have none."""
        return {
            r["seed"]: r["vocabulary"]["mIoU_paraphrased"] for r in records if "mIoU_paraphrased" in r["vocabulary"]
        }

    if default:
        summary["ablation"].append(
            {"variant": "default", "method": "bridge"}
            | _summary(list(default.values()))
            | {"paraphrased_runs": [round(v, 2) for v in paraphrased(list(default.values())).values()]}
        )
    by_variant = group(done("ablation"), lambda run: run.variant)
    for variant, items in by_variant.items():
        method, options = ABLATIONS[variant]
        reference = default_lseg if method == "lseg" else default
        _, diff = _paired_by_seed({r["seed"]: r["mIoU"] for r in items}, {s: r["mIoU"] for s, r in reference.items()})
        # Renamed classes: what the switch does to the language path's one edge (see the vocabulary table).
        mine_renamed = paraphrased(items)
        _, renamed = _paired_by_seed(mine_renamed, paraphrased(list(reference.values())))
        summary["ablation"].append(
            {"variant": variant, "method": method, "options": options}
            | _summary(items)
            | {"vs_default": diff, "paraphrased_runs": [round(v, 2) for v in mine_renamed.values()]}
            | {"paraphrased_vs_default": renamed}
        )
    for variant, other in ABLATION_REFERENCES.items():
        if variant in by_variant and other in by_variant:
            seeds, diff = _paired_by_seed(
                {r["seed"]: r["mIoU"] for r in by_variant[variant]}, {r["seed"]: r["mIoU"] for r in by_variant[other]}
            )
            summary["ablation_paired"].append({"comparison": f"{variant} - {other}", "seeds": seeds} | diff)

    # Held-out classes: next to each method, what the same seeds score on the same classes when trained on all of
    # them (its decision runs on the mosaic the held-out copy derives from), and bridge - lseg seed by seed.
    trained_on_all = {
        method: {r["seed"]: r for run, r in decision if run.dataset == "mosaic" and run.method == method}
        for method in LANGUAGE_METHODS
    }
    heldout_by_seed: dict[str, dict[int, dict]] = {}
    for method, items in group(done("heldout"), lambda run: run.method).items():
        heldout_by_seed[method] = {r["seed"]: r["heldout"] for r in items}
        row = {"method": method, "n": len(items), "seeds": [r["seed"] for r in items]}
        for key in ("seen_mIoU", "unseen_mIoU", "harmonic_mIoU", "seen_mIoU_seen_names_only"):
            row[key] = [round(r["heldout"][key], 2) for r in items]
        full = [trained_on_all[method][r["seed"]] for r in items if r["seed"] in trained_on_all.get(method, {})]
        splits = [seen_unseen_miou(r["classes"], r["per_class_IoU"]) for r in full]
        row["trained_on_all"] = {
            "seeds": [r["seed"] for r in full],
            "seen_mIoU": [round(seen, 2) for seen, _ in splits],
            "heldout_classes_mIoU": [round(unseen, 2) for _, unseen in splits],
        }
        summary["heldout"].append(row)
    if {"bridge", "lseg"} <= set(heldout_by_seed):
        for key in ("unseen_mIoU", "harmonic_mIoU", "seen_mIoU"):
            seeds, diff = _paired_by_seed(
                {s: h[key] for s, h in heldout_by_seed["bridge"].items()},
                {s: h[key] for s, h in heldout_by_seed["lseg"].items()},
            )
            summary["heldout_paired"].append({"comparison": "bridge - lseg", "metric": key, "seeds": seeds} | diff)

    for (backbone, method), items in group(done("scratch"), lambda run: (run.backbone, run.method)).items():
        summary["scratch"].append({"method": method, "backbone": backbone, "pretrained": False} | _summary(items))

    summary["runs"] = [
        {
            "run": name,
            "seed": r["seed"],
            "mIoU": round(r["mIoU"], 2),
            "wall_time_s": round(r["wall_time_s"], 1),
            "cpu": r.get("cpu"),
            "finished": r["finished"],
        }
        for name, r in records.items()
    ]
    summary["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads per run {budget.threads}"
    return summary


def plot_curve(summary: dict[str, Any], path: Path) -> bool:
    """The learning curve as a PNG; False when there is nothing to plot yet."""
    if not summary["curve"]:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for method in ("bridge", "fpn"):
        rows = [row for row in summary["curve"] if row["method"] == method]
        if rows:
            axis.errorbar(
                [row["iterations"] for row in rows],
                [row["mIoU_mean"] for row in rows],
                yerr=[row["mIoU_std"] for row in rows],
                marker="o",
                capsize=3,
                label=method,
            )
    budget = summary["budget"]
    axis.set_xscale("log", base=2)
    axis.set_xlabel(f"iterations (batch {budget['batch_size']}, crop {budget['crop_size']})")
    axis.set_ylabel("mIoU on mosaic val")
    axis.set_title("Learning curve, EfficientNet-Lite0 (ImageNet)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


def _paired_cells(row: dict[str, Any]) -> tuple[str, str, str]:
    """A `paired_difference` row as text: the per-seed differences, the mean and the 95 % interval."""
    per_seed = ", ".join(f"{d:+.2f}" for d in row["differences"])
    mean = f"{row['mean']:+.2f}" if row["mean"] is not None else "–"
    ci = f"[{row['ci95'][0]:+.2f}, {row['ci95'][1]:+.2f}]" if row.get("ci95") else "–"
    return per_seed, mean, ci


def _paired_sentence(row: dict[str, Any]) -> str:
    per_seed, mean, ci = _paired_cells(row)
    return f"per seed {per_seed}, mean {mean}, 95 % CI {ci}, paired t p {_p(row.get('t_p'))}."


def _per_class_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """One table per dataset: classes down, `bridge - X` (mean IoU difference, paired t p) across."""
    lines: list[str] = []
    for dataset in sorted({row["dataset"] for row in rows}, key=DATASETS_ORDER.index):
        mine = [row for row in rows if row["dataset"] == dataset]
        comparisons = list(dict.fromkeys(row["comparison"] for row in mine))
        cells = {(row["class"], row["comparison"]): row for row in mine}
        significant = sum(1 for row in mine if row["t_p"] is not None and row["t_p"] < 0.05)
        lines += [
            f"### Per class, `{dataset}`: IoU difference (paired t p)",
            "",
            f"Descriptive: {significant} of {len(mine)} class-level p-values are below 0.05, where chance alone gives "
            f"about {0.05 * len(mine):.1f}.",
            "",
            "| class | " + " | ".join(comparisons) + " |",
            "|---|" + "---:|" * len(comparisons),
        ]
        for name in dict.fromkeys(row["class"] for row in mine):
            values = [cells[(name, comparison)] for comparison in comparisons]
            shown = ("–" if v["mean"] is None else f"{v['mean']:+.2f} ({_p(v['t_p'])})" for v in values)
            lines.append(f"| {name} | " + " | ".join(shown) + " |")
        lines.append("")
    return lines


def to_markdown(summary: dict[str, Any], curve_name: str = "compare_curve.png") -> str:
    """Markdown tables of an aggregate; `curve_name`: the learning curve's PNG, beside the table."""
    budget = summary["budget"]
    lines = ["# Comparison on the offline mosaics (generated by `benchmarks/compare.py`)", ""]
    if not summary["complete"]:
        lines += [
            f"**PARTIAL: {summary['finished_runs']} of {summary['planned_runs']} planned runs finished.** "
            "Re-run the same command to finish (finished runs are skipped); tables show what is finished.",
            "",
        ]
    lines += [
        f"Decision budget, identical for every method: {budget['iterations']} iterations, batch "
        f"{budget['batch_size']}, crop {budget['crop_size']}x{budget['crop_size']}, random scale "
        f"{budget['scale_range'][0]:g}-{budget['scale_range'][1]:g}, AdamW lr {budget['lr']:g} (backbone x0.1 when "
        f"ImageNet-pretrained, x1 from scratch), wd 1e-4, {budget['warmup_iters']} warmup iterations then poly 0.9; "
        "MiniLM text embeddings (no image-text pretraining); validation on the 100 whole 192x192 val images. "
        f"{budget['threads']} torch thread per run, two runs at a time on 2 CPU cores.",
        "",
        f"Wall time: the finished runs sum to {summary['total_wall_time_s'] / 3600:.2f} h (median run "
        f"{summary['median_wall_time_s']:.0f} s, with another run beside it).",
        "",
        "## Decision table: EfficientNet-Lite0 (ImageNet)",
        "",
        "mIoU on val, mean ± sample std over seeds.",
        "",
    ]
    datasets = sorted({row["dataset"] for row in summary["main"]}, key=DATASETS_ORDER.index)
    by_key = {(row["dataset"], row["method"]): row for row in summary["main"]}
    lines += [
        "| method | " + " | ".join(datasets) + " | params (M) | GFLOPs |",
        "|---|" + "---:|" * (len(datasets) + 2),
    ]
    for method in METHODS:
        rows = [by_key.get((dataset, method)) for dataset in datasets]
        if not any(rows):
            continue
        first = next(row for row in rows if row)
        cells = [_cell(row["mIoU_runs"]) if row else "–" for row in rows]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {first['params_M']:.2f} | {first['GFLOPs']:.3f} |")
    lines += [
        "",
        f"GFLOPs for one {budget['crop_size']}x{budget['crop_size']} image, 2 FLOPs per multiply-add, 13 classes.",
        "",
        "### Paired differences (same seed, same data order)",
        "",
        "| dataset | difference | seeds | per seed | mean | 95 % CI | paired t p | Wilcoxon p |",
        "|---|---|---|---|---:|---|---:|---:|",
    ]
    for row in summary["paired"]:
        per_seed, mean, ci = _paired_cells(row)
        lines.append(
            f"| {row['dataset']} | {row['comparison']} | {len(row['seeds'])} | {per_seed} | {mean} | {ci} | "
            f"{_p(row.get('t_p'))} | {_p(row.get('wilcoxon_p'))} |"
        )
    lines += [
        "",
        "With 5 pairs the two-sided Wilcoxon p-value cannot fall below 0.0625; the t-test and the interval decide.",
        "",
    ]
    lines += _per_class_markdown(summary["per_class"])
    if summary["curve"]:
        lines += [
            "## Learning curve: bridge and fpn, EfficientNet-Lite0, `mosaic`",
            "",
            "Each point is its own run with the whole schedule (warmup and poly decay) at that length.",
            "",
            f"![learning curve]({curve_name})",
            "",
            "| method | iterations | mIoU | wall time per run (s) |",
            "|---|---:|---:|---:|",
        ]
        for row in summary["curve"]:
            lines.append(
                f"| {row['method']} | {row['iterations']} | {_cell(row['mIoU_runs'])} | {row['wall_time_s_mean']:.0f} |"
            )
        lines.append("")
    if summary["vocabulary"]:
        lines += [
            "## What the language path buys: vocabulary at test time",
            "",
            "Same decision runs. *Paraphrased*: every class renamed (`benchmarks/paraphrases.json`); closed-set "
            "methods cannot take new names. *Subsets*: 5 fixed random halves of the classes; labels outside the half "
            "are ignored; language methods are given the half's names, closed-set ones the arg-max over the half's "
            "logits; mIoU over the half's classes.",
            "",
            "| dataset | method | open vocabulary | training names | paraphrased | kept (%) | subsets |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        for row in summary["vocabulary"]:
            kept = row.get("paraphrase_kept_percent")
            lines.append(
                f"| {row['dataset']} | {row['method']} | {'yes' if row['open_vocabulary'] else 'no (closed-set)'} | "
                f"{_cell(row['mIoU_train_names'])} | "
                f"{_cell(row['mIoU_paraphrased']) if row['mIoU_paraphrased'] else '–'} "
                f"| {_cell(kept) if kept else '–'} | {_cell(row['mIoU_subset_mean'])} |"
            )
        for row in summary["vocabulary_paired"]:
            lines.append(f"\nPaired, {row['dataset']}, {row['comparison']}: {_paired_sentence(row)}")
        lines.append("")
    if summary["heldout"]:
        lines += [
            f"## Held-out classes ({', '.join(HELDOUT_CLASSES)}): generalised zero-shot",
            "",
            "Trained on `mosaic` without those classes (names removed from the vocabulary, pixels ignored), "
            "evaluated on `mosaic` val with every name. *Seen names only*: the seen classes' mIoU when predicting "
            "with the training names alone. *Trained on all*: the same method and seeds in the decision table "
            "(every class trained), on the same two class groups.",
            "",
            "| method | seen mIoU | unseen mIoU | harmonic mean | seen names only | trained on all: seen | "
            "trained on all: held-out classes |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in summary["heldout"]:
            full = row["trained_on_all"]
            lines.append(
                f"| {row['method']} | {_cell(row['seen_mIoU'])} | {_cell(row['unseen_mIoU'])} | "
                f"{_cell(row['harmonic_mIoU'])} | {_cell(row['seen_mIoU_seen_names_only'])} | "
                f"{_cell(full['seen_mIoU'])} | {_cell(full['heldout_classes_mIoU'])} |"
            )
        lines.append("")
        for row in summary["heldout_paired"]:
            lines.append(f"- {row['comparison']}, {row['metric']}: {_paired_sentence(row)}")
        if summary["heldout_paired"]:
            lines.append("")
    if summary["ablation"]:
        lines += [
            "## Ablation on `mosaic`, decision budget",
            "",
            "One switch at a time; difference to the default (same seeds), with its paired t-test. *Paraphrased*: "
            "mIoU with every class renamed (as in the vocabulary table); rows recorded before the ablation recorded "
            "it have none.",
            "",
            "| variant | method | options | mIoU | vs default | paired t p | paraphrased | vs default | paired t p "
            "| params (M) | GFLOPs |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]

        def delta(diff: dict | None) -> str:
            return f"{diff['mean']:+.2f} (n={diff['n']})" if diff and diff["mean"] is not None else "–"

        for row in summary["ablation"]:
            diff, renamed = row.get("vs_default"), row.get("paraphrased_vs_default")
            options = ", ".join(f"{k}={v}" for k, v in row.get("options", {}).items()) or "–"
            lines.append(
                f"| {row['variant']} | {row['method']} | {options} | {_cell(row['mIoU_runs'])} | {delta(diff)} | "
                f"{_p(diff.get('t_p')) if diff else '–'} | {_cell(row.get('paraphrased_runs', []))} | "
                f"{delta(renamed)} | {_p(renamed.get('t_p')) if renamed else '–'} | {row['params_M']:.2f} | "
                f"{row['GFLOPs']:.3f} |"
            )
        lines.append("")
        for row in summary["ablation_paired"]:
            lines.append(f"- {row['comparison']}, mIoU: {_paired_sentence(row)}")
        if summary["ablation_paired"]:
            lines.append("")
    if summary["scratch"]:
        lines += [
            "## Backbones from scratch (not informative while `fpn` is below 25 mIoU)",
            "",
            "| backbone | method | mIoU |",
            "|---|---|---:|",
        ]
        for row in summary["scratch"]:
            lines.append(f"| {row['backbone']} | {row['method']} | {_cell(row['mIoU_runs'])} |")
        lines.append("")
    lines += [
        "## Every run",
        "",
        "Wall time covers building the model, training, validation, the vocabulary evaluation and the cost count, "
        "with another run beside it.",
        "",
        "| run | seed | mIoU | wall time (s) | finished |",
        "|---|---:|---:|---:|---|",
    ]
    for record in summary["runs"]:
        lines.append(
            f"| {record['run']} | {record['seed']} | {record['mIoU']:.2f} | {record['wall_time_s']:.0f} | "
            f"{record['finished']} |"
        )
    lines += ["", f"Per-run records: `{summary['records']}/<run>.json`.", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    default = Budget()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", nargs="+", choices=STUDIES, default=list(STUDIES), help="studies, in order")
    parser.add_argument("--data-root", default=str(REPO / "data"), help="where the mosaics are generated")
    parser.add_argument("--raw-dir", default=str(RAW), help="per-run records")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="decision-table seeds")
    parser.add_argument("--curve-iterations", type=int, nargs="+", default=[200, 600, 1200, 2400])
    parser.add_argument("--curve-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--ablation-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(ABLATIONS), help="ablation variants (default: all)")
    parser.add_argument("--heldout-seeds", type=int, nargs="+", default=[0, 1, 2])
    # One seed: from scratch at this budget the backbones sat at the floor in v1 (11-31 mIoU) and decide nothing;
    # add seeds when `fpn` clears 25 there.
    parser.add_argument("--scratch-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--iterations", type=int, default=default.iterations)
    parser.add_argument("--batch-size", type=int, default=default.batch_size)
    parser.add_argument("--crop-size", type=int, default=default.crop_size)
    parser.add_argument("--lr", type=float, default=default.lr)
    parser.add_argument("--scale-range", type=float, nargs=2, default=list(default.scale_range))
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel")
    parser.add_argument("--threads", type=int, default=default.threads, help="torch threads per run")
    parser.add_argument("--aggregate-only", action="store_true", help="only rebuild the tables and the plot")
    parser.add_argument(
        "--out",
        default=str(RESULTS / "compare"),
        help="the aggregate: OUT.md, OUT.json and OUT_curve.png (give another for another budget's study)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    sys.path.insert(0, str(REPO / "src"))
    the_plan = plan(args)
    runs = the_plan.ordered_runs()
    raw_dir = Path(args.raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    data_root = Path(args.data_root)
    if not args.aggregate_only:
        prepare_data(data_root, {run.dataset for run in runs})
        run_all(runs, data_root, raw_dir, args.workers)
    budget = Budget(args.iterations, args.batch_size, args.crop_size, args.lr, tuple(args.scale_range), args.threads)
    summary = aggregate(the_plan, raw_dir, budget)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    curve = out.with_name(f"{out.name}_curve.png")
    plot_curve(summary, curve)
    markdown = to_markdown(summary, curve.name)
    write_results(out, summary, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
