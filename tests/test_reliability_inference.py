"""`bridgeseg predict` on bad and unusual inputs, and on a full disk.

The policy differs from training on purpose: `predict` segments what it can, names every file it could not read on
its own `error:` line and exits 1; a validation run stops at the first unreadable file (tests/test_reliability_data.py)
because a metric over a silently smaller set would be wrong. tests/test_predict_cli.py and tests/test_inference.py
cover checkpoints and in-memory images; this file covers image files of every kind and a full disk.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from bridgeseg.checkpoints import save_checkpoint
from bridgeseg.cli import main
from bridgeseg.models import create_model
from tests.conftest import CLASSES


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny bridge checkpoint with stand-in class embeddings: no text encoder is loaded."""
    embeddings = torch.nn.functional.normalize(torch.randn(len(CLASSES), 384), dim=-1)
    model = create_model(
        "bridge",
        class_embeddings=embeddings,
        classes=CLASSES,
        backbone="test_resnet",
        fusion_dim=32,
        decoder_channels=16,
    )
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "model")


def png_with_header(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims `width` x `height` pixels and holds no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def make_inputs(folder: Path) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """Images of every kind the reader must take, and files it must refuse.

    Returns:
        The good files' stems with the (height, width) their mask must have, and the bad files' names.
    """
    folder.mkdir()
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "sixteen.png")
    Image.fromarray(grey).save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 256, (30, 40, 4), dtype=np.uint8), mode="RGBA").save(folder / "rgba.png")
    Image.fromarray(np.stack([grey] * 3, axis=-1)).convert("CMYK").save(folder / "cmyk.tif")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated on load: 30x40 stored, 40x30 shown
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(folder / "rotated.jpg", exif=exif)
    Image.new("RGB", (1, 1), (9, 9, 9)).save(folder / "tiny.png")
    Image.new("RGB", (1200, 700), (120, 60, 30)).save(folder / "large.png")
    good = {
        "sixteen": (30, 40),
        "grey": (30, 40),
        "rgba": (30, 40),
        "cmyk": (30, 40),
        "rotated": (40, 30),
        "tiny": (1, 1),
        "large": (700, 1200),
    }

    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image\n")
    truncated = (folder / "grey.png").read_bytes()
    (folder / "truncated.png").write_bytes(truncated[: len(truncated) // 3])
    png_with_header(folder / "bomb.png", 100_000, 100_000)
    bad = ["bomb.png", "empty.png", "text.jpg", "truncated.png"]
    return good, bad


def test_predict_segments_every_readable_kind_and_names_each_bad_file(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = make_inputs(tmp_path / "in")
    out = tmp_path / "out"
    code = main(["predict", "--checkpoint", str(checkpoint), "--out", str(out), str(tmp_path / "in")])
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err
    errors = sorted(line for line in captured.err.splitlines() if line.startswith("error:"))
    assert len(errors) == len(bad), captured.err
    for name, line in zip(bad, errors, strict=True):
        assert line.startswith(f"error: {tmp_path / 'in' / name}: "), line
    assert "decompression-bomb guard" in errors[0]
    assert f"wrote results for {len(good)} of {len(good) + len(bad)} images" in captured.out
    for stem, (height, width) in good.items():
        with Image.open(out / f"{stem}_mask.png") as mask:
            assert mask.size == (width, height), stem
        assert json.loads((out / f"{stem}.json").read_text())["height"] == height
    assert not any(stem in path.name for path in out.iterdir() for stem in ("bomb", "empty", "text", "truncated"))


def test_full_disk_while_writing_results_stops_and_keeps_earlier_ones(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(3):
        Image.new("RGB", (32, 24), (index * 80, 50, 50)).save(folder / f"{index}.png")
    out = tmp_path / "out"
    real_save = Image.Image.save
    saves = {"count": 0}

    def save_until_the_disk_fills(self: Image.Image, fp: Any, *args: Any, **kwargs: Any) -> None:
        saves["count"] += 1
        if saves["count"] > 2:  # the first image's mask and overlay fit, then the disk is full
            fp.write(b"\x89PNG partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_until_the_disk_fills)
    code = main(["predict", "--checkpoint", str(checkpoint), "--out", str(out), str(folder)])
    err = capsys.readouterr().err
    monkeypatch.undo()
    assert code == 2 and "Traceback" not in err
    (error,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert error == (
        f"error: [Errno 28] could not write {out / '1_mask.png'}: No space left on device; no partial file is left"
    )
    assert sorted(path.name for path in out.iterdir()) == ["0.json", "0_mask.png", "0_overlay.png"]
    with Image.open(out / "0_mask.png") as mask:
        assert mask.size == (32, 24)


@pytest.mark.parametrize("classes", [",", " , ,"])
def test_predict_with_an_empty_class_list_is_one_line(
    classes: str, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    argv = ["predict", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"), "--classes", classes]
    assert main([*argv, str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err.strip() == "error: the class list is empty; give at least one class name"


@pytest.mark.parametrize("scales", [[0], [-1], [1.0, float("nan")], [float("inf")], ["1.5"]])
def test_predict_refuses_scales_that_are_not_positive_finite_factors(checkpoint: Path, scales: list) -> None:
    from bridgeseg.predictor import Predictor

    predictor = Predictor.from_checkpoint(checkpoint)
    with pytest.raises(ValueError, match=r"^scales must be positive, finite resize factors such as \[0\.75, 1\.0"):
        predictor.predict(np.zeros((32, 32, 3), dtype=np.uint8), scales=scales)
    assert predictor.predict(np.zeros((32, 32, 3), dtype=np.uint8), scales=[np.float32(0.5), 1]).labels.shape == (
        32,
        32,
    )


@pytest.mark.parametrize("classes", ['"salt, pepper, cat', 'sky, "grass"x'])
def test_predict_refuses_an_unbalanced_quote_in_the_class_list(
    classes: str, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    argv = ["predict", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"), "--classes", classes]
    assert main([*argv, str(tmp_path / "x.png")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: the class list ") and error.count("\n") == 1
    assert """quote a name that holds a comma as '"salt, pepper", cat'""" in error
    assert not (tmp_path / "out").exists()
