"""The benchmark scripts' evaluation: mIoU on a folder dataset's val split, as validation computes it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bridgeseg.engine.datamodule import SegmentationDataModule
from bridgeseg.engine.metrics import SegmentationMetric
from bridgeseg.vocabulary import IGNORE_INDEX

logger = logging.getLogger("benchmarks.evaluation")

Predict = Callable[[Tensor, tuple[int, int]], Tensor]
"""Labels [1, H, W] of an image [1, 3, h, w] at the output size (H, W)."""


def val_samples(data: Path) -> list[tuple[Tensor, Tensor]]:
    """The val split of the folder dataset `data` as validation reads it: (image [1, 3, H, W], mask [1, H, W]) pairs
    from `SegmentationDataModule`'s val loader (evaluation transforms, batch of one, each image at its own size)."""
    datamodule = SegmentationDataModule(dataset="folder", root=str(data), num_workers=0)
    return [(batch["image"], batch["mask"]) for batch in datamodule.val_dataloader()]


def score(
    predict: Predict,
    samples: list[tuple[Tensor, Tensor]],
    num_classes: int,
    keep: Sequence[int] | None = None,
    each: Callable[[int, Tensor, Tensor], None] | None = None,
) -> dict[str, Tensor]:
    """`SegmentationMetric`'s scores (mmseg's per-class `IoU`, `mIoU`, `mAcc`, `aAcc`) of `predict` on `samples`.

    The one evaluation loop of the benchmarks: `evaluate` and the comparison's vocabulary protocol both run it.

    Args:
        predict: Labels of an image at its mask's size.
        samples: (image, mask) pairs, as `val_samples` reads them.
        num_classes: The classes the metric counts.
        keep: A class subset: pixels labelled outside it are ignored (`predict` should label within it).
        each: Called with the index, labels and mask (after `keep`) of every image.

    Returns:
        The metric's scores.
    """
    metric = SegmentationMetric(num_classes)
    kept = None if keep is None else torch.tensor(keep)
    for index, (image, mask) in enumerate(samples):
        if kept is not None:
            mask = torch.where(torch.isin(mask, kept), mask, torch.full_like(mask, metric.ignore_index))
        labels = predict(image, tuple(mask.shape[-2:]))
        metric.update(labels, mask)
        if each is not None:
            each(index, labels, mask)
    return metric.compute()


@torch.inference_mode()
def evaluate(
    predictors: dict[str, Predict], data: Path, num_classes: int, reference: str
) -> tuple[dict[str, dict[str, Any]], int]:
    """Each predictor's mIoU, mAcc and aAcc on the val split of the folder dataset `data`.

    The images come as validation gives them (`val_samples`) and are scored with `SegmentationMetric` (mmseg's
    mIoU).

    Args:
        predictors: Name -> predict function; evaluated in this order, `reference` first.
        data: A folder dataset (`images/val`, `masks/val`).
        num_classes: The classes the metric counts.
        reference: The predictor whose labels the others are compared with.

    Returns:
        The results and the number of val images. Results, in the order of `predictors`: name -> `mIoU`,
        `mAcc`, `aAcc`, `labels_equal_to_reference` (the share of the evaluated pixels, ignored ones excluded,
        whose label equals the reference's) and `seconds`.
    """
    samples = val_samples(data)
    order = [reference, *(name for name in predictors if name != reference)]
    reference_labels: list[Tensor] = []
    results: dict[str, dict[str, Any]] = {}
    for name in order:
        start = time.perf_counter()
        scores, agreement = _score_against(predictors[name], samples, num_classes, reference_labels)
        results[name] = {key: float(scores[key]) for key in ("mIoU", "mAcc", "aAcc")}
        results[name] |= {"labels_equal_to_reference": agreement, "seconds": time.perf_counter() - start}
        logger.info("%-24s mIoU %.2f (%.0f s)", name, results[name]["mIoU"], results[name]["seconds"])
    return {name: results[name] for name in predictors}, len(samples)


def _score_against(
    predict: Predict, samples: list[tuple[Tensor, Tensor]], num_classes: int, reference_labels: list[Tensor]
) -> tuple[dict[str, Tensor], float]:
    """`score`, and the share of the evaluated pixels (ignored ones excluded) whose label equals the reference's.

    An empty `reference_labels` means this is the reference: its labels are collected there.
    """
    collect = not reference_labels
    agree = total = 0

    def compare_with_reference(index: int, labels: Tensor, mask: Tensor) -> None:
        nonlocal agree, total
        if collect:
            reference_labels.append(labels)
        valid = mask != IGNORE_INDEX
        agree += int((labels == reference_labels[index])[valid].sum())
        total += int(valid.sum())

    scores = score(predict, samples, num_classes, each=compare_with_reference)
    return scores, agree / total
