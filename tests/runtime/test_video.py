"""Videos through `bridgeseg predict` and `bridgeseg.runtime.video`: frames, rotation, timestamps, labels, smoothing."""

from __future__ import annotations

import csv
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bridgeseg.checkpoints import save_checkpoint
from bridgeseg.cli import main
from bridgeseg.models import create_model
from bridgeseg.runtime.predictor import Predictor
from tests.conftest import CLASSES

av = pytest.importorskip("av", reason="video support is the optional extra bridgeseg[video] (PyAV)")

from bridgeseg.runtime import video  # noqa: E402  (needs PyAV at run time only, but the tests need it anyway)

TINY = dict(backbone="test_resnet", fusion_dim=32, decoder_channels=16)
WIDTH, HEIGHT, FRAMES = 64, 48, 12
TIME_BASE = Fraction(1, 1000)
STEADY_PTS = [40 * index for index in range(FRAMES)]
# Variable frame rate: gaps of 40, 120, 10 ms ... kept by every output.
VARIABLE_PTS = [0, 40, 80, 200, 240, 400, 410, 420, 520, 600, 700, 710]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    embeddings = torch.nn.functional.normalize(torch.randn(len(CLASSES), 384), dim=-1)
    model = create_model("bridge", class_embeddings=embeddings, classes=CLASSES, **TINY)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "model")


@pytest.fixture(scope="module")
def predictor(checkpoint: Path) -> Predictor:
    return Predictor.from_checkpoint(checkpoint)


