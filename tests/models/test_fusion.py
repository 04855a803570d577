import pytest
import torch

from bridgeseg.models.decoders import SemanticFPN
from bridgeseg.models.fusion import BridgeFusion, cosine_logits


@pytest.mark.parametrize("num_classes", [1, 5, 150])
def test_fusion_shapes_for_any_number_of_classes(num_classes: int) -> None:
    fusion = BridgeFusion(in_channels=40, text_dim=16, dim=32, num_heads=4, num_blocks=2)
    pixels, tokens = fusion(torch.randn(2, 40, 3, 5), torch.randn(num_classes, 16))
    assert pixels.shape == (2, 32, 3, 5)
    assert tokens.shape == (2, num_classes, 32)


def _outputs(fusion: BridgeFusion, features: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    fusion.eval()
    with torch.no_grad():
        return fusion(features, text)


@pytest.mark.parametrize("bridge", ["both", "v2t", "t2v", "none"])
def test_bridge_directions_carry_information_only_where_enabled(bridge: str) -> None:
    fusion = BridgeFusion(in_channels=8, text_dim=6, dim=16, num_heads=2, num_blocks=2, bridge=bridge)
    features, text = torch.randn(1, 8, 4, 4), torch.randn(3, 6)
    pixels, tokens = _outputs(fusion, features, text)
    pixels_new_text, _ = _outputs(fusion, features, torch.randn(3, 6))
    _, tokens_new_image = _outputs(fusion, torch.randn(1, 8, 4, 4), text)
    text_reaches_pixels = not torch.allclose(pixels, pixels_new_text)
    image_reaches_tokens = not torch.allclose(tokens, tokens_new_image)
    assert text_reaches_pixels == (bridge in ("both", "t2v"))
    assert image_reaches_tokens == (bridge in ("both", "v2t"))


def test_switches_change_the_module() -> None:
    plain = BridgeFusion(8, 6, dim=16, num_heads=2, num_blocks=1)
    no_cnn = BridgeFusion(8, 6, dim=16, num_heads=2, num_blocks=1, cnn_branch=False)
    kv = BridgeFusion(8, 6, dim=16, num_heads=2, num_blocks=1, v2t_kv_proj=True)
    assert plain.blocks[0].cnn is not None and no_cnn.blocks[0].cnn is None
    assert isinstance(plain.blocks[0].v2t.key, torch.nn.Identity)
    assert isinstance(kv.blocks[0].v2t.key, torch.nn.Linear)
    assert len(BridgeFusion(8, 6, dim=16, num_heads=2, num_blocks=4).blocks) == 4


def test_bad_fusion_options_are_reported() -> None:
    with pytest.raises(ValueError, match="bridge mode"):
        BridgeFusion(8, 6, bridge="sideways")
    with pytest.raises(ValueError, match="divisible"):
        BridgeFusion(8, 6, dim=30, num_heads=4)


def test_cosine_logits_are_scaled_cosines() -> None:
    pixels = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).T.reshape(1, 2, 1, 2)  # two pixels: e0 and 2*e1
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    logits = cosine_logits(pixels, classes, torch.tensor(10.0))
    expected = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5**0.5, 0.5**0.5]]) * 10
    assert torch.allclose(logits[0, :, 0], expected, atol=1e-5)


def test_semantic_fpn_handles_sizes_not_divisible_by_32() -> None:
    decoder = SemanticFPN([4, 8, 16, 32], channels=8)
    features = [torch.randn(1, 4, 13, 18), torch.randn(1, 8, 7, 9), torch.randn(1, 16, 4, 5), torch.randn(1, 32, 2, 3)]
    assert decoder(features).shape == (1, 8, 13, 18)


@pytest.mark.parametrize("num_blocks", [1, 2, 4])
def test_identity_start_leaves_the_projections_untouched(num_blocks: int) -> None:
    torch.manual_seed(0)
    features, text = torch.randn(2, 24, 4, 5), torch.randn(7, 12)
    started = BridgeFusion(24, 12, dim=32, num_heads=4, num_blocks=num_blocks, identity_start=True).eval()
    plain = BridgeFusion(24, 12, dim=32, num_heads=4, num_blocks=num_blocks).eval()
    for fusion, close in ((started, True), (plain, False)):
        with torch.no_grad():
            pixels, tokens = fusion(features, text)
            projected_pixels = fusion.pixel_proj(features)
            projected_tokens = fusion.token_proj(text).expand(2, -1, -1)
        assert torch.allclose(pixels, projected_pixels, atol=1e-2) is close
        assert torch.allclose(tokens, projected_tokens, atol=1e-2) is close


def test_identity_start_still_trains_every_part() -> None:
    fusion = BridgeFusion(24, 12, dim=32, num_heads=4, num_blocks=2, identity_start=True)
    pixels, tokens = fusion(torch.randn(2, 24, 4, 5), torch.randn(7, 12))
    (pixels.square().mean() + tokens.square().mean() + pixels.mean() * tokens.mean()).backward()
    silent = [name for name, p in fusion.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # At γ = 0 the CNN branch's inner weights get no gradient until γ moves; everything else must.
    assert all(".cnn.body." in name and not name.endswith("body.7.weight") for name in silent), silent
    assert all(block.t2v_scale.gamma.grad.abs().sum() > 0 for block in fusion.blocks)


def test_tokens_carried_from_another_level() -> None:
    first = BridgeFusion(16, 12, dim=32, num_heads=4, num_blocks=1)
    second = BridgeFusion(24, None, dim=32, num_heads=4, num_blocks=1)
    assert second.token_proj is None
    _, tokens = first(torch.randn(1, 16, 8, 8), torch.randn(5, 12))
    pixels, carried = second(torch.randn(1, 24, 4, 4), tokens=tokens)
    assert pixels.shape == (1, 32, 4, 4) and carried.shape == (1, 5, 32)
    with pytest.raises(ValueError, match="tokens of the previous level"):
        second(torch.randn(1, 24, 4, 4), torch.randn(5, 12))


def test_full_projection_projects_both_sides() -> None:
    fusion = BridgeFusion(8, 6, dim=16, num_heads=2, num_blocks=1, full_projection=True)
    assert isinstance(fusion.blocks[0].v2t.key, torch.nn.Linear)
    assert isinstance(fusion.blocks[0].t2v.query, torch.nn.Linear)
