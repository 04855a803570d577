"""Convert any supported export to bridgeseg's plain folder layout (index PNGs + ``classes.txt``)."""

from __future__ import annotations

import io
import logging
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from bridgeseg.data.formats._base import Annotations, Entry
from bridgeseg.data.formats.split import SPLIT_DIR, split_entries, write_split_lists
from bridgeseg.errors import DatasetError
from bridgeseg.io import write_atomically

__all__ = ["convert_to_folder"]

logger = logging.getLogger(__name__)


def _output_name(entry: Entry) -> str:
    """A file stem unique per entry: the key's path with "/" as "__", without its extension."""
    return str(Path(entry.key).with_suffix("")).replace("\\", "/").replace("/", "__")


def convert_to_folder(
    annotations: Annotations,
    out: str | os.PathLike[str],
    val_fraction: float = 0.2,
    seed: int = 0,
    split_dir: str | os.PathLike[str] | None = None,
) -> tuple[Path, dict[str, int]]:
    """Write ``out/images/<split>/``, ``out/masks/<split>/`` (index PNGs), ``out/classes.txt`` and the split lists.

    Images are copied byte for byte (their EXIF orientation is kept, and applied on reading as the masks were
    rasterised); embedded images are written as files. Splits: the export's lists or its own, else a stratified split
    by ``val_fraction`` and ``seed``, written to ``out/splits/`` as well.

    Returns:
        The output folder and the images written per split.

    Raises:
        DatasetError: The export or some entries have problems (the good entries are written; the message lists the
            bad ones).
    """
    out = Path(out)
    if annotations.problems:
        raise DatasetError("; ".join(annotations.problems))
    splits = split_entries(annotations, split_dir, val_fraction, seed)
    problems: list[str] = []
    written: dict[str, int] = {}
    for split, entries in splits.items():
        for entry in entries:
            try:
                _, info = annotations.open_image(entry)
                mask = annotations.render(entry, info.size)
            except DatasetError as error:
                problems.append(str(error))
                continue
            name = _output_name(entry)
            image_dir, mask_dir = out / "images" / split, out / "masks" / split
            image_dir.mkdir(parents=True, exist_ok=True)
            mask_dir.mkdir(parents=True, exist_ok=True)
            if entry.image_path is not None:
                shutil.copyfile(entry.image_path, image_dir / f"{name}{entry.image_path.suffix.lower()}")
            else:
                assert entry.image_bytes is not None
                with Image.open(io.BytesIO(entry.image_bytes)) as embedded:
                    suffix = ".jpg" if embedded.format == "JPEG" else ".png"
                (image_dir / f"{name}{suffix}").write_bytes(entry.image_bytes)
            buffer = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(mask)).save(buffer, format="PNG")
            data = buffer.getvalue()
            write_atomically(mask_dir / f"{name}.png", lambda file, data=data: file.write(data))
            written[split] = written.get(split, 0) + 1
    classes = "".join(f"{name}\n" for name in annotations.classes).encode("utf-8")
    write_atomically(out / "classes.txt", lambda file: file.write(classes))
    write_split_lists(out / SPLIT_DIR, {split: [e.key for e in entries] for split, entries in splits.items()})
    if problems:
        listed = "\n".join(f"  {problem}" for problem in problems[:10])
        raise DatasetError(
            f"wrote {sum(written.values())} images to {out}, but {len(problems)} entries had problems and were left "
            f"out:\n{listed}"
        )
    return out, written
