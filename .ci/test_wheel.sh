#!/usr/bin/env bash
# The wheel works without the source tree: build it, install it into a fresh virtualenv outside the checkout, and
# from an empty folder run the demo and a shipped config by name (`make test-wheel`; about 5 minutes on 2 cores).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
base_python="$repo/.venv/bin/python"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "building the wheel"
# --no-build-isolation: setuptools comes from .venv, so the build needs no network.
"$base_python" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$work/dist" "$repo"
wheel="$(ls "$work"/dist/bridgeseg-*.whl)"
unzip -l "$wheel" | grep -q "bridgeseg/configs/mosaic/bridge_efficientnet_lite0_128x128_600.yaml"

echo "installing $(basename "$wheel") into a fresh virtualenv"
"$base_python" -m venv "$work/venv"
# torch and the other dependencies (5.5 GB) are not installed a second time: a .pth line puts .venv's
# site-packages on the fresh venv's path, after its own, and the wheel goes in with --no-deps. A plain path in a
# .pth file does not run the .pth files found there, so .venv's editable bridgeseg stays invisible.
base_site="$("$base_python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
site="$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$base_site" > "$site/zz_bridgeseg_ci_dependencies.pth"
"$work/venv/bin/python" -m pip install --quiet --no-deps "$wheel"

mkdir "$work/empty"
cd "$work/empty"
"$work/venv/bin/python" - "$site" <<'PY'
import sys

import bridgeseg

assert bridgeseg.__file__.startswith(sys.argv[1]), f"bridgeseg imported from {bridgeseg.__file__}, not the wheel"
PY
"$work/venv/bin/bridgeseg" --version
start=$SECONDS
"$work/venv/bin/bridgeseg" demo --quick
echo "bridgeseg demo --quick: $((SECONDS - start)) s"
start=$SECONDS
"$work/venv/bin/bridgeseg" fit --config mosaic/bridge_efficientnet_lite0_128x128_600.yaml --trainer.max_steps 2 \
    --data.num_workers 0 --trainer.enable_progress_bar false
echo "bridgeseg fit --config mosaic/...yaml --trainer.max_steps 2: $((SECONDS - start)) s"
test -f outputs/demo-quick/model/model.safetensors
test -f runs/mosaic/bridge_efficientnet_lite0_128x128_600/checkpoints/last.ckpt
echo "the wheel works outside the source tree"
