"""The Python side of the native runtime: the compiled module and the installed C++ package.

``libcdd_engine`` (C++ engine, csrc/) and its pybind11 module ``cdd_engine._native`` are built
by ``pip install`` when CMake and OpenVINO are available. This module finds them:

- :func:`load` returns the compiled module (``Engine``, ``anomaly_map``, ``preprocess``) or
  raises :class:`NativeUnavailable` saying how to build it;
- :func:`available` says whether it is built;
- :func:`get_cmake_dir` is the directory to pass as ``-Dcdd_engine_DIR`` so that a C++ program's
  ``find_package(cdd_engine)`` gives the target ``cdd_engine::cdd_engine`` (as pybind11's);
- :func:`get_include` and :func:`get_library` locate the headers and the shared library.
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

PACKAGE_DIR = Path(__file__).resolve().parent
HOW_TO_BUILD = ("reinstall with CMake >= 3.18, a C++17 compiler, pybind11 and openvino available "
                 "(pip install cmake pybind11 openvino; pip install -e .), with CDD_REQUIRE_NATIVE=1 to see "
                 "why a build fails")


class NativeUnavailable(ImportError):
    """The native module or the installed C++ package is missing."""


def load() -> ModuleType:
    """The compiled module ``cdd_engine._native``."""
    try:
        # Loads libopenvino from the installed openvino package first, so the module's
        # dependency resolves by soname also in an editable install (whose rpath points at
        # the temporary build environment's openvino).
        import openvino  # noqa: F401
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
