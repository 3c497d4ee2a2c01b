"""Parity matrix: every backend available here against the reference pipeline on a demo test set.

Reference: uint8 frames -> cdd_engine.preprocess.resize_normalize -> the torch RD model (fp32) ->
cdd_engine.anomaly_map in float64. Each backend scores the same uint8 frames end to end
(its own pre-processing, network and anomaly map). Tolerances (docs/anomaly_map.md): maps and scores
within 1e-5 relative for fp32 paths (2e-3 on maps for fp16 features), and the image AUROC
identical to 3 decimals.

Backends: ``torch`` (eager network + separable CPU anomaly map), ``torch+triton`` (Triton
pre-processing and fused anomaly map, in the CPU interpreter: a subprocess with
TRITON_INTERPRET=1, which must be set before Triton is imported), ``openvino`` (the Engine with
runtime "auto": the C++ library where the native module is built), ``openvino-python`` (the
Python OpenVINO backend: IR network with the anomaly map in its graph), ``native-c++`` (the C++
library through the module directly, reading the OpenVINO engine directory build() wrote, where
the native module is built), ``tensorrt`` (only where TensorRT and a GPU exist).

What OpenVINO's network achieves alone (features vs torch, fp32) is checked in
tests/test_engine.py::test_features_match_the_torch_network (about 1e-6 relative on this model).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import cdd_engine
from cdd_engine.metrics import image_auroc

from engine_helpers import one_torch_thread  # noqa: F401 (autouse fixture)
from engine_helpers import RTOL, engine_dir, model_and_run_dir, reference, rel_err

FP16_MAP_RTOL = 2e-3
DEMO_SIZE = 80  # the model runs at 64²: every frame goes through the antialiased resize


def _tensorrt_usable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A small labelled demo test set: (frames list of (80, 80, 3) uint8, labels (N,)).
    (A grey texture is loaded replicated to three channels, as training reads it.)"""
    from cdd_engine.data import detect_color, load_image, make_demo_dataset, read_dataset

    root = make_demo_dataset(tmp_path_factory.mktemp("demo"), categories=("grass",), image_size=DEMO_SIZE,
                             n_train=1, n_test_good=8, n_test_defect=8, seed=0)
    split = read_dataset(root, "mvtec", "grass")
    color = detect_color(split)
    frames = [load_image(s.path, color) for s in split.test]
    return frames, np.array([s.label for s in split.test])


@pytest.fixture(scope="module")
def ref(demo):
    model, _ = model_and_run_dir()
    return reference(model, demo[0])


def _score_torch(frames, tmp):
    return _result(cdd_engine.load(engine_dir("torch")).score(frames))


def _score_openvino(frames, tmp):
    """runtime="auto": the C++ library where the native module is built, else the Python backend."""
    return _result(cdd_engine.load(engine_dir("openvino")).score(frames))


def _score_openvino_python(frames, tmp):
    return _result(cdd_engine.load(engine_dir("openvino"), runtime="python").score(frames))


def _score_triton(frames, tmp):
    """torch backend with use_triton=True in a fresh interpreter-mode process."""
    np.save(tmp / "frames.npy", np.stack(frames))
    script = textwrap.dedent(f"""
        import numpy as np, torch
        torch.set_num_threads(1)
        import cdd_engine
        eng = cdd_engine.load({str(engine_dir("torch"))!r}, use_triton=True)
        assert eng.backend.kernels is not None
        r = eng.score(np.load({str(tmp / "frames.npy")!r}))
        np.savez({str(tmp / "out.npz")!r}, maps=r.maps, scores=r.scores)
    """)
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600,
                         cwd=str(root))
    assert out.returncode == 0, out.stderr[-3000:]
    data = np.load(tmp / "out.npz")
    return data["maps"], data["scores"], 1e-5


def _score_tensorrt(frames, tmp):
    model, run = model_and_run_dir()
    eng = cdd_engine.build(run, backend="tensorrt", output_dir=tmp / "trt")
    return _result(eng.score(frames))


def _result(r):
    return r.maps, r.scores, RTOL


def _native_or_none():
    try:
        from cdd_engine.native import load
        return load()
    except (ImportError, OSError):  # NativeUnavailable is an ImportError
        return None


