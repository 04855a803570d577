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
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from bridgeseg.engine.datamodule import SegmentationDataModule
from bridgeseg.engine.module import SegmentationModule
from bridgeseg.io import write_atomically


def checkpoint_dir(trainer: pl.Trainer) -> str:
    """`<default_root_dir>/checkpoints`: one folder per run, stable across restarts.

    Lightning's default puts checkpoints under the logger's version folder, which changes on every start, so
    `--ckpt_path last` could not find the previous run's checkpoint.
    """
    return os.path.join(trainer.default_root_dir, "checkpoints")


class BestCheckpoint(ModelCheckpoint):
    """`checkpoints/best.ckpt`: the checkpoint with the best validation mIoU."""

    def __init__(self) -> None:
        super().__init__(
            monitor="val/mIoU", mode="max", filename="best", auto_insert_metric_name=False, enable_version_counter=False
        )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = checkpoint_dir(trainer)
        super().setup(trainer, pl_module, stage)


class LastCheckpoint(pl.Callback):
    """`checkpoints/last.ckpt` every `every_n_steps` iterations, after each validation and at the end.

    Lightning's `save_last` only writes when another checkpoint is written (here: when mIoU improves), which
    would leave a killed run to resume from far back.

    Args:
        every_n_steps: Iterations between saves.
    """

    def __init__(self, every_n_steps: int = 500) -> None:
        self.every_n_steps = every_n_steps
        self._saved_step = -1

    def _save(self, trainer: pl.Trainer) -> None:
        if trainer.global_step == self._saved_step or trainer.sanity_checking:
            return
        trainer.save_checkpoint(os.path.join(checkpoint_dir(trainer), "last.ckpt"))
        self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._save(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes checkpoints to a temporary file, fsyncs it and renames it over the target.

    A run killed during the write leaves the previous checkpoint intact.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str, storage_options: Any = None) -> None:
        write_atomically(path, lambda handle: torch.save(checkpoint, handle))


def trainer_defaults() -> dict[str, Any]:
    """Iteration-based training with validation every N iterations, as mmseg does."""
    return {
        "default_root_dir": "runs/default",
        "max_steps": 80_000,
        "val_check_interval": 8_000,
        "check_val_every_n_epoch": None,
        "log_every_n_steps": 50,
        # Converts BatchNorm to SyncBatchNorm only under a distributed strategy on GPUs; a no-op elsewhere.
        "sync_batchnorm": True,
        "callbacks": [BestCheckpoint(), LastCheckpoint(), LearningRateMonitor(logging_interval="step")],
    }


class BridgesegCLI(LightningCLI):
    """LightningCLI that takes the class names from the dataset."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.classes", "model.classes", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        # Added here rather than in trainer_defaults: a plugin object there cannot be saved in config.yaml.
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        plugins = list(config["trainer"].get("plugins") or [])
        if not any(isinstance(plugin, TorchCheckpointIO) for plugin in plugins):
            plugins.append(AtomicCheckpointIO())
        if config["trainer"].get("sync_batchnorm") and (
            config["trainer"].get("accelerator") == "cpu" or not torch.cuda.is_available()
        ):
            # torch's SyncBatchNorm only runs on GPUs; on CPU every process keeps its own statistics.
            kwargs["sync_batchnorm"] = False
        return super().instantiate_trainer(plugins=plugins, **kwargs)


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
