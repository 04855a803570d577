"""Shared fixtures: tiny models, no network."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)

TINY_BACKBONES = ["test_resnet", "test_efficientnet", "mobilenetv2_050"]
CLASSES = ["sky", "grass", "cat"]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--native-bf16",
        choices=["no", "yes"],
        default="no",
        help="what the CPU capability detection answers in every test (default: no, as on an AVX2 CPU); the suite "
        "must pass either way, whatever the CPU that runs it",
    )


@pytest.fixture(autouse=True)
def _pinned_cpu(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test's outcome depends on the CPU: the bf16 detection answers `--native-bf16`, never the host.

    Tests of the detection itself call `detect_native_bf16` (the real query) with its cache cleared; tests of a
    branch pin `bf16_is_fast` themselves.
    """
    from bridgeseg.runtime import cpu

    native = request.config.getoption("--native-bf16") == "yes"
    monkeypatch.setattr(cpu, "bf16_is_fast", lambda: native)


@pytest.fixture
def class_embeddings() -> torch.Tensor:
    """Stand-in text embeddings [3, 384] so most tests need not load a text encoder."""
    return torch.nn.functional.normalize(torch.randn(len(CLASSES), 384), dim=-1)
