"""Fail closed: a broken model, a hostile engine.json or a bad call never yields a silent verdict.

- a model with a NaN weight raises NonFiniteOutputError on every runtime and backend (or, when
  asked, flags its frames anomalous), never "normal";
- a call with autograd frames or a failing backend leaves nothing behind for later calls;
- float frames are scored only with a stated range (``float_range``);
- engine.json is read with the C++ reader's rules (ranges, types, BOM, nesting, file types,
  precision against the model file), with EngineFormatError, never a raw decode/recursion error.

The NaN engines are made from the cached test engines by rewriting a model file and re-hashing
it (not through build(), which refuses non-finite weights).
"""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

import cdd_engine
from cdd_engine.runtime import EngineError, EngineFormatError, NonFiniteOutputError
from cdd_engine.engine_format import file_record, read_manifest
from cdd_engine.runtime.native_runtime import native_module

from engine_helpers import one_torch_thread  # noqa: F401 (autouse fixture)
from engine_helpers import RTOL, copy_engine, engine_dir, frames, rel_err
from native_helpers import require_native

RUNTIMES = [("torch", "python"), ("openvino", "python"), ("openvino", "native")]


def _native_or_skip() -> None:
    if native_module() is None:
        if require_native():
            raise AssertionError("CDD_REQUIRE_NATIVE=1 but cdd_engine._native is not built")
        pytest.skip("the native module cdd_engine._native is not built")


def _load(d: Path, runtime: str, **kw):
    if runtime == "native":
        _native_or_skip()
    return cdd_engine.load(d, runtime=runtime, **kw)


def _read(d: Path) -> dict:
    return json.loads((d / "engine.json").read_text())


def _write(d: Path, m: dict) -> None:
    (d / "engine.json").write_text(json.dumps(m, indent=2))  # unvalidated on purpose


def _edit(d: Path, edit) -> None:
    m = _read(d)
    edit(m)
    _write(d, m)


def _rehash(d: Path, name: str) -> None:
    _edit(d, lambda m: m["files"].__setitem__(name, file_record(d / name)))


# ----------------------------------------------------------------------------- NaN models
def _nan_torch_engine(dest: Path) -> Path:
    from safetensors.torch import load_file, save_file

    d = copy_engine("torch", dest)
    state = load_file(str(d / "model.safetensors"))
    key = next(k for k, v in state.items() if k.startswith("teacher") and v.dim() == 4)
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")  # one NaN weight, as a diverged run leaves
    save_file(state, str(d / "model.safetensors"), metadata={"format": "cdd-engine-torch"})
    _rehash(d, "model.safetensors")
    return d


def _bias_const_of(xml: Path, output: str) -> str:
    """Name of the bias Constant added just before the network output ``output``."""
    import openvino as ov

    node = ov.Core().read_model(str(xml)).output(output).get_node().input_value(0).get_node()
    for _ in range(8):
        consts = [v.get_node() for v in node.input_values() if v.get_node().get_type_name() == "Constant"]
        if node.get_type_name() == "Add" and consts:
            return consts[0].get_friendly_name()
        node = next(v.get_node() for v in node.input_values() if v.get_node().get_type_name() != "Constant")
    raise AssertionError(f"no bias found before {output}")


