"""`bridgeseg cost`: one row per method, the text encoder loaded once and counted for every text method."""

from __future__ import annotations

import pytest

import bridgeseg.models.methods.base as methods_base
from bridgeseg.cli import main
from bridgeseg.models.text import create_text_encoder


def test_cost_table_loads_the_text_encoder_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    loads = []

    def counting(*args, **kwargs):
        loads.append(args)
        return create_text_encoder(*args, **kwargs)

    monkeypatch.setattr(methods_base, "create_text_encoder", counting)
    assert main(["cost", "--backbone", "mobilenetv2_100", "--size", "64", "--num-classes", "5"]) == 0
    assert len(loads) == 1
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "/" in line]
    text_columns = {row.split("|")[1].split("/")[0].strip(): float(row.split("|")[4]) for row in rows}
    assert set(text_columns) == {"bridge", "denseclip", "lseg", "fpn", "lraspp", "segformer"}
    assert text_columns["fpn"] == text_columns["lraspp"] == text_columns["segformer"] == 0.0
    # all-MiniLM-L6-v2 has 22.7 M parameters, the same in every row that uses it.
    assert text_columns["bridge"] == text_columns["denseclip"] == text_columns["lseg"] == pytest.approx(22.71, abs=0.01)
