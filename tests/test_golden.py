"""The committed golden vectors (tests/golden/anomaly_map_operators.json) against every Python path.

The file holds seeded random inputs (float32 features, uint8 frames) and what the float64
reference computed from them when tests/golden/make_golden.py wrote it. The reference and the
operator tables must still give those numbers (1e-12: float64 rounding only), so an edit of the
specification (one blur tap, the radius rule, the boundary) fails here and in the C++ tests
(csrc/tests/test_golden.cpp) that read the same file. The fast paths are held to the fp32
tolerance of docs/anomaly_map.md, 1e-5 relative to the largest map value (maps of mode "mul" go
down to 3e-4 of their maximum, where a per-pixel relative bound would only measure rounding).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cdd_engine import limits, operators
from cdd_engine.anomaly_map import anomaly_map
from cdd_engine.preprocess import resize_normalize
from cdd_engine.runtime.postprocess import FastAnomalyMap

GOLDEN = json.loads((Path(__file__).parent / "golden" / "anomaly_map_operators.json").read_text())
AM = GOLDEN["anomaly_map"]
EXACT = 1e-12   # float64 paths: the reference itself and the operator tables
FP32 = 1e-5     # float32 paths, relative to the largest value (docs/anomaly_map.md)
FORMATS = {"RGB8": "RGB", "BGR8": "BGR", "Mono8": "MONO"}


def _features(dtype=np.float32) -> tuple[list[np.ndarray], list[np.ndarray]]:
    shapes = [(AM["batch"], *s) for s in AM["scales"]]
    t = [np.asarray(v, dtype=np.float64).reshape(sh).astype(dtype) for v, sh in zip(AM["teacher"], shapes)]
    s = [np.asarray(v, dtype=np.float64).reshape(sh).astype(dtype) for v, sh in zip(AM["student"], shapes)]
    return t, s


def _cases():
    return [pytest.param(c, id=f"{c['mode']}-sigma{c['sigma']:g}") for c in AM["cases"]]


def _expected(case) -> tuple[np.ndarray, np.ndarray]:
    b, (h, w) = AM["batch"], AM["image_size"]
    return np.asarray(case["maps"]).reshape(b, h, w), np.asarray(case["scores"])


def _close(got, want, tol, what):
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err <= tol, f"{what}: error {err:.3g} relative to the largest value (bound {tol:g})"


def test_file_inputs_are_float32_exact():
    """The features are float32 values written exactly: float32 paths read the reference's numbers."""
    t64, _ = _features(np.float64)
    t32, _ = _features(np.float32)
    assert all(np.array_equal(a, b.astype(np.float64)) for a, b in zip(t64, t32))
    assert min(np.abs(x).max() for x in t64) > 0.5  # random, not zeros


def test_blur_taps_and_radius_rule():
    for entry in GOLDEN["taps"]:
        got = operators.gaussian_taps(entry["sigma"], entry["truncate"]).numpy()
        want = np.asarray(entry["taps"])
        assert got.shape == want.shape, f"sigma {entry['sigma']}, truncate {entry['truncate']}: {got.shape}"
        np.testing.assert_allclose(got, want, rtol=0, atol=EXACT)
    for entry in GOLDEN["radius_rule"]:
        assert limits.blur_radius(entry["sigma"], entry["truncate"]) == entry["radius"], entry
        assert operators.gaussian_taps(entry["sigma"], entry["truncate"]).numel() == 2 * entry["radius"] + 1


def test_operator_tables():
    for e in GOLDEN["upsample"]:
        np.testing.assert_allclose(operators.bilinear_matrix(e["n_out"], e["n_in"]).numpy().reshape(-1),
                                   e["matrix"], rtol=0, atol=EXACT, err_msg=str((e["n_out"], e["n_in"])))
    for e in GOLDEN["blur"]:
        np.testing.assert_allclose(operators.blur_matrix(e["n"], e["sigma"], e["truncate"]).numpy().reshape(-1),
                                   e["matrix"], rtol=0, atol=EXACT, err_msg=str((e["n"], e["sigma"])))
    for e in GOLDEN["resize"]:
        np.testing.assert_allclose(operators.resize_matrix(e["in"], e["out"]).reshape(-1), e["matrix"],
                                   rtol=0, atol=EXACT, err_msg=str((e["in"], e["out"])))


@pytest.mark.parametrize("case", _cases())
def test_reference(case):
    t, s = _features(np.float64)
    maps, scores = anomaly_map([torch.from_numpy(x) for x in t], [torch.from_numpy(x) for x in s],
                               tuple(AM["image_size"]), mode=case["mode"], sigma=case["sigma"])
    want_maps, want_scores = _expected(case)
    _close(maps.numpy(), want_maps, EXACT, "reference map")
    _close(scores.numpy(), want_scores, EXACT, "reference score")


