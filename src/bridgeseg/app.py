"""`bridgeseg serve`: a local web page to try a model on an uploaded or bundled photo.

One FastAPI app serves a small self-written page (``app_static/``: HTML, CSS and vanilla JS, nothing fetched
from elsewhere, so it works without a network) and a JSON API:

- ``GET /api/info``: the model's method, classes, whether it is open-vocabulary, and the server's limits;
- ``GET /api/examples``: the bundled example photos (the mosaic source photos); ``GET /api/examples/{name}``
  one of them as PNG;
- ``POST /api/segment``: multipart form with ``image`` (a file) or ``example`` (a name), ``classes``
  (comma-separated; default: the model's), ``mode`` (``whole`` or ``slide``) and ``tta`` (``true``/``false``);
  answers the overlay as a PNG data URL, the share of each class and the model time in ms.

Uploads are parsed in memory, never written to disk, and checked at the boundary: size (413), decompression
bombs and pixel count, non-images, class lists (400). The model runs one request at a time; a few requests may
wait for it, more are turned away with 503 rather than queued without bound.

Example:
    >>> from bridgeseg.inference import Segmenter
    >>> app = create_app(Segmenter.from_checkpoint("outputs/demo/model"))  # doctest: +SKIP
    >>> # uvicorn.run(app, host="127.0.0.1", port=7860)
"""

# No `from __future__ import annotations`: FastAPI reads the route functions' annotations (`request: Request`) at
# definition time, and `Request` is imported inside `create_app` so that the module imports without the `app` extra.
import argparse
import base64
import dataclasses
import io
import ipaddress
import logging
import socket
import time
import urllib.parse
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    from fastapi import FastAPI
    from torch import Tensor

    from bridgeseg.inference import Segmenter

__all__ = ["AppLimits", "ClientError", "create_app", "parse_class_list", "read_image", "serve_command"]

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'bridgeseg[app]'"
DEMO_CHECKPOINT = "outputs/demo/model"
# Formats a browser can upload and PIL decodes safely; anything else is "not an image" here.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
_STATIC_FILES = {"index.html": "text/html", "app.js": "text/javascript", "app.css": "text/css"}
# The page loads nothing but itself: scripts, styles and images from this server (overlays as data: URLs,
# previews of uploads as blob: URLs).
_CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
MAX_CONNECTIONS = 32
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
_FORM_OVERHEAD_BYTES = 64 * 1024  # room for the form's text fields and part headers beside the image


@dataclasses.dataclass(frozen=True)
class AppLimits:
    """What one request may ask of the server.

    Attributes:
        max_upload_bytes: Largest image upload; the request may carry 64 KB more for the other form fields.
            Larger requests get 413.
        max_pixels: Largest image, in pixels (width × height), that the model is asked to segment; PIL's own
            decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`) applies as well.
        max_classes: Most class names per request.
        max_class_name_length: Longest class name, in characters.
        max_waiting: Requests that may wait while the model serves another; more get 503.
        wait_timeout_s: Longest wait for the model before a request gets 503.
    """

    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_classes: int = 100
    max_class_name_length: int = 100
    max_waiting: int = 2
    wait_timeout_s: float = 60.0


class ClientError(Exception):
    """A request the server refuses, with the HTTP status and a message that says what to do.

    Args:
        status_code: 400 (bad input), 404 (unknown example photo), 413 (too large), 500 (the model failed) or
            503 (busy).
        message: Shown on the page as it is.
    """

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


# ------------------------------------------------------------------------------------------------------------------
# Input checks (no web framework needed)
# ------------------------------------------------------------------------------------------------------------------


