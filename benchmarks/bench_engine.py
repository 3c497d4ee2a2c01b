"""pytest-benchmark suite of the engine (uint8 frames in -> scores and maps out) beside the
eager PyTorch reference pipeline, and of the anomaly map alone.

    pytest benchmarks/bench_engine.py --benchmark-columns=median,iqr,ops --benchmark-group-by=param:batch

efficientnet_lite0 at 256² by default (random weights); CDD_BENCH_BACKBONE=wide_resnet50_2 for
the paper's teacher (slow: ~1 s per image eager on 2 cores). The engines are built once per
session in a temporary directory. For the interleaved engine-vs-eager ratios recorded in
RESULTS.md use benchmarks/throughput.py (pytest-benchmark runs one benchmark after another,
so on shared cores its ratios drift with the load).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cdd_engine  # noqa: E402
from cdd_engine.anomaly_map import anomaly_map  # noqa: E402
from cdd_engine.bench import eager_pipeline  # noqa: E402
from cdd_engine.models import build_rd_model  # noqa: E402
from cdd_engine.runtime.postprocess import FastAnomalyMap  # noqa: E402

BACKBONE = os.environ.get("CDD_BENCH_BACKBONE", "efficientnet_lite0")
SIZE = 256


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
def test_eager_reference(benchmark, model, batch):
    benchmark.group = f"{BACKBONE} pipeline batch {batch}"
    run = eager_pipeline(model)
    x = _frames(batch)
    maps, scores = benchmark.pedantic(run, args=(x,), rounds=3, warmup_rounds=1)
    assert maps.shape == (batch, SIZE, SIZE) and np.isfinite(scores).all()


@pytest.mark.parametrize("backend", ["openvino", "torch"])
@pytest.mark.parametrize("batch", [1, 8])
def test_engine(benchmark, engines, backend, batch):
    benchmark.group = f"{BACKBONE} pipeline batch {batch}"
    eng = engines[backend]
    x = _frames(batch)
    r = benchmark.pedantic(eng.score, args=(x,), rounds=5 if backend == "openvino" else 3, warmup_rounds=1)
    assert r.maps.shape == (batch, SIZE, SIZE) and np.isfinite(r.scores).all()


@pytest.fixture(scope="module")
def wrn_features():
    g = torch.Generator().manual_seed(0)
    t = [torch.randn(8, *s, generator=g) for s in ((256, 64, 64), (512, 32, 32), (1024, 16, 16))]
    return t, [x + 0.3 * torch.randn(x.shape, generator=g) for x in t]


def test_anomaly_map_eager(benchmark, wrn_features):
    benchmark.group = "anomaly map alone, WRN50 shapes, batch 8"
    benchmark.pedantic(anomaly_map, args=(*wrn_features, SIZE), rounds=5, warmup_rounds=1)


def test_anomaly_map_fast(benchmark, wrn_features):
    benchmark.group = "anomaly map alone, WRN50 shapes, batch 8"
    fast = FastAnomalyMap(SIZE)
    maps, _ = benchmark.pedantic(fast, args=wrn_features, rounds=5, warmup_rounds=1)
    want, _ = anomaly_map([x.double() for x in wrn_features[0]], [x.double() for x in wrn_features[1]], SIZE)
    assert float((maps.double() - want).abs().max() / want.abs().max()) <= 1e-5
