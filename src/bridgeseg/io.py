"""File writing that loses nothing: temporary file, fsync, rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Write a file so that a crash or a full disk leaves any previous version intact.

    Args:
        path: Destination.
        write: Called with an open binary file to fill.

    Returns:
        The destination path.

    Raises:
        OSError: The write failed (e.g. no space left); the destination is untouched and the partial
            temporary file removed. A process killed during the write (SIGKILL, power loss) cannot remove it: a
            hidden `.<name>.<random>.tmp` may be left next to the destination, never a partial file under its name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.exists()
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        if isinstance(error, OSError):
            kept = "the previous file is kept" if existed else "no partial file is left"
            raise OSError(error.errno, f"could not write {path}: {error.strerror or error}; {kept}") from error
        raise
    with contextlib.suppress(OSError):
        # Persist the rename itself.
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    return path
