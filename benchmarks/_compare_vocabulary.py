"""The open-vocabulary protocol of the comparison: mIoU with paraphrased names, over vocabulary subsets, and on
classes held out of training (seen / unseen mIoU)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from _compare_data import dataset_classes
from _compare_plan import HELDOUT_CLASSES, NUM_SUBSETS
from _evaluation import Predict, score, val_samples


def _predictor(model: Any, names: list[str] | None, keep: list[int] | None = None) -> Predict:
    """Labels of `model` (at the image's own size) with the vocabulary `names` (None: its training names).

    `keep`: a class subset; the prediction is the arg-max over the subset (its names for a language model, its
    logits for a closed-set one), given as the subset's labels.
    """
    import torch

    if keep is None:
        return lambda image, size: model.predict(image, classes=names)
    kept = torch.tensor(keep)
    if model.open_vocabulary:
        return lambda image, size: kept[model.predict(image, classes=names)]
    return lambda image, size: kept[model(image)[:, keep].argmax(1)]  # logits [1, K, H, W]


def _class_iou(
    model: Any, samples: list[tuple[Any, Any]], num_classes: int, names: list[str] | None, keep: list[int] | None = None
) -> Any:
    """Per-class IoU (percent, NaN where a class is neither labelled nor predicted) of `model` on `samples`
    (`_evaluation.val_samples`); with `keep`, pixels labelled outside the subset are ignored."""
    return score(_predictor(model, names, keep), samples, num_classes, keep)["IoU"].numpy()


def vocabulary_metrics(
    model: Any, data_dir: Path, train_classes: list[str], paraphrases: dict[str, str]
) -> dict[str, Any]:
    """mIoU on val with the training names, with paraphrased names, and over vocabulary subsets.

    Subsets: `NUM_SUBSETS` fixed random halves of the classes (numpy seed = subset index). Pixels whose label is
    outside the subset are ignored; the language methods get the subset's names as their vocabulary, the closed-set
    methods the arg-max over the subset's logits. mIoU is over the subset's classes, averaged over the subsets.
    """
    import numpy as np
    import torch

    samples = val_samples(data_dir)
    num_classes = len(train_classes)
    language = model.open_vocabulary

    def evaluate(names: list[str] | None, keep: list[int] | None = None) -> float:
        iou = _class_iou(model, samples, num_classes, names, keep)
        return float(np.nanmean(iou[keep if keep is not None else list(range(num_classes))]))

    model.eval()
    results: dict[str, Any] = {}
    with torch.inference_mode():
        results["mIoU_train_names"] = evaluate(None)
        if language:
            results["mIoU_paraphrased"] = evaluate([paraphrases[name] for name in train_classes])
        subsets = []
        for index in range(NUM_SUBSETS):
            keep = sorted(np.random.default_rng(index).permutation(num_classes)[: num_classes // 2].tolist())
            subsets.append(evaluate([train_classes[i] for i in keep] if language else None, keep))
        results["mIoU_subsets"] = subsets
        results["mIoU_subset_mean"] = float(np.mean(subsets))
    return results


def heldout_metrics(model: Any, full_data_dir: Path, seen_names_miou: float) -> dict[str, Any]:
    """A model trained on the seen names only, evaluated on the complete mosaic's val with every name.

    Args:
        model: The trained model.
        full_data_dir: The mosaic the held-out copy was made from.
        seen_names_miou: The model's mIoU on its own (seen-names) val split.

    Returns:
        Per-class IoU with every name, seen and unseen mIoU and their harmonic mean (the generalised zero-shot
        protocol).
    """
    import torch

    all_classes = dataset_classes(full_data_dir)
    with torch.inference_mode():
        iou = _class_iou(model.eval(), val_samples(full_data_dir), len(all_classes), all_classes)
    per_class = [None if math.isnan(v) else float(v) for v in iou.tolist()]
    seen_miou, unseen_miou = seen_unseen_miou(all_classes, per_class)
    harmonic = 2 * seen_miou * unseen_miou / (seen_miou + unseen_miou) if seen_miou + unseen_miou > 0 else 0.0
    return {
        "classes": list(HELDOUT_CLASSES),
        "protocol": "seen names only",
        "all_names": all_classes,
        "per_class_IoU_all_names": per_class,
        "seen_mIoU": seen_miou,
        "unseen_mIoU": unseen_miou,
        "harmonic_mIoU": harmonic,
        "seen_mIoU_seen_names_only": seen_names_miou,
    }


def seen_unseen_miou(classes: list[str], per_class_iou: list[float | None]) -> tuple[float, float]:
    """mIoU (percent) over the classes outside `HELDOUT_CLASSES` and over those inside; None / NaN IoU skipped."""
    import numpy as np

    iou = np.array([np.nan if v is None else v for v in per_class_iou], dtype=float)
    held = np.isin(classes, HELDOUT_CLASSES)
    return float(np.nanmean(iou[~held])), float(np.nanmean(iou[held]))
