"""Pre-processing into a reused input buffer, equal to :func:`cdd_engine.preprocess.resize_normalize`.

Same maths as the reference (uint8 -> float, BGR swapped / Mono replicated, bilinear
antialiased resize, ``(x/255 - mean)/std``), arranged to cost little:

- frames already at the model size skip the resize: one strided uint8->float copy per
  channel straight into the (B,3,H,W) buffer, then one fused multiply-add per channel
  (``x * 1/(255 std) - mean/std``, folded constants);
- single-channel frames are resized once and replicated, not resized three times;
- a frame larger than ``CHUNK_ELEMENTS`` is resized in two separable passes over row
  chunks (horizontal pass on a chunk of rows, then the vertical pass on the narrow
  result), so a 100-megapixel frame never exists as a float copy. The antialiased filter is
  separable and a pass that keeps a dimension's size is the identity along it, so this is the
  same filter up to float rounding (tests/test_engine.py checks it against the reference).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .frames import Frames

# 16 Mi float32 elements (64 MB) per temporary: above that a frame is resized in row chunks.
CHUNK_ELEMENTS = 1 << 24


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


class Preprocessor:
    """``fill(frames, start, stop, out)``: frames[start:stop] -> normalised ``out`` (n, 3, H, W) float32."""

    def __init__(self, image_size: Sequence[int], mean: Sequence[float], std: Sequence[float]) -> None:
        self.size = (int(image_size[0]), int(image_size[1]))
        std_t = torch.tensor([float(s) for s in std], dtype=torch.float64)
        mean_t = torch.tensor([float(m) for m in mean], dtype=torch.float64)
        # (x - 255 mean) / (255 std) = x * scale + bias, constants in float64 then rounded once
        self.scale = (1.0 / (255.0 * std_t)).tolist()
        self.bias = (-mean_t / std_t).tolist()

    def fill(self, frames: Frames, start: int, stop: int, out: torch.Tensor) -> torch.Tensor:
        """Write frames ``start..stop-1`` into ``out`` (stop-start, 3, H, W) float32; returns ``out``."""
        n = stop - start
        if out.shape != (n, 3, *self.size) or out.dtype != torch.float32:
            raise ValueError(f"output buffer must be ({n}, 3, {self.size[0]}, {self.size[1]}) float32, "
                             f"got {tuple(out.shape)} {out.dtype}")
        fmt = frames.pixel_format
        if frames.batch is not None:
            self._fill_group(frames.batch[start:stop], fmt, out)
            self._normalize(out, frames.batch, frames.float_range)
        else:
            for i in range(start, stop):
                o = out[i - start:i - start + 1]
                self._fill_group(frames.items[i].unsqueeze(0), fmt, o)
                self._normalize(o, frames.items[i], frames.float_range)
        return out

    def _normalize(self, out: torch.Tensor, src: torch.Tensor, float_range: tuple[float, float] | None) -> None:
        """out holds resized pixel values on the source's scale -> normalised in place.

        uint8 sources are on 0..255; float sources on ``float_range = (lo, hi)``, mapped to 0..255
        as ``(x - lo) * 255 / (hi - lo)``, folded into the same multiply-add (the resize is linear
        with weights summing to 1, so mapping before or after it is the same)."""
        if src.is_floating_point() and float_range is not None and float_range != (0.0, 255.0):
            lo, hi = float_range
            k = 255.0 / (hi - lo)
            for c in range(3):
                scale = self.scale[c] * k
                out[:, c].mul_(scale).add_(self.bias[c] - lo * scale)
            return
        for c in range(3):
            out[:, c].mul_(self.scale[c]).add_(self.bias[c])

    def _fill_group(self, t: torch.Tensor, fmt: str, out: torch.Tensor) -> None:
        """t (n, h, w, C) uint8/float on any device -> out (n, 3, H, W) float32 in 0..255, RGB order."""
        t = t.to(out.device, non_blocking=True)
        n, h, w, c = t.shape
        if (h, w) == self.size:
            src = t.permute(0, 3, 1, 2)  # one strided convert-copy: 2-3x faster than three per-channel copies
        elif h * w * c > CHUNK_ELEMENTS:
            for i in range(n):
                self._fill_large(t[i], fmt, out[i:i + 1])
            return
        else:
            src = _resize(t.permute(0, 3, 1, 2).to(torch.float32), self.size)
        _to_rgb(src, fmt, out)

    def _fill_large(self, frame: torch.Tensor, fmt: str, out: torch.Tensor) -> None:
        """One big (h, w, C) frame -> out (1, 3, H, W) by separable row-chunked passes (bounded memory)."""
        h, w, c = frame.shape
        H, W = self.size
        rows = max(1, CHUNK_ELEMENTS // (w * c))
        narrow = torch.empty(1, c, h, W, dtype=torch.float32, device=out.device)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            chunk = frame[r0:r1].permute(2, 0, 1).unsqueeze(0).to(torch.float32)
            narrow[:, :, r0:r1] = _resize(chunk, (r1 - r0, W))  # width only: identity along rows
        _to_rgb(_resize(narrow, (H, W)), fmt, out)  # height only: identity along columns


def _to_rgb(src: torch.Tensor, fmt: str, out: torch.Tensor) -> None:
    """src (n, C, H, W) in the frame's channel order -> out (n, 3, H, W) float32 RGB."""
    if fmt == "MONO":
        out[:, 0].copy_(src[:, 0])
        out[:, 1].copy_(out[:, 0])
        out[:, 2].copy_(out[:, 0])
        return
    out.copy_(src)
    if fmt == "BGR":  # swap planes 0 and 2 (torch views cannot have the negative stride a flip needs)
        red = out[:, 2].clone()
        out[:, 2].copy_(out[:, 0])
        out[:, 0].copy_(red)
