"""AOTInductor backend: the network compiled ahead of time into ``model.pt2`` (export/aoti.py).

The package is loaded with ``torch._inductor.aoti_load_package`` (milliseconds: the kernels are
already compiled) after engine.json's ``aoti`` section is checked against this process: the
device kind and the exact torch version it was compiled for, else an EngineFormatError saying
to rebuild. The package file is checked as a zip archive (every member's CRC) before it is
opened, so a damaged package is an EngineFormatError, never a crash in the loader.

CPU: features from the package's C++/OpenMP kernels, the anomaly map by
:class:`~cdd_engine.runtime.postprocess.FastAnomalyMap` (separable matmuls).

CUDA (NOT RUN HERE: no GPU on the development and CI machines; written against the documented
torch CUDA API): the fused Triton pre-processing, the package and the fused Triton anomaly map
are captured together in CUDA graphs per batch bucket (runtime/cuda_graphs.py), fed from pinned
host buffers on the engine's own streams; ``score_uint8`` is that path and ``Engine.score`` takes
it for uint8 frame batches. fp32 packages run with TF32 off (the 1e-5 contract; cuDNN's TF32
default measured 1.1e-4 on WRN50, issue 13), ``tf32`` packages with it on, each call setting
and restoring the process-wide flags.
"""
from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

from ...engine_format import check_aoti_runtime
from ...errors import BackendUnavailable, EngineFormatError
from ...export.aoti import PACKAGE_FILE
from ..cuda_graphs import precision_context, scorer_for
from ..postprocess import FastAnomalyMap

log = logging.getLogger("cdd_engine.runtime")


