"""Segmentation datasets in the mmseg folder layouts, plus a generic folder dataset: one file per layout.

- `base`: `SegmentationDataset`, the shared base, and `CheckReport`;
- `registry`: `register_dataset`, `create_dataset`, `list_datasets`;
- `ade20k`, `cityscapes`, `voc`, `pascal_context`, `coco_stuff`: the benchmark layouts;
- `folder`: your own images and masks with a ``classes.txt`` (`FolderDataset`, `read_class_file`).

A new layout is a new file: a `SegmentationDataset` subclass decorated with `@register_dataset("name")`,
imported here.

Every dataset returns the same sample dict, reads lazily and validates at the boundary (see `base`); every
problem raises a :class:`DatasetError` whose message names the file and says what to do.

Example:
    >>> dataset = create_dataset("ade20k", root="data/ade", split="train")  # doctest: +SKIP
    >>> sample = dataset[0]  # doctest: +SKIP
    >>> sample["image"].shape, sample["mask"].dtype  # doctest: +SKIP
    (torch.Size([3, 512, 683]), torch.int64)
"""

from bridgeseg.data.datasets.ade20k import ADE20KDataset
from bridgeseg.data.datasets.base import CheckReport, SegmentationDataset
from bridgeseg.data.datasets.cityscapes import CityscapesDataset
from bridgeseg.data.datasets.coco_stuff import COCOStuff164kDataset
from bridgeseg.data.datasets.folder import FolderDataset, read_class_file
from bridgeseg.data.datasets.pascal_context import PascalContext59Dataset
from bridgeseg.data.datasets.registry import create_dataset, list_datasets, register_dataset
from bridgeseg.data.datasets.voc import VOCDataset
from bridgeseg.errors import DatasetError, DatasetNotFoundError
from bridgeseg.images import IMAGE_EXTENSIONS, load_image, load_mask
from bridgeseg.vocabulary import IGNORE_INDEX

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_EXTENSIONS",
    "ADE20KDataset",
    "COCOStuff164kDataset",
    "CheckReport",
    "CityscapesDataset",
    "DatasetError",
    "DatasetNotFoundError",
    "FolderDataset",
    "PascalContext59Dataset",
    "SegmentationDataset",
    "VOCDataset",
    "create_dataset",
    "list_datasets",
    "load_image",
    "load_mask",
    "read_class_file",
    "register_dataset",
]
