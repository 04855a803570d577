"""End-to-end through the real entry point: fit, validate from the checkpoint, resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bridgeseg.cli import main
from bridgeseg.engine.module import poly_warmup_factor
from tests.engine.helpers import fit_args, load_checkpoint, make_folder_dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("data"))


def test_fit_validate_and_resume(data_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["fit", *fit_args(data_root, run, max_steps=4)]) == 0
    checkpoints = run / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file() and (checkpoints / "best.ckpt").is_file()
    first = load_checkpoint(checkpoints / "last.ckpt")  # weights_only=True: nothing unpickled
    assert first["global_step"] == 4
    assert first["hyper_parameters"]["classes"] == ["sky", "grass", "road"]

    assert (
        main(["validate", *fit_args(data_root, run, max_steps=4), "--ckpt_path", str(checkpoints / "best.ckpt")]) == 0
    )

    # Resume to 8 iterations; compare with an uninterrupted 8-iteration run.
    counting = "--trainer.callbacks+=tests.engine.helpers.CountSteps"
    assert main(["fit", *fit_args(data_root, run, max_steps=8), "--ckpt_path", "last", counting]) == 0
    assert (run / "steps.txt").read_text().split() == ["4"], "the resumed run must start at iteration 4"
    resumed = load_checkpoint(checkpoints / "last.ckpt")
    straight_run = tmp_path / "straight"
    assert main(["fit", *fit_args(data_root, straight_run, max_steps=8)]) == 0
    straight = load_checkpoint(straight_run / "checkpoints" / "last.ckpt")

    assert resumed["global_step"] == straight["global_step"] == 8
    resumed_lrs = [group["lr"] for group in resumed["optimizer_states"][0]["param_groups"]]
    straight_lrs = [group["lr"] for group in straight["optimizer_states"][0]["param_groups"]]
    assert resumed_lrs == pytest.approx(straight_lrs, rel=1e-9)
    assert resumed["lr_schedulers"][0]["last_epoch"] == straight["lr_schedulers"][0]["last_epoch"] == 8
    # The config is saved with the run.
    assert any(run.rglob("config.yaml"))


def test_schedule_is_linear_warmup_then_poly() -> None:
    assert poly_warmup_factor(0, 100, 10, 1e-6, 0.9) == pytest.approx(1e-6)
    assert poly_warmup_factor(5, 100, 10, 1e-6, 1.0) == pytest.approx(0.5 * 0.95, rel=1e-4)
    assert poly_warmup_factor(10, 100, 10, 1e-6, 1.0) == pytest.approx(0.9)
    assert poly_warmup_factor(100, 100, 10, 1e-6, 0.9) == 0.0


def test_unknown_config_key_is_one_line_error(data_root: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *fit_args(data_root, tmp_path / "run", max_steps=1), "--model.net.fusion_layers", "3"])
    assert exit_info.value.code != 0
    assert "fusion_layers" in capsys.readouterr().err


def test_two_process_ddp_on_cpu_ends_with_identical_weights(data_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    args = fit_args(data_root, run, max_steps=3, **{"--trainer.devices": "2", "--trainer.strategy": "ddp"})
    args += ["--trainer.callbacks+=tests.engine.helpers.DumpWeights"]
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "bridgeseg.cli", "fit", *args]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = load_file(str(run / "weights_rank0.safetensors"))
    rank1 = load_file(str(run / "weights_rank1.safetensors"))
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert len(rank0) > 50


def test_fit_output_has_an_iteration_bar_each_lightning_line_once_and_no_noise(data_root: Path, tmp_path: Path) -> None:
    """What a user sees from `bridgeseg fit`: a bar over the iterations, Lightning's lines once each (not again
    through the root logger), no "💡 Tip" advertisement, and none of the warnings that every run would raise (the
    frozen text encoder in eval mode, the TensorBoard notice, Lightning's pytree deprecation, the `weights_only`
    notice on saving)."""
    code = "import sys; from bridgeseg.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = ["fit", *fit_args(data_root, tmp_path / "run", max_steps=1), "--trainer.enable_progress_bar", "true"]
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert output.count("Seed set to 0") == 1, output
    # One training bar over the iterations (Lightning's per-epoch bar would read "Epoch 0/-2").
    assert "iteration: 100%" in output and "1/1 [" in output and "Epoch 0" not in output, output
    noise = ("💡", "litlogger", "module(s) in eval mode", "tensorboardX", "LeafSpec", "`weights_only` was not set")
    for text in noise:
        assert text not in output, text


def test_resume_refuses_other_classes_or_another_method_and_points_to_init_from(
    data_root: Path, tmp_path: Path, capsys
) -> None:
    import shutil

    from tests.engine.helpers import run_cli

    run = tmp_path / "run"
    assert main(["fit", *fit_args(data_root, run, max_steps=2)]) == 0
    last = run / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    other = Path(shutil.copytree(data_root, tmp_path / "other"))
    (other / "classes.txt").write_text("water\nsand\nrock\n")
    start = f"error: --ckpt_path {last}: a resume must use the same classes and method as the checkpoint ("
    advice = (
        f"to start from its weights on a new vocabulary, fine-tune instead with `--model.init_from {last}` (and no "
        "--ckpt_path), or drop --ckpt_path to train from scratch"
    )

    code, error = run_cli(capsys, "fit", *fit_args(other, run, max_steps=4), "--ckpt_path", str(last))
    assert code == 2 and error.startswith(start) and error.endswith(advice), error
    assert "3 classes in the checkpoint (sky, grass, road), 3 in this run (water, sand, rock)" in error

    # --ckpt_path last is read after the callbacks are set up: the same check.
    method = ("--model.net.method", "fpn")
    code, error = run_cli(capsys, "fit", *fit_args(data_root, run, max_steps=4), *method, "--ckpt_path", "last")
    assert code == 2 and "method 'bridge' in the checkpoint, 'fpn' in this run" in error, error
    code, error = run_cli(capsys, "fit", *fit_args(data_root, run, max_steps=4), *method, "--ckpt_path", str(last))
    assert code == 2 and "method 'bridge' in the checkpoint, 'fpn' in this run" in error, error
    assert last.read_bytes() == before

    # The advice works: the training checkpoint starts a run on the other classes.
    code, error = run_cli(
        capsys, "fit", *fit_args(other, tmp_path / "tuned", max_steps=1), "--model.init_from", str(last)
    )
    assert code == 0, error
    assert load_checkpoint(tmp_path / "tuned" / "checkpoints" / "last.ckpt")["hyper_parameters"]["init_from"] == str(
        last
    )
