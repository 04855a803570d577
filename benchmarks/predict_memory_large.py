"""Peak memory of `bridgeseg predict` on one 25-megapixel JPEG, per inference mode.

Generates a 4992 × 4992 JPEG (24.9 Mpx, just under the model's 25 Mpx limit after padding), runs `bridgeseg
predict` on it in a fresh subprocess per mode (whole, whole + flip TTA, slide, slide + flip TTA) and records each
run's peak resident set size (`ru_maxrss` of the finished child, Linux: the kernel's VmHWM) and wall time.

    python benchmarks/predict_memory_large.py --checkpoint outputs/demo/model [--modes whole slide] [--label after]

The table in `benchmarks/results/predict_memory_large.md` puts a run on the parent commit of the bounded-memory
change (`--label before`) beside one after it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

MODES: dict[str, tuple[str, ...]] = {
    "whole": ("--mode", "whole"),
    "whole + tta": ("--mode", "whole", "--tta"),
    "slide": ("--mode", "slide"),
    "slide + tta": ("--mode", "slide", "--tta"),
}
SIDE = 4992  # a multiple of 32: no padding, so the processed area is the image's, 24.9 Mpx


def make_image(path: Path, side: int = SIDE, seed: int = 0) -> None:
    """A smooth random-texture JPEG of `side` × `side` pixels (regions, not noise, as a photo would have)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(side // 64, side // 64, 3), dtype=np.uint8)
    Image.fromarray(small).resize((side, side), Image.BILINEAR).save(path, quality=90)


def run_child(command: list[str]) -> tuple[int, float, float]:
    """Run `command` in a wrapper process that reports the peak RSS of its one child.

    `RUSAGE_CHILDREN` holds the largest peak of all the finished children of a process, so each command runs under
    its own short-lived wrapper: the figure is that command's alone.

    Returns:
        The exit code, the peak RSS in MiB and the wall time in seconds.
    """
    wrapper = (
        "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL); "
        "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    start = time.perf_counter()
    output = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    code, peak_kib = output.stdout.split()
    return int(code), int(peak_kib) / 1024, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="outputs/demo/model")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--label", default="", help="a name for this run in the report, e.g. 'before' or 'after'")
    # Beside, not over, the before/after table of predict_memory_large.md.
    parser.add_argument("--out", default="benchmarks/results/predict_memory_large_run")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "large.jpg"
        make_image(image)
        for name in args.modes:
            outputs = Path(tmp) / name.replace(" + ", "_")
            command = [sys.executable, "-m", "bridgeseg.cli", "predict", "--checkpoint", args.checkpoint]
            command += ["--out", str(outputs), *MODES[name], str(image)]
            code, peak_mib, wall = run_child(command)
            rows.append({"mode": name, "returncode": code, "peak_rss_mib": round(peak_mib), "wall_s": round(wall, 1)})
            print(json.dumps(rows[-1]), flush=True)
    result = {
        "label": args.label,
        "image": f"{SIDE}x{SIDE} JPEG",
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "ru_maxrss_self_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "runs": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    table = "\n".join(
        f"| {row['mode']} | {row['returncode']} | {row['peak_rss_mib']} | {row['wall_s']} |" for row in rows
    )
    title = f"`bridgeseg predict` on one {SIDE}×{SIDE} JPEG ({SIDE * SIDE / 1e6:.1f} Mpx)"
    command = f"python benchmarks/predict_memory_large.py --checkpoint {args.checkpoint}"
    summary = (
        f"# {title}{f': {args.label}' * bool(args.label)}\n\n"
        f"`OMP_NUM_THREADS={result['threads']} {command}`\n\n"
        "| mode | exit code | peak RSS (MiB) | wall (s) |\n|---|---:|---:|---:|\n"
        f"{table}\n\n"
        "Peak RSS is the kernel's high-water mark of the `bridgeseg predict` process (`ru_maxrss`), one fresh process\n"
        "per mode; the wall time includes starting Python and loading the model.\n"
    )
    out.with_suffix(".md").write_text(summary)
    print(summary)
    return 0 if all(row["returncode"] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
