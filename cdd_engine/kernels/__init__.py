"""Triton kernels of cdd-engine: fused anomaly map and fused pre-processing.

They run on CUDA tensors, or on the CPU under ``TRITON_INTERPRET=1``, which must be set before
Triton is first imported (``triton.jit`` decides at decoration time, Triton's own library
functions included). Importing this package does not import Triton; the first use of
``fused_anomaly_map`` / ``fused_preprocess`` does. ``cdd_engine.kernels.aot`` compiles them ahead of time
for the C++ engine.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["fused_anomaly_map", "fused_preprocess"]
_LAZY = {"fused_anomaly_map": ".anomaly_map", "fused_preprocess": ".preprocess"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