def frame_pixels(index: int) -> np.ndarray:
    """A frame that moves: a bright square sliding over a gradient, so consecutive frames differ a little."""
    y, x = np.mgrid[:HEIGHT, :WIDTH]
    pixels = np.stack([x * 4, y * 5, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    left = 4 + 3 * index
    pixels[10:30, left : left + 16] = (250, 240, 40)
    return pixels


def write_clip(
    path: Path, pts: list[int] = STEADY_PTS, rotation: int = 0, faststart: bool = False, codec: str = "libx264"
) -> Path:
    options = {"movflags": "faststart"} if faststart else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", options=options) as container:
        stream = container.add_stream(codec)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.time_base = stream.codec_context.time_base = TIME_BASE
        stream.codec_context.framerate = Fraction(25)
        if rotation:
            stream.set_display_rotation(rotation)
        for index, stamp in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(frame_pixels(index), format="rgb24")
            frame.pts, frame.time_base = stamp, TIME_BASE
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def predict(checkpoint: Path, out: Path, *inputs: Path, options: tuple[str, ...] = ()) -> int:
    return main(["predict", "--checkpoint", str(checkpoint), "--out", str(out), *options, *map(str, inputs)])


def expected_labels(predictor: Predictor, path: Path, every: int = 1, max_side: int | None = None) -> list[np.ndarray]:
    """What the predictor gives for the same decoded frames."""
    return [predictor.predict(frame.image).labels for frame in video.read_frames(path, every, max_side)]


def decoded(path: Path) -> list[tuple[float, np.ndarray]]:
    with av.open(str(path)) as container:
        return [(float(frame.time), frame.to_ndarray()) for frame in container.decode(video=0)]


def read_areas(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


@pytest.mark.skipif(
    not hasattr(av.video.stream.VideoStream, "set_display_rotation"), reason="this PyAV cannot write a rotation tag"
)
def test_rotated_clip_every_nth_frame_with_a_lossless_label_video(
    checkpoint: Path, predictor: Predictor, tmp_path: Path, capsys
) -> None:
    clip = write_clip(tmp_path / "in" / "phone.mp4", rotation=90)
    info = video.probe_video(clip)
    assert (info.width, info.height, info.rotation, info.frames) == (HEIGHT, WIDTH, 90, FRAMES)
    out = tmp_path / "out"
    assert predict(checkpoint, out, clip, options=("--every", "3")) == 0
    assert "wrote results for 1 of 1 inputs" in capsys.readouterr().out
    assert sorted(path.name for path in out.iterdir()) == sorted(video.output_names("phone").values())

    # The frames are turned upright (counter-clockwise, as the display matrix says) before the model.
    first = next(video.read_frames(clip))
    assert first.image.shape == (WIDTH, HEIGHT, 3)
    assert np.abs(first.image.astype(int) - np.rot90(frame_pixels(0)).astype(int)).mean() < 8  # H.264 loss only

    labels = decoded(out / "phone_labels.mkv")
    expected = expected_labels(predictor, clip, every=3)
    assert len(labels) == len(expected) == 4
    for (_, got), want in zip(labels, expected, strict=True):
        assert got.shape == (WIDTH, HEIGHT)
        np.testing.assert_array_equal(got, want)
    assert [round(time, 3) for time, _ in labels] == [0.0, 0.12, 0.24, 0.36]

    overlay_frames = decoded(out / "phone_overlay.mp4")
    assert [round(time, 3) for time, _ in overlay_frames] == [0.0, 0.12, 0.24, 0.36]
    with av.open(str(out / "phone_overlay.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (HEIGHT, WIDTH)

    rows = read_areas(out / "phone_areas.csv")
    assert [row["frame"] for row in rows] == ["0", "3", "6", "9"]
    assert list(rows[0]) == ["frame", "time_s", *CLASSES]
    for row, want in zip(rows, expected, strict=True):
        shares = [float(row[name]) for name in CLASSES]
        assert shares == pytest.approx(np.bincount(want.ravel(), minlength=3) / want.size, abs=1e-6)
    summary = json.loads((out / "phone.json").read_text())
    assert summary["frames"] == 4 and (summary["width"], summary["height"]) == (HEIGHT, WIDTH)
    assert summary["source"]["rotation"] == 90 and summary["labels_format"] == "ffv1 gray"
    assert summary["runtime"] == "torch" and summary["precision"] == "fp32"


def test_variable_frame_rate_png_labels_and_max_side(checkpoint: Path, predictor: Predictor, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "in" / "vfr.mkv", pts=VARIABLE_PTS)
    image = tmp_path / "in" / "still.png"
    Image.fromarray(frame_pixels(0)).save(image)
    out = tmp_path / "out"
    assert predict(checkpoint, out, tmp_path / "in", options=("--labels", "png", "--max-side", "32")) == 0
    # The folder's image still goes the image path.
    assert {"still_mask.png", "still_overlay.png", "still.json"} <= {path.name for path in out.iterdir()}

    pngs = sorted((out / "vfr_labels").iterdir())
    expected = expected_labels(predictor, clip, max_side=32)
    assert [path.name for path in pngs] == [f"{index:06d}.png" for index in range(FRAMES)]
    for path, want in zip(pngs, expected, strict=True):
        with Image.open(path) as mask:
            assert mask.mode == "P" and mask.size == (32, 24)
            np.testing.assert_array_equal(np.asarray(mask), want)

    times = [float(row["time_s"]) for row in read_areas(out / "vfr_areas.csv")]
    assert times == pytest.approx([stamp / 1000 for stamp in VARIABLE_PTS])
    assert [time for time, _ in decoded(out / "vfr_overlay.mp4")] == pytest.approx(times, abs=1e-3)


def test_alpha_zero_is_no_smoothing_and_a_cut_restarts_the_average(predictor: Predictor, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "clip.mp4")
    embeddings = predictor.backend.text_embeddings(None)
    off = video.TemporalSmoother(0.0)
    with torch.inference_mode():
        for frame in video.read_frames(clip):
            labels = video.smoothed_labels(
                predictor.backend,
                torch.from_numpy(frame.image).permute(2, 0, 1) / 255.0,
                embeddings,
                off,
                video.scene_signature(frame.image),
            )
            np.testing.assert_array_equal(labels[0].numpy(), predictor.predict(frame.image).labels)

    smoother = video.TemporalSmoother(0.5, cut_threshold=0.2)
    first, second = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)
    dark, bright = np.zeros((32, 32), np.float32), np.ones((32, 32), np.float32)
    assert torch.equal(smoother(first, dark), first)
    assert torch.equal(smoother(second, dark + 0.1), torch.full((1, 3, 2, 2), 0.5))  # same shot: averaged
    assert torch.equal(smoother(second, bright), second) and smoother.cuts == 1  # a cut: the new frame alone
    assert video.scene_change(dark, bright) == 1.0


def test_smoothing_through_the_command(checkpoint: Path, predictor: Predictor, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "in" / "clip.mp4")
    assert predict(checkpoint, tmp_path / "out", clip, options=("--smooth", "0.6", "--every", "2")) == 0
    summary = json.loads((tmp_path / "out" / "clip.json").read_text())
    assert summary["smooth"] == 0.6 and summary["scene_cuts"] == 0 and summary["frames"] == FRAMES // 2
    assert all(labels.max() < len(CLASSES) for _, labels in decoded(tmp_path / "out" / "clip_labels.mkv"))


def test_corrupt_or_truncated_videos_leave_nothing_behind(checkpoint: Path, tmp_path: Path, capsys) -> None:
    data = write_clip(tmp_path / "clip.mp4").read_bytes()
    # The index (moov) comes last: cut short, the file cannot be opened at all; refused before the model loads.
    broken = tmp_path / "in" / "broken.mp4"
    broken.parent.mkdir()
    broken.write_bytes(data[: len(data) // 2])
    assert predict(checkpoint, tmp_path / "out", broken) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and str(broken) in err, err
    assert not (tmp_path / "out").exists()

    # The index first (faststart): it opens, then runs out of frames; reported, and no output is left.
    faststart = write_clip(tmp_path / "fast.mp4", faststart=True).read_bytes()
    cut = tmp_path / "in2" / "cut.mp4"
    cut.parent.mkdir()
    cut.write_bytes(faststart[: len(faststart) * 9 // 10])
    assert predict(checkpoint, tmp_path / "out2", cut) == 1
    err = capsys.readouterr().err
    assert f"error: {cut}: corrupt video" in err, err
    assert list((tmp_path / "out2").iterdir()) == []  # no temporary file either


def test_what_is_a_video(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "clip.mp4")
    renamed = tmp_path / "clip.bin"
    renamed.write_bytes(clip.read_bytes())
    picture = tmp_path / "picture.dat"
    Image.fromarray(frame_pixels(0)).save(picture, format="PNG")
    assert video.is_video(clip) and video.is_video(renamed)  # by extension; by probing
    assert not video.is_video(picture) and not video.is_video(tmp_path / "x.png")
    assert video.scaled_size(1920, 1080, 512) == (512, 288) and video.scaled_size(64, 48, 512) == (64, 48)


def test_option_errors_are_one_line(checkpoint: Path, tmp_path: Path, capsys) -> None:
    clip = write_clip(tmp_path / "in" / "clip.mp4")
    assert predict(checkpoint, tmp_path / "out", clip, options=("--smooth", "0.5", "--tta")) == 2
    assert "--smooth averages one whole-image pass" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict(checkpoint, tmp_path / "out", clip, options=("--smooth", "1"))
    assert predict(checkpoint, tmp_path / "out", clip) == 0
    assert predict(checkpoint, tmp_path / "out", clip) == 2  # outputs exist: --overwrite needed
    assert "clip_overlay.mp4" in capsys.readouterr().err
