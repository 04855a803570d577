"""`bridgeseg predict`: segment image files, folders or globs with any class list.

For each image `<stem>` it writes `<out>/<stem>_mask.png` (class indices; a palette PNG, or 16-bit beyond 256
classes), `<out>/<stem>_overlay.png` (colours and a legend) and `<out>/<stem>.json` (size and the share of each
class present). Unreadable images, images too large for the model as it would process them (padded to its
size multiple), and images whose logits would exceed the budget for the class list (`bridgeseg.budget`) are reported
and skipped, before they are decoded. On a terminal a progress bar counts the images; otherwise (a log file,
CI) one line is logged per image.

It never replaces a file it did not write: existing outputs are refused before the model is loaded unless
`--overwrite` is given, and an `--out` that is the folder of one of the inputs is refused (its outputs would mix
with the inputs, replace files such as a ground-truth `x_mask.png`, and be segmented as inputs by the next run).
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bridgeseg.cli import _video
from bridgeseg.cli._options import add_checkpoint_argument, check_device
from bridgeseg.io import check_output_folder, refuse_existing, write_atomically
from bridgeseg.options import DEFAULT_PRECISION, MODES, PRECISIONS
from bridgeseg.runtime import RUNTIMES

# The parser is built without torch (`bridgeseg --help` stays fast); the library comes with the command's run.
if TYPE_CHECKING:
    import numpy as np

    from bridgeseg.runtime.predictor import Prediction, Predictor

logger = logging.getLogger(__name__)

_MAX_STEM_LENGTH = 100


def _predict_extensions() -> tuple[str, ...]:
    """Every format `bridgeseg serve` takes: a file given by name and a folder's files are read alike."""
    from bridgeseg.images import IMAGE_EXTENSIONS

    return (*IMAGE_EXTENSIONS, ".webp", ".gif")