def check_package(path: Path) -> None:
    """A readable zip archive whose members all pass their CRC (an AOTInductor package is one):
    bytes damaged after the build (the manifest's hash re-written to match) are refused here, before
    the loader extracts and dlopens them."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
            names = z.namelist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise EngineFormatError(f"{path}: not a readable AOTInductor package ({type(e).__name__}: {e}); rebuild "
                                f"the engine") from e
    if bad is not None:
        raise EngineFormatError(f"{path}: member {bad!r} of the AOTInductor package is corrupt (CRC mismatch); "
                                f"rebuild the engine")
    # the package model "model" (the contract's name): its compiled wrapper library
    if not any("/data/aotinductor/model/" in n and n.endswith(".so") for n in names):
        raise EngineFormatError(f"{path}: the archive holds no compiled model named 'model' ({len(names)} members); "
                                f"not an AOTInductor package of this engine format: rebuild the engine")


def load_package(path: Path, device: torch.device) -> Any:
    """``torch._inductor.aoti_load_package`` with every failure as an EngineFormatError."""
    check_package(path)
    try:
        from torch._inductor import aoti_load_package
    except ImportError as e:  # pragma: no cover - part of torch >= 2.6
        raise BackendUnavailable(f"this torch ({torch.__version__}) has no AOTInductor loader: {e}") from e
    index = device.index if device.type == "cuda" and device.index is not None else -1
    try:
        return aoti_load_package(str(path), device_index=index)
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError/OSError/KeyError from the package's contents
        raise EngineFormatError(f"{path}: the AOTInductor package cannot be loaded ({type(e).__name__}: {e}); "
                                f"rebuild the engine with this torch") from e


class AOTIBackend:
    """``score_batch(x (B,3,H,W) float32) -> (maps (B,H,W), scores (B,))`` float32 tensors on ``device``.

    Args:
        device: "cpu" or "cuda[:i]"; default the device the package was compiled for (a package
            runs only there).
        use_triton: Triton pre-processing and anomaly map (default: on CUDA when the kernels import;
            True on the CPU runs them under TRITON_INTERPRET=1, for tests).
        num_threads: CPU: torch/OpenMP threads of this process.
        cuda_graphs: CUDA: capture the uint8 path per batch bucket (default True).
    """

    name = "aoti"

    def __init__(self, engine_dir: str | os.PathLike, manifest: dict, *, device: str | torch.device | None = None,
                 use_triton: bool | None = None, num_threads: int | None = None,
                 cuda_graphs: bool | None = None) -> None:
        aoti = manifest["aoti"]
        self.device = torch.device(device or aoti["device"])
        check_aoti_runtime(manifest, self.device.type)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("this aoti package runs on CUDA but torch.cuda.is_available() is False here")
        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.manifest = manifest
        self.precision = manifest["precision"]
        self.max_batch = int(manifest["max_batch"])
        self.image_size = tuple(manifest["image_size"])
        self._feature_names = [f["name"] for f in manifest["features"]]
        self._feature_shapes = [tuple(f["shape"]) for f in manifest["features"]]
        self._am = am = manifest["anomaly_map"]
        self.post = FastAnomalyMap(self.image_size, am["mode"], am["sigma"], am["truncate"], am["eps"])
        self.path = Path(engine_dir) / PACKAGE_FILE
        self.model = load_package(self.path, self.device)
        # the package's contract: contiguous NCHW float32 (it converts to channels-last inside)
        self.input_memory_format = torch.contiguous_format
        from .torch_backend import _kernels_or_none, import_kernels

        if use_triton is None:
            use_triton = self.device.type == "cuda" and _kernels_or_none() is not None
        # on the CPU only when forced (the kernels then run under TRITON_INTERPRET=1): for tests of
        # the exact function a CUDA graph captures (_score_frames)
        self.kernels = import_kernels() if use_triton else None
        self.fused_preprocess: Callable[[torch.Tensor, str], torch.Tensor] | None = (
            self._triton_preprocess if self.kernels is not None else None)
        self.scorer = scorer_for(self._score_frames, self.device, self.max_batch, self.kernels, cuda_graphs,
                                 self._precision_mode)

    def _precision_mode(self) -> Any:
        return precision_context(self.device, self.precision)

    def _triton_preprocess(self, frames: torch.Tensor, pixel_format: str) -> torch.Tensor:
        inp = self.manifest["input"]
        return self.kernels.fused_preprocess(frames.to(self.device, non_blocking=True), self.image_size, inp["mean"],
                                             inp["std"], pixel_format, torch.float32)

    def _run(self, x: torch.Tensor) -> list[torch.Tensor]:
        n = int(x.shape[0])
        if not 1 <= n <= self.max_batch:
            raise ValueError(f"the aoti package takes batches of 1..{self.max_batch} (max_batch), got {n}")
        if tuple(x.shape[1:]) != (3, *self.image_size):
            raise ValueError(f"input must be (B, 3, {self.image_size[0]}, {self.image_size[1]}), got {tuple(x.shape)}")
        x = x.to(self.device, torch.float32).contiguous()
        with self._precision_mode():
            outs = list(self.model(x))
        if len(outs) != len(self._feature_names):
            raise EngineFormatError(f"{self.path}: the package returned {len(outs)} outputs, the engine needs six "
                                    f"(teacher_0..2, student_0..2)")
        # engine.json's shapes are not covered by the file hashes (the C++ reader checks the same)
        for name, f, want in zip(self._feature_names, outs, self._feature_shapes):
            if tuple(f.shape[1:]) != want or f.dtype != torch.float32:
                raise EngineFormatError(f"{self.path}: the package's feature {name} is {tuple(f.shape[1:])} "
                                        f"{f.dtype}, engine.json says {list(want)} float32")
        return outs

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.inference_mode():
            return self._run(x)

    def _map(self, f: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kernels is not None:
            with self._precision_mode():
                return self.kernels.fused_anomaly_map(f[:3], f[3:], self.image_size, self._am["mode"],
                                                      self._am["sigma"])
        return self.post(f[:3], f[3:])

    def score_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            maps, scores = self._map(self._run(x))
        return maps.float(), scores.float()

    def _score_frames(self, frames: torch.Tensor, pixel_format: str) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (b, h, w, c) on the device -> (maps, scores): what a CUDA graph captures."""
        with torch.inference_mode():
            return self._map(self._run(self._triton_preprocess(frames, pixel_format)))

    def score_uint8(self, frames: torch.Tensor, pixel_format: str, want_maps: bool = True) -> Any:
        """CUDA graphs path (NOT RUN HERE: no GPU): uint8 host frames (N, h, w, c) of one size, any
        N -> (scores (N,), maps (N, H, W) or None) numpy. None when this backend has no such path."""
        if self.scorer is None:
            return None
        return self.scorer.score(frames, pixel_format, self.max_batch, want_maps)