def parse_class_list(text: str | None, default: Sequence[str], limits: AppLimits = AppLimits()) -> list[str]:
    """Split a comma-separated class list and check it.

    Args:
        text: E.g. ``"sky, road, car"``; None (the field was not sent) gives `default`.
        default: The model's classes.
        limits: Caps on the count and length of the names.

    Returns:
        The names, stripped of surrounding whitespace.

    Raises:
        ClientError: 400 when the list is empty, a name is blank (a doubled or trailing comma), repeated or too
            long, or there are too many.
    """
    from bridgeseg.models import validate_class_names

    if text is None:
        return list(default)
    if not text.strip():
        own = ", ".join(default[:8]) + (", ..." if len(default) > 8 else "")
        raise ClientError(400, f"the class list is empty; give at least one class name (the model's: {own})")
    names = [name.strip() for name in text.split(",")]
    blank = [position for position, name in enumerate(names, start=1) if not name]
    if blank:
        raise ClientError(
            400,
            f"class name{'s' if len(blank) > 1 else ''} {', '.join(map(str, blank))} of {len(names)} "
            f"{'are' if len(blank) > 1 else 'is'} blank; remove the doubled or trailing comma",
        )
    if len(names) > limits.max_classes:
        raise ClientError(400, f"{len(names)} class names; give at most {limits.max_classes}")
    long_names = [name for name in names if len(name) > limits.max_class_name_length]
    if long_names:
        raise ClientError(
            400, f"class name {long_names[0][:40]!r}... is longer than {limits.max_class_name_length} characters"
        )
    try:
        return validate_class_names(names)
    except ValueError as error:
        raise ClientError(400, str(error)) from error


def read_image(data: bytes, limits: AppLimits = AppLimits()) -> "Tensor":
    """Decode an uploaded image in memory, EXIF orientation applied.

    Args:
        data: The file's bytes.
        limits: The pixel cap.

    Returns:
        The image as float32 RGB [3, H, W] in [0, 1].

    Raises:
        ClientError: 400 when the bytes are not an image of a supported format, the image is corrupt, or it has
            more pixels than `limits.max_pixels` or PIL's decompression-bomb limit.
    """
    from bridgeseg.inference import image_to_tensor

    if not data:
        raise ClientError(400, "the uploaded file is empty; choose an image file")
    try:
        # Only the header is read here; the size check below runs before any pixel is decoded.
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as error:
        raise ClientError(400, f"refused: possible decompression bomb ({error})") from error
    except UnidentifiedImageError as error:
        raise ClientError(400, f"not an image: upload a {', '.join(IMAGE_FORMATS)} file") from error
    with image:
        width, height = image.size
        pil_limit = Image.MAX_IMAGE_PIXELS
        if pil_limit is not None and width * height > pil_limit:
            raise ClientError(
                400,
                f"refused: possible decompression bomb ({width}×{height} = {width * height} pixels, over PIL's "
                f"limit of {pil_limit}); downscale the image",
            )
        if width * height > limits.max_pixels:
            raise ClientError(
                400,
                f"the image is {width}×{height} = {width * height} pixels; this server takes at most "
                f"{limits.max_pixels}; downscale it",
            )
        try:
            image.load()
            oriented = ImageOps.exif_transpose(image)
            return image_to_tensor(oriented)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            # PIL reports truncated and corrupt data as OSError, some plugins as SyntaxError or ValueError.
            raise ClientError(400, f"the image could not be decoded ({error}); is the file complete?") from error


def _png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _hex_colour(rgb: np.ndarray) -> str:
    return "#" + "".join(f"{int(channel):02x}" for channel in rgb)


def _example_names() -> list[str]:
    from bridgeseg.data.mosaic import MOSAIC_SOURCES

    return list(MOSAIC_SOURCES)


def _check_example(name: str, status_code: int = 400) -> None:
    names = _example_names()
    if name not in names:
        raise ClientError(status_code, f"unknown example {name!r}; valid examples: {', '.join(names)}")


def _example_image(name: str, status_code: int = 400) -> np.ndarray:
    from bridgeseg.data.mosaic import load_source_photo

    _check_example(name, status_code)
    return load_source_photo(name)


