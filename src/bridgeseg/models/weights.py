"""Weight files: the one reader of every state dict bridgeseg loads, and the `openclip:` spec both towers share.

Every weights file, whoever asks for it (a backbone's `pretrained` file, an open_clip tower, a saved model), is read
here without unpickling code: safetensors files with `safetensors`, the torch formats in `WEIGHT_SUFFIXES` with
`torch.load(..., weights_only=True)`.

Example:
    >>> spec = parse_openclip_spec("openclip:RN50:openai")
    >>> spec.arch, spec.weights
    ('RN50', 'openai')
"""

from __future__ import annotations

import logging
import os
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "OPENCLIP_PREFIX",
    "WEIGHT_SUFFIXES",
    "OpenClipSpec",
    "download_openclip_weights",
    "load_torch_file",
    "openclip_weights_file",
    "parse_openclip_spec",
    "read_safetensors",
    "read_state_dict",
]

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
OPENCLIP_PREFIX = "openclip:"

# Maps a tensor's name to the name it is kept under, or None to leave it unread.
KeySelector = Callable[[str], str | None]


# ---------------------------------------------------------------------------------------------- reading files


def read_state_dict(path: str | os.PathLike[str], select: KeySelector | None = None) -> dict[str, Tensor]:
    """Read the tensors of a weights file without unpickling code.

    Training checkpoints' wrappers (`state_dict`, then `model`) are unwrapped and a DistributedDataParallel
    `module.` prefix on every key is dropped. OpenAI's original CLIP files, TorchScript archives, give their state
    dict; reading it runs no pickled Python.

    Args:
        path: A file ending in one of `WEIGHT_SUFFIXES`.
        select: Maps each (prefix-free) key to the name to keep it under, or to None to skip it; a skipped tensor
            of a safetensors file is never read. Default: every tensor under its own name.

    Returns:
        The tensors, on the CPU.

    Raises:
        ValueError: The file's ending is not one of `WEIGHT_SUFFIXES`, or it holds no state dict.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise ValueError(f"Unsupported weights file {str(path)!r}: expected one of {', '.join(WEIGHT_SUFFIXES)}.")
    if suffix == ".safetensors":
        return read_safetensors(path, select)[0]
    if _is_torchscript_archive(path):
        logger.info("%s is a TorchScript archive; reading its state dict.", path)
        with warnings.catch_warnings():
            # torch.jit.load is deprecated in favour of torch.export, which cannot read these files. Only that
            # notice: its Python 3.14 warning ("may break") and any other FutureWarning stay visible.
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated", category=FutureWarning)
            checkpoint: Any = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        # mmap: the tensors a selection skips (the visual tower of a whole CLIP checkpoint) are never read in.
        checkpoint = load_torch_file(path, mmap=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(wrapper), Mapping):
            checkpoint = checkpoint[wrapper]
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a state dict of tensors.")
    tensors = {str(key): value for key, value in checkpoint.items() if isinstance(value, Tensor)}
    return {name: tensors[key] for key, name in _selection(tensors, select).items()}


def read_safetensors(
    path: str | os.PathLike[str], select: KeySelector | None = None
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors and the header metadata of a safetensors file, reading only the selected tensors.

    Args:
        path: The file.
        select: As for `read_state_dict`.

    Returns:
        The tensors (on the CPU) and the metadata (empty when the file has none).

    Raises:
        Exception: `safetensors`' own error for a damaged file.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as file:
        metadata = file.metadata() or {}
        # A safetensors handle is not iterable, hence keys().
        selection = _selection(file.keys(), select)
        return {name: file.get_tensor(key) for key, name in selection.items()}, metadata


def load_torch_file(path: str | os.PathLike[str], mmap: bool = False) -> Any:
    """`torch.load` onto the CPU with `weights_only=True`, which refuses any pickle that would run code.

    Args:
        path: The file.
        mmap: Map the file instead of reading it; legacy (non-zip) files, which cannot be mapped, are read.

    Returns:
        What the file holds: tensors in plain containers.
    """
    if mmap:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            logger.debug("%s cannot be memory-mapped; reading it", path, exc_info=True)
    return torch.load(path, map_location="cpu", weights_only=True)


def _selection(keys: Iterable[str], select: KeySelector | None) -> dict[str, str]:
    """{key in the file: name to keep it under} for the keys `select` keeps, a DDP `module.` prefix dropped."""
    keys = list(keys)
    wrapped = bool(keys) and all(key.startswith("module.") for key in keys)  # saved from DistributedDataParallel
    selection = {}
    for key in keys:
        name: str | None = key.removeprefix("module.") if wrapped else key
        if select is not None:
            name = select(name)
        if name is not None:
            selection[key] = name
    return selection


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        # torch.load's own test for TorchScript: a top-level constants.pkl record.
        return any(name.count("/") == 1 and name.endswith("/constants.pkl") for name in archive.namelist())


# ----------------------------------------------------------------------------------------------- open_clip


class OpenClipSpec(NamedTuple):
    """The parts of `openclip:<arch>[:<tag or file>]`.

    Attributes:
        arch: An open_clip architecture name or the path of a model config `.json`.
        weights: A pretrained tag, the path of a weights file, or "" for none.
    """

    arch: str
    weights: str


def parse_openclip_spec(spec: str) -> OpenClipSpec:
    """Split `openclip:<arch>[:<tag or file>]` at its first two colons, so a path with colons stays whole.

    Raises:
        ValueError: The spec does not start with `openclip:` or names no architecture.
    """
    kind, _, rest = spec.partition(":")
    if kind.lower() != OPENCLIP_PREFIX[:-1]:
        raise ValueError(f"{spec!r} is not an open_clip spec; write openclip:<arch>:<tag>.")
    arch, _, weights = rest.partition(":")
    if not arch:
        raise ValueError(f"Missing open_clip architecture in {spec!r}; write openclip:<arch>:<tag>.")
    return OpenClipSpec(arch, weights)


def openclip_weights_file(weights: str) -> Path | None:
    """The local file the weights part of a spec names, or None when it is a pretrained tag.

    Raises:
        FileNotFoundError: It reads as a path (a folder separator or a weights file ending) but no file is there.
    """
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    if os.sep in weights or "/" in weights or weights.lower().endswith(WEIGHT_SUFFIXES):
        raise FileNotFoundError(f"open_clip weights file {path} not found; check the path in the spec.")
    return None


def download_openclip_weights(arch: str, tag: str) -> tuple[str, dict[str, Any]]:
    """Fetch the weights of a pretrained tag through open_clip's registry (a network the first time).

    Returns:
        The local weights file and the tag's pretrained config (mean, std, quick_gelu, ...).

    Raises:
        ValueError: The tag is not one of the architecture's (the message lists them).
        RuntimeError: The weights cannot be downloaded.
    """
    import open_clip

    pretrained_cfg = open_clip.pretrained.get_pretrained_cfg(arch, tag)
    if not pretrained_cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ValueError(
            f"Unknown pretrained tag {tag!r} for open_clip {arch!r}; valid tags: {tags or 'none'}, "
            "or give a local weights file."
        )
    try:
        weights_path = open_clip.pretrained.download_pretrained(pretrained_cfg)
    except Exception as error:
        raise RuntimeError(
            f"Could not download open_clip weights {arch}:{tag} ({error}). Without a network, "
            f"download them elsewhere and pass the file: openclip:{arch}:/path/to/weights.safetensors"
        ) from error
    if not weights_path:
        raise RuntimeError(f"open_clip has no download source for {arch}:{tag}; pass a local weights file.")
    return str(weights_path), dict(pretrained_cfg)
