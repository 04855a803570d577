"""Files in and out: writing that loses nothing (temporary file, fsync, rename), the one rule on what a command
may replace, and one explanation of every way a PyTorch checkpoint can be damaged or unsafe
(`bridgeseg.models.weights` reads them without unpickling code).

The rule, for every command that writes (`predict`, `export`, `demo`, `data`): an output that already exists is
refused unless `--overwrite` is given (`refuse_existing`), an output that is, or lies inside, one of the command's
inputs is refused even with it (`refuse_input_as_output`), and an output folder that is a file is named as such
(`check_output_folder`). Each check runs before any work starts.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import secrets
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

from bridgeseg.errors import CheckpointError, OutputExistsError, first_line


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
    _make_parent(path)
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
        except OSError as error:  # named after the destination: the temporary file means nothing to the user
            raise OSError(error.errno, f"could not write {path}: {error.strerror or error}") from error
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


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(error.errno, f"could not write {path}: {error.strerror or error} ({path.parent})") from error


def check_writable(path: str | os.PathLike[str]) -> None:
    """Fail now, not after minutes of work, when `path` cannot be written (`write_atomically` will write it).

    Creates the folder if needed and a temporary file next to `path`, then removes the file: a read-only or full
    file system, missing permissions or a parent that is a file all show here.

    Raises:
        OSError: `path` cannot be written; the message names it.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"could not write {path}: it is a folder; give a file name")
    _make_parent(path)
    probe = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except OSError as error:
        raise OSError(error.errno, f"could not write {path}: {error.strerror or error}") from error
    with contextlib.suppress(OSError):
        os.unlink(probe)


def refuse_existing(
    outputs: Iterable[str | os.PathLike[str]],
    overwrite: bool,
    option: str,
    folder: str | os.PathLike[str] | None = None,
) -> None:
    """Refuse to replace outputs that already exist, unless `overwrite` (`--overwrite`) is set.

    Args:
        outputs: Every file or folder the command is about to write.
        overwrite: The user passed `--overwrite`.
        option: The option that chose the outputs' place, for the advice ("--out", "--onnx").
        folder: When the outputs are files of one `--out` folder: that folder (the message counts the files in it).

    Raises:
        OutputExistsError: Some output exists and `overwrite` is not set; nothing has been written.
    """
    existing = [Path(output) for output in outputs if os.path.lexists(output)]
    if overwrite or not existing:
        return
    if folder is not None:
        names = [path.name for path in existing]
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise OutputExistsError(
            f"{folder} already holds {len(names)} of the output files ({shown}); pass --overwrite to replace "
            f"them, or choose another {option} folder"
        )
    kind = "folder" if existing[0].is_dir() else "file"
    raise OutputExistsError(
        f"{existing[0]} already exists; pass --overwrite to replace it, or choose another {option} {kind}"
    )


def refuse_input_as_output(
    output: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]], option: str
) -> None:
    """Refuse an output that is one of the command's inputs or lies inside an input folder, `--overwrite` or not.

    Paths are compared resolved (symbolic links followed, `..` removed), so another spelling of the input is caught.

    Args:
        output: A file or folder the command is about to write.
        inputs: The files and folders it reads.
        option: The option that named the output ("--out", "--onnx").

    Raises:
        OutputExistsError: `output` is, or is inside, an input; nothing has been written.
    """
    target = Path(output).resolve()
    for source in inputs:
        resolved = Path(source).resolve()
        if target == resolved or resolved in target.parents:
            relation = "is" if target == resolved else "is inside"
            raise OutputExistsError(
                f"the output {output} {relation} the input {source}: writing it would destroy the input, so it is "
                f"refused even with --overwrite; choose another {option}"
            )


def check_output_folder(path: str | os.PathLike[str], option: str = "--out") -> None:
    """Refuse an output folder that exists as something else than a folder (a regular file, a FIFO...).

    Raises:
        OutputExistsError: `path` exists and is not a folder.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{option} {path} is a file; {option} must be a folder (a new or an existing one)")


def checkpoint_error(path: str | os.PathLike[str], error: BaseException) -> CheckpointError:
    """What went wrong reading a PyTorch checkpoint with `torch.load(..., weights_only=True)`, as one line.

    Args:
        path: The checkpoint.
        error: What `torch.load` raised.

    Returns:
        The error to raise: missing, unreadable, corrupt or truncated, or unsafe (a pickle holding code or objects).
    """
    if isinstance(error, pickle.UnpicklingError):
        if "weights only load failed" not in str(error).lower():
            return CheckpointError(f"{path}: corrupt file, not a PyTorch checkpoint ({first_line(error)})")
        # The wording differs between torch versions.
        culprit = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", str(error))
        if culprit:
            return CheckpointError(
                f"{path}: not a safe checkpoint: it holds Python objects ({culprit.group(1)}) that only a full "
                "unpickle could rebuild, which can execute arbitrary code; bridgeseg refuses to load it"
            )
        reason = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
        return CheckpointError(
            f"{path}: not a safe checkpoint: the weights-only loader refused it "
            f"({reason.group(1).strip() if reason else 'unknown content'}); the file is corrupt or holds objects "
            "that would have to be unpickled"
        )
    if isinstance(error, FileNotFoundError):
        return CheckpointError(f"{path}: no such checkpoint; check the path")
    if isinstance(error, OSError) and error.errno == errno.ELOOP:
        return CheckpointError(f"{path}: a symbolic link that loops back on itself; point it at a checkpoint")
    if isinstance(error, OSError) and not isinstance(error, EOFError):
        return CheckpointError(f"{path}: cannot read ({error})")
    # A truncated zip (RuntimeError), an empty file (EOFError), garbage (KeyError, ValueError)...
    message = first_line(error) or type(error).__name__
    return CheckpointError(f"{path}: corrupt or truncated checkpoint ({message}); re-copy it or use another checkpoint")
