"""Video files through the one prediction loop: decode, segment frame by frame, write videos, label maps and areas.

Any container and codec FFmpeg reads (PyAV, `pip install 'bridgeseg[video]'`; FFmpeg ships inside its wheel) is
decoded one frame at a time, so memory stays one frame's worth whatever the length. Each frame is turned upright
first (the display matrix the phone or camera recorded: `VideoFrame.rotation`, or the older `rotate` tag), then
optionally downscaled so that its long side is at most `max_side`, and segmented as an image of that size.

For a video `<stem>`, `segment_video` writes into the output folder:

- `<stem>_overlay.mp4`: the frames with the labels' colours blended in, H.264 (libx264, CRF 20, yuv420p: plays
  everywhere), or MPEG-4 Part 2 where the wheel has no libx264;
- `<stem>_labels.mkv`: the class indices as a lossless FFV1 video, one grey level per class (gray8; gray16le beyond
  256 classes), which decodes back to exactly the labels; or, with `labels="png"`, a folder `<stem>_labels/` of
  one index PNG per frame (`<frame>.png`, as `bridgeseg predict` writes for images);
- `<stem>_areas.csv`: one row per segmented frame: its index in the video, its time in seconds, and the share of
  the pixels of each class;
- `<stem>.json`: sizes, frame counts, codecs, smoothing, the runtime and precision, and the mean class areas.

Each output keeps each frame's timestamp (variable frame rates survive, and `every` > 1 leaves gaps rather than
speeding the video up). Everything is written under temporary names in the output folder and renamed when the
whole video has been segmented; on any failure the temporary files are removed, so an output under its final name
is always complete.

Temporal smoothing (`TemporalSmoother`) averages the coarse logits of consecutive frames and starts again at a
scene cut; see `smoothed_labels`.

Example:
    >>> predictor = Predictor.from_checkpoint("outputs/demo/model")  # doctest: +SKIP
    >>> segment_video(predictor, "street.mp4", "out", every=2, max_side=512, smooth=0.6)  # doctest: +SKIP
    VideoResult(frames=150, width=512, height=288, ...)
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from bridgeseg.errors import DatasetError, DatasetNotFoundError, UserError, first_line
from bridgeseg.images import IMAGE_EXTENSIONS, check_size, to_tensor
from bridgeseg.models.prediction import pad_to_multiple, upsampled_argmax
from bridgeseg.visualize import overlay, palette

if TYPE_CHECKING:
    from bridgeseg.runtime.predictor import Predictor

__all__ = [
    "CUT_THRESHOLD",
    "LABEL_FORMATS",
    "VIDEO_EXTENSIONS",
    "Frame",
    "TemporalSmoother",
    "VideoInfo",
    "VideoResult",
    "is_video",
    "label_image",
    "output_names",
    "probe_video",
    "read_frames",
    "scaled_size",
    "scene_change",
    "scene_signature",
    "segment_video",
    "smoothed_labels",
]

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS: tuple[str, ...] = (
    *(".mp4", ".m4v", ".mov", ".qt", ".mkv", ".webm", ".avi", ".wmv", ".asf", ".flv", ".f4v"),
    *(".mpg", ".mpeg", ".m2v", ".ts", ".mts", ".m2ts", ".vob", ".3gp", ".3g2", ".ogv", ".mxf", ".nut", ".y4m"),
)
"""Files with these extensions are read as videos; others are probed (`is_video`)."""

LABEL_FORMATS = ("video", "png")

CUT_THRESHOLD = 0.12
"""`TemporalSmoother` starts its average again when `scene_change` between consecutive frames exceeds this: the
mean absolute difference of 32×32 grey thumbnails in [0, 1]. On the pan-and-zoom clips of
`benchmarks/video_smoothing.py` (noise and H.264 CRF 30 included) consecutive frames of a shot differed by at most
0.04 (median 0.01), and cuts between two mosaics by 0.20 to 0.35; a pan four times as fast reached 0.10. A faster
pan over fine texture can pass it: that only restarts the average."""

_SIGNATURE_SIDE = 32
_OVERLAY_ALPHA = 0.5
# The labels video's frames keep the colours of nothing: grey levels are the class indices themselves.
_LABEL_CODEC, _LABEL_CONTAINER = "ffv1", "matroska"
_OVERLAY_CONTAINER = "mp4"
# Container formats under which FFmpeg reads still images (it opens PNG and JPEG files as one-frame "videos").
_IMAGE_DEMUXERS = ("image2", "gif", "ico", "tiff")


def _av() -> Any:
    try:
        import av
    except ImportError as error:
        hint = "install it with `pip install 'bridgeseg[video]'`"
        raise UserError(f"reading videos needs PyAV ({error}); {hint}") from error
    return av


# -- reading ------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What a video file holds, as read from its headers.

    Attributes:
        width: Width of the upright frames (after the rotation).
        height: Height of the upright frames.
        rotation: Counter-clockwise rotation in degrees applied to the decoded frames (0, 90, 180 or 270).
        frames: Number of frames the container declares; 0 when it does not say.
        rate: Average frame rate (frames per second), or None when unknown.
        time_base: The unit of the video stream's timestamps.
        codec: The codec's name.
        container: The container format's name.
    """

    width: int
    height: int
    rotation: int
    frames: int
    rate: Fraction | None
    time_base: Fraction
    codec: str
    container: str


