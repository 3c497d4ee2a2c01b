"""INT8 rows of ``cdd-engine bench`` / ``benchmarks/throughput.py`` (issue 14): the variant
``openvino-int8``, its fp32 partner timed in the same interleaved rounds, the ratios against it,
the build call an INT8 row makes, and the tables. No speed is asserted."""
from __future__ import annotations

import numpy as np
import pytest

import cdd_engine
from cdd_engine import bench
from cdd_engine.bench import (add_fp32_ratios, fp32_partner, parse_variant, summarize, throughput_benchmark,
                              to_markdown, with_fp32_partners)
from engine_helpers import one_torch_thread, tiny_model  # noqa: F401 (autouse fixture)


@pytest.mark.parametrize("spec,backend,options", [
    ("openvino-int8", "openvino", {"_precision": "int8"}),
    ("openvino-int8:latency@python", "openvino",
     {"_precision": "int8", "openvino_mode": "latency", "runtime": "python"}),
])
def test_int8_variants(spec, backend, options):
    assert parse_variant(spec) == (spec, backend, options)


@pytest.mark.parametrize("spec", ["tensorrt-int8", "torch-int8"])
def test_int8_rows_are_openvino_only(spec):
    with pytest.raises(ValueError, match="openvino-int8"):
        parse_variant(spec)


def test_fp32_partners_are_added_before_their_int8_row():
    assert fp32_partner("openvino-int8:latency@native") == "openvino:latency@native"
    assert fp32_partner("openvino-int8:throughput/4@native") == "openvino:throughput@native"
    assert fp32_partner("openvino-int8/1") == "openvino"
    assert fp32_partner("openvino") is None and fp32_partner("openvino-direct") is None
    assert with_fp32_partners(["openvino-int8"]) == ["openvino", "openvino-int8"]
    assert with_fp32_partners(["torch", "openvino-int8", "openvino"]) == ["torch", "openvino-int8", "openvino"]
    assert with_fp32_partners(["openvino-int8:latency", "openvino-int8"]) == \
        ["openvino:latency", "openvino-int8:latency", "openvino", "openvino-int8"]


def test_fp32_ratios_against_a_direct_computation():
    rng = np.random.default_rng(7)
    n = 7   # odd number of rounds: the medians are elements, not averages
    times = {"eager": list(rng.uniform(0.5, 0.9, n)), "openvino": list(rng.uniform(0.2, 0.4, n)),
             "openvino-int8": list(rng.uniform(0.1, 0.3, n))}
    res = summarize(times, batch=8)
    add_fp32_ratios(res, times, {"openvino-int8": "openvino"})
    fp32, int8 = sorted(times["openvino"]), sorted(times["openvino-int8"])
    assert res["openvino-int8"]["ratio_vs_fp32"] == pytest.approx(fp32[n // 2] / int8[n // 2], rel=1e-12)
    paired = sorted(a / b for a, b in zip(times["openvino"], times["openvino-int8"]))
    assert res["openvino-int8"]["median_paired_ratio_vs_fp32"] == pytest.approx(paired[n // 2], rel=1e-12)
    assert "ratio_vs_fp32" not in res["openvino"] and "ratio_vs_fp32" not in res["eager"]
    run = {"backbone": "b", "batch": 8, "results": res}
    md = to_markdown({"machine": {"torch": "x", "torch_threads": 2}, "image_size": 64, "frame_size": 64,
                      "runs": [run]})
    assert "x fp32 engine (paired)" in md and "fp32 except the -int8 rows" in md
    row = next(ln for ln in md.splitlines() if "| openvino-int8 |" in ln)
    assert row.rstrip().endswith(f"{res['openvino-int8']['ratio_vs_fp32']:.2f} | "
                                 f"{res['openvino-int8']['median_paired_ratio_vs_fp32']:.2f} |")
    fp32_row = next(ln for ln in md.splitlines() if "| openvino |" in ln)
    assert fp32_row.rstrip().endswith("| - | - |")
    del res["openvino-int8"]["ratio_vs_fp32"]
    assert "x fp32 engine" not in to_markdown({"machine": {"torch": "x", "torch_threads": 2}, "image_size": 64,
                                               "frame_size": 64, "runs": [{**run, "results": {
                                                   k: v for k, v in res.items() if k != "openvino-int8"}}]})


def test_an_int8_row_builds_with_precision_and_calibration_frames(tmp_path, monkeypatch):
    """The build call of an INT8 row (the INT8 build itself is tested where it is written)."""
    calls = []

    def fake_build(model, **kw):
        calls.append(kw)
        raise RuntimeError("stop here")

    monkeypatch.setattr(cdd_engine, "build", fake_build)
    model = tiny_model()
    with pytest.raises(RuntimeError, match="stop here"):
        bench._engine_for("resnet18", "openvino", model, tmp_path, 4, {"num_threads": 1, "_precision": "int8",
                                                                       "_winograd": True})
    kw = calls[-1]
    assert kw["precision"] == "int8" and kw["winograd"] is False and kw["num_threads"] == 1
    frames = kw["calibration_frames"]
    assert frames.dtype == np.uint8 and frames.shape == (bench.INT8_CALIBRATION_FRAMES, 64, 64, 3)
    assert frames.std() > 50   # uniform random pixels, not a constant image
    assert kw["output_dir"].name == "resnet18_64_openvino-int8"
    assert kw["guard"].min_spearman == -1.0   # speed rows of a random model: recorded, not enforced
    with pytest.raises(RuntimeError, match="stop here"):
        bench._engine_for("resnet18", "openvino", model, tmp_path, 4, {"num_threads": 1})
    assert "precision" not in calls[-1] and calls[-1]["winograd"] is True
    assert calls[-1]["output_dir"].name == "resnet18_64_openvino-winograd"


def test_int8_rows_beside_fp32_rows_in_one_run(tmp_path):
    res = throughput_benchmark(["resnet18"], ["openvino-int8"], [2], image_size=64, rounds=2, stage_reps=1,
                               engines_dir=tmp_path)
    run = res["runs"][0]
    assert list(run["results"]) == ["eager", "openvino", "openvino-int8"]
    assert all(len(v) == 2 for v in run["seconds"].values())
    r = run["results"]["openvino-int8"]
    assert r["ratio_vs_fp32"] > 0 and r["ratio_vs_eager"] > 0
    eng = cdd_engine.load(tmp_path / "resnet18_64_openvino-int8")
    assert eng.precision == "int8" and eng.manifest["int8"]["guard"]["passed"]
    assert set(run["stages_ms_per_image"]) == {"openvino", "openvino-int8"}
    assert "| resnet18 | 2 | openvino-int8 |" in to_markdown(res)
