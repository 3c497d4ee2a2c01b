"""ONNX export of an RD model (teacher + OCBE + student) with a dynamic batch.

The graph: input ``image`` (B, 3, H, W) float32, normalised as the manifest says ->
outputs ``teacher_0..2``, ``student_0..2`` (B, C_s, h_s, w_s). Exported with the dynamo
exporter (``torch.onnx.export(dynamo=True)``) at batch 2 so the batch dimension stays
symbolic (a batch-1 trace would let the exporter specialise it), with the weights inside
the .onnx file (RD models are far below protobuf's 2 GB limit).

``dtype=torch.float16`` gives the strongly typed FP16 graph TensorRT builds from: the input
stays float32 and is cast inside the graph, the features come out in float16.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from ..engine_format import FEATURE_NAMES

log = logging.getLogger("cdd_engine.export")
INPUT_NAME = "image"
EXPORT_BATCH = 2  # >= 2: at batch 1 the exporter may specialise the batch dimension to a constant


class FeatureNet(nn.Module):
    """``forward(image (B,3,H,W)) -> (teacher_0, teacher_1, teacher_2, student_0, student_1, student_2)``."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        teacher, student = self.model(image.to(self.dtype))
        return (*teacher, *student)


@contextlib.contextmanager
def _quiet_exporter_logs():
    """The dynamo exporter logs progress and 'torchvision is not installed' at INFO/WARNING: hide them."""
    names = ("torch.onnx", "onnxscript", "onnx_ir")
    saved = {n: logging.getLogger(n).level for n in names}
    printed = io.StringIO()  # it also prints its progress lines to stdout
    try:
        for n in names:
            logging.getLogger(n).setLevel(logging.ERROR)
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        log.debug("torch.onnx.export said:\n%s", printed.getvalue())
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


def export_onnx(model: nn.Module, path: str | os.PathLike, *, image_size: Sequence[int] | None = None,
                max_batch: int = 32, dtype: torch.dtype = torch.float32, opset: int | None = None) -> Path:
    """Export ``model`` (an RDModel, any device) to ``path``; returns the path.

    Args:
        image_size: (H, W); defaults to ``model.image_size``.
        max_batch: upper bound of the symbolic batch dimension (the engine's max batch).
        dtype: float32 (default) or float16 (FP16 features for TensorRT's strongly typed build).
        opset: ONNX opset; None lets the exporter choose (18 with torch 2.13).
    """
    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"dtype must be torch.float32 or torch.float16, got {dtype}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    h, w = tuple(image_size) if image_size is not None else tuple(model.image_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    param = next(model.parameters())
    if param.device.type != "cpu" or param.dtype != dtype:
        # Export on the CPU in the graph's dtype, from a copy: the caller's model stays as it was.
        model = copy.deepcopy(model).to("cpu", dtype)
    net = FeatureNet(model, dtype).eval()
    example = torch.randn(EXPORT_BATCH, 3, h, w, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=max(max_batch, EXPORT_BATCH))
    kwargs = {} if opset is None else {"opset_version": opset}
    with warnings.catch_warnings(), torch.no_grad(), _quiet_exporter_logs():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter; real errors still raise
        torch.onnx.export(net, (example,), str(path), dynamo=True, dynamic_shapes={"image": {0: batch}},
                          input_names=[INPUT_NAME], output_names=list(FEATURE_NAMES), external_data=False,
                          verbose=False, **kwargs)
    check_onnx(path)
    return path


def check_onnx(path: str | os.PathLike) -> None:
    """onnx.checker on the file plus the interface this package relies on (names, ranks, dynamic batch)."""
    import onnx

    onnx.checker.check_model(str(path))
    proto = onnx.load(str(path), load_external_data=False)
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    if inputs != [INPUT_NAME] or outputs != list(FEATURE_NAMES):
        raise ValueError(f"{path}: expected input ['image'] and outputs {list(FEATURE_NAMES)}, "
                         f"got {inputs} and {outputs}")
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if not dim0.dim_param:
        raise ValueError(f"{path}: the batch dimension of 'image' is fixed to {dim0.dim_value}, expected symbolic")


def non_finite_initializers(path: str | os.PathLike) -> list[str]:
    """Names of the graph's constant tensors holding NaN/inf. The exporter folds BatchNorm into the
    convolutions, so statistics that are finite but invalid (a negative variance) surface here."""
    import onnx
    from onnx import numpy_helper

    bad = []
    for init in onnx.load(str(path)).graph.initializer:
        a = numpy_helper.to_array(init)
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            bad.append(init.name)
    return bad


def verify_onnx(model: nn.Module, path: str | os.PathLike, *, batch: int = 3, seed: int = 0,
                rtol: float = 1e-4) -> float:
    """Run the ONNX file with onnxruntime (CPU) and the torch model on the same random images.

    ``batch`` differs from the export batch on purpose (the dynamic dimension must work).
    Returns the largest error of any output relative to that output's max |value|; raises
    ValueError above ``rtol`` (fp32 graphs land near 1e-6; the budget leaves room for
    onnxruntime's different convolution algorithms).
    """
    import onnxruntime as ort

    if model.training:
        raise ValueError("verify_onnx needs the model in eval mode (BatchNorm statistics are frozen in the graph)")
    h, w = model.image_size
    x = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))
    param = next(model.parameters())
    with torch.no_grad():
        teacher, student = model(x.to(param.device, param.dtype))
    expected = [f.float().cpu().numpy() for f in (*teacher, *student)]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(list(FEATURE_NAMES), {INPUT_NAME: x.numpy()})
    worst = 0.0
    for name, e, g in zip(FEATURE_NAMES, expected, got):
        if g.shape != e.shape:
            raise ValueError(f"{path}: output {name} has shape {g.shape}, torch gives {e.shape}")
        rel = float(np.abs(g.astype(np.float64) - e).max() / max(np.abs(e).max(), 1e-30))
        worst = max(worst, rel)
        if not rel <= rtol:
            raise ValueError(f"{path}: output {name} differs from torch by {rel:.2e} relative (limit {rtol:.0e})")
    log.info("ONNX %s matches torch within %.2e relative (onnxruntime, batch %d)", path, worst, batch)
    return worst
