"""Fast anomaly map on the CPU (torch), equal to the reference of docs/anomaly_map.md.

Bilinear upsampling (``align_corners=True``) and the reflect-boundary Gaussian blur are both
linear and separable, so for one scale the blurred upsampled map is

    G_H (U_s d_s V_s^T) G_W^T = A_s d_s B_s^T,   A_s = G_H U_s (H, h_s),  B_s = G_W V_s (W, w_s)

where U_s, V_s are the interpolation matrices and G_H, G_W the blur matrices (reflect
boundary folded in). For mode ``add`` the whole map is ``sum_s A_s d_s B_s^T``: two small
matmuls per scale instead of writing three full-size maps and blurring them with 33 taps.
For ``mul`` the product of upsampled maps is not linear in d, so it upsamples with U_s, V_s,
multiplies, then blurs with G_H, G_W (still matmuls). The matrices come from
:mod:`cdd_engine.operators` (float64), built once per (feature shapes, output size) and cached
in the compute dtype.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .. import limits
from ..anomaly_map import EPS, MODES
from ..operators import DEFAULT_SIGMA, TRUNCATE, bilinear_matrix, blur_matrix

__all__ = ["FastAnomalyMap", "bilinear_matrix", "blur_matrix", "cosine_distance_fast"]


# Channels per step of the cosine distance: temporaries of about 1 Mi elements (4 MB) stay in
# cache; whole-tensor products (B, C, h, w) were 2-4x slower on 2 cores (page faults, 3 passes).
_COS_CHUNK_ELEMENTS = 1 << 20


def cosine_distance_fast(teacher: torch.Tensor, student: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """(B, C, h, w) x2 -> (B, h, w) cosine distance, the reference's formula, in channel chunks."""
    b, c, h, w = teacher.shape
    step = max(1, _COS_CHUNK_ELEMENTS // max(1, b * h * w))
    dot = teacher.new_zeros(b, h, w)
    nt = teacher.new_zeros(b, h, w)
    ns = teacher.new_zeros(b, h, w)
    for c0 in range(0, c, step):
        t = teacher[:, c0:c0 + step]
        s = student[:, c0:c0 + step]
        dot += (t * s).sum(1)
        nt += (t * t).sum(1)
        ns += (s * s).sum(1)
    # max(|t|, eps) * max(|s|, eps), as the reference clamps each norm
    return 1.0 - dot / (nt.sqrt_().clamp_min_(eps) * ns.sqrt_().clamp_min_(eps))


class FastAnomalyMap:
    """Callable ``(teacher_feats, student_feats) -> (maps (B,H,W), scores (B,))`` on CPU or GPU.

    Matches :func:`cdd_engine.anomaly_map.anomaly_map` within fp32 rounding (tests/test_postprocess.py).
    Features may be float16/bfloat16 (upcast to float32) or float32/float64 (kept).
    """

    def __init__(self, image_size: int | tuple[int, int], mode: str = "add", sigma: float = DEFAULT_SIGMA,
                 truncate: float = TRUNCATE, eps: float = EPS) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if h <= 0 or w <= 0:
            raise ValueError(f"image_size must be positive, got {(h, w)}")
        # the matrices below are (H, H) and (W, W) float64 and the taps 2r + 1: checked first
        if h * w > limits.MAX_MAP_PIXELS:
            raise ValueError(f"map size {h}x{w} is above MAX_MAP_PIXELS = {limits.MAX_MAP_PIXELS}")
        if sigma and limits.blur_radius(float(sigma), float(truncate)) > limits.MAX_BLUR_RADIUS:
            raise ValueError(f"blur radius floor(truncate * sigma + 0.5) = "
                             f"{limits.blur_radius(float(sigma), float(truncate))} is above MAX_BLUR_RADIUS = "
                             f"{limits.MAX_BLUR_RADIUS} (sigma {sigma!r}, truncate {truncate!r})")
        self.size = (int(h), int(w))
        self.mode = mode
        self.sigma = float(sigma) if sigma else 0.0
        self.truncate = float(truncate)
        self.eps = float(eps)
        self._cache: dict[tuple, tuple] = {}

    def _blur(self, n: int) -> torch.Tensor:
        if not self.sigma:
            return torch.eye(n, dtype=torch.float64)
        return blur_matrix(n, self.sigma, self.truncate)

    def matrices(self, shapes: tuple[tuple[int, int], ...], dtype: torch.dtype, device: torch.device) -> tuple:
        """Cached matrices for feature sizes ``shapes`` ((h_s, w_s) per scale).

        ``add``: (A_cat (H, sum h_s), [B_s^T (w_s, W)]); ``mul``: ([U_s], [V_s^T], G_H, G_W^T).
        """
        key = (shapes, dtype, str(device))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        H, W = self.size
        gh, gw = self._blur(H), self._blur(W)
        us = [bilinear_matrix(H, h) for h, _ in shapes]
        vs = [bilinear_matrix(W, w) for _, w in shapes]
        if self.mode == "add":
            # map = A_cat @ cat_s(d_s @ B_s^T): one (H, sum h_s) x (sum h_s, W) matmul after the per-scale ones
            a_cat = torch.cat([gh @ u for u in us], dim=1)
            bts = [(gw @ v).T.contiguous() for v in vs]
            hit = (a_cat.to(device, dtype), [b.to(device, dtype) for b in bts])
        else:
            hit = ([u.to(device, dtype) for u in us], [v.T.contiguous().to(device, dtype) for v in vs],
                   gh.to(device, dtype), gw.T.contiguous().to(device, dtype))
        self._cache[key] = hit
        return hit

    def __call__(self, teacher_feats: Sequence[torch.Tensor], student_feats: Sequence[torch.Tensor],
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if len(teacher_feats) == 0 or len(teacher_feats) != len(student_feats):
            raise ValueError(f"need the same non-zero number of teacher and student scales, "
                             f"got {len(teacher_feats)} and {len(student_feats)}")
        for s, (t, st) in enumerate(zip(teacher_feats, student_feats)):
            if t.dim() != 4 or t.shape != st.shape or t.shape[0] == 0:
                raise ValueError(f"scale {s}: teacher and student features must be equal non-empty (B,C,h,w), "
                                 f"got {tuple(t.shape)} and {tuple(st.shape)}")
        dtype = teacher_feats[0].dtype
        if dtype in (torch.float16, torch.bfloat16):
            dtype = torch.float32
        dists = [cosine_distance_fast(t.to(dtype), s.to(dtype), self.eps) for t, s in zip(teacher_feats, student_feats)]
        return self.from_distances(dists)

    def from_distances(self, dists: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-scale cosine distances (B, h_s, w_s) -> (maps (B,H,W), scores (B,)): the map after the
        distance step (reduced-precision inputs are upcast to float32, as for features)."""
        if len(dists) == 0 or any(d.dim() != 3 or d.shape[0] != dists[0].shape[0] for d in dists):
            raise ValueError(f"need (B, h, w) distances with one B, got {[tuple(d.shape) for d in dists]}")
        dtype = dists[0].dtype
        if dtype in (torch.float16, torch.bfloat16):
            dtype = torch.float32
        dists = [d.to(dtype) for d in dists]
        device = dists[0].device
        shapes = tuple((int(d.shape[1]), int(d.shape[2])) for d in dists)
        if self.mode == "add":
            a_cat, bts = self.matrices(shapes, dtype, device)
            x = torch.cat([torch.matmul(d, bt) for d, bt in zip(dists, bts)], dim=1)  # (B, sum h_s, W)
            maps = torch.matmul(a_cat, x)  # (B, H, W)
        else:
            us, vts, gh, gwt = self.matrices(shapes, dtype, device)
            prod = None
            for d, u, vt in zip(dists, us, vts):
                up = torch.matmul(u, torch.matmul(d, vt))
                prod = up if prod is None else prod.mul_(up)
            maps = torch.matmul(gh, torch.matmul(prod, gwt))
        return maps, maps.flatten(1).amax(dim=1)
