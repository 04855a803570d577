"""The comparison's statistics: paired differences over seeds, and mean ± sample std."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


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


def paired_by_seed(a: dict[int, float], b: dict[int, float]) -> tuple[list[int], dict[str, Any]]:
    """`paired_difference` of two seed -> value maps over the seeds they share, and those seeds."""
    seeds = sorted(set(a) & set(b))
    return seeds, paired_difference([a[s] for s in seeds], [b[s] for s in seeds])


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
