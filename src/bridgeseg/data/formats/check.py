"""One checker for users (``bridgeseg data check``) and for training's pre-flight.

It reads every (or every n-th) image header and mask, and reports what a user needs before training: how many
images and masks, each class's pixel share and image count, the image sizes, and every problem found. Problems are
what makes training fail (unreadable files, a mask or annotation of another size than its image, labels no class
has, duplicate class names or images); warnings are what training survives but a user should know (classes no
image holds, shapes that were not read).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bridgeseg.data.datasets.base import CheckReport, SegmentationDataset
from bridgeseg.data.formats._base import Annotations, Entry
from bridgeseg.errors import DatasetError
from bridgeseg.images import probe
from bridgeseg.vocabulary import IGNORE_INDEX

__all__ = ["DataCheckReport", "check_annotations", "check_dataset", "evenly_spaced", "merge_reports", "save_chart"]

logger = logging.getLogger(__name__)

_LISTED = 50  # problems printed in full; the rest are counted


@dataclass
class DataCheckReport(CheckReport):
    """:class:`CheckReport` with what ``bridgeseg data check`` shows.

    Attributes:
        classes: Class names in label order.
        class_images: Images holding each class, int64 ``[num_classes]``.
        image_sizes: ``(width, height)`` of each readable image.
        num_masks: Images with a readable annotation or mask.
        warnings: What training survives but a user should know, one line each.
        split_sizes: Images per split, when known.
    """

    classes: list[str] = field(default_factory=list)
    class_images: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    image_sizes: list[tuple[int, int]] = field(default_factory=list)
    num_masks: int = 0
    warnings: list[str] = field(default_factory=list)
    split_sizes: dict[str, int] = field(default_factory=dict)

    def raise_for_problems(self) -> None:
        """Raise when a problem was found.

        Raises:
            DatasetError: The first problem, then up to nine more.
        """
        if not self.problems:
            return
        message = self.problems[0]
        if len(self.problems) > 1:
            listed = "".join(f"\n  {problem}" for problem in self.problems[1:10])
            message += (
                f"\n{len(self.problems) - 1} more problem(s) in {self.dataset} [{self.split}] (`bridgeseg data check` "
                f"lists every one):{listed}"
            )
        raise DatasetError(message)

    def table(self) -> str:
        """Per-class pixel share and image count, one row a class."""
        labelled = max(int(self.class_pixels.sum()) + self.ignore_pixels, 1)
        width = max([len("class"), *(len(name) for name in self.classes)])
        rows = [f"{'label':>5}  {'class':<{width}}  {'pixels %':>8}  {'images':>6}"]
        for label, (name, pixels, images) in enumerate(
            zip(self.classes, self.class_pixels.tolist(), self.class_images.tolist(), strict=True)
        ):
            rows.append(f"{label:>5}  {name:<{width}}  {100.0 * pixels / labelled:>8.2f}  {images:>6}")
        rows.append(f"{IGNORE_INDEX:>5}  {'(ignore)':<{width}}  {100.0 * self.ignore_pixels / labelled:>8.2f}  {'':>6}")
        return "\n".join(rows)

    def size_summary(self) -> str:
        if not self.image_sizes:
            return "image sizes: none readable"
        widths, heights = np.array(self.image_sizes).T
        distinct = len(set(self.image_sizes))
        return (
            f"image sizes (width x height): min {widths.min()}x{heights.min()}, median "
            f"{int(np.median(widths))}x{int(np.median(heights))}, max {widths.max()}x{heights.max()} "
            f"({distinct} distinct)"
        )

    def render(self) -> str:
        """The full text report: counts, the class table, sizes, problems and warnings."""
        splits = ", ".join(f"{name} {count}" for name, count in self.split_sizes.items())
        lines = [
            f"{self.dataset}: {self.num_samples} images, {self.num_masks} masks/annotations read, "
            f"{len(self.classes)} classes" + (f" (splits: {splits})" if splits else ""),
            "",
            self.table(),
            "",
            self.size_summary(),
            "",
            f"problems: {len(self.problems)}" + (" (training would fail)" if self.problems else ""),
        ]
        lines += [f"  {problem}" for problem in self.problems[:_LISTED]]
        if len(self.problems) > _LISTED:
            lines.append(f"  ... and {len(self.problems) - _LISTED} more")
        lines.append(f"warnings: {len(self.warnings)}")
        lines += [f"  {warning}" for warning in self.warnings[:_LISTED]]
        if len(self.warnings) > _LISTED:
            lines.append(f"  ... and {len(self.warnings) - _LISTED} more")
        return "\n".join(lines)


Inspect = Callable[[int], tuple[np.ndarray, tuple[int, int]]]


def _scan(
    name: str, split: str, classes: Sequence[str], count: int, inspect: Inspect, label: Callable[[int], str]
) -> DataCheckReport:
    num_classes = len(classes)
    report = DataCheckReport(
        dataset=name,
        split=split,
        num_samples=count,
        class_pixels=np.zeros(num_classes, dtype=np.int64),
        classes=list(classes),
        class_images=np.zeros(num_classes, dtype=np.int64),
    )
    for index in range(count):
        try:
            mask, size = inspect(index)
        except DatasetError as error:
            report.problems.append(str(error).splitlines()[0] if str(error) else label(index))
            continue
        report.image_sizes.append(size)
        report.num_masks += 1
        counts = np.bincount(np.asarray(mask).ravel(), minlength=IGNORE_INDEX + 1)
        if counts[num_classes:IGNORE_INDEX].any() or counts.size > IGNORE_INDEX + 1:
            bad = [v for v in np.flatnonzero(counts).tolist() if num_classes <= v != IGNORE_INDEX]
            report.problems.append(f"{label(index)}: label values {bad[:10]} have no class ({num_classes} classes)")
            continue
        report.class_pixels += counts[:num_classes]
        report.class_images += counts[:num_classes] > 0
        report.ignore_pixels += int(counts[IGNORE_INDEX])
    return report


def _split_warnings(report: DataCheckReport) -> None:
    seen: dict[str, int] = {}
    for name in report.classes:
        seen[name.strip()] = seen.get(name.strip(), 0) + 1
    repeated = sorted(name for name, n in seen.items() if n > 1)
    if repeated and not any("appear more than once" in problem for problem in report.problems):
        report.problems.append(f"class names {repeated} appear more than once; give each class a distinct name")
    empty = [name for name, images in zip(report.classes, report.class_images.tolist(), strict=True) if images == 0]
    if empty and report.num_masks:
        report.warnings.append(
            f"classes no image holds: {empty}; the model never sees them (remove them, or annotate some images)"
        )


def check_annotations(annotations: Annotations, splits: dict[str, int] | None = None) -> DataCheckReport:
    """Check every entry of an export.

    Args:
        annotations: The export.
        splits: Images per split, shown in the report.
    """
    entries = annotations.entries

    def inspect(index: int) -> tuple[np.ndarray, tuple[int, int]]:
        info = annotations.image_info(entries[index])
        return annotations.render(entries[index], info.size), info.size

    report = _scan(
        f"{annotations.root} ({annotations.format})",
        "all",
        annotations.classes,
        len(entries),
        inspect,
        lambda index: entries[index].name,
    )
    report.problems[:0] = annotations.problems
    for entry in entries:
        report.problems += entry.problems[1:]  # the first one is reported by render
        report.warnings += entry.notes
    report.warnings += annotations.notes
    report.split_sizes = dict(splits or {})
    _split_warnings(report)
    return report


def evenly_spaced(total: int, count: int | None) -> list[int]:
    """``count`` indices spread evenly over ``range(total)`` (all of them when ``count`` is None or larger)."""
    if count is None or count >= total:
        return list(range(total))
    return sorted({round(step * (total - 1) / max(count - 1, 1)) for step in range(count)})


def check_dataset(dataset: SegmentationDataset, count: int | None = None) -> DataCheckReport:
    """Check a dataset's samples (all, or ``count`` evenly spaced ones): what training's pre-flight runs.

    Nothing random is drawn, so a run checked this way trains exactly as one that is not.
    """
    indices = evenly_spaced(len(dataset), count)
    entries: list[Entry] | None = getattr(dataset, "entries", None)
    annotations: Annotations | None = getattr(dataset, "annotations", None)

    def inspect(position: int) -> tuple[np.ndarray, tuple[int, int]]:
        index = indices[position]
        if annotations is not None and entries is not None:
            info = annotations.image_info(entries[index])
            return annotations.render(entries[index], info.size), info.size
        info = probe(dataset.samples[index][0], "image")
        return dataset._read_mask(index, info), info.size

    def label(position: int) -> str:
        return str(dataset.samples[indices[position]][0])

    report = _scan(dataset.name, dataset.split, dataset.classes, len(indices), inspect, label)
    if count is None:
        _split_warnings(report)
    return report


def merge_reports(name: str, reports: Sequence[DataCheckReport], problems: Sequence[str] = ()) -> DataCheckReport:
    """One report for several splits of a dataset (same classes), with ``problems`` found outside them first."""
    classes = reports[0].classes if reports else []
    merged = DataCheckReport(
        dataset=name,
        split="all",
        num_samples=sum(r.num_samples for r in reports),
        class_pixels=sum((r.class_pixels for r in reports), np.zeros(len(classes), dtype=np.int64)),
        ignore_pixels=sum(r.ignore_pixels for r in reports),
        problems=[*problems, *(p for r in reports for p in r.problems)],
        classes=list(classes),
        class_images=sum((r.class_images for r in reports), np.zeros(len(classes), dtype=np.int64)),
        image_sizes=[size for r in reports for size in r.image_sizes],
        num_masks=sum(r.num_masks for r in reports),
        split_sizes={r.split: r.num_samples for r in reports},
    )
    _split_warnings(merged)
    return merged


def save_chart(report: DataCheckReport, path: str | os.PathLike[str]) -> Path | None:
    """A PNG bar chart of each class's pixel share and image count; None (and a log line) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: no chart (pip install 'bridgeseg[bench]')")
        return None
    labelled = max(int(report.class_pixels.sum()) + report.ignore_pixels, 1)
    shares = 100.0 * report.class_pixels / labelled
    positions = np.arange(len(report.classes))
    height = 1.0 + 0.3 * len(report.classes)
    figure, (pixels_axis, images_axis) = plt.subplots(1, 2, figsize=(9, height), sharey=True)
    pixels_axis.barh(positions, shares, color="tab:blue")
    pixels_axis.set_xlabel("pixels (%)")
    pixels_axis.set_yticks(positions, report.classes)
    pixels_axis.invert_yaxis()
    images_axis.barh(positions, report.class_images, color="tab:orange")
    images_axis.set_xlabel(f"images (of {report.num_masks})")
    figure.suptitle(report.dataset, fontsize=9)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
