import pytest
import torch

import bridgeseg
from bridgeseg.models import ModelConfig, create_model, list_methods
from bridgeseg.models.cost import cost_report
from tests.conftest import CLASSES, TINY_BACKBONES

OPEN_VOCABULARY = {"bridge": True, "lseg": True, "denseclip": False, "fpn": False, "lraspp": False, "segformer": False}
# The classic light heads: closed set, no text, on any backbone.
LIGHT_HEADS = ["lraspp", "segformer"]


def tiny(
    method: str, backbone: str = "test_resnet", class_embeddings=None, **options
) -> bridgeseg.models.SegmentationModel:
    defaults = dict(backbone=backbone, classes=CLASSES, fusion_dim=32, decoder_channels=16)
    return create_model(method, class_embeddings=class_embeddings, **(defaults | options))


def batch(size: int = 64, num_classes: int = 3) -> dict[str, torch.Tensor]:
    mask = torch.randint(0, num_classes, (2, size, size))
    mask[:, :4] = 255
    return {"image": torch.rand(2, 3, size, size), "mask": mask}


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
@pytest.mark.parametrize("method", ["bridge", "denseclip", "lseg", "fpn", *LIGHT_HEADS])
def test_every_method_on_every_tiny_backbone(method: str, backbone: str, class_embeddings: torch.Tensor) -> None:
    model = tiny(method, backbone, class_embeddings)
    losses = model.loss(batch())
    assert torch.isfinite(losses["loss"])
    assert ("loss_aux" in losses) == (method in ("bridge", "denseclip"))
    model.eval()
    with torch.no_grad():
        logits = model(torch.rand(1, 3, 64, 96))
    assert logits.shape == (1, 3, 64, 96)
    labels = model.predict(torch.rand(1, 3, 50, 70))
    assert labels.shape == (1, 50, 70) and labels.dtype == torch.int64
    assert model.open_vocabulary is OPEN_VOCABULARY[method]


@pytest.mark.parametrize("method", list_methods())
def test_gradients_reach_every_trainable_parameter_and_not_the_text_encoder(method: str) -> None:
    model = tiny(method, text_encoder="minilm")
    model.train()
    model.loss(batch())["loss"].backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing}"
    if model.uses_text:
        text_params = list(model.text_encoder.parameters())
        assert text_params and all(not p.requires_grad and p.grad is None for p in text_params)
        assert not model.text_encoder.training, "the frozen text encoder must stay in eval mode"
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable > 0


@pytest.mark.parametrize("method", ["bridge", "lseg"])
def test_open_vocabulary_models_take_any_class_list(method: str) -> None:
    model = tiny(method, text_encoder="minilm")
    for classes in (["dog"], ["road", "car", "tree", "building", "person"]):
        labels, probs = model.predict(torch.rand(1, 3, 64, 64), classes=classes, return_probs=True)
        assert probs.shape == (1, len(classes), 64, 64)
        assert int(labels.max()) < len(classes)
    # The classifier really changes with the vocabulary.
    image = torch.rand(1, 3, 64, 64)
    _, probs_a = model.predict(image, classes=["dog", "cat"], return_probs=True)
    _, probs_b = model.predict(image, classes=["dog", "car"], return_probs=True)
    assert not torch.allclose(probs_a, probs_b)


@pytest.mark.parametrize("method", ["denseclip", "fpn", *LIGHT_HEADS])
def test_closed_set_models_refuse_other_classes(method: str, class_embeddings: torch.Tensor) -> None:
    model = tiny(method, class_embeddings=class_embeddings)
    with pytest.raises(ValueError, match="closed-set"):
        model.predict(torch.rand(1, 3, 64, 64), classes=["dog", "cat"])
    assert model.predict(torch.rand(1, 3, 64, 64), classes=CLASSES).shape == (1, 64, 64)


@pytest.mark.parametrize("method", list_methods())
def test_no_grad_forward_equals_predict(method: str, class_embeddings: torch.Tensor) -> None:
    model = tiny(method, class_embeddings=class_embeddings)
    model.eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(images).argmax(dim=1)
    assert torch.equal(model.predict(images), expected)
    assert not model.training


