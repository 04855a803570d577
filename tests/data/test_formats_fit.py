"""Every annotation format trains through the one dataset path: `bridgeseg fit` with a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridgeseg.cli import main
from tests.data.conftest import WRITERS
from tests.engine.helpers import fit_args, load_checkpoint

_DEFAULT = {"coco", "yolo"}  # the rest behind the slow marker; every format is read in tests/data/test_formats.py


@pytest.mark.parametrize(
    "writer", [w if w in _DEFAULT else pytest.param(w, marks=pytest.mark.slow) for w in sorted(WRITERS)]
)
def test_each_format_trains_two_steps(writer: str, exports: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    extra = {
        "--data.dataset": "annotations",
        "--data.dataset_options": '{"val_fraction": 0.5, "seed": 0}',
        "--model.net.backbone": "test_efficientnet",
        "--trainer.val_check_interval": "1",
        "--trainer.limit_val_batches": "1",
    }
    assert main(["fit", *fit_args(exports[writer], run, max_steps=2, **extra)]) == 0
    checkpoint = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 2
    assert checkpoint["hyper_parameters"]["classes"] == ["background", "brick", "grass", "sky"]
