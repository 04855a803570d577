"""Temporal smoothing on video: flicker and mIoU against known labels, and the video path's frames/s.

Quality. A synthetic video whose every pixel's label is known: `--shots` held-out val mosaics
(`bridgeseg.data.mosaic.render_val_mosaics`, the images `generate_mosaic` writes for the demo's val split), each
filmed by a smooth pan-and-zoom crop path (`--frames-per-shot` frames of `--frame-size`², the crop resized
bilinearly, its mask with the same crop by nearest neighbour), shots joined by hard cuts. The frames get Gaussian
noise (`--noise`, in grey levels) and go through the real encode/decode path: H.264 at `--crf` (blocking and
ringing like a strong JPEG), decoded by `bridgeseg.runtime.video.read_frames`. The model's coarse logits are
computed once per frame and replayed to `smoothed_labels` for each alpha (the function `bridgeseg predict --smooth`
runs), with and without the scene-cut reset. Per configuration:

- mIoU per frame: the mean over classes present in the frame's truth or prediction, averaged over frames;
- flicker: of the pixels whose true label is the same in two consecutive frames of a shot, the share whose
  predicted label changes (pixel-weighted over all such pairs);
- the scene-change scores within shots and at cuts (what `CUT_THRESHOLD` is set from).

Speed (`--speed`). `segment_video` end to end (decode, model, overlay, H.264 + FFV1 encode, CSV) on a
`--speed-frames`-frame pan at 256² and 512², PyTorch fp32 with 1 and 2 threads, and ONNX Runtime with a
coarse-logits export made on the spot (`--onnx`), plus the model alone (`Predictor.predict` on the decoded frames).

Usage:
    python benchmarks/video_smoothing.py --checkpoint outputs/demo/model --speed --onnx \
        --out benchmarks/results/video_smoothing
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _results import script_main
from PIL import Image

from bridgeseg.data.mosaic import render_val_mosaics
from bridgeseg.images import to_tensor
from bridgeseg.models.prediction import pad_to_multiple
from bridgeseg.runtime.predictor import Predictor
from bridgeseg.runtime.video import (
    CUT_THRESHOLD,
    TemporalSmoother,
    read_frames,
    scene_change,
    scene_signature,
    segment_video,
    smoothed_labels,
)

logger = logging.getLogger("benchmarks.video_smoothing")

IGNORE = 255


# -- the synthetic video --------------------------------------------------------------------------------------------


def _smoothstep(t: float) -> float:
    return t * t * (3 - 2 * t)


def render_shot(
    image: np.ndarray, mask: np.ndarray, frames: int, size: int, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Frames [size, size, 3] and their masks of one pan-and-zoom shot over `image` (side S): the crop's side eases
    between two values in [0.6 S, 0.95 S] while its centre moves on a straight line."""
    side = image.shape[0]
    source, labels = Image.fromarray(image), Image.fromarray(mask)
    zoom_from, zoom_to = rng.uniform(0.6, 0.95, size=2) * side
    start, end = rng.uniform(0, 1, size=2), rng.uniform(0, 1, size=2)
    shot = []
    for index in range(frames):
        t = _smoothstep(index / max(frames - 1, 1))
        crop = zoom_from + (zoom_to - zoom_from) * t
        # The centre's position as a fraction of the room the crop leaves: the crop never leaves the image.
        fx, fy = start + (end - start) * t
        x0, y0 = fx * (side - crop), fy * (side - crop)
        box = (x0, y0, x0 + crop, y0 + crop)
        frame = source.resize((size, size), Image.Resampling.BILINEAR, box=box)
        truth = labels.resize((size, size), Image.Resampling.NEAREST, box=box)
        shot.append((np.asarray(frame), np.asarray(truth)))
    return shot


