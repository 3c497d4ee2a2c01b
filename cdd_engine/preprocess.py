"""Reference pre-processing: uint8 camera frames -> normalised NCHW float tensors.

One definition for training, evaluation and every engine backend, so a model never sees
pixels prepared differently at inference than in training. Fast paths (Triton, C++,
OpenVINO pre-processing) are tested against :func:`resize_normalize`.

Steps: uint8 -> float32, channel order to RGB (BGR swapped, Mono8 replicated), bilinear
resize with antialiasing (``F.interpolate(mode="bilinear", align_corners=False,
antialias=True)``, a triangle filter widened by the down-scale factor, so a 100-megapixel
frame is averaged rather than aliased), then ``(x / 255 - mean) / std`` per channel.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

PIXEL_FORMATS = ("RGB", "BGR", "MONO")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_rgb_nchw(frames: torch.Tensor, pixel_format: str = "RGB") -> torch.Tensor:
    """(N, H, W, C) uint8 frames -> (N, 3, H, W) float32 RGB in [0, 255]."""
    fmt = pixel_format.upper()
    if fmt not in PIXEL_FORMATS:
        raise ValueError(f"pixel_format must be one of {PIXEL_FORMATS}, got {pixel_format!r}")
    if frames.dtype != torch.uint8:
        raise TypeError(f"frames must be uint8, got {frames.dtype}")
    if frames.dim() == 3:  # (N, H, W) single-channel
        frames = frames[..., None]
    if frames.dim() != 4:
        raise ValueError(f"frames must be (N,H,W,C) or (N,H,W), got shape {tuple(frames.shape)}")
    n, h, w, c = frames.shape
    if n == 0:
        raise ValueError("empty batch: need at least one frame")
    if h == 0 or w == 0:
        raise ValueError(f"zero-sized frame: {h}x{w}")
    want = 1 if fmt == "MONO" else 3
    if c != want:
        raise ValueError(f"pixel_format {fmt} needs {want} channel(s), got {c}")
    x = frames.permute(0, 3, 1, 2).float()
    if fmt == "BGR":
        x = x.flip(1)
    elif fmt == "MONO":
        x = x.expand(-1, 3, -1, -1)
    return x


def resize_normalize(frames: torch.Tensor | np.ndarray, size: int | tuple[int, int],
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                     pixel_format: str = "RGB") -> torch.Tensor:
    """uint8 frames (N, H, W, C) -> normalised float32 (N, 3, h, w) at the model size ``size``."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    x = to_rgb_nchw(frames, pixel_format)
    if tuple(x.shape[-2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1) * 255.0
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1) * 255.0
    return (x - mean_t) / std_t
