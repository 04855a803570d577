"""Small real-annotation binary set: fluorescence nuclei with a human-annotated mask.

The PyPI package ``stardist`` ships one 512x512 fluorescence image of stained nuclei from the 2018 Data Science
Bowl (BBBC038v1) with its instance mask (``stardist.data.test_image_nuclei_2d``). This module tiles it into train
and val tiles from disjoint areas of the image, with the binary mask ``background`` / ``nucleus``, in the generic
folder layout. It is tiny (about 125 nuclei): a real-annotation sanity check next to the mosaic stand-in, not a
benchmark.

Only the two TIFF files are read, with ``tifffile`` (a scikit-image dependency), so neither stardist's own imports
(numba, csbdeep) nor TensorFlow are needed: ``pip install --no-deps stardist`` is enough.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from bridgeseg.data.mosaic import _prepare_out_dir

logger = logging.getLogger(__name__)

__all__ = ["NUCLEI_CLASSES", "generate_nuclei", "load_nuclei", "nuclei_split_areas"]

NUCLEI_CLASSES: tuple[str, str] = ("background", "nucleus")

_GENERATOR_ID = "bridgeseg.data.nuclei"
_IMAGE_FILE = "data/images/img2d.tif"
_MASK_FILE = "data/images/mask2d.tif"
_LICENCE = (
    "Image and instance mask from the 2018 Data Science Bowl, per stardist's docstring (image set BBBC038v1, Broad "
    "Bioimage Benchmark Collection; Caicedo et al., Nature Methods 16, 1247-1253, 2019), which the Broad Institute "
    "released under CC0 1.0; which DSB image it is is not stated. Redistributed in the stardist wheel (package "
    "licence BSD-3-Clause) as stardist/data/images/{img2d,mask2d}.tif."
)


def _stardist_dir() -> Path:
    # find_spec locates the package without running its __init__, which imports numba and csbdeep.
    spec = importlib.util.find_spec("stardist")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the nuclei set is read from the data files of the PyPI package 'stardist'; install it with "
            "`pip install stardist` (or `pip install --no-deps stardist`: only its data files are used)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def load_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """Load the stardist nuclei image and its instance mask.

    Returns:
        ``(image, instances)``: the fluorescence image ``[H, W]`` (uint16) and the instance labels ``[H, W]``
        (0 = background, one id per nucleus).

    Raises:
        ModuleNotFoundError: If stardist is not installed.
        FileNotFoundError: If the installed stardist lacks its data files.
    """
    import tifffile

    root = _stardist_dir()
    paths = [root / _IMAGE_FILE, root / _MASK_FILE]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"stardist is installed but lacks {missing}; reinstall it from PyPI")
    image, instances = (tifffile.imread(path) for path in paths)
    if image.shape != instances.shape or image.ndim != 2:
        raise ValueError(f"unexpected stardist data shapes {image.shape} and {instances.shape}")
    return image, instances


def _to_rgb8(image: np.ndarray) -> np.ndarray:
    """Percentile-normalise a grey image to ``[H, W, 3]`` uint8."""
    low, high = np.percentile(image, (0.5, 99.8))
    scaled = np.clip((image.astype(np.float32) - low) / max(float(high - low), 1e-6), 0, 1)
    grey = np.rint(scaled * 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def nuclei_split_areas(width: int, height: int, val_fraction: float = 0.25) -> dict[str, tuple[int, int, int, int]]:
    """Disjoint train (left) and val (right) areas of the nuclei image.

    Args:
        width: Image width in pixels.
        height: Image height in pixels.
        val_fraction: Share of the width that goes to val.

    Returns:
        ``{"train": box, "val": box}`` with half-open boxes ``(x0, y0, x1, y1)`` in image pixels.
    """
    cut = width - round(width * val_fraction)
    return {"train": (0, 0, cut, height), "val": (cut, 0, width, height)}


def generate_nuclei(
    out_dir: str | Path,
    tile: int = 128,
    seed: int = 0,
    *,
    num_train: int = 48,
    val_fraction: float = 0.25,
    overwrite: bool = False,
) -> Path:
    """Tile the stardist nuclei image into a binary segmentation set in the generic folder layout.

    The val area (right ``val_fraction`` of the width) is cut into non-overlapping tiles; train tiles are
    ``num_train`` random (overlapping) windows inside the train area. Writes ``images/{train,val}/<stem>.png``
    (RGB), ``masks/{train,val}/<stem>.png`` (palette PNG, 0 = background, 1 = nucleus), ``classes.txt``,
    ``README.md`` and ``meta.json`` (with the tile boxes).

    Args:
        out_dir: Output folder; created if missing, and must be empty unless it holds an earlier nuclei set and
            ``overwrite`` is set.
        tile: Side of the square tiles, in pixels.
        seed: Seed of the train tile positions.
        num_train: Number of train tiles.
        val_fraction: Share of the image width reserved for val tiles.
        overwrite: Replace an earlier nuclei set in ``out_dir``.

    Returns:
        The output folder.

    Raises:
        ModuleNotFoundError: If stardist is not installed.
        ValueError: If the tile does not fit the train or val area.
        FileExistsError: If ``out_dir`` is not empty and may not be replaced.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    if num_train < 1:
        raise ValueError(f"num_train must be at least 1, got {num_train}")
    image, instances = load_nuclei()
    height, width = image.shape
    areas = nuclei_split_areas(width, height, val_fraction)
    for split, (x0, y0, x1, y1) in areas.items():
        if tile < 8 or tile > min(x1 - x0, y1 - y0):
            raise ValueError(
                f"tile={tile} does not fit the {split} area of {x1 - x0}x{y1 - y0} px; use 8 <= tile <= "
                f"{min(x1 - x0, y1 - y0)} or change val_fraction"
            )

    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, overwrite, _GENERATOR_ID)
    rgb = _to_rgb8(image)
    mask = (instances > 0).astype(np.uint8)
    palette = [0, 0, 0, 255, 255, 255] + [0, 0, 0] * 254

    rng = np.random.default_rng(seed)
    tx0, ty0, tx1, ty1 = areas["train"]
    vx0, vy0, vx1, vy1 = areas["val"]
    boxes: dict[str, list[tuple[int, int, int, int]]] = {
        "train": [
            (int(x), int(y), int(x) + tile, int(y) + tile)
            for x, y in zip(
                rng.integers(tx0, tx1 - tile + 1, num_train), rng.integers(ty0, ty1 - tile + 1, num_train), strict=True
            )
        ],
        "val": [
            (x, y, x + tile, y + tile)
            for y in range(vy0, vy1 - tile + 1, tile)
            for x in range(vx0, vx1 - tile + 1, tile)
        ],
    }
    for split, split_boxes in boxes.items():
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        (out_dir / "masks" / split).mkdir(parents=True, exist_ok=True)
        for index, (x0, y0, x1, y1) in enumerate(split_boxes):
            stem = f"{split}_{index:05d}"
            Image.fromarray(rgb[y0:y1, x0:x1]).save(out_dir / "images" / split / f"{stem}.png")
            mask_image = Image.fromarray(np.ascontiguousarray(mask[y0:y1, x0:x1]))
            mask_image.putpalette(palette)
            mask_image.save(out_dir / "masks" / split / f"{stem}.png")

    meta = {
        "generator": _GENERATOR_ID,
        "description": "Tiles of one human-annotated fluorescence nuclei image; a tiny real-annotation sanity set.",
        "classes": list(NUCLEI_CLASSES),
        "licence": _LICENCE,
        "seed": seed,
        "tile": tile,
        "num_train": num_train,
        "val_fraction": val_fraction,
        "split_areas": areas,
        "tiles": boxes,
    }
    (out_dir / "classes.txt").write_text("\n".join(NUCLEI_CLASSES) + "\n")
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    (out_dir / "README.md").write_text(
        f"# Nuclei tiles (generated)\n\n"
        f"Generated by `{_GENERATOR_ID}` (seed {seed}, tile {tile} px): {len(boxes['train'])} train tiles from the "
        f"left {1 - val_fraction:.0%} and {len(boxes['val'])} val tiles from the right {val_fraction:.0%} of one "
        f"{width}x{height} fluorescence image. Classes: `background` (0), `nucleus` (1). A tiny sanity set, not a "
        f"benchmark; a few very bright nuclei are not annotated in the source mask.\n\n"
        f"Licence: {_LICENCE}\n"
    )
    logger.info("wrote %d train and %d val nuclei tiles to %s", len(boxes["train"]), len(boxes["val"]), out_dir)
    return out_dir
