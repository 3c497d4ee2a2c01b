"""A decision threshold from the training scores alone (no labels).

In FUAD the training folder holds an unknown minority of defective images, so the
threshold must be robust to them:

- ``median_mad`` (default): median + k * 1.4826 * MAD of the training scores. The median and
  the median absolute deviation ignore up to half of the scores being outliers; 1.4826 makes
  the MAD estimate a standard deviation for normal data, so k = 3 is "3 sigma".
- ``quantile``: the q-quantile of the training scores, q = 1 - expected contamination
  (e.g. 0.9 when about 10 % of the training images may be defective).

Which rule and k we ship is chosen by measurement (F1 on the demo test sets against the
best possible F1): see benchmarks/RESULTS.md.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

RULES = ("median_mad", "quantile")
MAD_TO_SIGMA = 1.4826  # 1 / Phi^-1(3/4): MAD of a normal distribution times this = its sigma
DEFAULT_RULE = "median_mad"
DEFAULT_K = 3.0


def is_anomalous(scores: float | Sequence[float] | np.ndarray, threshold: float) -> bool | np.ndarray:
    """The one verdict rule, for every place that says "anomalous"/"ok" (the engine's ScoreResult,
    ``eval``'s per-image records, overlays, the training-score report):

    - ``score > threshold``, compared in float32: scores are float32 everywhere, and the C++
      library compares ``float > float`` (csrc/src/engine.cpp), so both runtimes agree at the
      rounding boundary (a float64 comparison would flip a score equal to float32(threshold));
    - a non-finite score (NaN, +-inf: a diverged model, bad weights) is anomalous, never "ok".

    A scalar gives a bool, an array a bool array of its shape.
    """
    s = np.asarray(scores, dtype=np.float32)
    verdict = (s > np.float32(threshold)) | ~np.isfinite(s)
    return bool(verdict) if verdict.ndim == 0 else verdict


def _scores(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size == 0:
        raise ValueError("need at least one training score to derive a threshold, got none")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"training scores must be finite, got {int((~np.isfinite(s)).sum())} NaN/inf value(s)")
    return s


def median_mad_threshold(scores: Sequence[float] | np.ndarray, k: float = DEFAULT_K) -> float:
    """median(s) + k * 1.4826 * median(|s - median(s)|)."""
    if not (isinstance(k, (int, float)) and math.isfinite(k) and k >= 0):
        raise ValueError(f"k must be a finite number >= 0, got {k!r}")
    s = _scores(scores)
    med = float(np.median(s))
    mad = float(np.median(np.abs(s - med)))
    return med + float(k) * MAD_TO_SIGMA * mad


def quantile_threshold(scores: Sequence[float] | np.ndarray, q: float) -> float:
    """The q-quantile (0 <= q <= 1, linear interpolation) of the training scores."""
    if not (isinstance(q, (int, float)) and 0.0 <= q <= 1.0):
        raise ValueError(f"quantile q must be in [0, 1], got {q!r}")
    return float(np.quantile(_scores(scores), q))


def threshold_from_scores(scores: Sequence[float] | np.ndarray, rule: str = DEFAULT_RULE,
                          k: float = DEFAULT_K) -> float:
    """Dispatch: rule "median_mad" (k = number of robust sigmas) or "quantile" (k = q in [0, 1])."""
    if rule == "median_mad":
        return median_mad_threshold(scores, k)
    if rule == "quantile":
        return quantile_threshold(scores, k)
    raise ValueError(f"threshold rule must be one of {RULES}, got {rule!r}")
