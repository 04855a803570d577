"""Fine-tuning onto another vocabulary: which weights are copied, class by class where the size follows the classes."""

from __future__ import annotations

import pytest
import torch

from bridgeseg.checkpoints import save_checkpoint
from bridgeseg.errors import CheckpointError
from bridgeseg.models import create_model, list_methods
from bridgeseg.models.transfer import init_from_checkpoint, match_classes, transfer_weights

SAVED = ["Sky", "tree", "cat ", "water", "sand"]
RUN = ["sky", "grass", "cat"]  # sky and cat shared (case and spacing aside), grass new


def tiny(method: str, classes: list[str], **options):
    embeddings = torch.nn.functional.normalize(torch.randn(len(classes), 384), dim=-1)
    defaults = dict(backbone="test_resnet", classes=classes, fusion_dim=32, decoder_channels=16)
    return create_model(method, class_embeddings=embeddings, **(defaults | options))


VARIANTS = [(method, {}) for method in list_methods()] + [
    ("bridge", {"concat_score_map": True}),
    ("denseclip", {"decoder_stride": 8}),
]


@pytest.mark.parametrize(("method", "options"), VARIANTS)
def test_every_method_declares_the_weights_sized_by_the_class_count(method: str, options: dict) -> None:
    """The weights whose shape changes with the class count are exactly those `class_indexed_weights` lists."""
    small, large = tiny(method, RUN, **options), tiny(method, SAVED, **options)
    small_state, large_state = small.state_dict(), large.state_dict()
    assert small_state.keys() == large_state.keys()
    changed = {}
    for name, tensor in small_state.items():
        if name == "class_embeddings" or tensor.shape == large_state[name].shape:
            continue
        dims = [d for d, (a, b) in enumerate(zip(tensor.shape, large_state[name].shape, strict=True)) if a != b]
        changed[name] = dims
    declared = small.class_indexed_weights()
    assert set(declared) == set(changed), f"{method}: declare {sorted(set(changed) - set(declared))}"
    for name, (dim, start) in declared.items():
        assert changed[name] == [dim]
        assert large.class_indexed_weights()[name] == (dim, start)
        # The class slices fit inside the dimension at both class counts.
        assert start + len(RUN) <= small_state[name].shape[dim]


def test_class_names_match_up_to_case_and_spacing() -> None:
    assert match_classes(RUN, SAVED) == {0: 0, 2: 2}
    assert match_classes(["Big  Dog"], ["big dog"]) == {0: 0}


def test_fpn_copies_the_classifier_rows_of_shared_classes_and_keeps_the_others_fresh() -> None:
    source = tiny("fpn", SAVED)
    torch.manual_seed(1)
    fresh = tiny("fpn", RUN)
    model = tiny("fpn", RUN)
    model.load_state_dict(fresh.state_dict())
    report = transfer_weights(model, source.state_dict(), source.classes)
    weight, saved_weight = model.head.classifier.weight, source.head.classifier.weight  # [K, C, 1, 1]
    assert torch.equal(weight[0], saved_weight[0]) and torch.equal(weight[2], saved_weight[2])
    assert torch.equal(weight[1], fresh.head.classifier.weight[1])
    assert torch.equal(model.head.classifier.bias[1], fresh.head.classifier.bias[1])
    assert torch.equal(model.head.classifier.bias[2], source.head.classifier.bias[2])
    assert torch.equal(model.decoder.fuse[0].weight, source.decoder.fuse[0].weight)
    assert report.by_class == ["head.classifier.weight", "head.classifier.bias"]
    assert report.new == [] and report.dropped == []
    assert report.matched == [("sky", "Sky"), ("cat", "cat")]
    assert report.new_classes == ["grass"] and report.dropped_classes == ["tree", "water", "sand"]
    assert "2 classes copied by name, 1 initialised" in report.describe()


def test_denseclip_copies_the_score_map_channels_of_shared_classes() -> None:
    source, model = tiny("denseclip", SAVED), tiny("denseclip", RUN)
    fresh_lateral = model.decoder.laterals[-1][0].weight.detach().clone()
    channels = model.backbone.channels[-1]
    transfer_weights(model, source.state_dict(), source.classes)
    lateral, saved = model.decoder.laterals[-1][0].weight, source.decoder.laterals[-1][0].weight  # [C, C5 + K, 1, 1]
    assert torch.equal(lateral[:, :channels], saved[:, :channels])
    assert torch.equal(lateral[:, channels + 2], saved[:, channels + 2])  # cat
    assert torch.equal(lateral[:, channels + 1], fresh_lateral[:, channels + 1])  # grass: as initialised
    # The context decoder and the attention pool do not depend on the classes: copied whole.
    assert torch.equal(model.fusion["context_decoder"].gamma, source.fusion["context_decoder"].gamma)


def test_a_language_model_keeps_its_own_class_embeddings_and_loads_everything_else(tmp_path) -> None:
    source, model = tiny("bridge", SAVED), tiny("bridge", RUN)
    embeddings = model.class_embeddings.clone()
    report = init_from_checkpoint(model, save_checkpoint(source, tmp_path / "model"))
    assert torch.equal(model.class_embeddings, embeddings)
    assert report.new == [] and report.dropped == [] and report.by_class == []
    assert len(report.loaded) == len(model.state_dict()) - 1
    assert torch.equal(model.head.class_proj.weight, source.head.class_proj.weight)
    assert f"built from the run's {len(RUN)} class names" in report.describe()


def test_other_options_load_what_fits_and_report_the_rest(tmp_path) -> None:
    source, model = tiny("bridge", SAVED, fusion_dim=16), tiny("bridge", RUN)
    report = init_from_checkpoint(model, save_checkpoint(source, tmp_path / "model"))
    assert any(name.startswith("backbone.") for name in report.loaded)
    assert report.new and report.dropped and len(report.new) == len(report.dropped)
    assert all("(shape [" in name for name in report.dropped)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [("method", "lseg", "'lseg' model"), ("backbone", "test_efficientnet", "'test_efficientnet' backbone")],
)
def test_another_method_or_backbone_is_refused(tmp_path, key: str, value: str, expected: str) -> None:
    source = tiny(value if key == "method" else "bridge", SAVED, **({key: value} if key == "backbone" else {}))
    path = save_checkpoint(source, tmp_path / "model")
    with pytest.raises(CheckpointError, match=f"holds a {expected}, this run trains"):
        init_from_checkpoint(tiny("bridge", RUN), path)
