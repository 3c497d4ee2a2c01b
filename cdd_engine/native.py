"""The Python side of the native runtime: the compiled module and the installed C++ package.

``libcdd_engine`` (C++ engine, csrc/) and its pybind11 module ``cdd_engine._native`` are built
by ``pip install`` when CMake and OpenVINO are available. This module finds them:

- :func:`load` returns the compiled module (``Engine``, ``anomaly_map``, ``preprocess``) or
  raises :class:`NativeUnavailable` saying how to build it;
- :func:`available` says whether it is built;
- :func:`get_cmake_dir` is the directory to pass as ``-Dcdd_engine_DIR`` so that a C++ program's
  ``find_package(cdd_engine)`` gives the target ``cdd_engine::cdd_engine`` (as pybind11's);
- :func:`get_include` and :func:`get_library` locate the headers and the shared library.

``CDD_NATIVE_MODULE=<path of a _native*.so>`` makes :func:`load` use that module file instead of
the installed one: a module built apart, e.g. with ``-DCDD_WITH_AOTI=ON`` against this torch
(tests/test_native_aoti.py does this). Set it before the first load in the process: two builds
of the library cannot share one process (their ``libcdd_engine.so`` have the same name).
"""
from __future__ import annotations

import importlib.util
import os
import sys
import threading
from pathlib import Path
from types import ModuleType

PACKAGE_DIR = Path(__file__).resolve().parent
HOW_TO_BUILD = ("reinstall with CMake >= 3.18, a C++17 compiler, pybind11 and openvino available "
                 "(pip install cmake pybind11 openvino; pip install -e .), with CDD_REQUIRE_NATIVE=1 to see "
                 "why a build fails")


class NativeUnavailable(ImportError):
    """The native module or the installed C++ package is missing."""


MODULE_ENV = "CDD_NATIVE_MODULE"
_load_lock = threading.Lock()


def _load_file(path: str) -> ModuleType:
    """The module file ``path`` imported as ``cdd_engine._native`` (once per process)."""
    with _load_lock:
        mod = sys.modules.get(f"{__package__}._native")
        if mod is not None:
            if os.path.realpath(getattr(mod, "__file__", "") or "") != os.path.realpath(path):
                raise NativeUnavailable(f"{MODULE_ENV}={path}, but this process already loaded the native module "
                                        f"{mod.__file__}; set {MODULE_ENV} before the first load")
            return mod
        if not Path(path).is_file():
            raise NativeUnavailable(f"{MODULE_ENV}={path}: no such module file")
        spec = importlib.util.spec_from_file_location(f"{__package__}._native", path)
        if spec is None or spec.loader is None:
            raise NativeUnavailable(f"{MODULE_ENV}={path}: not an importable extension module")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        sys.modules[spec.name] = mod
        return mod


def load() -> ModuleType:
    """The compiled module ``cdd_engine._native``."""
    try:
        # Loads libopenvino from the installed openvino package first, so the module's
        # dependency resolves by soname also in an editable install (whose rpath points at
        # the temporary build environment's openvino).
        import openvino  # noqa: F401
        # a module built with CDD_WITH_AOTI links libtorch: the process's torch is loaded first,
        # so both use the same copy (a build against another torch is refused at engine load)
        import torch  # noqa: F401
        path = os.environ.get(MODULE_ENV)
        if path:
            return _load_file(path)
        from . import _native
    except ImportError as e:
        raise NativeUnavailable(f"cdd_engine's native runtime is not built ({e}); {HOW_TO_BUILD}") from e
    return _native


def available() -> bool:
    """True when ``cdd_engine._native`` imports."""
    try:
        load()
    except NativeUnavailable:
        return False
    return True


def _installed(*parts: str) -> Path:
    path = PACKAGE_DIR.joinpath(*parts)
    if not path.exists():
        raise NativeUnavailable(f"{path} does not exist: the C++ package of cdd_engine is not installed; "
                                f"{HOW_TO_BUILD}")
    return path


def get_cmake_dir() -> str:
    """Directory of ``cdd_engineConfig.cmake``: ``cmake -Dcdd_engine_DIR=<this> ...``."""
    _installed("share", "cmake", "cdd_engine", "cdd_engineConfig.cmake")
    return str(PACKAGE_DIR / "share" / "cmake" / "cdd_engine")


def get_include() -> str:
    """Directory holding the public headers (``#include <cdd/cdd.hpp>``)."""
    return str(_installed("include", "cdd").parent)


def get_library() -> str:
    """Path of the shared library ``libcdd_engine.so``."""
    return str(_installed("lib", "libcdd_engine.so"))
