"""Shared limits on numbers that come from files or callers (docs/engine_format.md).

The C++ reader has the same numbers (csrc/include/cdd/limits.hpp); a value is checked against
them before anything is allocated or computed from it, and a refusal names the rule.
"""
from __future__ import annotations

import math
from typing import Any

MAX_BLUR_RADIUS = 1024            # Gaussian blur radius floor(truncate * sigma + 0.5)
MAX_FRAME_PIXELS = 2 ** 28        # frame width * height
MAX_MAP_PIXELS = 4096 * 4096      # anomaly-map width * height
IMAGE_SIDE = (32, 4096)           # model input H and W (the student's bottleneck is 1/32 of it)
MAX_BATCH = (1, 4096)
SIGMA = (0.0, 64.0)               # (exclusive, inclusive]
TRUNCATE = (0.0, 16.0)            # (exclusive, inclusive]
EPS = (1e-12, 1e-3)
MEAN = (-1000.0, 1000.0)
STD = (1e-3, 1000.0)


def is_number(v: Any) -> bool:
    """A real finite number (bool is not one)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def blur_radius(sigma: float, truncate: float) -> int:
    """The radius every implementation uses (scipy's rule)."""
    return int(math.floor(truncate * sigma + 0.5))


def anomaly_map_problems(sigma: Any, truncate: Any, eps: Any) -> list[str]:
    """What is wrong with blur/eps settings, as rule sentences (empty when all are fine)."""
    out = []
    if not is_number(sigma) or not SIGMA[0] < sigma <= SIGMA[1]:
        out.append(f"sigma must be a finite number in ({SIGMA[0]:g}, {SIGMA[1]:g}], got {sigma!r}")
    if not is_number(truncate) or not TRUNCATE[0] < truncate <= TRUNCATE[1]:
        out.append(f"truncate must be a finite number in ({TRUNCATE[0]:g}, {TRUNCATE[1]:g}], got {truncate!r}")
    if not out:
        r = blur_radius(sigma, truncate)
        if not 1 <= r <= MAX_BLUR_RADIUS:
            out.append(f"blur radius floor(truncate * sigma + 0.5) = {r} must be in [1, {MAX_BLUR_RADIUS}] "
                       f"(MAX_BLUR_RADIUS; sigma {sigma!r}, truncate {truncate!r})")
    if not is_number(eps) or not EPS[0] <= eps <= EPS[1]:
        out.append(f"eps must be a finite number in [{EPS[0]:g}, {EPS[1]:g}], got {eps!r}")
    return out


def image_size_problem(size: Any) -> str | None:
    """None, or why ``size`` is not a valid [H, W] model input size."""
    lo, hi = IMAGE_SIDE
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(is_int(v) and lo <= v <= hi for v in size)):
        return f"image_size must be [H, W] with integers in [{lo}, {hi}], got {size!r}"
    return None


def normalization_problems(mean: Any, std: Any) -> list[str]:
    out = []
    for name, v, (lo, hi) in (("mean", mean, MEAN), ("std", std, STD)):
        if (not isinstance(v, (list, tuple)) or len(v) != 3
                or not all(is_number(x) and lo <= x <= hi for x in v)):
            out.append(f"normalization {name} must be 3 finite numbers in [{lo:g}, {hi:g}], got {v!r}")
    return out
