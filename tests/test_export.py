"""Export: ONNX with a dynamic batch (checked with onnx.checker and against torch with
onnxruntime on fresh random inputs at batch sizes other than the export batch), the OpenVINO IR
from it, the FP16 graph for TensorRT, the INT8 Q/DQ graph, and TensorRT's absence reported clearly.

Tolerance of the network alone (ONNX Runtime / OpenVINO vs torch, fp32): 1e-5 relative to each
output's max |value|; both land near 1e-6 on this model (different convolution algorithms
and summation orders, not a precision loss).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from cdd_engine.export import check_onnx, convert_to_openvino, export_onnx, quantize_qdq, verify_onnx
from cdd_engine.runtime import BackendUnavailable, choose_backend
from cdd_engine.engine_format import FEATURE_NAMES

from engine_helpers import one_torch_thread  # noqa: F401 (autouse fixture)
from engine_helpers import IMAGE_SIZE, MicroRD, tiny_model

NET_RTOL = 1e-5


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


@pytest.fixture(scope="module")
def onnx_path(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx", max_batch=8)


@pytest.fixture(scope="module")
def ir32(onnx_path, tmp_path_factory):
    return convert_to_openvino(onnx_path, tmp_path_factory.mktemp("ir32"))


def _torch_features(model, x):
    with torch.no_grad():
        t, s = model(x)
    return [f.numpy() for f in (*t, *s)]


def _rel(got, want):
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


def test_onnx_interface_and_checker(onnx_path):
    check_onnx(onnx_path)  # onnx.checker + names + symbolic batch
    proto = onnx.load(str(onnx_path))
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == list(FEATURE_NAMES)
    image = proto.graph.input[0].type.tensor_type
    assert image.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in image.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [3, IMAGE_SIZE, IMAGE_SIZE]
    assert not (onnx_path.parent / (onnx_path.name + ".data")).exists(), "weights must be inside model.onnx"


@pytest.mark.parametrize("batch", [1, 5])
def test_onnxruntime_matches_torch(model, onnx_path, batch):
    worst = verify_onnx(model, onnx_path, batch=batch, seed=batch, rtol=NET_RTOL)
    assert 0 < worst <= NET_RTOL


def test_verify_onnx_catches_a_different_model(model, onnx_path):
    other = tiny_model(seed=4)
    with pytest.raises(ValueError, match="differs from torch"):
        verify_onnx(other, onnx_path, batch=2)


def test_openvino_ir_matches_torch_with_dynamic_batch(model, ir32):
    import openvino as ov

    xml, bin_ = ir32.xml, ir32.bin
    assert xml.is_file() and bin_.is_file()
    # fp32 weights stored as fp32: the .bin holds ~4 bytes per parameter
    n_params = sum(p.numel() for p in model.parameters())
    assert bin_.stat().st_size > 3.5 * n_params
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    for batch in (1, 5):
        x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(batch))
        out = request.infer({0: x.numpy()})
        for name, want in zip(FEATURE_NAMES, _torch_features(model, x)):
            assert out[name].shape == want.shape
            assert _rel(out[name], want) <= NET_RTOL, name


def test_openvino_fp16_weights_are_half_the_size(onnx_path, ir32, tmp_path):
    bin32 = ir32.bin
    bin16 = convert_to_openvino(onnx_path, tmp_path / "fp16", precision="fp16").bin
    assert bin16.stat().st_size < 0.6 * bin32.stat().st_size
    with pytest.raises(ValueError, match="fp32' or 'fp16"):
        convert_to_openvino(onnx_path, tmp_path / "x", precision="int8")


def test_fp16_graph_for_tensorrt(tmp_path):
    """Strongly typed FP16 graph: float32 input cast inside, float16 weights and features.
    (A three-convolution stand-in: the mechanics are the same, the tracing much shorter.)"""
    micro = MicroRD().eval()
    path = export_onnx(micro, tmp_path / "model_fp16.onnx", max_batch=4, dtype=torch.float16)
    assert next(micro.parameters()).dtype == torch.float32, "the caller's model must not be converted"
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {o.type.tensor_type.elem_type for o in proto.graph.output} == {onnx.TensorProto.FLOAT16}
    conv_weights = {i.name: i.data_type for i in proto.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in set(conv_weights.values())
    assert onnx.TensorProto.FLOAT not in {dt for name, dt in conv_weights.items() if "weight" in name}


def test_int8_qdq_graph(model, onnx_path, tmp_path):
    """Symmetric int8 Q/DQ pairs (zero points 0, as TensorRT needs); onnxruntime runs the graph
    and its features stay close to fp32 (int8 quantisation error, a few percent)."""
    g = torch.Generator().manual_seed(5)
    calib = [torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g).numpy() for _ in range(2)]
    qdq = quantize_qdq(onnx_path, tmp_path / "qdq.onnx", calib)
    proto = onnx.load(str(qdq))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    zero_points = [inits[n.input[2]] for n in proto.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits]
    assert zero_points and all(np.all(z == 0) for z in zero_points)
    import onnxruntime as ort

    x = calib[0][:2]
    got = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"]).run(list(FEATURE_NAMES), {"image": x})
    for g_, want in zip(got, _torch_features(model, torch.from_numpy(x))):
        assert 0 < _rel(g_, want) < 0.25
    with pytest.raises(ValueError, match="at least one calibration batch"):
        quantize_qdq(onnx_path, tmp_path / "none.onnx", [])


def _tensorrt_importable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(_tensorrt_importable(), reason="TensorRT is installed here")
def test_tensorrt_absence_is_reported(onnx_path, tmp_path, model):
    from cdd_engine.export.tensorrt import build_plan
    import cdd_engine

    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        build_plan(onnx_path, tmp_path / "model.plan", image_size=(IMAGE_SIZE, IMAGE_SIZE))
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        cdd_engine.build(model, backend="tensorrt", threshold=1.0, output_dir=tmp_path / "trt")
    assert not (tmp_path / "trt").exists(), "the TensorRT check must come before any export work"


def test_tensorrt_builder_rejects_bad_profiles(onnx_path, tmp_path):
    from cdd_engine.export.tensorrt import build_plan

    with pytest.raises(ValueError, match="min_batch <= max_batch"):
        build_plan(onnx_path, tmp_path / "p", image_size=(64, 64), min_batch=4, max_batch=2)
    with pytest.raises(ValueError, match="opt_batch"):
        build_plan(onnx_path, tmp_path / "p", image_size=(64, 64), max_batch=4, opt_batch=8)
    with pytest.raises(ValueError, match="precision"):
        build_plan(onnx_path, tmp_path / "p", image_size=(64, 64), precision="int4")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_auto_backend_without_gpu_is_openvino():
    name, reason = choose_backend("auto")
    assert name == "openvino" and "no NVIDIA GPU" in reason
    assert choose_backend("torch") == ("torch", "asked for")
    with pytest.raises(ValueError, match="backend must be one of"):
        choose_backend("onnxruntime")


def test_export_rejects_bad_arguments(model, tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        export_onnx(model, tmp_path / "m.onnx", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="max_batch"):
        export_onnx(model, tmp_path / "m.onnx", max_batch=0)


def test_check_onnx_rejects_a_foreign_graph(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 3])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["b", 3])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "g", [x], [y])
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ValueError, match="expected input"):
        check_onnx(path)


def test_non_finite_constants_of_the_graph_are_named(onnx_path, tmp_path):
    """build() refuses a graph whose folded constants hold NaN/inf (issue 16 item 1): some backends
    turn NaN activations into finite numbers, so the probe batch alone could miss it."""
    from cdd_engine.export.onnx import non_finite_initializers

    assert non_finite_initializers(onnx_path) == []
    m = MicroRD()
    with torch.no_grad():
        m.s[1].bias[0] = float("inf")
    bad = non_finite_initializers(export_onnx(m, tmp_path / "inf.onnx", max_batch=2))
    assert len(bad) == 1 and "s.1.bias" in bad[0], bad
