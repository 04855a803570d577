"""What the web app checks before the model sees a request, with no web framework needed: the limits, the
class list, the uploaded image (by `bridgeseg.images`, as everywhere else), the request's origin, the form and
its body (413 past the cap)."""

from __future__ import annotations

import dataclasses
import logging
import urllib.parse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bridgeseg import images, vocabulary
from bridgeseg.errors import ImageError

if TYPE_CHECKING:
    from torch import Tensor


logger = logging.getLogger(__name__)

# Formats a browser can upload and PIL decodes safely; anything else is "not an image" here.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
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


def read_image(data: bytes, limits: AppLimits = AppLimits(), size_multiple: int = 32) -> Tensor:
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


def parse_form(body: bytes, content_type: str, limits: AppLimits) -> tuple[dict[str, str], bytes | None]:
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


async def read_body(request: Any, cap: int, limits: AppLimits) -> bytes:
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
