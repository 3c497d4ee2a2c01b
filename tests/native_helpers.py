"""Shared by the native-library tests: the compiled module (or a skip) and the test-engine writer
of ``csrc/tests`` (``make_test_engine``, also used by the C++ tests)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from cdd_engine.native import NativeUnavailable, load

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "csrc" / "tests"))
import make_test_engine as mte  # noqa: E402,F401  (re-exported)


def require_native() -> bool:
    """CI sets CDD_REQUIRE_NATIVE=1: there a missing or broken native build is an error, not a skip."""
    return os.environ.get("CDD_REQUIRE_NATIVE") == "1"


def native_module_or_none():
    """The compiled module, or None when it is not built; under CDD_REQUIRE_NATIVE=1 a missing build is
    an error, so a test's native half cannot drop out silently in CI."""
    try:
        return load()
    except NativeUnavailable:
        if require_native():
            raise
        return None


# Marks a test that needs the module: it runs wherever CI runs (CDD_REQUIRE_NATIVE=1, and there it
# fails rather than skips when the build is missing); elsewhere it skips without a build.
needs_native = pytest.mark.skipif(not require_native() and native_module_or_none() is None,
                                  reason="the native module cdd_engine._native (libcdd_engine) is not built here")


def native_or_skip():
    """The compiled ``cdd_engine._native`` module; skips the calling test module when it is not built."""
    try:
        return load()
    except NativeUnavailable as e:
        if require_native():
            raise
        pytest.skip(str(e), allow_module_level=True)
