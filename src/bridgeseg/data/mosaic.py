"""Offline stand-in segmentation dataset: mosaics of public-domain photos.

No dataset can be downloaded on a machine without a network, yet the library needs real images with dense labels
to train, evaluate and demonstrate on. This module builds them from the photos and textures that ship inside the
scikit-image (and, opt-in, scikit-learn) wheels: every image is a mosaic of irregular regions, each region filled
with a randomly scaled, rotated and colour-jittered view of one source photo, and the mask labels every pixel with
its region's class, which is the name of the source photo ("brick wall", "cat", "galaxies", ...).

Train and val regions are cut from disjoint areas of each photo: the photo is split once into a train part and a
val part, each part is resampled on its own, and a region only ever reads pixels of its split's part. The areas are
available from :func:`split_areas`, and every generated dataset records where each region came from in
``provenance.jsonl``.

It is a stand-in: scores on it say whether a pipeline works, not how it does on real-world segmentation.

Example:
    >>> from bridgeseg.data.mosaic import generate_mosaic
    >>> root = generate_mosaic("data/mosaic", num_train=400, num_val=100, size=192, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

__all__ = [
    "ATTRIBUTION_SOURCES",
    "MAX_IMAGES",
    "MAX_SIZE",
    "MAX_TOTAL_PIXELS",
    "MIN_SIZE",
    "MOSAIC_SOURCES",
    "MosaicDifficulty",
    "MosaicSource",
    "generate_mosaic",
    "load_source_photo",
    "mosaic_classes",
    "split_areas",
]

MIN_SIZE = 16
"""Smallest image side, in pixels: below it a region is a few pixels."""
MAX_SIZE = 2048
"""Largest image side, in pixels. The source photos are resampled to the image size before the first image is drawn,
and each image is drawn in float32: memory grows with the square of the side (`--size 100000` reached 12.5 GB in a
minute); a 2048 × 2048 mosaic is already far above the 512 × 512 crops the models train on."""
MAX_IMAGES = 100_000
"""Most images (train + val) in one mosaic: a thousand times the default, beyond any use of a synthetic set."""
MAX_TOTAL_PIXELS = 2_000_000_000
"""Most pixels over all images (about 6 GB of PNG at most): 100,000 images of 141 px, or 476 of 2048 px."""

_GENERATOR_ID = "bridgeseg.data.mosaic"
_FORMAT_VERSION = 1
# Working-resolution pixels kept free at the border of a split's area, so that bilinear sampling never reads outside.
_SAMPLING_MARGIN = 2.0


class MosaicSource(NamedTuple):
    """Where the photo of one mosaic class comes from.

    Attributes:
        loader: Returns the photo as shipped (grey, RGB or RGBA); no network access.
        licence: The licence or copyright status, as stated by the shipping package.
        source: Where the photo comes from and who made it.
    """

    loader: Callable[[], np.ndarray]
    licence: str
    source: str


def _skimage_photo(function_name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, function_name)()

    load.__name__ = f"skimage.data.{function_name}"
    return load


def _sklearn_photo(file_name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(file_name)

    load.__name__ = f"sklearn.datasets.load_sample_image({file_name!r})"
    return load


# Class index order is the order of this dict. Only photos bundled in the scikit-image wheel (no pooch download) and
# stated by scikit-image to be CC0, public domain or free of known copyright restrictions.
MOSAIC_SOURCES: dict[str, MosaicSource] = {
    "brick wall": MosaicSource(
        _skimage_photo("brick"),
        "CC0-1.0",
        "skimage.data.brick: CC0Textures 'Bricks25' (cc0textures.com), perspective-corrected and cropped",
    ),
    "grass": MosaicSource(
        _skimage_photo("grass"),
        "CC0-1.0",
        "skimage.data.grass: 'Grass 01' by linolafett on DeviantArt, cropped and converted to grey",
    ),
    "gravel": MosaicSource(
        _skimage_photo("gravel"),
        "CC0-1.0",
        "skimage.data.gravel: CC0Textures 'Gravel04' (cc0textures.com), rescaled, cropped, grey",
    ),
    "coffee cup": MosaicSource(
        _skimage_photo("coffee"),
        "CC0-1.0",
        "skimage.data.coffee: photo by Rachel Michetti, courtesy of Pikolo Espresso Bar",
    ),
    "cat": MosaicSource(
        _skimage_photo("chelsea"),
        "CC0-1.0",
        "skimage.data.chelsea: 'Chelsea the cat', photo by Stefan van der Walt",
    ),
    "astronaut": MosaicSource(
        _skimage_photo("astronaut"),
        "Public domain",
        "skimage.data.astronaut: NASA portrait of astronaut Eileen Collins (NASA Great Images, flic.kr/p/r9qvLn)",
    ),
    "rocket": MosaicSource(
        _skimage_photo("rocket"),
        "Public domain",
        "skimage.data.rocket: SpaceX launch photo of DSCOVR on Falcon 9, released into the public domain by SpaceX "
        "in March 2015 (its Flickr page showed CC BY-NC 2.0 in 2020; see scikit-image issue #5095)",
    ),
    "handwritten text": MosaicSource(
        _skimage_photo("text"),
        "Public domain",
        "skimage.data.text: Wikipedia 'File:Corner.png', handwritten formulas on paper",
    ),
    "galaxies": MosaicSource(
        _skimage_photo("hubble_deep_field"),
        "Public domain",
        "skimage.data.hubble_deep_field: NASA Hubble eXtreme Deep Field (HubbleSite release 2012-37)",
    ),
    "photographer": MosaicSource(
        _skimage_photo("camera"),
        "CC0-1.0",
        "skimage.data.camera: a photographer with a camera on a tripod, photo by Lav Varshney",
    ),
    "retina": MosaicSource(
        _skimage_photo("retina"),
        "CC0-1.0",
        "skimage.data.retina: Wikimedia 'Fundus photograph of normal left eye', by Mikael Häggström",
    ),
    "coins": MosaicSource(
        _skimage_photo("coins"),
        "No known copyright restrictions",
        "skimage.data.coins: Greek coins from Pompeii, Brooklyn Museum Collection (no explicit dedication)",
    ),
    "stained tissue": MosaicSource(
        _skimage_photo("immunohistochemistry"),
        "No known copyright restrictions",
        "skimage.data.immunohistochemistry: IHC-stained colonic glands, Center for Microscopy And Molecular "
        "Imaging (CMMI) (no explicit dedication)",
    ),
}

# Opt-in (``include_cc_by=True``): these two need attribution, so they are not CC0 / public domain.
ATTRIBUTION_SOURCES: dict[str, MosaicSource] = {
    "palace": MosaicSource(
        _sklearn_photo("china.jpg"),
        "CC-BY-2.0",
        "sklearn.datasets china.jpg: Summer Palace, Beijing; 'Some rights reserved by danielbuechele', "
        "flickr.com/photos/danielbuechele/6061409035",
    ),
    "flower": MosaicSource(
        _sklearn_photo("flower.jpg"),
        "CC-BY-2.0",
        "sklearn.datasets flower.jpg: Flickr photo flickr.com/photos/vultilion/6056698931 (scikit-learn's README "
        "credits 'danielbuechele' but links the account 'vultilion')",
    ),
}

# Part of a photo that regions may be cut from, as fractions (top, left, bottom, right); the rest is mostly black.
_USABLE_AREA: dict[str, tuple[float, float, float, float]] = {
    "retina": (0.16, 0.16, 0.84, 0.84),
}
# Multiplier of ``photo_scale`` for photos whose content is coarse for their size: the text photo holds three lines
# of handwriting in 172 px, which the common scale would blow up to one stroke per region.
_RELATIVE_SCALE: dict[str, float] = {
    "handwritten text": 0.5,
}


@dataclasses.dataclass(frozen=True)
class MosaicDifficulty:
    """Difficulty knobs of the mosaic generator; every field is a keyword of :func:`generate_mosaic`.

    Attributes:
        num_regions: Inclusive range of the number of Voronoi regions per image.
        scale_range: Range of the zoom of a region (output pixels per working-resolution pixel of the photo), sampled
            log-uniformly; above 1 magnifies. Regions too large for a split's area are zoomed in further, equally for
            train and val.
        max_rotation: Largest rotation of a region's view of its photo, in degrees, either way.
        flip: Mirror a region's view with probability 0.5.
        colour_jitter: Strength of the per-region photometric jitter (brightness, contrast, saturation and
            per-channel gain, which also tints grey photos); 0 turns it off.
        boundary_jitter: Amplitude of the smooth random displacement of the region boundaries, as a fraction of the
            image size; 0 gives straight Voronoi edges.
        noise: Standard deviation of the Gaussian pixel noise, as a fraction of the 0-255 range.
        num_classes: Use only the first ``num_classes`` classes; ``None`` uses all.
        photo_scale: Length of the short side of a photo's usable area after resampling, in image sizes; larger
            shows smaller parts of each photo per region.
        val_fraction: Share of each photo's usable area (along its long side) reserved for val regions.
    """

    num_regions: tuple[int, int] = (4, 8)
    scale_range: tuple[float, float] = (0.75, 1.5)
    max_rotation: float = 60.0
    flip: bool = True
    colour_jitter: float = 0.5
    boundary_jitter: float = 0.06
    noise: float = 0.03
    num_classes: int | None = None
    photo_scale: float = 2.5
    val_fraction: float = 0.3

    def __post_init__(self) -> None:
        low, high = self.num_regions
        if not 1 <= low <= high:
            raise ValueError(f"num_regions must be (low, high) with 1 <= low <= high, got {self.num_regions}")
        low_scale, high_scale = self.scale_range
        if not 0 < low_scale <= high_scale:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {self.scale_range}")
        if not 0 <= self.max_rotation <= 180:
            raise ValueError(f"max_rotation is in degrees and must lie in [0, 180], got {self.max_rotation}")
        for name in ("colour_jitter", "boundary_jitter", "noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.num_classes is not None and self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2 (or None for all), got {self.num_classes}")
        if self.photo_scale <= 0:
            raise ValueError(f"photo_scale must be > 0, got {self.photo_scale}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {self.val_fraction}")


def mosaic_classes(include_cc_by: bool = False) -> list[str]:
    """Class names of the mosaic dataset, in index order (the order of ``classes.txt``).

    Args:
        include_cc_by: Append the CC BY 2.0 photos of :data:`ATTRIBUTION_SOURCES`.

    Returns:
        The class names, which double as text prompts.
    """
    names = list(MOSAIC_SOURCES)
    if include_cc_by:
        names += list(ATTRIBUTION_SOURCES)
    return names


def _source(name: str) -> MosaicSource:
    if name in MOSAIC_SOURCES:
        return MOSAIC_SOURCES[name]
    if name in ATTRIBUTION_SOURCES:
        return ATTRIBUTION_SOURCES[name]
    valid = ", ".join(repr(n) for n in mosaic_classes(include_cc_by=True))
    raise KeyError(f"unknown mosaic source {name!r}; valid names: {valid}")


@functools.cache
def _load_rgb(name: str) -> np.ndarray:
    photo = np.asarray(_source(name).loader())
    if photo.dtype == bool:
        photo = photo.astype(np.uint8) * 255
    if photo.dtype != np.uint8:
        raise TypeError(f"source photo {name!r} has dtype {photo.dtype}; expected uint8")
    if photo.ndim == 2:
        photo = np.repeat(photo[:, :, None], 3, axis=2)
    photo = np.ascontiguousarray(photo[:, :, :3])
    photo.setflags(write=False)
    return photo


def load_source_photo(name: str) -> np.ndarray:
    """Load the whole photo behind a mosaic class, e.g. to overlay predictions on it.

    Args:
        name: A class name from :func:`mosaic_classes` (CC BY names included).

    Returns:
        The photo as a writable ``uint8`` array of shape ``[H, W, 3]``; grey photos are repeated over the channels.

    Raises:
        KeyError: If ``name`` is not a mosaic class.
    """
    return _load_rgb(name).copy()


def split_areas(name: str, val_fraction: float = 0.3) -> dict[str, tuple[int, int, int, int]]:
    """Disjoint train and val areas of a source photo.

    The usable area of the photo is cut across its long side: the first ``1 - val_fraction`` goes to train, the
    rest (right or bottom) to val.

    Args:
        name: A class name from :func:`mosaic_classes`.
        val_fraction: Share of the usable area that goes to val.

    Returns:
        ``{"train": box, "val": box}`` with boxes ``(x0, y0, x1, y1)`` in pixels of the photo, half-open
        (``x0 <= x < x1``).
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    height, width = _load_rgb(name).shape[:2]
    top, left, bottom, right = _USABLE_AREA.get(name, (0.0, 0.0, 1.0, 1.0))
    x0, x1 = round(left * width), round(right * width)
    y0, y1 = round(top * height), round(bottom * height)
    if x1 - x0 >= y1 - y0:
        cut = x1 - max(1, round((x1 - x0) * val_fraction))
        return {"train": (x0, y0, cut, y1), "val": (cut, y0, x1, y1)}
    cut = y1 - max(1, round((y1 - y0) * val_fraction))
    return {"train": (x0, y0, x1, cut), "val": (x0, cut, x1, y1)}


