"""`bridgeseg --version` and `--help` answer without importing torch: the heavy imports wait for a command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# In a fresh interpreter: this test process has imported torch long ago.
_PROBE = """
import contextlib, io, json, sys
from bridgeseg.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main({argv!r})
    except SystemExit as exit:
        code = exit.code
heavy = sorted(name for name in ("torch", "timm", "lightning", "transformers", "onnxruntime") if name in sys.modules)
print(json.dumps({{"code": code, "heavy": heavy, "out": out.getvalue()}}))
"""


@pytest.mark.parametrize(
    "argv", [["--version"], ["--help"], ["predict", "--help"], ["export", "--help"], ["serve", "--help"]]
)
def test_version_and_help_leave_torch_unimported(argv: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE.format(argv=argv)], capture_output=True, text=True, timeout=120, check=True
    )
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["code"] == 0
    assert answer["out"].startswith("bridgeseg") or "usage:" in answer["out"]
    assert answer["heavy"] == [], f"`bridgeseg {' '.join(argv)}` imported {answer['heavy']}"
