"""The reference anomaly map (docs/anomaly_map.md) against independent oracles: a per-pixel numpy
cosine distance, bilinear upsampling with align_corners=True written out by hand, and
scipy.ndimage.gaussian_filter(mode="reflect", sigma=4, truncate=4). float64, odd sizes,
both modes, tolerance 1e-10; the float32 path within 1e-5 relative of float64."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from cdd_engine.anomaly_map import anomaly_map, gaussian_blur

TOL64 = 1e-10


def np_cosine_distance(t: np.ndarray, s: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """(B,C,h,w) x2 -> (B,h,w): 1 - <t,s> / (max(|t|,eps) max(|s|,eps)), pixel by pixel."""
    dot = np.einsum("bchw,bchw->bhw", t, s)
    nt = np.maximum(np.sqrt(np.einsum("bchw,bchw->bhw", t, t)), eps)
    ns = np.maximum(np.sqrt(np.einsum("bchw,bchw->bhw", s, s)), eps)
    return 1.0 - dot / (nt * ns)


def np_bilinear_align_corners(d: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """(B,h,w) -> (B,H,W): output pixel i samples input position i*(h-1)/(H-1) (corners aligned)."""
    b, h, w = d.shape

    def axis(n_in: int, n_out: int):
        pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
        lo = np.minimum(np.floor(pos).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, pos - lo

    y0, y1, fy = axis(h, out_h)
    x0, x1, fx = axis(w, out_w)
    out = np.empty((b, out_h, out_w))
    for i in range(out_h):
        top = d[:, y0[i], x0] * (1 - fx) + d[:, y0[i], x1] * fx
        bot = d[:, y1[i], x0] * (1 - fx) + d[:, y1[i], x1] * fx
        out[:, i] = top * (1 - fy[i]) + bot * fy[i]
    return out


def np_reference(t_feats, s_feats, size, mode, sigma=4.0):
    total = None
    for t, s in zip(t_feats, s_feats):
        up = np_bilinear_align_corners(np_cosine_distance(t, s), *size)
        total = up if total is None else (total + up if mode == "add" else total * up)
    maps = np.stack([gaussian_filter(m, sigma=sigma, mode="reflect", truncate=4.0) for m in total])
    return maps, maps.reshape(len(maps), -1).max(axis=1)


def random_features(rng, batch, channels, sizes, dtype=torch.float64):
    t = [torch.from_numpy(rng.standard_normal((batch, c, h, w))).to(dtype) for c, (h, w) in zip(channels, sizes)]
    # students that are close to the teacher in places and far in others: a realistic spread of distances
    s = [x + torch.from_numpy(rng.uniform(0.1, 1.5, size=(batch, 1, *x.shape[2:])) *
                              rng.standard_normal(x.shape)).to(dtype) for x in t]
    return t, s


CASES = [
    # channels, per-scale (h, w), output (H, W)
    ((5, 7, 3), [(9, 11), (5, 6), (3, 3)], (37, 45)),
    ((4, 6, 8), [(16, 16), (8, 8), (4, 4)], (64, 64)),
    ((3, 3, 5), [(7, 5), (4, 3), (2, 2)], (29, 19)),
    ((6, 2, 9), [(13, 17), (7, 9), (4, 5)], (51, 67)),
]


@pytest.mark.parametrize("mode", ["add", "mul"])
@pytest.mark.parametrize("channels, sizes, out", CASES)
def test_reference_matches_numpy_and_scipy_in_float64(channels, sizes, out, mode):
    rng = np.random.default_rng(sum(out) * 2 + (mode == "mul"))
    t, s = random_features(rng, 3, channels, sizes)
    maps, scores = anomaly_map(t, s, out, mode=mode, sigma=4.0)
    assert maps.dtype == torch.float64 and maps.shape == (3, *out) and scores.shape == (3,)
    want_maps, want_scores = np_reference([x.numpy() for x in t], [x.numpy() for x in s], out, mode)
    assert want_maps.std() > 1e-3                                   # a map with structure, not a constant
    np.testing.assert_allclose(maps.numpy(), want_maps, rtol=TOL64, atol=TOL64)
    np.testing.assert_allclose(scores.numpy(), want_scores, rtol=TOL64, atol=TOL64)


def test_square_int_image_size_and_unblurred_map():
    rng = np.random.default_rng(3)
    t, s = random_features(rng, 2, (4, 5, 6), [(8, 8), (4, 4), (2, 2)])
    maps, _ = anomaly_map(t, s, 33, sigma=0)
    want = sum(np_bilinear_align_corners(np_cosine_distance(a.numpy(), b.numpy()), 33, 33) for a, b in zip(t, s))
    np.testing.assert_allclose(maps.numpy(), want, rtol=TOL64, atol=TOL64)


@pytest.mark.parametrize("shape", [(2, 3, 5), (1, 1, 7), (2, 17, 4), (1, 40, 33)])
@pytest.mark.parametrize("sigma", [4.0, 1.5])
def test_blur_matches_scipy_reflect_even_below_the_radius(shape, sigma):
    """Maps smaller than the 16-pixel radius reflect more than once, as scipy does."""
    x = torch.from_numpy(np.random.default_rng(7).uniform(-1, 2, size=shape))
    got = gaussian_blur(x, sigma)
    want = np.stack([gaussian_filter(m, sigma=sigma, mode="reflect", truncate=4.0) for m in x.numpy()])
    np.testing.assert_allclose(got.numpy(), want, rtol=TOL64, atol=TOL64)


@pytest.mark.parametrize("mode", ["add", "mul"])
def test_float32_path_within_1e5_of_float64(mode):
    rng = np.random.default_rng(11)
    t, s = random_features(rng, 2, (24, 40, 112), [(17, 15), (9, 8), (5, 4)])
    m64, s64 = anomaly_map(t, s, (67, 59), mode=mode)
    m32, s32 = anomaly_map([x.float() for x in t], [x.float() for x in s], (67, 59), mode=mode)
    assert m32.dtype == torch.float32
    rel = (m32.double() - m64).abs().max() / m64.abs().max()
    assert rel <= 1e-5
    np.testing.assert_allclose(s32.double().numpy(), s64.numpy(), rtol=1e-5)


def test_bad_inputs_are_clear_errors():
    t = [torch.randn(2, 3, 4, 4)]
    with pytest.raises(ValueError, match="scale 0"):
        anomaly_map(t, [torch.randn(2, 3, 4, 5)], 16)
    with pytest.raises(ValueError, match="same non-zero number"):
        anomaly_map(t, [], 16)
    with pytest.raises(ValueError, match="mode"):
        anomaly_map(t, t, 16, mode="max")
    with pytest.raises(ValueError, match="positive"):
        anomaly_map(t, t, (0, 16))
    with pytest.raises(TypeError, match="floating point"):
        anomaly_map([torch.ones(1, 2, 3, 3, dtype=torch.int64)] * 1, [torch.ones(1, 2, 3, 3, dtype=torch.int64)], 8)