@dataclasses.dataclass
class _SplitPart:
    """One split's area of one photo, resampled to working resolution."""

    image: Image.Image  # RGB, working resolution
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) in photo pixels

    def to_photo(self, points: np.ndarray) -> np.ndarray:
        """Map ``[N, 2]`` (x, y) working-resolution points to photo pixels."""
        x0, y0, x1, y1 = self.box
        scale = np.array([(x1 - x0) / self.image.width, (y1 - y0) / self.image.height])
        return points * scale + np.array([x0, y0])


def _prepare_parts(
    classes: Sequence[str], size: int, photo_scale: float, val_fraction: float
) -> tuple[dict[str, dict[str, _SplitPart]], dict[str, tuple[float, float]]]:
    """Cut every photo into its split areas and resample each on its own, so no val pixel leaks into train."""
    parts: dict[str, dict[str, _SplitPart]] = {}
    limits: dict[str, tuple[float, float]] = {}
    for name in classes:
        photo = _load_rgb(name)
        areas = split_areas(name, val_fraction)
        short_side = min(
            max(areas["train"][2], areas["val"][2]) - min(areas["train"][0], areas["val"][0]),
            max(areas["train"][3], areas["val"][3]) - min(areas["train"][1], areas["val"][1]),
        )
        factor = photo_scale * _RELATIVE_SCALE.get(name, 1.0) * size / short_side
        parts[name] = {}
        for split, (x0, y0, x1, y1) in areas.items():
            working_size = (max(1, round((x1 - x0) * factor)), max(1, round((y1 - y0) * factor)))
            image = Image.fromarray(photo[y0:y1, x0:x1]).resize(working_size, Image.Resampling.LANCZOS)
            parts[name][split] = _SplitPart(image=image, box=(x0, y0, x1, y1))
        # The same footprint limit for both splits keeps their zoom distributions identical.
        limit_w = min(p.image.width for p in parts[name].values()) - 2 * _SAMPLING_MARGIN
        limit_h = min(p.image.height for p in parts[name].values()) - 2 * _SAMPLING_MARGIN
        if min(limit_w, limit_h) < 4:
            raise ValueError(
                f"the {val_fraction:.0%} val area of {name!r} is only {limit_w + 2 * _SAMPLING_MARGIN:.0f} px wide at "
                f"size={size}, photo_scale={photo_scale}; raise size, photo_scale or val_fraction"
            )
        limits[name] = (limit_w, limit_h)
    return parts, limits


