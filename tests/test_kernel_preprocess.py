"""Fused Triton pre-processing vs the reference, on the CPU through TRITON_INTERPRET=1.

Frames are fresh random uint8 images of odd sizes. Two references: the float64 evaluation of
the reference's own steps (``to_rgb_nchw`` -> ``F.interpolate(antialias=True)`` -> normalise),
against which the fp32 kernel must agree to 1e-5 relative (plus 2e-6 absolute for values near
zero), and ``resize_normalize`` itself in fp32, whose own rounding reaches ~1.5e-5 when
upsampling, hence 5e-5 there. fp16 outputs: one fp16 rounding, 1e-3 relative.
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

P = interpreted("preprocess")  # sets TRITON_INTERPRET=1 before the kernels are decorated

from cdd_engine.preprocess import IMAGENET_MEAN, IMAGENET_STD, resize_normalize, to_rgb_nchw  # noqa: E402


def _frames(n, h, w, c, seed, row_pad=0):
    """Random uint8 (n, h, w, c) frames; with row_pad > 0, rows are padded (stride(1) > w*c)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 256, (n, h, w * c + row_pad), generator=g, dtype=torch.uint8)
    frames = base[:, :, :w * c].unflatten(2, (w, c))
    assert frames.stride(1) == w * c + row_pad
    return frames


def _ref64(frames, size, fmt, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    x = to_rgb_nchw(frames, fmt).double()
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1) * 255.0
    return (x - m) / s


def _check(frames, size, fmt="RGB", out_dtype=torch.float32, **kw):
    """Both implementations ("mma": tensor-core band matmuls, "taps": gathers) against the references."""
    out = P.fused_preprocess(frames, size, pixel_format=fmt, out_dtype=out_dtype, **kw)
    n = frames.shape[0]
    assert out.shape == (n, 3, *size) and out.dtype == out_dtype
    ref = _ref64(frames, size, fmt, kw.get("mean", IMAGENET_MEAN), kw.get("std", IMAGENET_STD))
    if out_dtype == torch.float32:
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=2e-6)
        ref32 = resize_normalize(frames.contiguous(), size, kw.get("mean", IMAGENET_MEAN),
                                 kw.get("std", IMAGENET_STD), pixel_format=fmt)
        torch.testing.assert_close(out, ref32, rtol=1e-5, atol=5e-5)
    else:
        torch.testing.assert_close(out.double(), ref, rtol=1e-3, atol=1e-3)
    return out


@pytest.mark.parametrize("impl", P.IMPLS)
@pytest.mark.parametrize("fmt", ["RGB", "BGR", "MONO"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16])
def test_formats_and_dtypes(fmt, out_dtype, impl):
    c = 1 if fmt == "MONO" else 3
    _check(_frames(3, 47, 61, c, seed=1, row_pad=5), (20, 33), fmt, out_dtype, impl=impl)


@pytest.mark.parametrize("src,size", [
    ((47, 61), (20, 33)),   # down in both axes, non-integer factors
    ((23, 17), (40, 50)),   # up in both axes
    ((47, 61), (90, 30)),   # up in y, down in x
    ((29, 31), (29, 31)),   # same size: the reference skips the resize, the kernel must be exact too
    ((200, 9), (7, 5)),     # strong downscale (many taps)
])
@pytest.mark.parametrize("impl", P.IMPLS)
def test_sizes(src, size, impl):
    _check(_frames(1, *src, 3, seed=sum(src) + sum(size), row_pad=3), size, "BGR", impl=impl)


def test_mono_three_dim_and_numpy_and_custom_norm():
    g = torch.Generator().manual_seed(4)
    frames = torch.randint(0, 256, (2, 33, 27), generator=g, dtype=torch.uint8)
    out = _check(frames, (16, 19), "MONO", mean=(0.5, 0.25, 0.125), std=(0.2, 0.3, 0.4))
    from_np = P.fused_preprocess(frames.numpy(), (16, 19), mean=(0.5, 0.25, 0.125),
                                 std=(0.2, 0.3, 0.4), pixel_format="mono")
    torch.testing.assert_close(from_np, out, rtol=0, atol=0)


