"""The web app behind `bridgeseg serve`: a local page to try a model on an uploaded image or an example.

One FastAPI app serves a small self-written page (``static/``: HTML, CSS and vanilla JS, nothing fetched
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
import io
import logging
import time
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from bridgeseg import images
from bridgeseg.app.examples import EXAMPLES, Example, check_example, example_image, example_png
from bridgeseg.app.forms import (
    _FORM_OVERHEAD_BYTES,
    AppLimits,
    ClientError,
    check_same_origin,
    parse_class_list,
    parse_form,
    read_body,
    read_image,
)
from bridgeseg.errors import ImageError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from bridgeseg.runtime.predictor import Predictor

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
_DEFAULT_LIMITS = AppLimits()

_STATIC_FILES = {"index.html": "text/html", "app.js": "text/javascript", "app.css": "text/css"}
# The page loads nothing but itself: scripts, styles and images from this server (overlays as data: URLs,
# previews of uploads as blob: URLs).
_CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def _png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _hex_colour(rgb: np.ndarray) -> str:
    return "#" + "".join(f"{int(channel):02x}" for channel in rgb)


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
        image = images.to_tensor(example_image(request.example or ""))
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


def create_app(
    predictor: "Predictor",
    limits: AppLimits = _DEFAULT_LIMITS,
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
    static = {name: (resources.files("bridgeseg.app") / "static" / name).read_bytes() for name in _STATIC_FILES}
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
        return Response(await anyio.to_thread.run_sync(example_png, name), media_type="image/png")

    def check_not_busy() -> None:
        if pending["count"] > limits.max_waiting:
            raise ClientError(503, "the model is busy with other requests; try again in a moment")

    @app.post("/api/segment")
    async def segment(request: Request) -> dict[str, Any]:
        check_same_origin(request.headers, request.headers.get("host", ""))
        # Before reading the upload too: a busy server need not receive 10 MB it will refuse.
        check_not_busy()
        body = await read_body(request, limits.max_upload_bytes + _FORM_OVERHEAD_BYTES, limits)
        fields, image_bytes = parse_form(body, request.headers.get("content-type", ""), limits)
        del body
        example = fields.get("example", "").strip() or None
        if image_bytes is not None and example is not None:
            raise ClientError(400, "give either an uploaded image or an example, not both")
        if image_bytes is None and example is None:
            raise ClientError(400, "no image: upload one (form field 'image') or pick an example ('example')")
        if example is not None:
            check_example(example)
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