def _smooth_field(rng: np.random.Generator, size: int, amplitude: float) -> np.ndarray:
    """Smooth random displacement field ``[size, size]`` of roughly ``amplitude`` pixels."""
    coarse = rng.standard_normal((5, 5)).astype(np.float32)
    field = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(field, dtype=np.float32) * amplitude


def _region_map(rng: np.random.Generator, size: int, num_regions: int, boundary_jitter: float) -> np.ndarray:
    """Voronoi partition with jittered boundaries: ``[size, size]`` region ids in ``0..num_regions-1``."""
    seeds = rng.uniform(0, size, (num_regions, 2)).astype(np.float32)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    if boundary_jitter > 0:
        xs = xs + _smooth_field(rng, size, boundary_jitter * size)
        ys = ys + _smooth_field(rng, size, boundary_jitter * size)
    distances = (xs[None] - seeds[:, 0, None, None]) ** 2 + (ys[None] - seeds[:, 1, None, None]) ** 2  # [R, S, S]
    return distances.argmin(axis=0)


class _ClassDeck:
    """Draws classes from reshuffled decks, so every class shows up about equally often in a split."""

    def __init__(self, num_classes: int, rng: np.random.Generator) -> None:
        self._num_classes = num_classes
        self._rng = rng
        self._deck: list[int] = []

    def draw(self, count: int) -> list[int]:
        drawn: list[int] = []
        for _ in range(count):
            if not self._deck:
                self._deck = self._rng.permutation(self._num_classes).tolist()
            # Prefer a class not yet in this image; fall back to repeats when there are more regions than classes.
            pick = next((i for i, c in enumerate(self._deck) if c not in drawn), 0)
            drawn.append(self._deck.pop(pick))
        return drawn


