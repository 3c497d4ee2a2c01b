"""The engine variants ``benchmarks/throughput.py --backends`` takes (cdd_engine.bench.parse_variant)."""
from __future__ import annotations

import pytest

from cdd_engine.bench import parse_variant


@pytest.mark.parametrize("spec,backend,options", [
    ("openvino", "openvino", {}),
    ("torch", "torch", {}),
    ("openvino:latency", "openvino", {"openvino_mode": "latency"}),
    ("openvino-direct", "openvino", {"_winograd": False}),
    ("openvino-direct:throughput@python", "openvino",
     {"_winograd": False, "openvino_mode": "throughput", "runtime": "python"}),
    ("openvino@native", "openvino", {"runtime": "native"}),
    ("openvino/2", "openvino", {"sub_batch": 2}),
    ("openvino-int8:throughput/4@python", "openvino",
     {"_precision": "int8", "openvino_mode": "throughput", "sub_batch": 4, "runtime": "python"}),
])
def test_variants(spec, backend, options):
    label, got_backend, got_options = parse_variant(spec)
    assert (label, got_backend, got_options) == (spec, backend, options)


@pytest.mark.parametrize("spec,match", [("torch:latency", "only openvino takes a mode"),
                                        ("openvino@gpu", "runtime must be"),
                                        ("torch/2", "frames per request are an OpenVINO option"),
                                        ("openvino/0", "N >= 1"), ("openvino/two", "N >= 1")])
def test_bad_variants(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_variant(spec)
