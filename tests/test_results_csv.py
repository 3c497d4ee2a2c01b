"""benchmarks/results_csv.py: long-format benchmark rows written, appended and read back."""
from __future__ import annotations

import csv
import json
import random
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_native as bn  # noqa: E402
import import_legacy_results as legacy  # noqa: E402
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
    result = {"date": "2026-12-04", "threads": 2, "batch": 8, "iters": 5, "model": "m", "note": "",
              "machine": {"cpu": "x", "cores": 2}, "images_per_s": {"native": 41.0, "eager": 20.5},
              "native_vs_eager": 2.0, "targets": {"native >= 1.7x eager": True}}
    path = bn.write_csv(result, tmp_path / "native.csv")
    rows = rc.read_rows(path)
    assert [(r["metric"], r["value"], r["unit"]) for r in rows] == [
        ("images_per_s.native", 41.0, "img/s"), ("images_per_s.eager", 20.5, "img/s"), ("native_vs_eager", 2.0, "x")]
    assert rows[0]["config"] == {"threads": 2, "batch": 8, "iters": 5, "model": "m", "note": ""}


# ---------------------------------------------------------------- integers label table rows; raw lists

def test_table_integers_label_rows_and_raw_lists_become_rows():
    """Two batches of one backbone stay apart (batch is config), and raw lists / load averages become rows."""
    rng = random.Random()
    t = [rng.uniform(0.1, 2.0) for _ in range(3)]
    runs = {"runs": [{"backbone": "wrn", "batch": 1, "results": {"eager": {"p50_ms": t[0]}}, "seconds": {"eager": t},
                      "loadavg": [[0.5, 0.6, 0.7], [1.5, 1.6, 1.7]]},
                     {"backbone": "wrn", "batch": 8, "results": {"eager": {"p50_ms": t[1]}}}]}
    plain = rc.rows_from_dict(runs)
    assert plain == [("runs.results.eager.p50_ms", t[0], "ms", {"backbone": "wrn", "batch": 1}),
                     ("runs.results.eager.p50_ms", t[1], "ms", {"backbone": "wrn", "batch": 8})]
    raw = rc.rows_from_dict(runs, raw_lists=True)
    secs = [r for r in raw if r[0] == "runs.seconds.eager"]
    assert [(r[1], r[3]["i"]) for r in secs] == [(t[i], i) for i in range(3)] and secs[0][2] == "s"
    loads = {r[0]: r[1] for r in raw if "loadavg" in r[0]}
    assert loads == {"runs.loadavg.start.1min": 0.5, "runs.loadavg.start.5min": 0.6, "runs.loadavg.start.15min": 0.7,
                     "runs.loadavg.end.1min": 1.5, "runs.loadavg.end.5min": 1.6, "runs.loadavg.end.15min": 1.7}


# ---------------------------------------------------------------- the query command

def _query_file(tmp_path):
    rng = random.Random()
    vals = {(b, be): rng.uniform(1, 100) for b in (1, 8, 32) for be in ("openvino", "torch")}
    w = _writer(tmp_path / "q.csv", "q")
    for (b, be), v in vals.items():
        w.add("images_per_s", v, batch=b, backend=be, opts={"gate": 0.9 if be == "torch" else 0.0})
        w.add("p50_ms", 1e3 * b / v, batch=b, backend=be, opts={"gate": 0.9 if be == "torch" else 0.0})
    w.write()
    return tmp_path / "q.csv", vals, w.run_id


def test_select_filters_by_config_metric_and_run(tmp_path):
    path, vals, run_id = _query_file(tmp_path)
    rows = rc.read_rows(path)
    got = rc.select(rows, ["batch=8", "backend=torch"], metric="images_per_s")
    assert [r["value"] for r in got] == [vals[(8, "torch")]]
    assert len(rc.select(rows, ["batch=8.0"])) == 4  # numbers compare as numbers
    assert len(rc.select(rows, ["backend=open*"], metric="*_per_s")) == 3  # globs
    assert len(rc.select(rows, ["opts.gate=0.9"])) == 6  # dotted keys reach nested config
    assert len(rc.select(rows, ["machine=test CPU x2", "commit=abc1234"], run=run_id)) == 12  # columns too
    assert rc.select(rows, ["batch=4"]) == [] and rc.select(rows, ["nokey=1"]) == [] and rc.select(rows, run="x*") == []
    with pytest.raises(ValueError, match="key=value"):
        rc.select(rows, ["batch"])


