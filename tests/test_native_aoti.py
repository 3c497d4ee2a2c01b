"""The C++ AOTInductor backend (issue 13 item 3): libcdd_engine built with -DCDD_WITH_AOTI=ON
against this environment's torch scores aoti engines (model.pt2) like the Python reference.

The pip-installed module is built without AOTI (pip's isolated build environment has no torch,
and must never pull one), so the ``aoti_build`` fixture configures and builds csrc/ with
CDD_WITH_AOTI=ON (OpenVINO off: not needed here, and faster) into build/aoti-test of the checkout:
about 1.5-2 min on 2 cores the first time, incremental afterwards. Two builds of libcdd_engine
cannot share a process (same library name), so everything that loads the AOTI module runs in a
subprocess with CDD_NATIVE_MODULE pointing at it (cdd_engine/native.py); that also keeps a crash
in the loader from taking pytest down, so corrupt packages are tested there too.

Engines: csrc/tests/make_aoti_engine.py's micro engine (32x48, channels-last features, reference
scores and maps from the eager model) and tests/aoti_fixtures.py's tiny efficientnet_lite0 engine
built by ``cdd_engine.build(backend="aoti")`` (BatchNorm folded), compared with the Python aoti
runtime. Frames are fresh seeded random uint8 frames of odd sizes in all pixel formats.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from aoti_fixtures import tiny_aoti_engine  # noqa: F401  (fixture: built once per session, shared with test_aoti.py)
from native_helpers import require_native

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "aoti-test"
TORCH_DIR = Path(torch.__file__).parent
LOADER_H = TORCH_DIR / "include" / "torch" / "csrc" / "inductor" / "aoti_package" / "model_package_loader.h"
RTOL = 1e-5  # the fp32 contract (docs/anomaly_map.md)

sys.path.insert(0, str(ROOT / "csrc" / "tests"))

pytestmark = [pytest.mark.slow]


def _skip_or_fail(why: str) -> None:
    if require_native():
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="session")
def aoti_build() -> dict[str, Path]:
    """libcdd_engine + _native (+ test_engine, cdd_inspect) built with CDD_WITH_AOTI=ON."""
    if shutil.which("cmake") is None:
        _skip_or_fail("needs cmake on PATH")
    if not LOADER_H.is_file():
        _skip_or_fail(f"this torch ({torch.__version__}) ships no AOTInductor package loader header")
    import pybind11

    gen = ["-G", "Ninja"] if shutil.which("ninja") and not (BUILD / "CMakeCache.txt").exists() else []
    cfg = subprocess.run(["cmake", "-S", str(ROOT / "csrc"), "-B", str(BUILD), *gen, "-DCMAKE_BUILD_TYPE=Release",
                          "-DCDD_WITH_AOTI=ON", "-DCDD_WITH_OPENVINO=OFF", "-DCDD_BUILD_PYTHON=ON",
                          "-DCDD_BUILD_TESTS=ON", "-DCDD_BUILD_EXAMPLES=ON", f"-DCDD_TORCH_ROOT={TORCH_DIR}",
                          f"-DPython3_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}"],
                         capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stdout[-3000:] + cfg.stderr[-3000:]
    assert f"AOTInductor backend against torch {torch.__version__}" in cfg.stdout, cfg.stdout[-3000:]
    out = subprocess.run(["cmake", "--build", str(BUILD), "--parallel", "2", "--target", "cdd_engine", "_native",
                          "test_engine", "cdd_inspect"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-3000:]
    assert "warning" not in (out.stdout + out.stderr).lower(), out.stdout[-5000:]
    module = next((BUILD / "python").glob("_native*.so"))
    return {"module": module, "test_engine": BUILD / "tests" / "test_engine",
            "cdd_inspect": BUILD / "examples" / "cdd_inspect"}


@pytest.fixture(scope="session")
def micro_engine() -> dict:
    """make_aoti_engine.py's engine + demo frames (cached across runs in the temporary directory)."""
    import make_aoti_engine
    return make_aoti_engine.cached_engine()


