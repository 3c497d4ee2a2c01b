"""Fused Triton anomaly map vs the float64 reference, on the CPU through TRITON_INTERPRET=1.

Inputs are fresh random features (never zeros) over odd shapes. The reference is evaluated in
float64 on the very values the kernel reads (fp16/bf16 inputs upcast exactly), so every input
dtype must match to fp32 accumulation accuracy: 1e-5 relative per pixel on maps and scores
(docs/anomaly_map.md allows 2e-3 for fp16 features; that budget is for producing the features in
fp16, which these inputs already are).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")  # the GPU extra; CI installs it (requirements/ci.txt)

try:
    from cdd_engine.kernels.testing import interpreted
except ImportError:
    from cdd_engine.kernels.testing import interpreted

K = interpreted("anomaly_map")  # sets TRITON_INTERPRET=1 before the kernels are decorated

from cdd_engine import operators  # noqa: E402
from cdd_engine.anomaly_map import anomaly_map  # noqa: E402

RTOL = 1e-5
IMAGE = (37, 53)
# (C, h, w) per scale: odd channel counts (partial 16-channel chunks) and odd map sizes
SCALES = [(5, 5, 7), (24, 9, 13), (33, 19, 27)]


def _feats(batch, scales, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    t = [torch.randn(batch, c, h, w, generator=g).to(dtype) for c, h, w in scales]
    s = [torch.randn(batch, c, h, w, generator=g).to(dtype) for c, h, w in scales]
    return t, s


def _check(teacher, student, image=IMAGE, mode="add", sigma=4.0, **kw):
    maps, scores = K.fused_anomaly_map(teacher, student, image, mode=mode, sigma=sigma, **kw)
    ref_maps, ref_scores = anomaly_map([x.double() for x in teacher], [x.double() for x in student],
                                       image, mode=mode, sigma=sigma)
    assert maps.dtype == torch.float32 and scores.dtype == torch.float32
    assert maps.shape == ref_maps.shape and scores.shape == ref_scores.shape
    assert ref_maps.abs().min() > 1e-3  # random features: relative errors are meaningful
    rel = ((maps.double() - ref_maps).abs() / ref_maps.abs()).max().item()
    rel_s = ((scores.double() - ref_scores).abs() / ref_scores.abs()).max().item()
    assert rel <= RTOL, f"map relative error {rel:.3g}"
    assert rel_s <= RTOL, f"score relative error {rel_s:.3g}"
    # the score is the maximum of the map the kernel returned
    torch.testing.assert_close(scores, maps.flatten(1).amax(1), rtol=0, atol=0)
    return maps, scores


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["add", "mul"])
@pytest.mark.parametrize("batch", [1, 3])
def test_matches_reference(dtype, mode, batch):
    t, s = _feats(batch, SCALES, dtype, seed=batch * 10 + len(mode))
    _check(t, s, mode=mode)


@pytest.mark.parametrize("mode", ["add", "mul"])
def test_no_blur(mode):
    t, s = _feats(2, SCALES, torch.float32, seed=3)
    _check(t, s, mode=mode, sigma=0)
    _check(t, s, mode=mode, sigma=None)


@pytest.mark.parametrize("mode", ["add", "mul"])
def test_layouts_and_strides(mode):
    """channels_last, channel-strided slices, cropped (non-flat) maps, mixed layouts."""
    t, s = _feats(2, SCALES, torch.float16, seed=5)
    _check([x.contiguous(memory_format=torch.channels_last) for x in t],
           [x.contiguous(memory_format=torch.channels_last) for x in s], mode=mode)
    g = torch.Generator().manual_seed(6)
    big_t = [torch.randn(2, 2 * c + 1, h + 2, w + 3, generator=g) for c, h, w in SCALES]
    big_s = [torch.randn(2, 2 * c + 1, h + 2, w + 3, generator=g) for c, h, w in SCALES]
    # every other channel, and a spatial crop: y-stride != w * x-stride
    t2 = [x[:, 1::2, 1:-1, 2:-1] for x in big_t]
    s2 = [x[:, 1::2, 1:-1, 1:-2] for x in big_s]
    assert not t2[0].is_contiguous()
    _check(t2, s2, mode=mode)
    # teacher NCHW, student channels_last
    t3, s3 = _feats(1, SCALES, torch.float32, seed=7)
    _check(t3, [x.contiguous(memory_format=torch.channels_last) for x in s3], mode=mode)


@pytest.mark.parametrize("splits", [2, 3])
def test_channel_splits(splits):
    """Partial channel sums from several programs per pixel (small batches on big GPUs)."""
    t, s = _feats(2, SCALES, torch.float32, seed=11)
    _check(t, s, _splits=splits)
    _check(t, s, mode="mul", _splits=splits)


def test_gpu_block_config(monkeypatch):
    """The tile sizes used on the GPU: several 64x64 map tiles, 128-pixel pass-1 blocks, K=16."""
    monkeypatch.setattr(K, "INTERPRETER_BIG_BLOCKS", False)
    t, s = _feats(1, [(17, 20, 9), (40, 12, 11)], torch.float16, seed=13)
    _check(t, s, image=(66, 70))
    _check(t, s, image=(66, 70), mode="mul", _splits=2)


@pytest.mark.parametrize("image,scales,sigma", [
    ((16, 16), [(3, 4, 4)], 4.0),                         # image smaller than the blur radius
    ((1, 9), [(4, 1, 3)], 4.0),                           # one-row image and map
    ((21, 20), [(3, 21, 20), (5, 1, 1)], 2.5),            # no upsampling; 1x1 map; other sigma
    ((12, 15), [(2, 3, 4), (3, 5, 6), (4, 7, 8), (6, 2, 9)], 1.0),  # four scales
])
def test_edge_shapes(image, scales, sigma):
    t, s = _feats(2, scales, torch.float32, seed=17)
    for mode in ("add", "mul"):
        _check(t, s, image=image, mode=mode, sigma=sigma)


def test_square_int_size():
    t, s = _feats(1, [(8, 6, 6), (8, 3, 3)], torch.float32, seed=19)
    maps, _ = _check(t, s, image=24)
    assert maps.shape == (1, 24, 24)


def test_operators_against_independent_oracles():
    """Blur matrix vs scipy.ndimage (reflect), upsampling matrix vs F.interpolate."""
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    for n, sigma in ((7, 4.0), (40, 4.0), (33, 1.5)):
        x = rng.standard_normal((n, 3))
        want = scipy_ndimage.gaussian_filter1d(x, sigma, axis=0, mode="reflect", truncate=4.0)
        np.testing.assert_allclose(operators.blur_matrix(n, sigma).numpy() @ x, want, rtol=0, atol=1e-12)
    for out_n, in_n in ((23, 5), (7, 7), (5, 1), (64, 16)):
        x = torch.randn(1, 1, in_n, 2, dtype=torch.float64)
        want = F.interpolate(x, size=(out_n, 2), mode="bilinear", align_corners=True)[0, 0]
        torch.testing.assert_close(operators.bilinear_matrix(out_n, in_n) @ x[0, 0], want, rtol=0, atol=1e-12)


def test_bad_input():
    t, s = _feats(2, SCALES[:2], torch.float32, seed=23)
    with pytest.raises(TypeError, match="float64"):
        K.fused_anomaly_map([x.double() for x in t], [x.double() for x in s], IMAGE)
    with pytest.raises(TypeError):
        K.fused_anomaly_map([x.to(torch.int32) for x in t], [x.to(torch.int32) for x in s], IMAGE)
    with pytest.raises(TypeError, match="float16"):
        K.fused_anomaly_map([t[0].half()], [s[0]], IMAGE)  # teacher and student dtypes differ
    with pytest.raises(ValueError, match="equal"):
        K.fused_anomaly_map([t[0]], [s[0][:, :3]], IMAGE)
    with pytest.raises(ValueError, match="empty batch"):
        K.fused_anomaly_map([t[0][:0]], [s[0][:0]], IMAGE)
    with pytest.raises(ValueError, match="non-zero number"):
        K.fused_anomaly_map([], [], IMAGE)
    with pytest.raises(ValueError, match="non-zero number"):
        K.fused_anomaly_map(t, s[:1], IMAGE)
    with pytest.raises(ValueError, match="batch size"):
        K.fused_anomaly_map([t[0], t[1][:1]], [s[0], s[1][:1]], IMAGE)
    with pytest.raises(ValueError, match="mode"):
        K.fused_anomaly_map(t, s, IMAGE, mode="max")
    with pytest.raises(ValueError, match="image_size"):
        K.fused_anomaly_map(t, s, (0, 5))
    with pytest.raises(ValueError, match="sigma"):
        K.fused_anomaly_map(t, s, IMAGE, sigma=-1.0)
    with pytest.raises(ValueError, match=r"\(B,C,h,w\)"):
        K.fused_anomaly_map([t[0][0]], [s[0][0]], IMAGE)
    with pytest.raises(TypeError, match="lists"):
        K.fused_anomaly_map(t[0], s[0], IMAGE)