def _example_png(name: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_example_image(name, status_code=404)).save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------------------------
# The model call
# ------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _SegmentRequest:
    image_bytes: bytes | None
    example: str | None
    classes: list[str]
    mode: str
    tta: bool


def _segment(segmenter: "Segmenter", request: _SegmentRequest, limits: AppLimits) -> dict[str, Any]:
    """Decode, segment and draw one request; runs in a worker thread while holding the model lock."""
    from bridgeseg.inference import image_to_tensor
    from bridgeseg.visualize import overlay, palette

    started = time.perf_counter()
    if request.image_bytes is not None:
        image = read_image(request.image_bytes, limits)
    else:
        image = image_to_tensor(_example_image(request.example or ""))
    try:
        model_started = time.perf_counter()
        prediction = segmenter.predict(image, classes=request.classes, mode=request.mode, tta=request.tta)
        model_ms = 1000.0 * (time.perf_counter() - model_started)
    except ValueError as error:  # a closed-set model given other names, an unavailable text encoder, ...
        raise ClientError(400, str(error)) from error
    except (RuntimeError, MemoryError) as error:  # e.g. out of memory on a huge image
        logger.exception("segmentation failed")
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ClientError(500, f"the model failed on this image ({reason})") from error
    labels = prediction.labels
    rendered = overlay(image, labels, prediction.classes, alpha=0.5, legend=False)
    counts = np.bincount(labels.ravel(), minlength=len(prediction.classes))
    colours = palette(len(prediction.classes))
    order = np.argsort(-counts, kind="stable")
    areas = [
        {
            "name": prediction.classes[index],
            "fraction": float(counts[index]) / max(labels.size, 1),
            "color": _hex_colour(colours[index]),
        }
        for index in order
    ]
    result = {
        "overlay": _png_data_url(rendered),
        "width": int(labels.shape[1]),
        "height": int(labels.shape[0]),
        "classes": list(prediction.classes),
        "areas": areas,
        "mode": request.mode,
        "tta": request.tta,
        "latency_ms": round(model_ms, 1),
        "total_ms": round(1000.0 * (time.perf_counter() - started), 1),
    }
    logger.info(
        "segmented %d×%d (%s, %d classes): model %.0f ms, request %.0f ms",
        result["width"],
        result["height"],
        request.mode,
        len(prediction.classes),
        result["latency_ms"],
        result["total_ms"],
    )
    return result


# ------------------------------------------------------------------------------------------------------------------
# The web app
# ------------------------------------------------------------------------------------------------------------------


def _parse_form(body: bytes, content_type: str, limits: AppLimits) -> tuple[dict[str, str], bytes | None]:
    """The text fields and the ``image`` file of a form, parsed in memory (nothing goes to disk).

    Multipart (what browsers send with a file) and URL-encoded forms (`curl -d`, an example photo only) are
    accepted.
    """
    from python_multipart import FormParser
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import parse_options_header

    if not body:
        return {}, None
    media_type, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if media_type not in (b"multipart/form-data", b"application/x-www-form-urlencoded") or (
        media_type == b"multipart/form-data" and not boundary
    ):
        raise ClientError(
            400, "send a multipart/form-data form with the fields image (a file) or example, classes and mode"
        )
    if media_type == b"application/x-www-form-urlencoded":
        try:
            pairs = urllib.parse.parse_qsl(body.decode("ascii"), max_num_fields=16, strict_parsing=False)
        except (UnicodeDecodeError, ValueError) as error:
            raise ClientError(400, f"malformed form data ({error})") from error
        return dict(pairs), None
    fields: dict[str, str] = {}
    files: dict[str, bytes] = {}

    def on_field(field: Any) -> None:
        name = (field.field_name or b"").decode("utf-8", "replace")
        fields[name] = (field.value or b"").decode("utf-8", "replace")

    def on_file(file: Any) -> None:
        file.file_object.seek(0)
        files[(file.field_name or b"").decode("utf-8", "replace")] = file.file_object.read()

    cap = limits.max_upload_bytes + _FORM_OVERHEAD_BYTES
    # Files up to the body cap stay in memory: the parser's default would spill those over 1 MiB to disk.
    config = {"MAX_BODY_SIZE": cap, "MAX_MEMORY_FILE_SIZE": cap + 1, "MAX_FIELDS": 16, "MAX_FIELD_SIZE": 64 * 1024}
    try:
        parser = FormParser("multipart/form-data", on_field, on_file, boundary=boundary, config=config)
        parser.write(body)
        parser.finalize()
    except FormParserError as error:
        raise ClientError(400, f"malformed form data ({error})") from error
    return fields, files.get("image") or None


