"""Fine-tuning onto a new vocabulary: what a trained model buys over ImageNet weights, per method, at short budgets.

Each method's `mosaic` model (13 classes, trained once here at the decision budget: 600 iterations, seed 0) is
fine-tuned with `bridgeseg fit --model.init_from` onto `mosaic_hard` (15 classes: the 13 names of `mosaic` and two
new ones, other images and harder settings; see `_compare_plan.DATASETS`) for 50, 150 and 300 iterations, against
the same method started from ImageNet weights (the default pretrained EfficientNet-Lite0). Everything else is the
comparison's decision recipe (`_compare_plan.Budget`: batch 8, crop 128, lr 1e-3, warmup a twentieth, poly); the
seeds (5) vary the fine-tuning run, not the source model. Results: paired differences (from `mosaic` - from
ImageNet) per method and budget with a 95 % CI and a paired t-test, on the mIoU of all classes, of the 13 shared
classes and of the 2 new ones.

Runs go through the comparison's machinery (`_compare_data` generates the mosaics, `_compare_run.execute` trains
and evaluates through the real engine, `_compare_pool` runs them in worker processes, `_paired_statistics` tests),
one JSON record per run under `benchmarks/results/finetune.raw/`; a restarted study skips the runs whose record
exists, so it can be stopped and resumed at any time and done in parts (`--methods`, `--budgets`, `--seeds`). The
source models are kept under `finetune.raw/sources/` (not committed); a fine-tune record names the weights it
started from, and is redone if the source was trained again to other weights.

Usage:
    python benchmarks/finetune.py --methods bridge fpn                  # 2 source runs + 60 short runs
    python benchmarks/finetune.py                                       # all four methods (124 runs)
    python benchmarks/finetune.py --aggregate-only                      # rebuild finetune.{md,json}
    python benchmarks/finetune.py --methods fpn --budgets 5 --seeds 0 --source-iterations 5 \\
        --raw-dir /tmp/ft.raw --out /tmp/ft                            # a smoke test of the whole script
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from _compare_data import dataset_classes, prepare_data
from _compare_plan import DECISION_BACKBONE, METHODS, REPO, RESULTS, Budget, Run
from _compare_pool import run_all
from _paired_statistics import mean_std, paired_by_seed
from _results import write_results

RAW = RESULTS / "finetune.raw"
SOURCE_DATASET = "mosaic"
TARGET_DATASET = "mosaic_hard"
STARTS = ("imagenet", "mosaic")  # the reference first: differences are `mosaic - imagenet`
METRICS = ("mIoU", "shared_mIoU", "new_mIoU")

logger = logging.getLogger("finetune")


@dataclasses.dataclass(frozen=True)
class FinetuneRun(Run):
    """A run of this study: a source (on `mosaic`, model kept) or a fine-tune on `mosaic_hard` from `start`.

    Attributes:
        start: "imagenet" or "mosaic" for a fine-tune; "" for a source.
        source: The source run a "mosaic" fine-tune starts from.
    """

    start: str = ""
    source: Run | None = None


def source_run(method: str, iterations: int) -> FinetuneRun:
    """The method's `mosaic` model: the comparison's decision run of seed 0, with the model kept."""
    backbone, pretrained = DECISION_BACKBONE
    return FinetuneRun(method, backbone, pretrained, SOURCE_DATASET, 0, Budget(iterations=iterations))


def finetune_run(method: str, iterations: int, seed: int, start: str, source: Run) -> FinetuneRun:
    """A short run on `mosaic_hard` from ImageNet weights or from `source`'s model."""
    backbone, pretrained = DECISION_BACKBONE
    variant = "imagenet" if start == "imagenet" else f"from_{source.dataset}_{source.budget.tag}"
    budget = Budget(iterations=iterations)
    return FinetuneRun(method, backbone, pretrained, TARGET_DATASET, seed, budget, variant, start=start, source=source)


def plan(methods: list[str], budgets: list[int], seeds: list[int], source_iterations: int) -> list[FinetuneRun]:
    """The sources first (every fine-tune from `mosaic` needs one), then the fine-tunes seed by seed, so that a
    partial study has complete pairs."""
    sources = {method: source_run(method, source_iterations) for method in methods}
    runs: list[FinetuneRun] = list(sources.values())
    for seed in seeds:
        for iterations in budgets:
            for method in methods:
                runs += [finetune_run(method, iterations, seed, start, sources[method]) for start in STARTS]
    return runs


def source_dir(source: Run, raw_dir: Path) -> Path:
    """Where a source run keeps its model (a checkpoint folder)."""
    return raw_dir / "sources" / source.name


