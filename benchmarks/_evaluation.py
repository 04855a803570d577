"""The benchmark scripts' evaluation: mIoU on a folder dataset's val split, as validation computes it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bridgeseg.engine.datamodule import SegmentationDataModule
from bridgeseg.engine.metrics import SegmentationMetric

logger = logging.getLogger("benchmarks.evaluation")

Predict = Callable[[Tensor, tuple[int, int]], Tensor]
"""Labels [1, H, W] of an image [1, 3, h, w] at the output size (H, W)."""


def val_samples(data: Path) -> list[tuple[Tensor, Tensor]]:
    """The val split of the folder dataset `data` as validation reads it: (image [1, 3, H, W], mask [1, H, W]) pairs
    from `SegmentationDataModule`'s val loader (evaluation transforms, batch of one, each image at its own size)."""
    datamodule = SegmentationDataModule(dataset="folder", root=str(data), num_workers=0)
    return [(batch["image"], batch["mask"]) for batch in datamodule.val_dataloader()]


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
        metric = SegmentationMetric(num_classes)
        agree = total = 0
        start = time.perf_counter()
        for index, (image, mask) in enumerate(samples):
            labels = predictors[name](image, tuple(mask.shape[-2:]))
            metric.update(labels, mask)
            if name == reference:
                reference_labels.append(labels)
            valid = mask != metric.ignore_index
            agree += int((labels == reference_labels[index])[valid].sum())
            total += int(valid.sum())
        scores = metric.compute()
        results[name] = {key: float(scores[key]) for key in ("mIoU", "mAcc", "aAcc")}
        results[name] |= {"labels_equal_to_reference": agree / total, "seconds": time.perf_counter() - start}
        logger.info("%-24s mIoU %.2f (%.0f s)", name, results[name]["mIoU"], results[name]["seconds"])
    return {name: results[name] for name in predictors}, len(samples)
