"""`fit --model.init_from`: fine-tuning a saved model onto the run's classes, through the real entry point."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from bridgeseg.checkpoints import save_checkpoint
from bridgeseg.cli import main
from bridgeseg.engine.lightning import run_lightning_cli
from bridgeseg.models import create_model
from tests.engine.helpers import CLASSES, fit_args, load_checkpoint, make_folder_dataset, run_cli

# 13 classes; "Sky" and " grass" are the dataset's sky and grass (case and spacing aside), its road is new.
SAVED_CLASSES = ["Sky", "tree", " grass", "water", "sand", "rock", "snow", "cat", "dog", "car", "wall", "door", "bush"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("data"))


def saved_model(folder: Path, method: str = "bridge", backbone: str = "test_resnet") -> Path:
    """A 13-class tiny model folder, with the model options of `fit_args`."""
    embeddings = torch.nn.functional.normalize(torch.randn(len(SAVED_CLASSES), 384), dim=-1)
    options = dict(backbone=backbone, fusion_dim=32, decoder_channels=16, classes=SAVED_CLASSES)
    model = create_model(method, class_embeddings=embeddings if method != "fpn" else None, **options)
    return save_checkpoint(model, folder)


def test_init_from_a_13_class_model_trains_on_3_classes_and_reports(
    data_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = saved_model(tmp_path / "model")
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="bridgeseg.engine.module"):
        assert main(["fit", *fit_args(data_root, run, max_steps=2), "--model.init_from", str(source)]) == 0
    report = next(record.getMessage() for record in caplog.records if "Initialised from" in record.getMessage())
    assert report.startswith(f"Initialised from {source}:")
    assert "\n  loaded  " in report and "\n  new         0 tensors" in report and "\n  dropped     0" in report
    assert "classes: 2 shared with the checkpoint (1 up to case or spacing), 1 new: road, 11 dropped: tree" in report
    assert "class embeddings: built from the run's 3 class names" in report
    last = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 2 and last["hyper_parameters"]["classes"] == CLASSES
    assert last["hyper_parameters"]["init_from"] == str(source)

    # A resume restores every weight from its checkpoint: the source is not read again (here it is gone).
    shutil.rmtree(source)
    with caplog.at_level(logging.INFO, logger="bridgeseg.engine.lightning"):
        resume = ["--model.init_from", str(source), "--ckpt_path", "last"]
        assert main(["fit", *fit_args(data_root, run, max_steps=3), *resume]) == 0
    assert "Resuming: --model.init_from is not applied" in caplog.text
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 3


def test_fpn_copies_the_rows_of_matching_classes_and_initialises_the_others_as_a_fresh_run(
    data_root: Path, tmp_path: Path
) -> None:
    source = saved_model(tmp_path / "model", method="fpn")
    args = fit_args(data_root, tmp_path / "run", max_steps=2, **{"--model.net.method": "fpn"})
    fresh = run_lightning_cli(args, run=False).model
    task = run_lightning_cli([*args, "--model.init_from", str(source / "model.safetensors")], run=False).model
    task.setup("fit")
    saved = load_checkpoint_weights(source)
    weight, fresh_weight = task.model.head.classifier.weight, fresh.model.head.classifier.weight  # [3, C, 1, 1]
    assert torch.equal(weight[0], saved["head.classifier.weight"][0])  # sky <- Sky
    assert torch.equal(weight[1], saved["head.classifier.weight"][2])  # grass <- " grass"
    assert torch.equal(weight[2], fresh_weight[2]) and not torch.equal(weight[2], saved["head.classifier.weight"][2])
    assert torch.equal(task.model.head.classifier.bias[2], fresh.model.head.classifier.bias[2])
    assert torch.equal(task.model.decoder.fuse[0].weight, saved["decoder.fuse.0.weight"])
    assert task.init_report.new_classes == ["road"]


def load_checkpoint_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_a_missing_path_or_another_backbone_is_one_line_and_exit_2(data_root: Path, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nowhere"
    code, error = run_cli(capsys, "fit", *fit_args(data_root, tmp_path / "a", 2), "--model.init_from", str(missing))
    assert (
        code == 2
        and error == f"error: {missing}: no such checkpoint; give a model folder, a .safetensors or a .ckpt file"
    )

    other = saved_model(tmp_path / "other", backbone="test_efficientnet")
    code, error = run_cli(capsys, "fit", *fit_args(data_root, tmp_path / "b", 2), "--model.init_from", str(other))
    assert code == 2 and error.startswith(
        f"error: --model.init_from {other}: holds a 'test_efficientnet' backbone, this run trains 'test_resnet'"
    ), error
    assert not (tmp_path / "b" / "checkpoints" / "last.ckpt").exists()