def weights_fingerprint(model_dir: Path) -> str | None:
    """A hash of a model folder's tensors (names, shapes and bytes), blind to the save's metadata; None if absent."""
    import torch

    from bridgeseg.models.weights import read_safetensors

    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        return None
    tensors, _ = read_safetensors(weights)
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}{list(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def execute(run: FinetuneRun, data_root: Path, raw_dir: Path) -> dict[str, Any]:
    """Train and evaluate one run of the study (in a worker process) and write its record."""
    from _compare_run import execute as execute_run

    if run.source is None:
        return execute_run(run, data_root, raw_dir, save_model=source_dir(run, raw_dir), vocabulary=False)
    extra: dict[str, Any] = {"start": run.start}
    arguments: list[str] = []
    if run.start == "mosaic":
        model_dir = source_dir(run.source, raw_dir)
        arguments = ["--model.init_from", str(model_dir)]
        extra |= {"source": run.source.name, "source_fingerprint": weights_fingerprint(model_dir)}
    return execute_run(run, data_root, raw_dir, extra_arguments=arguments, vocabulary=False, extra_record=extra)


def is_finished(run: FinetuneRun, raw_dir: Path) -> bool:
    """A record exists; a source's model is there too; a fine-tune from `mosaic` started from the source's weights
    as they are now."""
    record = read_record(run, raw_dir)
    if record is None:
        return False
    if run.source is None:
        return weights_fingerprint(source_dir(run, raw_dir)) is not None
    if run.start == "mosaic":
        return record.get("source_fingerprint") == weights_fingerprint(source_dir(run.source, raw_dir))
    return True


def read_record(run: Run, raw_dir: Path) -> dict[str, Any] | None:
    path = raw_dir / f"{run.name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


# -------------------------------------------------------------------------------------------------- aggregate


def _normalise(name: str) -> str:
    return " ".join(name.split()).casefold()


def class_split(record: dict[str, Any], source_classes: list[str]) -> dict[str, float | None]:
    """The run's mIoU over the classes its source shares (by name) and over the new ones (NaN classes left out)."""
    shared_names = {_normalise(name) for name in source_classes}
    groups: dict[str, list[float]] = {"shared_mIoU": [], "new_mIoU": []}
    for name, iou in zip(record["classes"], record["per_class_IoU"], strict=True):
        if iou is not None and not math.isnan(iou):
            groups["shared_mIoU" if _normalise(name) in shared_names else "new_mIoU"].append(iou)
    return {key: (sum(values) / len(values) if values else None) for key, values in groups.items()}


def aggregate(runs: list[FinetuneRun], raw_dir: Path, source_classes: list[str]) -> dict[str, Any]:
    """Per method and budget: each start's mean ± std and the paired differences, on the three mIoUs."""
    sources = {run.method: run for run in runs if run.source is None}
    summary: dict[str, Any] = {"sources": {}, "rows": [], "source_classes": source_classes}
    for method, source in sources.items():
        record = read_record(source, raw_dir)
        if record is not None:
            summary["sources"][method] = {
                "run": source.name,
                "mIoU_on_mosaic": round(record["mIoU"], 2),
                "iterations": record["iterations"],
                "fingerprint": weights_fingerprint(source_dir(source, raw_dir)),
            }
    values: dict[tuple[str, int, str], dict[int, dict[str, float | None]]] = {}
    new_classes: set[str] = set()
    for run in runs:
        if run.source is None:
            continue
        record = read_record(run, raw_dir)
        if record is None or not is_finished(run, raw_dir):
            continue
        split = class_split(record, source_classes)
        new_classes |= {name for name in record["classes"] if _normalise(name) not in map(_normalise, source_classes)}
        values.setdefault((run.method, run.budget.iterations, run.start), {})[run.seed] = {
            "mIoU": record["mIoU"],
            **split,
        }
    summary["new_classes"] = sorted(new_classes)
    budgets = sorted({key[1] for key in values})
    for method in sources:
        for iterations in budgets:
            starts = {start: values.get((method, iterations, start), {}) for start in STARTS}
            if not any(starts.values()):
                continue
            row: dict[str, Any] = {"method": method, "iterations": iterations}
            for metric in METRICS:
                per_start = {
                    start: {seed: v[metric] for seed, v in by_seed.items() if v[metric] is not None}
                    for start, by_seed in starts.items()
                }
                seeds, difference = paired_by_seed(per_start["mosaic"], per_start["imagenet"])
                row[f"difference_{metric}"] = difference | {"seeds": seeds}
                # Each start over the paired seeds only, so that the columns and their difference agree.
                for start, by_seed in per_start.items():
                    if seeds:
                        mean, std = mean_std([by_seed[seed] for seed in seeds])
                        row[f"{start}_{metric}"] = {"mean": round(mean, 2), "std": round(std, 2), "n": len(seeds)}
            summary["rows"].append(row)
    return summary


def _cell(entry: dict[str, Any] | None) -> str:
    return f"{entry['mean']:.2f} ± {entry['std']:.2f}" if entry else "–"


def _difference(entry: dict[str, Any]) -> str:
    if entry.get("mean") is None:
        return "–"
    ci = entry.get("ci95")
    interval = f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ""
    p = entry.get("t_p")
    return f"{entry['mean']:+.2f}{interval}" + (f", p {p:.3g}" if p is not None else "")


def to_markdown(summary: dict[str, Any], command: str) -> str:
    """The study's tables: one per mIoU (all, shared, new classes)."""
    lines = [
        "# Fine-tuning onto a new vocabulary (`benchmarks/finetune.py`)",
        "",
        "Each method's `mosaic` model (13 classes; one source per method, trained here for "
        + ", ".join(f"{m} {s['iterations']} it" for m, s in summary["sources"].items())
        + ", seed 0) fine-tuned with `fit --model.init_from` onto `mosaic_hard` (15 classes: the 13 shared names and "
        f"{', '.join(summary['new_classes']) or 'the new ones'}), against the same method from ImageNet weights "
        "(EfficientNet-Lite0), at each budget; otherwise the comparison's decision recipe (batch 8, crop 128, lr 1e-3, "
        "backbone lr x0.1, warmup a twentieth, poly). **The seeds vary the fine-tuning run, not the source**: every "
        "fine-tune of a method starts from the same source model, so the intervals say nothing about how another "
        "source would transfer. Differences are paired by seed (from `mosaic` - from ImageNet): mean, 95 % CI and "
        "paired t-test p. Validation: the 100 `mosaic_hard` val images, whole-image inference.",
        "",
        "Sources (mIoU on `mosaic` val): "
        + ", ".join(f"{m} {s['mIoU_on_mosaic']:.2f}" for m, s in summary["sources"].items()),
        "",
    ]
    titles = {
        "mIoU": "All 15 classes",
        "shared_mIoU": "The 13 shared classes",
        "new_mIoU": "The new classes",
    }
    for metric, title in titles.items():
        lines += [
            f"## {title} (mIoU)",
            "",
            "| method | iterations | from ImageNet | from `mosaic` | difference [95 % CI], p | seeds |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for row in summary["rows"]:
            difference = row[f"difference_{metric}"]
            lines.append(
                f"| {row['method']} | {row['iterations']} | {_cell(row.get(f'imagenet_{metric}'))} | "
                f"{_cell(row.get(f'mosaic_{metric}'))} | {_difference(difference)} | {difference['n']} |"
            )
        lines.append("")
    lines += ["Command:", "", f"    {command}", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--budgets", type=int, nargs="+", default=[50, 150, 300], help="fine-tuning iterations")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="fine-tuning seeds")
    parser.add_argument("--source-iterations", type=int, default=Budget().iterations, help="the sources' budget")
    parser.add_argument("--data-root", default=str(REPO / "data"), help="where the mosaics are generated")
    parser.add_argument("--raw-dir", default=str(RAW), help="per-run records (and the source models)")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (one torch thread each)")
    parser.add_argument("--aggregate-only", action="store_true", help="only rebuild the tables from the records")
    parser.add_argument("--out", default=str(RESULTS / "finetune"), help="the aggregate: OUT.md and OUT.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    sys.path.insert(0, str(REPO / "src"))
    runs = plan(args.methods, args.budgets, args.seeds, args.source_iterations)
    raw_dir = Path(args.raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    data_root = Path(args.data_root)
    if not args.aggregate_only:
        prepare_data(data_root, {SOURCE_DATASET, TARGET_DATASET})
        sources = [run for run in runs if run.source is None]
        logger.info("sources: %s", ", ".join(run.name for run in sources))
        run_all(sources, data_root, raw_dir, args.workers, execute, is_finished)
        missing = [run.name for run in sources if not is_finished(run, raw_dir)]
        if missing:
            logger.error("no source model for %s; their fine-tunes from `mosaic` are left for a rerun", missing)
        ready = [run for run in runs if run.source is not None and run.source.name not in missing]
        run_all(ready, data_root, raw_dir, args.workers, execute, is_finished)
    source_classes = source_class_names(runs, raw_dir, data_root)
    summary = aggregate(runs, raw_dir, source_classes)
    command = "python benchmarks/finetune.py " + " ".join(argv if argv is not None else sys.argv[1:])
    summary["command"] = command.strip()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_results(out, summary, to_markdown(summary, summary["command"]))
    return 0


def source_class_names(runs: list[FinetuneRun], raw_dir: Path, data_root: Path) -> list[str]:
    """The classes of `mosaic`: from a source's record, else from the generated dataset."""
    for run in runs:
        record = read_record(run, raw_dir) if run.source is None else None
        if record is not None:
            return list(record["classes"])
    return dataset_classes(data_root / SOURCE_DATASET)


if __name__ == "__main__":
    sys.exit(main())
