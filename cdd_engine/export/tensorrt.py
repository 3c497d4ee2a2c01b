"""TensorRT plan builder (TensorRT 10 Python API) and the INT8 Q/DQ graph it can build from.

NOT RUN HERE: the development and CI machines have no TensorRT and no NVIDIA GPU, and
TensorRT cannot be installed on them (docs/where_it_runs.md). :func:`build_plan` is written against
NVIDIA's documented TensorRT 10 API and runs where ``import tensorrt`` works and a GPU is
present; elsewhere it raises :class:`BackendUnavailable` saying what is missing (tested).
:func:`quantize_qdq` uses onnxruntime only and does run here.

Precision follows the ONNX graph, not builder flags (TensorRT 10 deprecated and 11 removed
the FP16/INT8 flags): the network is created STRONGLY_TYPED, so

- ``fp32``: the fp32 graph; TF32 is switched off so features stay within fp32 tolerance;
- ``fp16``: the FP16 graph of ``export_onnx(dtype=torch.float16)`` (float32 input cast inside
  the graph, float16 features out);
- ``int8``: a graph with explicit QuantizeLinear/DequantizeLinear pairs from
  :func:`quantize_qdq` (symmetric int8, per-channel weights), the only INT8 route in
  strongly typed mode. ``build`` calibrates it on the same images as an OpenVINO INT8 engine
  (runtime/int8_guard.py ``plan_calibration``: the run's training images by default, seeded,
  ``calibration_size``) and runs the same accuracy guard on the built plan against the fp32 torch
  reference (held-out training images, AUROC with ``data``), refusing or falling back to fp32 the
  same way. NOT RUN HERE either: the plan needs TensorRT and a GPU.

One optimisation profile covers batches min..max with the kernels tuned for ``opt``; a
timing cache file makes rebuilds on the same GPU take seconds instead of minutes.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import BackendUnavailable, EngineError

log = logging.getLogger("cdd_engine.export")
MIN_TRT_MAJOR = 10
DEFAULT_WORKSPACE_BYTES = 4 << 30  # 4 GiB: WRN50 RD tactics at batch 32 fit well below it


def import_tensorrt():
    """Import ``tensorrt`` (>= 10) or raise BackendUnavailable saying what is missing."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendUnavailable(
            f"TensorRT is not installed: `import tensorrt` failed ({e}). Install TensorRT >= "
            f"{MIN_TRT_MAJOR} for your CUDA version (NVIDIA's `tensorrt` Python wheel) on a machine with an "
            f"NVIDIA GPU, or build with backend='openvino' (CPU) or backend='torch'.") from e
    major = int(str(getattr(trt, "__version__", "0")).split(".")[0] or 0)
    if major < MIN_TRT_MAJOR:
        raise BackendUnavailable(f"TensorRT {trt.__version__} is too old: this builder needs TensorRT >= "
                                 f"{MIN_TRT_MAJOR} (strongly typed networks, execute_async_v3)")
    return trt


def require_gpu() -> None:
    """BackendUnavailable unless torch sees an NVIDIA GPU (build checks it before the export)."""
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("TensorRT needs an NVIDIA GPU, and torch.cuda.is_available() is False here "
                                 "(no GPU, no driver, or a CPU-only torch build)")


def build_plan(onnx_path: str | os.PathLike, plan_path: str | os.PathLike, *, image_size: Sequence[int],
               max_batch: int = 32, opt_batch: int | None = None, min_batch: int = 1, precision: str = "fp32",
               timing_cache: str | os.PathLike | None = None, workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
               optimization_level: int = 3) -> Path:
    """Build and serialise a TensorRT engine ("plan") for the ONNX graph; returns ``plan_path``.

    Args:
        onnx_path: graph with input ``image`` (B,3,H,W) float32 and a dynamic batch, in the
            precision wanted (fp32, fp16 graph, or Q/DQ int8 graph).
        image_size: (H, W) the profile fixes.
        min_batch, opt_batch, max_batch: the optimisation profile (opt defaults to min(8, max)).
        precision: "fp32", "fp16" or "int8" - says what the graph holds; only fp32 changes a
            flag (TF32 off).
        timing_cache: file read before and written after the build (created if missing).
        optimization_level: builder optimisation level 0-5 (3 is TensorRT's default).

    Raises:
        BackendUnavailable: TensorRT or a GPU is missing.
        EngineError: the parser or the builder failed (their messages are included).
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"precision must be 'fp32', 'fp16' or 'int8', got {precision!r}")
    if not 1 <= min_batch <= max_batch:
        raise ValueError(f"need 1 <= min_batch <= max_batch, got {min_batch}, {max_batch}")
    opt_batch = min(8, max_batch) if opt_batch is None else opt_batch
    if not min_batch <= opt_batch <= max_batch:
        raise ValueError(f"need min_batch <= opt_batch <= max_batch, got {min_batch}, {opt_batch}, {max_batch}")
    trt = import_tensorrt()
    require_gpu()
    h, w = int(image_size[0]), int(image_size[1])

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    config.builder_optimization_level = int(optimization_level)
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 convolutions would miss the 1e-5 fp32 tolerance
    profile = builder.create_optimization_profile()
    profile.set_shape("image", (min_batch, 3, h, w), (opt_batch, 3, h, w), (max_batch, 3, h, w))
    config.add_optimization_profile(profile)

    cache_path = Path(timing_cache) if timing_cache is not None else None
    cache_bytes = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    plan_path = Path(plan_path)
    with open(plan_path, "wb") as f:
        f.write(serialized)
    if cache_path is not None:
        with open(cache_path, "wb") as f:
            f.write(config.get_timing_cache().serialize())
    log.info("TensorRT %s plan %s built (batch %d..%d, opt %d)", precision, plan_path, min_batch, max_batch, opt_batch)
    return plan_path


def quantize_qdq(onnx_path: str | os.PathLike, out_path: str | os.PathLike,
                 calibration: Iterable[np.ndarray], *, per_channel: bool = True) -> Path:
    """Insert explicit int8 QuantizeLinear/DequantizeLinear pairs (static post-training quantisation).

    Uses onnxruntime's static quantiser in QDQ format with symmetric int8 activations and
    weights (zero points 0, which TensorRT requires) and min/max calibration.

    Args:
        calibration: batches of pre-processed images, each (B, 3, H, W) float32 - a few dozen
            normal production images are enough for min/max ranges.
    Returns:
        ``out_path``, a graph :func:`build_plan` takes with precision="int8" (and onnxruntime
        and OpenVINO can run).
    """
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    batches = [np.ascontiguousarray(b, dtype=np.float32) for b in calibration]
    if not batches:
        raise ValueError("quantize_qdq needs at least one calibration batch")
    for b in batches:
        if b.ndim != 4 or b.shape[1] != 3:
            raise ValueError(f"calibration batches must be (B, 3, H, W) float32, got shape {b.shape}")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self):
            b = next(self._it, None)
            return None if b is None else {"image": b}

    quantize_static(str(onnx_path), str(out_path), _Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=per_channel, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    return Path(out_path)
