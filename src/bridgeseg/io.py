"""File writing that loses nothing: temporary file, fsync, rename."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Write a file so that a crash or a full disk leaves any previous version intact.

    The file gets the permissions `open()` would give it: a new file those of the umask (0644 under the usual
    022), a replaced file its previous mode.

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
    try:
        previous_mode: int | None = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        previous_mode = None
    existed = previous_mode is not None
    # Not tempfile.mkstemp: it creates the file 0600 whatever the umask, and a replaced 0644 file would turn 0600.
    for _ in range(100):
        temporary = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel applies the umask
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"could not create a temporary file next to {path}")
    try:
        if previous_mode is not None:
            os.chmod(temporary, previous_mode)
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
