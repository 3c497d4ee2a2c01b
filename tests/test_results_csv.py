"""benchmarks/results_csv.py: long-format benchmark rows written, appended and read back."""
from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import results_csv as rc  # noqa: E402


def _writer(path, bench="demo_bench"):
    return rc.ResultsWriter(bench, path, machine_desc="test CPU x2", commit_id="abc1234")


def test_rows_round_trip_and_append(tmp_path):
    path = tmp_path / "r.csv"
    rng = random.Random()
    values = [rng.uniform(-1e6, 1e6) for _ in range(3)]
    w = _writer(path)
    w.add("latency_p50_ms", values[0], batch=8, backend="openvino")
    w.add("images_per_s", values[1], threads=2, note="a, \"quoted\" remark")  # commas and quotes survive
    assert w.write() == path
    w2 = _writer(path)
    w2.add("speedup", values[2], "x")
    w2.write()
    rows = rc.read_rows(path)
    assert [r["value"] for r in rows] == values  # repr(float) round-trips exactly
    assert [r["unit"] for r in rows] == ["ms", "img/s", "x"]
    assert rows[0]["config"] == {"backend": "openvino", "batch": 8}
    assert rows[1]["config"]["note"] == "a, \"quoted\" remark"
    assert rows[0]["run_id"] == rows[1]["run_id"] != rows[2]["run_id"]
    assert {r["benchmark"] for r in rows} == {"demo_bench"} and rows[0]["commit"] == "abc1234"
    with open(path, newline="") as f:
        assert next(csv.reader(f)) == list(rc.COLUMNS)
        assert sum(1 for _ in f) == 3  # one header, then one line per row


def test_nested_results_take_units_from_their_names():
    got = rc.rows_from_dict({"images_per_s": {"native": 40.5, "eager": 20}, "postprocess_ms_per_image": {"c++": 1.5},
                             "native_vs_eager": 2.0, "score_max_rel_diff_vs_eager": 1e-6, "ok": True,
                             "note": "text", "all": [1, 2], "nan": float("nan")})
    assert got == [("images_per_s.native", 40.5, "img/s", {}), ("images_per_s.eager", 20.0, "img/s", {}),
                   ("postprocess_ms_per_image.c++", 1.5, "ms", {}), ("native_vs_eager", 2.0, "x", {}),
                   ("score_max_rel_diff_vs_eager", 1e-6, "1", {})]


def test_tables_become_rows_with_their_labels_as_config(tmp_path):
    """A list of row dicts (gpu_check's sections): strings/booleans label each row's numbers."""
    report = {"a": {"passed": True, "anomaly_map": [
        {"case": "odd b1", "mode": "add", "map_rel_err": 1.5e-7, "passed": True},
        {"case": "odd b1", "mode": "mul", "map_rel_err": 3.4e-7, "passed": True}]}, "timings_ms": [1.0, 2.0]}
    w = _writer(tmp_path / "g.csv", "gpu_check")
    assert w.add_dict(report, quick=True) == 2
    rows = rc.read_rows(w.write())
    assert [(r["metric"], r["value"], r["unit"]) for r in rows] == [("a.anomaly_map.map_rel_err", 1.5e-7, "1"),
                                                                    ("a.anomaly_map.map_rel_err", 3.4e-7, "1")]
    assert rows[1]["config"] == {"case": "odd b1", "mode": "mul", "passed": True, "quick": True}


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="plain name"):
        rc.ResultsWriter("a/b", tmp_path / "x.csv")
    w = _writer(tmp_path / "x.csv")
    for bad in ("3", None, True):
        with pytest.raises(TypeError, match="must be a number"):
            w.add("m", bad)
    other = tmp_path / "other.csv"
    other.write_text("phase,clients\nx,1\n")
    w = _writer(other)
    w.add("m", 1.0)
    with pytest.raises(ValueError, match="not a long-format results file"):
        w.write()
    with pytest.raises(ValueError, match="not a long-format results file"):
        rc.read_rows(other)


def test_bench_native_writes_its_family_file(tmp_path):
    """bench_native.py's result dict -> rows of native.csv with its settings as config."""
    bn = pytest.importorskip("bench_native")
    result = {"date": "2026-12-04", "threads": 2, "batch": 8, "iters": 5, "model": "m", "note": "",
              "machine": {"cpu": "x", "cores": 2}, "images_per_s": {"native": 41.0, "eager": 20.5},
              "native_vs_eager": 2.0, "targets": {"native >= 1.7x eager": True}}
    path = bn.write_csv(result, tmp_path / "native.csv")
    rows = rc.read_rows(path)
    assert [(r["metric"], r["value"], r["unit"]) for r in rows] == [
        ("images_per_s.native", 41.0, "img/s"), ("images_per_s.eager", 20.5, "img/s"), ("native_vs_eager", 2.0, "x")]
    assert rows[0]["config"] == {"threads": 2, "batch": 8, "iters": 5, "model": "m", "note": ""}
