"""Thresholds from training scores only."""
import numpy as np
import pytest

from cdd_engine.threshold import median_mad_threshold, quantile_threshold, threshold_from_scores


def test_median_mad_matches_hand_computation_and_ignores_outliers():
    rng = np.random.default_rng(0)
    normal = rng.normal(1.0, 0.1, 400)
    s = np.concatenate([normal, rng.normal(5.0, 0.5, 40)])  # 10 % contamination far above
    med = np.median(s)
    want = med + 3 * 1.4826 * np.median(np.abs(s - med))
    assert median_mad_threshold(s, 3.0) == pytest.approx(want, rel=1e-12)
    # robust: close to the clean 3-sigma point (1.3) despite the outliers; a mean+3std rule is not
    assert abs(median_mad_threshold(s, 3.0) - 1.3) < 0.06
    assert s.mean() + 3 * s.std() > 3.0


def test_quantile_and_dispatch():
    s = np.arange(101, dtype=float)
    assert quantile_threshold(s, 0.9) == pytest.approx(90.0)
    assert threshold_from_scores(s, "quantile", 0.9) == pytest.approx(90.0)
    assert threshold_from_scores(s, "median_mad", 2.0) == pytest.approx(median_mad_threshold(s, 2.0))


@pytest.mark.parametrize("bad,match", [([], "at least one"), ([1.0, np.nan], "finite")])
def test_bad_scores(bad, match):
    with pytest.raises(ValueError, match=match):
        median_mad_threshold(bad)


def test_bad_parameters():
    with pytest.raises(ValueError, match="rule must be one of"):
        threshold_from_scores([1.0, 2.0], "otsu")
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        quantile_threshold([1.0, 2.0], 1.5)
    with pytest.raises(ValueError, match="k must be"):
        median_mad_threshold([1.0, 2.0], -1.0)