def _input_extensions() -> tuple[str, ...]:
    """What a folder or a glob contributes: images and videos."""
    return (*_predict_extensions(), *_video.video_extensions())


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("predict", help="segment images, videos, folders or globs with any class list")
    parser.add_argument("images", nargs="+", help="image or video files, folders or glob patterns")
    add_checkpoint_argument(parser, "model folder, .safetensors, .ckpt or .onnx")
    parser.add_argument(
        "--out", required=True, help="output folder (nothing is written outside it; not an input's folder)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that already exist in --out")
    parser.add_argument(
        "--classes",
        help='comma-separated class names, e.g. "sky,road,car"; quote a name holding a comma: \'"salt, pepper",cat\' '
        "(default: the model's)",
    )
    parser.add_argument("--mode", choices=list(MODES), default="whole")
    parser.add_argument("--crop-size", type=int, default=512, help="window side for --mode slide")
    parser.add_argument("--stride", type=int, default=341, help="window stride for --mode slide")
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    parser.add_argument(
        "--runtime",
        choices=list(RUNTIMES),
        help="default: from the file: .onnx onnx, .xml openvino, .pte executorch, else torch; an .onnx file also runs "
        "on openvino",
    )
    parser.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default=DEFAULT_PRECISION,
        help="PyTorch forward precision: fp32, the same labels on every CPU; bf16 autocast (some labels change; "
        "slower than fp32 where the CPU emulates it); auto: bf16 on CPUs with native bf16 (AVX512-BF16 or AMX), "
        "fp32 elsewhere (default: %(default)s)",
    )
    parser.add_argument("--device", default="cpu")
    _video.add_video_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Segment every image, one at a time, then every video, frame by frame (`bridgeseg.cli._video`).

    Returns:
        0 when every input was segmented, 1 when some failed.

    Raises:
        CheckpointError: The checkpoint cannot be loaded.
        ValueError: No image was found; the class list, device or options are invalid; `--out` is an input's
            folder, or holds outputs already and `--overwrite` was not given; a video cannot be read.
    """
    from bridgeseg.errors import first_line
    from bridgeseg.images import load_image
    from bridgeseg.visualize import rgb_array
    from bridgeseg.vocabulary import parse_class_list

    classes = parse_class_list(args.classes)
    inputs, problems = _collect_images(args.images)
    if not inputs:
        raise ValueError(f"no images found: {'; '.join(problems)}")
    out_dir = Path(args.out)
    stems = _output_stems(inputs)
    images, videos = _video.split_videos(inputs)
    image_stems = [stem for path, stem in zip(inputs, stems, strict=True) if path in images]
    video_stems = [stem for path, stem in zip(inputs, stems, strict=True) if path in videos]
    _check_out_dir(out_dir, inputs, _all_output_names(args, inputs, stems, videos), args.overwrite)
    _video.check_options(args)
    video_infos = _video.probe_videos(videos)  # an unreadable video stops the command before the model loads
    inputs, stems = images, image_stems
    predictor = _load(args)
    # Said once on screen and recorded in every JSON: the labels depend on the runtime and the precision.
    ran_with = {"runtime": predictor.runtime, "precision": predictor.precision}
    logger.info("segmenting with %s (%s runtime, %s)", args.checkpoint, predictor.runtime, predictor.precision)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = _Progress(len(inputs))
    for problem in problems:
        progress.error(problem)
    written = failed = 0
    for path, stem in zip(inputs, stems, strict=True):
        try:
            # The logits budget depends on the image's size: checked on its header, before it is decoded.
            predictor.check_cost(path, classes, mode=args.mode, tta=args.tta, crop_size=args.crop_size)
            image = load_image(path, limits=predictor.size_limits())
        except (ValueError, OSError) as error:
            progress.error(str(error) if str(path) in str(error) else f"{path}: {error}")
            failed += 1
            progress.advance(path, ok=False)
            continue
        try:
            prediction = predictor.predict(
                image, classes=classes, mode=args.mode, tta=args.tta, crop_size=args.crop_size, stride=args.stride
            )
        except RuntimeError as error:  # e.g. out of memory on a huge image; the next one may fit
            logger.debug("prediction failed", exc_info=True)
            progress.error(f"{path}: prediction failed ({first_line(error)})")
            failed += 1
            progress.advance(path, ok=False)
            continue
        # The overlay needs 8-bit colours only: the float image (four times larger) is freed before it is drawn.
        image = rgb_array(image)
        # A ValueError (bad class list or options) would fail for every image, so it ends the command.
        _write_outputs(out_dir, stem, path, image, prediction, ran_with)
        written += 1
        progress.advance(path, ok=True)
        # Free this image's buffers before the next one is decoded: peak memory stays one image's worth.
        del image, prediction
    progress.close()
    if videos:
        videos_written, videos_failed = _video.run_videos(
            args, predictor, videos, video_infos, video_stems, classes, ran_with, progress.error
        )
        written, failed = written + videos_written, failed + videos_failed
    print(f"wrote results for {written} of {written + failed} {'inputs' if videos else 'images'} to {out_dir}")
    if failed or problems:
        print(f"{failed + len(problems)} input(s) failed; see the errors above", file=sys.stderr)
        return 1
    return 0


class _Progress:
    """A tqdm bar on a terminal; one log line per image otherwise, so log files and CI show progress too."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.total = total
        self.done = 0
        self.started = time.perf_counter()
        self.bar = tqdm(total=total, unit="image", desc="predict") if sys.stderr.isatty() else None

    def error(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(f"error: {message}", file=sys.stderr)
        else:
            print(f"error: {message}", file=sys.stderr)

    def advance(self, path: Path, ok: bool) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update()
            return
        elapsed = time.perf_counter() - self.started
        logger.info(
            "[%d/%d] %s %s (%.1f s since the first image)",
            self.done,
            self.total,
            path,
            "done" if ok else "failed",
            elapsed,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _load(args: argparse.Namespace) -> Predictor:
    from bridgeseg.runtime import runtime_for_path
    from bridgeseg.runtime.predictor import Predictor

    runtime = args.runtime or runtime_for_path(args.checkpoint)
    if runtime == "torch" and runtime_for_path(args.checkpoint) != "torch":
        runtime = runtime_for_path(args.checkpoint)
        logger.info("%s is an exported model: using the %s runtime", args.checkpoint, runtime)
    try:
        return Predictor.from_checkpoint(
            args.checkpoint, device=check_device(args.device), runtime=runtime, precision=args.precision
        )
    except ImportError as error:
        raise ValueError(
            f"the {runtime} runtime is unavailable ({error}); install it with `pip install bridgeseg[{runtime}]`"
        ) from error


def _collect_images(patterns: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Image files of the arguments (files as given, folders' images, glob matches), each once, in order.

    Returns:
        The files, and one problem line for each argument that gave no image.
    """
    extensions = _input_extensions()
    found: dict[Path, Path] = {}
    problems: list[str] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            images = [c for c in sorted(path.iterdir()) if c.is_file() and c.suffix.lower() in extensions]
            if not images:
                problems.append(f"{pattern}: no image in this folder ({', '.join(extensions)})")
        elif path.is_file():
            images = [path]
        elif path.exists():
            # A FIFO, socket or device: reading it would block or never end.
            images = []
            problems.append(f"{pattern}: not a regular file (a FIFO, socket or device); give image files or folders")
        elif glob.has_magic(pattern):
            matches = (Path(match) for match in sorted(glob.glob(pattern)))
            images = [m for m in matches if m.is_file() and m.suffix.lower() in extensions]
            if not images:
                problems.append(f"{pattern}: no image matches this pattern")
        else:
            images = []
            problems.append(f"{pattern}: no such file or folder")
        for image in images:
            found.setdefault(image.resolve(), image)
    return list(found.values()), problems


def _output_names(stem: str) -> tuple[str, str, str]:
    """The mask, overlay and JSON file names of one input."""
    return f"{stem}_mask.png", f"{stem}_overlay.png", f"{stem}.json"


def _all_output_names(
    args: argparse.Namespace, inputs: Sequence[Path], stems: Sequence[str], videos: Sequence[Path]
) -> list[str]:
    """Every file (or folder) name the command writes: an image's three, a video's four."""
    names: list[str] = []
    for path, stem in zip(inputs, stems, strict=True):
        names += _video.output_names(stem, args) if path in videos else _output_names(stem)
    return names


def _check_out_dir(out_dir: Path, inputs: Sequence[Path], names: Sequence[str], overwrite: bool) -> None:
    """Refuse an `--out` that is a file or an input's folder, or that holds outputs already (unless `overwrite`).

    Raises:
        ValueError: Any of these; nothing has been written.
    """
    check_output_folder(out_dir)
    resolved = out_dir.resolve()
    for path in inputs:
        if path.resolve().parent == resolved:
            raise ValueError(
                f"--out {out_dir} is the folder of the input {path}: the results would replace files there (such as "
                "a ground-truth <name>_mask.png) and be read as inputs next time; choose another --out folder"
            )
    refuse_existing([out_dir / name for name in names], overwrite, "--out", folder=out_dir)


def _output_stems(paths: Sequence[Path]) -> list[str]:
    """A safe, distinct output name per input: no separators or parent references, suffixes on collisions."""
    used: set[str] = set()
    stems = []
    for path in paths:
        base = _sanitize_stem(path.name)
        stem, number = base, 1
        # Case-insensitive: on macOS and Windows "A" and "a" are the same file.
        while stem.casefold() in used:
            stem = f"{base}_{number}"
            number += 1
        used.add(stem.casefold())
        stems.append(stem)
    return stems


def _sanitize_stem(name: str) -> str:
    stem = Path(name).stem if Path(name).suffix.lower() in _input_extensions() else name
    stem = re.sub(r"[^\w.-]+", "_", stem)
    # No hidden files, no "." or "..", nothing that reads as an option.
    stem = stem.strip("._-")[:_MAX_STEM_LENGTH]
    return stem or "image"


def _write_outputs(
    out_dir: Path, stem: str, path: Path, image: np.ndarray, prediction: Prediction, ran_with: dict[str, str]
) -> None:
    import numpy as np
    from PIL import Image

    from bridgeseg.visualize import overlay, palette

    labels = prediction.labels
    num_classes = len(prediction.classes)
    if num_classes <= 256:
        mask = Image.fromarray(labels.astype(np.uint8))
        mask.putpalette(palette(256).reshape(-1).tolist())
    else:
        mask = Image.fromarray(labels.astype(np.uint16))
    mask_path, overlay_path, json_path = (out_dir / name for name in _output_names(stem))
    for target in (mask_path, overlay_path, json_path):
        # The stems are sanitised; this guards the invariant.
        if target.resolve().parent != out_dir.resolve():
            raise ValueError(f"refusing to write {target} outside {out_dir}")
    write_atomically(mask_path, lambda file: mask.save(file, format="PNG"))
    rendered = overlay(image, labels, prediction.classes)
    write_atomically(overlay_path, lambda file: rendered.save(file, format="PNG"))
    summary = {
        "image": str(path),
        "width": int(labels.shape[1]),
        "height": int(labels.shape[0]),
        "mask": mask_path.name,
        "overlay": overlay_path.name,
        "label_names": list(prediction.classes),
        "classes": prediction.areas(),
        **ran_with,
    }
    text = json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
    write_atomically(json_path, lambda file: file.write(text.encode("utf-8")))
