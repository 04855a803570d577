"""The comparison's report: the Markdown tables and the learning-curve plot of an aggregate."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _compare_plan import DATASETS_ORDER, HELDOUT_CLASSES, LANGUAGE_METHODS, LIGHT_HEADS, METHODS
from _paired_statistics import mean_std


def _cell(values: Sequence[float]) -> str:
    if not values:
        return "–"
    mean, std = mean_std(values)
    return f"{mean:.2f} ± {std:.2f} (n={len(values)})" if len(values) > 1 else f"{mean:.2f} (n=1)"


def _p(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


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


def _paired_list(rows: list[dict[str, Any]], metric: Callable[[dict[str, Any]], str]) -> list[str]:
    """One bullet per `paired_difference` row (its comparison, `metric(row)`, the sentence), then a blank line."""
    return [f"- {row['comparison']}, {metric(row)}: {_paired_sentence(row)}" for row in rows] + ([""] if rows else [])


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


TEXT_USE = {"denseclip": "closed set, uses text"}


def _peers_markdown(summary: dict[str, Any]) -> list[str]:
    """The light heads beside the four methods, per dataset of the `peers` study: mIoU, `bridge - X`, cost."""
    lines: list[str] = []
    cost = summary["peers_cost"]
    paired = {(row["dataset"], row["comparison"]): row for row in summary["paired"] + summary["peers_paired"]}
    for dataset in sorted({row["dataset"] for row in summary["peers"]}, key=DATASETS_ORDER.index):
        rows = [row for row in summary["main"] + summary["peers"] if row["dataset"] == dataset]
        lines += [
            f"## Light heads on the same backbone: EfficientNet-Lite0 (ImageNet), `{dataset}`",
            "",
            "The classic light heads as closed-set methods on our backbone, data and budget (the decision's seeds): "
            "`lraspp` is torchvision's LR-ASPP head on the stride-8 and stride-32 levels, `segformer` transformers' "
            "SegFormer all-MLP head on strides 4-32, both at our decoder's width (96). `bridge - X`: paired by seed. "
            "Params and GFLOPs at 512x512 with 150 classes (2 FLOPs per multiply-add), as trained here (the language "
            "heads with the pixel projection; text encoder not counted).",
            "",
            "| method | text | mIoU | bridge - X, per seed | mean | 95 % CI | paired t p | params (M) | GFLOPs |",
            "|---|---|---:|---|---:|---|---:|---:|---:|",
        ]
        for row in sorted(rows, key=lambda row: [*METHODS, *LIGHT_HEADS].index(row["method"])):
            method = row["method"]
            text = "open vocabulary" if method in LANGUAGE_METHODS else TEXT_USE.get(method, "closed set, no text")
            diff = paired.get((dataset, f"bridge - {method}"))
            diff = diff if diff and diff["differences"] else None  # no bridge run of the same seeds in the plan
            per_seed, mean, ci = _paired_cells(diff) if diff else ("–", "–", "–")
            method_cost = cost.get(method, {})
            lines.append(
                f"| {method} | {text} | {_cell(row['mIoU_runs'])} | {per_seed} | {mean} | {ci} | "
                f"{_p(diff.get('t_p')) if diff else '–'} | {method_cost.get('params_M', '–')} | "
                f"{method_cost.get('GFLOPs', '–')} |"
            )
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
    lines += _peers_markdown(summary)
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
        lines += _paired_list(summary["heldout_paired"], lambda row: row["metric"])
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
        lines += _paired_list(summary["ablation_paired"], lambda row: "mIoU")
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
