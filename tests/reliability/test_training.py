"""Bad configs and training faults: one clear line and exit code 2, or a run that recovers without losing anything.

Runs go through the real entry point (`bridgeseg.cli.main`) on a tiny generated folder dataset (64 px images,
`test_resnet`), as tests/engine/test_cli.py does.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from bridgeseg.cli import main
from bridgeseg.engine.lightning import LastCheckpoint
from bridgeseg.engine.module import SegmentationTask
from bridgeseg.models import SegmentationModel
from tests.engine.helpers import fit_args, load_checkpoint, make_folder_dataset, run_cli

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("data"), num_train=8, num_val=2)


# ---------------------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["--model.net.nope", "--data.nope", "--trainer.nope", "--nope"])
def test_unknown_key_exits_2_with_a_short_usage_naming_it(
    key: str, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *fit_args(data_root, tmp_path / "run", max_steps=1), key, "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err
    assert err.splitlines()[0] == "usage: bridgeseg [options] fit [--config CONFIG.yaml] [--SECTION.KEY VALUE ...]"
    assert len(err.splitlines()) <= 12, err  # not the several-KB generated usage
    assert "bridgeseg fit --help" in err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        (
            "--model.net.method",
            "segformer_b0",
            r"unknown method 'segformer_b0'; valid methods: bridge, denseclip, lseg, fpn, lraspp, segformer",
        ),
        ("--model.net.backbone", "resnet_nope", r"Unknown backbone 'resnet_nope'.* Valid names are any timm model"),
        ("--model.net.text_encoder", "bert", r"Unknown text encoder 'bert'; valid forms: 'minilm', 'openclip:"),
        ("--data.dataset", "ade21k", r"Unknown dataset 'ade21k'; valid names: ade20k, .*folder"),
        ("--data.root", "/nonexistent/data", r"folder: root /nonexistent/data does not exist; expected root/images/"),
    ],
    ids=["method", "backbone", "text-encoder", "dataset", "root"],
)
def test_unknown_names_list_the_valid_ones(
    option: str, value: str, message: str, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, error = run_cli(capsys, "fit", *fit_args(data_root, tmp_path / "run", max_steps=1, **{option: value}))
    assert code == 2 and re.search(message, error), error


def test_debug_shows_the_traceback_instead(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bridgeseg.data import DatasetNotFoundError

    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        main(["fit", *fit_args(tmp_path / "nowhere", tmp_path / "run", max_steps=1), "--debug"])


def test_crop_not_divisible_by_the_stride_trains_padded(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # Decision: a crop such as 100 works; training pads it to 128 as inference pads any size, and says so once.
    caplog.set_level(logging.INFO, logger="bridgeseg")
    args = fit_args(data_root, tmp_path / "run", max_steps=2, **{"--data.crop_size": "[100, 70]"})
    code, _ = run_cli(capsys, "fit", *args)
    assert code == 0
    notes = [record.getMessage() for record in caplog.records if "padded" in record.getMessage()]
    assert notes == [
        "Training crops of 100x70 are padded to 128x96 (a multiple of the output stride 32); a crop size that is a "
        "multiple of 32 saves the extra compute"
    ]


def test_padding_adds_no_loss_and_keeps_the_crop() -> None:
    module = SegmentationTask(
        net={"method": "fpn", "backbone": "test_resnet", "decoder_channels": 16}, classes=["a", "b"], warmup_iters=1
    )
    model = module.model
    images, masks = torch.rand(2, 3, 50, 40), torch.randint(0, 2, (2, 50, 40))
    padded_images, padded_masks = model.pad(images, masks)
    assert padded_images.shape == (2, 3, 64, 64) and padded_masks.shape == (2, 64, 64)
    assert torch.equal(padded_images[..., :50, :40], images) and torch.equal(padded_masks[..., :50, :40], masks)
    assert (padded_masks[..., 50:, :] == 255).all() and (padded_masks[..., :, 40:] == 255).all()
    # The padding has the mean colour: exactly zero once normalised, the rule `predict` pads by too.
    assert model.normalize(padded_images)[..., 50:, :].abs().max() == 0
    same_images, same_masks = torch.rand(1, 3, 64, 96), torch.zeros(1, 64, 96, dtype=torch.long)
    assert model.pad(same_images, same_masks) == (same_images, same_masks)
    # `loss` pads by the rule itself: a crop of 50 x 40 gives the loss of its padded version.
    model.eval()  # batch statistics aside, the two calls see the same padded batch
    with torch.no_grad():
        direct = model.loss({"image": images, "mask": masks})["loss"]
        padded = model.loss({"image": padded_images, "mask": padded_masks})["loss"]
    assert torch.equal(direct, padded)


# ---------------------------------------------------------------------------------------------------------------
# Non-finite loss
# ---------------------------------------------------------------------------------------------------------------


def test_nan_loss_stops_with_the_iteration_and_the_last_good_checkpoint(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_loss = SegmentationModel.loss
    calls = {"count": 0}

    def loss_going_nan(self: SegmentationModel, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        losses = real_loss(self, batch)
        calls["count"] += 1
        if calls["count"] == 4:  # the fourth training step: iteration 3
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(SegmentationModel, "loss", loss_going_nan)
    run = tmp_path / "run"
    code, error = run_cli(capsys, "fit", *fit_args(data_root, run, max_steps=8), "--last_checkpoint.every_n_steps", "2")
    assert code == 2
    last = run / "checkpoints" / "last.ckpt"
    assert error == (
        "error: the loss became nan at iteration 3; lower the learning rate (--model.lr) or use bf16 instead of fp16; "
        f"the last good checkpoint, from iteration 2, is {last}: resume from it with `--ckpt_path last` and a lower "
        "learning rate"
    )
    assert load_checkpoint(last)["global_step"] == 2


def test_huge_learning_rate_stops_the_run(data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The realistic way to diverge. Here the weights saved at iteration 1 are the ones that gave the NaN, and the
    # message must not call them good.
    run = tmp_path / "run"
    args = fit_args(data_root, run, max_steps=8, **{"--model.lr": "1e30"})
    code, error = run_cli(capsys, "fit", *args, "--last_checkpoint.every_n_steps", "1")
    assert code == 2
    assert re.fullmatch(
        r"error: the loss became (nan|inf) at iteration (\d+); lower the learning rate \(--model\.lr\) .*; the last "
        rf"checkpoint, {re.escape(str(run / 'checkpoints' / 'last.ckpt'))}, holds the weights of iteration \2 that "
        r"gave this loss: start again with a lower learning rate, or from an earlier checkpoint \(e\.g\. best\.ckpt\)",
        error,
    ), error


def test_non_finite_weights_never_replace_the_last_checkpoint(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    saved: list[str] = []
    trainer = SimpleNamespace(
        global_step=7,
        max_steps=-1,
        sanity_checking=False,
        default_root_dir=str(tmp_path),
        save_checkpoint=lambda path, **_: saved.append(path),
    )
    module = torch.nn.Linear(2, 2)
    callback = LastCheckpoint(every_n_steps=1)
    with torch.no_grad():
        module.weight[0, 0] = float("inf")
    callback.on_train_batch_end(trainer, module)
    assert saved == [] and "no longer finite at iteration 7" in caplog.text
    with torch.no_grad():
        module.weight[0, 0] = 1.0
    callback.on_train_batch_end(trainer, module)
    assert saved == [str(tmp_path / "checkpoints" / "last.ckpt")]
    with pytest.raises(ValueError, match="every_n_steps must be >= 0"):
        LastCheckpoint(every_n_steps=-1)


# ---------------------------------------------------------------------------------------------------------------
# --ckpt_path last
# ---------------------------------------------------------------------------------------------------------------


def test_ckpt_path_last_without_a_checkpoint(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridgeseg")
    run = tmp_path / "run"
    code, error = run_cli(capsys, "validate", *fit_args(data_root, run, max_steps=1), "--ckpt_path", "last")
    assert code == 2
    assert error == (
        f"error: --ckpt_path last: no checkpoint at {run / 'checkpoints' / 'last.ckpt'}; check "
        "--trainer.default_root_dir or give the path"
    )
    # `fit` may be started with `--ckpt_path last` before any checkpoint exists (Lightning's rule): a new run.
    code, _ = run_cli(capsys, "fit", *fit_args(data_root, run, max_steps=1), "--ckpt_path", "last")
    assert code == 0 and "No checkpoint at" in caplog.text and "starting a new run" in caplog.text


# ---------------------------------------------------------------------------------------------------------------
# Killed and resumed
# ---------------------------------------------------------------------------------------------------------------


class PauseAt(pl.Callback):
    """Test helper run inside the child process: at iteration `step`, write `marker` and wait to be killed."""

    def __init__(self, step: int, marker: str) -> None:
        self.step = step
        self.marker = marker

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            Path(self.marker).write_text(str(os.getpid()))
            time.sleep(600)


def weight_difference(first: dict[str, Any], second: dict[str, Any]) -> float:
    """Largest absolute difference between two checkpoints' weights."""
    assert first["state_dict"].keys() == second["state_dict"].keys()
    return max(
        (first["state_dict"][key].double() - second["state_dict"][key].double()).abs().max().item()
        for key in first["state_dict"]
    )