@dataclasses.dataclass(frozen=True)
class Frame:
    """One decoded, upright, resized frame.

    Attributes:
        index: Its index among the video's decoded frames (0-based; `every` skips but does not renumber).
        pts: Its presentation timestamp, in `time_base` units.
        time_base: The unit of `pts`.
        image: RGB pixels [H, W, 3] (uint8).
    """

    index: int
    pts: int
    time_base: Fraction
    image: np.ndarray

    @property
    def time(self) -> float:
        """Its presentation time in seconds."""
        return float(self.pts * self.time_base)


def is_video(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a video: by extension, else (an extension neither image nor video) by probing with PyAV.

    Image extensions are never videos, and a file FFmpeg reads as a still image (PNG, JPEG, GIF, ...) is not
    either; without PyAV only the extension counts.
    """
    suffix = Path(path).suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return True
    if suffix in (*IMAGE_EXTENSIONS, ".webp", ".gif") or not Path(path).is_file():
        return False
    try:
        import av
    except ImportError:
        return False
    try:
        with av.open(os.fspath(path)) as container:
            names = set(container.format.name.split(","))
            still = any(name in _IMAGE_DEMUXERS or name.endswith("_pipe") for name in names)
            return bool(container.streams.video) and not still
    except (av.FFmpegError, OSError, UnicodeDecodeError):
        return False


def _open(path: str | os.PathLike[str]) -> tuple[Any, Any]:
    """The container and its first video stream, with one-line errors naming the file."""
    av = _av()
    if not Path(path).exists():
        raise DatasetNotFoundError(f"{path}: no such file")
    try:
        container = av.open(os.fspath(path))
    except av.FFmpegError as error:
        raise DatasetError(f"{path}: not a readable video ({_ffmpeg_reason(error)})") from error
    if not container.streams.video:
        container.close()
        raise DatasetError(f"{path}: no video stream in this file")
    return container, container.streams.video[0]


def _ffmpeg_reason(error: Exception) -> str:
    """FFmpeg's message without the file name PyAV appends (the caller names the file)."""
    return getattr(error, "strerror", None) or first_line(error) or type(error).__name__


def _stream_rotation(stream: Any) -> int:
    """The older `rotate` tag (clockwise degrees) as a counter-clockwise rotation; 0 when absent or unreadable."""
    try:
        return -int(float(stream.metadata.get("rotate", 0))) % 360
    except ValueError:
        return 0


def _quarter_turns(degrees: float) -> int:
    """Counter-clockwise rotation in degrees → quarter turns 0..3 (display matrices hold multiples of 90)."""
    return round(degrees / 90) % 4


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """Read a video's size, rotation, frame count and codec (decoding its first frame for the rotation).

    Raises:
        DatasetError: The file is missing, is not a video FFmpeg can read, or has no decodable frame.
        UserError: PyAV is not installed.
    """
    container, stream = _open(path)
    with container:
        first = next(_decode(container, stream, path), None)
        if first is None:
            raise DatasetError(f"{path}: no frame could be decoded; the file is empty or corrupt")
        turns = _quarter_turns(getattr(first, "rotation", 0) or _stream_rotation(stream))
        width, height = (first.height, first.width) if turns % 2 else (first.width, first.height)
        rate = stream.average_rate or stream.guessed_rate
        return VideoInfo(
            width=width,
            height=height,
            rotation=turns * 90,
            frames=int(stream.frames or 0),
            rate=Fraction(rate) if rate else None,
            time_base=Fraction(stream.time_base or Fraction(1, 1000)),
            codec=stream.codec_context.name,
            container=container.format.name,
        )


def _decode(container: Any, stream: Any, path: str | os.PathLike[str]) -> Iterator[Any]:
    """The stream's frames, with FFmpeg's errors as one-line `DatasetError`s."""
    av = _av()
    try:
        yield from container.decode(stream)
    except av.FFmpegError as error:
        raise DatasetError(f"{path}: corrupt video ({_ffmpeg_reason(error)})") from error


def scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) downscaled, aspect ratio kept, so that the long side is at most `max_side` (never upscaled).

    Raises:
        ValueError: `max_side` is not positive.
    """
    if max_side is None or max(width, height) <= max_side:
        return width, height
    if max_side <= 0:
        raise ValueError(f"max_side must be positive, got {max_side}")
    factor = max_side / max(width, height)
    return max(1, round(width * factor)), max(1, round(height * factor))


def read_frames(path: str | os.PathLike[str], every: int = 1, max_side: int | None = None) -> Iterator[Frame]:
    """Decode a video's frames upright, every `every`-th one, downscaled to a long side of at most `max_side`.

    Rotation comes from each frame's display matrix (what FFmpeg reports as `VideoFrame.rotation`), or from the
    stream's older `rotate` tag; flips in a display matrix are not applied. The frames are resized by FFmpeg
    (swscale, area interpolation) straight into RGB, then rotated by quarter turns (exact).

    Args:
        path: The video file.
        every: Keep frames 0, every, 2·every, ... (by decoded index).
        max_side: Downscale so that the long side of the upright frame is at most this; None: full size.

    Yields:
        The frames, in presentation order. A frame without a timestamp gets one from its index and the frame rate;
        timestamps are made strictly increasing (an encoder needs them so).

    Raises:
        DatasetError: The file is missing, unreadable, corrupt, or ends before the frames its container declares.
        UserError: PyAV is not installed.
        ValueError: `every` or `max_side` is not positive.
    """
    if every < 1:
        raise ValueError(f"every must be at least 1, got {every}")
    container, stream = _open(path)
    with container:
        time_base = Fraction(stream.time_base or Fraction(1, 1000))
        rate = stream.average_rate or stream.guessed_rate
        frame_ticks = max(1, round(1 / (Fraction(rate) * time_base))) if rate else 1
        tag_rotation = _stream_rotation(stream)
        last_pts: int | None = None
        decoded = 0
        for decoded, frame in enumerate(_decode(container, stream, path), start=1):
            index = decoded - 1
            pts = frame.pts if frame.pts is not None else index * frame_ticks
            if last_pts is not None and pts <= last_pts:
                pts = last_pts + 1
            last_pts = pts
            if index % every:
                continue
            turns = _quarter_turns(getattr(frame, "rotation", 0) or tag_rotation)
            upright = (frame.height, frame.width) if turns % 2 else (frame.width, frame.height)
            width, height = scaled_size(*upright, max_side)
            coded = (height, width) if turns % 2 else (width, height)
            if coded != (frame.width, frame.height):
                frame = frame.reformat(width=coded[0], height=coded[1], format="rgb24", interpolation="AREA")
            pixels = frame.to_ndarray(format="rgb24")  # [h, w, 3] as coded
            yield Frame(index=index, pts=pts, time_base=time_base, image=np.ascontiguousarray(np.rot90(pixels, turns)))
        declared = int(stream.frames or 0)
        if declared and decoded < declared:
            raise DatasetError(
                f"{path}: truncated or corrupt video: its container declares {declared} frames but only {decoded} "
                "could be decoded"
            )
    if decoded == 0:
        raise DatasetError(f"{path}: no frame could be decoded; the file is empty or corrupt")


# -- temporal smoothing -------------------------------------------------------------------------------------------


def scene_signature(image: np.ndarray) -> np.ndarray:
    """A frame's 32×32 grey thumbnail in [0, 1] (box-filtered): what `scene_change` compares."""
    grey = Image.fromarray(image).convert("L").resize((_SIGNATURE_SIDE, _SIGNATURE_SIDE), Image.Resampling.BOX)
    return np.asarray(grey, dtype=np.float32) / 255.0