def test_slide_inference_covers_the_image(class_embeddings: torch.Tensor) -> None:
    model = tiny("bridge", class_embeddings=class_embeddings)
    labels, probs = model.predict(torch.rand(1, 3, 80, 100), mode="slide", crop_size=64, stride=32, return_probs=True)
    assert labels.shape == (1, 80, 100)
    assert torch.allclose(probs.sum(dim=1), torch.ones(1, 80, 100), atol=1e-5)
    # A window covering the whole image gives the whole-image result.
    image = torch.rand(1, 3, 64, 64)
    assert torch.equal(model.predict(image, mode="slide", crop_size=64, stride=32), model.predict(image))


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_labels_alone_are_the_arg_max_of_the_probabilities(class_embeddings: torch.Tensor, mode: str) -> None:
    """Without `return_probs` and with one view, predict skips the softmax; the labels must not change."""
    model = tiny("bridge", class_embeddings=class_embeddings)
    image = torch.rand(2, 3, 70, 90)
    labels, probs = model.predict(image, mode=mode, crop_size=64, stride=32, return_probs=True)
    assert torch.equal(model.predict(image, mode=mode, crop_size=64, stride=32), labels)
    assert torch.equal(labels, probs.argmax(dim=1))


@pytest.mark.parametrize(
    "options",
    [
        {"bridge": "none"},
        {"bridge": "v2t"},
        {"bridge": "t2v"},
        {"cnn_branch": False},
        {"v2t_kv_proj": True},
        {"fusion_blocks": 1},
        {"fusion_blocks": 4},
        {"aux_weight": 0.0},
        {"learnable_tau": False},
    ],
)
def test_bridge_ablation_switches_build_and_train(options: dict, class_embeddings: torch.Tensor) -> None:
    model = tiny("bridge", class_embeddings=class_embeddings, **options)
    losses = model.loss(batch())
    assert torch.isfinite(losses["loss"])
    assert ("loss_aux" in losses) == (options.get("aux_weight", 0.4) > 0)


def test_concat_score_map_makes_bridge_closed_set(class_embeddings: torch.Tensor) -> None:
    model = tiny("bridge", class_embeddings=class_embeddings, concat_score_map=True)
    assert not model.open_vocabulary
    assert torch.isfinite(model.loss(batch())["loss"])
    with pytest.raises(ValueError, match="closed-set"):
        model.predict(torch.rand(1, 3, 64, 64), classes=["a", "b"])


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid methods: bridge, denseclip, lseg, fpn, lraspp, segformer"):
        create_model("segformer_b0", classes=CLASSES)
    with pytest.raises(ValueError, match=r"valid options:.*fusion_blocks"):
        create_model("bridge", classes=CLASSES, fusion_layers=3)
    with pytest.raises(ValueError, match="pass classes"):
        create_model("bridge")


@pytest.mark.parametrize(
    ("classes", "message"),
    [([], "no classes given"), (["a", " "], "blank"), (["a", "b", "a"], "duplicate"), ("a,b", "string")],
)
def test_bad_class_lists_are_reported(classes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_model("fpn", backbone="test_resnet", classes=classes)


def test_loss_rejects_labels_outside_the_class_range(class_embeddings: torch.Tensor) -> None:
    model = tiny("bridge", class_embeddings=class_embeddings)
    data = batch()
    data["mask"][0, 10, 10] = 7
    with pytest.raises(ValueError, match=r"mask labels \[7\]"):
        model.loss(data)


def test_all_ignored_batch_gives_zero_loss_not_nan(class_embeddings: torch.Tensor) -> None:
    model = tiny("bridge", class_embeddings=class_embeddings)
    data = batch()
    data["mask"][:] = 255
    assert model.loss(data)["loss"].item() == 0.0


def test_checkpoint_state_leaves_out_the_frozen_text_tower_and_reloads() -> None:
    model = tiny("bridge", text_encoder="minilm")
    state = model.state_dict()
    assert not any(key.startswith("text_encoder.") for key in state)
    assert "class_embeddings" in state
    config = ModelConfig.from_dict(model.config.to_dict())
    restored = create_model(config, class_embeddings=state["class_embeddings"])
    restored.load_state_dict(state)  # strict
    model.eval()
    restored.eval()
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(images), restored(images))
    # The text encoder itself also reloads its frozen weights without complaint.
    model.load_state_dict(state)


def test_readme_example_builds_offline() -> None:
    model = bridgeseg.create_model(
        "bridge", backbone="efficientnet_lite0", text_encoder="minilm", classes=["sky", "grass", "cat"]
    )
    assert model.class_embeddings.shape == (3, 384)


