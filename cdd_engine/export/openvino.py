"""OpenVINO IR (model.xml + model.bin) from the exported ONNX graph.

The IR keeps the ONNX interface (``image`` -> ``teacher_0..2``, ``student_0..2``, dynamic
batch) so the C++ library and the Python runtime read the same file. The Python runtime
appends the anomaly map to the network when it compiles it (backends/openvino_backend.py);
that is a load-time step, not part of the file on disk.

Precision: ``fp32`` keeps float32 weights (``save_model`` would otherwise compress them to
fp16 by default); ``fp16`` stores fp16 weights (the CPU plugin still computes in fp32 on
CPUs without native fp16/bf16, such as AVX2-only Zen 3).
"""
from __future__ import annotations

import os
from pathlib import Path

from ..runtime.errors import BackendUnavailable


def _openvino():
    try:
        import openvino as ov
    except ImportError as e:  # pragma: no cover - openvino is an install requirement
        raise BackendUnavailable(f"OpenVINO is not installed: {e} (pip install openvino)") from e
    return ov


def convert_to_openvino(onnx_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                        precision: str = "fp32", name: str = "model") -> tuple[Path, Path]:
    """Convert ``onnx_path`` to ``out_dir/name.xml`` + ``.bin``; returns both paths.

    precision: "fp32" (float32 weights) or "fp16" (weights compressed to fp16).
    """
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"OpenVINO export supports precision 'fp32' or 'fp16', got {precision!r} "
                         f"(INT8 needs a Q/DQ graph: see cdd_engine.export.tensorrt.quantize_qdq)")
    ov = _openvino()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = ov.convert_model(str(onnx_path))
    xml = out / f"{name}.xml"
    ov.save_model(model, str(xml), compress_to_fp16=(precision == "fp16"))
    return xml, xml.with_suffix(".bin")
