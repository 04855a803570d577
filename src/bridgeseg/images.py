"""Images in: the one decoder for files, uploaded bytes, PIL images, arrays and tensors.

Everything becomes float32 RGB ``[3, H, W]`` in ``[0, 1]``, the form every model takes. Files and bytes pass the
same checks before a pixel is decoded: PIL's decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`, never lifted),
an optional pixel cap, and for prediction the model's limits (`SizeLimits`: area and aspect ratio counted after
padding and resizing, as the model will process the image); EXIF orientation is applied. Training, `bridgeseg
predict`, the Python API and the web app all read images here.

Example:
    >>> image = to_tensor("street.jpg")  # doctest: +SKIP
    >>> image.shape, image.dtype  # doctest: +SKIP
    (torch.Size([3, 480, 640]), torch.float32)
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from bridgeseg.errors import DatasetError, DatasetNotFoundError, ImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_ASPECT_RATIO",
    "MAX_MODEL_PIXELS",
    "TRANSPOSING_ORIENTATIONS",
    "FileInfo",
    "ImageInput",
    "SizeLimits",
    "check_size",
    "decode_bytes",
    "image_size",
    "load_image",
    "load_mask",
    "open_image",
    "probe",
    "processed_size",
    "to_tensor",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
_EXIF_ORIENTATION = 0x0112
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # these swap width and height
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")

ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray | Tensor

MAX_MODEL_PIXELS = 25_000_000
"""Default cap on the area the model processes, counted after padding and resizing (a 6000×4000 photo fits)."""
MAX_ASPECT_RATIO = 32.0
"""Default cap on the ratio of the long to the short side the model processes, after padding."""


@dataclass(frozen=True)
class SizeLimits:
    """What the model may be asked to process, counted as it will process it: resized, then padded.

    Padding to the size multiple turns a 1,048,576 × 1 image (a few hundred bytes of PNG) into 1,048,576 × 32
    pixels, so the limits count the padded size; the aspect-ratio cap refuses such strips whatever their area.

    Attributes:
        max_pixels: Largest area, width × height after resizing and padding.
        max_aspect_ratio: Largest ratio of the long side to the short side after resizing and padding.
        size_multiple: The model pads both sides up to multiples of this (its output stride).
        scale: The largest resize factor applied before the model (multi-scale test-time augmentation).
    """

    max_pixels: int = MAX_MODEL_PIXELS
    max_aspect_ratio: float = MAX_ASPECT_RATIO
    size_multiple: int = 32
    scale: float = 1.0


def processed_size(width: int, height: int, limits: SizeLimits) -> tuple[int, int]:
    """The (width, height) the model processes for an image of `width` × `height`: resized, then padded."""
    multiple = max(int(limits.size_multiple), 1)
    scaled = (max(math.floor(side * limits.scale), 1) for side in (width, height))
    padded_width, padded_height = (-(-side // multiple) * multiple for side in scaled)
    return padded_width, padded_height


def check_size(
    width: int, height: int, limits: SizeLimits, source: str = "image", error: type[ValueError] = ImageError
) -> None:
    """Refuse an image the model would process at too large an area or too long a strip; nothing is allocated.

    Args:
        width: The image's width in pixels (from its header or its array).
        height: Its height.
        limits: The caps, and how the model pads and resizes.
        source: How to name the image in the message (a path, "upload", "image").
        error: The error type to raise.

    Raises:
        error: The padded area is over `limits.max_pixels` or its sides' ratio over `limits.max_aspect_ratio`.
    """
    padded_width, padded_height = processed_size(width, height, limits)
    processed = f"the model processes it as {padded_width}×{padded_height}"
    if limits.scale != 1.0:
        processed += f" (resized by {limits.scale:g})"
    ratio = max(padded_width, padded_height) / min(padded_width, padded_height)
    if ratio > limits.max_aspect_ratio:
        raise error(
            f"{source}: the image is {width}×{height} pixels and {processed}, sides in a ratio of {ratio:.0f}:1, "
            f"over the {limits.max_aspect_ratio:g}:1 accepted; crop it or split it into tiles"
        )
    area = padded_width * padded_height
    if area > limits.max_pixels:
        raise error(
            f"{source}: the image is {width}×{height} pixels and {processed} = {area} pixels, over the "
            f"{limits.max_pixels} accepted; downscale it or split it into tiles"
        )


@dataclass(frozen=True)
class FileInfo:
    """Geometry of an image or mask file: size after EXIF orientation, size as stored, orientation tag."""

    size: tuple[int, int]  # (width, height) after EXIF orientation
    stored_size: tuple[int, int]
    orientation: int


# ------------------------------------------------------------------------------------------------------------------
# Opening and decoding, with the size guard
# ------------------------------------------------------------------------------------------------------------------


def _check_pixels(
    image: Image.Image,
    error: type[ValueError],
    source: str,
    what: str,
    max_pixels: int | None,
    limits: SizeLimits | None = None,
) -> None:
    """Refuse an image whose header claims too many pixels, before any pixel is decoded.

    Raises:
        error: Over PIL's decompression-bomb limit, over `max_pixels`, or too large for the model (`limits`).
    """
    width, height = image.size
    pixels = width * height
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and pixels > limit:
        raise error(_bomb_message(source, what, f"{width}×{height} = {pixels} pixels, over PIL's limit of {limit}"))
    if max_pixels is not None and pixels > max_pixels:
        raise error(
            f"{source}: the {what} is {width}×{height} = {pixels} pixels, more than the {max_pixels} accepted; "
            "downscale it"
        )
    if limits is not None:
        check_size(width, height, limits, source, error)


def _bomb_message(source: str, what: str, error: Exception | str) -> str:
    # PIL's limit stays on: a few bytes of header can otherwise claim gigapixels.
    return (
        f"{source}: {what} refused by PIL's decompression-bomb guard (possible decompression bomb: {error}); a file "
        f"this large is corrupt or hostile, or a genuine huge image: downscale or tile it below "
        f"{Image.MAX_IMAGE_PIXELS} pixels"
    )


@contextlib.contextmanager
def open_image(
    path: str | os.PathLike[str], what: str = "image", max_pixels: int | None = None, limits: SizeLimits | None = None
) -> Iterator[Image.Image]:
    """Open an image or mask file lazily (header only), with the size guard (and the model's limits, if given).

    Raises:
        DatasetNotFoundError: The file does not exist.
        DatasetError: It is not an image, or it is too large.
    """
    path = Path(path)
    _check_regular_file(path, what)
    try:
        image = Image.open(path)
    except FileNotFoundError as error:
        raise DatasetNotFoundError(f"{path}: {what} file not found; restore it or remove it from the list") from error
    except Image.DecompressionBombError as error:
        raise DatasetError(_bomb_message(str(path), what, error)) from error
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DatasetError(
            f"{path}: cannot read {what} ({error}); the file is corrupt or not an image: replace it or remove it"
        ) from error
    with image:
        _check_pixels(image, DatasetError, str(path), what, max_pixels, limits)
        yield image


def _check_regular_file(path: Path, what: str) -> None:
    """Refuse a path that exists but is not a regular file (or a link to one): reading a FIFO, a socket or a
    device blocks or never ends, and a folder is no image.

    Raises:
        DatasetError: The path is a folder, a FIFO, a socket or a device.
    """
    try:
        mode = path.stat().st_mode  # follows links; stat never blocks, unlike open on a FIFO
    except (FileNotFoundError, NotADirectoryError):
        return  # reported as a missing file by the caller
    except OSError as error:
        raise DatasetError(f"{path}: cannot read {what} ({error}); check the path and its permissions") from error
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise DatasetError(f"{path}: {what} path is {kind}, not a file; give an image file")


def image_size(image: ImageInput) -> tuple[int, int]:
    """The (width, height) of any supported image, from a file's header or an array's shape: nothing is decoded.

    Raises:
        DatasetError: A file cannot be read.
        ImageError: Bytes that are not an image.
        TypeError: An unsupported type.
    """
    if isinstance(image, (str, os.PathLike)):
        return probe(image).size
    if isinstance(image, (bytes, bytearray)):
        try:
            with Image.open(io.BytesIO(image)) as opened:
                orientation = _orientation(opened)
                width, height = opened.size
        except (UnidentifiedImageError, Image.DecompressionBombError) as error:
            raise ImageError(f"not an image ({error}); give an image file's bytes") from error
        return (height, width) if orientation in TRANSPOSING_ORIENTATIONS else (width, height)
    if isinstance(image, Image.Image):
        return image.size
    if isinstance(image, np.ndarray) and image.ndim >= 2:
        return int(image.shape[1]), int(image.shape[0])
    if isinstance(image, Tensor) and image.dim() >= 2:
        return int(image.shape[-1]), int(image.shape[-2])
    raise TypeError(
        f"unsupported image type {type(image).__name__}; give a path, bytes, PIL image, numpy array or tensor"
    )


def _orientation(image: Image.Image) -> int:
    try:
        value = int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a malformed EXIF block must not make a readable image unreadable
        return 1
    return value if 1 <= value <= 8 else 1


def decode(image: Image.Image, source: str | os.PathLike[str], what: str = "image") -> tuple[Image.Image, FileInfo]:
    """Decode an opened image and apply its EXIF orientation.

    Raises:
        DatasetError: The data is corrupt or truncated.
    """
    try:
        image.load()  # the size was checked when the file was opened (`open_image`, `decode_bytes`)
    except (OSError, ValueError, SyntaxError) as error:
        # PIL reports truncated and corrupt data as OSError, some plugins as SyntaxError or ValueError.
        raise DatasetError(
            f"{source}: cannot decode {what} ({error}); the file is corrupt or truncated: replace it or remove it"
        ) from error
    orientation = _orientation(image)
    stored_size = image.size
    if orientation != 1:
        image = ImageOps.exif_transpose(image)
    return image, FileInfo(size=image.size, stored_size=stored_size, orientation=orientation)


def probe(path: str | os.PathLike[str], what: str = "image") -> FileInfo:
    """Size and orientation from the file header, without decoding the pixels."""
    with open_image(path, what) as image:
        orientation = _orientation(image)
        width, height = image.size
    size = (height, width) if orientation in TRANSPOSING_ORIENTATIONS else (width, height)
    return FileInfo(size=size, stored_size=(width, height), orientation=orientation)


def pil_to_tensor(image: Image.Image, source: str | os.PathLike[str] = "image") -> Tensor:
    """Any PIL mode as float32 RGB [3, H, W] in [0, 1]: 16-bit and float greyscale scaled, alpha dropped."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "F":
        gray = np.array(image, dtype=np.float32)
        # 16-bit greyscale (PNG/TIFF) spans 0..65535; a float image already in [0, 1] is kept as it is.
        if mode != "F" or gray.max(initial=0.0) > 1.0:
            gray = gray / 65535.0
        gray = np.clip(gray, 0.0, 1.0)
        return torch.from_numpy(np.ascontiguousarray(np.broadcast_to(gray, (3, *gray.shape))))
    if mode != "RGB":
        try:
            image = image.convert("RGB")  # L, LA, P, PA, RGBA (alpha dropped), CMYK, YCbCr, 1
        except (ValueError, OSError) as error:
            raise DatasetError(
                f"{source}: cannot convert image mode {mode!r} to RGB ({error}); save it as RGB"
            ) from error
    array = np.array(image, dtype=np.uint8)  # [H, W, 3]
    return torch.from_numpy(array).permute(2, 0, 1).contiguous().float().div_(255.0)


def mask_to_array(image: Image.Image, source: str | os.PathLike[str]) -> np.ndarray:
    """An index mask as int64 [H, W]; colour masks are refused."""
    mode = image.mode
    if mode in ("L", "P", "1") or mode in _SIXTEEN_BIT_MODES:
        mask = np.array(image).astype(np.int64)
        if mode == "I" and mask.size and mask.min() < 0:
            raise DatasetError(f"{source}: mask holds negative values; labels must be 0..K-1 and 255 (ignore)")
        return mask
    if mode == "LA":
        return np.array(image)[..., 0].astype(np.int64)
    if mode in ("RGB", "RGBA"):
        rgb = np.array(image)[..., :3]
        # A greyscale mask saved as RGB (R == G == B) still holds indices; anything else is a colour rendering.
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all():
            return rgb[..., 0].astype(np.int64)
        raise DatasetError(
            f"{source}: mask is a colour ({mode}) image, expected a single-channel index PNG holding one class index "
            f"per pixel (0..K-1, 255 = ignore); map its colours to indices and save it in mode 'L' or 'P'"
        )
    raise DatasetError(f"{source}: mask has unsupported mode {mode!r}; save it as an 8-bit index PNG (mode 'L' or 'P')")


# ------------------------------------------------------------------------------------------------------------------
# Public readers
# ------------------------------------------------------------------------------------------------------------------


def load_image(path: str | os.PathLike[str], max_pixels: int | None = None, limits: SizeLimits | None = None) -> Tensor:
    """Read an image file as float32 RGB ``[3, H, W]`` in ``[0, 1]``, EXIF orientation applied.

    Greyscale, palette, RGBA (alpha dropped), CMYK and 16-bit images (scaled by 65535) are converted.

    Args:
        path: Image file.
        max_pixels: Refuse images with more pixels than this (PIL's decompression-bomb limit applies anyway).
        limits: Refuse images too large for the model as it will process them (checked on the header).

    Returns:
        The image tensor.

    Raises:
        DatasetNotFoundError: The file is missing.
        DatasetError: The file is corrupt, not an image, or too large.
    """
    with open_image(path, "image", max_pixels, limits) as image:
        decoded, _ = decode(image, path, "image")
        return pil_to_tensor(decoded, path)


def load_mask(path: str | os.PathLike[str]) -> Tensor:
    """Read an index mask as int64 ``[H, W]`` with its stored values (no label mapping), EXIF orientation applied.

    Raises:
        DatasetError: The file is missing, corrupt, or a colour image.
    """
    with open_image(path, "mask") as image:
        decoded, _ = decode(image, path, "mask")
        return torch.from_numpy(mask_to_array(decoded, path))


def decode_bytes(
    data: bytes, formats: Sequence[str] | None = None, max_pixels: int | None = None, limits: SizeLimits | None = None
) -> Tensor:
    """Decode an image held in memory (an upload), EXIF orientation applied; nothing touches the disk.

    Args:
        data: The file's bytes.
        formats: PIL format names accepted (e.g. ``("PNG", "JPEG")``); default: any PIL decodes.
        max_pixels: Refuse images with more pixels than this.
        limits: Refuse images too large for the model as it will process them (checked on the header).

    Returns:
        Float32 RGB [3, H, W] in [0, 1].

    Raises:
        ImageError: Empty data, not an image of an accepted format, corrupt data, or too many pixels.
    """
    if not data:
        raise ImageError("the uploaded file is empty; choose an image file")
    try:
        image = Image.open(io.BytesIO(data), formats=list(formats) if formats else None)
    except Image.DecompressionBombError as error:
        raise ImageError(_bomb_message("upload", "image", error)) from error
    except UnidentifiedImageError as error:
        accepted = f"a {', '.join(formats)}" if formats else "an image"
        raise ImageError(f"not an image: upload {accepted} file") from error
    with image:
        _check_pixels(image, ImageError, "upload", "image", max_pixels, limits)
        try:
            decoded, _ = decode(image, "upload", "image")
        except DatasetError as error:
            raise ImageError(f"the image could not be decoded ({error.__cause__}); is the file complete?") from error
        return pil_to_tensor(decoded, "upload")


def to_tensor(image: ImageInput, max_pixels: int | None = None, limits: SizeLimits | None = None) -> Tensor:
    """Any supported image as float32 RGB [3, H, W] in [0, 1].

    Args:
        image: A file path (EXIF orientation applied); the bytes of an image file; a PIL image (used as it is); a
            numpy array [H, W], [H, W, 3] or [H, W, 4] (alpha dropped) of uint8, uint16, bool or floats in [0, 1];
            or a tensor [3, H, W] (or [1, 3, H, W]) of floats in [0, 1] or uint8.
        max_pixels: Refuse files and bytes with more pixels than this.
        limits: Refuse images of any form too large for the model as it will process them, before decoding or
            converting them.

    Returns:
        The image tensor, on the input's device for tensors, else on the CPU.

    Raises:
        DatasetError: A file cannot be read, or is too large for `limits`.
        ImageError: Bytes, an array or a tensor of an unsupported form or value range, or too large for `limits`.
        TypeError: The input is of another type.
    """
    if isinstance(image, (str, os.PathLike)):
        return load_image(image, max_pixels, limits)
    if isinstance(image, (bytes, bytearray)):
        return decode_bytes(bytes(image), max_pixels=max_pixels, limits=limits)
    if isinstance(image, Image.Image):
        if limits is not None:
            check_size(*image.size, limits)
        return pil_to_tensor(image)
    if isinstance(image, np.ndarray):
        if limits is not None and image.ndim >= 2 and image.shape[0] and image.shape[1]:
            check_size(image.shape[1], image.shape[0], limits)
        return _array_to_tensor(image)
    if isinstance(image, Tensor):
        if limits is not None and image.dim() >= 2 and image.shape[-1] and image.shape[-2]:
            check_size(image.shape[-1], image.shape[-2], limits)
        return _check_tensor(image)
    raise TypeError(
        f"unsupported image type {type(image).__name__}; give a path, bytes, PIL image, numpy array or tensor"
    )


def _array_to_tensor(array: np.ndarray) -> Tensor:
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        array = array[..., :3]
    elif array.ndim != 2:
        raise ImageError(
            f"numpy images must be [H, W], [H, W, 3] or [H, W, 4] (channels last), got shape {array.shape}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"the image is empty (shape {array.shape})")
    if array.dtype == np.uint8:
        scaled = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        scaled = array.astype(np.float32) / 65535.0
    elif array.dtype == np.bool_:
        scaled = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.floating):
        scaled = array.astype(np.float32)
        _check_unit_range(torch.from_numpy(scaled))
    else:
        raise ImageError(f"unsupported image dtype {array.dtype}; use uint8, uint16 or floats scaled to [0, 1]")
    tensor = torch.from_numpy(np.ascontiguousarray(scaled))
    if tensor.dim() == 2:
        tensor = tensor.unsqueeze(-1)
    return tensor.permute(2, 0, 1).expand(3, -1, -1).contiguous()


def _check_tensor(image: Tensor) -> Tensor:
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ImageError(f"image tensors must be [3, H, W] (or [1, 3, H, W]), got {tuple(image.shape)}")
    if image.shape[-1] == 0 or image.shape[-2] == 0:
        raise ImageError(f"the image is empty (shape {tuple(image.shape)})")
    if image.dtype == torch.uint8:
        image = image.float() / 255.0
    elif image.is_floating_point():
        image = image.float()
        _check_unit_range(image)
    else:
        raise ImageError(f"unsupported tensor dtype {image.dtype}; use floats scaled to [0, 1] or uint8")
    return image.expand(3, -1, -1)


def _check_unit_range(image: Tensor) -> None:
    low, high = float(image.min()), float(image.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ImageError("the image holds NaN or infinite values")
    # A little slack for resampling overshoot.
    if low < -1e-3 or high > 1.0 + 1e-3:
        raise ImageError(
            f"float images must be scaled to [0, 1], got values in [{low:.3g}, {high:.3g}]; divide 8-bit data by 255"
        )
