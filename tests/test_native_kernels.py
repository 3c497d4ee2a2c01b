"""C++ CPU kernels (through the pybind11 module) against the Python reference.

Fused anomaly map vs ``cdd_engine.anomaly_map`` in float64 and pre-processing vs
``cdd_engine.preprocess`` semantics in float64, on fresh random inputs and odd shapes
(docs/anomaly_map.md: fp32 paths within 1e-5 relative). Also: numpy arrays are read in place
when their strides allow it, and refused with a clear error when they do not.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cdd_engine.anomaly_map import anomaly_map
from cdd_engine.preprocess import IMAGENET_MEAN, IMAGENET_STD
from native_helpers import native_or_skip

native = native_or_skip()

RTOL = 1e-5


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| / max |ref|: relative to the reference's scale."""
    return float(np.abs(np.asarray(got, np.float64) - ref).max() / np.abs(ref).max())


def features(rng, shapes, batch, dtype=np.float32):
    t = [rng.standard_normal((batch, *s)).astype(dtype) for s in shapes]
    # student = teacher + noise: distances in (0, ~0.5) like a trained model's
    s = [(a + 0.6 * rng.standard_normal(a.shape)).astype(dtype) for a in t]
    return t, s


@pytest.mark.parametrize("mode", ["add", "mul"])
@pytest.mark.parametrize("shapes,size,sigma,batch", [
    ([(16, 16, 16), (32, 8, 8), (64, 4, 4)], (64, 64), 4.0, 3),     # RD at 64^2, scaled down
    ([(7, 9, 11), (5, 5, 6), (3, 3, 3)], (37, 53), 4.0, 2),         # odd everything
    ([(12, 13, 7), (20, 7, 4)], (29, 61), 1.5, 1),                  # two scales, small sigma
    ([(8, 10, 10), (8, 5, 5)], (40, 40), 0.0, 2),                   # no blur
])
def test_anomaly_map_matches_reference(mode, shapes, size, sigma, batch):
    rng = np.random.default_rng(hash((mode, size, sigma)) % 2**32)
    t, s = features(rng, shapes, batch)
    maps, scores = native.anomaly_map(t, s, size, mode=mode, sigma=sigma, num_threads=2)
    ref_maps, ref_scores = anomaly_map([torch.from_numpy(a).double() for a in t],
                                       [torch.from_numpy(a).double() for a in s], size, mode=mode, sigma=sigma)
    assert maps.shape == (batch, *size) and maps.dtype == np.float32
    assert rel_err(maps, ref_maps.numpy()) <= RTOL
    np.testing.assert_allclose(scores, ref_scores.numpy(), rtol=RTOL)


def test_anomaly_map_float16_features():
    """fp16 features: the kernel reads them exactly, so it matches the float64 reference on the
    same (fp16-rounded) values to fp32 accuracy."""
    rng = np.random.default_rng(3)
    t, s = features(rng, [(24, 16, 16), (48, 8, 8), (96, 4, 4)], 2, np.float16)
    maps, scores = native.anomaly_map(t, s, (64, 64))
    ref_maps, ref_scores = anomaly_map([torch.from_numpy(a).double() for a in t],
                                       [torch.from_numpy(a).double() for a in s], 64)
    assert rel_err(maps, ref_maps.numpy()) <= RTOL
    np.testing.assert_allclose(scores, ref_scores.numpy(), rtol=RTOL)


def reference_preprocess(img: np.ndarray, fmt: str, size, mean, std) -> np.ndarray:
    """cdd_engine.preprocess.resize_normalize, step by step in float64."""
    x = torch.from_numpy(np.ascontiguousarray(img)).double()
    x = x[..., None] if x.dim() == 2 else x
    x = x.permute(2, 0, 1)[None]
    if fmt == "BGR":
        x = x.flip(1)
    elif fmt == "MONO":
        x = x.expand(-1, 3, -1, -1)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1) * 255
    sd = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1) * 255
    return ((x - m) / sd)[0].numpy()


@pytest.mark.parametrize("h,w,fmt,size", [
    (97, 131, "RGB", (64, 64)), (45, 33, "MONO", (32, 48)), (300, 200, "BGR", (37, 29)),
    (9, 11, "RGB", (32, 40)), (64, 64, "BGR", (64, 64)), (1001, 7, "MONO", (13, 5)),
])
def test_preprocess_matches_reference(h, w, fmt, size):
    rng = np.random.default_rng(h * w)
    shape = (h, w) if fmt == "MONO" else (h, w, 3)
    img = rng.integers(0, 256, size=shape, dtype=np.uint8)
    out = native.preprocess([img], fmt, size, IMAGENET_MEAN, IMAGENET_STD, num_threads=2)
    ref = reference_preprocess(img, fmt, size, IMAGENET_MEAN, IMAGENET_STD)
    assert out.shape == (1, 3, *size)
    assert rel_err(out[0], ref) <= RTOL


def test_preprocess_reads_crops_in_place():
    """A crop of a bigger frame (row stride > row) is read as is, and equals its copy."""
    rng = np.random.default_rng(11)
    big = rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    crop = big[17:90, 23:141]
    assert not crop.flags.c_contiguous
    a = native.preprocess([crop], "RGB", (32, 32), IMAGENET_MEAN, IMAGENET_STD)
    b = native.preprocess([np.ascontiguousarray(crop)], "RGB", (32, 32), IMAGENET_MEAN, IMAGENET_STD)
    np.testing.assert_array_equal(a, b)
    batch = rng.integers(0, 256, size=(3, 40, 50, 3), dtype=np.uint8)  # one (N, H, W, C) array
    c = native.preprocess(batch, "BGR", (20, 20), IMAGENET_MEAN, IMAGENET_STD)
    for i in range(3):
        assert rel_err(c[i], reference_preprocess(batch[i], "BGR", (20, 20), IMAGENET_MEAN, IMAGENET_STD)) <= RTOL


def test_bad_arrays_are_clear_errors():
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    pp = lambda x, fmt="RGB": native.preprocess(x, fmt, (16, 16), IMAGENET_MEAN, IMAGENET_STD)  # noqa: E731
    with pytest.raises(ValueError, match="in place"):
        pp([img[:, ::2]])                       # pixels not packed
    with pytest.raises(ValueError, match="in place"):
        pp([img[..., ::-1]])                    # reversed channels: a negative channel stride
    with pytest.raises(ValueError, match="in place"):
        pp([img[::-1]])                         # negative row stride
    with pytest.raises(TypeError, match="uint8"):
        pp([img.astype(np.float32)])
    with pytest.raises(ValueError, match="needs 1 channel"):
        pp([img], "MONO")
    with pytest.raises(ValueError, match="needs 3 channel"):
        pp([img[..., 0]], "RGB")
    with pytest.raises(ValueError, match="zero-sized"):
        pp([img[:0]])
    with pytest.raises(ValueError, match="empty batch"):
        pp([])
    with pytest.raises(ValueError, match="pixel_format"):
        pp([img], "YUV")
    with pytest.raises(TypeError, match="numpy array"):
        pp([img.tolist()])
    t, s = features(rng, [(4, 4, 4)], 1)
    with pytest.raises(ValueError, match="differ"):
        native.anomaly_map(t, [s[0][:, :3]], (8, 8))
    with pytest.raises(TypeError, match="float32 or both float16"):
        native.anomaly_map(t, [s[0].astype(np.float64)], (8, 8))
    with pytest.raises(ValueError, match="mode"):
        native.anomaly_map(t, s, (8, 8), mode="max")
