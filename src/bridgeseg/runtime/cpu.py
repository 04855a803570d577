"""What the CPU offers: native bfloat16, and the `precision` option that depends on it.

`bf16_is_fast` says whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere PyTorch emulates
it and a bf16 forward is slower than fp32. `resolve_precision` turns the `precision` option of
`bridgeseg.Predictor` ("fp32", the default; "bf16"; "auto") into an autocast dtype.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch

from bridgeseg.options import check_precision

__all__ = ["bf16_is_fast", "cpuinfo_flags", "detect_native_bf16", "resolve_precision"]

logger = logging.getLogger(__name__)

# The CPU flags (as /proc/cpuinfo names them) of native bf16 arithmetic: AVX512-BF16 and AMX's bf16 tiles.
_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def bf16_is_fast() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), so that a bf16 forward beats fp32.

    The answer is detected once per process (`detect_native_bf16`); tests pin it, so that no outcome depends on the
    CPU that runs them.
    """
    return detect_native_bf16()


@functools.cache
def detect_native_bf16() -> bool:
    """Ask the CPU whether it computes bfloat16 natively (cached: the CPU does not change while a process runs).

    PyTorch's own CPU capability query is used; without it (older PyTorch), the flags of /proc/cpuinfo.
    Elsewhere (AVX2, AVX512 without BF16, Arm, macOS) oneDNN emulates bf16 and it is slower than fp32.
    """
    queries = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(callable(query) for query in queries):
        return any(bool(query()) for query in queries)
    return bool(cpuinfo_flags() & _BF16_CPU_FLAGS)


def cpuinfo_flags(path: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU flags Linux reports; empty where there is no such file."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return flags


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> torch.dtype | None:
    """The autocast dtype of a `precision` option: None for fp32, `torch.bfloat16` for bf16.

    "auto" (asked for; the default is fp32) is bf16 on a CPU that computes it natively (`bf16_is_fast`) and fp32
    everywhere else (GPUs included: choose bf16 there explicitly). An explicit "bf16" on a CPU without native bf16
    works but is slower than fp32, and says so once in the log.

    Raises:
        ValueError: An unknown precision.
    """
    check_precision(precision)
    on_cpu = torch.device(device).type == "cpu"
    if precision == "auto":
        return torch.bfloat16 if on_cpu and bf16_is_fast() else None
    if precision == "fp32":
        return None
    if on_cpu and not bf16_is_fast():
        logger.warning(
            "bf16 on this CPU is emulated (no AVX512-BF16 or AMX): it will be slower than fp32; "
            "use --precision fp32 for speed"
        )
    return torch.bfloat16