def create_app(
    segmenter: "Segmenter",
    limits: AppLimits = AppLimits(),
    checkpoint: str = "",
    allowed_hosts: Sequence[str] | None = None,
) -> "FastAPI":
    """Build the web app around a loaded model.

    Args:
        segmenter: The model; it serves one request at a time.
        limits: Upload, image, class list and queue limits.
        checkpoint: Where the model came from, shown on the page.
        allowed_hosts: Host names the server answers to (guards a loopback server against DNS rebinding);
            None answers any.

    Returns:
        The FastAPI app, to run with uvicorn.
    """
    import anyio
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    # No /docs: FastAPI's Swagger page loads its scripts from a CDN.
    app = FastAPI(title="bridgeseg", docs_url=None, redoc_url=None, openapi_url=None)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    static = {name: (resources.files("bridgeseg") / "app_static" / name).read_bytes() for name in _STATIC_FILES}
    model_lock = anyio.Lock()
    # Requests holding or waiting for the model; only the event loop's thread touches it.
    pending = {"count": 0}
    info = {
        "method": segmenter.model.method,
        "checkpoint": checkpoint,
        "classes": segmenter.classes,
        "open_vocabulary": bool(segmenter.open_vocabulary),
        "modes": ["whole", "slide"],
        "limits": dataclasses.asdict(limits),
    }

    @app.exception_handler(ClientError)
    async def client_error(request: Request, error: ClientError) -> JSONResponse:
        return JSONResponse({"error": error.message}, status_code=error.status_code)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = _CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    def static_route(name: str) -> Any:
        async def serve_static() -> Response:
            return Response(static[name], media_type=_STATIC_FILES[name] + "; charset=utf-8")

        return serve_static

    app.get("/", include_in_schema=False)(static_route("index.html"))
    app.get("/app.js", include_in_schema=False)(static_route("app.js"))
    app.get("/app.css", include_in_schema=False)(static_route("app.css"))

    @app.get("/api/info")
    async def get_info() -> dict[str, Any]:
        return info

    @app.get("/api/examples")
    async def list_examples() -> dict[str, list[str]]:
        return {"examples": _example_names()}

    @app.get("/api/examples/{name}")
    async def get_example(name: str) -> Response:
        return Response(await anyio.to_thread.run_sync(_example_png, name), media_type="image/png")

    def check_not_busy() -> None:
        if pending["count"] > limits.max_waiting:
            raise ClientError(503, "the model is busy with other requests; try again in a moment")

    @app.post("/api/segment")
    async def segment(request: Request) -> dict[str, Any]:
        # Before reading the upload too: a busy server need not receive 10 MB it will refuse.
        check_not_busy()
        body = await _read_body(request, limits.max_upload_bytes + _FORM_OVERHEAD_BYTES, limits)
        fields, image_bytes = _parse_form(body, request.headers.get("content-type", ""), limits)
        del body
        example = fields.get("example", "").strip() or None
        if image_bytes is not None and example is not None:
            raise ClientError(400, "give either an uploaded image or an example, not both")
        if image_bytes is None and example is None:
            raise ClientError(400, "no image: upload one (form field 'image') or pick an example ('example')")
        if example is not None:
            _check_example(example)
        mode = fields.get("mode", "whole").strip() or "whole"
        if mode not in ("whole", "slide"):
            raise ClientError(400, f"unknown mode {mode!r}; use 'whole' or 'slide'")
        job = _SegmentRequest(
            image_bytes=image_bytes,
            example=example,
            classes=parse_class_list(fields.get("classes"), segmenter.classes, limits),
            mode=mode,
            tta=fields.get("tta", "").strip().lower() in ("1", "true", "on", "yes"),
        )
        check_not_busy()
        pending["count"] += 1
        try:
            try:
                with anyio.fail_after(limits.wait_timeout_s):
                    await model_lock.acquire()
            except TimeoutError as error:
                raise ClientError(
                    503, f"the model stayed busy for {limits.wait_timeout_s:.0f} s; try again later"
                ) from error
            try:
                return await anyio.to_thread.run_sync(_segment, segmenter, job, limits)
            finally:
                model_lock.release()
        finally:
            pending["count"] -= 1

    return app


