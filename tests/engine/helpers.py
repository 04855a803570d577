"""Test helpers for the engine: a tiny generated folder dataset, callbacks, and running the CLI in-process."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from bridgeseg.cli import main

CLASSES = ["sky", "grass", "road"]


def make_folder_dataset(root: Path, num_train: int = 8, num_val: int = 3, size: int = 64, seed: int = 0) -> Path:
    """Images of three coloured horizontal bands with noise; masks label each band."""
    rng = np.random.default_rng(seed)
    colours = np.array([[90, 150, 230], [60, 170, 60], [110, 110, 110]], dtype=np.float32)
    for split, count in (("train", num_train), ("val", num_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            cuts = sorted(rng.integers(size // 6, size - size // 6, size=2))
            mask = np.zeros((size, size), dtype=np.uint8)
            mask[cuts[0] : cuts[1]] = 1
            mask[cuts[1] :] = 2
            image = colours[mask] + rng.normal(0, 20, (size, size, 3))
            Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / "images" / split / f"{index:03d}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{index:03d}.png")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


class DumpWeights(pl.Callback):
    """Writes each process's final parameters to `<default_root_dir>/weights_rank<N>.safetensors`.

    Parameters only: on CPU there is no SyncBatchNorm, so BatchNorm running statistics legitimately differ
    between processes after the last step (DDP broadcasts rank 0's buffers at the start of each forward).
    """

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in pl_module.named_parameters()}
        path = Path(trainer.default_root_dir) / f"weights_rank{trainer.global_rank}.safetensors"
        save_file(state, str(path))


class CountSteps(pl.Callback):
    """Appends the number of training steps this process ran to `<default_root_dir>/steps.txt`."""

    def __init__(self) -> None:
        self.steps = 0

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        self.steps += 1

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with open(Path(trainer.default_root_dir) / "steps.txt", "a") as file:
            file.write(f"{self.steps}\n")


def fit_args(data_root: Path, run_dir: Path, max_steps: int, **extra: str) -> list[str]:
    """CLI arguments of a tiny run on CPU."""
    args = {
        "--data.dataset": "folder",
        "--data.root": str(data_root),
        "--data.crop_size": "64",
        "--data.batch_size": "2",
        "--data.num_workers": "0",
        "--model.net.backbone": "test_resnet",
        "--model.net.fusion_dim": "32",
        "--model.net.decoder_channels": "16",
        "--model.warmup_iters": "2",
        "--model.lr": "1e-3",
        "--trainer.max_steps": str(max_steps),
        "--trainer.val_check_interval": "4",
        "--trainer.default_root_dir": str(run_dir),
        "--trainer.accelerator": "cpu",
        "--trainer.devices": "1",
        "--trainer.enable_progress_bar": "false",
    } | extra
    return [item for pair in args.items() for item in pair]


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run `bridgeseg ARGV` in-process; return the exit code and the single `error:` line it must print."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == (1 if code else 0), err[-2000:]
    return code, errors[0] if errors else ""
