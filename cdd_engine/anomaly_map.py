"""Reference anomaly map (docs/anomaly_map.md) in plain PyTorch.

This module is the specification every fast path (Triton, C++, OpenVINO/TensorRT
outputs) is tested against. It favours clarity over speed and runs in any floating
dtype, float64 included.

For scales s = 1..S with teacher features T_s and student features S_s (B, C_s, h_s, w_s):

1. d_s = 1 - <T_s, S_s> / (max(|T_s|, eps) * max(|S_s|, eps)) over channels, eps = 1e-8;
2. bilinear upsampling of d_s to (H, W) with ``align_corners=True``;
3. sum over scales (``mode="add"``) or product (``mode="mul"``);
4. Gaussian blur, sigma 4, radius ``int(truncate * sigma + 0.5)`` (truncate 4 -> 33 taps),
   normalised weights, boundary mode of ``scipy.ndimage.gaussian_filter(mode="reflect")``
   (the edge pixel is repeated: ... c b a | a b c ...);
5. image score = maximum of the blurred map.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

# the blur and boundary rules are defined once, in cdd_engine.operators (re-exported here)
from .operators import DEFAULT_SIGMA, TRUNCATE, gaussian_taps, reflect_band, reflect_index

EPS = 1e-8
MODES = ("add", "mul")
__all__ = ["EPS", "MODES", "DEFAULT_SIGMA", "TRUNCATE", "anomaly_map", "cosine_distance", "gaussian_blur",
           "gaussian_taps", "reflect_index"]


def cosine_distance(teacher: torch.Tensor, student: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per-pixel cosine distance of two (B, C, h, w) feature maps -> (B, h, w)."""
    dot = (teacher * student).sum(dim=1)
    nt = teacher.norm(dim=1).clamp_min(eps)
    ns = student.norm(dim=1).clamp_min(eps)
    return 1.0 - dot / (nt * ns)


def gaussian_blur(maps: torch.Tensor, sigma: float = DEFAULT_SIGMA, truncate: float = TRUNCATE) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) maps with scipy's reflect boundary, any map size."""
    taps = gaussian_taps(sigma, truncate, dtype=maps.dtype).to(maps.device)
    radius = (taps.numel() - 1) // 2
    out = maps
    for dim in (1, 2):  # rows then columns; the filter is separable
        n = out.shape[dim]
        idx = reflect_band(n, radius).to(maps.device)  # (n, taps): source of tap t of output i
        gathered = out.index_select(dim, idx.reshape(-1))
        shape = list(out.shape)
        shape[dim:dim + 1] = [n, taps.numel()]
        out = (gathered.reshape(shape) * taps.reshape([-1] + [1] * (len(shape) - dim - 2))).sum(dim=dim + 1)
    return out


def _check_features(teacher_feats: Sequence[torch.Tensor], student_feats: Sequence[torch.Tensor]) -> None:
    if len(teacher_feats) == 0 or len(teacher_feats) != len(student_feats):
        raise ValueError(f"need the same non-zero number of teacher and student scales, "
                         f"got {len(teacher_feats)} and {len(student_feats)}")
    batch = teacher_feats[0].shape[0]
    for s, (t, st) in enumerate(zip(teacher_feats, student_feats)):
        if t.dim() != 4 or t.shape != st.shape:
            raise ValueError(f"scale {s}: teacher and student features must both be (B,C,h,w) and equal, "
                             f"got {tuple(t.shape)} and {tuple(st.shape)}")
        if t.shape[0] != batch or batch == 0:
            raise ValueError(f"scale {s}: batch size {t.shape[0]} differs from {batch} or is empty")
        if not (t.is_floating_point() and st.is_floating_point()):
            raise TypeError(f"scale {s}: features must be floating point, got {t.dtype} and {st.dtype}")


def anomaly_map(teacher_feats: Sequence[torch.Tensor], student_feats: Sequence[torch.Tensor],
                image_size: int | tuple[int, int], mode: str = "add", sigma: float = DEFAULT_SIGMA,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Blurred anomaly maps and image scores.

    Args:
        teacher_feats, student_feats: lists of (B, C_s, h_s, w_s) tensors, one per scale.
        image_size: model resolution H (square) or (H, W) of the output maps.
        mode: "add" (sum of the per-scale maps) or "mul" (product).
        sigma: Gaussian blur sigma; 0 or None disables the blur.

    Returns:
        maps (B, H, W) and scores (B,), in the dtype of the features (upcast fp16/bf16 to fp32).
    """
    _check_features(teacher_feats, student_feats)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be positive, got {(h, w)}")
    dtype = teacher_feats[0].dtype
    if dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    total = None
    for t, st in zip(teacher_feats, student_feats):
        d = cosine_distance(t.to(dtype), st.to(dtype))
        up = F.interpolate(d[:, None], size=(h, w), mode="bilinear", align_corners=True)[:, 0]
        if total is None:
            total = up
        elif mode == "add":
            total = total + up
        else:
            total = total * up
    maps = gaussian_blur(total, sigma) if sigma else total
    return maps, maps.flatten(1).amax(dim=1)
