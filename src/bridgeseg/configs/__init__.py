"""The shipped training configs, as package data: `<dataset>/<method>_<backbone>_<crop>_<iterations>.yaml`.

`bridgeseg fit --config mosaic/bridge_efficientnet_lite0_128x128_600.yaml` finds a shipped config by name from
any folder, as mmseg's `mim` does; a path to a file of your own still works (and wins when both exist).

Example:
    >>> resolve_config("mosaic/bridge_efficientnet_lite0_128x128_600.yaml").name
    'bridge_efficientnet_lite0_128x128_600.yaml'
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CONFIG_DIR", "list_configs", "resolve_config"]

CONFIG_DIR = Path(__file__).resolve().parent
# `configs/<name>` was the path in a source checkout before the configs were shipped; it names the same config.
_CHECKOUT_PREFIX = "configs/"


def list_configs() -> list[str]:
    """The shipped configs' names, e.g. "ade20k/bridge_efficientnet_lite0_512x512_80k.yaml"."""
    return sorted(path.relative_to(CONFIG_DIR).as_posix() for path in CONFIG_DIR.glob("*/*.yaml"))


def resolve_config(name: str | os.PathLike[str]) -> Path:
    """The file of a config given as a path or as a shipped config's name.

    Args:
        name: An existing file, or a shipped name ("mosaic/bridge_efficientnet_lite0_128x128_600.yaml"; the
            ".yaml" and a leading "configs/" may be left out).

    Returns:
        The path to read.

    Raises:
        FileNotFoundError: Neither a file nor a shipped config; the message lists the shipped names.
    """
    path = Path(name)
    if path.is_file():
        return path
    relative = path.as_posix()
    if relative.startswith(_CHECKOUT_PREFIX):
        relative = relative[len(_CHECKOUT_PREFIX) :]
    if not relative.endswith((".yaml", ".yml")):
        relative += ".yaml"
    shipped = CONFIG_DIR / relative
    if ".." not in Path(relative).parts and shipped.is_file():
        return shipped
    raise FileNotFoundError(
        f"config {str(name)!r}: no such file and no shipped config of that name; shipped configs: "
        + ", ".join(list_configs())
    )
