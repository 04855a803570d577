"""What the layouts share: finding the dataset root, listing and pairing files, reading split lists.

Each raises :class:`DatasetNotFoundError` or :class:`DatasetError` with a message that names the file and says what
to do.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from bridgeseg.errors import DatasetError, DatasetNotFoundError

EXAMPLES = 5  # how many file names an error message lists


def resolve_base(name: str, root: Path, candidates: Sequence[str], required: str, hint: str) -> Path:
    """Find which of ``root/candidate`` holds ``required``; lets root point at the dataset folder or its parent."""
    if not root.is_dir():
        raise DatasetNotFoundError(f"{name}: root {root} does not exist; {hint}")
    for candidate in candidates:
        base = root / candidate if candidate else root
        if (base / required).exists():
            return base
    looked = ", ".join(str((root / c if c else root) / required) for c in candidates)
    raise DatasetNotFoundError(f"{name}: expected {required} under root {root} (looked for {looked}); {hint}")


def resolve_split(name: str, split: str, aliases: dict[str, str]) -> str:
    try:
        return aliases[split]
    except KeyError:
        valid = ", ".join(sorted(aliases))
        raise DatasetError(f"{name}: unknown split {split!r}; valid splits: {valid}") from None


def require_dir(name: str, path: Path, hint: str) -> None:
    if not path.is_dir():
        raise DatasetNotFoundError(f"{name}: expected folder {path} not found; {hint}")


def list_files(folder: Path, suffixes: Sequence[str], recursive: bool = False) -> list[Path]:
    """Files in ``folder`` whose lower-cased name ends with one of ``suffixes``, sorted."""
    suffixes = tuple(s.lower() for s in suffixes)
    found: list[Path] = []
    stack = [folder]
    while stack:
        current = stack.pop()
        with os.scandir(current) as entries:
            for entry in entries:
                if entry.is_dir():
                    if recursive:
                        stack.append(Path(entry.path))
                elif entry.name.lower().endswith(suffixes) and not entry.name.startswith("."):
                    found.append(Path(entry.path))
    return sorted(found)


def examples(paths: Iterable[Path | str]) -> str:
    items = sorted(str(p) for p in paths)
    shown = ", ".join(items[:EXAMPLES])
    return shown + (f", ... ({len(items)} in all)" if len(items) > EXAMPLES else "")


def pair(
    name: str,
    images: dict[str, Path],
    masks: dict[str, Path],
    image_dir: Path,
    mask_dir: Path,
    rule: str,
) -> list[tuple[Path, Path]]:
    """Pair images and masks by key; any unmatched file on either side is an error that lists a few."""
    lonely_images = [images[key].name for key in images.keys() - masks.keys()]
    lonely_masks = [masks[key].name for key in masks.keys() - images.keys()]
    if lonely_images or lonely_masks:
        parts = []
        if lonely_images:
            parts.append(
                f"{len(lonely_images)} image(s) in {image_dir} have no mask in {mask_dir}: {examples(lonely_images)}"
            )
        if lonely_masks:
            parts.append(
                f"{len(lonely_masks)} mask(s) in {mask_dir} have no image in {image_dir}: {examples(lonely_masks)}"
            )
        raise DatasetError(f"{name}: {'; '.join(parts)}; {rule}")
    return [(images[key], masks[key]) for key in sorted(images)]


def read_split_file(name: str, path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetNotFoundError(f"{name}: split file {path} not found; check the split name and the layout")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"{name}: split file {path} lists no image ids")
    return ids


def by_stem(name: str, files: Sequence[Path], suffix: str = "") -> dict[str, Path]:
    """Key files by their name minus ``suffix`` (or minus the extension); duplicate keys are an error."""
    keyed: dict[str, Path] = {}
    for path in files:
        key = path.name[: -len(suffix)] if suffix else path.stem
        if key in keyed:
            raise DatasetError(f"{name}: {keyed[key]} and {path} have the same name stem; keep one of them")
        keyed[key] = path
    return keyed


def voc_like_samples(name: str, base: Path, split_file: Path, mask_dirs: Sequence[Path]) -> list[tuple[Path, Path]]:
    """Samples of a VOC-style layout: ids from a split file, ``JPEGImages/<id>.jpg``, first existing mask."""
    ids = read_split_file(name, split_file)
    image_dir = base / "JPEGImages"
    samples: list[tuple[Path, Path]] = []
    missing_images: list[str] = []
    missing_masks: list[str] = []
    for image_id in ids:
        image = image_dir / f"{image_id}.jpg"
        mask = next((d / f"{image_id}.png" for d in mask_dirs if (d / f"{image_id}.png").is_file()), None)
        if not image.is_file():
            missing_images.append(image.name)
        if mask is None:
            missing_masks.append(f"{image_id}.png")
        if image.is_file() and mask is not None:
            samples.append((image, mask))
    if missing_images or missing_masks:
        parts = []
        if missing_images:
            parts.append(f"{len(missing_images)} image(s) missing from {image_dir}: {examples(missing_images)}")
        if missing_masks:
            where = " or ".join(str(d) for d in mask_dirs)
            parts.append(f"{len(missing_masks)} mask(s) missing from {where}: {examples(missing_masks)}")
        raise DatasetError(f"{name}: ids listed in {split_file} lack files: {'; '.join(parts)}")
    return samples
