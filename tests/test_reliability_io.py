"""Faults while writing: a killed writer, a full disk, an interrupt. Whatever was there before must survive."""

from __future__ import annotations

import errno
import io
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import torch

from bridgeseg.cli import main
from bridgeseg.io import write_atomically
from tests.engine.helpers import fit_args, load_checkpoint, make_folder_dataset

REPO = Path(__file__).resolve().parents[1]
OLD = b"the previous, complete version\n"

SLOW_WRITER = textwrap.dedent(
    """
    import sys, time
    from bridgeseg.io import write_atomically

    def write(handle):
        handle.write(b"partial new version " * 50_000)  # ~1 MB, flushed to the temporary file
        handle.flush()
        print("writing", flush=True)
        time.sleep(600)  # killed here

    write_atomically(sys.argv[1], write)
    """
)


def no_space(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


def test_writer_killed_mid_write_leaves_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "model.ckpt"
    target.write_bytes(OLD)
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(target)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert child.stdout.readline() == b"writing\n", child.stderr.read().decode()
        (partial,) = leftovers(tmp_path)  # the new bytes go to a hidden temporary file, never to the target
        assert partial.startswith(".model.ckpt.") and (tmp_path / partial).stat().st_size > 500_000
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()
    assert target.read_bytes() == OLD
    # SIGKILL leaves no chance to clean up: the hidden temporary file stays (docs/troubleshooting.md), harmless.
    assert [path.name for path in tmp_path.iterdir() if not path.name.startswith(".")] == ["model.ckpt"]
    write_atomically(target, lambda handle: handle.write(b"next version"))
    assert target.read_bytes() == b"next version"


@pytest.mark.parametrize("failing", ["write", "fsync"])
def test_full_disk_keeps_the_previous_file_and_says_so(
    failing: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "last.ckpt"
    target.write_bytes(OLD)

    def write(handle: BinaryIO) -> None:
        handle.write(b"x" * 4096)
        if failing == "write":
            no_space()

    if failing == "fsync":
        monkeypatch.setattr("bridgeseg.io.os.fsync", no_space)
    with pytest.raises(OSError) as info:
        write_atomically(target, write)
    assert info.value.errno == errno.ENOSPC
    assert str(info.value) == f"[Errno 28] could not write {target}: No space left on device; the previous file is kept"
    assert target.read_bytes() == OLD and leftovers(tmp_path) == []


def test_interrupt_mid_write_removes_the_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "config.yaml"
    target.write_bytes(OLD)

    def write(handle: BinaryIO) -> None:
        handle.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, write)
    assert target.read_bytes() == OLD and leftovers(tmp_path) == []


def test_full_disk_during_training_stops_with_one_line_and_keeps_the_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_folder_dataset(tmp_path / "data", num_train=4, num_val=1)
    run = tmp_path / "run"
    assert main(["fit", *fit_args(data, run, max_steps=2, **{"--trainer.val_check_interval": "2"})]) == 0
    checkpoints = run / "checkpoints"
    before = {name: (checkpoints / name).read_bytes() for name in ("last.ckpt", "best.ckpt")}
    capsys.readouterr()

    real_save = torch.save

    def save_until_the_disk_fills(obj: Any, handle: BinaryIO, *args: Any, **kwargs: Any) -> None:
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        handle.write(buffer.getvalue()[: buffer.tell() // 2])
        no_space()

    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    args = fit_args(data, run, max_steps=4, **{"--trainer.val_check_interval": "2"})
    code = main(["fit", *args, "--ckpt_path", "last"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    (error,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: [Errno 28] could not write {checkpoints}{os.sep}")
    assert error.endswith(".ckpt: No space left on device; the previous file is kept")
    monkeypatch.undo()
    for name, content in before.items():
        assert (checkpoints / name).read_bytes() == content
        assert load_checkpoint(checkpoints / name)["global_step"] == 2
    assert leftovers(checkpoints) == []


def test_written_files_take_the_umask_and_replaced_files_keep_their_mode(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        new = write_atomically(tmp_path / "new.json", lambda handle: handle.write(b"{}"))
        assert stat.S_IMODE(new.stat().st_mode) == 0o644
        os.umask(0o077)
        private = write_atomically(tmp_path / "private.json", lambda handle: handle.write(b"{}"))
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        shared = tmp_path / "shared.safetensors"
        shared.write_bytes(b"old")
        shared.chmod(0o664)
        write_atomically(shared, lambda handle: handle.write(b"new"))
        assert stat.S_IMODE(shared.stat().st_mode) == 0o664 and shared.read_bytes() == b"new"
    finally:
        os.umask(previous)
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_fifo_is_refused_quickly_as_an_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Reading a FIFO blocks until a writer comes: `predict` hung on `mkfifo f.png`. It must be refused unread."""
    from bridgeseg.errors import DatasetError
    from bridgeseg.images import load_image

    fifo = tmp_path / "f.png"
    os.mkfifo(fifo)
    outcome: dict[str, Any] = {}

    def attempt() -> None:
        with pytest.raises(DatasetError, match="is a FIFO, not a file; give an image file") as refused:
            load_image(fifo)
        outcome["message"] = str(refused.value)
        outcome["code"] = main(
            ["predict", "--checkpoint", str(tmp_path / "unused"), "--out", str(tmp_path / "out"), str(fifo)]
        )

    reader = threading.Thread(target=attempt, daemon=True)
    reader.start()
    reader.join(timeout=30)
    if reader.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a writer lets the blocked reader return
        pytest.fail("reading a FIFO blocked")
    assert outcome["message"].startswith(str(fifo))
    assert outcome["code"] == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"error: no images found: {fifo}: not a regular file (a FIFO, socket or device); give image files or folders"
    ]
