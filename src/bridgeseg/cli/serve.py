"""`bridgeseg serve`: the web app (`bridgeseg.app.server`) on a local port."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import socket
from pathlib import Path

from bridgeseg.cli._options import DEFAULT_CHECKPOINT, add_checkpoint_argument
from bridgeseg.errors import UserError
from bridgeseg.options import DEFAULT_PRECISION, PRECISIONS

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'bridgeseg[app]'"
MAX_CONNECTIONS = 32
# Seconds Ctrl+C waits for requests in flight before closing their connections: an idle browser tab's keep-alive
# connection would otherwise hold the shutdown for several seconds.
GRACEFUL_SHUTDOWN_S = 1
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("serve", help="a local web page to try a model")
    add_checkpoint_argument(parser, "model folder, .safetensors, .ckpt or .onnx")
    parser.add_argument("--host", default="127.0.0.1", help="default: loopback only")
    parser.add_argument(
        "--port", type=int, default=7860, help="TCP port, 1 to 65535; 0 picks a free one (default: %(default)s)"
    )
    parser.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default=DEFAULT_PRECISION,
        help="the model's forward precision, as for `bridgeseg predict` (default: %(default)s, the same labels on "
        "every CPU)",
    )
    parser.set_defaults(run=run)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as error:
            raise UserError(f"cannot listen on {host}:{port} ({error.strerror}); pass another --port") from error


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint and serve the page until Ctrl+C.

    Args:
        args: The parsed `serve` arguments: `checkpoint`, `host`, `port`.

    Returns:
        0 after a clean shutdown.

    Raises:
        UserError: The `app` extra is not installed, the port is not a TCP port or is taken, or the checkpoint does
            not exist.
        CheckpointError: The checkpoint cannot be loaded.
    """
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn
    except ImportError as error:
        raise UserError(f"the web app needs FastAPI, uvicorn and python-multipart ({error}); {INSTALL_HINT}") from error
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port} is not a TCP port; give one from 1 to 65535, e.g. --port 7860")
    checkpoint = Path(args.checkpoint)
    if not checkpoint.exists():
        if checkpoint == Path(DEFAULT_CHECKPOINT):
            raise UserError(
                f"no checkpoint at {checkpoint} (the demo model): run `bridgeseg demo` to train it, or pass "
                "--checkpoint with a model folder, .safetensors, .ckpt or .onnx"
            )
        raise UserError(
            f"no checkpoint at {checkpoint}: pass --checkpoint with a model folder, .safetensors or .ckpt "
            f"(or run `bridgeseg demo` and use the demo model, {DEFAULT_CHECKPOINT})"
        )
    _check_port_free(args.host, args.port)
    from bridgeseg.app.server import create_app
    from bridgeseg.runtime.predictor import Predictor

    predictor = Predictor.from_checkpoint(checkpoint, precision=args.precision)
    loopback = _is_loopback(args.host)
    if not loopback:
        logger.warning(
            "listening on %s: anyone who can reach this machine can use the model; use --host 127.0.0.1 to "
            "keep it local",
            args.host,
        )
    app = create_app(predictor, checkpoint=str(checkpoint), allowed_hosts=_LOOPBACK_NAMES if loopback else None)
    host_in_url = f"[{args.host}]" if ":" in args.host and not args.host.startswith("[") else args.host
    logger.info(
        "serving %s (%s, %d classes) at http://%s:%d (Ctrl+C to stop)",
        checkpoint,
        predictor.method,
        len(predictor.classes),
        host_in_url,
        args.port,
    )
    # The connection cap bounds the uploads held in memory at once; beyond it uvicorn answers 503.
    # uvicorn raises the Ctrl+C it handled again once it has shut down; Ctrl+C is the way to stop the server.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.run(
            app,
            host=args.host.strip("[]"),
            port=args.port,
            log_level="warning",
            limit_concurrency=MAX_CONNECTIONS,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
    logger.info("stopped serving %s", checkpoint)
    return 0
