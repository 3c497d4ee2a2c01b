"""TensorRT backend (NVIDIA GPUs): the serialised plan for the network, Triton kernels around it.

NOT RUN HERE: no TensorRT and no GPU on the development and CI machines (docs/where_it_runs.md).
Written against the documented TensorRT 10 Python API (``Runtime.deserialize_cuda_engine``,
named I/O tensors, ``IExecutionContext.set_input_shape`` / ``set_tensor_address`` /
``execute_async_v3``). Loading it without TensorRT or a GPU raises BackendUnavailable saying
which is missing (tested).

Data stays on the GPU: frames -> ``kernels.fused_preprocess`` -> the plan (inputs and outputs
are torch CUDA tensors whose pointers TensorRT reads and writes on torch's current stream) ->
``kernels.fused_anomaly_map`` (fp16 features are read as they are) -> maps and scores.
One execution context per thread (TensorRT contexts are not thread-safe; the engine is).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import torch

from ...export.tensorrt import import_tensorrt
from ...engine_format import FEATURE_NAMES
from ...errors import BackendUnavailable, EngineError, EngineFormatError
from ..postprocess import FastAnomalyMap
from .torch_backend import import_kernels

PLAN_FILE = "model.plan"


def _torch_dtype(trt: Any, dt: Any) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
    if hasattr(trt.DataType, "BF16"):
        table[trt.DataType.BF16] = torch.bfloat16
    if dt not in table:
        raise EngineError(f"TensorRT output dtype {dt} is not one this runtime reads (float32/float16/bfloat16)")
    return table[dt]


class TensorRTBackend:
    """``score_batch(x (B,3,H,W) float32 CUDA tensor) -> (maps (B,H,W), scores (B,))`` on the GPU."""

    name = "tensorrt"

    def __init__(self, engine_dir: str | os.PathLike, manifest: dict, *, device: str | torch.device | None = None,
                 use_triton: bool | None = None, num_threads: int | None = None) -> None:
        self.trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise BackendUnavailable("a TensorRT engine needs an NVIDIA GPU; torch.cuda.is_available() is False")
        self.device = torch.device(device or "cuda")
        if self.device.type != "cuda":
            raise BackendUnavailable(f"a TensorRT engine runs on CUDA devices, got device {self.device}")
        self.manifest = manifest
        self.image_size = tuple(manifest["image_size"])
        self._am = manifest["anomaly_map"]
        logger = self.trt.Logger(self.trt.Logger.WARNING)
        with torch.cuda.device(self.device):
            self.runtime = self.trt.Runtime(logger)
            self.engine = self.runtime.deserialize_cuda_engine((Path(engine_dir) / PLAN_FILE).read_bytes())
        if self.engine is None:
            raise EngineError(f"{Path(engine_dir) / PLAN_FILE}: TensorRT could not deserialise the plan (built "
                              f"with another TensorRT version or for another GPU? rebuild it on this machine)")
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        missing = {"image", *FEATURE_NAMES} - names
        if missing:
            raise EngineError(f"TensorRT plan lacks I/O tensors {sorted(missing)}")
        self._out_dtypes = {n: _torch_dtype(self.trt, self.engine.get_tensor_dtype(n)) for n in FEATURE_NAMES}
        if use_triton is False:
            self.kernels = None
        else:
            try:
                self.kernels = import_kernels()
            except BackendUnavailable:
                if use_triton:
                    raise
                self.kernels = None
        self.post = FastAnomalyMap(self.image_size, self._am["mode"], self._am["sigma"], self._am["truncate"],
                                   self._am["eps"])
        self.fused_preprocess = self._triton_preprocess if self.kernels is not None else None
        self._local = threading.local()

    def _context(self) -> Any:
        ctx = getattr(self._local, "context", None)
        if ctx is None:
            ctx = self._local.context = self.engine.create_execution_context()
        return ctx

    def _triton_preprocess(self, frames: torch.Tensor, pixel_format: str) -> torch.Tensor:
        inp = self.manifest["input"]
        return self.kernels.fused_preprocess(frames.to(self.device), self.image_size, inp["mean"], inp["std"],
                                             pixel_format, torch.float32)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        try:
            return self._features(x)
        except BaseException:
            self._local.context = None  # a failed call's execution context is not reused
            raise

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.to(self.device, torch.float32).contiguous()
        ctx = self._context()
        if not ctx.set_input_shape("image", tuple(x.shape)):
            raise ValueError(f"batch shape {tuple(x.shape)} is outside the plan's optimisation profile "
                             f"(max batch {self.manifest['max_batch']})")
        ctx.set_tensor_address("image", x.data_ptr())
        outs = []
        for name, f in zip(FEATURE_NAMES, self.manifest["features"]):
            shape = tuple(ctx.get_tensor_shape(name))
            if shape[1:] != tuple(f["shape"]):  # engine.json's shapes are not covered by the hashes
                raise EngineFormatError(f"TensorRT plan output {name} has shape {shape}, engine.json says "
                                        f"(B, {', '.join(str(v) for v in f['shape'])})")
            out = torch.empty(shape, dtype=self._out_dtypes[name], device=self.device)
            ctx.set_tensor_address(name, out.data_ptr())
            outs.append(out)
        stream = torch.cuda.current_stream(self.device)
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise EngineError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        return outs

    def score_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        if self.kernels is not None:
            return self.kernels.fused_anomaly_map(f[:3], f[3:], self.image_size, self._am["mode"], self._am["sigma"])
        return self.post(f[:3], f[3:])
