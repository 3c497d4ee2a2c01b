"""Winograd F(2x2, 3x3) rewrite of OpenVINO 3x3 convolutions (export/openvino_winograd.py):
single convolutions of odd channel counts and non-square even sizes against float64 torch, with
static and dynamic batch; the convolutions it must leave alone; a whole RD network's IR against
torch; the export switch. Tolerance: docs/anomaly_map.md fp32, 1e-5 relative to each output's max |value|.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

ov = pytest.importorskip("openvino")
import openvino.opset13 as ops  # noqa: E402

from cdd_engine.export import convert_to_openvino, export_onnx  # noqa: E402
from cdd_engine.export import openvino_winograd as wg  # noqa: E402
from cdd_engine.engine_format import FEATURE_NAMES  # noqa: E402

from engine_helpers import one_torch_thread  # noqa: F401,E402 (autouse fixture)
from engine_helpers import IMAGE_SIZE, tiny_model  # noqa: E402

RTOL = 1e-5
CFG = {"INFERENCE_PRECISION_HINT": "f32"}


def _rel(got: np.ndarray, want: torch.Tensor) -> float:
    want = want.double().numpy()
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


def _conv_model(cin: int, cout: int, h: int, w: int, weights: np.ndarray, *, batch: int = -1, stride: int = 1,
                pad: int = 1, dilation: int = 1) -> ov.Model:
    p = ops.parameter([batch, cin, h, w], np.float32)
    conv = ops.convolution(p, ops.constant(weights), [stride] * 2, [pad] * 2, [pad] * 2, [dilation] * 2)
    return ov.Model([ops.relu(conv)], [p])


@pytest.mark.parametrize("cin,cout,h,w,batch", [(5, 7, 6, 10, 1), (8, 3, 2, 2, 2), (16, 16, 12, 4, -1)])
def test_rewritten_convolution_matches_float64(cin, cout, h, w, batch):
    g = torch.Generator().manual_seed(cin * 100 + cout)
    weights = torch.randn(cout, cin, 3, 3, generator=g)
    model = _conv_model(cin, cout, h, w, weights.numpy(), batch=batch)
    assert wg.apply_winograd(model, min_channels=1) == 1
    assert "Convolution" not in {op.get_type_name() for op in model.get_ops()}
    request = ov.Core().compile_model(model, "CPU", CFG).create_infer_request()
    for n in ((batch,) if batch > 0 else (1, 3)):
        x = torch.randn(n, cin, h, w, generator=g)
        want = torch.relu(torch.nn.functional.conv2d(x.double(), weights.double(), padding=1))
        got = request.infer({0: x.numpy()})[0]
        assert got.shape == tuple(want.shape)
        assert _rel(got, want) <= RTOL


@pytest.mark.parametrize("kind", ["stride2", "odd_size", "dilated", "pad0", "few_channels"])
def test_ineligible_convolutions_are_left_alone(kind):
    weights = np.random.default_rng(0).standard_normal((4, 4, 3, 3)).astype(np.float32)
    args = {"stride2": dict(stride=2), "dilated": dict(dilation=2, pad=2), "pad0": dict(pad=0)}.get(kind, {})
    h = 7 if kind == "odd_size" else 8
    model = _conv_model(4, 4, h, 8, weights, **args)
    assert wg.apply_winograd(model, min_channels=8 if kind == "few_channels" else 1) == 0
    assert "Convolution" in {op.get_type_name() for op in model.get_ops()}


def test_bad_min_channels():
    model = _conv_model(4, 4, 8, 8, np.ones((4, 4, 3, 3), np.float32))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="min_channels"):
            wg.apply_winograd(model, min_channels=bad)


@pytest.fixture(scope="module")
def rd_onnx(tmp_path_factory):
    model = tiny_model(seed=5)  # non-trivial BatchNorm statistics, folded into the convolutions
    return model, export_onnx(model, tmp_path_factory.mktemp("wg") / "model.onnx", max_batch=4)


def test_rd_network_with_winograd_matches_torch(rd_onnx):
    model, onnx_path = rd_onnx
    net = ov.convert_model(str(onnx_path))
    n = wg.apply_winograd(net, min_channels=1)
    assert n > 0
    request = ov.Core().compile_model(net, "CPU", CFG).create_infer_request()
    x = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        teacher, student = model.double()(x.double())
    model.float()
    out = request.infer({0: x.numpy()})
    for name, want in zip(FEATURE_NAMES, (*teacher, *student)):
        assert _rel(out[name], want) <= RTOL, name


def test_export_applies_it_by_default_and_the_argument_turns_it_off(rd_onnx, tmp_path, monkeypatch):
    _, onnx_path = rd_onnx
    monkeypatch.setattr(wg, "MIN_CHANNELS", 1)  # the tiny model's convolutions are thinner than 256

    def rewritten(xml):
        ops_ = ov.Core().read_model(str(xml)).get_ops()
        return sum(op.get_friendly_name().endswith("/winograd") for op in ops_)

    on = convert_to_openvino(onnx_path, tmp_path / "on")
    assert on.winograd_convolutions > 0 and rewritten(on.xml) > 0
    off = convert_to_openvino(onnx_path, tmp_path / "off", winograd=False)
    assert off.winograd_convolutions == 0 and rewritten(off.xml) == 0


def test_build_takes_it_as_an_argument_and_engine_json_records_it(tmp_path, monkeypatch):
    import json

    import cdd_engine

    monkeypatch.setattr(wg, "MIN_CHANNELS", 1)  # the tiny model's convolutions are thinner than 256
    model = tiny_model()
    for winograd in (True, False):
        out = tmp_path / str(winograd)
        cdd_engine.build(model, backend="openvino", max_batch=2, output_dir=out, threshold=0.5, verify=False,
                         winograd=winograd)
        build = json.loads((out / "engine.json").read_text())["build"]
        assert build["options"] == {"backend": "openvino", "precision": "fp32", "max_batch": 2, "threshold": 0.5,
                                    "map_mode": None, "sigma": None, "verify": False, "winograd": winograd}
        assert (build["winograd_convolutions"] > 0) == winograd
    with pytest.raises(ValueError, match="winograd"):
        cdd_engine.build(model, backend="openvino", output_dir=tmp_path / "x", threshold=0.5, winograd="no")