def test_show_prints_the_selected_rows(tmp_path, capsys):
    path, vals, run_id = _query_file(tmp_path)
    assert rc.main(["show", str(path), "--where", "backend=openvino", "--metric", "images_per_s"]) == 0
    out = capsys.readouterr().out
    assert "same in every row: backend=openvino" in out and "(3 rows)" in out
    for b in (1, 8, 32):
        assert f"{vals[(b, 'openvino')]:.6g}" in out
    assert f"{vals[(1, 'torch')]:.6g}" not in out
    assert rc.main(["show", str(path), "--runs"]) == 0 and f"{run_id}" in capsys.readouterr().out
    assert rc.main(["show", str(path), "--where", "batch"]) == 2  # a clear error, not a traceback
    assert rc.main(["--dir", str(tmp_path), "show", "nosuchfamily"]) == 2
    assert rc.main(["--dir", str(tmp_path), "families"]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[:3] == ["q", "12", "1"]


# ---------------------------------------------------------------- the committed family CSVs

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def _family_files():
    return sorted(RESULTS.glob("*.csv"))


def test_every_committed_family_csv_parses():
    files = _family_files()
    assert files, "no benchmarks/results/<family>.csv"
    for p in files:
        with open(p, newline="") as f:
            assert tuple(next(csv.reader(f))) == rc.COLUMNS, p.name
        rows = rc.read_rows(p)
        assert rows, p.name
        assert {r["benchmark"] for r in rows} == {p.stem}, p.name  # the family is the file name
        for r in rows:
            assert all(r[c] != "" for c in ("run_id", "date", "commit", "machine", "metric")), (p.name, r)
            assert isinstance(r["config"], dict) and r["value"] == r["value"], (p.name, r)  # no NaN written


CITATION = re.compile(r"`(?:benchmarks/)?results/(\w+)\.csv`,? runs? ((?:`[^`]+`(?: \([^)]*\))?(?:,\s*|\s+and\s+)?)+)")


def _citations():
    text = (RESULTS.parent / "RESULTS.md").read_text()
    return [(fam, rid) for fam, ids in CITATION.findall(text)
            for rid in re.findall(r"`([^`]+)`", re.sub(r"\([^)]*\)", "", ids))]  # "(run 1)" is no run_id


def test_every_results_md_citation_finds_its_rows():
    cites = _citations()
    assert len(cites) >= 37  # the converted runs and this session's INT8 throughput runs
    rows = {p.stem: rc.read_rows(p) for p in _family_files()}
    for fam, rid in cites:
        assert fam in rows, f"RESULTS.md cites results/{fam}.csv, which does not exist"
        assert rc.select(rows[fam], run=rid), f"RESULTS.md cites run {rid} of results/{fam}.csv: no rows"


# (family, run, metric, config, digits, figure as RESULTS.md prints it)
CITED_FIGURES = [
    ("gpu_check", "gpu_check_h200_2026-11-28", "meta.elapsed_s", {}, 0, 71),
    ("gpu_check", "gpu_check_h200_2026-11-28", "b.rows.speedup",
     {"backbone": "wide_resnet50_2", "dtype": "float32", "layout": "nchw", "batch": 32}, 1, 7.9),
    ("throughput", "engine_throughput_cpu_quiet_2026-11-29T0139", "runs.results.eager.p50_ms", {"batch": 1}, 0, 785),
    ("throughput", "engine_throughput_cpu_quiet_2026-11-29T0139", "runs.results.openvino.ratio_vs_eager",
     {"batch": 1}, 2, 1.88),
    ("throughput", "engine_throughput_cpu_quiet_2026-11-29T0142", "runs.results.openvino.median_paired_ratio",
     {"batch": 8}, 2, 1.67),
    ("throughput", "engine_throughput_cpu_repeats_2026-11-28", "ratio", {"batch": 1, "repeat": 1}, 2, 2.43),
    ("engine_runtime", "engine_runtime_2026-11-28T2159", "median_s.native", {"batch": 8}, 2, 3.22),
    ("engine_runtime", "engine_runtime_2026-11-28T2204", "speedups.native vs eager.paired_median", {"batch": 8}, 2,
     1.93),
    ("native", "native_2026-11-28T1920", "postprocess_speedup", {}, 1, 25.0),
    ("openvino_probe", "openvino_probe_2026-11-28/peak_direct_engine", "network_over_gemm_efficiency", {}, 2, 0.81),
    ("openvino_probe", "openvino_probe_2026-11-28/wino_layers", "summary.C256 32x32.speedup_paired", {}, 2, 1.68),
    ("serving", "serving_2026-12-04", "vs_in_process", {"clients": 16}, 2, 1.12),
    ("serving", "serving_2026-12-04", "server_stats.executions", {}, 0, 186),
    ("demo_accuracy", "demo_accuracy_cpu_2026-11-28", "image_auroc", {"category": "brick", "seed": 0}, 4, 0.9935),
    ("cdd_accuracy", "cdd_accuracy/probe_brick_team_rd_100ep_cpu", "image_auroc",
     {"category": "brick", "noise": 0.0, "seed": 1}, 3, 0.967),
]


@pytest.mark.parametrize("fam,run,metric,where,digits,want", CITED_FIGURES)
def test_figures_cited_in_results_md_are_in_the_rows(fam, run, metric, where, digits, want):
    path = RESULTS / f"{fam}.csv"
    if not path.is_file():
        pytest.fail(f"results/{fam}.csv missing")
    got = rc.select(rc.read_rows(path), [f"{k}={v}" for k, v in where.items()], metric=metric, run=run)
    assert len(got) == 1, [(r["metric"], r["config"]) for r in got]
    assert round(got[0]["value"], digits) == want


# ---------------------------------------------------------------- the converter of the first sessions' files


def _legacy_tree(root: Path, rng: random.Random) -> dict:
    """One small file of each kind the converter knows, with fresh random figures; returns them."""
    f = {k: rng.uniform(0.05, 50.0) for k in ("p50", "ips", "ratio", "paired", "s0", "s1", "med", "spd", "nat", "fps", "auroc", "px",
                          "gbps", "eff", "img", "wall")}
    (root / "openvino_probe_2026-11-28").mkdir(parents=True)
    (root / "cdd_accuracy").mkdir()
    mach = {"cpu": "AMD EPYC", "cpu_count": 2, "memory_gb": 23.5, "loadavg_start": [0.4, 0.5, 0.6], "torch": "2.13.0+cpu",
            "simd": ["avx2", "fma"]}
    (root / "engine_throughput_cpu_quiet_2026-11-29T0139.json").write_text(json.dumps({
        "machine": mach, "image_size": 256, "frame_size": 256, "runs": [
            {"backbone": "wide_resnet50_2", "batch": 1, "loadavg": [[0.5, 0.7, 1.0], [1.7, 1.1, 1.2]],
             "results": {"eager": {"p50_ms": f["p50"]}, "openvino": {"images_per_s": f["ips"], "ratio_vs_eager": f["ratio"],
                                                                     "median_paired_ratio": f["paired"]}},
             "seconds": {"openvino": [f["s0"], f["s1"]]}}],
        "engine_runtimes": {"wide_resnet50_2/openvino": "native C++"}}))
    (root / "engine_throughput_cpu_quiet_2026-11-29T0139.md").write_text(
        f"Command: `python benchmarks/throughput.py --out x_2026-11-29`\n| wide_resnet50_2 | 1 | {f['ips']:.2f} |\n")
    (root / "engine_throughput_cpu_repeats_2026-11-28.json").write_text(json.dumps([
        {"batch": 1, "load": [[2.7, 2.8, 3.7], [3.1, 2.9, 3.7]], "eager_ms": f["p50"], "ov_ms": f["med"],
         "ratio": f["ratio"], "paired": f["paired"]},
        {"batch": 1, "load": [[3.1, 2.9, 3.7], [3.4, 3.0, 3.7]], "eager_ms": f["s0"], "ov_ms": f["s1"],
         "ratio": f["spd"], "paired": f["nat"]}]))
    (root / "engine_runtime_2026-11-28T2002.json").write_text(json.dumps({
        "run": "2026-11-28T20:02", "note": "code 4a0346a", "machine": mach, "threads": 2, "rounds": 2, "model": "m",
        "runtime": "native C++", "batches": {"8": {"wall_s": {"native": [f["s0"], f["s1"]]}, "median_s": {"native": f["med"]},
                                                   "speedups": {"native vs eager": {"paired_median": f["spd"]}}}},
        "loadavg_end": [6.3, 6.7, 5.5]}))
    (root / "native_2026-11-28T1920.json").write_text(json.dumps({
        "date": "2026-11-28", "run": "2026-11-28T19:20", "note": "code c801816: quiet", "machine": {"cpu": "AMD EPYC", "cores": 2},
        "threads": 2, "batch": 8, "iters": 5, "model": "m", "native_vs_eager": f["nat"],
        "images_per_s": {"native C++ engine, num_streams=2 (cdd_engine._native)": f["ips"]}, "targets": {"x": True}}))
    (root / "gpu_check_h200_2026-11-28.json").write_text(json.dumps({
        "meta": {"gpu": "NVIDIA H200", "device": "cuda", "quick": False, "elapsed_s": f["wall"],
                 "note": "first run (commit 9b3184f code)"},
        "sections": {"b": {"copy_gbps": f["gbps"], "rows": [{"backbone": "wide_resnet50_2", "dtype": "float16",
                                                              "batch": 32, "speedup": f["spd"]}]}}, "passed": True}))
    (root / "serving_2026-12-04.json").write_text(json.dumps({
        "time_utc": "2026-12-04T14:25:36Z", "machine": "Linux-x86_64", "cpus": 2, "batch": 8, "protocol": "http",
        "instances": 1, "max_queue_delay_us": 2000, "engine": "Engine('/tmp/d/engine', backend=openvino, max_batch=32)",
        "server_stats": {"requests": 370, "executions": 186, "frames": 2960},
        "rows": [{"phase": "in-process Engine.score", "clients": 1, "requests": 10, "frames": 80, "seconds": 15.0,
                  "frames_per_s": f["fps"], "p50_ms": f["p50"], "p99_ms": f["med"], "latencies_ms": [f["s0"]],
                  "loadavg": [3.9155, 4.3, 6.4], "vs_in_process": 1.0}]}))
    (root / "serving_2026-12-04.csv").write_text(
        f"phase,clients,frames_per_s,load1\nin-process Engine.score,1,{f['fps']:.2f},3.92\n")
    (root / "demo_accuracy_cpu_2026-11-28.csv").write_text(
        f"category,seed,image_auroc,n_train,epochs,train_s\nbrick,0,{f['auroc']},200,30,{f['wall']}\n")
    (root / "openvino_probe_2026-11-28" / "options_run1.json").write_text(json.dumps({
        "summary": {"latency_1thread": {"median_ms": f["med"]}}, "properties": {"latency_1thread": {
            "INFERENCE_NUM_THREADS": "1", "ENABLE_CPU_PINNING": "False", "INFERENCE_PRECISION_HINT": "<Type: 'float32'>"}}}))
    (root / "openvino_probe_2026-11-28" / "peak_direct_engine.json").write_text(json.dumps({
        "times": {"network": [f["s0"], f["s1"]]}, "network_over_gemm_efficiency": f["eff"],
        "loadavg": [[4.5, 3.9, 4.6], [4.5, 4.0, 4.6]]}))
    (root / "cdd_accuracy" / "runs_gravel_narrow_demo_h200.csv").write_text(
        "category,noise,seed,method,epochs,image_auroc,aupro,f1_mad3,train_seconds,options\n"
        f"gravel,0.4,2,cdd,60,{f['img']},nan,{f['px']},{f['wall']},\"{{\"\"teacher_gate\"\": 0.9}}\"\n")
    return f


def _by(rows, metric, **cfg):
    got = [r for r in rows if r["metric"] == metric and all(r["config"].get(k) == v for k, v in cfg.items())]
    assert len(got) == 1, (metric, cfg, [(r["metric"], r["config"]) for r in rows if r["metric"] == metric])
    return got[0]


def test_converter_turns_each_kind_of_file_into_its_family_rows(tmp_path):
    src, out = tmp_path / "legacy", tmp_path / "out"
    f = _legacy_tree(src, random.Random())
    added = legacy.write(legacy.convert(src), out)
    assert set(added) == {"throughput", "engine_runtime", "native", "gpu_check", "serving", "demo_accuracy",
                          "openvino_probe", "cdd_accuracy"}
    fam = {p.stem: rc.read_rows(p) for p in out.glob("*.csv")}

    th = [r for r in fam["throughput"] if r["run_id"] == "engine_throughput_cpu_quiet_2026-11-29T0139"]
    r = _by(th, "runs.results.openvino.ratio_vs_eager")
    assert r["value"] == f["ratio"] and r["unit"] == "x"
    assert r["config"] == {"backbone": "wide_resnet50_2", "batch": 1, "image_size": 256, "torch": "2.13.0+cpu",
                           "simd": "avx2,fma"}
    assert _by(th, "engine_runtime", backend="openvino")["config"]["runtime"] == "native C++"  # text kept
    assert (r["date"], r["machine"], r["commit"]) == ("2026-11-29T01:39", "AMD EPYC x2", "unknown")
    assert _by(th, "runs.seconds.openvino", i=1)["value"] == f["s1"]
    assert _by(th, "runs.loadavg.end.1min")["value"] == 1.7
    rep = [r for r in fam["throughput"] if r["run_id"] == "engine_throughput_cpu_repeats_2026-11-28"]
    assert _by(rep, "ratio", batch=1, repeat=1)["value"] == f["spd"] and _by(rep, "paired", repeat=0)["unit"] == "x"

    er = fam["engine_runtime"]
    r = _by(er, "speedups.native vs eager.paired_median", batch=8)
    assert r["value"] == f["spd"] and r["commit"] == "4a0346a" and r["date"] == "2026-11-28T20:02"
    assert {"threads", "rounds", "model", "runtime", "note"} <= set(r["config"])
    assert _by(er, "wall_s.native", batch=8, i=0)["value"] == f["s0"]

    r = _by(fam["native"], "images_per_s.native C++ engine, num_streams=2 (cdd_engine._native)")
    assert r["value"] == f["ips"] and r["commit"] == "c801816" and r["config"]["iters"] == 5

    g = fam["gpu_check"]
    r = _by(g, "b.rows.speedup", batch=32)
    assert r["value"] == f["spd"] and r["config"]["dtype"] == "float16" and r["machine"] == "unknown; NVIDIA H200"
    assert r["commit"] == "9b3184f" and _by(g, "meta.elapsed_s")["value"] == f["wall"]

    s = fam["serving"]
    r = _by(s, "frames_per_s", phase_index=0)
    assert r["value"] == f["fps"] and r["config"]["engine"] == "Engine(backend=openvino, max_batch=32)"  # no path
    assert r["date"] == "2026-12-04T14:25:36Z" and _by(s, "server_stats.executions")["value"] == 186

    r = _by(fam["demo_accuracy"], "image_auroc")
    assert r["value"] == f["auroc"] and r["config"] == {"category": "brick", "seed": 0, "n_train": 200, "epochs": 30}

    r = _by(fam["openvino_probe"], "network_over_gemm_efficiency")
    assert r["value"] == f["eff"] and r["config"] == {"probe": "peak", "engine": "direct"}
    assert r["run_id"] == "openvino_probe_2026-11-28/peak_direct_engine"
    r = _by(fam["openvino_probe"], "properties.ENABLE_CPU_PINNING", variant="latency_1thread")
    assert (r["value"], r["unit"]) == (0.0, "bool") and r["config"]["inference_precision_hint"] == "<Type: 'float32'>"
    assert _by(fam["openvino_probe"], "properties.INFERENCE_NUM_THREADS")["value"] == 1.0

    c = fam["cdd_accuracy"]
    r = _by(c, "image_auroc")
    assert r["value"] == f["img"] and r["unit"] == "1" and r["machine"] == "unknown; NVIDIA H200"
    assert r["config"] == {"category": "gravel", "noise": 0.4, "seed": 2, "method": "cdd", "epochs": 60,
                           "options": {"teacher_gate": 0.9}, "device": "cuda"}
    assert _by(c, "f1_mad3")["unit"] == "1" and _by(c, "train_seconds")["unit"] == "s"
    assert not [r for r in c if r["metric"] == "aupro"]  # nan: not a measurement

    assert legacy.check(src, out) == []  # every number of every file, views included, is in its rows
    n = sum(len(v) for v in fam.values())
    assert legacy.write(legacy.convert(src), out) == {}  # a second run adds nothing
    assert sum(len(rc.read_rows(p)) for p in out.glob("*.csv")) == n


def test_converter_check_reports_a_number_left_behind(tmp_path):
    src, out = tmp_path / "legacy", tmp_path / "out"
    f = _legacy_tree(src, random.Random())
    legacy.write(legacy.convert(src), out)
    p = src / "native_2026-11-28T1920.json"
    d = json.loads(p.read_text())
    d["new_figure"] = f["px"] + 1000.0  # a number the CSV does not have
    p.write_text(json.dumps(d))
    md = src / "engine_throughput_cpu_quiet_2026-11-29T0139.md"
    md.write_text(md.read_text() + "| 12345.67 |\n")
    missing = legacy.check(src, out)
    assert len(missing) == 2 and "native_2026-11-28T1920" in missing[0] and "12345.67" in missing[1]


def test_converter_reads_what_a_file_records():
    assert legacy.stem_date("engine_runtime_2026-11-28T2002") == "2026-11-28T20:02"
    assert legacy.stem_date("cpu_grid_2026-11-28") == "2026-11-28" and legacy.stem_date("probe_x") == "unknown"
    assert legacy.commit_in("code 7a01eca: six outputs") == "7a01eca"
    assert legacy.commit_in("at commit 9b3184f code") == "9b3184f" and legacy.commit_in("no code here") == "unknown"
    assert legacy.machine_of({"cpu": "AMD EPYC", "cores": 2}) == "AMD EPYC x2" and legacy.machine_of(None) == "unknown"


# ---------------------------------------------------------------- the scripts moved onto results_csv

def _load_script(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_native_section_is_rebuilt_from_its_csv(tmp_path):
    """bench_native's RESULTS.md table reads native.csv back: the numbers and settings it wrote."""
    rng = random.Random()
    f = [rng.uniform(0.5, 40.0) for _ in range(5)]
    result = {"date": "2026-12-04", "run": "2026-12-04T10:00", "threads": 2, "batch": 8, "iters": 5, "model": "m",
              "note": "n", "machine": {"cpu": "x", "cores": 2},
              "images_per_s": {"native C++ engine, num_streams=2 (cdd_engine._native)": f[0]},
              "native_vs_eager": f[1], "native_vs_python_openvino": f[2], "postprocess_speedup": f[3],
              "postprocess_ms_per_image": {"fused C++": f[4]}}
    path = bn.write_csv(result, tmp_path / "native.csv")
    (run,) = bn.runs_from_csv(path)
    assert run["images_per_s"] == {"native C++ engine, num_streams=2 (cdd_engine._native)": f[0]}  # dots kept
    assert (run["native_vs_eager"], run["postprocess_ms_per_image"]["fused C++"]) == (f[1], f[4])
    assert (run["threads"], run["iters"], run["note"]) == (2, 5, "n") and run["run_id"]
    assert run["targets"] == bn.targets(result)


def test_bench_engine_runtime_writes_its_family_rows(tmp_path):
    ber = _load_script("bench_engine_runtime")
    rng = random.Random()
    wall = [rng.uniform(1, 9) for _ in range(3)]
    out = {"run": "2026-12-04T10:00", "note": "n", "machine": {"cpu": "x"}, "threads": 2, "rounds": 3, "model": "m",
           "runtime": "native", "batches": {"8": {"wall_s": {"native": wall}, "median_s": {"native": sorted(wall)[1]},
                                                  "speedups": {"native vs eager": {"paired_median": wall[0] / wall[1]}}}},
           "loadavg_end": [1.0, 2.0, 3.0]}
    rows = rc.read_rows(ber.write_csv(out, tmp_path / "engine_runtime.csv", machine_desc="m x2", commit_id="c"))
    assert _by(rows, "median_s.native", batch=8)["value"] == sorted(wall)[1]
    assert [_by(rows, "wall_s.native", i=i)["value"] for i in range(3)] == wall
    assert _by(rows, "speedups.native vs eager.paired_median")["config"] == {
        "batch": 8, "threads": 2, "rounds": 3, "model": "m", "runtime": "native", "note": "n"}
    assert _by(rows, "loadavg_end.15min")["value"] == 3.0


def test_engine_gpu_check_writes_its_family_rows(tmp_path):
    egc = _load_script("engine_gpu_check")
    rng = random.Random()
    ips, err, build = rng.uniform(100, 5000), rng.uniform(1e-8, 1e-5), rng.uniform(1, 100)
    data = {"meta": {"mode": "gpu", "device": "cuda", "backbone": "wide_resnet50_2", "image_size": 256, "perturb": 0.0,
                     "torch": "2.11"},
            "engines": [{"backend": "aoti", "precision": "fp16", "dir": "/tmp/w/aoti_fp16", "build_s": build}],
            "parity": [{"backend": "aoti", "precision": "fp16", "runtime": "python", "status": "passed",
                        "map_rel_err": err}],
            "throughput": [{"batch": 32, "pipeline": "aoti_fp16", "images_per_s": ips, "x_python_runtime": None}],
            "latency": [], "errors": [{"what": "x", "error": "text"}], "seconds": 12.5}
    rows = rc.read_rows(egc.write_csv(data, tmp_path / "engine_gpu_check.csv"))
    r = _by(rows, "throughput.images_per_s", batch=32)
    assert r["value"] == ips and r["config"]["pipeline"] == "aoti_fp16" and r["config"]["torch"] == "2.11"
    assert _by(rows, "parity.map_rel_err", runtime="python")["value"] == err
    r = _by(rows, "engines.build_s")
    assert r["value"] == build and "dir" not in r["config"]  # no machine paths in the repository's CSVs
    assert _by(rows, "seconds")["value"] == 12.5 and len(rows) == 4


def test_relabel_moves_a_table_batch_row_into_its_items_config(tmp_path):
    """throughput rows written before table integers became labels: runs.batch -> config of the item's rows."""
    rng = random.Random()
    v = [rng.uniform(1, 100) for _ in range(4)]
    w = _writer(tmp_path / "t.csv", "throughput")
    w.add("machine.cpu_count", 2.0, image_size=256)
    for batch, (a, b) in ((1, v[:2]), (8, v[2:])):  # how the old rows_from_dict wrote two items of 'runs'
        w.add("runs.batch", float(batch), "", backbone="wrn", image_size=256)
        w.add("runs.results.eager.p50_ms", a, backbone="wrn", image_size=256)
        w.add("runs.results.openvino.p50_ms", b, backbone="wrn", image_size=256)
    w.write()
    assert legacy.relabel_table_batch(tmp_path / "t.csv") == 4
    rows = rc.read_rows(tmp_path / "t.csv")
    assert [(r["metric"], r["value"], r["config"].get("batch")) for r in rows] == [
        ("machine.cpu_count", 2.0, None), ("runs.results.eager.p50_ms", v[0], 1), ("runs.results.openvino.p50_ms", v[1], 1),
        ("runs.results.eager.p50_ms", v[2], 8), ("runs.results.openvino.p50_ms", v[3], 8)]
    assert legacy.relabel_table_batch(tmp_path / "t.csv") == 0  # nothing left to move
