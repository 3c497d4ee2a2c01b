"""One verdict rule (threshold.is_anomalous) behind every "anomalous"/"ok" the package prints: the
engine's ScoreResult (tests/test_engine_options.py checks both runtimes), eval's per-image
records, the overlays' badge and the training-score report. A NaN score is never "ok"."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cdd_engine import checkpoint as ckpt
from cdd_engine.data.samples import ANOMALOUS, GOOD, Sample
from cdd_engine.evaluate import per_image_results
from cdd_engine.report import ranked_training_scores
from cdd_engine.threshold import is_anomalous
from cdd_engine.visualize import verdict


def _boundary_case(seed: int) -> tuple[float, np.ndarray, np.ndarray]:
    """A float64 threshold t whose float32 rounding is a score itself, plus random scores around it:
    returns (t, float32 scores, expected verdicts of the float32 rule)."""
    rng = np.random.default_rng(seed)
    t32 = np.float32(rng.uniform(0.2, 0.8))
    t = float(t32) - 1e-12  # float32(t) == t32, but float64 says t32 > t
    assert np.float32(t) == t32 and float(t32) > t
    s = np.concatenate([rng.uniform(0.0, 1.0, 37).astype(np.float32), [t32, np.nextafter(t32, 1, dtype=np.float32),
                                                                       np.nextafter(t32, 0, dtype=np.float32)],
                        np.array([np.nan, np.inf, -np.inf], np.float32)])
    rng.shuffle(s)
    expected = np.array([(not np.isfinite(x)) or x > t32 for x in s])
    return t, s, expected


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_is_anomalous_compares_in_float32_and_flags_non_finite(seed):
    t, s, expected = _boundary_case(seed)
    np.testing.assert_array_equal(is_anomalous(s, t), expected)
    assert [is_anomalous(float(x), t) for x in s] == expected.tolist()  # the scalar form agrees
    assert isinstance(is_anomalous(float(s[0]), t), bool)
    # the score equal to float32(t) is "ok" (float64 would call it anomalous): the C++ library's rule
    t32 = np.float32(t)
    assert not is_anomalous(float(t32), t) and float(t32) > t


def test_eval_records_and_overlay_badges_follow_the_rule(tmp_path):
    t, s, expected = _boundary_case(5)
    test = [Sample(path=str(tmp_path / f"{i}.png"), label=ANOMALOUS if i % 2 else GOOD, mask_path=None,
                   defect_type="scratch" if i % 2 else "good") for i in range(len(s))]
    records = per_image_results(test, s, t)
    assert [r["verdict"] == "anomalous" for r in records] == expected.tolist()
    assert [verdict(float(x), t) == "DEFECT" for x in s] == expected.tolist()
    nan_i = int(np.flatnonzero(np.isnan(s))[0])
    assert records[nan_i]["verdict"] == "anomalous" and verdict(float(s[nan_i]), t) == "DEFECT"
    assert all(r["verdict"] is None for r in per_image_results(test, s, None))


def test_training_report_marks_the_same_images(tmp_path):
    t, s, expected = _boundary_case(7)
    finite = np.isfinite(s)  # train_scores.json holds finite scores (training refuses NaN)
    s, expected = s[finite], expected[finite]
    ckpt.write_json(tmp_path / ckpt.SCORES_FILE, {
        "epoch": 1, "threshold": t, "rule": {"name": "median_mad", "k": 3.0},
        "scores": [{"path": f"good/{i:03d}.png", "score": float(x)} for i, x in enumerate(s)]})
    ranked, threshold = ranked_training_scores(tmp_path)
    assert threshold == t
    marked = {e["path"]: e["above_threshold"] for e in ranked}
    assert [marked[f"good/{i:03d}.png"] for i in range(len(s))] == expected.tolist()
    assert json.loads((tmp_path / ckpt.SCORES_FILE).read_text())["threshold"] == t
