"""Test helpers: import the kernel modules in Triton's CPU interpreter mode.

``triton.jit`` picks the interpreter when a function is *decorated*, Triton's own library
functions (``tl.zeros``, ``tl.sum``...) included, so ``TRITON_INTERPRET=1`` must be set before
Triton is first imported in the process; Triton cannot be imported twice. :func:`interpreted`
sets it and imports a kernel module; if Triton was already imported for the GPU it says so
instead of failing obscurely inside a kernel. (A tests/conftest.py that sets the variable on
machines without CUDA removes any dependence on test order.)
"""
from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType


def _package() -> str:
    return __name__.rsplit(".", 1)[0]  # "cdd_engine.kernels"


def interpreted(module: str) -> ModuleType:
    """``<kernels package>.<module>`` with its Triton kernels running in the CPU interpreter."""
    os.environ["TRITON_INTERPRET"] = "1"
    if "triton.language" in sys.modules:
        import triton.language as tl
        if type(tl.standard.zeros).__name__ == "JITFunction":
            raise RuntimeError("Triton was imported before TRITON_INTERPRET=1 was set, so its kernels "
                               "cannot run in the CPU interpreter in this process; set TRITON_INTERPRET=1 "
                               "in the environment (or in tests/conftest.py) or run this test file alone")
    mod = importlib.import_module(f"{_package()}.{module}")
    if any(type(v).__name__ == "JITFunction" for v in vars(mod).values()):
        mod = importlib.reload(mod)
    return mod
