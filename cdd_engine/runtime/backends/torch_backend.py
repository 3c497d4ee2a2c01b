"""PyTorch backend: the RD model in eager PyTorch, on the CPU or a CUDA GPU.

On the CPU the anomaly map is :class:`~cdd_engine.runtime.postprocess.FastAnomalyMap`
(separable matmuls). With ``use_triton`` (the default on CUDA when the kernels import) the
Triton kernels of ``cdd_engine.kernels`` do the pre-processing (uint8 frames -> normalised
NCHW) and the fused anomaly map; on the CPU they can be forced for testing under
``TRITON_INTERPRET=1``. fp16 engines run the network in half precision on CUDA only.

On CUDA (NOT RUN HERE: no GPU on the development and CI machines): fp32 engines run with TF32
off for their calls (cuDNN's TF32 default measured 1.1e-4 against the 1e-5 contract on WRN50,
issue 13), ``tf32`` engines with it on; the process-wide flags are restored after each call.
With the Triton kernels, uint8 frame batches are scored through CUDA graphs captured per batch
bucket (runtime/cuda_graphs.py; ``cuda_graphs=False`` turns that off).

The engine directory holds ``model.safetensors`` (the full RDModel state dict, teacher
included) and engine.json's ``model`` section (backbone + student shape), so loading needs
no checkpoint, no teacher weights file and no pickle.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

from ...models import RDModel, Student, build_teacher
from ...models.teachers import RANDOM
from ...errors import BackendUnavailable, EngineFormatError
from ..cuda_graphs import precision_context, scorer_for
from ..postprocess import FastAnomalyMap

WEIGHTS_FILE = "model.safetensors"


def import_kernels() -> Any:
    """The Triton kernels (cdd_engine.kernels); BackendUnavailable when Triton is not installed."""
    try:
        from ... import kernels
        kernels.fused_anomaly_map, kernels.fused_preprocess  # the lazy attributes import Triton itself
    except ImportError as e:
        raise BackendUnavailable(f"Triton kernels are not available ({e}; pip install 'cdd-engine[triton]')") from e
    return kernels


def student_config(model: RDModel) -> dict[str, Any]:
    """The student's shape, enough to rebuild it: channels, width_mult, bottleneck/decoder blocks."""
    from ...models.teachers import teacher_spec

    return {"channels": [int(c) for c in model.teacher.stage_channels],
            "width_mult": int(teacher_spec(model.backbone).width_mult),
            "bottleneck_blocks": len(model.student.bottleneck.embed),
            "decoder_blocks": [len(s) for s in model.student.decoder.stages]}


