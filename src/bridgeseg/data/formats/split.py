"""Train/val splits for exports that have none: deterministic, stratified, written as list files.

The split is stratified by the rarest class each image holds: images are grouped by that class (images holding
no class form a group of their own), each group is shuffled with the seed and gives its share of validation
images (largest remainders decide the rounding, so the total is ``round(n · val_fraction)``). A class held by a
handful of images therefore lands in both splits instead of all in one by chance. The lists hold one entry key (the
image path relative to the export root) per line.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bridgeseg.data.formats._base import Annotations, Entry
from bridgeseg.errors import DatasetError
from bridgeseg.io import write_atomically

__all__ = ["SPLIT_DIR", "read_split_lists", "select_entries", "stratified_split", "write_split_lists"]

SPLIT_DIR = "splits"
"""Folder under the export root where ``bridgeseg data split`` writes ``train.txt`` and ``val.txt``."""


def stratified_split(
    keys: Sequence[str], labels: Sequence[set[int]], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split keys into train and val, stratified by the rarest class each holds.

    Args:
        keys: One unique key per image.
        labels: The classes each image holds.
        val_fraction: Share of images for validation, in (0, 1).
        seed: Seed of the shuffle.

    Returns:
        The train keys and the val keys, each sorted.

    Raises:
        ValueError: ``val_fraction`` outside (0, 1), or fewer than 2 images.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if len(keys) < 2:
        raise ValueError(f"{len(keys)} image(s): a train/val split needs at least 2")
    frequency = Counter(label for held in labels for label in held)
    groups: dict[tuple[int, int], list[str]] = {}
    for key, held in sorted(zip(keys, labels, strict=True)):
        rarest = min(((frequency[label], label) for label in held), default=(math.inf, -1))
        groups.setdefault((int(min(rarest[0], 2**31)), rarest[1]), []).append(key)
    total_val = min(max(round(len(keys) * val_fraction), 1), len(keys) - 1)
    order = sorted(groups)
    quotas = {group: len(groups[group]) * val_fraction for group in order}
    counts = {group: math.floor(quotas[group]) for group in order}
    remaining = total_val - sum(counts.values())
    for group in sorted(order, key=lambda g: (-(quotas[g] - counts[g]), g))[: max(remaining, 0)]:
        counts[group] += 1
    rng = np.random.default_rng(seed)
    train: list[str] = []
    val: list[str] = []
    for group in order:
        members = [groups[group][i] for i in rng.permutation(len(groups[group]))]
        val += members[: counts[group]]
        train += members[counts[group] :]
    return sorted(train), sorted(val)


def write_split_lists(folder: str | os.PathLike[str], splits: dict[str, Sequence[str]]) -> Path:
    """Write ``<folder>/<split>.txt``, one key a line; returns the folder."""
    folder = Path(folder)
    for name, keys in splits.items():
        text = "".join(f"{key}\n" for key in keys).encode("utf-8")
        write_atomically(folder / f"{name}.txt", lambda file, text=text: file.write(text))
    return folder


def read_split_lists(folder: str | os.PathLike[str]) -> dict[str, list[str]] | None:
    """The lists in ``folder`` (``train.txt``, ``val.txt``, ``test.txt``), or None when it has none."""
    folder = Path(folder)
    lists = {}
    for name in ("train", "val", "test"):
        if (folder / f"{name}.txt").is_file():
            lines = (folder / f"{name}.txt").read_text(encoding="utf-8").splitlines()
            lists[name] = [line.strip() for line in lines if line.strip()]
    return lists or None


def _split_alias(split: str) -> str:
    return {"training": "train", "valid": "val", "validation": "val", "testing": "test"}.get(split, split)


def split_entries(
    annotations: Annotations,
    split_dir: str | os.PathLike[str] | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
) -> dict[str, list[Entry]]:
    """Every split of an export: from list files, else the export's own, else a stratified split.

    Args:
        annotations: The export.
        split_dir: Folder of split lists; default ``<root>/splits``.
        val_fraction: Split an export that has no split this way (deterministic in ``seed``); None: refuse.
        seed: Seed of that split.

    Returns:
        Entries per split name.

    Raises:
        DatasetError: A list names an image the export lacks, or the export has no split and no ``val_fraction``.
    """
    folder = Path(split_dir) if split_dir is not None else annotations.root / SPLIT_DIR
    lists = read_split_lists(folder) if folder.is_dir() else None
    by_key = {entry.key: entry for entry in annotations.entries}
    if lists is not None:
        missing = [key for keys in lists.values() for key in keys if key not in by_key]
        if missing:
            raise DatasetError(
                f"{folder}: lists {len(missing)} image(s) the export lacks ({', '.join(missing[:5])}); re-create the "
                f"lists with bridgeseg data split"
            )
        return {name: [by_key[key] for key in keys] for name, keys in lists.items()}
    if all(entry.split is not None for entry in annotations.entries):
        splits: dict[str, list[Entry]] = {}
        for entry in annotations.entries:
            splits.setdefault(str(entry.split), []).append(entry)
        return splits
    if val_fraction is None:
        raise DatasetError(
            f"{annotations.root}: the {annotations.format} export has no train/val split; run `bridgeseg data split "
            f"{annotations.root} --val-fraction 0.2` (writes {folder}/train.txt and val.txt), or set the dataset "
            f"option val_fraction"
        )
    keys = [entry.key for entry in annotations.entries]
    labels = [annotations.labels_present(entry) for entry in annotations.entries]
    train, val = stratified_split(keys, labels, val_fraction, seed)
    return {"train": [by_key[key] for key in train], "val": [by_key[key] for key in val]}


def select_entries(
    annotations: Annotations,
    split: str,
    split_dir: str | os.PathLike[str] | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
) -> list[Entry]:
    """The entries of one split (``all`` = every entry); see :func:`split_entries`.

    Raises:
        DatasetError: No such split.
    """
    if split == "all":
        return list(annotations.entries)
    splits = split_entries(annotations, split_dir, val_fraction, seed)
    name = _split_alias(split)
    if name not in splits:
        raise DatasetError(f"{annotations.root}: no split {split!r}; the export has {', '.join(sorted(splits))}")
    return splits[name]
