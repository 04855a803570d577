"""Memory of `bridgeseg predict` over many images: resident memory must stay flat after warm-up.

Generates N images of mixed sizes, runs `bridgeseg predict` on the folder in a subprocess, samples its resident
set size (VmRSS, Linux) as outputs appear, and reports the peak after warm-up against the level at warm-up.

    python benchmarks/predict_memory.py --checkpoint outputs/demo/model --num-images 1000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_images(folder: Path, count: int, seed: int = 0) -> None:
    """`count` random-texture images with sides between 48 and 320 px, as PNG and JPEG."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        height, width = (int(v) for v in rng.integers(48, 321, size=2))
        small = rng.integers(0, 256, size=(max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((width, height), Image.BILINEAR)
        image.save(folder / f"img_{index:04d}.{'png' if index % 2 else 'jpg'}")


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        return None
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="outputs/demo/model")
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100, help="images before the reference level is taken")
    parser.add_argument("--out", default="benchmarks/results/predict_memory")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        images, outputs = Path(tmp) / "images", Path(tmp) / "preds"
        make_images(images, args.num_images)
        command = [sys.executable, "-m", "bridgeseg.cli", "predict", "--checkpoint", args.checkpoint]
        command += ["--out", str(outputs), str(images)]
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples: list[tuple[int, float]] = []
        while process.poll() is None:
            rss = rss_mib(process.pid)
            done = len(list(outputs.glob("*.json"))) if outputs.exists() else 0
            if rss is not None:
                samples.append((done, rss))
            time.sleep(0.5)
        wall = time.perf_counter() - start
        written = len(list(outputs.glob("*.json")))
    # While images are processed: the last sample, once every output is written, is interpreter shutdown.
    after = [rss for done, rss in samples if args.warmup <= done < args.num_images]
    at_warmup = after[0] if after else float("nan")
    peak_after = max(after) if after else float("nan")
    result = {
        "num_images": args.num_images,
        "written": written,
        "returncode": process.returncode,
        "wall_s": round(wall, 1),
        "rss_at_warmup_mib": round(at_warmup, 1),
        "peak_rss_after_warmup_mib": round(peak_after, 1),
        "growth_after_warmup_pct": round(100 * (peak_after / at_warmup - 1), 2),
        "peak_rss_mib": round(max(rss for _, rss in samples), 1),
        "samples": samples,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    summary = (
        f"# `bridgeseg predict` memory over {args.num_images} images of mixed sizes (48–320 px)\n\n"
        f"`python benchmarks/predict_memory.py --checkpoint {args.checkpoint} --num-images {args.num_images}`\n\n"
        f"| images written | exit code | wall (s) | RSS after {args.warmup} images (MiB) | peak RSS after (MiB) "
        f"| growth | peak RSS incl. shutdown (MiB) |\n|---:|---:|---:|---:|---:|---:|---:|\n"
        f"| {written} | {process.returncode} | {wall:.0f} | {at_warmup:.0f} | {peak_after:.0f} "
        f"| {result['growth_after_warmup_pct']:+.1f} % | {result['peak_rss_mib']:.0f} |\n\n"
        "RSS is sampled every 0.5 s together with the number of outputs written; 'after' covers the samples taken\n"
        "while images were still being processed.\n"
    )
    out.with_suffix(".md").write_text(summary)
    print(summary)
    return 0 if written == args.num_images and result["growth_after_warmup_pct"] <= 10 else 1


if __name__ == "__main__":
    sys.exit(main())
