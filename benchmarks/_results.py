"""What the benchmark scripts end with: their table (`.md`) and their record (`.json`), written atomically."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path

from bridgeseg.io import write_atomically


def write_results(out: Path, summary: dict, table: str) -> None:
    """Write `out`.md and `out`.json (`out` is a path without suffix), and print the table and what was written."""
    write_atomically(out.with_suffix(".md"), lambda file: file.write(table.encode()))
    write_atomically(out.with_suffix(".json"), lambda file: file.write((json.dumps(summary, indent=2) + "\n").encode()))
    print(table)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


def script_main(script: str, parse_args, run, to_markdown, argv: list[str] | None = None) -> int:
    """The `main` of a benchmark script: parse `argv`, run, write the results to `--out` (see `write_results`).

    `args.command` is the command line that reproduces the run, for the record.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.command = shlex.join(["python", f"benchmarks/{script}", *argv])
    summary = run(args)
    write_results(Path(args.out), summary, to_markdown(summary))
    return 0
