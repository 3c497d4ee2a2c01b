"""The GPU check scripts run on the CPU, so CI exercises them between GPU runs:

- benchmarks/gpu_check.py --quick (Triton kernels in the interpreter) writes its JSON;
- benchmarks/engine_gpu_check.py --cpu --quick (the engine check on a tiny model): the report's
  structure, parity figures that are real (measured, within tolerance, and a deliberately
  perturbed engine reported as a parity FAILURE), and every row that cannot run listed with why.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE_CHECK = ROOT / "benchmarks" / "engine_gpu_check.py"
# (backend, precision) rows the engine check always reports, run or not
SPECS = {("torch", "fp32"), ("torch", "fp16"), ("torch", "tf32"), ("aoti", "fp32"), ("aoti", "fp16"),
         ("aoti", "bf16"), ("aoti", "tf32"), ("tensorrt", "fp16"), ("tensorrt", "fp32")}
FP32_TOL = 1e-5


def test_gpu_check_quick(tmp_path):
    pytest.importorskip("triton")
    out = tmp_path / "report.json"
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--quick", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["passed"] is True and not report["errors"]
    a = report["sections"]["a"]
    assert len(a["anomaly_map"]) >= 8 and len(a["preprocess"]) >= 4
    assert all(r["passed"] and r["map_rel_err"] <= 1e-5 for r in a["anomaly_map"])
    assert all(r["passed"] for r in a["preprocess"])
    assert set("bcdet") <= set(report["skipped"])  # GPU-only sections say why they did not run


def run_engine_check(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict, str]:
    out = tmp_path / "report"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, str(ENGINE_CHECK), "--cpu", "--quick", "--out", str(out), *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (out / "engine_gpu_check.json").exists(), log
    return proc, json.loads((out / "engine_gpu_check.json").read_text()), (out / "engine_gpu_check.md").read_text()


def parity_row(report: dict, backend: str, precision: str, runtime: str = "python") -> dict:
    rows = [r for r in report["parity"] if (r["backend"], r["precision"], r["runtime"]) == (backend, precision, runtime)]
    assert len(rows) == 1, rows
    return rows[0]


def test_engine_gpu_check_cpu_mode(tmp_path):
    proc, report, md = run_engine_check(tmp_path, "--only", "torch:fp32")  # aoti: the slow test below
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert report["passed"] is True and not report["errors"], report["errors"]
    assert report["meta"]["mode"] == "cpu" and report["meta"]["device"] == "cpu"

    # every row is reported, once per runtime; a row that did not run says why
    rows = report["parity"]
    assert {(r["backend"], r["precision"], r["runtime"]) for r in rows} == \
        {(b, p, rt) for b, p in SPECS for rt in ("python", "native")}
    assert len(rows) == 2 * len(SPECS)
    assert all(r["status"] in ("passed", "failed", "skipped", "error") for r in rows)
    not_run = [r for r in rows if r["status"] == "skipped"]
    assert all(r["reason"].strip() for r in not_run)
    assert len(report["unavailable"]) == len(not_run)
    for r in not_run:
        assert r["reason"] in md  # the markdown lists it too

    # the parity figures are measured: non-zero (another computation than the reference) and in tolerance
    t = parity_row(report, "torch", "fp32")
    assert t["status"] == "passed" and t["tolerance"] == FP32_TOL
    for key in ("map_rel_err", "score_rel_err", "batch1_rel_err", "bgr_vs_rgb"):
        assert 0 < t[key] <= FP32_TOL, (key, t[key])
    assert len(t["frames"]) == 6 and [1080, 1920, 3] in t["frames"]
    assert "runs on the Python runtime only" in parity_row(report, "torch", "fp32", "native")["reason"]
    for b, p in (("torch", "fp16"), ("aoti", "fp16"), ("tensorrt", "fp32")):
        assert parity_row(report, b, p)["status"] == "skipped"
    a = parity_row(report, "aoti", "fp32")
    assert a["status"] == "skipped" and (a["reason"].startswith("backend aoti not available")  # build() refuses it
                                         or a["reason"].startswith("not selected (--only")), a

    # throughput: every batch, the eager pipeline and the engine interleaved in the same run
    thr = report["throughput"]
    for b in report["meta"]["batches"] + report["meta"]["sweep"]:
        got = {r["pipeline"]: r for r in thr if r["batch"] == b}
        assert {"eager_fp32", "torch_fp32"} <= set(got), (b, sorted(got))
        assert got["eager_fp32"]["x_eager"] == pytest.approx(1.0)
        for r in got.values():
            assert r["images_per_s"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"] and r["calls"] >= 2
            assert r["images_per_s"] == pytest.approx(1e3 * b / r["p50_ms"])
    assert report["best_batch"]["torch_fp32"]["batch"] in report["meta"]["batches"] + report["meta"]["sweep"]
    lat = {r["pipeline"]: r for r in report["latency"]}
    assert {"eager_fp32", "torch_fp32"} <= set(lat)
    assert all(0 < r["p50_ms"] <= r["p99_ms"] and r["calls"] >= 5 for r in lat.values())
    assert "| torch | fp32 | python | passed |" in md and "**Parity: PASSED**" in md


def test_engine_gpu_check_catches_a_perturbed_engine(tmp_path):
    """Engines built from weights with 1e-3 relative noise, reference from the original weights:
    the check must report the fp32 row FAILED with the error it measured, and exit non-zero."""
    proc, report, md = run_engine_check(tmp_path, "--perturb", "1e-3", "--only", "torch:fp32",
                                        "--sections", "parity")
    assert proc.returncode == 2, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert report["passed"] is False and not report["errors"]
    t = parity_row(report, "torch", "fp32")
    assert t["status"] == "failed"
    assert 10 * FP32_TOL < t["map_rel_err"] < 1.0, t  # a real difference, not a flag
    assert "| torch | fp32 | python | failed |" in md and "**Parity: FAILED**" in md
    assert not report["throughput"] and not report["latency"]


def test_engine_gpu_check_budget_skips_with_a_reason(tmp_path):
    """A budget already spent by start-up: no build starts, every measurement is skipped with
    'time budget' on record, and a check that checked nothing does not pass."""
    proc, report, md = run_engine_check(tmp_path, "--budget-s", "0.5", "--only", "torch:fp32")
    assert proc.returncode == 2
    t = parity_row(report, "torch", "fp32")
    assert t["status"] == "skipped" and t["reason"].startswith("time budget")
    assert report["skipped"] and all(s["reason"].startswith("time budget") for s in report["skipped"])
    assert any(s["what"].startswith("throughput eager_fp32") for s in report["skipped"])
    assert report["passed"] is False and "time budget" in md


@pytest.mark.slow
def test_engine_gpu_check_aoti_rows_on_the_cpu(tmp_path):
    """The aoti rows in CPU mode: an AOTInductor CPU package of the tiny model (~40 s to compile on
    2 shared cores) within 1e-5 of the reference, timed beside eager fp32; its native-runtime row
    runs where libcdd_engine was built with CDD_WITH_AOTI, else says why not."""
    proc, report, md = run_engine_check(tmp_path, "--only", "aoti:fp32", "--batches", "1,4", "--sweep", "")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert report["passed"] is True and not report["errors"], report["errors"]
    a = parity_row(report, "aoti", "fp32")
    assert a["status"] == "passed" and all(0 < a[k] <= FP32_TOL for k in ("map_rel_err", "score_rel_err")), a
    native = parity_row(report, "aoti", "fp32", "native")
    if native["status"] == "skipped":
        assert "native" in native["reason"], native
    else:  # the C++ AOTInductor loader against the same reference
        assert native["status"] == "passed" and 0 < native["map_rel_err"] <= FP32_TOL, native
    for b, p in (("aoti", "fp16"), ("aoti", "tf32")):
        assert "CUDA" in parity_row(report, b, p)["reason"]
    assert {r["pipeline"] for r in report["throughput"] if r["batch"] == 4} >= {"eager_fp32", "aoti_fp32"}


def test_engine_gpu_check_issue13_targets_from_rows():
    """The GPU-only summary of issue 13's bar, fed rows as a GPU run writes them (no GPU here)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("engine_gpu_check", ENGINE_CHECK)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def row(batch, pipeline, ips, x_eager=None, x_py=None):
        return {"batch": batch, "pipeline": pipeline, "images_per_s": ips, "p50_ms": 1e3 * batch / ips,
                "x_eager": x_eager, "x_python_runtime": x_py}

    d = {"throughput": [row(32, "eager_fp32", 1400.0, 1.0), row(32, "aoti_fp16", 3600.0, 2.57),
                        row(32, "aoti_fp16/native", 3100.0, 2.2, 3100 / 3600), row(128, "aoti_fp16", 5200.0, 2.9),
                        row(32, "aoti_fp32", 4000.0, 2.9)],  # fp32 is not half precision: not counted
         "latency": [{"pipeline": "eager_fp32", "p50_ms": 9.0}, {"pipeline": "aoti_fp16", "p50_ms": 2.4}],
         "parity": [{"precision": "fp32", "status": "passed", "map_rel_err": 3e-7, "score_rel_err": 1e-7},
                    {"precision": "fp32", "status": "skipped"}]}
    got = {t["target"]: t for t in mod.targets(d)}
    assert len(got) == 6
    b32 = got["batch 32, half precision >= 3,500 img/s"]
    assert b32["met"] is True and b32["measured"] == 3600.0 and b32["pipeline"] == "aoti_fp16"
    assert got["batch 32, half precision >= 2.2x eager fp32 (same run)"]["met"] is True
    best = got[">= 5,000 img/s at the best batch up to 128"]
    assert best["met"] is True and best["pipeline"] == "aoti_fp16 at batch 128"
    assert got["batch 1 p50 <= 2.0 ms"]["met"] is False  # 2.4 ms
    cpp = got["C++ GPU path within 10 % of the Python GPU path (worst batch)"]
    assert cpp["met"] is False and cpp["measured"] == pytest.approx(3100 / 3600)
    assert got["fp32 parity <= 1e-5"]["met"] is True and got["fp32 parity <= 1e-5"]["measured"] == 3e-7
    empty = mod.targets({"throughput": [], "latency": [], "parity": []})
    assert all(t["met"] is None and t["measured"] is None for t in empty)
