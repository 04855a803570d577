"""`bridgeseg serve`'s options: fp32 unless asked, as `predict`."""

from __future__ import annotations

import pytest

from bridgeseg.cli import build_parser


def test_serve_precision_is_fp32_unless_asked() -> None:
    parser = build_parser()
    assert parser.parse_args(["serve"]).precision == "fp32"
    assert parser.parse_args(["serve", "--precision", "auto"]).precision == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--precision", "fp16"])
