"""The web app behind `bridgeseg serve`: a local page to try a model on an uploaded image or an example.

One FastAPI app serves a small self-written page (``app_static/``: HTML, CSS and vanilla JS, nothing fetched
from elsewhere, so it works without a network) and a JSON API:

- ``GET /api/info``: the model's method, classes, whether it is open-vocabulary, and the server's limits;
- ``GET /api/examples``: the examples, each with a label saying what it is: held-out mosaic images (the val
  split the demo model never trained on, where its output is meaningful) and one whole photo with an
  open-vocabulary class list; ``GET /api/examples/{name}`` one of them as PNG;
- ``POST /api/segment``: multipart form with ``image`` (a file) or ``example`` (a name), ``classes``
  (comma-separated; default: the model's), ``mode`` (``whole`` or ``slide``) and ``tta`` (``true``/``false``);
  answers the overlay as a PNG data URL, the share of each class and the model time in ms.

Uploads are parsed in memory, never written to disk, and checked at the boundary: size (413), decompression
bombs, pixel count and aspect ratio as the model would process the image (padded), non-images, class lists (400).
Cross-site posts are refused (403): a web page the user visits could otherwise post the form to the local server,
as a form needs no preflight. The model runs one request at a time; a few requests may wait for it, more are
turned away with 503 rather than queued without bound. A client that disconnects mid-upload is logged as one line.

Images are decoded by `bridgeseg.images`, class lists parsed by `bridgeseg.vocabulary`, as everywhere else.

Example:
    >>> from bridgeseg import Predictor
    >>> app = create_app(Predictor.from_checkpoint("outputs/demo/model"))  # doctest: +SKIP
    >>> # uvicorn.run(app, host="127.0.0.1", port=7860)
"""

# No `from __future__ import annotations`: FastAPI reads the route functions' annotations (`request: Request`) at
# definition time, and `Request` is imported inside `create_app` so that the module imports without the `app` extra.
import base64
import dataclasses
import functools
import io
import logging
import time
import urllib.parse
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from bridgeseg import images, vocabulary
from bridgeseg.demo import DEMO_DATA, OPEN_VOCABULARY_EXAMPLE
from bridgeseg.errors import ImageError

if TYPE_CHECKING:
    from fastapi import FastAPI
    from torch import Tensor

    from bridgeseg.predictor import Predictor

__all__ = [
    "EXAMPLES",
    "AppLimits",
    "ClientError",
    "Example",
    "check_same_origin",
    "create_app",
    "parse_class_list",
    "read_image",
]

logger = logging.getLogger(__name__)
# Formats a browser can upload and PIL decodes safely; anything else is "not an image" here.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
_STATIC_FILES = {"index.html": "text/html", "app.js": "text/javascript", "app.css": "text/css"}
# The page loads nothing but itself: scripts, styles and images from this server (overlays as data: URLs,
# previews of uploads as blob: URLs).
_CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_FORM_OVERHEAD_BYTES = 64 * 1024  # room for the form's text fields and part headers beside the image