def _score_native(frames, tmp):
    """The C++ library (pybind11 module) reading the engine directory build() wrote."""
    native = _native_or_none()
    scores, maps, _, _ = native.Engine(str(engine_dir("openvino"))).score(list(frames))
    return np.asarray(maps), np.asarray(scores), RTOL


BACKENDS = {
    "torch": _score_torch,
    "torch+triton": pytest.param(_score_triton, marks=pytest.mark.skipif(
        importlib.util.find_spec("triton") is None, reason="Triton is not installed (the GPU extra .[triton])")),
    "openvino": _score_openvino,
    "openvino-python": _score_openvino_python,
    "native-c++": pytest.param(_score_native, marks=pytest.mark.skipif(
        _native_or_none() is None, reason="the native module (libcdd_engine) is not built here")),
    "tensorrt": pytest.param(_score_tensorrt, marks=pytest.mark.skipif(
        not _tensorrt_usable(), reason="TensorRT and an NVIDIA GPU are not both present (docs/where_it_runs.md)")),
}


@pytest.mark.parametrize("score_fn", list(BACKENDS.values()), ids=list(BACKENDS))
def test_backend_matches_reference(score_fn, demo, ref, tmp_path):
    frames, labels = demo
    want_maps, want_scores = ref
    maps, scores, tol = score_fn(frames, tmp_path)
    assert maps.shape == want_maps.shape and scores.shape == want_scores.shape
    map_err, score_err = rel_err(maps, want_maps), rel_err(scores, want_scores)
    assert map_err <= tol, f"maps differ by {map_err:.2e} relative (limit {tol:.0e})"
    assert score_err <= tol, f"scores differ by {score_err:.2e} relative (limit {tol:.0e})"
    assert round(image_auroc(labels, scores), 3) == round(image_auroc(labels, want_scores), 3)


@pytest.mark.skipif(not _tensorrt_usable(), reason="TensorRT and an NVIDIA GPU are not both present")
def test_tensorrt_fp16_within_fp16_tolerance(demo, ref, tmp_path):
    _, run = model_and_run_dir()
    eng = cdd_engine.build(run, backend="tensorrt", precision="fp16", output_dir=tmp_path / "trt16")
    r = eng.score(demo[0])
    assert rel_err(r.maps, ref[0]) <= FP16_MAP_RTOL
    assert round(image_auroc(demo[1], r.scores), 3) == round(image_auroc(demo[1], ref[1]), 3)


def test_demo_set_is_a_real_check(demo, ref):
    """Guards the matrix against a degenerate set: both labels, distinct scores, non-flat maps."""
    frames, labels = demo
    assert set(labels.tolist()) == {0, 1} and len(frames) == 16
    assert len(np.unique(np.round(ref[1], 6))) == len(frames)
    assert (ref[0].std(axis=(1, 2)) > 0).all()
    assert json.loads((engine_dir("openvino") / "engine.json").read_text())["build"][
        "onnx_max_rel_error_vs_torch"] <= 1e-5


def test_openvino_fp16_runtimes_agree_and_keep_the_map_in_float32(demo, ref, tmp_path):
    """An fp16 OpenVINO engine: reduced-precision features, the map in float32 on both runtimes
    (the Python runtime once ran the whole map inside the network at the plugin's reduced
    inference precision: 6.7e-3 from fp32 on this model, against the C++ engine's 6.8e-4)."""
    from cdd_engine.runtime.native_runtime import native_module

    _, run = model_and_run_dir()
    d = tmp_path / "ov16"
    cdd_engine.build(run, backend="openvino", precision="fp16", output_dir=d)
    py = cdd_engine.load(d, runtime="python").score(demo[0])
    assert rel_err(py.maps, ref[0]) <= FP16_MAP_RTOL and rel_err(py.scores, ref[1]) <= FP16_MAP_RTOL
    if native_module() is None:
        if os.environ.get("CDD_REQUIRE_NATIVE") == "1":
            raise AssertionError("CDD_REQUIRE_NATIVE=1 but cdd_engine._native is not built")
        pytest.skip("the native module is not built: the Python runtime alone was checked")
    nat = cdd_engine.load(d, runtime="native").score(demo[0])
    assert rel_err(nat.maps, ref[0]) <= FP16_MAP_RTOL
    assert rel_err(py.maps, nat.maps) <= FP16_MAP_RTOL and rel_err(py.scores, nat.scores) <= FP16_MAP_RTOL
