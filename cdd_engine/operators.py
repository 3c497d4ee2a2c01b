"""The small linear operators of pre- and post-processing, defined once (docs/anomaly_map.md).

Every Python implementation takes its tables from here: the reference map
(:mod:`cdd_engine.anomaly_map`), the torch/OpenVINO/TensorRT post-processing
(:mod:`cdd_engine.runtime.postprocess`) and the Triton launchers (``cdd_engine/kernels/``). The C++ library
has the same operators in ``csrc/src/operators.hpp``; the golden vectors in ``tests/golden/``
(written by ``tests/golden/make_golden.py`` from this module and the reference) tie the two.

- Gaussian blur taps: scipy.ndimage.gaussian_filter's rule, radius ``floor(truncate*sigma + 0.5)``
  (``limits.blur_radius``), ``2r+1`` weights ``exp(-x^2 / (2 sigma^2))`` normalised to sum 1.
- Reflect boundary: scipy's ``mode="reflect"``, the edge sample repeated (... c b a | a b c ...).
- Upsampling: 1-D linear interpolation with ``align_corners=True`` (PyTorch's rule).
- Resize: 1-D antialiased linear ("triangle") filter of PyTorch's ``antialias=True`` bilinear
  interpolation with ``align_corners=False`` (pre-processing of camera frames).

Only torch, numpy and :mod:`cdd_engine.limits` are imported (no Triton, no OpenVINO), in float64.
"""
from __future__ import annotations

import numpy as np
import torch

from . import limits

DEFAULT_SIGMA = 4.0
TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default; sigma 4 -> radius 16, 33 taps


def gaussian_taps(sigma: float = DEFAULT_SIGMA, truncate: float = TRUNCATE,
                  dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Normalised 1-D Gaussian weights of length 2r+1, r = floor(truncate*sigma + 0.5) (scipy's rule)."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    radius = limits.blur_radius(float(sigma), float(truncate))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / float(sigma)) ** 2)
    return (w / w.sum()).to(dtype)


def reflect_index(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Map any integer index onto [0, n) the way scipy's mode="reflect" does (edge repeated, period 2n)."""
    period = 2 * n
    idx = torch.remainder(idx, period)
    return torch.where(idx >= n, period - 1 - idx, idx)


def reflect_band(n: int, radius: int) -> torch.Tensor:
    """(n, 2r+1) int64 table: source index of tap t of output i, reflect_index(i - r + t, n)."""
    offsets = torch.arange(-radius, radius + 1)
    return reflect_index(torch.arange(n)[:, None] + offsets[None, :], n)


def bilinear_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """(n_out, n_in) float64 matrix of 1-D linear interpolation with ``align_corners=True``.

    PyTorch's upsample_bilinear2d rule: src = i*(n_in-1)/(n_out-1) (0 when n_out == 1),
    i0 = floor(src), i1 = min(i0 + 1, n_in - 1), weights 1 - (src - i0) and src - i0.
    """
    if n_out <= 0 or n_in <= 0:
        raise ValueError(f"sizes must be positive, got out {n_out}, in {n_in}")
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    src = torch.arange(n_out, dtype=torch.float64) * scale
    i0 = src.floor().long().clamp(0, n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    frac = (src - i0).clamp(0.0, 1.0)
    rows = torch.arange(n_out)
    m.index_put_((rows, i0), 1.0 - frac, accumulate=True)
    m.index_put_((rows, i1), frac, accumulate=True)
    return m


def blur_matrix(n: int, sigma: float = DEFAULT_SIGMA, truncate: float = TRUNCATE) -> torch.Tensor:
    """(n, n) float64 matrix of the 1-D Gaussian blur with scipy's reflect boundary folded in."""
    taps = gaussian_taps(sigma, truncate, dtype=torch.float64)
    idx = reflect_band(n, (taps.numel() - 1) // 2)
    g = torch.zeros(n, n, dtype=torch.float64)
    g.scatter_add_(1, idx, taps.expand(n, -1).contiguous())
    return g


def band_windows(m: torch.Tensor, tile: int) -> list[int]:
    """For row tiles of ``m`` (out, in): flat [lo0, hi0, lo1, hi1, ...], the range of its non-zero
    columns ([0, 0) for an all-zero tile). The banded matmuls contract over [lo, hi) only."""
    out = []
    nz = m != 0
    for r0 in range(0, m.shape[0], tile):
        cols = torch.nonzero(nz[r0:r0 + tile].any(dim=0)).flatten()
        lo, hi = (int(cols[0]), int(cols[-1]) + 1) if cols.numel() else (0, 0)
        out += [lo, hi]
    return out


def antialias_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """First input index (out,) int32 and tap weights (out, K) float64 of the 1-D resize.

    Antialiased linear ("triangle") filter of PyTorch's ``antialias=True`` bilinear
    interpolation with ``align_corners=False``: scale = in/out, support = scale (downsampling)
    or 1 (upsampling), center = scale*(i + 0.5), taps from int(center - support + 0.5) to
    int(center + support + 0.5), weights max(0, 1 - |(k - center + 0.5) / max(scale, 1)|),
    normalised to sum 1; unused taps 0.
    """
    if in_size <= 0 or out_size <= 0:
        raise ValueError(f"sizes must be positive, got in {in_size}, out {out_size}")
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0  # triangle half-width 1, widened when downsampling
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    starts, weights = [], []
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)  # int() truncates toward zero, as in C++
        hi = min(int(center + support + 0.5), in_size)
        k = np.arange(lo, hi, dtype=np.float64)
        wts = np.maximum(0.0, 1.0 - np.abs((k - center + 0.5) * invscale))
        total = wts.sum()
        if total != 0.0:
            wts = wts / total
        starts.append(lo)
        weights.append(wts)
    taps = max(len(v) for v in weights)
    table = np.zeros((out_size, taps), dtype=np.float64)
    for i, v in enumerate(weights):
        table[i, :len(v)] = v
    return np.asarray(starts, dtype=np.int32), table


def resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) float64 dense form of :func:`antialias_taps` (tests, golden vectors)."""
    starts, table = antialias_taps(in_size, out_size)
    m = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        k = min(table.shape[1], in_size - int(starts[i]))
        m[i, starts[i]:starts[i] + k] = table[i, :k]
    return m
