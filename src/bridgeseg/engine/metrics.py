"""Semantic segmentation metrics with mmseg semantics, accumulated over a whole split (DDP-safe).

Per class, intersection, union, predicted area and label area are summed over every pixel whose label is not
``ignore_index``; at the end

- ``IoU[k] = intersect[k] / union[k]`` (NaN where ``union == 0``: class absent from predictions and labels),
- ``Acc[k] = intersect[k] / label_area[k]`` (NaN where the class never occurs in the labels),
- ``mIoU`` / ``mAcc`` = NaN-mean of those, ``aAcc = sum(intersect) / sum(label_area)``,

all in percent, as mmseg's ``IoUMetric`` reports them.

Example:
    >>> metric = SegmentationMetric(num_classes=3)
    >>> metric.update(torch.tensor([[[0, 1], [2, 2]]]), torch.tensor([[[0, 1], [2, 255]]]))
    >>> round(float(metric.compute()["mIoU"]), 2)
    100.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

from bridgeseg.vocabulary import IGNORE_INDEX

__all__ = ["SegmentationMetric", "format_table"]


class SegmentationMetric(Metric):
    """Streaming mIoU / mAcc / aAcc with mmseg semantics.

    States are int64 per-class counts reduced by sum, so the result is exact and identical under DDP.

    Args:
        num_classes: Number of classes ``K``.
        ignore_index: Label of pixels that are not evaluated.
        **kwargs: Passed to :class:`torchmetrics.Metric` (``dist_sync_on_step``, ``sync_on_compute``, ...).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    intersect: torch.Tensor
    union: torch.Tensor
    pred_area: torch.Tensor
    label_area: torch.Tensor

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        for name in ("intersect", "union", "pred_area", "label_area"):
            self.add_state(name, default=torch.zeros(num_classes, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate one batch.

        Args:
            preds: Predicted labels ``[B, H, W]`` (integer), or scores ``[B, K, H, W]`` (argmax over ``K`` is
                taken).
            target: Labels ``[B, H, W]``; ``ignore_index`` pixels are skipped.

        Raises:
            ValueError: Shapes differ, or a target label is outside ``0..K-1`` and not ``ignore_index``.
        """
        if preds.is_floating_point() or preds.ndim == target.ndim + 1:
            if preds.ndim != target.ndim + 1:
                raise ValueError(
                    f"float preds must be scores [B, K, H, W] for target {tuple(target.shape)}, got "
                    f"{tuple(preds.shape)}; pass label maps as an integer tensor"
                )
            preds = preds.argmax(dim=1)
        if preds.shape != target.shape:
            raise ValueError(
                f"preds {tuple(preds.shape)} and target {tuple(target.shape)} differ in shape; resize the logits to "
                f"the label size before argmax"
            )
        preds = preds.reshape(-1).long()
        target = target.reshape(-1).long()
        valid = target != self.ignore_index
        preds, target = preds[valid], target[valid]
        if target.numel() and (target.min() < 0 or target.max() >= self.num_classes):
            bad = torch.unique(target[(target < 0) | (target >= self.num_classes)])[:10].tolist()
            raise ValueError(
                f"target labels {bad} are outside 0..{self.num_classes - 1} and not {self.ignore_index} (ignore)"
            )
        # As mmseg's histc: predictions outside 0..K-1 count in no class (they are still wrong for the label).
        in_range = (preds >= 0) & (preds < self.num_classes)
        hit = preds == target
        intersect = torch.bincount(target[hit], minlength=self.num_classes)
        pred_area = torch.bincount(preds[in_range], minlength=self.num_classes)
        label_area = torch.bincount(target, minlength=self.num_classes)
        self.intersect += intersect
        self.pred_area += pred_area
        self.label_area += label_area
        self.union += pred_area + label_area - intersect

    def compute(self) -> dict[str, torch.Tensor]:
        """Metrics over everything accumulated.

        Returns:
            ``aAcc``, ``mIoU``, ``mAcc``: 0-d float64 tensors in percent (``mIoU``/``mAcc`` NaN when no class has
            a defined value); ``IoU``, ``Acc``: float64 ``[K]`` in percent, NaN for undefined classes.
        """
        intersect = self.intersect.double()
        union = self.union.double()
        label_area = self.label_area.double()
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=intersect.device)
        iou = torch.where(union > 0, intersect / union.clamp(min=1), nan)
        acc = torch.where(label_area > 0, intersect / label_area.clamp(min=1), nan)
        total_label = label_area.sum()
        a_acc = torch.where(total_label > 0, intersect.sum() / total_label.clamp(min=1), nan)
        return {
            "aAcc": a_acc * 100,
            "mIoU": torch.nanmean(iou) * 100,
            "mAcc": torch.nanmean(acc) * 100,
            "IoU": iou * 100,
            "Acc": acc * 100,
        }


def _cell(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    rule = "+" + "+".join("-" * (width + 2) for width in widths) + "+"

    def line(row: Sequence[str]) -> str:
        return "|" + "|".join(f" {cell!s:<{width}} " for cell, width in zip(row, widths, strict=True)) + "|"

    return "\n".join([rule, line(header), rule, *(line(row) for row in rows), rule])


def format_table(results: dict[str, Any], class_names: Sequence[str]) -> str:
    """Per-class IoU / Acc table followed by the summary, two decimals, as mmseg prints them.

    Args:
        results: Output of :meth:`SegmentationMetric.compute` (values in percent).
        class_names: Display names in index order.

    Returns:
        The tables as one string (NaN shown as ``nan``).

    Raises:
        ValueError: ``class_names`` and the per-class results differ in length.

    Example:
        >>> print(format_table(metric.compute(), dataset.classes))  # doctest: +SKIP
    """
    iou = torch.as_tensor(results["IoU"]).double().reshape(-1).tolist()
    acc = torch.as_tensor(results["Acc"]).double().reshape(-1).tolist()
    if len(class_names) != len(iou):
        raise ValueError(f"{len(class_names)} class names for {len(iou)} per-class results")
    per_class = _table(
        ("Class", "IoU", "Acc"),
        [(name, _cell(i), _cell(a)) for name, i, a in zip(class_names, iou, acc, strict=True)],
    )
    keys = ("aAcc", "mIoU", "mAcc")
    summary = _table(keys, [tuple(_cell(float(results[key])) for key in keys)])
    return f"per class results:\n{per_class}\nSummary:\n{summary}"
