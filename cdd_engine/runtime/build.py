"""``build(checkpoint) -> Engine``: turn a run directory (or an RDModel) into an engine directory.

Backends: "openvino" (CPU: model.onnx + model.xml/.bin), "tensorrt" (NVIDIA GPU: model.onnx +
model.plan, built on the target machine), "torch" (model.safetensors, CPU or CUDA, the
reference network with the fast anomaly map). "auto" picks TensorRT when an NVIDIA GPU and
TensorRT are both present, otherwise OpenVINO, and logs which and why.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from ..anomaly_map import DEFAULT_SIGMA, EPS, TRUNCATE
from ..models import RDModel
from .engine import Engine, _check_threshold
from .engine_dir import BACKEND_FILES, FEATURE_NAMES, MANIFEST, make_manifest, write_manifest
from .errors import BackendUnavailable

log = logging.getLogger("cdd_engine.build")
BACKEND_CHOICES = ("auto", "openvino", "tensorrt", "torch")
PRECISIONS = {"openvino": ("fp32", "fp16"), "tensorrt": ("fp32", "fp16", "int8"), "torch": ("fp32", "fp16")}


def choose_backend(backend: str = "auto") -> tuple[str, str]:
    """Resolve "auto" -> (backend, reason). Other names are returned as asked."""
    if backend not in BACKEND_CHOICES:
        raise ValueError(f"backend must be one of {BACKEND_CHOICES}, got {backend!r}")
    if backend != "auto":
        return backend, "asked for"
    if not torch.cuda.is_available():
        return "openvino", "auto: no NVIDIA GPU visible to torch, so OpenVINO on the CPU"
    try:
        from ..export.tensorrt import import_tensorrt
        trt = import_tensorrt()
    except BackendUnavailable as e:
        return "openvino", f"auto: an NVIDIA GPU is present but TensorRT is not usable ({e}); OpenVINO on the CPU"
    return "tensorrt", f"auto: NVIDIA GPU {torch.cuda.get_device_name(0)} and TensorRT {trt.__version__}"


def _threshold_info(run_dir: Path) -> dict[str, Any]:
    from ..checkpoint import SCORES_FILE, load_threshold

    value = load_threshold(run_dir)
    info: dict[str, Any] = {"value": value, "source": "train_scores", "statistics": {}}
    try:
        doc = json.loads((run_dir / SCORES_FILE).read_text(encoding="utf-8"))
        rule = doc.get("rule", {})
        if isinstance(rule, dict) and rule.get("name"):
            info["source"] = f"train_scores:{rule['name']}"
        scores = np.array([e["score"] for e in doc.get("scores", []) if isinstance(e, dict) and "score" in e],
                          dtype=np.float64)
        if scores.size:
            info["statistics"] = {"n": int(scores.size), "mean": float(scores.mean()), "std": float(scores.std()),
                                  "median": float(np.median(scores)), "min": float(scores.min()),
                                  "max": float(scores.max())}
        if isinstance(rule, dict):
            info["statistics"].update({k: v for k, v in rule.items() if isinstance(v, (int, float))
                                       and not isinstance(v, bool)})
    except (OSError, ValueError, TypeError, KeyError):
        pass  # the value itself was validated by load_threshold; statistics are informative only
    return info


def _load_source(checkpoint: Any, teacher_weights: str | None, threshold: float | None,
                 map_mode: str | None, sigma: float | None) -> tuple[RDModel, dict, dict, dict]:
    """-> (model in eval mode on CPU, source_checkpoint, anomaly_map, threshold section)."""
    if isinstance(checkpoint, RDModel):
        model = checkpoint
        if threshold is None:
            raise ValueError("building from an RDModel object needs threshold=... (a run directory carries its "
                             "own threshold in train_scores.json)")
        source = {"path": None, "method": getattr(model, "method", "unknown"), "backbone": model.backbone}
        mode, sig = map_mode or "add", DEFAULT_SIGMA if sigma is None else sigma
        thr = {"value": _check_threshold(threshold), "source": "explicit", "statistics": {}}
    elif isinstance(checkpoint, (str, os.PathLike)):
        from ..checkpoint import load_checkpoint, read_config

        run_dir = Path(checkpoint)
        config = read_config(run_dir)
        model = load_checkpoint(run_dir, teacher_weights=teacher_weights)
        am = config["model"].get("anomaly_map", {})
        mode = map_mode or am.get("mode", "add")
        sig = sigma if sigma is not None else am.get("sigma", DEFAULT_SIGMA)
        source = {"path": str(run_dir.absolute()), "method": config.get("method", "unknown"),
                  "backbone": model.backbone, "epoch": config.get("epoch"),
                  "teacher_weights_id": config["model"].get("teacher_weights_id")}
        if threshold is None:
            thr = _threshold_info(run_dir)
        else:
            thr = {"value": _check_threshold(threshold), "source": "explicit", "statistics": {}}
    else:
        raise TypeError(f"checkpoint must be a run directory path or an RDModel, got {type(checkpoint).__name__}")
    am_section = {"mode": mode, "sigma": float(sig or 0.0), "truncate": TRUNCATE, "eps": EPS,
                  "upsample": "bilinear_align_corners", "blur_boundary": "reflect"}
    param = next(model.parameters())
    if param.device.type != "cpu" or param.dtype != torch.float32:
        model = copy.deepcopy(model).cpu().float()  # export on the CPU in fp32; leave the caller's model as it was
    return model.eval(), source, am_section, thr


def _feature_specs(model: RDModel, dtype: str) -> list[dict[str, Any]]:
    h, w = model.image_size
    with torch.no_grad():
        t, s = model(torch.zeros(1, 3, h, w))  # shapes only; the values are not used
    return [{"name": name, "shape": [int(d) for d in f.shape[1:]], "dtype": dtype}
            for name, f in zip(FEATURE_NAMES, (*t, *s))]


def _calibration_batches(model: RDModel, frames: Iterable[Any], max_batch: int) -> list[np.ndarray]:
    """uint8 frames -> pre-processed float32 batches for INT8 calibration."""
    from .frames import to_frames
    from .resize_normalize import Preprocessor

    pre = Preprocessor(model.image_size, *model.normalization)
    f = to_frames(list(frames))
    out = []
    for start in range(0, len(f), max_batch):
        stop = min(len(f), start + max_batch)
        out.append(pre.fill(f, start, stop, torch.empty(stop - start, 3, *model.image_size)).numpy().copy())
    return out


def build(checkpoint: str | os.PathLike | RDModel, backend: str = "auto", precision: str = "fp32",
          max_batch: int = 32, output_dir: str | os.PathLike | None = None, threshold: float | None = None, *,
          teacher_weights: str | None = None, map_mode: str | None = None, sigma: float | None = None,
          verify: bool = True, calibration_frames: Iterable[Any] | None = None, timing_cache: str | None = None,
          **engine_options: Any) -> Engine:
    """Build an engine directory from a checkpoint and load it.

    Args:
        checkpoint: run directory written by training, or an RDModel (then ``threshold`` is required).
        backend: "auto", "openvino", "tensorrt" or "torch".
        precision: "fp32" (all), "fp16" (tensorrt, torch on CUDA; openvino stores fp16 weights),
            "int8" (tensorrt, with ``calibration_frames``).
        max_batch: largest batch a backend call gets (Engine.score splits larger inputs).
        output_dir: engine directory; default ``<run_dir>/engine_<backend>_<precision>``, or a new
            temporary directory when building from a model object.
        threshold: overrides the checkpoint's threshold (stored in engine.json).
        teacher_weights: where the teacher's weights are, if not where training found them.
        map_mode, sigma: override the checkpoint's anomaly-map settings.
        verify: check the ONNX graph against torch with onnxruntime on random inputs.
        calibration_frames: uint8 frames (normal production images) for INT8 ranges.
        timing_cache: TensorRT timing cache file (read and updated).
        engine_options: passed to :class:`Engine` (device, num_threads, ...).

    Returns:
        the loaded :class:`Engine`.
    """
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
    name, reason = choose_backend(backend)
    log.info("backend %s (%s)", name, reason)
    if precision not in PRECISIONS[name]:
        raise ValueError(f"backend {name!r} supports precision {PRECISIONS[name]}, got {precision!r}")
    if name == "tensorrt":  # fail before the minutes of export if TensorRT cannot run here
        from ..export.tensorrt import _require_gpu, import_tensorrt
        import_tensorrt()
        _require_gpu()
    if precision == "int8" and calibration_frames is None:
        raise ValueError("precision 'int8' needs calibration_frames (a few dozen normal uint8 frames)")
    t0 = time.perf_counter()
    model, source, am, thr = _load_source(checkpoint, teacher_weights, threshold, map_mode, sigma)

    if output_dir is None:
        if source["path"] is not None:
            output_dir = Path(source["path"]) / f"engine_{name}_{precision}"
        else:
            output_dir = tempfile.mkdtemp(prefix="cdd_engine_")
            log.info("no output_dir given: writing the engine to %s", output_dir)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # an interrupted rebuild must not look valid

    feature_dtype = "float16" if precision == "fp16" and name in ("tensorrt", "torch") else "float32"
    extra: dict[str, Any] = {"build": {"backend_choice": reason}}
    if name == "torch":
        extra["model"] = _save_torch(model, out)
    else:
        from ..export.onnx import export_onnx, verify_onnx

        dtype = torch.float16 if precision == "fp16" and name == "tensorrt" else torch.float32
        onnx_path = export_onnx(model, out / "model.onnx", max_batch=max_batch, dtype=dtype)
        if verify and dtype == torch.float32:
            try:
                extra["build"]["onnx_max_rel_error_vs_torch"] = verify_onnx(model, onnx_path)
            except ImportError as e:  # onnxruntime is optional at run time (a dev extra)
                log.warning("ONNX graph not checked against torch: %s (pip install onnxruntime)", e)
                extra["build"]["onnx_check"] = f"skipped: {e}"
        if name == "openvino":
            from ..export.openvino import convert_to_openvino
            convert_to_openvino(onnx_path, out, precision=precision)
        else:
            from ..export.tensorrt import build_plan, quantize_qdq
            graph = onnx_path
            if precision == "int8":
                graph = quantize_qdq(onnx_path, out / "model_int8_qdq.onnx",
                                     _calibration_batches(model, calibration_frames, max_batch))
            build_plan(graph, out / "model.plan", image_size=model.image_size, max_batch=max_batch,
                       precision=precision, timing_cache=timing_cache)
            if graph != onnx_path:
                Path(graph).unlink()
    extra["build"]["seconds"] = round(time.perf_counter() - t0, 2)
    mean, std = model.normalization
    manifest = make_manifest(engine_dir=out, backend=name, precision=precision, max_batch=max_batch,
                             image_size=model.image_size, mean=mean, std=std,
                             features=_feature_specs(model, feature_dtype), anomaly_map=am, threshold=thr,
                             source_checkpoint=source, files=list(BACKEND_FILES[name]), extra=extra)
    write_manifest(out, manifest)
    log.info("engine written to %s in %.1f s", out, extra["build"]["seconds"])
    return Engine(out, **engine_options)


def _save_torch(model: RDModel, out: Path) -> dict[str, Any]:
    from .backends.torch_backend import save_model
    return save_model(model, out)
