"""Checks of one inference request's FRAMES tensor, shared by the Triton model (model.py) and
its tests. Pure Python: no Triton import, so it runs anywhere.

A request is refused (an error response for that request alone; the model keeps serving) when
its frames are not uint8, not (N, H, W, C), empty, of the wrong channel count, or larger than
the repository's ``max_frame_side`` / the engine's shared MAX_FRAME_PIXELS limit.
"""
from __future__ import annotations

from typing import Sequence

from ..limits import MAX_FRAME_PIXELS

INPUT = "FRAMES"
OUTPUTS = ("SCORE", "IS_ANOMALOUS", "THRESHOLD", "MAP")
CHANNELS = {"RGB": 3, "BGR": 3, "MONO": 1}
DEFAULT_MAX_FRAME_SIDE = 4096


def frame_problem(shape: Sequence[int], dtype: str, channels: int, max_side: int) -> str | None:
    """None when a request's FRAMES (shape incl. the batch dimension, dtype name) is servable,
    else the message of its error response."""
    if dtype != "uint8":
        return f"{INPUT} must be UINT8 frames, got {dtype}"
    if len(shape) != 4:
        return f"{INPUT} must be (batch, height, width, channels), got shape {list(shape)}"
    n, h, w, c = (int(v) for v in shape)
    if n == 0 or h == 0 or w == 0:
        return f"{INPUT} holds no pixels: shape {list(shape)} (zero-sized frames)"
    if c != channels:
        return f"{INPUT} must have {channels} channel(s), got {c} (shape {list(shape)})"
    if h > max_side or w > max_side:
        return (f"frame {h}x{w} is larger than this model's max_frame_side = {max_side} "
                f"(a parameter of config.pbtxt)")
    if h * w > MAX_FRAME_PIXELS:
        return f"frame {h}x{w} has more than MAX_FRAME_PIXELS = {MAX_FRAME_PIXELS} pixels"
    return None
