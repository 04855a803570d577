"""The paper's experiment on CPU: bridge vs DenseCLIP vs LSeg vs FPN (and classic light heads), with the statistics.

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
- `peers`: the classic light heads `lraspp` (LR-ASPP's) and `segformer` (SegFormer's all-MLP head), closed set, on
  Lite0 at the decision budget, `--seeds` on the first dataset; beside the four methods, with `bridge - head` paired
  by seed and the GFLOPs at 512x512 with 150 classes.

Each finished run writes `benchmarks/results/compare.raw/<run>.json` (committed, small); a restarted comparison
skips the runs whose record exists, so it can be killed and resumed at any time, on another machine too. The
aggregate goes to `benchmarks/results/compare.{md,json}` and the learning curve to `compare_curve.png`
(`--out` names others, for a study at another budget).

Usage:
    python benchmarks/compare.py                          # every study (see docs/benchmark.md for its cost)
    python benchmarks/compare.py --studies decision curve # some studies, in this order
    python benchmarks/compare.py --aggregate-only         # rebuild the tables and the plot from the records
    nohup .venv/bin/python benchmarks/compare.py > benchmarks/results/compare.log 2>&1 &

The pieces, one module each: `_compare_plan` (studies, budget, runs), `_compare_data` (the mosaics),
`_compare_run` (one run and its record), `_compare_vocabulary` (the open-vocabulary protocol), `_compare_pool`
(the worker processes), `_paired_statistics` (paired tests), `_compare_aggregate` (the tables as data) and
`_compare_report` (Markdown and the plot).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from _compare_aggregate import aggregate
from _compare_data import prepare_data
from _compare_plan import ABLATIONS, DATASETS, METHODS, RAW, REPO, RESULTS, STUDIES, Budget, budget_from_args, plan
from _compare_pool import run_all
from _compare_report import plot_curve, to_markdown
from _results import write_results


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
    summary = aggregate(the_plan, raw_dir, budget_from_args(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    curve = out.with_name(f"{out.name}_curve.png")
    plot_curve(summary, curve)
    markdown = to_markdown(summary, curve.name)
    write_results(out, summary, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
