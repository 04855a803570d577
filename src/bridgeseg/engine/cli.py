"""`bridgeseg fit | validate | test`: LightningCLI with YAML configs and dotted overrides.

Example:
    bridgeseg fit --config configs/ade20k/bridge_efficientnet_lite0_512x512_80k.yaml --data.root data/ade
    bridgeseg fit --config CONFIG --ckpt_path last          # resume the run in trainer.default_root_dir
    bridgeseg validate --config CONFIG --ckpt_path runs/x/checkpoints/best.ckpt
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from bridgeseg.engine.datamodule import SegmentationDataModule
from bridgeseg.engine.module import SegmentationModule


class RunCheckpoint(ModelCheckpoint):
    """Best-and-last checkpoints in `<default_root_dir>/checkpoints`, one folder per run.

    Lightning's default puts them under the logger's version folder, which changes on every start, so
    `--ckpt_path last` could not find the previous run's checkpoint.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
        super().setup(trainer, pl_module, stage)


def trainer_defaults() -> dict[str, Any]:
    """Iteration-based training with validation every N iterations, as mmseg does."""
    return {
        "default_root_dir": "runs/default",
        "max_steps": 80_000,
        "val_check_interval": 8_000,
        "check_val_every_n_epoch": None,
        "log_every_n_steps": 50,
        # Converts BatchNorm to SyncBatchNorm only under a distributed strategy; a no-op on one device.
        "sync_batchnorm": True,
        "callbacks": [
            RunCheckpoint(
                monitor="val/mIoU",
                mode="max",
                save_last=True,
                filename="best",
                auto_insert_metric_name=False,
                enable_version_counter=False,
            ),
            LearningRateMonitor(logging_interval="step"),
        ],
    }


class BridgesegCLI(LightningCLI):
    """LightningCLI that takes the class names from the dataset."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.classes", "model.classes", apply_on="instantiate")


def run_lightning_cli(argv: Sequence[str], run: bool = True) -> BridgesegCLI:
    """Run `fit`, `validate` or `test` with the given command-line arguments."""
    return BridgesegCLI(
        SegmentationModule,
        SegmentationDataModule,
        args=list(argv),
        run=run,
        trainer_defaults=trainer_defaults(),
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
    )
