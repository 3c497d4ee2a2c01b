"""benchmarks/gpu_check.py --quick runs on the CPU (Triton interpreter) and writes its JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_quick(tmp_path):
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