@pytest.mark.parametrize("case", _cases())
def test_fast_cpu_path(case):
    """runtime/postprocess.py (torch, OpenVINO and TensorRT engines): float64 exact, float32 within 1e-5."""
    want_maps, want_scores = _expected(case)
    fast = FastAnomalyMap(tuple(AM["image_size"]), case["mode"], case["sigma"], AM["truncate"], GOLDEN["eps"])
    for dtype, tol in ((np.float64, EXACT), (np.float32, FP32)):
        t, s = _features(dtype)
        maps, scores = fast([torch.from_numpy(x) for x in t], [torch.from_numpy(x) for x in s])
        _close(maps.numpy(), want_maps, tol, f"{np.dtype(dtype).name} map")
        _close(scores.numpy(), want_scores, tol, f"{np.dtype(dtype).name} score")


@pytest.mark.parametrize("case", _cases())
def test_native_module(case):
    """The C++ CPU kernel through cdd_engine._native (skipped where the module is not built)."""
    from native_helpers import native_or_skip
    native = native_or_skip()
    t, s = _features(np.float32)
    maps, scores = native.anomaly_map(t, s, tuple(AM["image_size"]), mode=case["mode"], sigma=case["sigma"],
                                      truncate=AM["truncate"], eps=GOLDEN["eps"])
    want_maps, want_scores = _expected(case)
    _close(maps, want_maps, FP32, "native map")
    _close(scores, want_scores, FP32, "native score")


@pytest.mark.parametrize("case", _cases())
def test_triton_interpreter(case):
    """The fused Triton kernels, run by Triton's CPU interpreter (on a GPU by tests/test_kernel_*.py there)."""
    pytest.importorskip("triton")
    try:
        from cdd_engine.kernels.testing import interpreted
    except ImportError:
        from cdd_engine.kernels.testing import interpreted
    K = interpreted("anomaly_map")
    t, s = _features(np.float32)
    maps, scores = K.fused_anomaly_map([torch.from_numpy(x) for x in t], [torch.from_numpy(x) for x in s],
                                       tuple(AM["image_size"]), mode=case["mode"], sigma=case["sigma"])
    want_maps, want_scores = _expected(case)
    _close(maps.numpy(), want_maps, FP32, "triton map")
    _close(scores.numpy(), want_scores, FP32, "triton score")


def _frame(frame) -> tuple[np.ndarray, np.ndarray]:
    """(1, h, w, c) uint8 pixels and the expected (1, 3, H, W) float64 input of one golden frame."""
    c = 1 if frame["format"] == "Mono8" else 3
    pixels = np.asarray(frame["pixels"], dtype=np.uint8).reshape(1, frame["height"], frame["width"], c)
    return pixels, np.asarray(frame["expected"]).reshape(1, 3, *frame["out"])


FRAMES = [pytest.param(f, id=f["format"]) for f in GOLDEN["preprocess"]["frames"]]


@pytest.mark.parametrize("frame", FRAMES)
def test_preprocess_reference(frame):
    """cdd_engine.preprocess.resize_normalize (float32 torch) against the float64 resize tables."""
    pp = GOLDEN["preprocess"]
    pixels, want = _frame(frame)
    out = resize_normalize(pixels, tuple(frame["out"]), pp["mean"], pp["std"], FORMATS[frame["format"]])
    _close(out.numpy(), want, FP32, f"{frame['format']} pre-processing")
    assert math.isclose(float(np.abs(want).max()), float(np.abs(out.numpy()).max()), rel_tol=1e-5)


@pytest.mark.parametrize("frame", FRAMES)
def test_preprocess_native(frame):
    """The C++ pre-processing through cdd_engine._native (skipped where the module is not built)."""
    from native_helpers import native_or_skip
    native = native_or_skip()
    pp = GOLDEN["preprocess"]
    pixels, want = _frame(frame)
    out = native.preprocess(pixels, FORMATS[frame["format"]], tuple(frame["out"]), pp["mean"], pp["std"])
    _close(out, want, FP32, f"native {frame['format']} pre-processing")


@pytest.mark.parametrize("frame", FRAMES)
def test_preprocess_triton_interpreter(frame):
    """The fused Triton pre-processing ("taps" and "mma" kernels) in Triton's CPU interpreter."""
    pytest.importorskip("triton")
    try:
        from cdd_engine.kernels.testing import interpreted
    except ImportError:
        from cdd_engine.kernels.testing import interpreted
    P = interpreted("preprocess")
    pp = GOLDEN["preprocess"]
    pixels, want = _frame(frame)
    for impl in P.IMPLS:
        out = P.fused_preprocess(torch.from_numpy(pixels), tuple(frame["out"]), pp["mean"], pp["std"],
                                 pixel_format=FORMATS[frame["format"]], impl=impl)
        _close(out.numpy(), want, FP32, f"triton {impl} {frame['format']} pre-processing")
