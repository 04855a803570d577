"""Class-name tables of the benchmark datasets and the cleaning that turns them into text-encoder prompts.

Display names (``classes``) are kept exactly as mmseg spells them, so tables and checkpoints match the literature
(ADE20K's ``"bed "`` keeps its trailing space). Prompt names (``prompt_names``) are what the text encoder reads:
trimmed, first synonym of a ``"a;b;c"`` list, COCO-Stuff's ``"-other"`` / ``"-stuff"`` suffixes dropped, joined
words split (``"pottedplant"`` → ``"potted plant"``).

Example:
    >>> clean_class_name("wall-brick")
    'brick wall'
    >>> synonyms("person;individual;someone")
    ['person', 'individual', 'someone']
"""

from __future__ import annotations

import logging
import re
from collections import Counter

logger = logging.getLogger(__name__)

__all__ = [
    "ADE20K_CLASSES",
    "CITYSCAPES_CLASSES",
    "COCO_STUFF164K_CLASSES",
    "PASCAL_CONTEXT59_CLASSES",
    "VOC_CLASSES",
    "clean_class_name",
    "clean_class_names",
    "synonyms",
]

# mmseg ADE20KDataset (150 classes, reduce_zero_label). "bed " has its trailing space in mmseg, kept on purpose.
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed ", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

# mmseg CityscapesDataset (19 train ids).
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip

# mmseg PascalVOCDataset (21 classes, index 0 = background).
VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# mmseg PascalContextDataset59 (59 classes, reduce_zero_label: 0 = background becomes ignore).
PASCAL_CONTEXT59_CLASSES: tuple[str, ...] = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building",
    "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog", "door",
    "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain",
    "mouse", "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign",
    "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window",
    "wood",
)  # fmt: skip

# mmseg COCOStuffDataset, 164k version (171 train ids 0..170).
COCO_STUFF164K_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis",
    "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush", "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet",
    "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter",
    "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other",
    "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit", "furniture-other", "grass",
    "gravel", "ground-other", "hill", "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss",
    "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic", "platform",
    "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf",
    "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw", "structural-other", "table",
    "tent", "textile-other", "towel", "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other",
    "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind",
    "window-other", "wood",
)  # fmt: skip

# Joined words of the benchmark tables that a text encoder would read as one unknown token.
_PROMPT_OVERRIDES: dict[str, str] = {
    "diningtable": "dining table",
    "pottedplant": "potted plant",
    "tvmonitor": "tv monitor",
    "playingfield": "playing field",
    "waterdrops": "water drops",
    "window-blind": "window blind",
    "wall-panel": "wall panel",
    "structural-other": "structure",
    "hair drier": "hair dryer",
}
# COCO-Stuff "<thing>-other" / "<thing>-stuff" mean just "<thing>" to a reader.
_DROPPED_SUFFIXES = ("other", "stuff")
# COCO-Stuff "<surface>-<material>": read as "<material> <surface>" ("wall-brick" → "brick wall").
_MATERIAL_FIRST = ("wall", "floor", "ceiling")


def synonyms(name: str) -> list[str]:
    """Split a ``"a;b;c"`` synonym list (ADE20K's objectInfo150 style) into its cleaned members.

    Args:
        name: A class name, possibly a ``;``-separated list of synonyms.

    Returns:
        The synonyms in their original order, stripped, underscores read as spaces, empty and repeated entries
        dropped. A plain name gives a one-element list.
    """
    seen: list[str] = []
    for part in name.split(";"):
        part = re.sub(r"\s+", " ", part.replace("_", " ")).strip()
        if part and part not in seen:
            seen.append(part)
    return seen


def clean_class_name(name: str) -> str:
    """Turn a dataset's class name into the phrase the text encoder should read.

    Args:
        name: Display name as the dataset spells it.

    Returns:
        The first synonym, trimmed, with the benchmark spellings made readable: ``"bed "`` → ``"bed"``,
        ``"person;individual"`` → ``"person"``, ``"building-other"`` → ``"building"``, ``"wall-brick"`` →
        ``"brick wall"``, ``"pottedplant"`` → ``"potted plant"``, other hyphens and underscores → spaces.
        A name that is empty after cleaning is returned stripped (the caller decides what to do with it).
    """
    members = synonyms(name)
    if not members:
        return name.strip()
    first = members[0]
    if first.lower() in _PROMPT_OVERRIDES:
        return _PROMPT_OVERRIDES[first.lower()]
    head, dash, tail = first.partition("-")
    if dash and "-" not in tail and head and tail:
        if tail.lower() in _DROPPED_SUFFIXES:
            return head.strip()
        if head.lower() in _MATERIAL_FIRST:
            return f"{tail.strip()} {head.strip()}"
    return re.sub(r"\s+", " ", first.replace("-", " ")).strip()


def clean_class_names(names: list[str] | tuple[str, ...]) -> list[str]:
    """Clean a whole class list, keeping the prompts distinct.

    Two classes whose cleaned names collide (``"floor-other"`` and a plain ``"floor"`` in a custom list) would get
    the same text embedding and become indistinguishable, so colliding names fall back to their display name with
    only hyphens and underscores read as spaces.

    Args:
        names: Display names in index order.

    Returns:
        Prompt names, same length and order.
    """
    cleaned = [clean_class_name(name) for name in names]
    counts = Counter(cleaned)
    for index, (name, prompt) in enumerate(zip(names, cleaned, strict=True)):
        if counts[prompt] > 1:
            fallback = re.sub(r"\s+", " ", name.replace("_", " ").replace("-", " ")).strip()
            cleaned[index] = fallback
    remaining = [prompt for prompt, count in Counter(cleaned).items() if count > 1]
    if remaining:
        logger.warning("Class names %s appear more than once: their text embeddings will be identical.", remaining)
    return cleaned