def run_py(build: dict[str, Path], code: str, *args: str, timeout: int = 600) -> dict:
    """Runs ``code`` in a fresh interpreter that loads the AOTI module; returns the JSON it prints
    last. A crash (signal) fails the test with the child's output."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests"), str(ROOT / "csrc" / "tests")]),
               CDD_NATIVE_MODULE=str(build["module"]))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


FRAMES = '''
import numpy as np
def fresh_frames(seed):
    """Random uint8 frames of odd sizes, every pixel format (never the demo frames, never zeros)."""
    rng = np.random.default_rng(seed)
    specs = [(37, 53, "RGB"), (200, 131, "BGR"), (31, 257, "MONO"), (64, 64, "RGB"), (97, 45, "BGR"),
             (129, 77, "MONO"), (33, 33, "RGB")]
    out = []
    for h, w, fmt in specs:
        shape = (h, w) if fmt == "MONO" else (h, w, 3)
        out.append((rng.integers(1, 256, size=shape, dtype=np.uint8), fmt))
    return out
'''


def test_module_scores_equal_the_python_reference(aoti_build, micro_engine):
    """The module on the micro engine: scores and model-size maps within 1e-5 of the eager model's
    reference pipeline, per frame and in batches larger than max_batch, on 1 and 2 streams."""
    r = run_py(aoti_build, FRAMES + '''
import json, sys
import numpy as np
import torch
from cdd_engine.native import load
import make_test_engine as mte
import make_aoti_engine as mae
mod = load()
assert mod.WITH_AOTI and mod.AOTI_TORCH_VERSION == torch.__version__, (mod.WITH_AOTI, mod.AOTI_TORCH_VERSION)
model = mae.micro_model()
mean, std = model.normalization
frames = fresh_frames(int(sys.argv[2]))
ref_scores, ref_maps = mte.reference(model, frames, mean, std)
res = {"n": len(frames)}
for streams in (1, 2):
    e = mod.Engine(sys.argv[1], num_threads=2, num_streams=streams)
    assert e.backend == "aoti" and e.model_file == "model.pt2" and e.image_size == (32, 48), repr(e)
    one = [e.score([np.ascontiguousarray(img)], pixel_format=fmt) for img, fmt in frames]
    s1 = np.array([o[0][0] for o in one], dtype=np.float64)
    m1 = np.stack([o[1][0] for o in one]).astype(np.float64)
    # all 7 frames in one call (max_batch 4: split in chunks), one pixel format per call
    rgb = [i for i, (_, f) in enumerate(frames) if f != "MONO"]
    sb, mb, _, _ = e.score([np.ascontiguousarray(frames[i][0][..., ::-1] if frames[i][1] == "BGR" else frames[i][0])
                            for i in rgb], pixel_format="RGB")
    res[f"s{streams}_score_err"] = float(np.max(np.abs(s1 - ref_scores) / np.abs(ref_scores)))
    res[f"s{streams}_map_err"] = float(np.max(np.abs(m1 - ref_maps)) / np.max(np.abs(ref_maps)))
    res[f"s{streams}_batch_err"] = float(np.max(np.abs(sb - ref_scores[rgb]) / np.abs(ref_scores[rgb])))
    res[f"s{streams}_score_is_map_max"] = bool(np.allclose(s1, m1.reshape(len(frames), -1).max(1), rtol=1e-6))
res["spread"] = float(np.ptp(ref_scores) / np.mean(ref_scores))
print(json.dumps(res))
''', micro_engine["engine"], "20251204")
    assert r["n"] == 7
    assert r["spread"] > 1e-3  # the frames give different scores: a constant output could not pass
    for s in (1, 2):
        assert r[f"s{s}_score_err"] <= RTOL, r
        assert r[f"s{s}_map_err"] <= RTOL, r
        assert r[f"s{s}_batch_err"] <= RTOL, r
        assert r[f"s{s}_score_is_map_max"], r


def test_engine_runtime_native_equals_the_python_aoti_runtime(aoti_build, tiny_aoti_engine):
    """``Engine(dir, runtime="native")`` routes the tiny efficientnet_lite0 aoti engine (BatchNorm
    folded, channels-last, built by cdd_engine.build) to libcdd_engine; its scores and maps equal
    the Python aoti runtime's on fresh frames of odd sizes (1e-5)."""
    r = run_py(aoti_build, FRAMES + '''
import json, sys
import numpy as np
import cdd_engine
d = sys.argv[1]
native = cdd_engine.load(d, runtime="native", num_threads=2)
python = cdd_engine.load(d, runtime="python", num_threads=2)
res = {"native": native.runtime, "python": python.runtime, "aoti": native.manifest["aoti"]}
worst_s = worst_m = 0.0
scores = []
for img, fmt in fresh_frames(int(sys.argv[2])):
    a = native.score([img], pixel_format=fmt)
    b = python.score([img], pixel_format=fmt)
    sa, sb = np.asarray(a.scores, np.float64), np.asarray(b.scores, np.float64)
    ma, mb = np.asarray(a.maps, np.float64), np.asarray(b.maps, np.float64)
    worst_s = max(worst_s, float(np.max(np.abs(sa - sb) / np.abs(sb))))
    worst_m = max(worst_m, float(np.max(np.abs(ma - mb)) / np.max(np.abs(mb))))
    scores.append(float(sb[0]))
res.update(score_err=worst_s, map_err=worst_m, spread=float(np.ptp(scores) / np.mean(scores)))
print(json.dumps(res))
''', str(tiny_aoti_engine), "7")
    assert r["native"].startswith("native C++"), r
    assert r["python"] == "python", r
    assert r["aoti"]["batchnorm_folded"] is True and r["aoti"]["device"] == "cpu", r
    assert r["spread"] > 1e-4, r
    assert r["score_err"] <= RTOL, r
    assert r["map_err"] <= RTOL, r