def assert_same_run(resumed: dict[str, Any], reference: dict[str, Any], steps: int) -> None:
    """Same iteration count, schedule position, learning rates and (bit for bit) weights."""
    assert resumed["global_step"] == reference["global_step"] == steps
    assert resumed["lr_schedulers"][0]["last_epoch"] == reference["lr_schedulers"][0]["last_epoch"] == steps
    resumed_lrs = [group["lr"] for group in resumed["optimizer_states"][0]["param_groups"]]
    reference_lrs = [group["lr"] for group in reference["optimizer_states"][0]["param_groups"]]
    assert resumed_lrs == reference_lrs
    assert weight_difference(resumed, reference) == 0.0


class StopAt(pl.Callback):
    """Test helper: stop the run cleanly after iteration `step` (as a scheduler's time limit would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


def test_resume_at_an_epoch_boundary_reproduces_the_uninterrupted_run(data_root: Path, tmp_path: Path) -> None:
    """The in-process half of the kill test below: stop after the first epoch (4 iterations), resume, compare.

    Data order and augmentation are seeded by the run's seed and the iteration each pass starts at
    (SegmentationDataModule), so the resumed run sees exactly the data the uninterrupted one saw.
    """
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert main(["fit", *fit_args(data_root, straight, max_steps=8)]) == 0
    stop = json.dumps({"class_path": f"{__name__}.StopAt", "init_args": {"step": 4}})
    assert main(["fit", *fit_args(data_root, stopped, max_steps=8), f"--trainer.callbacks+={stop}"]) == 0
    last = stopped / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last)["global_step"] == 4
    assert main(["fit", *fit_args(data_root, stopped, max_steps=8), "--ckpt_path", "last"]) == 0
    assert_same_run(load_checkpoint(last), load_checkpoint(straight / "checkpoints" / "last.ckpt"), 8)


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_same_weights(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL right after the checkpoint at an epoch boundary, resume with `--ckpt_path last`, compare.

    8 images, batch 2: an epoch is 4 iterations, and `last.ckpt` is written every 4. The resumed run must end with
    the uninterrupted run's weights to the last bit (measured: 0.0). A mid-epoch kill resumes with the same
    iteration count and learning rate, but Lightning starts a new pass over the data for the rest of that epoch, so
    the weights then differ (measured with a kill at iteration 6 of 12: max abs difference 0.27).
    About 30 s, most of it the child process importing torch and Lightning.
    """
    steps, extra = 8, ["--last_checkpoint.every_n_steps", "4"]
    straight = tmp_path / "straight"
    assert main(["fit", *fit_args(data_root, straight, max_steps=steps), *extra]) == 0

    killed = tmp_path / "killed"
    marker = tmp_path / "paused"
    pause = {"class_path": f"{__name__}.PauseAt", "init_args": {"step": 4, "marker": str(marker)}}
    command = [sys.executable, "-m", "bridgeseg.cli", "fit", *fit_args(data_root, killed, max_steps=steps), *extra]
    command.append(f"--trainer.callbacks+={json.dumps(pause)}")
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert child.poll() is None, child.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the child never reached iteration 4"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stderr.close()
    last = killed / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last)["global_step"] == 4
    assert not list(last.parent.glob(".*.tmp"))

    code, _ = run_cli(capsys, "fit", *fit_args(data_root, killed, max_steps=steps), *extra, "--ckpt_path", "last")
    assert code == 0
    assert_same_run(load_checkpoint(last), load_checkpoint(straight / "checkpoints" / "last.ckpt"), steps)