def test_default_bridge_fits_the_lightweight_budget() -> None:
    """DESIGN's budget: bridge on EfficientNet-Lite0 at 512x512 with 150 classes under 8 GFLOPs."""
    classes = [f"class {i}" for i in range(150)]
    embeddings = torch.nn.functional.normalize(torch.randn(150, 384), dim=-1)
    model = create_model("bridge", backbone="efficientnet_lite0", classes=classes, class_embeddings=embeddings)
    report = cost_report(model, 512)
    assert report.total_flops < 8e9
    assert all(report.flops[part] > 0 for part in ("backbone", "fusion", "decoder", "head"))
    assert report.total_flops == sum(report.flops.values())
    assert report.text_encoder_params == 0  # embeddings given: the text encoder was never loaded


def test_bridge_switches_build_and_train(class_embeddings: torch.Tensor) -> None:
    for options in (
        {"fusion_levels": 2},
        {"fusion_levels": 2, "keep_c5": False},
        {"keep_c5": False, "identity_start": False},
        {"full_projection": True, "fusion_dim": 16},
        {"concat_score_map": True},
    ):
        model = tiny("bridge", class_embeddings=class_embeddings, **options)
        model.loss(batch())["loss"].backward()
        missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, (options, missing)
    with pytest.raises(ValueError, match="fusion_levels"):
        tiny("bridge", class_embeddings=class_embeddings, fusion_levels=3)


def test_keep_c5_feeds_the_untouched_c5_to_the_decoder(class_embeddings: torch.Tensor) -> None:
    kept = tiny("bridge", class_embeddings=class_embeddings)
    replaced = tiny("bridge", class_embeddings=class_embeddings, keep_c5=False)
    c5 = kept.backbone.channels[-1]
    assert kept.decoder.laterals[-1][0].in_channels == c5 + 32
    assert replaced.decoder.laterals[-1][0].in_channels == 32


@pytest.mark.parametrize("method", ["bridge", "lseg"])
def test_pixel_projection_lets_pixel_embeddings_leave_the_positive_orthant(method: str, class_embeddings) -> None:
    model = tiny(method, class_embeddings=class_embeddings, pixel_projection=True)
    assert model.head.pixel_proj is not None
    post_relu = torch.rand(1, 16, 4, 4)  # what the decoder emits
    assert (model.head.pixel_proj(post_relu) < 0).any()
    assert tiny(method, class_embeddings=class_embeddings).head.pixel_proj is None  # off by default: it did not pay


def test_models_saved_before_the_new_switches_rebuild_as_they_were(class_embeddings: torch.Tensor) -> None:
    from bridgeseg.models.methods.base import LEGACY_OPTIONS

    for method in ("bridge", "lseg"):
        old = tiny(method, class_embeddings=class_embeddings, **LEGACY_OPTIONS)
        saved = {key: value for key, value in old.config.to_dict().items() if key not in LEGACY_OPTIONS}
        rebuilt = create_model(ModelConfig.from_saved_dict(saved), class_embeddings=class_embeddings)
        rebuilt.load_state_dict(old.state_dict(), strict=True)
        # A config from the new code keeps its own values.
        assert ModelConfig.from_saved_dict(tiny(method, class_embeddings=class_embeddings).config.to_dict()).keep_c5
        # A model saved while the pixel projection was on by default keeps it.
        projected = tiny(method, class_embeddings=class_embeddings, pixel_projection=True)
        assert ModelConfig.from_saved_dict(projected.config.to_dict()).pixel_projection


@pytest.mark.parametrize("method", ["bridge", "denseclip", "lseg", "fpn"])
def test_decoder_stride_8_skips_the_finest_level(method: str, class_embeddings: torch.Tensor) -> None:
    fine = tiny(method, class_embeddings=class_embeddings)
    coarse = tiny(method, class_embeddings=class_embeddings, decoder_stride=8)
    images = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        assert fine.eval().coarse_logits(images).shape[-2:] == (16, 24)
        assert coarse.eval().coarse_logits(images).shape[-2:] == (8, 12)
        assert coarse(images).shape == (1, 3, 64, 96)
    assert len(coarse.decoder.laterals) == len(fine.decoder.laterals) - 1
    assert cost_report(coarse, 64).flops["decoder"] < cost_report(fine, 64).flops["decoder"]
    coarse.train().loss(batch())["loss"].backward()
    with pytest.raises(ValueError, match="4 or 8"):
        tiny(method, class_embeddings=class_embeddings, decoder_stride=16)


