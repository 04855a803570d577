"""benchmarks/compare.py and its modules: the plan, statistics, held-out data and tables, on synthetic records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from scipy import stats

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "benchmarks") not in sys.path:
    sys.path.insert(0, str(REPO / "benchmarks"))  # as when run as a script: the comparison's sibling modules

import compare  # noqa: E402
from _compare_aggregate import aggregate  # noqa: E402
from _compare_data import dataset_classes, make_heldout  # noqa: E402
from _compare_plan import HELDOUT_CLASSES, HELDOUT_DATASET, NUM_SUBSETS, PARAPHRASES, Budget, plan  # noqa: E402
from _compare_report import plot_curve, to_markdown  # noqa: E402
from _compare_run import check_complete, cli_arguments, is_finished, load_records  # noqa: E402
from _compare_vocabulary import vocabulary_metrics  # noqa: E402
from _paired_statistics import paired_difference  # noqa: E402


def test_paired_difference_matches_scipy() -> None:
    a, b = [60.0, 59.5, 61.0, 58.0, 60.5], [59.0, 59.0, 59.5, 57.5, 58.0]
    result = paired_difference(a, b)
    diffs = np.subtract(a, b)
    assert result["differences"] == [round(d, 2) for d in diffs]
    assert result["mean"] == pytest.approx(diffs.mean(), abs=0.005)
    assert result["t_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    low, high = result["ci95"]
    half = stats.t.ppf(0.975, 4) * diffs.std(ddof=1) / np.sqrt(5)
    assert (low, high) == pytest.approx((diffs.mean() - half, diffs.mean() + half), abs=0.006)
    # All five differences positive: the smallest two-sided p the exact Wilcoxon test can give with 5 pairs.
    assert result["wilcoxon_p"] == pytest.approx(2 / 2**5)


def test_paired_difference_degenerate_cases() -> None:
    assert paired_difference([1.0], [0.5])["t_p"] is None
    same = paired_difference([1.0, 2.0], [0.0, 1.0])
    assert same["mean"] == 1.0 and same["ci95"] == [1.0, 1.0] and same["t_p"] is None


def _args(*argv: str):
    return compare.build_parser().parse_args(list(argv))


def test_plan_interleaves_seeds_and_shares_identical_runs() -> None:
    the_plan = plan(_args("--studies", "decision", "curve", "--seeds", "0", "1"))
    runs = the_plan.ordered_runs()
    decision = the_plan.studies["decision"]
    assert [run.seed for run in decision[:8]] == [0] * 4 + [1] * 4  # complete pairs first
    assert {run.dataset for run in decision} == {"mosaic", "mosaic_hard"}
    names = [run.name for run in runs]
    assert len(names) == len(set(names))
    # The curve's 600-iteration runs are the decision runs of seed 0: planned once.
    curve_600 = [run.name for run in the_plan.studies["curve"] if run.budget.iterations == 600]
    assert curve_600 and set(curve_600) <= {run.name for run in decision}
    assert len(runs) == len(decision) + 6  # 200, 1200, 2400 for bridge and fpn


def test_the_ablation_runs_variant_by_variant_legacy_first() -> None:
    the_plan = plan(_args("--studies", "ablation", "--variants", "blocks_4", "legacy"))
    runs = the_plan.studies["ablation"]
    # A partial ablation has complete rows; the order is ABLATIONS', where `legacy` comes first.
    assert [(run.variant, run.seed) for run in runs] == [
        ("legacy", 0),
        ("legacy", 1),
        ("legacy", 2),
        ("blocks_4", 0),
        ("blocks_4", 1),
        ("blocks_4", 2),
    ]


def test_a_budget_flag_changes_every_run_name() -> None:
    default = plan(_args("--studies", "decision")).ordered_runs()
    other = plan(_args("--studies", "decision", "--lr", "3e-4")).ordered_runs()
    assert not {run.name for run in default} & {run.name for run in other}


def _record(run, miou: float) -> dict:
    return {
        "run": run.name,
        "method": run.method,
        "backbone": run.backbone,
        "dataset": run.dataset,
        "seed": run.seed,
        "variant": run.variant,
        "mIoU": miou,
        "params": 1_000_000,
        "flops": 1_000_000_000,
        "wall_time_s": 100.0,
        "finished": "2026-01-01T00:00:00",
        "vocabulary": {"mIoU_train_names": miou, "mIoU_paraphrased": miou / 2, "mIoU_subset_mean": miou + 10},
        "classes": ["grass", "cat"],
        "per_class_IoU": [miou - 5.0, miou + 5.0],
    }


def test_aggregate_and_markdown_from_records(tmp_path: Path) -> None:
    args = _args("--studies", "decision", "--datasets", "mosaic", "--seeds", "0", "1", "2")
    the_plan = plan(args)
    offsets = {"bridge": 2.0, "denseclip": 0.0, "lseg": 1.0, "fpn": 1.5}
    for run in the_plan.ordered_runs():
        miou = 50.0 + offsets[run.method] + 0.1 * run.seed * (run.method == "bridge")
        (tmp_path / f"{run.name}.json").write_text(json.dumps(_record(run, miou)))
    summary = aggregate(the_plan, tmp_path, Budget())
    assert summary["complete"] and summary["finished_runs"] == 12
    paired = {row["comparison"]: row for row in summary["paired"]}
    assert paired["bridge - denseclip"]["differences"] == [2.0, 2.1, 2.2]
    assert paired["bridge - denseclip"]["t_p"] < 0.01
    vocabulary = {row["method"]: row for row in summary["vocabulary"]}
    assert vocabulary["bridge"]["paraphrase_kept_percent"] == [50.0, 50.0, 50.0]
    assert not vocabulary["fpn"]["open_vocabulary"]
    (renamed,) = summary["vocabulary_paired"]
    assert renamed["comparison"] == "bridge - lseg, paraphrased names" and renamed["mean"] == pytest.approx(0.55)
    per_class = {(row["class"], row["comparison"]): row for row in summary["per_class"]}
    assert len(per_class) == 6  # 2 classes x 3 baselines
    assert per_class[("cat", "bridge - denseclip")]["mean"] == pytest.approx(2.1)
    assert per_class[("grass", "bridge - fpn")]["t_p"] == pytest.approx(stats.ttest_1samp([0.5, 0.6, 0.7], 0).pvalue)
    markdown = to_markdown(summary)
    assert "| cat | +2.10 (" in markdown and "### Per class, `mosaic`" in markdown
    assert "| mosaic | bridge - denseclip | 3 | +2.00, +2.10, +2.20 | +2.10 |" in markdown
    assert "PARTIAL" not in markdown
    assert not plot_curve(summary, tmp_path / "curve.png")  # no curve study: nothing to plot


def test_learning_curve_plot(tmp_path: Path) -> None:
    the_plan = plan(_args("--studies", "curve", "--curve-iterations", "200", "600"))
    for run in the_plan.ordered_runs():
        (tmp_path / f"{run.name}.json").write_text(json.dumps(_record(run, run.budget.iterations / 10)))
    summary = aggregate(the_plan, tmp_path, Budget())
    assert [(row["method"], row["iterations"]) for row in summary["curve"]] == [
        ("bridge", 200),
        ("fpn", 200),
        ("bridge", 600),
        ("fpn", 600),
    ]
    assert plot_curve(summary, tmp_path / "curve.png")
    assert Image.open(tmp_path / "curve.png").size[0] > 100


def test_aggregate_only_writes_where_out_says(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    argv = ["--studies", "curve", "--curve-iterations", "200", "1200", "--raw-dir", str(raw)]
    for run in plan(_args(*argv)).ordered_runs():
        (raw / f"{run.name}.json").write_text(json.dumps(_record(run, run.budget.iterations / 100)))
    out = tmp_path / "results" / "study_1200"
    assert compare.main([*argv, "--aggregate-only", "--out", str(out)]) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["complete"] and len(summary["curve"]) == 4
    markdown = out.with_suffix(".md").read_text()
    assert "![learning curve](study_1200_curve.png)" in markdown
    assert f"Per-run records: `{raw.resolve()}/<run>.json`." in markdown  # where they are, not the default
    assert Image.open(tmp_path / "results" / "study_1200_curve.png").size[0] > 100


def test_heldout_copy_drops_the_held_out_names_and_ignores_their_pixels(tmp_path: Path) -> None:
    from bridgeseg.data.mosaic import generate_mosaic

    source = generate_mosaic(tmp_path / "mosaic", num_train=6, num_val=3, size=32, seed=0)
    make_heldout(source, tmp_path / "heldout")
    classes = dataset_classes(source)
    seen = dataset_classes(tmp_path / "heldout")
    assert seen == [name for name in classes if name not in HELDOUT_CLASSES]
    assert json.loads((tmp_path / "heldout" / "meta.json").read_text())["classes"] == seen
    held_before = False
    for path in sorted((source / "masks").glob("*/*.png")):
        before = np.array(Image.open(path))
        after = np.array(Image.open(tmp_path / "heldout" / "masks" / path.parent.name / path.name))
        # Every label is renumbered to the seen list; held-out classes and ignore become ignore.
        expected = np.full_like(before, 255)
        for index, name in enumerate(classes):
            if name in seen:
                expected[before == index] = seen.index(name)
            else:
                held_before |= bool((before == index).any())
        assert (after == expected).all()
    assert held_before, "the tiny mosaic should contain a held-out class for this test to mean anything"


def test_a_record_without_what_this_version_records_is_redone(tmp_path: Path) -> None:
    the_plan = plan(_args("--studies", "ablation", "heldout", "--variants", "legacy"))
    legacy = the_plan.studies["ablation"][0]
    heldout = the_plan.studies["heldout"][0]
    assert not is_finished(legacy, tmp_path)  # no record
    record = _record(legacy, 50.0)
    del record["vocabulary"]
    (tmp_path / f"{legacy.name}.json").write_text(json.dumps(record))
    assert not is_finished(legacy, tmp_path)  # an ablation record from before it held the vocabulary
    (tmp_path / f"{legacy.name}.json").write_text(json.dumps(_record(legacy, 50.0)))
    assert is_finished(legacy, tmp_path)
    (tmp_path / f"{heldout.name}.json").write_text(json.dumps({"seed": 0, "heldout": {"seen_mIoU": 50.0}}))
    assert not is_finished(heldout, tmp_path)  # trained with the unseen names in the vocabulary: redone
    (tmp_path / f"{heldout.name}.json").write_text(json.dumps({"seed": 0, "heldout": {"protocol": "seen names only"}}))
    assert is_finished(heldout, tmp_path)  # held-out runs record the generalised zero-shot metrics instead


def test_the_tables_leave_out_a_record_the_next_run_redoes(tmp_path: Path) -> None:
    the_plan = plan(_args("--studies", "ablation", "--variants", "legacy", "--ablation-seeds", "0", "1"))
    first, second = the_plan.studies["ablation"]
    stale = _record(first, 50.0)
    del stale["vocabulary"]
    (tmp_path / f"{first.name}.json").write_text(json.dumps(stale))
    (tmp_path / f"{second.name}.json").write_text(json.dumps(_record(second, 51.0)))
    assert list(load_records(the_plan.ordered_runs(), tmp_path)) == [second.name]
    summary = aggregate(the_plan, tmp_path, Budget())
    assert (summary["finished_runs"], summary["planned_runs"]) == (1, 2)


def test_every_run_starts_from_the_pinned_model_under_its_own_options(tmp_path: Path) -> None:
    argv = ["--studies", "decision", "ablation", "--datasets", "mosaic", "--seeds", "0"]
    the_plan = plan(_args(*argv, "--variants", "no_pixel_projection"))
    by_variant = {run.variant: run for run in the_plan.ordered_runs() if run.method == "bridge"}

    def options(run) -> dict[str, str]:
        arguments = cli_arguments(run, tmp_path, tmp_path)
        pairs = dict(zip(arguments[::2], arguments[1::2], strict=True))
        return {
            key.removeprefix("--model.net."): value for key, value in pairs.items() if key.startswith("--model.net.")
        }

    # The records mean the model as it was run, whatever the library's default is now.
    assert options(by_variant["default"])["pixel_projection"] == "true"
    assert options(by_variant["no_pixel_projection"])["pixel_projection"] == "false"


def test_the_ablation_table_pairs_paraphrased_mIoU_with_the_default(tmp_path: Path) -> None:
    argv = ["--studies", "decision", "ablation", "--datasets", "mosaic", "--seeds", "0", "1", "2"]
    the_plan = plan(_args(*argv, "--variants", "bridge_none"))
    for run in the_plan.ordered_runs():
        miou = 50.0 + (run.seed if run.variant == "bridge_none" else 0.0)
        (tmp_path / f"{run.name}.json").write_text(json.dumps(_record(run, miou)))
    summary = aggregate(the_plan, tmp_path, Budget())
    rows = {row["variant"]: row for row in summary["ablation"]}
    assert rows["default"]["paraphrased_runs"] == [25.0, 25.0, 25.0]
    assert rows["bridge_none"]["vs_default"]["differences"] == [0.0, 1.0, 2.0]
    assert rows["bridge_none"]["paraphrased_vs_default"]["differences"] == [0.0, 0.5, 1.0]
    assert "| bridge_none | bridge | bridge=none | 51.00 ± 1.00 (n=3) | +1.00 (n=3) |" in to_markdown(summary)


def test_an_ablation_row_with_its_own_reference_is_paired_with_it(tmp_path: Path) -> None:
    argv = ["--studies", "decision", "ablation", "--datasets", "mosaic", "--seeds", "0", "1", "2"]
    the_plan = plan(_args(*argv, "--variants", "blocks_4", "blocks_4_no_identity_start"))
    offsets = {"blocks_4": 1.0, "blocks_4_no_identity_start": -2.0}
    for run in the_plan.ordered_runs():
        miou = 50.0 + offsets.get(run.variant, 0.0) + (0.5 * run.seed if run.variant == "blocks_4" else 0.0)
        (tmp_path / f"{run.name}.json").write_text(json.dumps(_record(run, miou)))
    summary = aggregate(the_plan, tmp_path, Budget())
    (paired,) = summary["ablation_paired"]
    assert paired["comparison"] == "blocks_4_no_identity_start - blocks_4"
    assert paired["differences"] == [-3.0, -3.5, -4.0]
    assert "- blocks_4_no_identity_start - blocks_4, mIoU: per seed -3.00, -3.50, -4.00, mean -3.50" in (
        to_markdown(summary)
    )


def test_heldout_rows_sit_beside_the_same_classes_trained_and_pair_bridge_with_lseg(tmp_path: Path) -> None:
    argv = ["--studies", "decision", "heldout", "--datasets", "mosaic", "--seeds", "0", "1", "2"]
    the_plan = plan(_args(*argv, "--heldout-seeds", "0", "1", "2"))
    classes = ["grass", "cat", "gravel", "sky"]  # cat and gravel are held out
    for run in the_plan.ordered_runs():
        record = _record(run, 50.0) | {"classes": classes, "per_class_IoU": [60.0, 40.0, 20.0 + run.seed, None]}
        if run.dataset == HELDOUT_DATASET:
            unseen = 2.0 * run.seed + (3.0 if run.method == "bridge" else 1.0)
            record["heldout"] = {
                "protocol": "seen names only",
                "seen_mIoU": 55.0,
                "unseen_mIoU": unseen,
                "harmonic_mIoU": unseen / 2,
                "seen_mIoU_seen_names_only": 57.0,
            }
        (tmp_path / f"{run.name}.json").write_text(json.dumps(record))
    summary = aggregate(the_plan, tmp_path, Budget())
    rows = {row["method"]: row for row in summary["heldout"]}
    assert set(rows) == {"bridge", "lseg"}
    # Trained on every class: seen = grass only (sky has no IoU), held-out classes = mean of cat and gravel.
    assert rows["bridge"]["trained_on_all"] == {
        "seeds": [0, 1, 2],
        "seen_mIoU": [60.0, 60.0, 60.0],
        "heldout_classes_mIoU": [30.0, 30.5, 31.0],
    }
    paired = {row["metric"]: row for row in summary["heldout_paired"]}
    assert paired["unseen_mIoU"]["differences"] == [2.0, 2.0, 2.0]
    assert paired["harmonic_mIoU"]["mean"] == 1.0 and paired["seen_mIoU"]["mean"] == 0.0
    markdown = to_markdown(summary)
    assert "| bridge | 55.00 ± 0.00 (n=3) | 5.00 ± 2.00 (n=3) | 2.50 ± 1.00 (n=3) | 57.00 ± 0.00 (n=3) |" in markdown
    assert "- bridge - lseg, unseen_mIoU: per seed +2.00, +2.00, +2.00, mean +2.00" in markdown


def test_a_worker_exits_when_the_comparison_is_gone() -> None:
    # Its parent is not the pid it was told: as after the comparison was killed. It must not sleep on.
    code = (
        f"import sys, time; sys.path.insert(0, {str(REPO / 'benchmarks')!r}); import _compare_pool; "
        "_compare_pool._exit_when_orphaned(parent=-1, poll_s=0.05); time.sleep(60)"
    )
    finished = subprocess.run([sys.executable, "-c", code], timeout=50, capture_output=True)
    assert (finished.returncode, finished.stderr.decode()[-2000:]) == (1, "")  # exited, and not by a traceback


def test_a_run_stopped_early_is_not_recorded() -> None:
    check_complete(SimpleNamespace(interrupted=False, global_step=600), 600)
    with pytest.raises(RuntimeError, match="step 120 of 600"):
        check_complete(SimpleNamespace(interrupted=False, global_step=120), 600)
    with pytest.raises(RuntimeError, match="no record"):
        check_complete(SimpleNamespace(interrupted=True, global_step=600), 600)


@pytest.mark.parametrize("method", ["bridge", "fpn"])
def test_vocabulary_metrics_read_val_as_the_other_benchmarks_do(method: str, tmp_path: Path) -> None:
    import torch
    from _evaluation import evaluate

    from bridgeseg.data.mosaic import generate_mosaic
    from bridgeseg.models import create_model

    data = generate_mosaic(tmp_path / "mosaic", num_train=1, num_val=3, size=48, seed=1)
    classes = dataset_classes(data)
    torch.manual_seed(0)
    options = {"backbone": "test_resnet", "fusion_dim": 32, "decoder_channels": 16, "classes": classes}
    model = create_model(method, text_encoder="minilm", **options).eval()
    paraphrases = json.loads(PARAPHRASES.read_text())
    metrics = vocabulary_metrics(model, data, classes, paraphrases)
    results, images = evaluate({"model": lambda image, size: model.predict(image)}, data, len(classes), "model")
    assert images == 3
    assert metrics["mIoU_train_names"] == pytest.approx(results["model"]["mIoU"])
    assert ("mIoU_paraphrased" in metrics) == (method == "bridge")  # closed-set models have no vocabulary
    assert len(metrics["mIoU_subsets"]) == NUM_SUBSETS


def test_a_closed_set_variant_has_no_paraphrased_column(tmp_path: Path) -> None:
    argv = ["--studies", "decision", "ablation", "--datasets", "mosaic", "--seeds", "0", "1", "2"]
    the_plan = plan(_args(*argv, "--variants", "concat_score_map"))
    for run in the_plan.ordered_runs():
        record = _record(run, 50.0 + run.seed)
        if run.variant == "concat_score_map":  # a fixed score map: no renaming at test time
            del record["vocabulary"]["mIoU_paraphrased"]
        (tmp_path / f"{run.name}.json").write_text(json.dumps(record))
    summary = aggregate(the_plan, tmp_path, Budget())
    row = {row["variant"]: row for row in summary["ablation"]}["concat_score_map"]
    assert row["vs_default"]["mean"] == 0.0 and row["paraphrased_runs"] == []
    assert "| concat_score_map | bridge | concat_score_map=True |" in to_markdown(summary)


def test_light_heads_sit_beside_the_four_methods(tmp_path: Path) -> None:
    args = _args("--studies", "decision", "peers", "--datasets", "mosaic", "--seeds", "0", "1", "2")
    the_plan = plan(args)
    peers = the_plan.studies["peers"]
    assert [(run.method, run.seed) for run in peers[:4]] == [
        ("lraspp", 0),
        ("segformer", 0),
        ("lraspp", 1),
        ("segformer", 1),
    ]
    assert {(run.backbone, run.pretrained, run.dataset, run.budget) for run in peers} == {
        (run.backbone, run.pretrained, run.dataset, run.budget) for run in the_plan.studies["decision"]
    }
    offsets = {"bridge": 2.0, "denseclip": 0.0, "lseg": 1.0, "fpn": 1.5, "lraspp": -1.0, "segformer": 0.5}
    for run in the_plan.ordered_runs():
        miou = 50.0 + offsets[run.method] + 0.1 * run.seed * (run.method == "bridge")
        (tmp_path / f"{run.name}.json").write_text(json.dumps(_record(run, miou)))
    costs = []

    def cost(methods: list[str]) -> dict:
        costs.append(methods)
        return {method: {"params_M": 3.0, "GFLOPs": 5.0 + index} for index, method in enumerate(methods)}

    summary = aggregate(the_plan, tmp_path, Budget(), cost=cost)
    assert costs == [["bridge", "denseclip", "lseg", "fpn", "lraspp", "segformer"]]
    assert [row["method"] for row in summary["peers"]] == ["lraspp", "segformer"]
    assert summary["peers"][0]["mIoU_runs"] == [49.0, 49.0, 49.0]
    paired = {row["comparison"]: row for row in summary["peers_paired"]}
    assert paired["bridge - lraspp"]["differences"] == [3.0, 3.1, 3.2] and paired["bridge - lraspp"]["seeds"] == [
        0,
        1,
        2,
    ]
    markdown = to_markdown(summary)
    assert "## Light heads on the same backbone: EfficientNet-Lite0 (ImageNet), `mosaic`" in markdown
    assert "| lraspp | closed set, no text | 49.00 ± 0.00 (n=3) | +3.00, +3.10, +3.20 | +3.10 |" in markdown
    assert "| fpn | closed set, no text | 51.50 ± 0.00 (n=3) | +0.50, +0.60, +0.70 | +0.60 |" in markdown
    assert "| 3.0 | 9.0 |" in markdown  # segformer's cost column
    # Without the peers' records the aggregate has no such table and counts nothing for it.
    for run in peers:
        (tmp_path / f"{run.name}.json").unlink()
    summary = aggregate(the_plan, tmp_path, Budget(), cost=cost)
    assert summary["peers"] == [] and summary["peers_cost"] == {} and len(costs) == 1
    assert "Light heads" not in to_markdown(summary)
