"""The installed C++ package: a separate CMake project does ``find_package(cdd_engine)`` with
``-Dcdd_engine_DIR=$(python -c 'import cdd_engine; print(cdd_engine.get_cmake_dir())')``, links
``cdd_engine::cdd_engine``, builds the example program (csrc/examples) and scores the demo
frames: the scores equal the Python reference (docs/anomaly_map.md tolerance).

Needs the package installed with its native part (``pip install -e .`` with CMake and
OpenVINO available) and cmake + a C++ compiler on PATH.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import cdd_engine
from cdd_engine.native import NativeUnavailable
from native_helpers import mte, require_native  # puts csrc/tests on sys.path for check_example
import check_example  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _cmake_dir() -> str:
    try:
        return cdd_engine.get_cmake_dir()
    except NativeUnavailable as e:
        if require_native():
            raise
        pytest.skip(str(e))


def test_get_cmake_dir_holds_the_package_config():
    d = Path(_cmake_dir())
    assert (d / "cdd_engineConfig.cmake").is_file() and (d / "cdd_engineTargets.cmake").is_file()
    from cdd_engine import native
    assert (Path(native.get_include()) / "cdd" / "cdd.hpp").is_file()
    assert Path(native.get_library()).is_file()


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake on PATH")
def test_example_built_against_installed_package_matches_reference(tmp_path):
    cmake_dir = _cmake_dir()
    build = tmp_path / "consumer"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(["cmake", "-S", str(ROOT / "csrc" / "examples"), "-B", str(build), *gen,
                    "-DCMAKE_BUILD_TYPE=Release", f"-Dcdd_engine_DIR={cmake_dir}"],
                   check=True, capture_output=True, text=True)
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True, text=True)
    program = build / "cdd_inspect"
    assert program.is_file()
    eng = mte.cached_engine()
    lines = check_example.run(str(program), eng["engine"], eng["frames"], batch=4)
    worst = check_example.compare(lines, eng["frames"])
    assert worst <= check_example.RTOL
    # a frame that cannot be read is reported on its own line; the others are still scored
    bad = tmp_path / "broken.ppm"
    bad.write_bytes(b"P6\n10 10\n255\n" + b"\x00" * 7)
    proc = subprocess.run([str(program), "--engine", eng["engine"], str(bad),
                           str(Path(eng["frames"]) / "frame_00.ppm")], capture_output=True, text=True)
    assert proc.returncode == 1
    out = proc.stdout.splitlines()
    assert "truncated" in out[0] and '"score"' in out[1]
