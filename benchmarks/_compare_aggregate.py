"""The comparison's aggregate: every table as data (the JSON document), from the finished runs' records."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _compare_plan import (
    ABLATION_REFERENCES,
    ABLATIONS,
    BENCHMARK_MODEL,
    DATASETS,
    DATASETS_ORDER,
    DECISION_BACKBONE,
    HELDOUT_CLASSES,
    LANGUAGE_METHODS,
    LIGHT_HEADS,
    METHODS,
    REPO,
    Budget,
    Plan,
    Run,
)
from _compare_run import load_records
from _compare_vocabulary import seen_unseen_miou
from _paired_statistics import mean_std, paired_by_seed, paired_difference


def _summary(items: list[dict]) -> dict[str, Any]:
    mious = [round(item["mIoU"], 2) for item in items]  # rounded first, so every table shows the same mean
    mean, std = mean_std(mious)
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


# The cost column of the light-heads table: the size and class count the literature quotes (ADE20K's 150).
COST_SIZE = 512
COST_CLASSES = 150
TEXT_DIM = 384  # MiniLM's, the comparison's text encoder


def cost_at_512(methods: list[str]) -> dict[str, dict[str, float]]:
    """Params (M) and GFLOPs (2 per multiply-add) of each method on the decision backbone at 512x512 with 150
    classes, built as the comparison trains it (`BENCHMARK_MODEL`); random class embeddings of MiniLM's width stand in
    for the text encoder, which is not counted."""
    import torch

    from bridgeseg.models import create_model
    from bridgeseg.models.cost import cost_report
    from bridgeseg.models.methods.base import method_class

    classes = [f"class {i}" for i in range(COST_CLASSES)]
    costs = {}
    for method in methods:
        embeddings = torch.randn(COST_CLASSES, TEXT_DIM) if method_class(method).uses_text else None
        model = create_model(
            method, embeddings, backbone=DECISION_BACKBONE[0], classes=classes, pretrained=False, **BENCHMARK_MODEL
        )
        report = cost_report(model, COST_SIZE)
        costs[method] = {"params_M": round(report.total_params / 1e6, 2), "GFLOPs": round(report.total_flops / 1e9, 2)}
    return costs


def _shown_path(path: Path) -> str:
    """`path` relative to the repository when it lies inside it (as the committed tables show it), else absolute."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def aggregate(
    the_plan: Plan, raw_dir: Path, budget: Budget, cost: Callable[[list[str]], dict] = cost_at_512
) -> dict[str, Any]:
    """Every table of the comparison, from the finished runs of the plan; `cost` gives the light-heads table's cost
    column (`cost_at_512`)."""
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
        "peers": [],
        "peers_paired": [],
        "peers_cost": {},
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
        seeds, diff = paired_by_seed(paraphrased["bridge"], paraphrased["lseg"])
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
        _, diff = paired_by_seed({r["seed"]: r["mIoU"] for r in items}, {s: r["mIoU"] for s, r in reference.items()})
        # Renamed classes: what the switch does to the language path's one edge (see the vocabulary table).
        mine_renamed = paraphrased(items)
        _, renamed = paired_by_seed(mine_renamed, paraphrased(list(reference.values())))
        summary["ablation"].append(
            {"variant": variant, "method": method, "options": options}
            | _summary(items)
            | {"vs_default": diff, "paraphrased_runs": [round(v, 2) for v in mine_renamed.values()]}
            | {"paraphrased_vs_default": renamed}
        )
    for variant, other in ABLATION_REFERENCES.items():
        if variant in by_variant and other in by_variant:
            seeds, diff = paired_by_seed(
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
            seeds, diff = paired_by_seed(
                {s: h[key] for s, h in heldout_by_seed["bridge"].items()},
                {s: h[key] for s, h in heldout_by_seed["lseg"].items()},
            )
            summary["heldout_paired"].append({"comparison": "bridge - lseg", "metric": key, "seeds": seeds} | diff)

    for (backbone, method), items in group(done("scratch"), lambda run: (run.backbone, run.method)).items():
        summary["scratch"].append({"method": method, "backbone": backbone, "pretrained": False} | _summary(items))

    # Light heads on the decision backbone, beside the four methods' decision runs on the same dataset and seeds.
    peers = done("peers")
    for (dataset, method), items in group(peers, lambda run: (run.dataset, run.method)).items():
        summary["peers"].append(
            {"method": method, "backbone": DECISION_BACKBONE[0], "pretrained": DECISION_BACKBONE[1], "dataset": dataset}
            | _summary(items)
        )
        bridge = {r["seed"]: r["mIoU"] for r in by_cell.get((dataset, "bridge"), [])}
        seeds, diff = paired_by_seed(bridge, {r["seed"]: r["mIoU"] for r in items})
        summary["peers_paired"].append({"dataset": dataset, "comparison": f"bridge - {method}", "seeds": seeds} | diff)
    if peers:
        summary["peers_cost"] = cost([*METHODS, *LIGHT_HEADS])

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