def _variant(src: str, dst: Path, manifest=None, pt2: bytes | None = None) -> str:
    shutil.copytree(src, dst)
    m = json.loads((dst / "engine.json").read_text())
    if pt2 is not None:  # damaged bytes with engine.json's hash re-written to match (only the loader can tell)
        (dst / "model.pt2").write_bytes(pt2)
        m["files"]["model.pt2"] = {"sha256": hashlib.sha256(pt2).hexdigest(), "bytes": len(pt2)}
    if manifest is not None:
        manifest(m)
    (dst / "engine.json").write_text(json.dumps(m))
    return str(dst)


def _with_garbage_so(pt2: bytes) -> bytes:
    """The package with its compiled model (.so) replaced by random bytes: a valid zip whose
    shared object cannot be loaded."""
    import io
    import zipfile
    import numpy as np
    rng = np.random.default_rng(3)
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(pt2)) as zin, zipfile.ZipFile(buf, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith(".so"):
                data = rng.integers(0, 256, size=len(data), dtype=np.uint8).tobytes()
            zout.writestr(info, data)
    return buf.getvalue()


def _with_foreign_so(pt2: bytes) -> bytes:
    """The package re-zipped (valid CRCs) with its .so's ELF machine field set to another
    architecture's (aarch64 on x86-64, x86-64 elsewhere): as if built on another machine."""
    import io
    import platform
    import zipfile
    other = (62).to_bytes(2, "little") if platform.machine() == "aarch64" else (183).to_bytes(2, "little")
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(pt2)) as zin, zipfile.ZipFile(buf, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith(".so"):
                data = data[:18] + other + data[20:]
            zout.writestr(info, data)
    return buf.getvalue()


def _with_flipped_so_bytes(pt2: bytes) -> bytes:
    """64 bytes in the middle of the stored .so inverted, the zip's CRC left as it was: libtorch's
    extraction does not check CRCs, so only the library's own check stands between these bytes and
    dlopen."""
    import io
    import zipfile
    with zipfile.ZipFile(io.BytesIO(pt2)) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(".so"))
        assert info.compress_type == zipfile.ZIP_STORED
    b = bytearray(pt2)
    # local header: 30 bytes + name + extra, then the member's bytes
    name_n, extra_n = int.from_bytes(b[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(b[info.header_offset + 28:info.header_offset + 30], "little")
    mid = info.header_offset + 30 + name_n + extra_n + info.file_size // 2
    b[mid:mid + 64] = bytes(x ^ 0xFF for x in b[mid:mid + 64])
    return bytes(b)


def test_mismatched_and_corrupt_packages_are_clear_errors(aoti_build, micro_engine, tmp_path):
    """Another torch version, another device, a corrupt / truncated / empty package, a package whose
    compiled model is garbage or has damaged bytes under an intact zip CRC: each is a cdd::Error (ValueError from the module, EngineFormatError
    from cdd_engine.load) whose message names the cause, never a crash."""
    import numpy as np
    src = micro_engine["engine"]
    pt2 = (Path(src) / "model.pt2").read_bytes()
    rng = np.random.default_rng(11)
    variants = {
        "torch_version": (_variant(src, tmp_path / "tv", lambda m: m["aoti"].update(torch_version="2.0.0+cpu")),
                          "compiled with torch 2.0.0+cpu"),
        "device": (_variant(src, tmp_path / "dev", lambda m: m["aoti"].update(device="cuda")),
                   'compiled for device "cuda"'),
        "garbage": (_variant(src, tmp_path / "garbage", pt2=rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()),
                    "not a readable AOTInductor package"),
        "truncated": (_variant(src, tmp_path / "trunc", pt2=pt2[: len(pt2) // 2]), "not a readable"),
        "empty": (_variant(src, tmp_path / "empty", pt2=b""), "not a readable"),
        "garbage_so": (_variant(src, tmp_path / "so", pt2=_with_garbage_so(pt2)), "is not a 64-bit little-endian shared object"),
        "flipped_so_bytes": (_variant(src, tmp_path / "flip", pt2=_with_flipped_so_bytes(pt2)), "CRC mismatch"),
        "foreign_so": (_variant(src, tmp_path / "foreign", pt2=_with_foreign_so(pt2)),
                       "compiled for another machine architecture"),
        "no_section": (_variant(src, tmp_path / "nosec", lambda m: m.pop("aoti")), 'needs an "aoti" object'),
        "fp16_on_cpu": (_variant(src, tmp_path / "fp16", lambda m: m.update(precision="fp16")), "runs on CUDA only"),
        "version_1": (_variant(src, tmp_path / "v1", lambda m: m.update(format_version=1)), "format version 1"),
    }
    r = run_py(aoti_build, '''
import json, sys
import torch
from cdd_engine.native import load
import cdd_engine
from cdd_engine.errors import EngineFormatError
mod = load()
variants = json.loads(sys.argv[1])
out = {}
for name, d in variants.items():
    try:
        mod.Engine(d, num_threads=1)
        out[name] = "loaded"
    except ValueError as e:
        out[name] = "ValueError: " + str(e)
    except Exception as e:
        out[name] = type(e).__name__ + ": " + str(e)
# the same through the package's Engine: an EngineFormatError (the device case on the CPU)
for name in ("torch_version", "garbage_so"):
    try:
        cdd_engine.load(variants[name], runtime="native", device="cpu", verify_hashes=True)
        out["load_" + name] = "loaded"
    except EngineFormatError as e:
        out["load_" + name] = "EngineFormatError: " + str(e)
    except Exception as e:
        out["load_" + name] = type(e).__name__ + ": " + str(e)
try:
    mod.Engine(variants["torch_version"], device="GPU")
except ValueError as e:
    out["bad_device"] = str(e)
print(json.dumps(out))
''', json.dumps({k: v[0] for k, v in variants.items()}))
    for name, (_, want) in variants.items():
        assert r[name].startswith("ValueError: "), (name, r[name])
        assert want in r[name], (name, r[name])
    for name in ("torch_version", "device", "garbage", "truncated", "empty", "garbage_so", "flipped_so_bytes",
                 "foreign_so"):
        assert "rebuild" in r[name], (name, r[name])
    assert r["load_torch_version"].startswith("EngineFormatError"), r["load_torch_version"]
    assert r["load_garbage_so"].startswith("EngineFormatError"), r["load_garbage_so"]
    assert 'runs on device "CPU" or "cuda[:N]"' in r["bad_device"], r["bad_device"]


def test_module_built_against_another_torch_is_not_used(aoti_build, micro_engine):
    """A process whose torch differs from the one the module was built against keeps the module's
    AOTI path off: runtime="native" is a BackendUnavailable saying to rebuild, "auto" falls back to
    the Python runtime."""
    r = run_py(aoti_build, '''
import json, sys
import torch
import cdd_engine
from cdd_engine.errors import BackendUnavailable
real = torch.__version__
torch.__version__ = "0.0.1+other"  # what the module compares with; the loaded libtorch is unchanged
out = {}
try:
    cdd_engine.load(sys.argv[1], runtime="native")
    out["native"] = "loaded"
except BackendUnavailable as e:
    out["native"] = str(e)
print(json.dumps(out))
''', micro_engine["engine"])
    assert "built against torch" in r["native"] and "rebuild" in r["native"], r


def test_cpp_engine_suite_and_example_on_the_aoti_engine(aoti_build, micro_engine):
    """The C++ engine suite (scores vs the Python reference, maps, batching, formats, 8 threads on one
    Engine) and the example program, run on the aoti engine: the same checks as ctest engine_aoti
    and example_aoti."""
    out = subprocess.run([str(aoti_build["test_engine"]), micro_engine["engine"], micro_engine["frames"]],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "0 failure(s)" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    import check_example
    lines = check_example.run(str(aoti_build["cdd_inspect"]), micro_engine["engine"], micro_engine["frames"])
    worst = check_example.compare(lines, micro_engine["frames"])
    assert worst <= RTOL


def test_library_without_aoti_refuses_aoti_engines_clearly(micro_engine):
    """The default build (pip install: no torch in its build environment) names the missing
    CDD_WITH_AOTI; cdd_engine.load with runtime="auto" then runs the engine on the Python runtime."""
    from native_helpers import native_or_skip
    mod = native_or_skip()
    if getattr(mod, "WITH_AOTI", False):
        pytest.skip("the installed module was built with CDD_WITH_AOTI")
    with pytest.raises(RuntimeError, match=r"built without AOTInductor support \(CDD_WITH_AOTI\)"):
        mod.Engine(micro_engine["engine"], num_threads=1)
    import cdd_engine
    from cdd_engine.errors import BackendUnavailable
    with pytest.raises(BackendUnavailable, match="AOTInductor"):
        cdd_engine.load(micro_engine["engine"], runtime="native")
    assert cdd_engine.load(micro_engine["engine"]).runtime == "python"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_cuda_path_compiles_with_nvcc():
    """The CUDA path of the AOTI backend (AotiCudaWorker: GPU pre-processing, the package on the
    worker's stream, the fused GPU map) cannot run here (no GPU); it is compiled with
    CDD_WITH_CUDA + CDD_WITH_AOTI and linked into the library, without warnings."""
    if not LOADER_H.is_file():
        _skip_or_fail(f"this torch ({torch.__version__}) ships no AOTInductor package loader header")
    build = ROOT / "build" / "aoti-cuda-test"
    gen = ["-G", "Ninja"] if shutil.which("ninja") and not (build / "CMakeCache.txt").exists() else []
    cfg = subprocess.run(["cmake", "-S", str(ROOT / "csrc"), "-B", str(build), *gen, "-DCMAKE_BUILD_TYPE=Release",
                          "-DCDD_WITH_OPENVINO=OFF", "-DCDD_WITH_CUDA=ON", "-DCDD_AOT=OFF", "-DCDD_WITH_AOTI=ON",
                          f"-DCDD_TORCH_ROOT={TORCH_DIR}", "-DCDD_BUILD_TESTS=OFF", "-DCDD_BUILD_EXAMPLES=OFF",
                          f"-DPython3_EXECUTABLE={sys.executable}"], capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stdout[-3000:] + cfg.stderr[-3000:]
    out = subprocess.run(["cmake", "--build", str(build), "--parallel", "2", "--target", "cdd_engine"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-3000:]
    assert "warning" not in (out.stdout + out.stderr).lower(), out.stdout[-5000:]
    syms = subprocess.run(["nm", "-C", str(build / "libcdd_engine.so")], capture_output=True, text=True).stdout
    assert "AotiCudaWorker" in syms  # the CUDA worker is compiled in, not preprocessed away


def _set(path: tuple, value):
    def f(m: dict) -> None:
        d = m
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return f


def _drop(path: tuple):
    def f(m: dict) -> None:
        d = m
        for k in path[:-1]:
            d = d[k]
        d.pop(path[-1])
    return f


# engine.json mutations of an aoti engine -> does a reader accept it (True) or refuse it (False)
AOTI_MANIFESTS = {
    "as_built": (lambda m: None, True),
    "device_gpu": (_set(("aoti", "device"), "gpu"), False),
    "device_upper": (_set(("aoti", "device"), "CPU"), False),
    "device_cuda": (_set(("aoti", "device"), "cuda"), True),  # readable; refused at load on the CPU
    "torch_version_empty": (_set(("aoti", "torch_version"), ""), False),
    "torch_version_number": (_set(("aoti", "torch_version"), 2.13), False),
    "torch_version_65": (_set(("aoti", "torch_version"), "2" * 65), False),
    "torch_version_other": (_set(("aoti", "torch_version"), "2.0.0+cu118"), True),  # refused at load
    "min_batch_2": (_set(("aoti", "min_batch"), 2), False),
    "min_batch_1.0": (_set(("aoti", "min_batch"), 1.0), False),
    "min_batch_true": (_set(("aoti", "min_batch"), True), False),
    "max_batch_other": (_set(("aoti", "max_batch"), 3), False),
    "channels_last_1": (_set(("aoti", "channels_last"), 1), False),
    "batchnorm_folded_missing": (_drop(("aoti", "batchnorm_folded")), False),
    "section_missing": (_drop(("aoti",)), False),
    "section_list": (_set(("aoti",), []), False),
    "bf16_on_cpu": (_set(("precision",), "bf16"), True),
    "fp16_on_cpu": (_set(("precision",), "fp16"), False),
    "tf32_on_cpu": (_set(("precision",), "tf32"), False),
    "int8": (_set(("precision",), "int8"), False),
    "feature_float16": (lambda m: [f.update(dtype="float16") for f in m["features"]], False),
    "format_version_1": (_set(("format_version",), 1), False),
    "format_version_3": (_set(("format_version",), 3), False),
    "pt2_not_listed": (lambda m: m["files"].pop("model.pt2"), False),
}


@pytest.mark.parametrize("name", sorted(AOTI_MANIFESTS))
def test_cpp_and_python_readers_agree_on_aoti_manifests(name, micro_engine, tmp_path):
    """csrc/src/manifest.cpp and cdd_engine/engine_format.py accept and refuse the same aoti
    manifests (docs/cpp_api.md promise 5). The installed module (built without AOTI, as pip builds
    it) reads the manifest before it says that it cannot run the package, so no AOTI build is
    needed: a refusal is a ValueError naming engine.json, an acceptance reaches the backend."""
    from cdd_engine.engine_format import validate_manifest
    from cdd_engine.errors import EngineFormatError
    from native_helpers import native_or_skip
    mod = native_or_skip()
    mutate, want = AOTI_MANIFESTS[name]
    d = Path(_variant(micro_engine["engine"], tmp_path / "e", manifest=mutate))
    m = json.loads((d / "engine.json").read_text())
    try:
        validate_manifest(m)
        python_accepts = True
    except EngineFormatError:
        python_accepts = False
    try:
        mod.Engine(str(d), num_threads=1)
        cpp_accepts = True
    except ValueError as e:  # EngineFormat: the reader refused, or (AOTI build) the load-time checks
        cpp_accepts = "engine.json" not in str(e)
    except RuntimeError as e:  # Unsupported: read fine, no AOTI backend in this build
        assert "CDD_WITH_AOTI" in str(e), str(e)
        cpp_accepts = True
    assert python_accepts == want, (name, "python")
    assert cpp_accepts == want, (name, "c++")


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def test_package_for_a_missing_instruction_set_is_refused(aoti_build, micro_engine, tmp_path):
    """A CPU package whose AOTI_CPU_ISA names an instruction set this CPU lacks would die of SIGILL
    in its kernels: the library refuses it (Unsupported -> RuntimeError) naming the set."""
    import io
    import zipfile
    flags = _cpu_flags()
    token = "AMX_TILE" if "amx_tile" not in flags else "AVX512" if "avx512f" not in flags else None
    if token is None:
        pytest.skip("this CPU has every instruction set Inductor names")
    pt2 = (Path(micro_engine["engine"]) / "model.pt2").read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(pt2)) as zin, zipfile.ZipFile(buf, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("_metadata.json"):
                meta = json.loads(data)
                meta["AOTI_CPU_ISA"] = f"{meta.get('AOTI_CPU_ISA', '')} {token}".strip()
                data = json.dumps(meta).encode()
            zout.writestr(info, data)
    d = _variant(micro_engine["engine"], tmp_path / "isa", pt2=buf.getvalue())
    r = run_py(aoti_build, '''
import json, sys
from cdd_engine.native import load
try:
    load().Engine(sys.argv[1], num_threads=1)
    print(json.dumps({"error": None}))
except Exception as e:
    print(json.dumps({"error": type(e).__name__ + ": " + str(e)}))
''', d)
    assert r["error"] and r["error"].startswith("RuntimeError"), r
    assert f"was compiled for {token}" in r["error"] and "rebuild" in r["error"], r
