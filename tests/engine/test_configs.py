"""Every shipped config parses, builds (with a tiny backbone and the offline text encoder) and trains a step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from bridgeseg.configs import CONFIG_DIR, list_configs
from bridgeseg.engine.lightning import run_lightning_cli
from tests.engine.helpers import make_folder_dataset

CONFIGS = [CONFIG_DIR / name for name in list_configs()]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("data"), num_train=4, num_val=1)


def test_configs_are_shipped() -> None:
    names = {path.relative_to(path.parents[1]).as_posix() for path in CONFIGS}
    for method in ("bridge", "denseclip", "lseg", "fpn"):
        for backbone in ("efficientnet_lite0", "mobilenetv2_100", "resnet18"):
            assert f"ade20k/{method}_{backbone}_512x512_80k.yaml" in names
    assert "ade20k/bridge_efficientnet_lite0_512x512_160k.yaml" in names
    assert any(name.startswith("cityscapes/") for name in names)
    assert any(name.startswith("coco_stuff164k/") for name in names)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.relative_to(p.parents[1]).as_posix())
def test_config_builds_and_trains_one_step(config: Path, data_root: Path, tmp_path: Path) -> None:
    values = yaml.safe_load(config.read_text())
    overrides = [
        "--data.dataset", "folder", "--data.root", str(data_root), "--data.num_workers", "0",
        "--data.batch_size", "2",
        "--model.net.backbone", "test_resnet", "--model.net.pretrained", "false",
        "--model.net.text_encoder", "minilm",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.default_root_dir", str(tmp_path),
    ]  # fmt: skip
    cli = run_lightning_cli(["--config", str(config), *overrides], run=False)
    module, datamodule = cli.model, cli.datamodule
    net = module.model.config
    assert net.method == values["model"]["net"]["method"]
    assert module.hparams.lr == values["model"]["lr"]
    assert (
        datamodule.crop_size == values["data"]["crop_size"] or list(datamodule.crop_size) == values["data"]["crop_size"]
    )
    assert cli.trainer.max_steps == values["trainer"]["max_steps"]
    batch = next(iter(datamodule.train_dataloader()))
    crop = values["data"]["crop_size"]
    assert batch["image"].shape[-2:] == ((crop, crop) if isinstance(crop, int) else tuple(crop))
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    loss = module.model.loss(batch)["loss"]
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)


def test_shipped_configs_are_found_by_name(tmp_path: Path) -> None:
    from bridgeseg.configs import resolve_config

    shipped = CONFIG_DIR / "mosaic" / "bridge_efficientnet_lite0_128x128_600.yaml"
    assert resolve_config("mosaic/bridge_efficientnet_lite0_128x128_600.yaml") == shipped
    # The path of a source checkout and a name without ".yaml" name the same config.
    assert resolve_config("configs/mosaic/bridge_efficientnet_lite0_128x128_600") == shipped
    own = tmp_path / "mosaic" / "bridge_efficientnet_lite0_128x128_600.yaml"
    own.parent.mkdir()
    own.write_text("seed_everything: 1\n")
    assert resolve_config(own) == own  # a file of your own wins
    with pytest.raises(FileNotFoundError, match=r"no shipped config of that name; shipped configs: ade20k/"):
        resolve_config("mosaic/unknown.yaml")
    # Names stay inside the shipped folder (this one would lead back to the same file through "..").
    with pytest.raises(FileNotFoundError, match="no shipped config"):
        resolve_config("../configs/mosaic/bridge_efficientnet_lite0_128x128_600.yaml")
