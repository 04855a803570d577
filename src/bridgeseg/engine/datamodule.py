"""The Lightning data module: datasets, augmentation and loaders from a few config keys.

The training order and augmentations are reproducible across restarts: each pass over the data is shuffled by a
generator seeded from the run's seed and the iteration at which the pass starts, and each sample is augmented under
its own seed. A run resumed from a checkpoint taken at the end of an epoch therefore sees exactly the data the
uninterrupted run would have seen, whatever the number of loader workers. (Resumed in mid-epoch, Lightning starts a
new pass for the rest of that epoch: reproducible, but a different order from the uninterrupted run.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from bridgeseg.data.datasets import SegmentationDataset, create_dataset
from bridgeseg.data.formats.check import check_dataset
from bridgeseg.data.transforms import build_eval_transforms, build_train_transforms


class SeededShuffle(Sampler[tuple[int, int]]):
    """Shuffles anew on every pass, seeded from the run's seed and the iteration the pass starts at.

    Yields `(index, sample_seed)` pairs for :class:`SeededSamples`. Unlike `RandomSampler`, whose order comes from
    the global random state (which a restarted process does not have), the order depends only on where training
    is, so a resumed run repeats it.

    Args:
        size: Number of samples.
        seed: The run's seed.
        start_step: Returns the current training iteration when a pass starts.
    """

    def __init__(self, size: int, seed: int, start_step: Callable[[], int]) -> None:
        self.size = size
        self.seed = seed
        self.start_step = start_step

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        state = np.random.SeedSequence([self.seed, self.start_step()]).generate_state(2, np.uint32)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        order = torch.randperm(self.size, generator=generator).tolist()
        sample_seeds = torch.randint(0, 2**62, (self.size,), generator=generator).tolist()
        yield from zip(order, sample_seeds, strict=True)


class SeededSamples(Dataset):
    """Reads `dataset[index]` with torch's random state seeded by the key's sample seed, then restores it.

    The augmentations draw from torch's global generator; seeding it per sample makes them independent of which
    worker reads the sample and of what was drawn before.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, sample_seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            return self.dataset[index]


class SegmentationDataModule(pl.LightningDataModule):
    """Training, validation and test data for one dataset.

    Args:
        dataset: "ade20k", "cityscapes", "voc", "pascal_context59", "coco_stuff164k", "folder" or "annotations"
            (an annotation-tool export; see docs/your-data.md).
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
        # The CLI seeds torch (seed_everything) before building this module: the run's seed.
        self.seed = torch.initial_seed()

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

    def check_val_sample(self, count: int = 16) -> int:
        """Check a sample of the validation masks (labels, sizes) before training, so a problem there surfaces now
        rather than at the first validation, after hours of training.

        Returns:
            The number of samples checked.

        Raises:
            DatasetError: A sample's mask is unreadable, of another size than its image, or holds labels out of range.
        """
        report = check_dataset(self._dataset("val"), count)  # the checker `bridgeseg data check` runs
        report.raise_for_problems()
        return report.num_samples

    def _global_step(self) -> int:
        return self.trainer.global_step if self.trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        dataset = self._dataset("train")
        return DataLoader(
            SeededSamples(dataset),
            batch_size=self.batch_size,
            sampler=SeededShuffle(len(dataset), self.seed, self._global_step),
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