@pytest.mark.parametrize("impl", P.IMPLS)
def test_channels_last_output_and_strided_input(impl):
    frames = _frames(2, 41, 38, 3, seed=6)
    strided = torch.flip(frames, dims=(0,)).contiguous()[:, ::2, 1::2]  # every other row/column
    out = _check(strided, (12, 14), "RGB", channels_last=True, impl=impl)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_gpu_block_config(monkeypatch):
    """The GPU tile sizes (32x32, 16-row chunks): several tiles and row chunks per tile."""
    monkeypatch.setattr(P, "INTERPRETER_BIG_BLOCKS", False)
    for impl in P.IMPLS:
        _check(_frames(1, 150, 70, 3, seed=8, row_pad=7), (40, 35), "RGB", impl=impl)
        _check(_frames(1, 20, 24, 3, seed=9), (45, 50), "BGR", torch.float16, impl=impl)


def test_band_tables_hold_every_tap():
    """The "mma" bands reproduce the tap tables exactly (nothing cut at band edges)."""
    for n_in, n_out, tile, chunk in ((1080, 256, 32, 16), (1920, 256, 32, 64), (17, 40, 32, 16), (9, 7, 4, 16)):
        first, taps = P.antialias_taps(n_in, n_out)
        starts, band = P.band_tables(n_in, n_out, tile, chunk)
        assert band.shape[2] % chunk == 0
        dense = np.zeros((n_out, n_in + band.shape[2]))
        for i in range(n_out):
            dense[i, first[i]:first[i] + taps.shape[1]] += taps[i]
        from_band = np.zeros_like(dense)
        for i in range(n_out):
            t = i // tile
            from_band[i, starts[t]:starts[t] + band.shape[2]] = band[t, i - t * tile]
        np.testing.assert_array_equal(from_band[:, :n_in], dense[:, :n_in])
        assert not from_band[:, n_in:].any()


def test_taps_are_normalised_and_in_range():
    for n_in, n_out in ((1080, 256), (1920, 256), (17, 40), (5, 5), (256, 1)):
        starts, table = P.antialias_taps(n_in, n_out)
        np.testing.assert_allclose(table.sum(1), 1.0, rtol=0, atol=1e-12)
        assert starts.min() >= 0
        used = (table > 0).sum(1)
        assert (starts + used <= n_in).all()


def test_bad_input():
    frames = _frames(1, 10, 12, 3, seed=10)
    with pytest.raises(TypeError, match="uint8"):
        P.fused_preprocess(frames.float(), 8)
    with pytest.raises(ValueError, match="channel"):
        P.fused_preprocess(frames, 8, pixel_format="MONO")
    with pytest.raises(ValueError, match="empty batch"):
        P.fused_preprocess(frames[:0], 8)
    with pytest.raises(ValueError, match="pixel_format"):
        P.fused_preprocess(frames, 8, pixel_format="YUV")
    with pytest.raises(TypeError, match="out_dtype"):
        P.fused_preprocess(frames, 8, out_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="size"):
        P.fused_preprocess(frames, (0, 8))
    with pytest.raises(ValueError, match="std"):
        P.fused_preprocess(frames, 8, std=(0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="3 values"):
        P.fused_preprocess(frames, 8, mean=(0.5,))
    with pytest.raises(ValueError, match=r"\(N,H,W,C\)"):
        P.fused_preprocess(frames[0, 0], 8)
    with pytest.raises(ValueError, match="impl"):
        P.fused_preprocess(frames, 8, impl="cuda")
    with pytest.raises(ValueError, match="zero-sized"):
        P.fused_preprocess(frames[:, :0], 8)
