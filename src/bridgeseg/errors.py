"""The errors a user can fix, in one small module that every layer may import.

The command line prints them as one line (`error: ...`, exit code 2), the web app as a 400 answer; the library
raises them with messages that say what to do. All but `UserError` are `ValueError`s, so callers that catch
bad input as `ValueError` keep working.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "DatasetError",
    "DatasetNotFoundError",
    "ImageError",
    "OutputExistsError",
    "UserError",
    "first_line",
]


class UserError(Exception):
    """Bad command-line arguments or environment (a missing extra, a taken port), reported without a traceback."""


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, unsafe, or not one bridgeseg can rebuild."""


class ImageError(ValueError):
    """An image given in memory (bytes, PIL image, array, tensor) cannot be read or is not one bridgeseg takes."""


class DatasetError(ValueError):
    """An image or mask file, or a dataset folder, is unreadable or breaks the expected layout or label convention."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """An image or mask file, a dataset root, split folder or split file does not exist."""


class OutputExistsError(ValueError):
    """A command would replace a file a user made: an existing output without `--overwrite`, or one of its inputs."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message ("" when it has none): enough for a one-line report."""
    text = str(error).strip()
    return text.splitlines()[0] if text else ""