async def _read_body(request: Any, cap: int, limits: AppLimits) -> bytes:
    """The request body, refused with 413 as soon as it exceeds `cap` (announced or actually sent)."""
    too_large = ClientError(
        413, f"the upload is larger than {limits.max_upload_bytes / 2**20:.0f} MB; send a smaller image"
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


# ------------------------------------------------------------------------------------------------------------------
# bridgeseg serve
# ------------------------------------------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_port_free(host: str, port: int) -> None:
    from bridgeseg.cli import UserError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as error:
            raise UserError(f"cannot listen on {host}:{port} ({error.strerror}); pass another --port") from error


def serve_command(args: argparse.Namespace) -> int:
    """Run `bridgeseg serve`: load the checkpoint and serve the page until Ctrl+C.

    Args:
        args: The parsed `serve` arguments: `checkpoint`, `host`, `port`.

    Returns:
        0 after a clean shutdown.

    Raises:
        UserError: The `app` extra is not installed, the checkpoint does not exist, or the port is taken.
        CheckpointError: The checkpoint cannot be loaded.
    """
    from bridgeseg.cli import UserError

    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn
    except ImportError as error:
        raise UserError(f"the web app needs FastAPI, uvicorn and python-multipart ({error}); {INSTALL_HINT}") from error
    checkpoint = Path(args.checkpoint)
    if not checkpoint.exists():
        if checkpoint == Path(DEMO_CHECKPOINT):
            raise UserError(
                f"no checkpoint at {checkpoint} (the demo model): run `make demo` to train it, or pass --checkpoint "
                "with a model folder, .safetensors or .ckpt"
            )
        raise UserError(
            f"no checkpoint at {checkpoint}: pass --checkpoint with a model folder, .safetensors or .ckpt "
            f"(or run `make demo` and use the demo model, {DEMO_CHECKPOINT})"
        )
    _check_port_free(args.host, args.port)
    from bridgeseg.inference import Segmenter

    segmenter = Segmenter.from_checkpoint(checkpoint)
    loopback = _is_loopback(args.host)
    if not loopback:
        logger.warning(
            "listening on %s: anyone who can reach this machine can use the model; use --host 127.0.0.1 to "
            "keep it local",
            args.host,
        )
    app = create_app(segmenter, checkpoint=str(checkpoint), allowed_hosts=_LOOPBACK_NAMES if loopback else None)
    host_in_url = f"[{args.host}]" if ":" in args.host and not args.host.startswith("[") else args.host
    logger.info(
        "serving %s (%s, %d classes) at http://%s:%d (Ctrl+C to stop)",
        checkpoint,
        segmenter.model.method,
        len(segmenter.classes),
        host_in_url,
        args.port,
    )
    # The connection cap bounds the uploads held in memory at once; beyond it uvicorn answers 503.
    uvicorn.run(app, host=args.host.strip("[]"), port=args.port, log_level="warning", limit_concurrency=MAX_CONNECTIONS)
    return 0
