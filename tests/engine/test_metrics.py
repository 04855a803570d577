"""SegmentationMetric against an independent numpy computation, and the mmseg-style table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bridgeseg.engine.metrics import SegmentationMetric, format_table

NUM_CLASSES = 7  # classes 5 and 6 never occur; class 4 occurs only in predictions


def reference(preds: list[np.ndarray], targets: list[np.ndarray], num_classes: int, ignore: int = 255) -> dict:
    """mmseg's formulas over all batches, written with a confusion matrix."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    for pred, target in zip(preds, targets, strict=True):
        keep = target != ignore
        np.add.at(confusion, (target[keep], pred[keep]), 1)
    intersect = np.diag(confusion).astype(np.float64)
    label_area = confusion.sum(axis=1).astype(np.float64)
    union = label_area + confusion.sum(axis=0) - intersect
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = intersect / union
        acc = intersect / label_area
    return {
        "aAcc": intersect.sum() / label_area.sum() * 100,
        "mIoU": np.nanmean(iou) * 100,
        "mAcc": np.nanmean(acc) * 100,
        "IoU": iou * 100,
        "Acc": acc * 100,
    }


def random_batches(seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for batch_size in (2, 3, 1):
        target = rng.integers(0, 4, (batch_size, 9, 11))
        target[rng.random(target.shape) < 0.15] = 255
        pred = np.where(rng.random(target.shape) < 0.6, np.minimum(target, 4), rng.integers(0, 5, target.shape))
        preds.append(pred)
        targets.append(target)
    return preds, targets


def test_matches_numpy_reference_over_several_batches() -> None:
    preds, targets = random_batches()
    metric = SegmentationMetric(NUM_CLASSES)
    for pred, target in zip(preds, targets, strict=True):
        metric.update(torch.from_numpy(pred), torch.from_numpy(target))
    results = metric.compute()
    expected = reference(preds, targets, NUM_CLASSES)
    for key in ("aAcc", "mIoU", "mAcc"):
        assert float(results[key]) == pytest.approx(expected[key], rel=1e-12)
    for key in ("IoU", "Acc"):
        assert results[key].shape == (NUM_CLASSES,)
        np.testing.assert_allclose(results[key].numpy(), expected[key], rtol=1e-12)
    assert torch.isnan(results["IoU"][5:]).all() and torch.isnan(results["Acc"][4:]).all()
    assert float(results["IoU"][4]) == 0.0  # predicted but never labelled: counts as 0 IoU
    assert 0 < float(results["mIoU"]) < 100


def test_logits_states_and_merge() -> None:
    preds, targets = random_batches(seed=1)
    whole, first, second = (SegmentationMetric(NUM_CLASSES) for _ in range(3))
    for index, (pred, target) in enumerate(zip(preds, targets, strict=True)):
        logits = torch.nn.functional.one_hot(torch.from_numpy(pred), NUM_CLASSES).permute(0, 3, 1, 2).float()
        whole.update(logits, torch.from_numpy(target))  # [B, K, H, W] scores: argmax taken
        (first if index % 2 == 0 else second).update(torch.from_numpy(pred), torch.from_numpy(target))
    assert whole.intersect.dtype == torch.int64
    assert all(whole._reductions[name] is not None for name in ("intersect", "union", "pred_area", "label_area"))
    first.merge_state(second)  # what the DDP sum-reduction does across ranks
    merged, single = first.compute(), whole.compute()
    assert torch.equal(merged["IoU"].nan_to_num(-1), single["IoU"].nan_to_num(-1))
    whole.reset()
    assert int(whole.label_area.sum()) == 0


def test_input_checks() -> None:
    metric = SegmentationMetric(3)
    with pytest.raises(ValueError, match="differ in shape"):
        metric.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 5, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target labels \[3, 7\]"):
        metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 3], [7, 255]]]))
    metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 255))
    assert math.isnan(float(metric.compute()["mIoU"]))  # nothing labelled yet


def test_format_table() -> None:
    metric = SegmentationMetric(3)
    metric.update(torch.tensor([[[0, 1], [1, 1]]]), torch.tensor([[[0, 1], [0, 255]]]))
    table = format_table(metric.compute(), ["wall", "bed ", "sky"])
    lines = table.splitlines()
    assert any(line.startswith("| wall") and "50.00" in line for line in lines)
    assert any(line.startswith("| sky") and "nan" in line for line in lines)
    assert "| aAcc" in table and "66.67" in table  # 2 of 3 labelled pixels right
    with pytest.raises(ValueError, match="2 class names for 3"):
        format_table(metric.compute(), ["a", "b"])