@dataclasses.dataclass(frozen=True)
class AppLimits:
    """What one request may ask of the server.

    Attributes:
        max_upload_bytes: Largest image upload; the request may carry 64 KB more for the other form fields.
            Larger requests get 413.
        max_pixels: Largest image, in pixels, that the model is asked to segment, counted as the model processes
            it: width × height after padding to its size multiple (a 1,048,576 × 1 strip counts 32 times over).
            PIL's own decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`) applies as well.
        max_aspect_ratio: Largest ratio of the long to the short side, after padding.
        max_classes: Most class names per request (at most `bridgeseg.vocabulary.MAX_CLASSES`); what they cost
            with the image is bounded by the logits budget shared with the CLI and the API (`bridgeseg.budget`).
        max_class_name_length: Longest class name, in characters.
        max_waiting: Requests that may wait while the model serves another; more get 503.
        wait_timeout_s: Longest wait for the model before a request gets 503.
    """

    max_upload_bytes: int = 10 * 1024 * 1024
    # About 7 s and 1.6 GB for the model on a CPU; a 1024 × 1024 image takes 1.7 s.
    max_pixels: int = 2048 * 2048
    max_aspect_ratio: float = images.MAX_ASPECT_RATIO
    max_classes: int = vocabulary.MAX_CLASSES
    max_class_name_length: int = vocabulary.MAX_CLASS_NAME_LENGTH
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
    """Split a comma-separated class list and check it (`bridgeseg.vocabulary.parse_class_list`).

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
    try:
        names = vocabulary.parse_class_list(text, limits.max_classes, limits.max_class_name_length)
    except ValueError as error:
        message = str(error)
        if text is not None and not text.strip():
            message += f" (the model's: {vocabulary.describe_classes(default, 8)})"
        raise ClientError(400, message) from error
    return list(default) if names is None else names


def read_image(data: bytes, limits: AppLimits = AppLimits(), size_multiple: int = 32) -> "Tensor":
    """Decode an uploaded image in memory (`bridgeseg.images.decode_bytes`), EXIF orientation applied.

    Args:
        data: The file's bytes.
        limits: The pixel and aspect-ratio caps.
        size_multiple: The model pads images to multiples of this; the caps count the padded size.

    Returns:
        The image as float32 RGB [3, H, W] in [0, 1].

    Raises:
        ClientError: 400 when the bytes are not an image of a supported format, the image is corrupt, or, as the
            model would process it, it has more pixels than `limits.max_pixels` (or PIL's decompression-bomb
            limit) or sides in a ratio over `limits.max_aspect_ratio`; checked on the header, before decoding.
    """
    size_limits = images.SizeLimits(limits.max_pixels, limits.max_aspect_ratio, size_multiple)
    try:
        return images.decode_bytes(data, IMAGE_FORMATS, limits=size_limits)
    except ImageError as error:
        raise ClientError(400, str(error)) from error


def check_same_origin(headers: Any, host: str) -> None:
    """Refuse a request a browser sent from another site (a form post from a page the user visits).

    Browsers mark every request with `Sec-Fetch-Site` (recent ones) and cross-origin posts with `Origin`; the
    page's own requests are "same-origin". Requests without either (curl, scripts) are not from a web page.

    Args:
        headers: The request's headers (case-insensitive mapping).
        host: The `Host` the request was sent to.

    Raises:
        ClientError: 403 for a cross-site or cross-origin request.
    """
    site = headers.get("sec-fetch-site")
    origin = headers.get("origin")
    if site is not None:  # the browser's own verdict, when it gives one
        if site.lower() in ("same-origin", "none"):
            return
        source = f"Sec-Fetch-Site: {site}"
    elif origin is not None and (origin == "null" or urllib.parse.urlsplit(origin).netloc.lower() != host.lower()):
        source = f"Origin: {origin}"
    else:
        return
    raise ClientError(
        403, f"cross-site request refused ({source}): use the page this server serves, or a client such as curl"
    )


def _png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _hex_colour(rgb: np.ndarray) -> str:
    return "#" + "".join(f"{int(channel):02x}" for channel in rgb)


@dataclasses.dataclass(frozen=True)
class Example:
    """An example image the page offers.

    Attributes:
        name: Its id in the API.
        label: What it is, shown in the list.
        classes: The class list to try it with (None: the model's own).
    """

    name: str
    label: str
    classes: tuple[str, ...] | None = None


_NUM_MOSAIC_EXAMPLES = 4
_OPEN_PHOTO, _OPEN_CLASSES = OPEN_VOCABULARY_EXAMPLE
EXAMPLES: tuple[Example, ...] = (
    *(
        Example(f"mosaic-val-{index + 1}", f"held-out mosaic {index + 1} (val split, the demo model's domain)")
        for index in range(_NUM_MOSAIC_EXAMPLES)
    ),
    Example(
        f"photo-{_OPEN_PHOTO}",
        f"whole {_OPEN_PHOTO} photo, open vocabulary ({', '.join(_OPEN_CLASSES)}; not trained on whole photos)",
        tuple(_OPEN_CLASSES),
    ),
)
_EXAMPLES_BY_NAME = {example.name: example for example in EXAMPLES}


def _check_example(name: str, status_code: int = 400) -> Example:
    if name not in _EXAMPLES_BY_NAME:
        raise ClientError(status_code, f"unknown example {name!r}; valid examples: {', '.join(_EXAMPLES_BY_NAME)}")
    return _EXAMPLES_BY_NAME[name]


@functools.lru_cache(maxsize=1)
def _mosaic_examples() -> list[np.ndarray]:
    """The first val mosaics of the demo's data, rendered in memory once (a few seconds)."""
    from bridgeseg.data.mosaic import render_val_mosaics

    return [
        image for image, _ in render_val_mosaics(_NUM_MOSAIC_EXAMPLES, size=DEMO_DATA["size"], seed=DEMO_DATA["seed"])
    ]


def _example_image(name: str, status_code: int = 400) -> np.ndarray:
    from bridgeseg.data.mosaic import load_source_photo

    _check_example(name, status_code)
    if name.startswith("mosaic-val-"):
        return _mosaic_examples()[int(name.rsplit("-", 1)[1]) - 1]
    return load_source_photo(_OPEN_PHOTO)


@functools.lru_cache(maxsize=len(EXAMPLES))
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


def _segment(predictor: "Predictor", request: _SegmentRequest, limits: AppLimits) -> dict[str, Any]:
    """Decode, segment and draw one request; runs in a worker thread while holding the model lock."""
    from bridgeseg.visualize import overlay, palette

    started = time.perf_counter()
    if request.image_bytes is not None:
        try:  # the logits budget, on the image's header: before it is decoded or a name embedded
            predictor.check_cost(request.image_bytes, request.classes, mode=request.mode, tta=request.tta)
        except ImageError:
            pass  # not an image: `read_image` says so in the upload's terms
        except ValueError as error:
            raise ClientError(400, str(error)) from error
        image = read_image(request.image_bytes, limits, predictor.size_multiple)
    else:
        image = images.to_tensor(_example_image(request.example or ""))
    try:
        model_started = time.perf_counter()
        prediction = predictor.predict(image, classes=request.classes, mode=request.mode, tta=request.tta)
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
        "runtime": predictor.runtime,
        "precision": predictor.precision,
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
    predictor: "Predictor",
    limits: AppLimits = AppLimits(),
    checkpoint: str = "",
    allowed_hosts: Sequence[str] | None = None,
) -> "FastAPI":
    """Build the web app around a loaded model.

    Args:
        predictor: The model; it serves one request at a time.
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
        "method": predictor.method,
        "checkpoint": checkpoint,
        "classes": predictor.classes,
        "open_vocabulary": bool(predictor.open_vocabulary),
        "runtime": predictor.runtime,
        "precision": predictor.precision,
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
        # Not "no-referrer": under it browsers send `Origin: null` with the page's own posts, which
        # `check_same_origin` could not tell from a sandboxed page on another site.
        response.headers["Referrer-Policy"] = "same-origin"
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
    async def list_examples() -> dict[str, list[dict[str, Any]]]:
        return {"examples": [dataclasses.asdict(example) for example in EXAMPLES]}

    @app.get("/api/examples/{name}")
    async def get_example(name: str) -> Response:
        return Response(await anyio.to_thread.run_sync(_example_png, name), media_type="image/png")

    def check_not_busy() -> None:
        if pending["count"] > limits.max_waiting:
            raise ClientError(503, "the model is busy with other requests; try again in a moment")

    @app.post("/api/segment")
    async def segment(request: Request) -> dict[str, Any]:
        check_same_origin(request.headers, request.headers.get("host", ""))
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
            classes=parse_class_list(fields.get("classes"), predictor.classes, limits),
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
                return await anyio.to_thread.run_sync(_segment, predictor, job, limits)
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
    from starlette.requests import ClientDisconnect

    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect as error:
        # A closed tab or a cancelled upload: nothing went wrong on the server, and no one reads the answer.
        logger.info("the client disconnected during the upload (%d bytes received)", size)
        raise ClientError(400, "the client disconnected before the upload was complete") from error
    return b"".join(chunks)
