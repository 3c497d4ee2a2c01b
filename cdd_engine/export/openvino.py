"""OpenVINO IR (model.xml + model.bin) from the exported ONNX graph.

The IR keeps the ONNX interface (``image`` -> ``teacher_0..2``, ``student_0..2``, dynamic
batch) so the C++ library and the Python runtime read the same file. The Python runtime
appends the anomaly map to the network when it compiles it (backends/openvino_backend.py);
that is a load-time step, not part of the file on disk.

Winograd (``winograd=True``, the default): the 3x3 stride-1 convolutions with >= 256 channels are
rewritten as Winograd F(2x2, 3x3) subgraphs of ordinary operations before the IR is saved
(export/openvino_winograd.py): 2.25x fewer multiplications where the CPU plugin has no
Winograd kernel of its own, as close to the float64 reference as the direct convolution. The
file keeps the same interface, so the Python runtime and the C++ library both run it. WRN50 RD on
the 2-core development machine (benchmarks/RESULTS.md): network alone 1.03-1.19x faster (ten
interleaved runs), engine 0.99-1.09x at batch 1 and 1.00-1.10x at batch 8; model.bin 434 -> 555 MB.
``build(..., winograd=False)`` turns it off (for A/B benchmarks); engine.json records the choice.

Precision: ``fp32`` keeps float32 weights (``save_model`` would otherwise compress them to
fp16 by default); ``fp16`` stores fp16 weights (the CPU plugin still computes in fp32 on
CPUs without native fp16/bf16, such as AVX2-only Zen 3); ``int8`` is NNCF post-training
quantization of the fp32 network on calibration images (export/quantize.py): the IR holds
FakeQuantize operations, which the readers require of an int8 engine. Winograd is never applied
to an int8 IR (see export/quantize.py).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from ..errors import BackendUnavailable

log = logging.getLogger("cdd_engine.export")


class OpenVINOFiles(NamedTuple):
    """What :func:`convert_to_openvino` wrote, and how many convolutions it rewrote as Winograd."""
    xml: Path
    bin: Path
    winograd_convolutions: int
    quantization: dict[str, Any] | None = None  # NNCF settings of an int8 IR (export/quantize.py)


def _openvino():
    try:
        import openvino as ov
    except ImportError as e:  # pragma: no cover - openvino is an install requirement
        raise BackendUnavailable(f"OpenVINO is not installed: {e} (pip install openvino)") from e
    return ov


def convert_to_openvino(onnx_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                        precision: str = "fp32", name: str = "model",
                        winograd: bool = True, calibration: Sequence[Any] | None = None,
                        quantization: dict[str, Any] | None = None, validation: Sequence[Any] | None = None,
                        score_fn: Any = None) -> OpenVINOFiles:
    """Convert ``onnx_path`` to ``out_dir/name.xml`` + ``.bin``.

    precision: "fp32" (float32 weights), "fp16" (weights compressed to fp16) or "int8" (NNCF
        post-training quantization on ``calibration``: pre-processed (3, H, W) float32 images).
    winograd: rewrite the eligible 3x3 convolutions as Winograd F(2x2, 3x3) (see the module
        docstring); must be False for int8.
    quantization: int8 only: NNCF settings (export/quantize.py: check_quantization; defaults there).
    validation, score_fn: int8 with accuracy control only (export/quantize.py: quantize_openvino).
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"OpenVINO export supports precision 'fp32', 'fp16' or 'int8', got {precision!r}")
    if precision == "int8" and (winograd or not calibration):
        raise ValueError("without calibration images the OpenVINO export supports precision 'fp32' or 'fp16'; "
                         "'int8' needs calibration=[...] (pre-processed images) and winograd=False")
    ov = _openvino()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = ov.convert_model(str(onnx_path))
    n = 0
    if winograd:
        from .openvino_winograd import apply_winograd

        n = apply_winograd(model)
        log.info("OpenVINO IR: %d 3x3 convolutions rewritten as Winograd F(2x2, 3x3)", n)
    record = None
    if precision == "int8":
        from .quantize import quantize_openvino

        model, record = quantize_openvino(model, calibration, quantization, validation=validation, score_fn=score_fn)
    xml = out / f"{name}.xml"
    ov.save_model(model, str(xml), compress_to_fp16=(precision == "fp16"))
    return OpenVINOFiles(xml, xml.with_suffix(".bin"), n, record)
