"""What several commands share: the default checkpoint and the device option."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEFAULT_CHECKPOINT = "outputs/demo/model"
"""The demo model (`bridgeseg demo` writes it)."""


def add_checkpoint_argument(parser: argparse.ArgumentParser, kinds: str) -> None:
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help=f"{kinds} (default: the demo model)")


def check_device(device: str) -> torch.device:
    """The `--device` value as a torch device that exists on this machine.

    Raises:
        ValueError: Not a device name, or CUDA/MPS asked for where there is none.
    """
    import torch  # here, not at the top: the parsers of every command are built without torch

    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"invalid device {device!r}; use e.g. 'cpu', 'cuda' or 'cuda:1'") from error
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA is not available on this machine; use --device cpu")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("MPS is not available on this machine; use --device cpu")
    return parsed
