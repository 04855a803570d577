"""The offline demo end to end on a tiny mosaic, and the shipped mosaic configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridgeseg.cli import main
from bridgeseg.configs import CONFIG_DIR
from bridgeseg.demo import DEMO_CONFIG, DEMO_OUT, QUICK_DEMO_OUT, ensure_mosaic, run_demo
from bridgeseg.engine.lightning import run_lightning_cli
from bridgeseg.errors import OutputExistsError

MOSAIC_CONFIGS = sorted((CONFIG_DIR / "mosaic").glob("*.yaml"))


def test_quick_demo_writes_metrics_checkpoint_and_overlays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out, data = tmp_path / QUICK_DEMO_OUT, tmp_path / "mosaic"
    metrics = run_demo(quick=True, data_dir=data, num_train=6, num_val=2, size=64)  # its own default folder

    written = json.loads((out / "metrics.json").read_text())
    assert written == metrics
    assert 0.0 <= written["mIoU"] <= 100.0
    assert written["iterations"] == 3
    assert len(written["per_class_IoU"]) == 13
    assert written["data"]["num_train"] == 6 and written["data"]["generated_now"]
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "config.json").is_file()
    overlays = sorted(p.name for p in (out / "overlays").glob("*.png"))
    assert [name for name in overlays if name.startswith("val_")] == ["val_00000.png", "val_00001.png"]
    assert "open_vocab_cat.png" in overlays and "photo_cat.png" in overlays
    assert written["overlays"]["photos"]["open_vocab_cat"]["classes"] == ["cat", "dog", "wall", "floor"]
    assert not (tmp_path / DEMO_OUT).exists()

    # A second run is refused before any work, unless --overwrite.
    with pytest.raises(OutputExistsError, match=r"demo-quick already holds 4 of the output files \(metrics\.json, "):
        run_demo(quick=True, data_dir=tmp_path / "unused")
    assert not (tmp_path / "unused").exists()


def test_quick_demo_never_replaces_a_full_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    full = tmp_path / "demo"
    (full / "model").mkdir(parents=True)
    (full / "metrics.json").write_text(json.dumps({"quick": False, "iterations": 600}))
    before = (full / "metrics.json").read_bytes()
    argv = ["demo", "--quick", "--out", str(full), "--data", str(tmp_path / "mosaic")]
    assert main([*argv, "--overwrite"]) == 2
    assert capsys.readouterr().err == (
        f"error: {full} holds a full demo (600 iterations); a --quick run never replaces it, even with "
        f"--overwrite: choose another --out (the default for --quick is {QUICK_DEMO_OUT})\n"
    )
    assert main(["demo", "--out", str(full), "--data", str(tmp_path / "mosaic")]) == 2
    assert capsys.readouterr().err == (
        f"error: {full} already holds 2 of the output files (metrics.json, model); pass --overwrite to replace "
        "them, or choose another --out folder\n"
    )
    a_file = tmp_path / "notes"
    a_file.write_text("mine")
    assert main(["demo", "--quick", "--out", str(a_file), "--data", str(tmp_path / "mosaic")]) == 2
    assert "--out must be a folder" in capsys.readouterr().err
    assert (full / "metrics.json").read_bytes() == before and a_file.read_text() == "mine"
    assert not (tmp_path / "mosaic").exists()


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