def save_model(model: RDModel, engine_dir: str | os.PathLike) -> dict[str, Any]:
    """Write ``model.safetensors``; returns engine.json's ``model`` section."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(Path(engine_dir) / WEIGHTS_FILE), metadata={"format": "cdd-engine-torch"})
    return {"backbone": model.backbone, "student": student_config(model)}


MAX_WIDTH_MULT = 8
MAX_BLOCKS = 16  # per stage; the backbones of cdd_engine.models use at most 6


def _check_student(s: Any, manifest: dict) -> None:
    """The student's shape in engine.json: its channels are the teacher features' (features[0..2]),
    the multiplier and block counts small integers."""
    def small_int(v: Any, lo: int, hi: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi

    want = [f["shape"][0] for f in manifest["features"][:3]]
    if not isinstance(s, dict) or s.get("channels") != want:
        raise ValueError(f"model.student.channels must be the teacher features' channels {want}, "
                         f"got {s.get('channels') if isinstance(s, dict) else s!r}")
    if not small_int(s.get("width_mult"), 1, MAX_WIDTH_MULT):
        raise ValueError(f"model.student.width_mult must be an integer in [1, {MAX_WIDTH_MULT}], got "
                         f"{s.get('width_mult')!r}")
    blocks = s.get("decoder_blocks")
    if not small_int(s.get("bottleneck_blocks"), 0, MAX_BLOCKS) or not (
            isinstance(blocks, list) and len(blocks) == 3 and all(small_int(b, 0, MAX_BLOCKS) for b in blocks)):
        raise ValueError(f"model.student.bottleneck_blocks must be an integer and decoder_blocks 3 integers, each "
                         f"in [0, {MAX_BLOCKS}], got {s.get('bottleneck_blocks')!r} and {blocks!r}")


def load_model(engine_dir: str | os.PathLike, manifest: dict) -> RDModel:
    """Rebuild the RDModel of a torch engine directory (weights already hash-checked by read_manifest)."""
    from safetensors.torch import load_file

    spec = manifest.get("model")
    try:
        backbone = spec["backbone"]
        s = spec["student"]
        _check_student(s, manifest)  # sizes first: a huge block count would allocate or loop for minutes
        teacher, _ = build_teacher(backbone, RANDOM)
        student = Student(tuple(s["channels"]), width_mult=s["width_mult"], bottleneck_blocks=s["bottleneck_blocks"],
                          decoder_blocks=tuple(s["decoder_blocks"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise EngineFormatError(f"engine.json: the 'model' section a torch engine needs is missing or invalid "
                                f"({e!r})") from e
    inp = manifest["input"]
    model = RDModel(teacher, student, backbone, tuple(manifest["image_size"]), (tuple(inp["mean"]), tuple(inp["std"])))
    try:
        state = load_file(str(Path(engine_dir) / WEIGHTS_FILE))
        model.load_state_dict(state, strict=True)
    except Exception as e:  # safetensors header errors, missing/unexpected keys, shape mismatches
        raise EngineFormatError(f"{Path(engine_dir) / WEIGHTS_FILE}: does not fit the model in engine.json ({e})") from e
    return model.eval()


class TorchBackend:
    """``score_batch(x (B,3,H,W) float32) -> (maps (B,H,W), scores (B,))`` float32 tensors on ``device``."""

    name = "torch"

    def __init__(self, engine_dir: str | os.PathLike, manifest: dict, *, device: str | torch.device | None = None,
                 use_triton: bool | None = None, num_threads: int | None = None,
                 cuda_graphs: bool | None = None) -> None:
        self.device = torch.device(device or "cpu")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("device 'cuda' was asked for but torch.cuda.is_available() is False")
        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.manifest = manifest
        self.dtype = torch.float16 if manifest["precision"] == "fp16" else torch.float32
        if manifest["precision"] == "int8":
            raise EngineFormatError("the torch backend runs fp32 or fp16 engines, this one is int8")
        if manifest["precision"] in ("fp16", "tf32") and self.device.type != "cuda":
            raise BackendUnavailable(f"an {manifest['precision']} torch engine runs on CUDA only; load it with "
                                     f"device='cuda' or build an fp32 engine for the CPU")
        self.precision = manifest["precision"]
        self.model = load_model(engine_dir, manifest).to(self.device, self.dtype)
        am = manifest["anomaly_map"]
        self.image_size = tuple(manifest["image_size"])
        self._feature_names = [f["name"] for f in manifest["features"]]
        self._feature_shapes = [tuple(f["shape"]) for f in manifest["features"]]
        self._am = am
        if use_triton is None:
            use_triton = self.device.type == "cuda" and _kernels_or_none() is not None
        self.kernels = import_kernels() if use_triton else None
        self.post = FastAnomalyMap(self.image_size, am["mode"], am["sigma"], am["truncate"], am["eps"])
        # The network runs channels-last (NHWC) inputs faster in eager PyTorch: measured on 2 cores,
        # efficientnet_lite0 at 256² took 331 ms from a channels-last input vs 468 ms from NCHW.
        self.input_memory_format = torch.channels_last
        # Engine.score hands uint8 frames to this instead of its CPU pre-processing when set.
        self.fused_preprocess: Callable[[torch.Tensor, str], torch.Tensor] | None = (
            self._triton_preprocess if self.kernels is not None else None)
        self.scorer = scorer_for(self._score_frames, self.device, int(manifest["max_batch"]), self.kernels,
                                 cuda_graphs, self._precision_mode)

    def _precision_mode(self) -> Any:
        return precision_context(self.device, self.precision)

    def _triton_preprocess(self, frames: torch.Tensor, pixel_format: str) -> torch.Tensor:
        inp = self.manifest["input"]
        return self.kernels.fused_preprocess(frames.to(self.device), self.image_size, inp["mean"], inp["std"],
                                             pixel_format, self.dtype, channels_last=True)

    def _forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with self._precision_mode():
            t, s = self.model(x.to(self.device, self.dtype))
        # engine.json's shapes are not covered by the file hashes: an edited image_size or channel
        # count must not silently give a map of other features (the C++ reader checks the same)
        for name, f, want in zip(self._feature_names, (*t, *s), self._feature_shapes):
            if tuple(f.shape[1:]) != want:
                raise EngineFormatError(f"engine.json: the model's feature {name} has shape {tuple(f.shape[1:])} at "
                                        f"image_size {list(self.image_size)}, engine.json says {list(want)}")
        return t, s

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.inference_mode():
            t, s = self._forward(x)
        return [*t, *s]

    def score_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            t, s = self._forward(x)
            if self.kernels is not None:
                maps, scores = self.kernels.fused_anomaly_map(t, s, self.image_size, self._am["mode"],
                                                              self._am["sigma"])
            else:
                maps, scores = self.post(t, s)
        return maps.float(), scores.float()

    def _score_frames(self, frames: torch.Tensor, pixel_format: str) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (b, h, w, c) on the device -> (maps, scores): what a CUDA graph captures."""
        return self.score_batch(self._triton_preprocess(frames, pixel_format))

    def score_uint8(self, frames: torch.Tensor, pixel_format: str, want_maps: bool = True) -> Any:
        """CUDA graphs path (NOT RUN HERE: no GPU): uint8 host frames (N, h, w, c) of one size ->
        (scores (N,), maps (N, H, W) or None) numpy; None when this backend has no such path."""
        if self.scorer is None:
            return None
        return self.scorer.score(frames, pixel_format, int(self.manifest["max_batch"]), want_maps)


def _kernels_or_none() -> Any:
    try:
        return import_kernels()
    except BackendUnavailable:
        return None


__all__ = ["TorchBackend", "import_kernels", "save_model", "load_model", "student_config", "WEIGHTS_FILE"]
