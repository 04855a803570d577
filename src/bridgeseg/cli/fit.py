"""`bridgeseg fit | validate | test`: training and evaluation with Lightning (`bridgeseg.engine.lightning`).

`--config` takes a YAML file or a shipped config's name, e.g. `mosaic/bridge_efficientnet_lite0_128x128_600.yaml`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

COMMANDS = ("fit", "validate", "test")


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """List the commands in `bridgeseg --help`; LightningCLI parses their arguments itself."""
    for name in COMMANDS:
        commands.add_parser(
            name,
            help=f"{name} with a YAML config or a shipped config's name (`bridgeseg {name} --help`)",
            add_help=False,
        )


def run(argv: Sequence[str]) -> None:
    """Run LightningCLI with `argv` (the command first)."""
    from bridgeseg.engine.lightning import run_lightning_cli  # Lightning is slow to import; --help need not wait

    run_lightning_cli(argv)
