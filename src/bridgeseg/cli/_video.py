"""`bridgeseg predict` on video files: the options, the up-front checks, the frame progress (`runtime.video` does
the work).

Videos are told from images by extension (`VIDEO_EXTENSIONS`), or by probing a file of another extension; images
keep going the image path. Every video is opened and its first frame decoded before the model is loaded: one that
FFmpeg cannot read stops the command with a one-line error (exit code 2) before anything is written. A video that
turns out corrupt or truncated later is reported and skipped (exit code 1), and leaves nothing in `--out`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bridgeseg.runtime.predictor import Predictor
    from bridgeseg.runtime.video import Frame, VideoInfo

logger = logging.getLogger("bridgeseg.cli.predict")

_LOG_EVERY_S = 5.0  # without a terminal: one progress line per video every this many seconds


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    """The video options of `bridgeseg predict` (images ignore them)."""
    group = parser.add_argument_group("videos", "options for video inputs (any container and codec FFmpeg reads)")
    group.add_argument("--every", type=_positive_int, default=1, metavar="N", help="segment every Nth frame only")
    group.add_argument(
        "--max-side",
        type=_positive_int,
        metavar="S",
        help="downscale frames so that the long side is at most S pixels before the model; the outputs have "
        "that size (default: full size)",
    )
    group.add_argument(
        "--smooth",
        type=_alpha,
        default=0.0,
        metavar="ALPHA",
        help="temporal smoothing: exponential moving average of the logits over frames with this weight of the "
        "past, in [0, 1), restarted at scene cuts (default: 0, none; e.g. 0.5)",
    )
    group.add_argument(
        "--cut-threshold",
        type=float,
        metavar="T",
        help="scene-cut threshold of --smooth: mean absolute difference of consecutive 32x32 grey thumbnails "
        "in [0, 1] (default: 0.12)",
    )
    group.add_argument(
        "--labels",
        choices=["video", "png"],
        default="video",
        help="labels as a lossless video <name>_labels.mkv (FFV1, grey level = class index) or a folder "
        "<name>_labels/ of index PNGs, one per frame (default: %(default)s)",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _alpha(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (0: no smoothing), got {text}")
    return value


def video_extensions() -> tuple[str, ...]:
    from bridgeseg.runtime.video import VIDEO_EXTENSIONS

    return VIDEO_EXTENSIONS


def split_videos(paths: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """The images and the videos among the inputs, each in order (`bridgeseg.runtime.video.is_video`)."""
    from bridgeseg.runtime.video import is_video

    images, videos = [], []
    for path in paths:
        (videos if is_video(path) else images).append(path)
    return images, videos


def output_names(stem: str, args: argparse.Namespace) -> list[str]:
    from bridgeseg.runtime.video import output_names

    return list(output_names(stem, args.labels).values())


def probe_videos(videos: Sequence[Path]) -> list[VideoInfo]:
    """Open every video and decode its first frame, before the model is loaded.

    Raises:
        DatasetError: A video FFmpeg cannot read (corrupt, truncated before its index, unsupported codec).
        UserError: PyAV is not installed.
    """
    from bridgeseg.runtime.video import probe_video

    return [probe_video(path) for path in videos]


def check_options(args: argparse.Namespace) -> None:
    """Refuse option combinations that cannot work, before the model is loaded.

    Raises:
        ValueError: --smooth with --mode slide or --tta.
    """
    if args.smooth and (args.mode != "whole" or args.tta):
        raise ValueError("--smooth averages one whole-image pass per frame: drop --mode slide and --tta, or --smooth")


def run_videos(
    args: argparse.Namespace,
    predictor: Predictor,
    videos: Sequence[Path],
    infos: Sequence[VideoInfo],
    stems: Sequence[str],
    classes: Sequence[str] | None,
    ran_with: dict[str, Any],
    report_error: Any,
) -> tuple[int, int]:
    """Segment each video into `args.out`.

    Returns:
        The numbers of videos written and failed.
    """
    from bridgeseg.errors import DatasetError, first_line
    from bridgeseg.runtime.video import CUT_THRESHOLD, segment_video

    written = failed = 0
    for path, info, stem in zip(videos, infos, stems, strict=True):
        expected = -(-info.frames // args.every) if info.frames else None
        progress = _FrameProgress(path, expected)
        try:
            result = segment_video(
                predictor,
                path,
                args.out,
                stem,
                classes,
                every=args.every,
                max_side=args.max_side,
                smooth=args.smooth,
                cut_threshold=CUT_THRESHOLD if args.cut_threshold is None else args.cut_threshold,
                labels=args.labels,
                mode=args.mode,
                tta=args.tta,
                crop_size=args.crop_size,
                stride=args.stride,
                on_frame=progress.advance,
                ran_with=ran_with,
            )
        except (DatasetError, OSError, RuntimeError) as error:  # this video only; the next one may work
            progress.close()
            logger.debug("video failed", exc_info=True)
            message = str(error) if isinstance(error, DatasetError) else f"{path}: {first_line(error)}"
            report_error(message)
            failed += 1
            continue
        progress.close()
        logger.info(
            "%s: %d frames of %dx%d in %.1f s (%.1f frames/s)",
            path,
            result.frames,
            result.width,
            result.height,
            progress.elapsed,
            result.frames / max(progress.elapsed, 1e-9),
        )
        written += 1
    return written, failed


class _FrameProgress:
    """Frames per second of one video: a tqdm bar on a terminal, a log line every few seconds otherwise."""

    def __init__(self, path: Path, total: int | None) -> None:
        from tqdm import tqdm

        self.path, self.total, self.done = path, total, 0
        self.started = self.logged = time.perf_counter()
        self.bar = tqdm(total=total, unit="frame", desc=path.name) if sys.stderr.isatty() else None

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def advance(self, frame: Frame) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update()
            return
        now = time.perf_counter()
        if now - self.logged >= _LOG_EVERY_S:
            self.logged = now
            of = f"/{self.total}" if self.total else ""
            rate = self.done / max(now - self.started, 1e-9)
            logger.info("%s: frame %d%s (%.1f frames/s)", self.path, self.done, of, rate)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
