"""The `bridgeseg` command line: one module per command, each a thin layer over the library.

Commands:
    cost     parameters and FLOPs per component for the four methods on one backbone   (`cli/cost.py`)
    demo     the offline quickstart                                                     (`cli/demo.py`)
    data     generate offline datasets (`bridgeseg data mosaic --out DIR`)              (`cli/data.py`)
    predict  segment images with any class list (masks, overlays, JSON)                 (`cli/predict.py`)
    export   convert a checkpoint to safetensors or ONNX                                (`cli/export.py`)
    serve    a local web page to try a model                                            (`cli/serve.py`)
    fit, validate, test
             training and evaluation (Lightning; `bridgeseg fit --help`)                (`cli/fit.py`)

Errors a user can fix (bad files, values or configs, a full disk, a diverged loss) are printed as one line
(`error: ...`) with exit code 2; `--debug` shows the traceback. docs/troubleshooting.md lists them. Ctrl+C
(SIGINT) exits with 130.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from bridgeseg._version import __version__
from bridgeseg.cli import cost, data, demo, export, fit, predict, serve
from bridgeseg.errors import UserError

__all__ = ["EXIT_INTERRUPTED", "build_parser", "main", "user_message"]

logger = logging.getLogger("bridgeseg")

_COMMANDS = (cost, data, demo, predict, export, serve)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every non-Lightning command (the Lightning ones parse their own arguments)."""
    parser = argparse.ArgumentParser(prog="bridgeseg", description="Language-guided lightweight semantic segmentation")
    parser.add_argument("--version", action="version", version=f"bridgeseg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        command.add_parser(commands)
    fit.add_parsers(commands)
    return parser


def _unwrap_worker_message(error: BaseException) -> str:
    """The original message of an error re-raised from a DataLoader worker, without the worker's traceback.

    PyTorch re-raises a worker's exception as the same type with the message "Caught X in DataLoader worker
    process N.\\nOriginal Traceback ...\\n<module>.X: <message>"; the user only needs the last part.
    """
    message = str(error)
    if not message.startswith("Caught ") or "Original Traceback" not in message:
        return message
    kind = type(error)
    for name in (f"{kind.__module__}.{kind.__qualname__}: ", f"{kind.__qualname__}: "):
        start = message.rfind("\n" + name)
        if start >= 0:
            return message[start + 1 + len(name) :].strip()
    return message.strip().splitlines()[-1]


def user_message(error: BaseException) -> str:
    """The text `main` prints for an error a user can fix: its message and any notes added on the way up."""
    notes = [str(note) for note in getattr(error, "__notes__", ())]
    return "; ".join([_unwrap_worker_message(error), *notes])


EXIT_INTERRUPTED = 130
"""Exit code after Ctrl+C (SIGINT), as a shell reports a process a SIGINT stopped: 128 + 2."""


def _run_guarded(function: Callable[[], int | None], debug: bool) -> int:
    try:
        code = function()
    except (UserError, ValueError, FileNotFoundError, OSError, FloatingPointError) as error:
        if debug:
            raise
        print(f"error: {user_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print(
            "error: interrupted (Ctrl+C); every file written so far is complete (files are written atomically); "
            "a training run resumes with --ckpt_path last",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return int(code or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `bridgeseg` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Lightning prints through a handler of its own on the "lightning" logger and passes every record on to the
    # root logger as well, which would print it a second time.
    logging.getLogger("lightning").propagate = False
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    if argv and argv[0] in fit.COMMANDS:
        return _run_guarded(lambda: fit.run(argv), debug)
    args = build_parser().parse_args(argv)
    return _run_guarded(lambda: args.run(args), debug)
