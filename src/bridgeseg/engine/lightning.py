"""`bridgeseg fit | validate | test`: LightningCLI with YAML configs and dotted overrides.

`--config` takes a file or the name of a shipped config (`bridgeseg.configs`).

Example:
    bridgeseg fit --config ade20k/bridge_efficientnet_lite0_512x512_80k.yaml --data.root data/ade
    bridgeseg fit --config CONFIG --ckpt_path last          # resume the run in trainer.default_root_dir
    bridgeseg validate --config CONFIG --ckpt_path runs/x/checkpoints/best.ckpt
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from bridgeseg.configs import resolve_config
from bridgeseg.engine.datamodule import SegmentationDataModule
from bridgeseg.engine.module import SegmentationTask
from bridgeseg.errors import CheckpointError
from bridgeseg.io import checkpoint_error, write_atomically
from bridgeseg.models.weights import load_torch_file
from bridgeseg.vocabulary import describe_classes

logger = logging.getLogger(__name__)


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
    """`checkpoints/last.ckpt` every `every_n_steps` iterations, at the last iteration (before the final
    validation), after each validation and at the end.

    Lightning's `save_last` only writes when another checkpoint is written (here: when mIoU improves), which
    would leave a killed run to resume from far back. Weights that are no longer finite are never saved over the
    previous checkpoint, and a run stopped by a non-finite loss is told where its last checkpoint is.

    Set from the command line as `--last_checkpoint.every_n_steps N`.

    Args:
        every_n_steps: Iterations between saves (0: only after validation and at the end).
    """

    def __init__(self, every_n_steps: int = 500) -> None:
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._saved_step = -1

    @staticmethod
    def path(trainer: pl.Trainer) -> str:
        """Where the checkpoint is written: `<default_root_dir>/checkpoints/last.ckpt`."""
        return os.path.join(checkpoint_dir(trainer), "last.ckpt")

    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, after_validation: bool = False) -> None:
        if (trainer.global_step == self._saved_step and not after_validation) or trainer.sanity_checking:
            return
        if not all(torch.isfinite(parameter).all() for parameter in pl_module.parameters()):
            logger.warning(
                "Weights are no longer finite at iteration %d; %s is kept as it is",
                trainer.global_step,
                self.path(trainer),
            )
            return
        trainer.save_checkpoint(self.path(trainer), weights_only=False)  # the full state, for resume
        self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        last_step = 0 < trainer.max_steps <= trainer.global_step
        # At the last step too: the final validation runs after this hook, and a problem in the val split must
        # not lose a run shorter than the save interval.
        if (self.every_n_steps and trainer.global_step % self.every_n_steps == 0) or last_step:
            self._save(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":
            # Again at a step just saved: this checkpoint holds the validation's results (the best score so far).
            self._save(trainer, pl_module, after_validation=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer, pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path and os.path.abspath(trainer.ckpt_path) == os.path.abspath(self.path(trainer)):
            self._saved_step = trainer.global_step  # resumed from it: it holds this iteration

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, FloatingPointError):
            exception.add_note(self._describe(trainer))

    def _describe(self, trainer: pl.Trainer) -> str:
        """Where to resume after a non-finite loss at `trainer.global_step`."""
        path = self.path(trainer)
        if not os.path.isfile(path):
            return f"no checkpoint was saved before it (none at {path}): start again with a lower learning rate"
        if self._saved_step < 0:
            return f"the last checkpoint is {path}: resume from it with `--ckpt_path last` and a lower learning rate"
        if self._saved_step < trainer.global_step:
            # Training went on from those weights, so they gave a finite loss.
            return (
                f"the last good checkpoint, from iteration {self._saved_step}, is {path}: resume from it with "
                "`--ckpt_path last` and a lower learning rate"
            )
        return (
            f"the last checkpoint, {path}, holds the weights of iteration {self._saved_step} that gave this loss: "
            "start again with a lower learning rate, or from an earlier checkpoint (e.g. best.ckpt)"
        )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes checkpoints to a temporary file, fsyncs it and renames it over the target; reads them with one-line
    errors.

    A run killed during the write leaves the previous checkpoint intact. A damaged, unsafe or foreign checkpoint
    given to `fit --ckpt_path` (resume) or `validate`/`test --ckpt_path` is refused with the message
    `bridgeseg.load_model` gives for it, before anything runs.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str, storage_options: Any = None) -> None:
        write_atomically(path, lambda handle: torch.save(checkpoint, handle))

    def load_checkpoint(self, path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            checkpoint = super().load_checkpoint(path, *args, **kwargs)
        except Exception as error:  # torch.load raises anything from UnpicklingError to RuntimeError and KeyError
            raise checkpoint_error(path, error) from error
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
            raise CheckpointError(
                f"{path}: not a Lightning training checkpoint (no state_dict); give a .ckpt written by `bridgeseg fit`"
            )
        return checkpoint


class IterationProgressBar(TQDMProgressBar):
    """One training bar over all `max_steps` iterations, as mmseg counts them, instead of one bar per epoch.

    Lightning's own bars restart at every epoch and show "Epoch 11/-2" when training is bounded by iterations;
    this one shows the iteration out of `max_steps` (from the resumed one after `--ckpt_path last`), the loss
    and the last validation scores. Validation and test bars are Lightning's.
    """

    def on_train_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_start(trainer, *args)
        self.train_progress_bar.reset(total=trainer.max_steps)
        self.train_progress_bar.initial = trainer.global_step
        self.train_progress_bar.n = trainer.global_step
        self.train_progress_bar.set_description("iteration")

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        pass  # the bar runs across epochs

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version folder, not a training figure
        return metrics

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        bar = self.train_progress_bar
        if bar is not None and self._should_update(step, bar.total):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # redraws the bar


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
        # LastCheckpoint is added by BridgesegCLI as its own config section (`--last_checkpoint.every_n_steps`).
        "callbacks": [BestCheckpoint(), LearningRateMonitor(logging_interval="step")],
    }


# What a resume must share with the run it continues, besides the class list.
_RESUME_MODEL_KEYS = ("method", "backbone", "text_encoder")


class BridgesegCLI(LightningCLI):
    """LightningCLI that takes the class names from the dataset."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.classes", "model.classes", apply_on="instantiate")
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        if any(action.dest == "weights_only" for action in parser._actions):
            # Resume and evaluation read checkpoints without unpickling code (ours hold plain types only).
            parser.set_defaults(weights_only=True)

    def _resolve_last_checkpoint(self) -> None:
        """Point `--ckpt_path last` at `<default_root_dir>/checkpoints/last.ckpt`.

        Lightning looks for "last" where its own ModelCheckpoint would write, which is under the logger's version
        folder (a new one on every start) until the callbacks are set up, so it would never find the previous run's
        checkpoint and would silently train from scratch.

        Raises:
            FileNotFoundError: `validate` or `test` with `--ckpt_path last` and no checkpoint there.
        """
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") != "last":
            return
        path = LastCheckpoint.path(self.trainer)
        if os.path.isfile(path):
            logger.info("Resuming from %s", path)
            config["ckpt_path"] = path
        elif self.subcommand == "fit":
            # As Lightning does: `--ckpt_path last` may be set before the first start of a run.
            logger.info("No checkpoint at %s yet: starting a new run", path)
            config["ckpt_path"] = None
        else:
            raise FileNotFoundError(
                f"--ckpt_path last: no checkpoint at {path}; check --trainer.default_root_dir or give the path"
            )

    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads `--ckpt_path` once before anything is built, with a bare `torch.load`.

        It also replaces the run's model options with the checkpoint's, so the model this run asked for is kept
        first: `before_fit` compares it with the checkpoint (`_check_resume`).
        """
        subcommand = self.config.get("subcommand")
        if subcommand:
            self._requested_model = {key: self.config[subcommand].get(f"model.net.{key}") for key in _RESUME_MODEL_KEYS}
        try:
            super()._parse_ckpt_path()
        except Exception as error:  # torch.load raises anything from UnpicklingError to RuntimeError and KeyError
            raise checkpoint_error(self.config[self.config.subcommand].get("ckpt_path"), error) from error

    def _check_resume(self) -> None:
        """Refuse to resume (`fit --ckpt_path`) from a checkpoint of other classes or another model.

        A resume restores the whole training state into the model this run builds: other classes end in a size
        mismatch deep in Lightning, and another method or backbone would be silently replaced by the checkpoint's.

        Raises:
            CheckpointError: The checkpoint's classes, method, backbone or text encoder differ from the run's.
        """
        path = self.config_init[self.subcommand].get("ckpt_path")
        if not path:
            return
        try:
            checkpoint = load_torch_file(path)
        except Exception as error:  # torch.load raises anything from UnpicklingError to RuntimeError and KeyError
            raise checkpoint_error(path, error) from error
        saved = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
        net = saved.get("net") if isinstance(saved, dict) else None
        if not isinstance(net, dict):
            return  # not a bridgeseg training checkpoint: AtomicCheckpointIO says so when Lightning reads it
        saved_classes = list(saved.get("classes") or net.get("classes") or [])
        run_classes = list(self.model.classes) if isinstance(self.model, SegmentationTask) else saved_classes
        requested = getattr(self, "_requested_model", {})
        differences = [
            f"{key} '{net.get(key)}' in the checkpoint, '{value}' in this run"
            for key, value in requested.items()
            if value is not None and net.get(key) is not None and value != net.get(key)
        ]
        if saved_classes != run_classes:
            differences.insert(
                0,
                f"{len(saved_classes)} classes in the checkpoint ({describe_classes(saved_classes)}), "
                f"{len(run_classes)} in this run ({describe_classes(run_classes)})",
            )
        if differences:
            raise CheckpointError(
                f"--ckpt_path {path}: a resume must use the same classes and method as the checkpoint "
                f"({'; '.join(differences)}); to start from its weights on a new vocabulary, fine-tune instead "
                f"with `--model.init_from {path}` (and no --ckpt_path), or drop --ckpt_path to train from scratch"
            )

    def before_fit(self) -> None:
        self._resolve_last_checkpoint()
        self._check_resume()
        if self.config_init[self.subcommand].get("ckpt_path") and isinstance(self.model, SegmentationTask):
            if self.model.hparams.get("init_from"):
                logger.info("Resuming: --model.init_from is not applied (the checkpoint restores every weight)")
            self.model.skip_init_from = True
        datamodule = self.datamodule
        if isinstance(datamodule, SegmentationDataModule):
            checked = datamodule.check_val_sample()
            logger.info("Checked the masks of %d validation samples", checked)

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except SystemExit:
            # Lightning answers Ctrl+C with a graceful shutdown and sys.exit(1), the code `predict` gives when some
            # images failed; `bridgeseg.cli.main` reports an interrupt with 130, as a shell does.
            if self.trainer is not None and self.trainer.interrupted:
                raise KeyboardInterrupt from None
            raise

    def before_validate(self) -> None:
        self._resolve_last_checkpoint()

    def before_test(self) -> None:
        self._resolve_last_checkpoint()

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
        trainer = super().instantiate_trainer(plugins=plugins, **kwargs)
        bar = trainer.progress_bar_callback
        if type(bar) in (TQDMProgressBar, RichProgressBar) and trainer.max_steps > 0:
            # Lightning's default bar counts per epoch; training here is bounded by iterations.
            refresh_rate = bar.refresh_rate if isinstance(bar, TQDMProgressBar) else 1
            trainer.callbacks[trainer.callbacks.index(bar)] = IterationProgressBar(refresh_rate=refresh_rate)
        for callback in trainer.checkpoint_callbacks:
            # Set now, not in setup(): Lightning resolves `--ckpt_path last` from the callbacks' folders before
            # any setup hook runs.
            if isinstance(callback, BestCheckpoint) and callback.dirpath is None:
                callback.dirpath = checkpoint_dir(trainer)
        return trainer


class _NoAdvertisement(logging.Filter):
    """Drop Lightning's "💡 Tip" lines, which advertise a hosted service on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip")