def encode(path: Path, frames: list[np.ndarray], crf: int, noise: float, rng: np.random.Generator) -> None:
    """H.264 (libx264, `crf`) at 25 frames/s after Gaussian noise of `noise` grey levels."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.codec_context.options = {"crf": str(crf), "preset": "veryfast"}
        for pixels in frames:
            noisy = pixels.astype(np.float32) + rng.normal(0.0, noise, pixels.shape) if noise else pixels
            frame = av.VideoFrame.from_ndarray(np.clip(noisy, 0, 255).round().astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


class _Replay:
    """A backend that answers with recorded coarse logits, in order: each alpha sees the same model outputs."""

    def __init__(self, backend: object, recorded: list[torch.Tensor]) -> None:
        self.size_multiple, self.pixel_mean, self.device = backend.size_multiple, backend.pixel_mean, backend.device
        self.recorded, self.position = recorded, 0

    def coarse_logits(self, images: torch.Tensor, text_embeddings: torch.Tensor | None) -> torch.Tensor:
        logits = self.recorded[self.position]
        self.position += 1
        return logits


# -- metrics --------------------------------------------------------------------------------------------------------


def confusion(prediction: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """[truth, prediction] pixel counts (ignored pixels excluded)."""
    valid = truth != IGNORE
    pairs = np.bincount(truth[valid] * num_classes + prediction[valid], minlength=num_classes**2)
    return pairs.reshape(num_classes, num_classes)


def miou(confusion: np.ndarray) -> float:
    """Mean IoU over the classes present in the truth or the prediction."""
    intersection = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = union > 0
    return float((intersection[present] / union[present]).mean()) if present.any() else 1.0


def flicker(predictions: list[np.ndarray], truths: list[np.ndarray], shot_starts: set[int]) -> float:
    """Share of the pixels with the same true label in consecutive frames of a shot whose prediction changes."""
    changed = stable = 0
    for index in range(1, len(predictions)):
        if index in shot_starts:
            continue
        same = (truths[index] == truths[index - 1]) & (truths[index] != IGNORE)
        changed += int((same & (predictions[index] != predictions[index - 1])).sum())
        stable += int(same.sum())
    return changed / max(stable, 1)


# -- runs -----------------------------------------------------------------------------------------------------------


def measure_smoothing(args: argparse.Namespace, predictor: Predictor, work: Path) -> dict:
    rng = np.random.default_rng(args.seed)
    mosaics = render_val_mosaics(args.shots, size=args.mosaic_size, seed=0)
    frames, truths, shot_starts = [], [], set()
    for image, mask in mosaics:
        shot_starts.add(len(frames))
        for frame, truth in render_shot(image, mask, args.frames_per_shot, args.frame_size, rng):
            frames.append(frame)
            truths.append(truth.astype(np.int64))
    clip = work / "synthetic.mp4"
    encode(clip, frames, args.crf, args.noise, rng)
    decoded = [frame.image for frame in read_frames(clip)]
    if len(decoded) != len(truths):
        raise RuntimeError(f"decoded {len(decoded)} frames of {len(truths)}")

    embeddings = predictor.backend.text_embeddings(None)
    images = [to_tensor(pixels) for pixels in decoded]
    started = time.perf_counter()
    with torch.inference_mode():
        recorded = [
            predictor.backend.coarse_logits(_padded(image[None], predictor.backend), embeddings) for image in images
        ]
    model_seconds = time.perf_counter() - started
    signatures = [scene_signature(pixels) for pixels in decoded]
    changes = [scene_change(signatures[i - 1], signatures[i]) for i in range(1, len(signatures))]
    within = [value for i, value in enumerate(changes, start=1) if i not in shot_starts]
    at_cuts = [value for i, value in enumerate(changes, start=1) if i in shot_starts]

    num_classes = len(predictor.classes)
    configs = [(alpha, CUT_THRESHOLD) for alpha in args.alphas]
    configs += [(alpha, math.inf) for alpha in args.alphas if alpha]  # no cut reset
    rows = []
    for alpha, threshold in configs:
        replay = _Replay(predictor.backend, recorded)
        smoother = TemporalSmoother(alpha, threshold)
        with torch.inference_mode():
            predictions = [
                smoothed_labels(replay, image, embeddings, smoother, signature)[0].numpy()
                for image, signature in zip(images, signatures, strict=True)
            ]
        confusions = [confusion(p, t, num_classes) for p, t in zip(predictions, truths, strict=True)]
        mious = [miou(matrix) for matrix in confusions]
        after_cut = [mious[start + offset] for start in shot_starts for offset in range(3)]
        rows.append(
            {
                "alpha": alpha,
                "cut_reset": math.isfinite(threshold),
                "miou": 100 * float(np.mean(mious)),
                "miou_all_pixels": 100 * miou(np.sum(confusions, axis=0)),
                "miou_first_3_frames_of_shots": 100 * float(np.mean(after_cut)),
                "flicker": 100 * flicker(predictions, truths, shot_starts),
                "cuts_detected": smoother.cuts,
            }
        )
        logger.info("%s", rows[-1])
    return {
        "frames": len(frames),
        "shots": args.shots,
        "frame_size": args.frame_size,
        "model_frames_per_s": len(frames) / model_seconds,
        "scene_change_within_shots": {"median": float(np.median(within)), "max": float(np.max(within))},
        "scene_change_at_cuts": {"min": float(np.min(at_cuts)), "median": float(np.median(at_cuts))},
        "rows": rows,
    }


def _padded(images: torch.Tensor, backend: object) -> torch.Tensor:
    return pad_to_multiple(images, backend.size_multiple, backend.pixel_mean)


def measure_speed(args: argparse.Namespace, work: Path) -> list[dict]:
    rng = np.random.default_rng(args.seed)
    (image, mask), *_ = render_val_mosaics(1, size=args.mosaic_size, seed=0)
    onnx_path = None
    if args.onnx:
        from bridgeseg.checkpoints import load_model
        from bridgeseg.runtime.onnx import export_onnx

        onnx_path = export_onnx(load_model(args.checkpoint), work / "model.onnx", output="coarse_logits")
    rows = []
    for size in args.speed_sizes:
        frames = [frame for frame, _ in render_shot(image, mask, args.speed_frames, size, rng)]
        clip = work / f"pan_{size}.mp4"
        encode(clip, frames, crf=23, noise=0.0, rng=rng)
        runtimes = [("torch", args.checkpoint)] + ([("onnx", onnx_path)] if onnx_path else [])
        for runtime, path in runtimes:
            for threads in args.threads:
                torch.set_num_threads(threads)
                predictor = Predictor.from_checkpoint(path, runtime=runtime, threads=threads)
                decoded = [frame.image for frame in read_frames(clip)]
                predictor.predict(decoded[0])  # warm-up: the optimised copy, ONNX Runtime's first run
                started = time.perf_counter()
                for pixels in decoded:
                    predictor.predict(pixels)
                model_only = len(decoded) / (time.perf_counter() - started)
                for smooth in (0.0, 0.7):
                    started = time.perf_counter()
                    result = segment_video(predictor, clip, work / "out", smooth=smooth)
                    end_to_end = result.frames / (time.perf_counter() - started)
                    rows.append(
                        {
                            "size": size,
                            "runtime": runtime,
                            "threads": threads,
                            "smooth": smooth,
                            "model_frames_per_s": model_only,
                            "video_frames_per_s": end_to_end,
                        }
                    )
                    logger.info("%s", rows[-1])
    torch.set_num_threads(1)
    return rows


def _cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return sorted(set(re.findall(r"\b(avx512_bf16|avx512_vnni|amx_bf16|avx2)\b", text)))


def _cpu_name() -> str:
    try:
        match = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    except OSError:
        match = None
    return match.group(1).strip() if match else platform.processor() or "unknown"


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    predictor = Predictor.from_checkpoint(args.checkpoint)
    with tempfile.TemporaryDirectory(prefix="video_smoothing_") as folder:
        work = Path(folder)
        summary = {
            "command": args.command,
            "date": datetime.date.today().isoformat(),
            "checkpoint": str(args.checkpoint),
            "model_note": args.model_note,
            "cpu": _cpu_name(),
            "cpu_flags": _cpu_flags(),
            "torch": torch.__version__,
            "cut_threshold": CUT_THRESHOLD,
            "settings": {
                "shots": args.shots,
                "frames_per_shot": args.frames_per_shot,
                "frame_size": args.frame_size,
                "mosaic_size": args.mosaic_size,
                "crf": args.crf,
                "noise": args.noise,
            },
            "smoothing": measure_smoothing(args, predictor, work),
        }
        if args.speed:
            summary["speed"] = measure_speed(args, work)
    return summary


def to_markdown(summary: dict) -> str:
    smoothing = summary["smoothing"]
    settings = summary["settings"]
    lines = [
        "# Temporal smoothing on video (`benchmarks/video_smoothing.py`)",
        "",
        f"`{summary['command']}` — {summary['date']}, {summary['cpu']} (flags: {', '.join(summary['cpu_flags'])}), "
        f"torch {summary['torch']}.",
        "",
        f"Model: `{summary['checkpoint']}`{' — ' + summary['model_note'] if summary['model_note'] else ''}.",
        "",
        f"Synthetic video: {settings['shots']} shots × {settings['frames_per_shot']} frames of "
        f"{settings['frame_size']}² (pan and zoom over held-out {settings['mosaic_size']}² val mosaics, hard cuts "
        f"between shots), Gaussian noise σ={settings['noise']:g}, H.264 CRF {settings['crf']}, decoded by "
        "`read_frames`. mIoU per frame: over the classes in the frame's truth or prediction, averaged over frames "
        "(a stray class costs a frame a whole 0); all pixels: one confusion matrix over every frame, as validation "
        "counts. Flicker: share of the pixels whose true label is unchanged between consecutive frames of a "
        "shot but whose predicted label changes.",
        "",
        "| alpha | cut reset | mIoU per frame | mIoU, all pixels | mIoU, 3 first frames of shots | flicker | cuts |",
        "|---:|:---:|---:|---:|---:|---:|---:|",
    ]
    for row in smoothing["rows"]:
        lines.append(
            f"| {row['alpha']:g} | {'yes' if row['cut_reset'] else 'no'} | {row['miou']:.2f} | "
            f"{row['miou_all_pixels']:.2f} | "
            f"{row['miou_first_3_frames_of_shots']:.2f} | {row['flicker']:.2f} % | "
            f"{row['cuts_detected'] if row['alpha'] and row['cut_reset'] else '–'} |"
        )
    within, cuts = smoothing["scene_change_within_shots"], smoothing["scene_change_at_cuts"]
    lines += [
        "",
        f"Scene change (mean |Δ| of 32×32 grey thumbnails): within shots median {within['median']:.3f}, max "
        f"{within['max']:.3f}; at cuts min {cuts['min']:.3f}, median {cuts['median']:.3f}; threshold "
        f"{summary['cut_threshold']:g}.",
    ]
    if "speed" in summary:
        lines += [
            "",
            "## Frames per second",
            "",
            "`segment_video` end to end (decode, model, overlay, H.264 + FFV1 encode, CSV) and the model alone "
            "(`Predictor.predict` on decoded frames), fp32.",
            "",
            "| size | runtime | threads | smooth | model frames/s | video frames/s |",
            "|---:|:---|---:|---:|---:|---:|",
        ]
        for row in summary["speed"]:
            lines.append(
                f"| {row['size']}² | {row['runtime']} | {row['threads']} | {row['smooth']:g} | "
                f"{row['model_frames_per_s']:.1f} | {row['video_frames_per_s']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("outputs/demo/model"))
    parser.add_argument("--model-note", default="", help="how the model was trained, for the record")
    parser.add_argument("--shots", type=int, default=6)
    parser.add_argument("--frames-per-shot", type=int, default=32)
    parser.add_argument("--frame-size", type=int, default=160)
    parser.add_argument("--mosaic-size", type=int, default=192, help="the demo's mosaic size")
    parser.add_argument("--crf", type=int, default=30)
    parser.add_argument("--noise", type=float, default=4.0)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7, 0.8, 0.9])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speed", action="store_true", help="also measure frames/s")
    parser.add_argument("--speed-sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--speed-frames", type=int, default=24)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--onnx", action="store_true", help="also ONNX Runtime (a coarse-logits export made here)")
    parser.add_argument("--out", default="benchmarks/results/video_smoothing")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(script_main("video_smoothing.py", parse_args, run, to_markdown))
