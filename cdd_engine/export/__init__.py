"""Export an RD model: ONNX (dynamic batch), OpenVINO IR, TensorRT plan (where TensorRT exists).

Submodules are imported on use so that ``import cdd_engine.export`` stays light.
"""
from __future__ import annotations

from .onnx import FeatureNet, check_onnx, export_onnx, verify_onnx
from .openvino import convert_to_openvino
from .tensorrt import build_plan, import_tensorrt, quantize_qdq

__all__ = ["FeatureNet", "export_onnx", "check_onnx", "verify_onnx", "convert_to_openvino", "build_plan",
           "import_tensorrt", "quantize_qdq"]
