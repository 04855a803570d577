"""The comparison's data: the two mosaics, generated when missing, and the copy of `mosaic` without the held-out
classes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from _compare_plan import DATASETS, HELDOUT_CLASSES, HELDOUT_DATASET


def prepare_data(data_root: Path, datasets: set[str]) -> None:
    """Generate the mosaics the plan needs (reused when present) and the held-out copy of `mosaic`."""
    from bridgeseg.app.demo import ensure_mosaic

    for name in sorted(datasets - {HELDOUT_DATASET}):
        ensure_mosaic(data_root / name, **DATASETS[name])
    if HELDOUT_DATASET in datasets:
        ensure_mosaic(data_root / "mosaic", **DATASETS["mosaic"])
        make_heldout(data_root / "mosaic", data_root / HELDOUT_DATASET)


def make_heldout(source: Path, target: Path) -> None:
    """Copy a mosaic without the held-out classes: their names leave `classes.txt`, their pixels become ignore (255)
    in train and val, and the other labels are renumbered to the shorter list.

    The generalised zero-shot protocol of the segmentation literature (SPNet, ZS3Net): the classifier never sees
    the unseen names while it trains. Keeping them in the training vocabulary with their pixels ignored would make
    them a negative of every pixel, which teaches the model never to predict them.
    """
    import numpy as np
    from PIL import Image

    stamp = target / "heldout.json"
    wanted = {
        "source_meta": json.loads((source / "meta.json").read_text()),
        "heldout": list(HELDOUT_CLASSES),
        "protocol": "seen names only",
    }
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return
    classes = dataset_classes(source)
    seen = [name for name in classes if name not in HELDOUT_CLASSES]
    lookup = np.full(256, 255, dtype=np.uint8)  # held-out classes and ignore map to ignore
    for new_index, name in enumerate(seen):
        lookup[classes.index(name)] = new_index
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    (target / "classes.txt").write_text("\n".join(seen) + "\n")
    meta = json.loads((source / "meta.json").read_text())
    (target / "meta.json").write_text(json.dumps(meta | {"classes": seen, "heldout": list(HELDOUT_CLASSES)}) + "\n")
    for path in sorted((target / "masks").glob("*/*.png")):
        mask = Image.open(path)
        out = Image.fromarray(lookup[np.array(mask)])
        out.putpalette(mask.getpalette())
        out.save(path)
    stamp.write_text(json.dumps(wanted) + "\n")


def dataset_classes(data_dir: Path) -> list[str]:
    """A folder dataset's class names, in label order."""
    return (data_dir / "classes.txt").read_text().splitlines()
