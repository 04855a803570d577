"""The Lightning module: optimisation recipe, training step, and mmseg-style evaluation."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import Tensor, nn

from bridgeseg.engine.metrics import SegmentationMetric, format_table
from bridgeseg.models import ModelConfig, SegmentationModel, create_model
from bridgeseg.models.transfer import TransferReport, init_from_checkpoint

logger = logging.getLogger(__name__)

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def poly_warmup_factor(step: int, max_steps: int, warmup_steps: int, warmup_ratio: float, power: float) -> float:
    """mmseg's schedule as a factor of the base lr: linear warmup, then poly decay (min lr applied by caller)."""
    poly = (1.0 - min(step, max_steps) / max(max_steps, 1)) ** power
    if step < warmup_steps:
        # mmseg's LinearLR warmup: start at warmup_ratio and reach 1 at warmup_steps.
        return poly * (warmup_ratio + (1.0 - warmup_ratio) * step / warmup_steps)
    return poly


def parameter_groups(model: SegmentationModel, lr: float, weight_decay: float, backbone_lr_mult: float) -> list[dict]:
    """AdamW groups as DenseCLIP's recipe: backbone lr × mult, no decay on norms and biases, text encoder out.

    Frozen parameters (the text tower) are left out; learnable prompt context, if any, trains at the base lr.
    """
    no_decay: set[int] = set()
    for module in model.modules():
        if isinstance(module, _NORM_TYPES):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        decay = parameter.ndim > 1 and id(parameter) not in no_decay
        groups.setdefault((name.startswith("backbone."), decay), []).append(parameter)
    return [
        {
            "params": params,
            "lr": lr * (backbone_lr_mult if is_backbone else 1.0),
            "weight_decay": weight_decay if decay else 0.0,
            "name": f"{'backbone' if is_backbone else 'head'}{'' if decay else '_no_decay'}",
        }
        for (is_backbone, decay), params in sorted(groups.items())
    ]


