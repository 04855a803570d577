"""The offline demo end to end on a tiny mosaic, and the shipped mosaic configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridgeseg.configs import CONFIG_DIR
from bridgeseg.demo import DEMO_CONFIG, ensure_mosaic, run_demo
from bridgeseg.engine.lightning import run_lightning_cli

MOSAIC_CONFIGS = sorted((CONFIG_DIR / "mosaic").glob("*.yaml"))


def test_quick_demo_writes_metrics_checkpoint_and_overlays(tmp_path: Path) -> None:
    out, data = tmp_path / "demo", tmp_path / "mosaic"
    metrics = run_demo(out, quick=True, data_dir=data, num_train=6, num_val=2, size=64)

    written = json.loads((out / "metrics.json").read_text())
    assert written == metrics
    assert 0.0 <= written["mIoU"] <= 100.0
    assert written["iterations"] == 3
    assert len(written["per_class_IoU"]) == 13
    assert written["data"]["num_train"] == 6 and written["data"]["generated_now"]
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "config.json").is_file()
    overlays = sorted(p.name for p in (out / "overlays").glob("*.png"))
    assert len([name for name in overlays if name.startswith("val_")]) == 2
    assert "open_vocab_cat.png" in overlays and "photo_cat.png" in overlays
    assert written["overlays"]["photos"]["open_vocab_cat"]["classes"] == ["cat", "dog", "wall", "floor"]


def test_mosaic_is_reused_only_with_the_same_parameters(tmp_path: Path) -> None:
    data = tmp_path / "mosaic"
    assert ensure_mosaic(data, num_train=2, num_val=1, size=32, seed=0)
    assert not ensure_mosaic(data, num_train=2, num_val=1, size=32, seed=0)
    assert ensure_mosaic(data, num_train=3, num_val=1, size=32, seed=0)


@pytest.mark.parametrize("config", MOSAIC_CONFIGS, ids=[path.stem for path in MOSAIC_CONFIGS])
def test_shipped_mosaic_configs_parse_and_build(config: Path, tmp_path: Path) -> None:
    data = tmp_path / "mosaic"
    ensure_mosaic(data, num_train=2, num_val=1, size=32, seed=0)
    # Tiny backbone: building is what is tested, not the (offline, but slower to load) pretrained weights.
    cli = run_lightning_cli(
        [
            "--config",
            str(config),
            "--data.root",
            str(data),
            "--model.net.backbone",
            "test_resnet",
            "--model.net.pretrained",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path / "run"),
        ],
        run=False,
    )
    assert cli.model.classes == cli.datamodule.classes
    assert cli.model.model.config.method in ("bridge", "denseclip", "lseg", "fpn")
    assert cli.trainer.max_steps > 0


def test_demo_config_is_shipped() -> None:
    # Package data, so a wheel install runs the same recipe; a checkout reaches it through configs/mosaic too.
    assert DEMO_CONFIG.is_file()
    assert DEMO_CONFIG in MOSAIC_CONFIGS
    checkout_path = Path(__file__).resolve().parents[1] / "configs" / "mosaic" / DEMO_CONFIG.name
    assert checkout_path.resolve() == DEMO_CONFIG.resolve()