def _jitter_colours(patch: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Photometric jitter of an ``[H, W, 3]`` float patch in [0, 1]."""
    if strength <= 0:
        return patch
    grey = patch.mean(axis=2, keepdims=True)
    saturation = max(0.0, rng.uniform(1 - 0.8 * strength, 1 + 0.5 * strength))
    patch = grey + (patch - grey) * saturation
    mean = patch.mean()
    contrast = math.exp(rng.uniform(-0.5 * strength, 0.5 * strength))
    patch = (patch - mean) * contrast + mean
    gains = 1 + rng.uniform(-0.3 * strength, 0.3 * strength, 3).astype(np.float32)
    patch = patch * gains + rng.uniform(-0.2 * strength, 0.2 * strength)
    return np.clip(patch, 0, 1)


def _render(
    rng: np.random.Generator,
    region_classes: Callable[[int], list[int]],
    classes: Sequence[str],
    parts: dict[str, dict[str, _SplitPart]],
    limits: dict[str, tuple[float, float]],
    split: str,
    size: int,
    difficulty: MosaicDifficulty,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Render one mosaic: ``[S, S, 3]`` uint8 image, ``[S, S]`` uint8 mask and the provenance of its regions."""
    num_regions = int(rng.integers(difficulty.num_regions[0], difficulty.num_regions[1] + 1))
    regions = _region_map(rng, size, num_regions, difficulty.boundary_jitter)
    class_of_region = np.asarray(region_classes(num_regions), dtype=np.uint8)
    canvas = np.zeros((size, size, 3), dtype=np.float32)
    provenance: list[dict[str, Any]] = []
    log_zoom = np.log(difficulty.scale_range)
    for region in range(num_regions):
        ys, xs = np.nonzero(regions == region)
        if ys.size == 0:
            continue
        top, left = int(ys.min()), int(xs.min())
        height, width = int(ys.max()) - top + 1, int(xs.max()) - left + 1
        name = classes[class_of_region[region]]
        part = parts[name][split]
        limit_w, limit_h = limits[name]

        angle = math.radians(rng.uniform(-difficulty.max_rotation, difficulty.max_rotation))
        mirror = -1.0 if difficulty.flip and rng.random() < 0.5 else 1.0
        cos, sin = abs(math.cos(angle)), abs(math.sin(angle))
        # Zoom in further where the rotated footprint would not fit inside the split's area.
        zoom = max(
            math.exp(rng.uniform(*log_zoom)),
            (cos * width + sin * height) / limit_w,
            (sin * width + cos * height) / limit_h,
        )
        # Output offset p from the bbox centre reads the photo at centre + R(angle) @ diag(mirror, 1) @ p / zoom.
        a, b = math.cos(angle) * mirror / zoom, -math.sin(angle) / zoom
        d, e = math.sin(angle) * mirror / zoom, math.cos(angle) / zoom
        half_w = (abs(a) * width + abs(b) * height) / 2
        half_h = (abs(d) * width + abs(e) * height) / 2
        margin = _SAMPLING_MARGIN
        centre_x = rng.uniform(half_w + margin, max(half_w + margin, part.image.width - half_w - margin))
        centre_y = rng.uniform(half_h + margin, max(half_h + margin, part.image.height - half_h - margin))
        coefficients = (
            a,
            b,
            centre_x - a * width / 2 - b * height / 2,
            d,
            e,
            centre_y - d * width / 2 - e * height / 2,
        )
        view = part.image.transform(
            (width, height), Image.Transform.AFFINE, coefficients, resample=Image.Resampling.BILINEAR
        )
        patch = _jitter_colours(np.asarray(view, dtype=np.float32) / 255.0, rng, difficulty.colour_jitter)
        inside = regions[top : top + height, left : left + width] == region
        canvas[top : top + height, left : left + width][inside] = patch[inside]

        half = np.array([[-width, -height], [width, -height], [width, height], [-width, height]]) / 2
        corners = np.array([centre_x, centre_y]) + half @ np.array([[a, d], [b, e]])
        provenance.append(
            {
                "class": name,
                "class_index": int(class_of_region[region]),
                "split": split,
                "footprint": np.round(part.to_photo(corners), 3).tolist(),
                "rotation": round(math.degrees(angle), 3),
                "mirror": mirror < 0,
                "zoom": round(zoom, 4),
                "pixels": int(ys.size),
            }
        )
    if difficulty.noise > 0:
        canvas += rng.normal(0.0, difficulty.noise, canvas.shape).astype(np.float32)
    image = np.clip(np.rint(canvas * 255), 0, 255).astype(np.uint8)
    mask = class_of_region[regions]
    return image, mask, provenance


def _palette() -> list[int]:
    colours = np.random.default_rng(20240611).integers(40, 256, (256, 3), dtype=np.uint8)
    colours[0] = (0, 0, 0)
    colours[255] = (255, 255, 255)
    return colours.reshape(-1).tolist()


def _prepare_out_dir(out_dir: Path, overwrite: bool, generator_id: str = _GENERATOR_ID) -> None:
    """Create ``out_dir``, or empty it when it holds an earlier output of the same generator and may be replaced."""
    if out_dir.exists() and any(out_dir.iterdir()):
        ours = False
        meta_path = out_dir / "meta.json"
        if meta_path.is_file():
            try:
                ours = json.loads(meta_path.read_text()).get("generator") == generator_id
            except (json.JSONDecodeError, AttributeError):
                ours = False
        if not ours:
            raise FileExistsError(
                f"{out_dir} is not empty and was not written by {generator_id}; choose an empty or new folder"
            )
        if not overwrite:
            raise FileExistsError(
                f"{out_dir} already holds output of {generator_id}; pass overwrite=True to replace it"
            )
        for name in ("images", "masks"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
        for name in ("classes.txt", "README.md", "meta.json", "provenance.jsonl"):
            (out_dir / name).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def _readme(meta: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {i} | {name} | {info['licence']} | {info['source']} |"
        for i, (name, info) in enumerate(meta["sources"].items())
    )
    params = "\n".join(f"- `{key}`: {value}" for key, value in meta["difficulty"].items())
    return f"""# Mosaic stand-in dataset (generated)

Generated by `{_GENERATOR_ID}` with seed {meta["seed"]}: {meta["num_train"]} train and {meta["num_val"]} val images
of {meta["size"]}x{meta["size"]} px. Each image is a mosaic of irregular regions cut from the photos below; the mask
(`masks/`, index PNG) gives each pixel the index of its region's photo in `classes.txt`.

This is an offline **stand-in**, not a benchmark of real-world segmentation. Train and val regions come from
disjoint areas of each photo (`meta.json` -> `split_areas`, boxes `x0, y0, x1, y1` in photo pixels);
`provenance.jsonl` records the footprint of every region.

## Classes and licences

| index | class | licence | source |
|---|---|---|---|
{rows}

## Parameters

{params}
"""


def _settings(size: int, include_cc_by: bool, difficulty: dict[str, Any]) -> tuple[MosaicDifficulty, list[str]]:
    """The difficulty knobs and the class list of a mosaic, checked."""
    valid = {field.name for field in dataclasses.fields(MosaicDifficulty)}
    unknown = sorted(set(difficulty) - valid)
    if unknown:
        raise TypeError(f"unknown difficulty keyword(s) {unknown}; valid ones: {sorted(valid)}")
    for key in ("num_regions", "scale_range"):
        if key in difficulty:
            difficulty[key] = tuple(difficulty[key])
    knobs = MosaicDifficulty(**difficulty)
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be between {MIN_SIZE} and {MAX_SIZE} px, got {size}; choose a size in that range")
    classes = mosaic_classes(include_cc_by)
    if knobs.num_classes is not None:
        if knobs.num_classes > len(classes):
            raise ValueError(
                f"num_classes={knobs.num_classes} but only {len(classes)} classes are available"
                + ("" if include_cc_by else f" ({len(mosaic_classes(True))} with include_cc_by=True)")
            )
        classes = classes[: knobs.num_classes]
    return knobs, classes


def _render_split(
    split_id: int, count: int, seed: int, num_classes: int, render: Callable[..., Any]
) -> Iterator[tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]]:
    """The first `count` mosaics of a split, in order: (image, mask, provenance of the regions).

    `render(rng, draw)` is `_render` with everything but the image's random stream and the class deck bound.
    """
    deck = _ClassDeck(num_classes, np.random.default_rng([seed, split_id, 0xDEC]))
    for index in range(count):
        # One stream per image: an image does not depend on how many come before it, only its classes do.
        yield render(np.random.default_rng([seed, split_id, index]), deck.draw)


def render_val_mosaics(
    count: int, size: int = 192, seed: int = 0, include_cc_by: bool = False, **difficulty: Any
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first `count` val mosaics exactly as `generate_mosaic` writes them, rendered in memory.

    They are held out from training (the val split reads other areas of the photos), so a model trained on the
    mosaic with the same arguments has never seen them.

    Returns:
        (image [S, S, 3] uint8, mask [S, S] uint8) pairs.
    """
    knobs, classes = _settings(size, include_cc_by, difficulty)
    parts, limits = _prepare_parts(classes, size, knobs.photo_scale, knobs.val_fraction)
    render = functools.partial(
        _render, classes=classes, parts=parts, limits=limits, split="val", size=size, difficulty=knobs
    )
    rendered = _render_split(1, count, seed, len(classes), render)
    return [(image, mask) for image, mask, _ in rendered]


def generate_mosaic(
    out_dir: str | Path,
    num_train: int = 400,
    num_val: int = 100,
    size: int = 192,
    seed: int = 0,
    *,
    include_cc_by: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    **difficulty: Any,
) -> Path:
    """Generate the mosaic dataset in the generic folder layout.

    Writes ``images/{train,val}/<stem>.png`` (RGB), ``masks/{train,val}/<stem>.png`` (palette PNG of class
    indices), ``classes.txt``, ``README.md``, ``meta.json`` and ``provenance.jsonl``. The same arguments give
    byte-identical files.

    Args:
        out_dir: Output folder; created if missing, and must be empty unless it holds an earlier mosaic and
            ``overwrite`` is set.
        num_train: Number of train images.
        num_val: Number of val images.
        size: Side of the square images, in pixels.
        seed: Seed of every random choice.
        include_cc_by: Also use the two CC BY 2.0 photos of scikit-learn (classes "palace" and "flower"); their
            attribution is then carried in ``README.md`` and ``meta.json``.
        overwrite: Replace an earlier generated mosaic in ``out_dir``.
        progress: Show a tqdm progress bar.
        **difficulty: Fields of :class:`MosaicDifficulty` (``num_regions``, ``scale_range``, ``max_rotation``,
            ``flip``, ``colour_jitter``, ``boundary_jitter``, ``noise``, ``num_classes``, ``photo_scale``,
            ``val_fraction``).

    Returns:
        The output folder.

    Raises:
        TypeError: If a keyword is not a difficulty field.
        ValueError: If a count, the size or a difficulty value is out of range.
        FileExistsError: If ``out_dir`` is not empty and may not be replaced.
    """
    if num_train < 0 or num_val < 0 or num_train + num_val == 0:
        raise ValueError(f"need num_train >= 0, num_val >= 0 and at least one image; got {num_train}, {num_val}")
    knobs, classes = _settings(size, include_cc_by, difficulty)
    if num_train + num_val > MAX_IMAGES:
        raise ValueError(
            f"{num_train} + {num_val} images, over the {MAX_IMAGES} a mosaic holds; ask for fewer train or val images"
        )
    if (num_train + num_val) * size * size > MAX_TOTAL_PIXELS:
        raise ValueError(
            f"{num_train + num_val} images of {size}×{size} px are {(num_train + num_val) * size * size / 1e9:.1f} G "
            f"pixels, over the {MAX_TOTAL_PIXELS / 1e9:.0f} G a mosaic holds; ask for fewer or smaller images"
        )

    start = time.perf_counter()
    parts, limits = _prepare_parts(classes, size, knobs.photo_scale, knobs.val_fraction)
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, overwrite)
    logger.info(
        "generating %d train + %d val mosaics of %d px, %d classes, in %s",
        num_train,
        num_val,
        size,
        len(classes),
        out_dir,
    )
    palette = _palette()
    counts = {"train": num_train, "val": num_val}
    bar = tqdm(total=num_train + num_val, desc="mosaic", unit="img", disable=not progress)
    with (out_dir / "provenance.jsonl").open("w") as provenance_file:
        for split_id, (split, count) in enumerate(counts.items()):
            (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
            (out_dir / "masks" / split).mkdir(parents=True, exist_ok=True)
            render = functools.partial(
                _render, classes=classes, parts=parts, limits=limits, split=split, size=size, difficulty=knobs
            )
            rendered = _render_split(split_id, count, seed, len(classes), render)
            for index, (image, mask, regions) in enumerate(rendered):
                stem = f"{split}_{index:05d}"
                Image.fromarray(image).save(out_dir / "images" / split / f"{stem}.png")
                mask_image = Image.fromarray(mask)  # "L"; attaching the palette makes it "P" with the same indices
                mask_image.putpalette(palette)
                mask_image.save(out_dir / "masks" / split / f"{stem}.png")
                record = {"image": f"images/{split}/{stem}.png", "regions": regions}
                provenance_file.write(json.dumps(record, sort_keys=True) + "\n")
                bar.update()
    bar.close()

    sources = {name: _source(name) for name in classes}
    meta = {
        "generator": _GENERATOR_ID,
        "format_version": _FORMAT_VERSION,
        "description": "Generated offline stand-in segmentation dataset (photo mosaics); not a real-world benchmark.",
        "seed": seed,
        "size": size,
        "num_train": num_train,
        "num_val": num_val,
        "include_cc_by": include_cc_by,
        "classes": classes,
        "difficulty": {
            key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(knobs).items()
        },
        "sources": {name: {"licence": s.licence, "source": s.source} for name, s in sources.items()},
        "split_areas": {name: split_areas(name, knobs.val_fraction) for name in classes},
    }
    (out_dir / "classes.txt").write_text("\n".join(classes) + "\n")
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    (out_dir / "README.md").write_text(_readme(meta))
    logger.info("wrote %d images to %s in %.1f s", num_train + num_val, out_dir, time.perf_counter() - start)
    return out_dir
