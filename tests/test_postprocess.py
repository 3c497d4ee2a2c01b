"""Fast anomaly maps against the float64 reference (docs/anomaly_map.md): the torch separable path
(runtime/postprocess.py) and the OpenVINO graph appended to the network (backends/openvino_backend.py).

Fresh random features (never zeros), odd shapes, both modes; tolerance 1e-5 relative
(max |fast - ref| / max |ref|) for fp32 paths. The building blocks are checked against
independent oracles: torch's interpolate for the bilinear matrix, scipy for the blur.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter1d

from cdd_engine.anomaly_map import anomaly_map, cosine_distance
from cdd_engine.operators import bilinear_matrix, blur_matrix
from cdd_engine.runtime.postprocess import FastAnomalyMap, cosine_distance_fast

from engine_helpers import one_torch_thread  # noqa: F401 (autouse fixture)
from engine_helpers import RTOL, rel_err

IMAGE = (37, 53)
SCALES = [(5, 9, 13), (24, 5, 7), (33, 3, 4)]  # (C, h, w): odd channel counts and map sizes


def _feats(batch, scales=SCALES, dtype=torch.float32, seed=0, similar=True):
    g = torch.Generator().manual_seed(seed)
    t = [torch.randn(batch, c, h, w, generator=g, dtype=torch.float64) for c, h, w in scales]
    # student = teacher + noise: cosine distances well below 1, as in a trained model
    s = [x + (0.3 if similar else 3.0) * torch.randn(x.shape, generator=g, dtype=torch.float64) for x in t]
    return [x.to(dtype) for x in t], [x.to(dtype) for x in s]


def _reference(t, s, image=IMAGE, mode="add", sigma=4.0):
    maps, scores = anomaly_map([x.double() for x in t], [x.double() for x in s], image, mode, sigma)
    return maps.numpy(), scores.numpy()


@pytest.mark.parametrize("n_out,n_in", [(29, 7), (64, 16), (5, 1), (1, 5), (3, 3), (53, 4)])
def test_bilinear_matrix_matches_interpolate(n_out, n_in):
    x = torch.rand(2, n_in, generator=torch.Generator().manual_seed(n_out), dtype=torch.float64)
    want = F.interpolate(x[:, None, :, None].expand(-1, -1, -1, 2), size=(n_out, 2), mode="bilinear",
                         align_corners=True)[:, 0, :, 0]
    got = x @ bilinear_matrix(n_out, n_in).T
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 5, 17, 33, 64, 100])
@pytest.mark.parametrize("sigma", [4.0, 1.5])
def test_blur_matrix_matches_scipy(n, sigma):
    x = np.random.default_rng(n).random((3, n))
    want = gaussian_filter1d(x, sigma, axis=1, mode="reflect", truncate=4.0)
    got = x @ blur_matrix(n, sigma).numpy().T
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_cosine_distance_fast_matches_reference_including_zero_vectors():
    t, s = _feats(2, [(300, 6, 7)], torch.float64)
    t, s = t[0], s[0]
    t[0, :, 2, 3] = 0.0  # a zero feature vector: both use max(|t|, eps)
    s[1, :, 4, 1] = 0.0
    want = cosine_distance(t, s)
    got = cosine_distance_fast(t, s)
    assert torch.allclose(got, want, rtol=0, atol=1e-12)
    assert got[0, 2, 3] == 1.0 and got[1, 4, 1] == 1.0


@pytest.mark.parametrize("mode", ["add", "mul"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("batch", [1, 3])
def test_fast_map_matches_reference(mode, dtype, batch):
    t, s = _feats(batch, dtype=dtype, seed=batch)
    want_maps, want_scores = _reference(t, s, mode=mode)  # on the very values the fast path reads
    maps, scores = FastAnomalyMap(IMAGE, mode)(t, s)
    assert maps.shape == (batch, *IMAGE) and scores.shape == (batch,)
    assert maps.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = 1e-12 if dtype == torch.float64 else RTOL
    assert rel_err(maps, want_maps) <= tol
    assert rel_err(scores, want_scores) <= tol
    np.testing.assert_array_equal(scores.numpy(), maps.flatten(1).amax(1).numpy())


@pytest.mark.parametrize("sigma", [0.0, 2.0])
def test_fast_map_other_sigmas_and_dissimilar_features(sigma):
    t, s = _feats(2, seed=7, similar=False)
    want_maps, want_scores = _reference(t, s, sigma=sigma)
    maps, scores = FastAnomalyMap(IMAGE, "add", sigma=sigma)(t, s)
    assert rel_err(maps, want_maps) <= RTOL and rel_err(scores, want_scores) <= RTOL


def test_fast_map_wrn50_shapes_at_256():
    """The real layout: WRN50 feature shapes at 256² (channels cut to keep the test fast)."""
    scales = [(16, 64, 64), (32, 32, 32), (64, 16, 16)]
    t, s = _feats(2, scales, seed=3)
    want_maps, want_scores = _reference(t, s, image=256)
    post = FastAnomalyMap(256)
    maps, scores = post(t, s)
    assert rel_err(maps, want_maps) <= RTOL and rel_err(scores, want_scores) <= RTOL
    maps2, _ = post(*_feats(2, scales, seed=4))  # cached matrices, other values
    assert not torch.equal(maps, maps2)


def test_fast_map_rejects_bad_input():
    t, s = _feats(1)
    with pytest.raises(ValueError, match="mode"):
        FastAnomalyMap(IMAGE, "max")
    with pytest.raises(ValueError, match="positive"):
        FastAnomalyMap((0, 5))
    with pytest.raises(ValueError, match="same non-zero number"):
        FastAnomalyMap(IMAGE)(t, s[:2])
    with pytest.raises(ValueError, match="scale 1"):
        FastAnomalyMap(IMAGE)(t, [s[0], s[1][:, :3], s[2]])


# ----------------------------------------------------------------------------- OpenVINO graph
def _identity_network(scales):
    """ov.Model whose outputs teacher_0..student_2 are its own six inputs (stands in for the network)."""
    import openvino as ov
    import openvino.opset13 as ops

    params, results = [], []
    for i, name in enumerate([f"teacher_{k}" for k in range(3)] + [f"student_{k}" for k in range(3)]):
        c, h, w = scales[i % 3]
        p = ops.parameter([-1, c, h, w], np.float32, name=f"in_{name}")
        r = ops.result(ops.multiply(p, ops.constant(np.float32(1.0))))
        r.output(0).get_tensor().set_names({name})
        params.append(p)
        results.append(r)
    return ov.Model(results, params, "identity")


@pytest.mark.parametrize("mode", ["add", "mul"])
def test_openvino_graph_matches_reference(mode):
    import openvino as ov

    from cdd_engine.runtime.backends.openvino_backend import MAP_OUTPUT, SCORE_OUTPUT, append_anomaly_map

    manifest = {"image_size": list(IMAGE), "features": [{"shape": list(sc)} for sc in SCALES * 2],
                "anomaly_map": {"mode": mode, "sigma": 4.0, "truncate": 4.0, "eps": 1e-8}}
    scored = append_anomaly_map(_identity_network(SCALES), manifest)
    compiled = ov.Core().compile_model(scored, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    t, s = _feats(3, seed=11)
    out = compiled.create_infer_request().infer([x.numpy() for x in t + s])
    want_maps, want_scores = _reference(t, s, mode=mode)
    assert out[MAP_OUTPUT].shape == (3, *IMAGE)
    assert rel_err(out[MAP_OUTPUT], want_maps) <= RTOL
    assert rel_err(out[SCORE_OUTPUT], want_scores) <= RTOL
