"""The Lightning data module: datasets, augmentation and loaders from a few config keys."""

from __future__ import annotations

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from bridgeseg.data.datasets import SegmentationDataset, create_dataset
from bridgeseg.data.transforms import build_eval_transforms, build_train_transforms


class SegmentationDataModule(pl.LightningDataModule):
    """Training, validation and test data for one dataset.

    Args:
        dataset: "ade20k", "cityscapes", "voc", "pascal_context59", "coco_stuff164k" or "folder".
        root: The dataset's root folder (see docs/datasets.md for each layout).
        train_split: Split used for training.
        val_split: Split used for validation.
        test_split: Split used by `bridgeseg test` (default: the validation split).
        crop_size: Training crop side, or (height, width).
        base_size: mmseg's resize scale (long side, short side) before the random ratio, e.g. (2048, 512) for
            ADE20K; None scales each image's own size.
        scale_range: Random resize ratios.
        cat_max_ratio: Crops are redrawn (up to 10 times) while one class covers more than this share.
        eval_short_side: Resize validation images to this short side (masks stay at full size); None keeps them.
        eval_max_long_side: Upper bound of the long side of resized validation images (ADE20K: 2048).
        batch_size: Training images per process (the global batch is this × processes × accumulation).
        num_workers: Loader processes per training process.
        dataset_options: Extra options for the dataset (e.g. {"aug": true} for VOC with SBD).
    """

    def __init__(
        self,
        dataset: str = "folder",
        root: str = "data/mosaic",
        train_split: str = "train",
        val_split: str = "val",
        test_split: str | None = None,
        crop_size: int | tuple[int, int] = 512,
        base_size: tuple[int, int] | None = None,
        scale_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        eval_short_side: int | None = None,
        eval_max_long_side: int | None = None,
        batch_size: int = 4,
        num_workers: int = 2,
        dataset_options: dict | None = None,
    ) -> None:
        super().__init__()
        self.dataset_name = dataset
        self.root = root
        self.splits = {"train": train_split, "val": val_split, "test": test_split or val_split}
        self.crop_size = tuple(crop_size) if isinstance(crop_size, (list, tuple)) else crop_size
        self.base_size = tuple(base_size) if base_size else None
        self.scale_range = tuple(scale_range)
        self.cat_max_ratio = cat_max_ratio
        self.eval_short_side = eval_short_side
        self.eval_max_long_side = eval_max_long_side
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.dataset_options = dict(dataset_options or {})
        self._datasets: dict[str, SegmentationDataset] = {}

    def _dataset(self, stage: str) -> SegmentationDataset:
        if stage not in self._datasets:
            if stage == "train":
                transforms = build_train_transforms(
                    self.crop_size,
                    scale_range=self.scale_range,
                    cat_max_ratio=self.cat_max_ratio,
                    base_size=self.base_size,
                )
            else:
                transforms = build_eval_transforms(self.eval_short_side, self.eval_max_long_side)
            self._datasets[stage] = create_dataset(
                self.dataset_name, self.root, self.splits[stage], transforms=transforms, **self.dataset_options
            )
        return self._datasets[stage]

    @property
    def classes(self) -> list[str]:
        """The prompt names of the dataset's classes, in label order (linked to the model by the CLI)."""
        return list(self._dataset("val").prompt_names)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self._dataset("train"),
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _eval_loader(self, stage: str) -> DataLoader:
        # Batch of one: evaluation images keep their own sizes, as in mmseg.
        return DataLoader(self._dataset(stage), batch_size=1, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