_RANK_ZERO_LOGGER = logging.getLogger("lightning.pytorch.utilities.rank_zero")
if not any(isinstance(item, _NoAdvertisement) for item in _RANK_ZERO_LOGGER.filters):
    _RANK_ZERO_LOGGER.addFilter(_NoAdvertisement())


def _resolve_configs(argv: Sequence[str]) -> list[str]:
    """`--config NAME` → the shipped config's path when NAME is not a file (see `bridgeseg.configs`)."""
    resolved = list(argv)
    for index, argument in enumerate(resolved):
        if argument == "--config" and index + 1 < len(resolved):
            resolved[index + 1] = str(resolve_config(resolved[index + 1]))
        elif argument.startswith("--config="):
            resolved[index] = f"--config={resolve_config(argument.split('=', 1)[1])}"
    return resolved


def run_lightning_cli(argv: Sequence[str], run: bool = True) -> BridgesegCLI:
    """Run `fit`, `validate` or `test` with the given command-line arguments.

    Raises:
        FileNotFoundError: A `--config` that is neither a file nor a shipped config.
    """
    argv = _resolve_configs(argv)
    # The generated usage lists every option (several KB); a parse error shows this line and a --help tip instead.
    usage = "%(prog)s [--config CONFIG.yaml] [--SECTION.KEY VALUE ...]"
    parser_kwargs: dict[str, Any] = {"prog": "bridgeseg"}
    parser_kwargs |= {name: {"usage": usage} for name in BridgesegCLI.subcommands()}
    with warnings.catch_warnings():
        # `bridgeseg.cli.main` passes sys.argv on as `args` on purpose; Lightning would warn about it on every run.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        # The frozen text encoder stays in eval mode on purpose (`TextEncoder.train`); Lightning counts its modules.
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
        # Lightning's default logger is CSVLogger without TensorBoard; it says so on every run.
        warnings.filterwarnings("ignore", message="Starting from v1.9.0, `tensorboardX` has been removed")
        # Raised inside Lightning's own pytree helper by newer torch; nothing a user can act on.
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
        return BridgesegCLI(
            SegmentationTask,
            SegmentationDataModule,
            args=list(argv),
            run=run,
            trainer_defaults=trainer_defaults(),
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            parser_kwargs=parser_kwargs,
        )
