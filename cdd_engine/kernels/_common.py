"""Helpers shared by the Triton launchers: device checks and small host-side utilities."""
from __future__ import annotations

import functools
import os

import torch


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_device(t: torch.Tensor, what: str) -> None:
    """Kernels run on CUDA tensors, or on any device under the interpreter."""
    if t.device.type != "cuda" and not interpreting():
        raise ValueError(f"{what} must be a CUDA tensor (or run with TRITON_INTERPRET=1 for the CPU "
                         f"interpreter), got device {t.device}")


@functools.lru_cache(maxsize=16)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Number of streaming multiprocessors (1 on the CPU interpreter)."""
    if device.type != "cuda":
        return 1
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def pow2_factor(x: int, cap: int) -> int:
    """Largest power of two <= cap dividing x (1 for x == 0 or odd x).

    Launchers pass a stride s as (s // a, a) with ``a`` a constexpr, so Triton's alignment
    analysis knows s is a multiple of ``a`` and can vectorise loads along that axis.
    """
    if x <= 0:
        return 1
    a = 1
    while a < cap and x % (2 * a) == 0:
        a *= 2
    return a


def next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)
