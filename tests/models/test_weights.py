"""Tests of bridgeseg.models.weights: the one state-dict reader and the open_clip spec."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bridgeseg.models.weights import (
    WEIGHT_SUFFIXES,
    openclip_weights_file,
    parse_openclip_spec,
    read_safetensors,
    read_state_dict,
)

TENSORS = {"a.weight": torch.arange(4.0), "b.bias": torch.ones(2)}


@pytest.mark.parametrize("suffix", WEIGHT_SUFFIXES)
def test_every_suffix_reads_the_same_tensors(suffix: str, tmp_path: Path) -> None:
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(TENSORS, str(path))
    else:
        torch.save(TENSORS, path)
    state_dict = read_state_dict(path)
    assert list(state_dict) == list(TENSORS)
    for name, tensor in TENSORS.items():
        torch.testing.assert_close(state_dict[name], tensor)


def test_wrappers_and_ddp_prefix_are_dropped_and_selection_renames(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in TENSORS.items()}, "epoch": 3}, path)
    assert list(read_state_dict(path)) == list(TENSORS)
    kept = read_state_dict(path, select=lambda key: key.upper() if key.startswith("a.") else None)
    assert list(kept) == ["A.WEIGHT"]


def test_safetensors_metadata_and_lazy_selection(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    save_file(TENSORS, str(path), metadata={"format": "pt"})
    tensors, metadata = read_safetensors(path, select=lambda key: key if key == "b.bias" else None)
    assert list(tensors) == ["b.bias"] and metadata == {"format": "pt"}


def test_unsupported_or_empty_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.npz"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"Unsupported weights file .*expected one of .safetensors, .pt"):
        read_state_dict(path)
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        read_state_dict(listed)


def test_openclip_spec_splits_at_the_first_two_colons(tmp_path: Path) -> None:
    assert parse_openclip_spec("openclip:RN50") == ("RN50", "")
    assert parse_openclip_spec("openclip:RN50:openai") == ("RN50", "openai")
    assert parse_openclip_spec("OpenCLIP:RN50:C:/weights/rn50.pt").weights == "C:/weights/rn50.pt"
    with pytest.raises(ValueError, match="Missing open_clip architecture"):
        parse_openclip_spec("openclip::openai")
    with pytest.raises(ValueError, match="not an open_clip spec"):
        parse_openclip_spec("hf:RN50")


def test_openclip_weights_part_is_a_tag_or_an_existing_file(tmp_path: Path) -> None:
    assert openclip_weights_file("openai") is None
    path = tmp_path / "rn50.bin"
    path.write_bytes(b"")
    assert openclip_weights_file(str(path)) == path
    for missing in (str(tmp_path / "absent"), "absent.safetensors"):
        with pytest.raises(FileNotFoundError, match="check the path in the spec"):
            openclip_weights_file(missing)
