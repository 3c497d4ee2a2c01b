"""Test-wide setup.

Triton reads TRITON_INTERPRET once, at its first import, and cannot be re-imported in one
process; so it is decided here, before any test module imports it: without a CUDA device the
Triton kernels run on the CPU through the interpreter.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