class SegmentationTask(pl.LightningModule):
    """Trains and evaluates a segmentor.

    Args:
        net: The model config (method, backbone, text encoder, fusion options...).
        classes: Class names; linked from the data module by the CLI, overriding `net.classes`.
        init_from: Fine-tune: a checkpoint (model folder, `.safetensors` or Lightning `.ckpt`) of the same method
            and backbone whose weights start the run, on the run's classes (`bridgeseg.models.transfer`). Applied
            when `fit` starts, and not when it resumes (`--ckpt_path`), which restores everything anyway.
        lr: Base learning rate (AdamW).
        weight_decay: AdamW weight decay (not applied to norms and biases).
        backbone_lr_mult: Learning-rate multiplier of the backbone.
        warmup_iters: Linear warmup iterations.
        warmup_ratio: Learning-rate factor at the first iteration.
        poly_power: Power of the poly decay.
        min_lr: Floor of the learning rate.
        eval_mode: "whole" or "slide" inference in validation and test.
        eval_crop: Window side for slide inference.
        eval_stride: Window stride for slide inference.
        tta_flip: Flip test-time augmentation.
        tta_scales: Multi-scale test-time augmentation factors, e.g. [0.5, 0.75, 1.0, 1.25, 1.5, 1.75].
    """

    def __init__(
        self,
        net: ModelConfig | None = None,
        classes: list[str] | None = None,
        init_from: str | None = None,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        backbone_lr_mult: float = 0.1,
        warmup_iters: int = 1500,
        warmup_ratio: float = 1e-6,
        poly_power: float = 0.9,
        min_lr: float = 1e-6,
        eval_mode: str = "whole",
        eval_crop: int = 512,
        eval_stride: int = 341,
        tta_flip: bool = False,
        tta_scales: list[float] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(net, dict):
            net = ModelConfig.from_dict(net)
        net = net or ModelConfig()
        if classes:
            net = dataclasses.replace(net, classes=list(classes))
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if eval_mode not in ("whole", "slide"):
            raise ValueError(f"unknown eval_mode {eval_mode!r}; use 'whole' or 'slide'")
        # Plain types only: checkpoints must load with torch.load(weights_only=True).
        self.save_hyperparameters(
            {
                "net": net.to_dict(),
                "classes": list(net.classes),
                "init_from": str(init_from) if init_from else None,
                "lr": lr,
                "weight_decay": weight_decay,
                "backbone_lr_mult": backbone_lr_mult,
                "warmup_iters": warmup_iters,
                "warmup_ratio": warmup_ratio,
                "poly_power": poly_power,
                "min_lr": min_lr,
                "eval_mode": eval_mode,
                "eval_crop": eval_crop,
                "eval_stride": eval_stride,
                "tta_flip": tta_flip,
                "tta_scales": list(tta_scales) if tta_scales else None,
            }
        )
        self.model = create_model(net)
        self.val_metric = SegmentationMetric(self.model.num_classes)
        self.test_metric = SegmentationMetric(self.model.num_classes)
        self._padding_reported = False
        self.init_report: TransferReport | None = None
        # Set by `BridgesegCLI` for a resume (`fit --ckpt_path`): the checkpoint restores every weight.
        self.skip_init_from = False

    @property
    def classes(self) -> list[str]:
        return self.model.classes

    def setup(self, stage: str) -> None:
        """Start the model from `init_from` before training; Lightning restores a resumed checkpoint after this."""
        path = self.hparams.get("init_from")
        if stage != "fit" or not path or self.skip_init_from or self.init_report is not None:
            return
        self.init_report = init_from_checkpoint(self.model, path)
        if rank_zero_only.rank == 0:
            logger.info("%s", self.init_report.describe())

    # -- training -------------------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        self._report_padding(batch["image"])
        losses = self.model.loss(batch)
        if not torch.isfinite(losses["loss"]):
            # LastCheckpoint adds a note saying where the last checkpoint is.
            raise FloatingPointError(
                f"the loss became {losses['loss'].item()} at iteration {self.global_step}; lower the learning "
                "rate (--model.lr) or use bf16 instead of fp16"
            )
        batch_size = batch["image"].shape[0]
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, prog_bar=False, batch_size=batch_size)
        self.log("loss", losses["loss"].detach(), prog_bar=True, logger=False, batch_size=batch_size)
        return losses["loss"]

    def _report_padding(self, images: Tensor) -> None:
        """Say once that crops are padded by the model's rule (`SegmentationModel.pad`, applied in `loss`)."""
        if self._padding_reported:
            return
        self._padding_reported = True
        height, width = images.shape[-2:]
        padded, _ = self.model.pad(images[:1])
        if padded.shape[-2:] != (height, width):
            stride = self.model.output_stride
            logger.info(
                "Training crops of %dx%d are padded to %dx%d (a multiple of the output stride %d); a crop size "
                "that is a multiple of %d saves the extra compute",
                height, width, *padded.shape[-2:], stride, stride,
            )  # fmt: skip

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = parameter_groups(self.model, hp.lr, hp.weight_decay, hp.backbone_lr_mult)
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)
        max_steps = self.trainer.max_steps if self.trainer.max_steps and self.trainer.max_steps > 0 else None
        max_steps = max_steps or int(self.trainer.estimated_stepping_batches)
        base_lrs = [group["lr"] for group in groups]

        def factor(step: int, base_lr: float) -> float:
            scale = poly_warmup_factor(step, max_steps, hp.warmup_iters, hp.warmup_ratio, hp.poly_power)
            # mmseg's PolyLR decays towards eta_min: lr = (base - min) * factor + min.
            floor = min(hp.min_lr, base_lr)
            return ((base_lr - floor) * scale + floor) / base_lr

        lambdas = [lambda step, base=base: factor(step, base) for base in base_lrs]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- evaluation -----------------------------------------------------------------------------------------

    def _segment(self, images: Tensor, output_size: Sequence[int]) -> Tensor:
        hp = self.hparams
        return self.model.predict(
            images,
            mode=hp.eval_mode,
            crop_size=hp.eval_crop,
            stride=hp.eval_stride,
            flip=hp.tta_flip,
            scales=hp.tta_scales,
            output_size=tuple(output_size),
        )

    def _evaluate(self, batch: dict[str, Any], metric: SegmentationMetric) -> None:
        images, masks = batch["image"], batch["mask"]
        for image, mask in zip(images, masks, strict=True):
            labels = self._segment(image.unsqueeze(0), mask.shape[-2:])
            metric.update(labels, mask.unsqueeze(0))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metric)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metric)

    def _report(self, metric: SegmentationMetric, stage: str) -> dict[str, Any]:
        results = metric.compute()
        metric.reset()
        self.log_dict(
            {f"{stage}/{key}": float(results[key]) for key in ("mIoU", "mAcc", "aAcc")},
            prog_bar=True,
            sync_dist=False,  # the metric states are already reduced across processes
        )
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            logger.info("%s at iteration %d:\n%s", stage, self.global_step, format_table(results, self.classes))
        return results

    def on_validation_epoch_end(self) -> None:
        self.last_val_results = self._report(self.val_metric, "val")

    def on_test_epoch_end(self) -> None:
        self.last_test_results = self._report(self.test_metric, "test")
