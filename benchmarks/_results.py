"""What the benchmark scripts end with: their table (`.md`) and their record (`.json`), written atomically."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from bridgeseg.io import write_atomically


def write_results(out: Path, summary: dict, table: str) -> None:
    """Write `out`.md and `out`.json (`out` is a path without suffix), and print the table and what was written."""
    write_atomically(out.with_suffix(".md"), lambda file: file.write(table.encode()))
    write_atomically(out.with_suffix(".json"), lambda file: file.write((json.dumps(summary, indent=2) + "\n").encode()))
    print(table)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


def script_main(
    script: str,
    parse_args: Callable[[list[str]], argparse.Namespace],
    run: Callable[[argparse.Namespace], dict],
    to_markdown: Callable[[dict], str],
    argv: list[str] | None = None,
    plot: Callable[[argparse.Namespace, dict], None] | None = None,
) -> int:
    """The `main` of a benchmark script: parse `argv`, run, write the results to `--out` (see `write_results`).

    `args.command` is the command line that reproduces the run, for the record. A script with figures passes
    `plot`, which draws them from the summary after the results are written; with `--plot-only` (`args.plot_only`)
    nothing is run and `plot` redraws them from the JSON an earlier run wrote to `--out`.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.command = shlex.join(["python", f"benchmarks/{script}", *argv])
    out = Path(args.out)
    if plot is not None and getattr(args, "plot_only", False):
        plot(args, json.loads(out.with_suffix(".json").read_text()))
        return 0
    summary = run(args)
    write_results(out, summary, to_markdown(summary))
    if plot is not None:
        plot(args, summary)
    return 0
