"""What the benchmark scripts end with: their table (`.md`) and their record (`.json`), written atomically."""

from __future__ import annotations

import json
from pathlib import Path

from bridgeseg.io import write_atomically


def write_results(out: Path, summary: dict, table: str) -> None:
    """Write `out`.md and `out`.json (`out` is a path without suffix), and print the table and what was written."""
    write_atomically(out.with_suffix(".md"), lambda file: file.write(table.encode()))
    write_atomically(out.with_suffix(".json"), lambda file: file.write((json.dumps(summary, indent=2) + "\n").encode()))
    print(table)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
