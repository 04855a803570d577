"""The web app's examples: held-out mosaic images the demo model never trained on, and one whole photo with an
open-vocabulary class list."""

from __future__ import annotations

import dataclasses
import functools
import io
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from bridgeseg.app.demo import DEMO_DATA, OPEN_VOCABULARY_EXAMPLE
from bridgeseg.app.forms import ClientError

if TYPE_CHECKING:
    pass


@dataclasses.dataclass(frozen=True)
class Example:
    """An example image the page offers.

    Attributes:
        name: Its id in the API.
        label: What it is, shown in the list.
        classes: The class list to try it with (None: the model's own).
    """

    name: str
    label: str
    classes: tuple[str, ...] | None = None


_NUM_MOSAIC_EXAMPLES = 4
_OPEN_PHOTO, _OPEN_CLASSES = OPEN_VOCABULARY_EXAMPLE
EXAMPLES: tuple[Example, ...] = (
    *(
        Example(f"mosaic-val-{index + 1}", f"held-out mosaic {index + 1} (val split, the demo model's domain)")
        for index in range(_NUM_MOSAIC_EXAMPLES)
    ),
    Example(
        f"photo-{_OPEN_PHOTO}",
        f"whole {_OPEN_PHOTO} photo, open vocabulary ({', '.join(_OPEN_CLASSES)}; not trained on whole photos)",
        tuple(_OPEN_CLASSES),
    ),
)
_EXAMPLES_BY_NAME = {example.name: example for example in EXAMPLES}


def check_example(name: str, status_code: int = 400) -> Example:
    if name not in _EXAMPLES_BY_NAME:
        raise ClientError(status_code, f"unknown example {name!r}; valid examples: {', '.join(_EXAMPLES_BY_NAME)}")
    return _EXAMPLES_BY_NAME[name]


@functools.lru_cache(maxsize=1)
def _mosaic_examples() -> list[np.ndarray]:
    """The first val mosaics of the demo's data, rendered in memory once (a few seconds)."""
    from bridgeseg.data.mosaic import render_val_mosaics

    return [
        image for image, _ in render_val_mosaics(_NUM_MOSAIC_EXAMPLES, size=DEMO_DATA["size"], seed=DEMO_DATA["seed"])
    ]


def example_image(name: str, status_code: int = 400) -> np.ndarray:
    from bridgeseg.data.mosaic import load_source_photo

    check_example(name, status_code)
    if name.startswith("mosaic-val-"):
        return _mosaic_examples()[int(name.rsplit("-", 1)[1]) - 1]
    return load_source_photo(_OPEN_PHOTO)


@functools.lru_cache(maxsize=len(EXAMPLES))
def example_png(name: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(example_image(name, status_code=404)).save(buffer, format="PNG")
    return buffer.getvalue()
