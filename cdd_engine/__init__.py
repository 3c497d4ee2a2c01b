"""cdd-engine: Cross-Domain Distillation for fully unsupervised anomaly detection,
from a folder of unlabelled line images to a scoring engine.

Main entry points (imported lazily so ``import cdd_engine`` stays light):

- :func:`train` -> run directory (checkpoint), :func:`load_checkpoint` -> RD model
- :func:`build` (checkpoint -> engine directory + Engine), :func:`load` (engine directory -> Engine)
- :class:`OpenVINOOptions`, :class:`TorchOptions`, :class:`AotiOptions`, :class:`TensorRTOptions`:
  an engine's backend options as one typed object (``load(engine_dir, options=...)``)
- :func:`get_cmake_dir` for C++ programs that ``find_package(cdd_engine)``
"""
from __future__ import annotations

import importlib

from .version import __version__

_LAZY = {
    "train": ("cdd_engine.training", "train"),
    "load_checkpoint": ("cdd_engine.checkpoint", "load_checkpoint"),
    "build": ("cdd_engine.runtime", "build"),
    "load": ("cdd_engine.runtime", "load"),
    "Engine": ("cdd_engine.runtime", "Engine"),
    "OpenVINOOptions": ("cdd_engine.runtime.options", "OpenVINOOptions"),
    "TorchOptions": ("cdd_engine.runtime.options", "TorchOptions"),
    "AotiOptions": ("cdd_engine.runtime.options", "AotiOptions"),
    "TensorRTOptions": ("cdd_engine.runtime.options", "TensorRTOptions"),
    "get_cmake_dir": ("cdd_engine.native", "get_cmake_dir"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'cdd_engine' has no attribute {name!r}")
