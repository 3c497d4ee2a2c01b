"""Validate what a caller hands to ``Engine.score`` and view it as torch tensors, without copying.

Accepted (``pixel_format`` says how to read the channels: "RGB", "BGR" or "MONO"):

- a numpy array or torch tensor (N, H, W, C) of equal-size frames, C = 3 (RGB/BGR) or 1
  (MONO); for MONO also (N, H, W);
- a list/tuple of single frames (H, W, C) or, for MONO, (H, W), each of any size;
- dtype uint8 (camera frames), or float16/32/64 with their range stated by the caller:
  ``float_range=(lo, hi)`` says which float value is black (lo) and which is white (hi), e.g.
  ``(0, 1)`` or ``(0, 255)``; float frames without it are refused (0..1 and 0..255 frames look
  alike, and guessing would silently change scores). Floats are checked for NaN/inf and range.

Row strides are fine (a numpy view of a padded camera buffer is used as is); negative strides
(``frame[..., ::-1]``) cost one copy. Anything else is a TypeError/ValueError that says what
was expected and what was got.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

# the largest frame (width * height) either runtime takes, checked before anything is allocated
from ..limits import MAX_FRAME_PIXELS

PIXEL_FORMATS = ("RGB", "BGR", "MONO")
FLOAT_DTYPES = (torch.float16, torch.float32, torch.float64)
_NUMPY_OK = (np.uint8, np.float16, np.float32, np.float64)


def check_pixel_format(pixel_format: Any) -> str:
    if not isinstance(pixel_format, str) or pixel_format.upper() not in PIXEL_FORMATS:
        raise ValueError(f"pixel_format must be one of {PIXEL_FORMATS}, got {pixel_format!r}")
    return pixel_format.upper()


def _describe(x: Any) -> str:
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return f"{type(x).__module__.split('.')[0]} array of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


def as_tensor(x: Any, what: str) -> torch.Tensor:
    """numpy array or torch tensor -> torch tensor sharing its memory (dtype checked first)."""
    if isinstance(x, torch.Tensor):
        if x.dtype != torch.uint8 and x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{what}: frames must be uint8 (or float with float_range=...), got "
                            f"torch.{str(x.dtype)[6:]}")
        if x.device.type not in ("cpu", "cuda"):
            raise ValueError(f"{what}: frames must be CPU or CUDA tensors holding pixels, got a tensor on "
                             f"{x.device.type!r}")
        # frames are data, never part of a caller's autograd graph: a tensor with requires_grad
        # would otherwise give the engine's reused input buffer autograd history (same memory)
        return x.detach()
    if isinstance(x, np.ndarray):
        if x.dtype.type not in _NUMPY_OK:
            raise TypeError(f"{what}: frames must be uint8 (or float with float_range=...), got numpy {x.dtype}; convert "
                            f"e.g. 16-bit frames with (frame >> 8).astype(np.uint8) or frame / 257.0")
        if any(s < 0 for s in x.strides):
            x = np.ascontiguousarray(x)  # torch views need non-negative strides
        if not x.flags.writeable:
            with warnings.catch_warnings():  # we never write to the frames
                warnings.simplefilter("ignore", UserWarning)
                return torch.from_numpy(x)
        return torch.from_numpy(x)
    raise TypeError(f"{what}: expected a numpy array or torch tensor, got {_describe(x)}")


def check_float_range(float_range: Any) -> tuple[float, float] | None:
    """None, or ``(lo, hi)``: two finite numbers with lo < hi (the black and white float values)."""
    if float_range is None:
        return None
    ok = isinstance(float_range, (tuple, list)) and len(float_range) == 2 and all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and np.isfinite(v)
        for v in float_range)
    if not ok or not float(float_range[0]) < float(float_range[1]):
        raise ValueError(f"float_range must be (lo, hi), two finite numbers with lo < hi such as (0, 1) or "
                         f"(0, 255), got {float_range!r}")
    return float(float_range[0]), float(float_range[1])


def _check_float(t: torch.Tensor, what: str, float_range: tuple[float, float] | None) -> None:
    if not t.is_floating_point():
        return
    if float_range is None:
        raise TypeError(f"{what}: float frames ({t.dtype}) need their range stated: pass float_range=(0, 1) or "
                        f"float_range=(0, 255) (the values that mean black and white); or pass uint8 frames")
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{what}: {bad} NaN/inf pixel value(s); float frames must hold finite values")
    lo, hi = float(t.min()), float(t.max())
    if lo < float_range[0] or hi > float_range[1]:
        raise ValueError(f"{what}: float frames must hold values in float_range=[{float_range[0]:g}, "
                         f"{float_range[1]:g}], got values in [{lo:g}, {hi:g}]")


def _check_hwc(shape: Sequence[int], fmt: str, what: str) -> None:
    """``shape`` = (H, W, C) of one frame."""
    h, w, c = shape
    want = 1 if fmt == "MONO" else 3
    if c != want:
        raise ValueError(f"{what}: pixel_format {fmt} needs {want} channel(s), got {c} "
                         f"(frame shape {tuple(shape)})")
    if h == 0 or w == 0:
        raise ValueError(f"{what}: zero-sized frame {h}x{w}")
    if h * w > MAX_FRAME_PIXELS:
        raise ValueError(f"{what}: frame {h}x{w} has {h * w} pixels, more than MAX_FRAME_PIXELS = "
                         f"{MAX_FRAME_PIXELS} (2**28), the limit both runtimes share")


@dataclass
class Frames:
    """Validated frames. Exactly one of ``batch`` (N,H,W,C) and ``items`` (list of (H,W,C)) is set.

    Tensors share memory with the caller's arrays; C is 1 for MONO, else 3.
    """

    pixel_format: str
    batch: torch.Tensor | None = None
    items: list[torch.Tensor] | None = None
    float_range: tuple[float, float] | None = None  # what black and white are in float frames

    def __len__(self) -> int:
        return int(self.batch.shape[0]) if self.batch is not None else len(self.items)

    def size(self, i: int) -> tuple[int, int]:
        t = self.batch[0] if self.batch is not None else self.items[i]
        return int(t.shape[0]), int(t.shape[1])

    @property
    def device(self) -> torch.device:
        return self.batch.device if self.batch is not None else self.items[0].device


def to_frames(images: Any, pixel_format: str = "RGB", float_range: Any = None) -> Frames:
    """Validate ``images`` (see the module docstring) -> :class:`Frames` (no pixel copies)."""
    fmt = check_pixel_format(pixel_format)
    rng = check_float_range(float_range)
    if isinstance(images, (list, tuple)):
        return _from_list(images, fmt, rng)
    if not isinstance(images, (np.ndarray, torch.Tensor)):
        raise TypeError(f"images must be a numpy array, a torch tensor or a list of them, got {_describe(images)}")
    t = as_tensor(images, "images")
    if t.dim() == 3 and fmt == "MONO":
        t = t.unsqueeze(-1)  # (N, H, W) single-channel batch
    if t.dim() != 4:
        hint = ""
        if t.dim() == 3 and fmt != "MONO":
            hint = "; for one frame pass frame[None] or [frame]"
        elif t.dim() == 2:
            hint = "; for one single-channel frame pass [frame] with pixel_format='MONO'"
        raise ValueError(f"images must be a batch (N, H, W, C){' or (N, H, W)' if fmt == 'MONO' else ''}, "
                         f"got shape {tuple(t.shape)}{hint}")
    if t.shape[0] == 0:
        raise ValueError("empty batch: images holds 0 frames, need at least one")
    _check_hwc(tuple(t.shape[1:]), fmt, "images")
    _check_float(t, "images", rng)
    return Frames(fmt, batch=t, float_range=rng)


def _from_list(images: Sequence[Any], fmt: str, rng: tuple[float, float] | None) -> Frames:
    if len(images) == 0:
        raise ValueError("empty batch: the list of frames is empty, need at least one frame")
    items: list[torch.Tensor] = []
    first_c = None
    for i, img in enumerate(images):
        what = f"frame {i}"
        t = as_tensor(img, what)
        if t.dim() == 2:
            t = t.unsqueeze(-1)
        if t.dim() != 3:
            raise ValueError(f"{what}: each list element must be one frame (H, W, C) or (H, W), "
                             f"got shape {tuple(t.shape)}")
        c = int(t.shape[2])
        if first_c is None:
            first_c = c
        elif c != first_c:
            raise ValueError(f"{what} has {c} channel(s) but frame 0 has {first_c}: all frames of one call must "
                             f"share the pixel format {fmt}")
        _check_hwc(tuple(t.shape), fmt, what)
        _check_float(t, what, rng)
        items.append(t)
    if len({t.device for t in items}) > 1:
        raise ValueError(f"all frames must be on one device, got {sorted({str(t.device) for t in items})}")
    return Frames(fmt, items=items, float_range=rng)