def _nan_openvino_engine(dest: Path) -> Path:
    """An OpenVINO engine whose last student bias overflowed to +inf. (A NaN weight is not enough
    here: the CPU plugin's ReLU, max(x, 0), turns NaN into 0, so such a model gives finite scores;
    build() refuses NaN weights for that reason.) inf survives ReLU and makes the map NaN."""
    d = copy_engine("openvino", dest)
    name = _bias_const_of(d / "model.xml", "student_0")
    data = next(layer.find("data") for layer in ET.parse(d / "model.xml").getroot().iter("layer")
                if layer.get("name") == name)
    offset, size = int(data.get("offset")), int(data.get("size"))
    with open(d / "model.bin", "r+b") as f:
        f.seek(offset)
        f.write(np.full(size // 4, np.inf, np.float32).tobytes())
    _rehash(d, "model.bin")
    return d


NAN_ENGINES = {"torch": _nan_torch_engine, "openvino": _nan_openvino_engine}


@pytest.mark.parametrize("backend,runtime", RUNTIMES)
def test_a_nan_model_raises_never_normal(tmp_path, backend, runtime):
    eng = _load(NAN_ENGINES[backend](tmp_path / "nan"), runtime)
    x = frames(3, 64, 64, seed=31)
    for kw in ({}, {"return_maps": False}, {"map_size": "input"}):
        with pytest.raises(NonFiniteOutputError, match="non-finite output"):
            eng.score(x, **kw)
    with pytest.raises(NonFiniteOutputError):
        eng.score([x[0][:40]])  # a list of odd-size frames, one frame


@pytest.mark.parametrize("backend,runtime", RUNTIMES)
def test_a_nan_model_flags_frames_anomalous_when_asked(tmp_path, backend, runtime):
    eng = _load(NAN_ENGINES[backend](tmp_path / "nan"), runtime)
    r = eng.score(frames(3, 64, 64, seed=32), on_non_finite="anomalous", return_maps=False)
    assert r.non_finite.tolist() == [True] * 3
    assert r.is_anomalous.tolist() == [True] * 3
    assert np.isnan(r.scores).all()


def test_healthy_results_carry_no_flags_and_the_option_is_checked():
    eng = cdd_engine.load(engine_dir("torch"))
    r = eng.score(frames(2, 64, 64, seed=33), on_non_finite="anomalous")
    assert r.non_finite.tolist() == [False, False] and np.isfinite(r.scores).all()
    with pytest.raises(ValueError, match="on_non_finite must be one of"):
        eng.score(frames(1, 64, 64), on_non_finite="ignore")


# ----------------------------------------------------------------------------- no state from a bad call
@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_autograd_frames_leave_no_history_in_the_thread_buffer(backend):
    eng = cdd_engine.load(engine_dir(backend), runtime="python")
    x = frames(3, 64, 64, seed=34)
    want = cdd_engine.load(engine_dir(backend), runtime="python").score(x[:1]).scores
    g = torch.from_numpy(x.astype(np.float32)).requires_grad_(True)
    r = eng.score(g, float_range=(0, 255))
    assert not eng._local.buffer.requires_grad and eng._local.buffer.grad_fn is None
    assert rel_err(r.scores, eng.score(x).scores) <= RTOL
    np.testing.assert_array_equal(eng.score(x[:1]).scores, want)  # a smaller call reuses the buffer


def test_a_failing_backend_is_an_engine_error_and_leaves_no_state(monkeypatch):
    eng = cdd_engine.load(engine_dir("torch"), runtime="python")
    x = frames(2, 64, 64, seed=35)
    want = eng.score(x).scores

    def boom(_x):
        raise RuntimeError("simulated backend failure")

    monkeypatch.setattr(eng.backend, "score_batch", boom)
    with pytest.raises(EngineError, match="torch backend failed: RuntimeError: simulated backend failure"):
        eng.score(x)
    assert eng._local.buffer is None
    monkeypatch.undo()
    np.testing.assert_array_equal(eng.score(x).scores, want)


# ----------------------------------------------------------------------------- float frames
@pytest.mark.parametrize("runtime", ["python", "native"])
def test_float_frames_need_a_stated_range(runtime):
    eng = _load(engine_dir("openvino"), runtime)
    x = frames(2, 50, 70, seed=36)
    want = eng.score(x)
    for bad in (x.astype(np.float32), [f.astype(np.float64) for f in x], torch.from_numpy(x).half()):
        with pytest.raises(TypeError, match=r"need their range stated: pass float_range=\(0, 1\)"):
            eng.score(bad)
    for arr, rng in ((x.astype(np.float32) / 255, (0, 1)), (x.astype(np.float64), (0, 255)),
                     (x.astype(np.float32) * (4095 / 255), (0, 4095)), (x / 255 * 2 - 1, (-1.0, 1.0))):
        got = eng.score(arr, float_range=rng)
        assert rel_err(got.scores, want.scores) <= 2 * RTOL and rel_err(got.maps, want.maps) <= 2 * RTOL, rng
    mixed = eng.score([x[0], x[1].astype(np.float32) / 255], float_range=(0, 1))  # uint8 frames ignore it
    assert rel_err(mixed.scores, want.scores) <= 2 * RTOL
    for bad_range in ((1, 0), (0, float("inf")), (0,), "0..1", (True, 2)):
        with pytest.raises(ValueError, match=r"float_range must be \(lo, hi\)"):
            eng.score(x.astype(np.float32), float_range=bad_range)
    with pytest.raises(ValueError, match=r"float_range=\[0, 1\], got values in \[\d+, 255\]"):
        eng.score(x.astype(np.float32), float_range=(0, 1))


# ----------------------------------------------------------------------------- manifest rules
def _deep(levels: int):
    v: object = 0
    for _ in range(levels):
        v = [v]
    return v


COMMON = [  # refused on any engine
    (lambda m: m.update(format_version=True), "format_version must be an integer"),
    (lambda m: m.update(format_version=1.0), "format_version must be an integer"),
    (lambda m: m.update(format_version=1.5), "format_version must be an integer"),
    (lambda m: m.update(max_batch=0), r"max_batch must be an integer in \[1, 4096\]"),
    (lambda m: m.update(max_batch=4097), r"max_batch must be an integer in \[1, 4096\]"),
    (lambda m: m.update(max_batch=2.0), r"max_batch must be an integer"),
    (lambda m: m.update(image_size=[0, 0]), r"image_size entries must be an integer in \[32, 4096\]"),
    (lambda m: m.update(image_size=[64, 5000]), r"image_size entries must be an integer in \[32, 4096\]"),
    (lambda m: m["features"][0].update(shape=[0, 16, 16]), r"teacher_0 channels C must be an integer in \[1, 65536\]"),
    (lambda m: m["features"][0].update(shape=[70000, 16, 16]), r"channels C must be an integer in \[1, 65536\]"),
    (lambda m: m["features"][2].update(shape=[256, 65, 4]), r"teacher_2 height h \(at most image_size H\)"),
    (lambda m: m["features"][3].update(dtype="float16"), "must have equal shapes and dtypes"),
    (lambda m: m["input"].update(mean=[0.5, 2000, 0.5]), r"input.mean entries must be in \[-1000, 1000\]"),
    (lambda m: m["input"].update(std=[1e-300, 0.2, 0.2]), r"input.std entries must be in \[0.001, 1000\]"),
    (lambda m: m["input"].update(std=[1e300, 0.2, 0.2]), r"input.std entries must be in \[0.001, 1000\]"),
    (lambda m: m["anomaly_map"].update(sigma=0), r"anomaly_map.sigma must be in \(0, 64\]"),
    (lambda m: m["anomaly_map"].update(sigma=1e6), r"anomaly_map.sigma must be in \(0, 64\]"),
    (lambda m: m["anomaly_map"].update(truncate=0), r"anomaly_map.truncate must be in \(0, 16\]"),
    (lambda m: m["anomaly_map"].update(truncate=1e9), r"anomaly_map.truncate must be in \(0, 16\]"),
    (lambda m: m["anomaly_map"].update(eps=1e6), r"anomaly_map.eps must be in \[1e-12, 0.001\]"),
    (lambda m: m["anomaly_map"].update(sigma=0.1, truncate=1.0), r"blur radius .* = 0 must be in \[1, 1024\]"),
    (lambda m: m["threshold"].update(value=-0.5), r"threshold.value must be in \[0, inf\]"),
    (lambda m: m["threshold"].update(value=float("nan")), "threshold.value must be a finite number"),
    (lambda m: m.update(extra=_deep(64)), "deeper than 64 levels"),
]
REFUSED = COMMON + [  # the torch test engine's own
    (lambda m: m["files"]["model.safetensors"].update(sha256="A" * 64), "64 lower-case hex digits"),
    (lambda m: m["files"]["model.safetensors"].update(bytes=-1), "64 lower-case hex digits, 'bytes': integer"),
    (lambda m: m.update(precision="fp16"), "a torch engine of precision 'fp16' has float16 features"),
]


@pytest.mark.parametrize("edit,pattern", REFUSED)
def test_manifest_edits_are_refused(tmp_path, edit, pattern):
    d = copy_engine("torch", tmp_path / "e")
    _edit(d, edit)
    with pytest.raises(EngineFormatError, match=pattern):
        cdd_engine.load(d)


def test_manifest_limits_accept_the_edges(tmp_path):
    """The limits are inclusive where the rules say so: 64 levels, a BOM, max_batch 4096."""
    d = copy_engine("torch", tmp_path / "e")
    _edit(d, lambda m: (m.update(extra=_deep(63), max_batch=4096), m["threshold"].update(value=0)))
    assert read_manifest(d)["max_batch"] == 4096
    (d / "engine.json").write_bytes(b"\xef\xbb\xbf" + (d / "engine.json").read_bytes())
    assert cdd_engine.load(d).threshold == 0.0


def test_hostile_manifest_files_get_clear_errors(tmp_path):
    d = copy_engine("torch", tmp_path / "e")
    good = (d / "engine.json").read_bytes()
    cases = [
        (b"[" * 100000 + b"]" * 100000, "deeper than 64 levels"),  # no RecursionError
        (good.replace(b'"cdd-engine"', b'"cdd-\xff-engine"', 1), "not UTF-8 text"),  # no UnicodeDecodeError
        (good[:-3] + b" " * (16 * 1024 * 1024) + good[-3:], "16777216-byte limit"),
    ]
    for data, pattern in cases:
        (d / "engine.json").write_bytes(data)
        with pytest.raises(EngineFormatError, match=pattern):
            read_manifest(d)
    (d / "engine.json").unlink()
    os.mkfifo(d / "engine.json")  # a FIFO would block a reader forever
    with pytest.raises(EngineFormatError, match="not a regular file"):
        read_manifest(d)
    (d / "engine.json").unlink()
    (d / "engine.json").symlink_to("/dev/zero")
    with pytest.raises(EngineFormatError, match="not a regular file"):
        read_manifest(d)
    (d / "engine.json").unlink()
    (d / "engine.json").write_bytes(good)
    (d / "model.safetensors").unlink()
    os.mkfifo(d / "model.safetensors")
    with pytest.raises(EngineFormatError, match="model.safetensors: file listed in engine.json is not a regular"):
        read_manifest(d)


@pytest.mark.parametrize("precision,pattern", [
    ("fp16", "precision is 'fp16' but the model model.xml disagrees: it holds no float16 weights"),
    ("int8", "precision is 'int8' but the model model.xml disagrees: it holds no FakeQuantize"),
])
def test_a_relabelled_openvino_precision_is_refused(tmp_path, precision, pattern):
    d = copy_engine("openvino", tmp_path / "e")
    _edit(d, lambda m: m.update(precision=precision))
    with pytest.raises(EngineFormatError, match=pattern):
        cdd_engine.load(d, runtime="python")


@pytest.mark.parametrize("edit,pattern", [
    (lambda m: m.update(image_size=[96, 64]), r"model output teacher_0 has shape .*engine.json says|input has shape"),
    (lambda m: [f.update(shape=[f["shape"][0] + 1, *f["shape"][1:]]) for f in m["features"][::3]],
     "model output teacher_0 has shape"),
])
def test_shape_edits_are_refused_by_the_python_openvino_runtime(tmp_path, edit, pattern):
    """The native reader refuses these at load (its network interface check); so does Python."""
    d = copy_engine("openvino", tmp_path / "e")
    _edit(d, edit)
    with pytest.raises(EngineFormatError, match=pattern):
        cdd_engine.load(d, runtime="python")


def test_image_size_edit_of_a_torch_engine_is_an_engine_error(tmp_path):
    d = copy_engine("torch", tmp_path / "e")
    _edit(d, lambda m: m.update(image_size=[96, 64]))
    with pytest.raises(EngineFormatError, match=r"feature teacher_0 has shape \(64, 24, 16\) at image_size \[96, 64\]"):
        cdd_engine.load(d).score(frames(1, 64, 64))


_NATIVE_LOAD = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("_native", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
try:
    mod.Engine(sys.argv[2], verify_hashes=False)
except (ValueError, FileNotFoundError):
    print("refused")
else:
    print("accepted")
"""


def test_both_readers_refuse_the_same_edits(tmp_path):
    """Every edit both engines can take, on an OpenVINO engine: the C++ reader refuses it too
    (each load in a subprocess: a crash is a failure of this test, not of the test run)."""
    import subprocess
    import sys

    _native_or_skip()
    so = native_module().__file__
    base = engine_dir("openvino")
    wrong = []
    for i, (edit, pattern) in enumerate(COMMON):
        d = tmp_path / f"e{i}"
        d.mkdir()
        for f in base.iterdir():
            if f.name != "engine.json":
                (d / f.name).symlink_to(f)
        m = _read(base)
        edit(m)
        _write(d, m)
        with pytest.raises(EngineFormatError):
            read_manifest(d, verify_hashes=False)
        p = subprocess.run([sys.executable, "-c", _NATIVE_LOAD, so, str(d)], capture_output=True, text=True,
                           timeout=120)
        if p.stdout.strip() != "refused":
            wrong.append((pattern, p.returncode, p.stdout.strip() or p.stderr.strip()[-200:]))
    assert wrong == [], "\n".join(map(str, wrong))


def test_sizes_from_untrusted_numbers_are_checked_before_allocation():
    from cdd_engine.runtime.postprocess import FastAnomalyMap

    with pytest.raises(ValueError, match="above MAX_BLUR_RADIUS = 1024"):
        FastAnomalyMap(64, sigma=1e9)  # once tried to build 64 GB of taps
    with pytest.raises(ValueError, match="above MAX_MAP_PIXELS"):
        FastAnomalyMap((5000, 5000))
    huge = np.broadcast_to(np.uint8(7), (16385, 16385, 1))  # 2**28 + 2 * 16384 + 1 pixels, no memory
    with pytest.raises(ValueError, match=r"more than MAX_FRAME_PIXELS = 268435456 \(2\*\*28\)"):
        cdd_engine.load(engine_dir("torch")).score([huge], pixel_format="MONO")


def test_informative_keys_are_optional_as_in_the_cpp_reader(tmp_path):
    d = copy_engine("torch", tmp_path / "e")
    _edit(d, lambda m: [m.pop(k) for k in ("package_version", "created", "source_checkpoint")])
    eng = cdd_engine.load(d)
    assert "backbone=None" in repr(eng) and len(eng.score(frames(1, 64, 64))) == 1


@pytest.mark.parametrize("edit,pattern", [
    (lambda m: m["model"]["student"].update(channels=[64, -1, 256]), "must be the teacher features' channels"),
    (lambda m: m["model"]["student"].update(bottleneck_blocks=2 ** 64), r"bottleneck_blocks must be an integer"),
    (lambda m: m["model"]["student"].update(decoder_blocks=[2 ** 64, 2, 2]), r"decoder_blocks 3 integers"),
    (lambda m: m["model"]["student"].update(width_mult=0), r"width_mult must be an integer in \[1, 8\]"),
])
def test_torch_model_section_is_checked_before_building_the_model(tmp_path, edit, pattern):
    d = copy_engine("torch", tmp_path / "e")
    _edit(d, edit)
    with pytest.raises(EngineFormatError, match=pattern):
        cdd_engine.load(d)


def test_huge_integers_and_meta_tensors_get_clear_errors(tmp_path):
    d = copy_engine("torch", tmp_path / "e")
    text = (d / "engine.json").read_text().replace('"max_batch": 4', '"max_batch": ' + "9" * 5000, 1)
    (d / "engine.json").write_text(text)
    with pytest.raises(EngineFormatError, match="not valid JSON"):  # Python refuses > 4300 digits
        read_manifest(d)
    eng = cdd_engine.load(engine_dir("torch"))
    with pytest.raises(ValueError, match="CPU or CUDA tensors holding pixels, got a tensor on 'meta'"):
        eng.score(torch.empty(1, 64, 64, 3, dtype=torch.uint8, device="meta"))
