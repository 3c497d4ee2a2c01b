"""Fused anomaly map (docs/anomaly_map.md) in Triton: cosine distance, upsampling, blur, score.

Matches :func:`cdd_engine.anomaly_map.anomaly_map` (the reference) to fp32 rounding.

Pass 1, ``_cosine_partials_kernel`` (memory-bound, one launch per scale): reads every teacher
and student element exactly once and writes, per pixel, the channel sums <T,S>, |T|^2 and |S|^2
in fp32 (B, h_s, w_s each). When a scale has too few pixels to fill the GPU the channel range
is split over several programs ("splits"); each split writes its own partial sums, which pass 2
adds, so the result does not depend on scheduling (no atomics).

Pass 2, ``_sandwich_kernel`` (small): bilinear upsampling with ``align_corners=True`` and the
Gaussian blur with scipy's reflect boundary are both linear and separable, so for mode "add"

    map_b = sum_s A_s d_s[b] B_s^T,   A_s = G_H U_s (H x h_s),   B_s = G_W V_s (W x w_s),

with d_s the cosine-distance map built from the pass-1 sums on the fly. The small operator
matrices come from ``cdd_engine.operators`` (float64, made once per (size, scales, sigma) on the
host) and are cached on the device in fp32. Each program computes one BM x BN tile of the map as two chained fp32 matmuls
(``tl.dot`` with ``input_precision="ieee"``: no TF32), restricted to the band of A_s / B_s rows
that is non-zero for that tile; no upsampled per-scale map ever goes to memory. It writes the
tile and the tile maximum; ``_row_max_kernel`` reduces the tile maxima to the image score.

Mode "mul" is not linear: the first sandwich launch multiplies the upsampled tiles (A = U_s,
B = V_s) and writes that product map (B, H, W) in fp32, the only full-resolution intermediate;
a second sandwich launch blurs it (A = G_H, B = G_W) and writes the final map.

Kernels keep float scalars constexpr (``EPS``): Triton's AOT C launcher passes fp32 scalars as
double. ``cdd_engine/kernels/aot.py`` compiles these kernels for the C++ engine.
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch
import triton
import triton.language as tl

from cdd_engine.anomaly_map import EPS as _REF_EPS, MODES
from cdd_engine.operators import DEFAULT_SIGMA, band_windows, bilinear_matrix, blur_matrix

from ._common import cdiv, check_device, interpreting, next_pow2, pow2_factor, sm_count

EPS: tl.constexpr = tl.constexpr(_REF_EPS)  # clamp of the norms, as in the reference

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Pass-2 tile: 64x64 output pixels, contraction chunks of 16 (the smallest tl.dot K). On sm_90
# with 4 warps it needed 168 registers per thread (255 for the blur variant); 8 warps bring it
# to 128 (169), no spills either way (cdd_engine/kernels/aot.py output, Triton 3.9).
MAP_BLOCK_M = 64
MAP_BLOCK_N = 64
MAP_BLOCK_K = 16
MAP_NUM_WARPS = 8
# Pass-1 launch: split channels over programs until there are this many programs per SM, so
# enough loads are in flight (Little's law: ~4.3 TB/s x ~0.6 us ~ 2.6 MB over 132 SMs).
PROGRAMS_PER_SM = 2
# Pass-1 tiles. NCHW: (BLOCK_C, BLOCK_P, num_warps, num_stages); channels_last: (elements per
# tile, max BLOCK_C, num_warps, num_stages). num_stages > 1 pipelines the channel loop's loads
# through shared memory (cp.async). First H200 run (Triton 3.6, WRN50 fp16 NCHW batch 32,
# do_bench medians incl. launch cost): (16, 128, 4, 1) 1.9 TB/s at 4 programs/SM, 1.9 at 2;
# (32, 128, 4, 1) 2.2 at 4, 2.3 TB/s at 2 (the fastest tried; num_stages > 1 untried on a GPU).
PASS1_NCHW = (32, 128, 4, 1)
PASS1_CL = (2048, 64, 4, 1)
META_FIELDS = 8  # h, w, splits, x_off, a_off, bt_off, rwin_off, cwin_off
# The CPU interpreter runs each program as Python, one tile op at a time: there, bigger blocks
# (fewer programs and loop trips) make tests ~5x faster. Tests switch this off to cover the
# GPU configuration too.
INTERPRETER_BIG_BLOCKS = True


# --------------------------------------------------------------------------------------------
# Pass 1: per-pixel channel sums
# --------------------------------------------------------------------------------------------
@triton.jit
def _cosine_partials_kernel(t_ptr, s_ptr, ws_ptr,
                            c_div, hw, w,
                            t_sb, t_sc, t_sh, t_sw_div, s_sb, s_sc, s_sh, s_sw_div,
                            batch, c_per_split,
                            C_ALIGN: tl.constexpr, SW_ALIGN: tl.constexpr, FLAT: tl.constexpr,
                            BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, STAGES: tl.constexpr):
    """ws[(q*splits + k)*B + b, p] = sum over split k's channels of T*S (q=0), T*T (1), S*S (2).

    Grid (cdiv(hw, BLOCK_P), B, splits). C = c_div*C_ALIGN, x-stride = *_sw_div*SW_ALIGN: the
    launcher factors out powers of two so loads along channels (channels_last) or pixels (NCHW)
    vectorise. FLAT: the pixel index p = y*w + x is addressed as p * x-stride (true for NCHW and
    NHWC layouts); otherwise y and x strides are used separately.
    """
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    k = tl.program_id(2)
    splits = tl.num_programs(2)
    C = c_div * C_ALIGN
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < hw
    t_sw = t_sw_div * SW_ALIGN
    s_sw = s_sw_div * SW_ALIGN
    if FLAT:
        t_poff = p.to(tl.int64) * t_sw
        s_poff = p.to(tl.int64) * s_sw
    else:
        y = p // w
        x = p - y * w
        t_poff = y.to(tl.int64) * t_sh + x.to(tl.int64) * t_sw
        s_poff = y.to(tl.int64) * s_sh + x.to(tl.int64) * s_sw
    t_base = t_ptr + b * t_sb
    s_base = s_ptr + b * s_sb
    acc_ts = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    acc_tt = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    acc_ss = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    c_begin = k * c_per_split
    c_end = tl.minimum(C, c_begin + c_per_split)
    # c_per_split is a multiple of BLOCK_C, so no chunk crosses into the next split: `c < C`
    # is the only channel mask needed (and it keeps the mask aligned for vector loads).
    for c0 in tl.range(c_begin, c_end, BLOCK_C, num_stages=STAGES):
        c = c0 + tl.arange(0, BLOCK_C)
        m = (c < C)[:, None] & pmask[None, :]
        c64 = c.to(tl.int64)[:, None]
        tv = tl.load(t_base + c64 * t_sc + t_poff[None, :], mask=m, other=0.0).to(tl.float32)
        sv = tl.load(s_base + c64 * s_sc + s_poff[None, :], mask=m, other=0.0).to(tl.float32)
        acc_ts += tv * sv
        acc_tt += tv * tv
        acc_ss += sv * sv
    plane = batch * hw  # elements of one (q, split) slab
    out = ws_ptr + (k * 3 * plane + b * hw) + p
    tl.store(out, tl.sum(acc_ts, axis=0), mask=pmask)
    tl.store(out + plane, tl.sum(acc_tt, axis=0), mask=pmask)
    tl.store(out + 2 * plane, tl.sum(acc_ss, axis=0), mask=pmask)


# --------------------------------------------------------------------------------------------
# Pass 2: out[b] = (sum or product over s) of A_s X_s[b] B_s^T, banded, plus tile maxima
# --------------------------------------------------------------------------------------------
@triton.jit
def _sandwich_kernel(x_ptr, a_ptr, bt_ptr, meta_ptr, win_ptr, out_ptr, tile_max_ptr,
                     num_scales, batch, H, W,
                     FROM_PARTIALS: tl.constexpr, MUL: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One BLOCK_M x BLOCK_N tile of image b. Grid (cdiv(W, BN), cdiv(H, BM), B).

    meta (num_scales, 8) int32: h, w, splits, x_off, a_off, bt_off, rwin_off, cwin_off.
    A_s is (H, h) row-major at a_ptr + a_off, B_s^T is (w, W) row-major at bt_ptr + bt_off.
    win holds, per row tile and per column tile, the [lo, hi) range of A_s columns / B_s rows
    that are non-zero there (the band), so the contraction skips the zeros.
    FROM_PARTIALS: X_s is the cosine distance made from pass-1 sums (layout of
    ``_cosine_partials_kernel`` starting at x_off); else X_s is a plain (B, h, w) fp32 map.
    MUL: multiply the per-scale tiles instead of adding them.
    """
    tj = tl.program_id(0)
    ti = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    n_col_tiles = tl.num_programs(0)
    n_row_tiles = tl.num_programs(1)
    rows = ti * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tj * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < H
    cmask = cols < W
    kk = tl.arange(0, BLOCK_K)
    if MUL:
        acc = tl.full([BLOCK_M, BLOCK_N], 1.0, dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for s in range(num_scales):
        mrow = meta_ptr + s * 8
        h = tl.load(mrow + 0)
        w = tl.load(mrow + 1)
        splits = tl.load(mrow + 2)
        x_off = tl.load(mrow + 3).to(tl.int64)
        a_off = tl.load(mrow + 4).to(tl.int64)
        bt_off = tl.load(mrow + 5).to(tl.int64)
        rwin = tl.load(mrow + 6) + 2 * ti
        cwin = tl.load(mrow + 7) + 2 * tj
        r_lo = tl.load(win_ptr + rwin)
        r_hi = tl.load(win_ptr + rwin + 1)
        c_lo = tl.load(win_ptr + cwin)
        c_hi = tl.load(win_ptr + cwin + 1)
        hw = h * w
        plane = batch * hw
        tile = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(r_lo, r_hi, BLOCK_K):
            ks = k0 + kk
            kmask = ks < r_hi
            # tmp = X_s[b][ks, band] @ B_s^T[band, cols]  -> (BLOCK_K, BLOCK_N)
            tmp = tl.zeros([BLOCK_K, BLOCK_N], dtype=tl.float32)
            for l0 in range(c_lo, c_hi, BLOCK_K):
                ls = l0 + kk
                lmask = ls < c_hi
                m2 = kmask[:, None] & lmask[None, :]
                pix = ks[:, None] * w + ls[None, :]
                if FROM_PARTIALS:
                    base = x_ptr + x_off + b * hw + pix
                    ts = tl.zeros([BLOCK_K, BLOCK_K], dtype=tl.float32)
                    tt = tl.zeros([BLOCK_K, BLOCK_K], dtype=tl.float32)
                    ss = tl.zeros([BLOCK_K, BLOCK_K], dtype=tl.float32)
                    for q in range(splits):
                        ptr = base + q * 3 * plane
                        ts += tl.load(ptr, mask=m2, other=0.0)
                        tt += tl.load(ptr + plane, mask=m2, other=0.0)
                        ss += tl.load(ptr + 2 * plane, mask=m2, other=0.0)
                    den = tl.maximum(tl.sqrt(tt), EPS) * tl.maximum(tl.sqrt(ss), EPS)
                    xv = tl.where(m2, 1.0 - ts / den, 0.0)
                else:
                    xv = tl.load(x_ptr + x_off + b * hw + pix, mask=m2, other=0.0)
                btv = tl.load(bt_ptr + bt_off + ls[:, None] * W + cols[None, :],
                              mask=lmask[:, None] & cmask[None, :], other=0.0)
                tmp += tl.dot(xv, btv, input_precision="ieee")
            av = tl.load(a_ptr + a_off + rows[:, None] * h + ks[None, :],
                         mask=rmask[:, None] & kmask[None, :], other=0.0)
            tile += tl.dot(av, tmp, input_precision="ieee")
        if MUL:
            acc = acc * tile
        else:
            acc = acc + tile
    omask = rmask[:, None] & cmask[None, :]
    optr = out_ptr + b * H * W + rows[:, None] * W + cols[None, :]
    tl.store(optr, acc, mask=omask)
    tmax = tl.max(tl.max(tl.where(omask, acc, float("-inf")), axis=1), axis=0)
    tl.store(tile_max_ptr + (b * n_row_tiles + ti) * n_col_tiles + tj, tmax)


@triton.jit
def _row_max_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """out[b] = max(x[b, :n]). Grid (B,)."""
    b = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    best = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    for i0 in range(0, n, BLOCK):
        v = tl.load(x_ptr + b * n + i0 + offs, mask=i0 + offs < n, other=float("-inf"))
        best = tl.maximum(best, v)
    tl.store(out_ptr + b, tl.max(best, axis=0))


# --------------------------------------------------------------------------------------------
# Host-side operators: the tables of cdd_engine.operators (float64), packed and cached
# --------------------------------------------------------------------------------------------
class _OperatorSet:
    """Packed operators of one sandwich launch (CPU tensors; moved to devices on demand)."""

    def __init__(self, mats: list[tuple[torch.Tensor, torch.Tensor]], block_m: int, block_n: int):
        a_parts, bt_parts, win = [], [], []
        self.static = []  # per scale: h, w, a_off, bt_off, rwin_off, cwin_off
        a_off = bt_off = 0
        for a, b in mats:  # a: (H, h), b: (W, w)
            rwin_off = len(win)
            win += band_windows(a, block_m)
            cwin_off = len(win)
            win += band_windows(b, block_n)
            self.static.append((a.shape[1], b.shape[1], a_off, bt_off, rwin_off, cwin_off))
            a_parts.append(a.reshape(-1))
            bt_parts.append(b.t().contiguous().reshape(-1))
            a_off += a.numel()
            bt_off += b.numel()
        if max(a_off, bt_off, len(win)) >= 2**31:
            raise ValueError("anomaly-map operators too large for int32 offsets")
        self.a = torch.cat(a_parts).to(torch.float32)
        self.bt = torch.cat(bt_parts).to(torch.float32)
        self.win = torch.tensor(win, dtype=torch.int32)
        self._device_cache: dict = {}

    def meta(self, splits: Sequence[int], x_offs: Sequence[int]) -> torch.Tensor:
        rows = [[h, w, k, xo, ao, bo, ro, co]
                for (h, w, ao, bo, ro, co), k, xo in zip(self.static, splits, x_offs)]
        return torch.tensor(rows, dtype=torch.int32)

    def on(self, device: torch.device, splits: tuple[int, ...], x_offs: tuple[int, ...]):
        """(a, bt, win, meta) on ``device``; cached so steady-state calls copy nothing."""
        key = (str(device), splits, x_offs)
        hit = self._device_cache.get(key)
        if hit is None:
            if len(self._device_cache) > 32:
                self._device_cache.clear()
            hit = tuple(t.to(device) for t in (self.a, self.bt, self.win, self.meta(splits, x_offs)))
            self._device_cache[key] = hit
        return hit


@functools.lru_cache(maxsize=32)
def _operators(out_hw: tuple[int, int], scale_hws: tuple[tuple[int, int], ...], sigma: float,
               mode: str, block_m: int, block_n: int) -> tuple[_OperatorSet, _OperatorSet | None]:
    """(first launch operators, blur operators for mode "mul" or None)."""
    H, W = out_hw
    ups = [(bilinear_matrix(H, h), bilinear_matrix(W, w)) for h, w in scale_hws]
    if not sigma:
        return _OperatorSet(ups, block_m, block_n), None
    gh, gw = blur_matrix(H, sigma), blur_matrix(W, sigma)
    if mode == "add":
        return _OperatorSet([(gh @ u, gw @ v) for u, v in ups], block_m, block_n), None
    return _OperatorSet(ups, block_m, block_n), _OperatorSet([(gh, gw)], block_m, block_n)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------
def _check_inputs(teacher_feats, student_feats, image_size, mode, sigma) -> tuple[int, int]:
    if not isinstance(teacher_feats, (list, tuple)) or not isinstance(student_feats, (list, tuple)):
        raise TypeError("teacher_feats and student_feats must be lists of tensors, got "
                        f"{type(teacher_feats).__name__} and {type(student_feats).__name__}")
    if len(teacher_feats) == 0 or len(teacher_feats) != len(student_feats):
        raise ValueError("need the same non-zero number of teacher and student scales, got "
                         f"{len(teacher_feats)} and {len(student_feats)}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if sigma is not None and not (sigma == 0 or sigma > 0):
        raise ValueError(f"sigma must be > 0 (or 0/None for no blur), got {sigma}")
    if isinstance(image_size, int):
        H, W = image_size, image_size
    else:
        H, W = (int(v) for v in image_size)
    if H <= 0 or W <= 0:
        raise ValueError(f"image_size must be positive, got {(H, W)}")
    first = teacher_feats[0]
    for s, (t, st) in enumerate(zip(teacher_feats, student_feats)):
        if not isinstance(t, torch.Tensor) or not isinstance(st, torch.Tensor):
            raise TypeError(f"scale {s}: features must be torch tensors")
        if t.dim() != 4 or t.shape != st.shape:
            raise ValueError(f"scale {s}: teacher and student features must both be (B,C,h,w) and equal, "
                             f"got {tuple(t.shape)} and {tuple(st.shape)}")
        if t.shape[0] == 0:
            raise ValueError(f"scale {s}: empty batch")
        if t.shape[0] != first.shape[0]:
            raise ValueError(f"scale {s}: batch size {t.shape[0]} differs from {first.shape[0]}")
        if min(t.shape[1:]) == 0:
            raise ValueError(f"scale {s}: zero-sized features {tuple(t.shape)}")
        if t.dtype not in SUPPORTED_DTYPES or st.dtype != t.dtype:
            raise TypeError(f"scale {s}: features must both be one of {SUPPORTED_DTYPES} (float64: use the "
                            f"reference cdd_engine.anomaly_map), got {t.dtype} and {st.dtype}")
        if t.device != first.device or st.device != first.device:
            raise ValueError(f"scale {s}: all features must be on one device, got {t.device} and "
                             f"{st.device} (scale 0 on {first.device})")
    check_device(first, "features")
    return H, W


def _big_blocks() -> bool:
    return INTERPRETER_BIG_BLOCKS and interpreting()


def _pass1_config(t: torch.Tensor, st: torch.Tensor) -> tuple[int, int, int, int]:
    """(BLOCK_C, BLOCK_P, num_warps, num_stages) for one scale, from the memory layout."""
    if _big_blocks():
        return 64, min(1024, max(16, next_pow2(t.shape[2] * t.shape[3]))), 4, 1
    if t.stride(1) == 1 and st.stride(1) == 1 and t.shape[1] > 1:
        # channels_last: channels are contiguous, reduce along the fast axis
        tile, max_c, warps, stages = PASS1_CL
        block_c = min(max_c, max(16, next_pow2(t.shape[1])))
        block_p = max(16, tile // block_c)
    else:  # NCHW: pixels contiguous; BLOCK_C channels x BLOCK_P pixels per iteration
        block_c, block_p, warps, stages = PASS1_NCHW
    # pipelined loads stage both tensors' tiles in shared memory: keep that under 96 KB
    per_stage = 2 * block_c * block_p * t.element_size()
    return block_c, block_p, warps, max(1, min(stages, (96 * 1024) // per_stage))


def _split_plan(t: torch.Tensor, st: torch.Tensor, forced: int | None) -> tuple[int, int]:
    """(splits, channels per split) for one scale's pass 1.

    Enough programs to fill the GPU (PROGRAMS_PER_SM per SM) but at least 2 channel chunks per
    split, so a split's loop amortises its final reduction; ``forced`` overrides (tests).
    """
    B, C, h, w = t.shape
    block_c, block_p = _pass1_config(t, st)[:2]
    n_chunks = cdiv(C, block_c)
    if forced is None:
        want = PROGRAMS_PER_SM * sm_count(t.device)
        splits = max(1, min(cdiv(want, cdiv(h * w, block_p) * B), n_chunks // 2))
    else:
        splits = max(1, min(int(forced), n_chunks))
    c_per_split = cdiv(n_chunks, splits) * block_c
    return cdiv(C, c_per_split), c_per_split


def _launch_pass1(t: torch.Tensor, st: torch.Tensor, ws: torch.Tensor, splits: int, c_per_split: int) -> None:
    """Pass 1 for one scale into ``ws`` (flat fp32, (splits, 3, B, h*w))."""
    B, C, h, w = t.shape
    block_c, block_p, warps, stages = _pass1_config(t, st)
    # Pixel addressing is flat when y-stride == w * x-stride for both tensors (NCHW, NHWC).
    flat = all(x.stride(2) == w * x.stride(3) or h == 1 for x in (t, st))
    cap = max(1, 16 // t.element_size())  # elements per 16-byte vector
    sw_align = min(pow2_factor(t.stride(3), cap), pow2_factor(st.stride(3), cap))
    c_align = pow2_factor(C, cap)
    _cosine_partials_kernel[(cdiv(h * w, block_p), B, splits)](
        t, st, ws, C // c_align, h * w, w,
        t.stride(0), t.stride(1), t.stride(2), t.stride(3) // sw_align,
        st.stride(0), st.stride(1), st.stride(2), st.stride(3) // sw_align,
        B, c_per_split,
        C_ALIGN=c_align, SW_ALIGN=sw_align, FLAT=flat, BLOCK_C=block_c, BLOCK_P=block_p,
        STAGES=stages, num_warps=warps)


def _launch_sandwich(x, ops: _OperatorSet, splits, x_offs, out, B, H, W, from_partials, mul):
    a, bt, win, meta = ops.on(out.device, tuple(splits), tuple(x_offs))
    grid = (cdiv(W, MAP_BLOCK_N), cdiv(H, MAP_BLOCK_M), B)
    tile_max = torch.empty(B * grid[0] * grid[1], dtype=torch.float32, device=out.device)
    block_k = 32 if _big_blocks() else MAP_BLOCK_K
    _sandwich_kernel[grid](x, a, bt, meta, win, out, tile_max, len(splits), B, H, W,
                           FROM_PARTIALS=from_partials, MUL=mul, BLOCK_M=MAP_BLOCK_M,
                           BLOCK_N=MAP_BLOCK_N, BLOCK_K=block_k, num_warps=MAP_NUM_WARPS)
    return tile_max, grid[0] * grid[1]


def fused_anomaly_map(teacher_feats: Sequence[torch.Tensor], student_feats: Sequence[torch.Tensor],
                      image_size: int | tuple[int, int], mode: str = "add",
                      sigma: float | None = DEFAULT_SIGMA, *, _splits: int | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Anomaly maps and image scores with the fused Triton kernels.

    Args:
        teacher_feats, student_feats: lists of (B, C_s, h_s, w_s) fp16/bf16/fp32 tensors on one
            CUDA device (any device under ``TRITON_INTERPRET=1``), any strides (NCHW and
            channels_last are the fast layouts). Teacher and student of a scale share a dtype.
        image_size: model resolution H (square) or (H, W) of the maps.
        mode: "add" (sum of the per-scale maps) or "mul" (product).
        sigma: Gaussian blur sigma; 0 or None disables the blur (as in the reference).
        _splits: testing hook, forces the number of channel splits in pass 1.

    Returns:
        maps (B, H, W) fp32 and scores (B,) fp32, equal to
        ``cdd_engine.anomaly_map.anomaly_map`` up to fp32 rounding.
    """
    H, W = _check_inputs(teacher_feats, student_feats, image_size, mode, sigma)
    B = teacher_feats[0].shape[0]
    device = teacher_feats[0].device
    scale_hws = tuple((int(t.shape[2]), int(t.shape[3])) for t in teacher_feats)
    sig = float(sigma) if sigma else 0.0
    first_ops, blur_ops = _operators((H, W), scale_hws, sig, mode, MAP_BLOCK_M, MAP_BLOCK_N)

    # Pass 1 into one packed workspace: per scale (splits, 3, B, h*w) fp32.
    plans = [_split_plan(t, st, _splits) for t, st in zip(teacher_feats, student_feats)]
    splits = [k for k, _ in plans]
    x_offs, total = [], 0
    for (h, w), k in zip(scale_hws, splits):
        x_offs.append(total)
        total += k * 3 * B * h * w
    if total >= 2**31:
        raise ValueError(f"batch too large for one call ({total} partial sums); split the batch")
    ws = torch.empty(total, dtype=torch.float32, device=device)
    for (t, st), off, (k, cps), (h, w) in zip(zip(teacher_feats, student_feats), x_offs, plans, scale_hws):
        _launch_pass1(t, st, ws[off:off + k * 3 * B * h * w], k, cps)

    maps = torch.empty(B, H, W, dtype=torch.float32, device=device)
    if blur_ops is None:
        tile_max, n_tiles = _launch_sandwich(ws, first_ops, splits, x_offs, maps, B, H, W, True, mode == "mul")
    else:  # mode "mul" with blur: product map first (the one full-resolution intermediate)
        prod = torch.empty(B, H, W, dtype=torch.float32, device=device)
        _launch_sandwich(ws, first_ops, splits, x_offs, prod, B, H, W, True, True)
        tile_max, n_tiles = _launch_sandwich(prod, blur_ops, [1], [0], maps, B, H, W, False, False)
    scores = torch.empty(B, dtype=torch.float32, device=device)
    _row_max_kernel[(B,)](tile_max, scores, n_tiles, BLOCK=min(1024, max(16, next_pow2(n_tiles))))
    return maps, scores