def scene_change(previous: np.ndarray, current: np.ndarray) -> float:
    """The mean absolute difference of two `scene_signature`s: near 0 within a shot, large at a cut."""
    return float(np.abs(current - previous).mean())


class TemporalSmoother:
    """An exponential moving average of per-frame logits that starts again at each scene cut.

    The average after frame t is `alpha · average(t-1) + (1 - alpha) · logits(t)`: alpha 0 is no smoothing, 0.5
    weighs the current frame as much as all earlier ones together, and an object that appears takes about
    `1 / (1 - alpha)` frames to win its pixels. At a cut (`scene_change` of consecutive frames above
    `cut_threshold`) the average is dropped and restarts from the new frame's logits, so labels of the previous
    shot never bleed into the next one. Logits of another shape (another frame size or class list) restart it too.

    Args:
        alpha: Weight of the past, in [0, 1).
        cut_threshold: See `CUT_THRESHOLD`.

    Raises:
        ValueError: `alpha` outside [0, 1).
    """

    def __init__(self, alpha: float, cut_threshold: float = CUT_THRESHOLD) -> None:
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"the smoothing alpha must be in [0, 1) (0: none), got {alpha}")
        self.alpha = float(alpha)
        self.cut_threshold = float(cut_threshold)
        self.cuts = 0
        self._average: Tensor | None = None
        self._signature: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the past: the next frame starts the average."""
        self._average, self._signature = None, None

    def is_cut(self, signature: np.ndarray) -> bool:
        """Whether a frame of this `scene_signature` starts a new shot (compared with the previous frame's)."""
        return self._signature is not None and scene_change(self._signature, signature) > self.cut_threshold

    def __call__(self, logits: Tensor, signature: np.ndarray | None = None) -> Tensor:
        """Fold one frame's logits [1, K, h, w] into the average and return the average (the same shape).

        Args:
            logits: The frame's logits.
            signature: The frame's `scene_signature`; None: no cut detection for this frame.
        """
        if self.alpha == 0.0:
            return logits
        cut = signature is not None and self.is_cut(signature)
        self.cuts += int(cut)
        if cut or self._average is None or self._average.shape != logits.shape:
            self._average = logits.float().clone()
        else:
            self._average.mul_(self.alpha).add_(logits.float(), alpha=1.0 - self.alpha)
        if signature is not None:
            self._signature = signature
        return self._average


def smoothed_labels(
    backend: Any,
    image: Tensor,
    text_embeddings: Tensor | None,
    smoother: TemporalSmoother,
    signature: np.ndarray | None = None,
) -> Tensor:
    """Labels [1, H, W] of one frame [3, H, W] in [0, 1] from its logits averaged over time by `smoother`.

    `segment`'s exact fast path with the average in the middle: the image is padded by the model's rule, the
    backend's coarse logits (before the final upsampling: 16× fewer pixels to average) go through the smoother,
    and `upsampled_argmax` gives the labels. With alpha 0 they are exactly `segment`'s labels. A backend without
    coarse logits (an ONNX export of the full-size logits) has its full-size logits averaged instead.
    Call it without gradients (`torch.inference_mode`).
    """
    images = image.unsqueeze(0) if image.dim() == 3 else image
    images = images.to(device=backend.device, dtype=torch.float32)
    height, width = images.shape[-2:]
    padded = pad_to_multiple(images, backend.size_multiple, backend.pixel_mean)
    coarse_logits = getattr(backend, "coarse_logits", None)
    if coarse_logits is None:
        return smoother(backend.logits(padded, text_embeddings), signature).argmax(dim=1)[..., :height, :width]
    logits = smoother(coarse_logits(padded, text_embeddings), signature)  # [1, K, H/s, W/s]
    return upsampled_argmax(logits, padded.shape[-2:])[..., :height, :width]


# -- writing ------------------------------------------------------------------------------------------------------


def label_image(labels: np.ndarray, num_classes: int) -> Image.Image:
    """An index PNG's image of a label map: a palette image up to 256 classes (the overlay colours), else 16-bit."""
    if num_classes > 256:
        return Image.fromarray(labels.astype(np.uint16))
    image = Image.fromarray(labels.astype(np.uint8))
    image.putpalette(palette(256).reshape(-1).tolist())
    return image


def output_names(stem: str, labels: str = "video") -> dict[str, str]:
    """The file (or, for PNG labels, folder) names `segment_video` writes for a video named `stem`."""
    return {
        "overlay": f"{stem}_overlay.mp4",
        "labels": f"{stem}_labels.mkv" if labels == "video" else f"{stem}_labels",
        "areas": f"{stem}_areas.csv",
        "summary": f"{stem}.json",
    }


class _Staging:
    """Outputs under hidden temporary names in the output folder, renamed together on success, removed on failure."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.staged: list[tuple[Path, Path]] = []

    def path(self, name: str) -> Path:
        temporary = self.out_dir / f".{name}.{secrets.token_hex(4)}.tmp"
        self.staged.append((temporary, self.out_dir / name))
        return temporary

    def commit(self) -> None:
        """Rename every output, in the order staged (the summary last: it marks the set complete)."""
        for temporary, final in self.staged:
            if final.is_dir() and not final.is_symlink():
                shutil.rmtree(final)
            os.replace(temporary, final)

    def discard(self) -> None:
        for temporary, _ in self.staged:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(temporary) if temporary.is_dir() else temporary.unlink()


def _overlay_codec() -> str:
    """libx264 where the wheel has it (H.264 plays everywhere), else FFmpeg's own MPEG-4 Part 2 encoder."""
    return "libx264" if "libx264" in _av().codecs_available else "mpeg4"


class _Encoder:
    """One output video stream, fed frames with their own timestamps (variable frame rates are kept)."""

    def __init__(
        self,
        path: Path,
        container_format: str,
        codec: str,
        size: tuple[int, int],
        pixel_format: str,
        time_base: Fraction,
        rate: Fraction | None,
        options: dict[str, str] | None = None,
    ) -> None:
        av = _av()
        self.av = av
        self.container = av.open(os.fspath(path), mode="w", format=container_format)
        self.stream = self.container.add_stream(codec)
        self.stream.width, self.stream.height = size
        self.stream.pix_fmt = pixel_format
        # Each frame's own timestamp, not a constant rate: the stream and the encoder count in the input's unit.
        self.stream.time_base = time_base
        self.stream.codec_context.time_base = time_base
        if rate:
            self.stream.codec_context.framerate = rate  # rate control's hint; the timestamps still rule
        if options:
            self.stream.codec_context.options = options
        self.time_base = time_base

    def write(self, pixels: np.ndarray, pixel_format: str, pts: int) -> None:
        frame = self.av.VideoFrame.from_ndarray(pixels, format=pixel_format)
        frame.pts, frame.time_base = pts, self.time_base
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.container.close()


def _even(pixels: np.ndarray) -> np.ndarray:
    """Pad an RGB frame [H, W, 3] to even sides by repeating its last row or column (yuv420p needs even sides)."""
    pad_h, pad_w = pixels.shape[0] % 2, pixels.shape[1] % 2
    return np.pad(pixels, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge") if pad_h or pad_w else pixels


@dataclasses.dataclass(frozen=True)
class VideoResult:
    """What `segment_video` wrote.

    Attributes:
        frames: Frames segmented.
        width: Their width (after rotation and `max_side`).
        height: Their height.
        files: The outputs by kind ("overlay", "labels", "areas", "summary").
        areas: Mean share of the pixels of each class over the frames, largest first.
        cuts: Scene cuts the smoother restarted at.
    """

    frames: int
    width: int
    height: int
    files: dict[str, Path]
    areas: dict[str, float]
    cuts: int


def segment_video(
    predictor: Predictor,
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    stem: str | None = None,
    classes: Sequence[str] | None = None,
    *,
    every: int = 1,
    max_side: int | None = None,
    smooth: float = 0.0,
    cut_threshold: float = CUT_THRESHOLD,
    labels: str = "video",
    mode: str = "whole",
    tta: bool = False,
    crop_size: int = 512,
    stride: int = 341,
    on_frame: Callable[[Frame], None] | None = None,
    ran_with: dict[str, Any] | None = None,
) -> VideoResult:
    """Segment a video file frame by frame and write its overlay video, labels and per-frame class areas.

    Args:
        predictor: The model.
        path: The video.
        out_dir: Output folder (created if missing); outputs already there under the same names are replaced.
        stem: Output name prefix; default: the video's file name without its extension.
        classes: Class names; default: the model's.
        every: Segment every `every`-th frame only (the outputs hold those frames, at their own times).
        max_side: Downscale frames so that the long side is at most this before the model; the outputs have that
            size. None: full size.
        smooth: `TemporalSmoother` alpha (0: none). Needs `mode="whole"` without `tta`.
        cut_threshold: Scene-cut threshold of the smoother.
        labels: "video" (`<stem>_labels.mkv`, lossless FFV1) or "png" (a folder of index PNGs).
        mode: "whole" or "slide", as `Predictor.predict`.
        tta: Flip test-time augmentation, as `Predictor.predict`.
        crop_size: Window side for "slide".
        stride: Window stride for "slide".
        on_frame: Called after each segmented frame (progress).
        ran_with: Extra fields for the JSON summary.

    Returns:
        What was written.

    Raises:
        DatasetError: The video is missing, unreadable, corrupt or truncated, or its frames are too large for the
            model; nothing is left in `out_dir`.
        ValueError: Bad options or class list.
        UserError: PyAV is not installed.
    """
    if labels not in LABEL_FORMATS:
        raise ValueError(f"labels must be one of {', '.join(LABEL_FORMATS)}, got {labels!r}")
    if every < 1:
        raise ValueError(f"every must be at least 1, got {every}")
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be positive, got {max_side}")
    smoother = TemporalSmoother(smooth, cut_threshold)
    if smooth and (mode != "whole" or tta):
        raise ValueError("temporal smoothing averages one whole-image pass per frame: use it without slide or tta")
    names, text_embeddings = predictor.embed_classes(classes)
    path, out_dir = Path(path), Path(out_dir)
    stem = stem or path.stem
    info = probe_video(path)
    width, height = scaled_size(info.width, info.height, max_side)
    limits = predictor.size_limits()
    if limits is not None:
        check_size(width, height, limits, source=str(path), error=DatasetError)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {kind: out_dir / name for kind, name in output_names(stem, labels).items()}
    staging = _Staging(out_dir)
    encoders: list[_Encoder] = []
    try:
        overlay_codec = _overlay_codec()
        overlay_size = (width + width % 2, height + height % 2)
        overlay_options = {"crf": "20", "preset": "veryfast"} if overlay_codec == "libx264" else {"qscale": "3"}
        overlay_video = _Encoder(
            staging.path(files["overlay"].name),
            _OVERLAY_CONTAINER,
            overlay_codec,
            overlay_size,
            "yuv420p",
            info.time_base,
            info.rate,
            overlay_options,
        )
        encoders.append(overlay_video)
        label_format = "gray" if len(names) <= 256 else "gray16le"
        label_video: _Encoder | None = None
        if labels == "video":
            label_path = staging.path(files["labels"].name)
            label_video = _Encoder(
                label_path, _LABEL_CONTAINER, _LABEL_CODEC, (width, height), label_format, info.time_base, info.rate
            )
            encoders.append(label_video)
        else:
            label_dir = staging.path(files["labels"].name)
            label_dir.mkdir()
        areas_path = staging.path(files["areas"].name)
        totals = np.zeros(len(names), dtype=np.float64)
        count = 0
        with areas_path.open("w", newline="", encoding="utf-8") as areas_file:
            table = csv.writer(areas_file)
            table.writerow(["frame", "time_s", *names])
            for frame in read_frames(path, every=every, max_side=max_side):
                image = to_tensor(frame.image)
                with torch.inference_mode():
                    if smoother.alpha:
                        signature = scene_signature(frame.image)
                        label_map = smoothed_labels(predictor.backend, image, text_embeddings, smoother, signature)
                        label_map = label_map[0].cpu().numpy()
                    else:
                        prediction = predictor.predict(
                            image, classes=names, mode=mode, tta=tta, crop_size=crop_size, stride=stride
                        )
                        label_map = prediction.labels
                rendered = np.asarray(overlay(frame.image, label_map, names, alpha=_OVERLAY_ALPHA, legend=False))
                overlay_video.write(_even(rendered), "rgb24", frame.pts)
                if label_video is not None:
                    pixels = label_map.astype(np.uint8 if label_format == "gray" else np.uint16)
                    label_video.write(pixels, label_format, frame.pts)
                else:
                    label_image(label_map, len(names)).save(label_dir / f"{frame.index:06d}.png")
                shares = np.bincount(label_map.ravel(), minlength=len(names))[: len(names)] / label_map.size
                totals += shares
                count += 1
                table.writerow([frame.index, f"{frame.time:.6f}", *(f"{share:.6f}" for share in shares)])
                if on_frame is not None:
                    on_frame(frame)
        for encoder in encoders:
            encoder.close()
        encoders.clear()
        means = totals / max(count, 1)
        order = np.argsort(-means, kind="stable")
        areas = {names[index]: float(means[index]) for index in order if means[index] > 0}
        summary = {
            "video": str(path),
            "width": width,
            "height": height,
            "source": {"width": info.width, "height": info.height, "rotation": info.rotation, "codec": info.codec},
            "frames": count,
            "every": every,
            "max_side": max_side,
            "smooth": smooth,
            "cut_threshold": cut_threshold if smooth else None,
            "scene_cuts": smoother.cuts,
            "overlay": files["overlay"].name,
            "overlay_codec": overlay_codec,
            "labels": files["labels"].name,
            "labels_format": f"{_LABEL_CODEC} {label_format}" if labels == "video" else "png",
            "areas": files["areas"].name,
            "label_names": list(names),
            "classes": areas,
            **(ran_with or {}),
        }
        summary_text = json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
        staging.path(files["summary"].name).write_text(summary_text, encoding="utf-8")
        staging.commit()
    except BaseException as error:
        for encoder in encoders:
            encoder.abort()
        staging.discard()
        av = _av()
        if isinstance(error, av.FFmpegError):
            raise DatasetError(f"{path}: could not write its outputs ({_ffmpeg_reason(error)})") from error
        raise
    return VideoResult(frames=count, width=width, height=height, files=files, areas=areas, cuts=smoother.cuts)
