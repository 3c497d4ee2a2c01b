"""pytest-benchmark suite of the engine (uint8 frames in -> scores and maps out) beside the
eager PyTorch reference pipeline, and of the anomaly map alone.

    pytest benchmarks/bench_engine.py --benchmark-columns=median,iqr,ops --benchmark-group-by=param:batch

efficientnet_lite0 at 256² by default (random weights); CDD_BENCH_BACKBONE=wide_resnet50_2 for
the paper's teacher (slow: ~1 s per image eager on 2 cores). The engines are built once per
session in a temporary directory. For the interleaved engine-vs-eager ratios recorded in
RESULTS.md use benchmarks/throughput.py (pytest-benchmark runs one benchmark after another,
so on shared cores its ratios drift with the load).

Each timed test appends its statistics (median, min, mean, stddev, IQR in seconds; rounds) as
long-format rows to benchmarks/results/bench_engine.csv (results_csv.py), one run_id per pytest
session; CDD_BENCH_RESULTS_CSV=PATH writes elsewhere, CDD_BENCH_RESULTS_CSV= (empty) writes none.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cdd_engine  # noqa: E402
from cdd_engine.anomaly_map import anomaly_map  # noqa: E402
from cdd_engine.bench import eager_pipeline  # noqa: E402
from cdd_engine.models import build_rd_model  # noqa: E402
from cdd_engine.runtime.postprocess import FastAnomalyMap  # noqa: E402
from results_csv import RESULTS_DIR, ResultsWriter  # noqa: E402  (benchmarks/ is this file's directory)

BACKBONE = os.environ.get("CDD_BENCH_BACKBONE", "efficientnet_lite0")
SIZE = 256
RESULTS_CSV = os.environ.get("CDD_BENCH_RESULTS_CSV", str(RESULTS_DIR / "bench_engine.csv"))
STATS = ("median", "min", "mean", "stddev", "iqr")  # pytest-benchmark's, in seconds


@pytest.fixture(scope="session")
def results():
    """The session's rows; appended to RESULTS_CSV when the session ends (nothing when it is empty)."""
    w = ResultsWriter("bench_engine", RESULTS_CSV or None)
    yield w
    if RESULTS_CSV and w.rows:
        w.write()


def record(results, benchmark, **config) -> None:
    """One test's timing statistics as rows (none under --benchmark-disable, which times nothing)."""
    meta = getattr(benchmark, "stats", None)
    if meta is None:
        return
    st = meta.stats
    config = {"backbone": BACKBONE, "image_size": SIZE, **config}
    for name in STATS:
        results.add(f"{name}_s", float(getattr(st, name)), "s", **config)
    results.add("rounds", float(st.rounds), "", **config)


@pytest.fixture(scope="session")
def model():
    return build_rd_model(BACKBONE, pretrained=False, image_size=SIZE, seed=0).eval()


@pytest.fixture(scope="session")
def engines(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    return {b: cdd_engine.build(model, backend=b, threshold=1.0, max_batch=32, output_dir=root / b, verify=False)
            for b in ("openvino", "torch")}


def _frames(batch):
    return np.random.default_rng(batch).integers(0, 256, (batch, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.mark.parametrize("batch", [1, 8])
def test_eager_reference(benchmark, results, model, batch):
    benchmark.group = f"{BACKBONE} pipeline batch {batch}"
    run = eager_pipeline(model)
    x = _frames(batch)
    maps, scores = benchmark.pedantic(run, args=(x,), rounds=3, warmup_rounds=1)
    record(results, benchmark, pipeline="eager", batch=batch)
    assert maps.shape == (batch, SIZE, SIZE) and np.isfinite(scores).all()


@pytest.mark.parametrize("backend", ["openvino", "torch"])
@pytest.mark.parametrize("batch", [1, 8])
def test_engine(benchmark, results, engines, backend, batch):
    benchmark.group = f"{BACKBONE} pipeline batch {batch}"
    eng = engines[backend]
    x = _frames(batch)
    r = benchmark.pedantic(eng.score, args=(x,), rounds=5 if backend == "openvino" else 3, warmup_rounds=1)
    record(results, benchmark, pipeline="engine", backend=backend, batch=batch)
    assert r.maps.shape == (batch, SIZE, SIZE) and np.isfinite(r.scores).all()


@pytest.fixture(scope="module")
def wrn_features():
    g = torch.Generator().manual_seed(0)
    t = [torch.randn(8, *s, generator=g) for s in ((256, 64, 64), (512, 32, 32), (1024, 16, 16))]
    return t, [x + 0.3 * torch.randn(x.shape, generator=g) for x in t]


def test_anomaly_map_eager(benchmark, results, wrn_features):
    benchmark.group = "anomaly map alone, WRN50 shapes, batch 8"
    benchmark.pedantic(anomaly_map, args=(*wrn_features, SIZE), rounds=5, warmup_rounds=1)
    record(results, benchmark, pipeline="anomaly_map_eager", batch=8, backbone="wide_resnet50_2")


def test_anomaly_map_fast(benchmark, results, wrn_features):
    benchmark.group = "anomaly map alone, WRN50 shapes, batch 8"
    fast = FastAnomalyMap(SIZE)
    maps, _ = benchmark.pedantic(fast, args=wrn_features, rounds=5, warmup_rounds=1)
    record(results, benchmark, pipeline="anomaly_map_fast", batch=8, backbone="wide_resnet50_2")
    want, _ = anomaly_map([x.double() for x in wrn_features[0]], [x.double() for x in wrn_features[1]], SIZE)
    assert float((maps.double() - want).abs().max() / want.abs().max()) <= 1e-5