def test_methods_are_registered_by_name_once() -> None:
    from bridgeseg.models.methods import (
        BridgeModel,
        DenseCLIPModel,
        FPNModel,
        LRASPPModel,
        LSegModel,
        SegFormerHeadModel,
        SegmentationModel,
    )
    from bridgeseg.models.methods.base import method_class, register_method

    classes = [BridgeModel, DenseCLIPModel, LSegModel, FPNModel, LRASPPModel, SegFormerHeadModel]
    assert [method_class(name) for name in list_methods()] == classes
    assert [cls.method for cls in classes] == list_methods()
    with pytest.raises(ValueError, match="'bridge' is already registered to BridgeModel"):
        register_method("bridge")(type("Other", (SegmentationModel,), {}))
    assert method_class("bridge") is BridgeModel


@pytest.mark.parametrize("method", LIGHT_HEADS)
@pytest.mark.parametrize("num_classes", [1, 2, 7])
def test_light_heads_take_any_number_of_classes(method: str, num_classes: int) -> None:
    classes = [f"class {i}" for i in range(num_classes)]
    model = tiny(method, classes=classes)
    assert not model.uses_text and model.text_encoder is None
    assert model.text_embeddings() is None
    losses = model.loss(batch(num_classes=num_classes))
    assert set(losses) == {"loss", "loss_seg"} and torch.isfinite(losses["loss"])
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 96)).shape == (2, num_classes, 64, 96)
    assert int(model.predict(torch.rand(1, 3, 40, 56)).max()) < num_classes


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_light_heads_take_their_channels_from_the_backbone(backbone: str) -> None:
    lraspp = tiny("lraspp", backbone)
    channels = lraspp.backbone.channels
    assert lraspp.head.low_classifier.in_channels == channels[1]  # stride 8
    assert lraspp.head.cbr[0].in_channels == lraspp.head.scale[1].in_channels == channels[3]  # stride 32
    assert lraspp.head.cbr[0].out_channels == 16  # decoder_channels
    segformer = tiny("segformer", backbone)
    assert [mlp.proj.in_features for mlp in segformer.head.linear_projections] == channels
    assert segformer.head.linear_fuse.in_channels == 4 * 16


@pytest.mark.parametrize(
    ("method", "decoder_stride", "stride"),
    [("lraspp", 4, 8), ("lraspp", 8, 8), ("segformer", 4, 4), ("segformer", 8, 8)],
)
def test_light_heads_logits_stride(method: str, decoder_stride: int, stride: int) -> None:
    """LR-ASPP classifies at stride 8 whatever the decoder stride; SegFormer's head merges at the decoder stride."""
    model = tiny(method, decoder_stride=decoder_stride).eval()
    images = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        assert model.coarse_logits(images).shape[-2:] == (64 // stride, 96 // stride)
        assert model(images).shape == (1, 3, 64, 96)
    assert model.logits_stride == stride
    model.train().loss(batch())["loss"].backward()


def test_segformer_head_at_stride_8_skips_the_finest_level() -> None:
    fine, coarse = tiny("segformer"), tiny("segformer", decoder_stride=8)
    assert len(coarse.head.linear_projections) == len(fine.head.linear_projections) - 1
    assert cost_report(coarse, 64).flops["head"] < cost_report(fine, 64).flops["head"]
    with pytest.raises(ValueError, match="4 or 8"):
        tiny("segformer", decoder_stride=16)


def test_light_heads_cost_less_than_fpn_on_lite0() -> None:
    """At 512x512 with 150 classes on EfficientNet-Lite0: the backbone is the same, only the head differs."""
    classes = [f"class {i}" for i in range(150)]
    reports = {
        m: cost_report(create_model(m, backbone="efficientnet_lite0", classes=classes), 512)
        for m in ["fpn", *LIGHT_HEADS]
    }
    assert len({report.flops["backbone"] for report in reports.values()}) == 1
    for method in LIGHT_HEADS:
        assert reports[method].flops["head"] > 0 and reports[method].text_encoder_params == 0
        assert reports[method].total_flops < reports["fpn"].total_flops
