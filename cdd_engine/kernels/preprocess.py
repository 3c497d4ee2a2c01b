"""Fused pre-processing in Triton: uint8 camera frames -> normalised (N, 3, h, w) tensors.

Matches :func:`cdd_engine.preprocess.resize_normalize` (the reference): channel order to RGB
(BGR swapped, Mono8 replicated), antialiased bilinear resize equal to
``F.interpolate(mode="bilinear", align_corners=False, antialias=True)``, then
``(x / 255 - mean) / std`` per channel, in one kernel that reads each frame from its own
padded rows (camera SDKs hand out row strides in bytes).

The antialiased resize is separable. Per output column j the host precomputes the first input
column ``x0[j]`` and KX tap weights (and likewise per output row), with the rule of PyTorch's
antialiased interpolation: scale = in/out, support = scale (downsampling) or 1 (upsampling),
center = scale*(j + 0.5), taps from int(center - support + 0.5) to int(center + support + 0.5),
triangle weights max(0, 1 - |(k - center + 0.5) / max(scale, 1)|), normalised to sum 1.
The weights are ``cdd_engine.operators.antialias_taps`` (float64), cached per (in size, out size).

Two implementations, both one program per BM x BN output tile, chunk by chunk over the input
rows of the tile's row band, each chunk folded into the tile with an fp32 ``tl.dot``
(``input_precision="ieee"``, no TF32) by the vertical weights:

- ``"mma"`` (``_preprocess_mma_kernel``): the horizontal pass is a matmul of a dense block of
  pixels (contiguous row segments, uint8 -> fp16, exact) by the tile's dense band of horizontal
  weights on the tensor cores. For fp32 accuracy each weight, scaled by 256 (a power of two,
  so the split stays in fp16's normal range), is split into two fp16 parts hi + lo
  (residual ~2^-22 relative); products are exact and accumulate in fp32. Host tables: per row
  tile the first input row and a dense (BM, band) fp32 block; per column tile the first input
  column and a dense (2, band, BN) fp16 block.
- ``"taps"`` (``_preprocess_kernel``): the horizontal pass gathers each output column's taps
  (uint8 gathers, fp32 FMAs) from per-column tap tables; simpler, slower on the GPU.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch
import triton
import triton.language as tl

from cdd_engine.operators import antialias_taps
from cdd_engine.preprocess import IMAGENET_MEAN, IMAGENET_STD, PIXEL_FORMATS

from ._common import cdiv, check_device, interpreting

# "taps" kernel: 32x32 output tile, 16 input rows per chunk (the smallest tl.dot K), 4 warps:
# ~120 registers per thread, no spills (cdd_engine/kernels/aot.py output, sm_90).
PRE_BLOCK_M = 32
PRE_BLOCK_N = 32
PRE_ROW_CHUNK = 16
PRE_NUM_WARPS = 4
# "mma" kernel: 32x32 output tile, 16 input rows x 64 input columns per chunk, 8 warps:
# 128 registers, no spills on sm_90/sm_80 (32-row chunks with 4 warps needed 255 and spilled).
MMA_BLOCK_M = 32
MMA_BLOCK_N = 32
MMA_ROW_CHUNK = 16
MMA_COL_CHUNK = 64
MMA_NUM_WARPS = 8
MMA_WEIGHT_SCALE = 256.0  # power of two: keeps the fp16 low parts of the weights normal
IMPLS = ("mma", "taps")
# "taps" is the implementation checked on the H200 so far (1080p -> 256^2: 35 us/frame, 1.6-1.9x
# eager); "mma" passes the same CPU-interpreter tests and compiles without spills for sm_80/90
# but still awaits its GPU check (benchmarks/gpu_check.py sections a, c and t time and check both).
DEFAULT_IMPL = "taps"
OUT_DTYPES = (torch.float32, torch.float16)
# Under the CPU interpreter bigger tiles (fewer Python-level programs) make tests faster; tests
# switch this off to cover the GPU tile sizes too.
INTERPRETER_BIG_BLOCKS = True
# Input channel of output channel c (R, G, B) per pixel format.
CHANNEL_MAP = {"RGB": (0, 1, 2), "BGR": (2, 1, 0), "MONO": (0, 0, 0)}


@triton.jit
def _store_rgb(out_ptr, n, rows, cols, rmask, cmask, out_sn, out_sc, out_sh, out_sw, acc0, acc1, acc2,
               affine_ptr, scale):
    """Store a tile's three channel accumulators as out_c = acc_c * scale * affine[c] + affine[3 + c]
    (``scale`` undoes a fixed-point scale of the weights; 1.0 for none)."""
    omask = rmask[:, None] & cmask[None, :]
    optr = out_ptr + n * out_sn + rows.to(tl.int64)[:, None] * out_sh + cols.to(tl.int64)[None, :] * out_sw
    ety = out_ptr.dtype.element_ty
    tl.store(optr, (acc0 * (tl.load(affine_ptr + 0) * scale) + tl.load(affine_ptr + 3)).to(ety), mask=omask)
    tl.store(optr + out_sc, (acc1 * (tl.load(affine_ptr + 1) * scale) + tl.load(affine_ptr + 4)).to(ety), mask=omask)
    tl.store(optr + 2 * out_sc, (acc2 * (tl.load(affine_ptr + 2) * scale) + tl.load(affine_ptr + 5)).to(ety),
             mask=omask)


@triton.jit
def _preprocess_kernel(src_ptr, out_ptr, y0_ptr, wy_ptr, x0_ptr, wx_ptr, affine_ptr,
                       H, W, h, w, ky, kx,
                       src_sn, src_sh, src_sw, src_sc,
                       out_sn, out_sc, out_sh, out_sw,
                       ch0, ch1, ch2,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ROW_CHUNK: tl.constexpr):
    """One BLOCK_M x BLOCK_N tile of output frame n. Grid (cdiv(w, BN), cdiv(h, BM), N).

    src: uint8 frame n at src_ptr + n*src_sn, pixel (y, x) channel c at y*src_sh + x*src_sw +
    c*src_sc (bytes). ch0..ch2: source channel of output R, G, B. Tables: y0 (h,) int32 first
    input row, wy (h, ky) fp32 weights; x0 (w,), wx (w, kx) likewise for columns (zero padded).
    affine (6,) fp32: out_c = x_c * affine[c] + affine[3 + c].
    """
    tj = tl.program_id(0)
    ti = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    rows = ti * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tj * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < h
    cmask = cols < w
    y0 = tl.load(y0_ptr + rows, mask=rmask, other=0)
    x0 = tl.load(x0_ptr + cols, mask=cmask, other=0)
    # Input rows that feed this tile: y0 is non-decreasing, so [y0[first], y0[last] + ky).
    last = tl.minimum(ti * BLOCK_M + BLOCK_M, h) - 1
    r_lo = tl.load(y0_ptr + ti * BLOCK_M)
    r_hi = tl.minimum(tl.load(y0_ptr + last) + ky, H)
    acc0 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    frame = src_ptr + n * src_sn
    for r0 in range(r_lo, r_hi, ROW_CHUNK):
        rr = r0 + tl.arange(0, ROW_CHUNK)
        rrmask = rr < r_hi
        row_ptr = frame + rr.to(tl.int64)[:, None] * src_sh
        h0 = tl.zeros([ROW_CHUNK, BLOCK_N], dtype=tl.float32)
        h1 = tl.zeros([ROW_CHUNK, BLOCK_N], dtype=tl.float32)
        h2 = tl.zeros([ROW_CHUNK, BLOCK_N], dtype=tl.float32)
        for t in range(kx):  # horizontal taps
            xx = x0 + t
            wxt = tl.load(wx_ptr + cols * kx + t, mask=cmask, other=0.0)[None, :]
            m = rrmask[:, None] & (cmask & (xx < W))[None, :]
            px = row_ptr + xx.to(tl.int64)[None, :] * src_sw
            h0 += tl.load(px + ch0 * src_sc, mask=m, other=0).to(tl.float32) * wxt
            h1 += tl.load(px + ch1 * src_sc, mask=m, other=0).to(tl.float32) * wxt
            h2 += tl.load(px + ch2 * src_sc, mask=m, other=0).to(tl.float32) * wxt
        # vertical weights of output rows for the chunk's input rows (0 outside each row's taps)
        dy = rr[None, :] - y0[:, None]
        wm = rmask[:, None] & rrmask[None, :] & (dy >= 0) & (dy < ky)
        wyc = tl.load(wy_ptr + rows[:, None] * ky + dy, mask=wm, other=0.0)
        acc0 += tl.dot(wyc, h0, input_precision="ieee")
        acc1 += tl.dot(wyc, h1, input_precision="ieee")
        acc2 += tl.dot(wyc, h2, input_precision="ieee")
    _store_rgb(out_ptr, n, rows, cols, rmask, cmask, out_sn, out_sc, out_sh, out_sw, acc0, acc1, acc2,
               affine_ptr, 1.0)


@triton.jit
def _preprocess_mma_kernel(src_ptr, out_ptr, rlo_ptr, wyb_ptr, clo_ptr, wxb_ptr, affine_ptr,
                           H, W, h, w, rw, cw,
                           src_sn, src_sh, src_sw, src_sc,
                           out_sn, out_sc, out_sh, out_sw,
                           ch0, ch1, ch2,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                           ROW_CHUNK: tl.constexpr, COL_CHUNK: tl.constexpr, INV_SCALE: tl.constexpr):
    """One BLOCK_M x BLOCK_N tile of output frame n. Grid (cdiv(w, BN), cdiv(h, BM), N).

    Row tile ti reads input rows rlo[ti] + [0, rw) with weights wyb[ti] (BM, rw) fp32; column
    tile tj reads input columns clo[tj] + [0, cw) with weights wxb[tj] (2, cw, BN) fp16 (hi, lo
    parts of 256 x weight; INV_SCALE = 1/256 undoes the scale). rw, cw are multiples of the
    chunks; padding weights are 0. Pixel addressing and affine as in ``_preprocess_kernel``.
    """
    tj = tl.program_id(0)
    ti = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    rows = ti * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tj * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < h
    cmask = cols < w
    r_lo = tl.load(rlo_ptr + ti)
    c_lo = tl.load(clo_ptr + tj)
    wy_tile = wyb_ptr + ti.to(tl.int64) * BLOCK_M * rw
    wx_tile = wxb_ptr + tj.to(tl.int64) * 2 * cw * BLOCK_N
    jj = tl.arange(0, BLOCK_N)
    rc = tl.arange(0, ROW_CHUNK)
    kc = tl.arange(0, COL_CHUNK)
    acc0 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    frame = src_ptr + n * src_sn
    for r0 in range(0, rw, ROW_CHUNK):
        rr = r_lo + r0 + rc
        rrmask = rr < H
        row_ptr = frame + rr.to(tl.int64)[:, None] * src_sh
        h0 = tl.zeros([ROW_CHUNK, BLOCK_N], dtype=tl.float32)
        h1 = tl.zeros([ROW_CHUNK, BLOCK_N], dtype=tl.float32)
        h2 = tl.zeros([ROW_CHUNK, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, cw, COL_CHUNK):
            ks = c_lo + k0 + kc
            m = rrmask[:, None] & (ks < W)[None, :]
            px = row_ptr + ks.to(tl.int64)[None, :] * src_sw
            woff = (k0 + kc)[:, None] * BLOCK_N + jj[None, :]
            w_hi = tl.load(wx_tile + woff)
            w_lo = tl.load(wx_tile + cw * BLOCK_N + woff)
            # uint8 -> fp16 is exact; fp16 x fp16 products are exact in the fp32 accumulator
            x = tl.load(px + ch0 * src_sc, mask=m, other=0).to(tl.float32).to(tl.float16)
            h0 = tl.dot(x, w_hi, h0)
            h0 = tl.dot(x, w_lo, h0)
            x = tl.load(px + ch1 * src_sc, mask=m, other=0).to(tl.float32).to(tl.float16)
            h1 = tl.dot(x, w_hi, h1)
            h1 = tl.dot(x, w_lo, h1)
            x = tl.load(px + ch2 * src_sc, mask=m, other=0).to(tl.float32).to(tl.float16)
            h2 = tl.dot(x, w_hi, h2)
            h2 = tl.dot(x, w_lo, h2)
        wyc = tl.load(wy_tile + tl.arange(0, BLOCK_M)[:, None] * rw + (r0 + rc)[None, :])
        acc0 += tl.dot(wyc, h0, input_precision="ieee")
        acc1 += tl.dot(wyc, h1, input_precision="ieee")
        acc2 += tl.dot(wyc, h2, input_precision="ieee")
    _store_rgb(out_ptr, n, rows, cols, rmask, cmask, out_sn, out_sc, out_sh, out_sw, acc0, acc1, acc2,
               affine_ptr, INV_SCALE)


@functools.lru_cache(maxsize=64)
def _tables_cpu(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    starts, table = antialias_taps(in_size, out_size)
    return torch.from_numpy(starts), torch.from_numpy(table).to(torch.float32)


def band_tables(in_size: int, out_size: int, tile: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense weight bands per output tile, for the "mma" kernel.

    Returns (starts (n_tiles,) int32: first input index of each tile's band,
    band (n_tiles, tile, width) float64: weight of input starts[t] + k for output t*tile + i),
    width = the widest band rounded up to ``chunk``; outputs past ``out_size`` and padding are 0.
    """
    first, taps = antialias_taps(in_size, out_size)
    n_tiles = -(-out_size // tile)
    starts = np.zeros(n_tiles, dtype=np.int32)
    ends = np.zeros(n_tiles, dtype=np.int64)
    nz = taps != 0
    last = np.where(nz.any(axis=1), taps.shape[1] - 1 - np.argmax(nz[:, ::-1], axis=1), 0)  # last non-zero tap
    for t in range(n_tiles):
        i0, i1 = t * tile, min(out_size, (t + 1) * tile)
        starts[t] = first[i0]  # first[] is non-decreasing
        ends[t] = max(int(first[i] + last[i] + 1) for i in range(i0, i1))
    width = int(-(-int((ends - starts).max()) // chunk) * chunk)
    band = np.zeros((n_tiles, tile, width), dtype=np.float64)
    for i in range(out_size):
        t = i // tile
        off = first[i] - starts[t]
        k = min(taps.shape[1], width - off)
        band[t, i - t * tile, off:off + k] = taps[i, :k]
    return starts, band


@functools.lru_cache(maxsize=64)
def _mma_tables_cpu(H: int, W: int, h: int, w: int, bm: int, bn: int, rc: int, kc: int):
    rlo, wy = band_tables(H, h, bm, rc)
    clo, wx = band_tables(W, w, bn, kc)
    # (n_ct, bn, cw) -> (n_ct, cw, bn), scaled by 256, split into fp16 hi + lo
    wx32 = torch.from_numpy(np.ascontiguousarray(wx.transpose(0, 2, 1)) * MMA_WEIGHT_SCALE).to(torch.float32)
    hi = wx32.to(torch.float16)
    lo = (wx32 - hi.to(torch.float32)).to(torch.float16)
    wxb = torch.stack([hi, lo], dim=1).contiguous()  # (n_ct, 2, cw, bn)
    return (torch.from_numpy(rlo), torch.from_numpy(wy).to(torch.float32).contiguous(),
            torch.from_numpy(clo), wxb)


_DEVICE_TABLES: dict = {}


def _tables(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    key = (in_size, out_size, str(device))
    hit = _DEVICE_TABLES.get(key)
    if hit is None:
        if len(_DEVICE_TABLES) > 64:
            _DEVICE_TABLES.clear()
        hit = tuple(t.to(device) for t in _tables_cpu(in_size, out_size))
        _DEVICE_TABLES[key] = hit
    return hit


def _affine(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """(6,) fp32: scale 1/(255 std) then bias -mean/std per channel, cached per device."""
    key = (mean, std, str(device))
    hit = _DEVICE_TABLES.get(key)
    if hit is None:
        m = torch.tensor(mean, dtype=torch.float64)
        s = torch.tensor(std, dtype=torch.float64)
        hit = torch.cat([1.0 / (255.0 * s), -m / s]).to(torch.float32).to(device)
        _DEVICE_TABLES[key] = hit
    return hit


def _check_frames(frames: torch.Tensor, fmt: str) -> torch.Tensor:
    if fmt not in PIXEL_FORMATS:
        raise ValueError(f"pixel_format must be one of {PIXEL_FORMATS}, got {fmt!r}")
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"frames must be a torch.Tensor or numpy array, got {type(frames).__name__}")
    if frames.dtype != torch.uint8:
        raise TypeError(f"frames must be uint8, got {frames.dtype}")
    if frames.dim() == 3:  # (N, H, W) single channel
        frames = frames.unsqueeze(-1)
    if frames.dim() != 4:
        raise ValueError(f"frames must be (N,H,W,C) or (N,H,W), got shape {tuple(frames.shape)}")
    n, H, W, c = frames.shape
    if n == 0:
        raise ValueError("empty batch: need at least one frame")
    if H == 0 or W == 0:
        raise ValueError(f"zero-sized frame: {H}x{W}")
    want = 1 if fmt == "MONO" else 3
    if c != want:
        raise ValueError(f"pixel_format {fmt} needs {want} channel(s), got {c}")
    if min(frames.stride()) < 0:
        raise ValueError(f"negative strides are not supported, got {frames.stride()}")
    check_device(frames, "frames")
    return frames


def fused_preprocess(frames: torch.Tensor | np.ndarray, size: int | tuple[int, int],
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                     pixel_format: str = "RGB", out_dtype: torch.dtype = torch.float32,
                     channels_last: bool = False, impl: str | None = None) -> torch.Tensor:
    """uint8 frames (N, H, W, C) -> normalised (N, 3, h, w) ``out_dtype`` at model size ``size``.

    Args:
        frames: (N, H, W, 3) RGB/BGR or (N, H, W, 1) / (N, H, W) MONO uint8, on CUDA (any device
            under ``TRITON_INTERPRET=1``), any strides: padded rows (stride(1) > W*C) are read in
            place, without a copy.
        size: model resolution h (square) or (h, w); up- and down-scaling both work.
        mean, std: per-channel normalisation of x / 255, as in the reference.
        pixel_format: "RGB", "BGR" or "MONO".
        out_dtype: torch.float32 or torch.float16 (math in fp32, one rounding at the store).
        channels_last: return a channels_last tensor (same shape) for an NHWC fp16 model.
        impl: "mma" or "taps" (see the module docstring); None -> ``DEFAULT_IMPL``.

    Returns:
        (N, 3, h, w) tensor equal to ``cdd_engine.preprocess.resize_normalize`` up to fp32
        rounding (and the final fp16 rounding for fp16).
    """
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames)
    fmt = pixel_format.upper() if isinstance(pixel_format, str) else pixel_format
    frames = _check_frames(frames, fmt)
    impl = DEFAULT_IMPL if impl is None else impl
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {(h, w)}")
    mean_t, std_t = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean_t) != 3 or len(std_t) != 3:
        raise ValueError(f"mean and std need 3 values each, got {len(mean_t)} and {len(std_t)}")
    if not all(s > 0 for s in std_t):
        raise ValueError(f"std must be positive, got {std_t}")
    N, H, W, _ = frames.shape
    device = frames.device
    affine = _affine(mean_t, std_t, device)
    fmt_kwargs = {"memory_format": torch.channels_last} if channels_last else {}
    out = torch.empty((N, 3, h, w), dtype=out_dtype, device=device, **fmt_kwargs)
    ch = CHANNEL_MAP[fmt]
    big = INTERPRETER_BIG_BLOCKS and interpreting()
    if impl == "mma":
        bm, bn, rc, kc = MMA_BLOCK_M, MMA_BLOCK_N, MMA_ROW_CHUNK, MMA_COL_CHUNK
        if big:
            bm, bn = 64, 64
        key = ("mma", H, W, h, w, bm, bn, rc, kc, str(device))
        tabs = _DEVICE_TABLES.get(key)
        if tabs is None:
            tabs = tuple(t.to(device) for t in _mma_tables_cpu(H, W, h, w, bm, bn, rc, kc))
            _DEVICE_TABLES[key] = tabs
        rlo, wyb, clo, wxb = tabs
        grid = (cdiv(w, bn), cdiv(h, bm), N)
        _preprocess_mma_kernel[grid](
            frames, out, rlo, wyb, clo, wxb, affine,
            H, W, h, w, wyb.shape[2], wxb.shape[2],
            frames.stride(0), frames.stride(1), frames.stride(2), frames.stride(3),
            out.stride(0), out.stride(1), out.stride(2), out.stride(3),
            ch[0], ch[1], ch[2],
            BLOCK_M=bm, BLOCK_N=bn, ROW_CHUNK=rc, COL_CHUNK=kc, INV_SCALE=1.0 / MMA_WEIGHT_SCALE,
            num_warps=MMA_NUM_WARPS)
        return out
    y0, wy = _tables(H, h, device)
    x0, wx = _tables(W, w, device)
    bm, bn, rc = PRE_BLOCK_M, PRE_BLOCK_N, PRE_ROW_CHUNK
    if big:
        bm, bn, rc = 64, 64, 32
    grid = (cdiv(w, bn), cdiv(h, bm), N)
    _preprocess_kernel[grid](
        frames, out, y0, wy, x0, wx, affine,
        H, W, h, w, wy.shape[1], wx.shape[1],
        frames.stride(0), frames.stride(1), frames.stride(2), frames.stride(3),
        out.stride(0), out.stride(1), out.stride(2), out.stride(3),
        ch[0], ch[1], ch[2],
        BLOCK_M=bm, BLOCK_N=bn, ROW_CHUNK=rc, num_warps=PRE_NUM_WARPS)
    return out
