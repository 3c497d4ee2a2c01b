"""``build(checkpoint) -> Engine``: turn a run directory (or an RDModel) into an engine directory.

Backends: "openvino" (CPU: model.onnx + model.xml/.bin), "tensorrt" (NVIDIA GPU: model.onnx +
model.plan, built on the target machine), "torch" (model.safetensors, CPU or CUDA, the
reference network with the fast anomaly map), "aoti" (model.pt2: the network compiled ahead of
time by AOTInductor for the CPU or a CUDA GPU, ``device=`` at build; export/aoti.py). "auto" picks TensorRT when an NVIDIA GPU and
TensorRT are both present, otherwise OpenVINO, and logs which and why.

A build fails closed: options are checked against the shared limits (cdd_engine/limits.py)
before any work, the weights and a probe batch through the built engine must be finite, and the
engine is written beside its target and swapped in only when complete (runtime/atomic_dir.py),
so a failed or interrupted rebuild leaves the previous engine as it was.

INT8 (``precision="int8"``; OpenVINO through NNCF, TensorRT through a Q/DQ graph): calibrated on
a seeded choice of the run's own training images (or the images given), then the built engine
must pass an accuracy guard against the fp32 torch reference on held-out images
(runtime/int8_guard.py) before it is swapped in; a failed guard refuses the build
(AccuracyGuardError) or, with ``int8_fallback=True``, builds fp32 and records the failed guard.
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

from .. import limits
from ..anomaly_map import DEFAULT_SIGMA, EPS, TRUNCATE
from ..models import RDModel
from . import atomic_dir
from .engine import Engine, check_threshold
from ..engine_format import BACKEND_FILES, FEATURE_NAMES, make_manifest, write_manifest
from ..errors import AccuracyGuardError, BackendUnavailable, NonFiniteOutputError

log = logging.getLogger("cdd_engine.build")
BACKEND_CHOICES = ("auto", "openvino", "tensorrt", "torch", "aoti")
PRECISIONS = {"openvino": ("fp32", "fp16", "int8"), "tensorrt": ("fp32", "fp16", "int8"),
              "torch": ("fp32", "fp16", "tf32"), "aoti": ("fp32", "fp16", "bf16", "tf32")}


def default_precision(backend: str, device: Any) -> str:
    """``precision=None``: fp16 for an aoti engine on CUDA (the GPU default: half the bytes and
    tensor cores; maps within 2e-3 of the fp32 reference, docs/engine_format.md), else fp32."""
    on_cuda = device is not None and torch.device(device).type == "cuda"
    return "fp16" if backend == "aoti" and on_cuda else "fp32"


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
        thr = {"value": check_threshold(threshold), "source": "explicit", "statistics": {}}
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
            thr = {"value": check_threshold(threshold), "source": "explicit", "statistics": {}}
    else:
        raise TypeError(f"checkpoint must be a run directory path or an RDModel, got {type(checkpoint).__name__}")
    am_section = {"mode": mode, "sigma": float(sig or 0.0), "truncate": TRUNCATE, "eps": EPS,
                  "upsample": "bilinear_align_corners", "blur_boundary": "reflect"}
    param = next(model.parameters())
    if param.device.type != "cpu" or param.dtype != torch.float32:
        model = copy.deepcopy(model).cpu().float()  # export on the CPU in fp32; leave the caller's model as it was
    return model.eval(), source, am_section, thr


def _settings_problems(image_size: Any, mean: Any, std: Any, mode: Any, sigma: Any, threshold: Any,
                       max_batch: Any) -> list[str]:
    """The shared engine limits (cdd_engine/limits.py) applied to what a build would write."""
    out = []
    if not limits.is_int(max_batch) or not limits.MAX_BATCH[0] <= max_batch <= limits.MAX_BATCH[1]:
        out.append(f"max_batch must be a positive integer, at most {limits.MAX_BATCH[1]}, got {max_batch!r}")
    size_problem = limits.image_size_problem(list(image_size) if isinstance(image_size, tuple) else image_size)
    if size_problem:
        out.append(size_problem)
    else:
        from ..training.config import check_image_size
        try:
            check_image_size(tuple(image_size))  # the backbones' size rule
        except (TypeError, ValueError) as e:
            out.append(str(e))
    out += limits.normalization_problems(mean, std)
    if mode not in ("add", "mul"):
        out.append(f"anomaly-map mode must be 'add' or 'mul', got {mode!r}")
    out += limits.anomaly_map_problems(sigma, TRUNCATE, EPS)
    if not limits.is_number(threshold) or threshold < 0:
        out.append(f"threshold must be a finite number >= 0 (scores are sums of cosine distances), got {threshold!r}")
    return out


def _check_settings(checkpoint: Any, max_batch: Any, threshold: Any, map_mode: Any, sigma: Any) -> None:
    """Refuse, before any work, settings that would write an engine the readers refuse or cannot run."""
    if isinstance(checkpoint, RDModel):
        size, (mean, std) = checkpoint.image_size, checkpoint.normalization
        mode, sig = map_mode or "add", DEFAULT_SIGMA if sigma is None else sigma
        where = "the model"
    elif isinstance(checkpoint, (str, os.PathLike)):
        from ..checkpoint import load_threshold, read_config

        m = read_config(checkpoint)["model"]  # the run directory's own checks (checkpoint.py) come first
        am = m.get("anomaly_map") or {}
        size, mean, std = m.get("image_size"), m["normalization"]["mean"], m["normalization"]["std"]
        mode = map_mode or am.get("mode", "add")
        sig = sigma if sigma is not None else am.get("sigma", DEFAULT_SIGMA)
        if threshold is None:
            threshold = load_threshold(checkpoint)
        where = f"checkpoint {checkpoint} (config.json / train_scores.json) with the options given"
    else:
        raise TypeError(f"checkpoint must be a run directory path or an RDModel, got {type(checkpoint).__name__}")
    if threshold is None:
        threshold = 0.0  # an RDModel without a threshold is refused by _load_source with its own message
    elif isinstance(threshold, (np.floating, np.integer)):
        threshold = float(threshold)
    problems = _settings_problems(size, mean, std, mode, sig, threshold, max_batch)
    if problems:
        raise ValueError(f"cannot build an engine from {where}: " + "; ".join(problems))


def _check_weights_finite(model: RDModel) -> None:
    """A diverged run (one NaN weight) would score every frame "normal": refuse it, naming the tensor."""
    for name, t in model.state_dict().items():
        if t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise NonFiniteOutputError(
                    f"refusing to build: weight tensor {name!r} {tuple(t.shape)} holds {bad} non-finite "
                    f"value(s) (NaN/inf): the training diverged or the checkpoint is damaged")


PROBE_SEED = 0


def _probe(engine_dir: Path, engine_options: dict[str, Any]) -> None:
    """Score a seeded random uint8 batch with the new engine (Python runtime: it also returns the
    features); any non-finite feature, map or score refuses the build, whatever ``verify`` says."""
    opts = {k: engine_options[k] for k in ("device",) if engine_options.get(k) is not None}
    engine = Engine(engine_dir, runtime="python", **opts)  # reads engine.json, checks every file's hash
    h, w = engine.image_size
    n = min(2, engine.max_batch)
    frames = np.random.default_rng(PROBE_SEED).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
    for name, f in zip(FEATURE_NAMES, engine.features(frames)):
        if not torch.isfinite(f).all():
            raise NonFiniteOutputError(f"refusing to build: the built engine's feature {name} is non-finite "
                                       f"(NaN/inf) on a random probe batch: the model produced non-finite output "
                                       f"(diverged model, bad weights or an overflow at this precision)")
    try:
        result = engine.score(frames)
    except NonFiniteOutputError as e:
        raise NonFiniteOutputError(f"refusing to build: on a random probe batch {e}") from e
    if not (np.isfinite(result.scores).all() and np.isfinite(result.maps).all()):
        raise NonFiniteOutputError("refusing to build: the built engine's scores or maps are non-finite (NaN/inf) "
                                   "on a random probe batch: the model produced non-finite output")


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


# Validation images of NNCF's accuracy control: the first ones of the (seeded) calibration order,
# not the guard's held-out images (the guard stays an independent check). 50: each quantizer
# group NNCF ranks costs a pass over them.
ACCURACY_CONTROL_IMAGES = 50


def _accuracy_control_inputs(model: RDModel, am: dict, calib: list[np.ndarray]) -> dict[str, Any]:
    """validation images + score function (network outputs of one image -> image score, the
    anomaly map of docs/anomaly_map.md) for OpenVINO INT8 with accuracy control."""
    from ..anomaly_map import anomaly_map
    from ..engine_format import FEATURE_NAMES

    def score(outputs: dict) -> float:
        feats = [torch.from_numpy(np.asarray(outputs[n], dtype=np.float32)) for n in FEATURE_NAMES]
        _, sc = anomaly_map(feats[:3], feats[3:], tuple(model.image_size), am["mode"], am["sigma"])
        return float(sc[0])

    return {"validation": calib[:ACCURACY_CONTROL_IMAGES], "score_fn": score}


def build(checkpoint: str | os.PathLike | RDModel, backend: str = "auto", precision: str | None = None,
          max_batch: int = 32, output_dir: str | os.PathLike | None = None, threshold: float | None = None, *,
          teacher_weights: str | None = None, map_mode: str | None = None, sigma: float | None = None,
          verify: bool = True, calibration_frames: Iterable[Any] | None = None, timing_cache: str | None = None,
          overwrite: bool = False, winograd: bool = True, calibration_size: int = 300, calibration_seed: int = 0,
          int8_fallback: bool = False, guard: Any = None, data: str | os.PathLike | None = None,
          keep_fp32: str | None = None, quantization: dict[str, Any] | None = None,
          **engine_options: Any) -> Engine:
    """Build an engine directory from a checkpoint and load it.

    Args:
        checkpoint: run directory written by training, or an RDModel (then ``threshold`` is required).
        backend: "auto", "openvino", "tensorrt", "torch" or "aoti".
        precision: "fp32" (all), "fp16" (tensorrt, torch and aoti on CUDA; openvino stores fp16
            weights), "int8" (openvino: NNCF post-training quantization; tensorrt: a Q/DQ graph),
            calibrated and then checked by the accuracy guard (runtime/int8_guard.py), "bf16" (aoti,
            CPU or CUDA), "tf32" (torch and aoti on CUDA: fp32 storage, TF32 tensor-core math).
            None (default): "fp16" for aoti with ``device="cuda"``, else "fp32".
        max_batch: largest batch a backend call gets (Engine.score splits larger inputs).
        output_dir: engine directory; default ``<run_dir>/engine_<backend>_<precision>``, or a new
            temporary directory when building from a model object.
        threshold: overrides the checkpoint's threshold (stored in engine.json).
        teacher_weights: where the teacher's weights are, if not where training found them.
        map_mode, sigma: override the checkpoint's anomaly-map settings.
        verify: check the ONNX graph against torch with onnxruntime on random inputs. (The weights
            and a probe batch through the built engine are checked for NaN/inf either way.)
        calibration_frames: INT8: uint8 frames (normal production images) or a directory of image
            files; None (default) calibrates on the run's own training images (config.json's data
            set, the files train_scores.json lists), holding some out for the guard.
        calibration_size: INT8: at most this many calibration images (fewer when fewer exist).
        calibration_seed: INT8: seed of the calibration / guard image selection (a build is
            reproducible: same images, same seed -> same model files).
        int8_fallback: INT8: when the accuracy guard fails, build fp32 instead of refusing
            (engine.json then says fp32 and records the failed guard under "int8").
        guard: INT8: a :class:`~cdd_engine.runtime.int8_guard.GuardThresholds` (default thresholds
            when None).
        data: INT8: a labelled MVTec-layout data set; the guard then also compares image and pixel
            AUROC of the INT8 engine and the fp32 reference on its test images.
        keep_fp32: OpenVINO INT8: layers left in float32 ("none" by default, "teacher_first",
            "student_last", "student", "teacher"; export/quantize.py).
        quantization: OpenVINO INT8: NNCF settings, a dict with some of the keys "preset",
            "bias_correction", "activation_range", "keep_fp32" (export/quantize.py:
            QUANTIZATION_DEFAULTS; the measurements behind the defaults are there).
        timing_cache: TensorRT timing cache file (read and updated).
        overwrite: replace ``output_dir`` even when it is a non-empty directory that is not an
            engine (or holds files its engine.json does not list). An engine directory is always
            replaced as a whole, and only once the new engine is complete and verified.
        winograd: OpenVINO: rewrite the 3x3 convolutions with >= 256 channels as Winograd
            F(2x2, 3x3) (export/openvino.py); other backends ignore it.
        engine_options: passed to :class:`Engine` (device, num_threads, ...). For backend "aoti"
            ``device`` ("cpu" default, or "cuda") is also what the package is compiled for and is
            recorded in engine.json (an aoti package runs only on that device kind).

    Returns:
        the loaded :class:`Engine`.

    Raises:
        ValueError: an option or a checkpoint setting outside the limits of docs/engine_format.md.
        FileExistsError: ``output_dir`` holds something that is not an engine (see ``overwrite``).
        NonFiniteOutputError: NaN/inf in the weights or in the built engine's output.
        AccuracyGuardError: INT8 only: the engine failed the accuracy guard (and no fallback).
    """
    name, reason = choose_backend(backend)
    log.info("backend %s (%s)", name, reason)
    if precision is None:
        precision = default_precision(name, engine_options.get("device"))
    if precision not in PRECISIONS[name]:
        raise ValueError(f"backend {name!r} supports precision {PRECISIONS[name]}, got {precision!r}")
    if name == "aoti":  # before the minute of compilation: a device/precision pair the package cannot run
        from ..export.aoti import check_options
        check_options(precision, _aoti_device(engine_options.get("device")), max_batch)
    elif precision == "tf32" and torch.device(engine_options.get("device") or "cpu").type != "cuda":
        raise ValueError("precision 'tf32' runs on CUDA only: build with device='cuda', or use 'fp32' on the CPU")
    if name == "tensorrt":  # fail before the minutes of export if TensorRT cannot run here
        from ..export.tensorrt import import_tensorrt, require_gpu
        import_tensorrt()
        require_gpu()
    if not isinstance(winograd, bool):
        raise ValueError(f"winograd must be True or False, got {winograd!r}")
    if precision == "int8":
        thresholds = _check_int8_options(checkpoint, calibration_frames, calibration_size, calibration_seed,
                                         int8_fallback, guard, data, keep_fp32, quantization)
    elif calibration_frames is not None and name == "openvino":
        raise ValueError(f"calibration_frames are for precision 'int8', not {precision!r}")
    _check_settings(checkpoint, max_batch, threshold, map_mode, sigma)
    t0 = time.perf_counter()
    if output_dir is None:
        if isinstance(checkpoint, RDModel):
            output_dir = tempfile.mkdtemp(prefix="cdd_engine_")
            log.info("no output_dir given: writing the engine to %s", output_dir)
        else:
            output_dir = Path(checkpoint) / f"engine_{name}_{precision}"
    out = Path(output_dir).absolute()
    if out.is_symlink():
        out = Path(os.path.realpath(out))  # replace the directory it points to, not the link
    if not isinstance(checkpoint, RDModel):
        run = Path(os.path.realpath(checkpoint))
        if run == Path(os.path.realpath(out)) or Path(os.path.realpath(out)) in run.parents:
            raise ValueError(f"engine output {out} is or contains the checkpoint {checkpoint}: the engine replaces "
                             f"its output directory as a whole, so it would delete the run; choose another "
                             f"directory (default: RUN_DIR/engine_<backend>_<precision>)")
    atomic_dir.recover(out)
    atomic_dir.check_target(out, overwrite)

    model, source, am, thr = _load_source(checkpoint, teacher_weights, threshold, map_mode, sigma)
    _check_weights_finite(model)
    # The arguments that decide what is built, recorded as given under engine.json's "build".
    options: dict[str, Any] = {"backend": backend, "precision": precision, "max_batch": int(max_batch),
                               "threshold": None if threshold is None else float(threshold),
                               "map_mode": map_mode, "sigma": None if sigma is None else float(sigma),
                               "verify": bool(verify)}
    if name == "openvino":
        options["winograd"] = winograd and precision != "int8"  # never for int8 (export/quantize.py)
    if name == "aoti":
        options["device"] = _aoti_device(engine_options.get("device"))
    plan = None
    if precision == "int8":
        from .int8_guard import plan_calibration
        from ..export.quantize import check_quantization

        options.update(calibration=calibration_frames if isinstance(calibration_frames, (str, os.PathLike, type(None)))
                       else "frames", calibration_size=int(calibration_size), calibration_seed=int(calibration_seed),
                       int8_fallback=bool(int8_fallback), data=None if data is None else str(data))
        if options["calibration"] is not None:
            options["calibration"] = str(options["calibration"])
        if name == "openvino":
            q = check_quantization(dict(quantization or {}, **({"keep_fp32": keep_fp32} if keep_fp32 else {})))
            options["keep_fp32"] = q.pop("keep_fp32")
            options["quantization"] = q
        plan = plan_calibration(checkpoint, calibration_frames, int(calibration_size), int(calibration_seed))
        log.info("INT8: %d calibration images (%s), %d guard images", len(plan.calibration),
                 plan.record["source"], len(plan.guard))
    tmp = atomic_dir.new_temp_dir(out)
    try:
        _write_engine(tmp, model, name, precision, max_batch, source, am, thr, reason, options,
                      plan, timing_cache, t0)
        _probe(tmp, engine_options)
        if plan is not None:
            tmp = _int8_guard(tmp, out, checkpoint, model, name, max_batch, source, am, thr, reason, options,
                              plan, thresholds, data, int8_fallback, winograd, t0, engine_options)
        atomic_dir.swap_into_place(tmp, out)
    except BaseException:
        atomic_dir.discard(tmp)
        raise
    log.info("engine written to %s in %.1f s", out, time.perf_counter() - t0)
    return Engine(out, **engine_options)


def _check_int8_options(checkpoint: Any, calibration_frames: Any, calibration_size: Any, calibration_seed: Any,
                        int8_fallback: Any, guard: Any, data: Any, keep_fp32: Any, quantization: Any) -> Any:
    """Refuse bad INT8 options before any work; -> the guard thresholds."""
    from .int8_guard import GuardThresholds, check_calibration_options, images_in_dir
    from ..export.quantize import KEEP_FP32_CHOICES, check_quantization

    check_calibration_options(calibration_size, calibration_seed)
    if not isinstance(int8_fallback, bool):
        raise ValueError(f"int8_fallback must be True or False, got {int8_fallback!r}")
    if guard is not None and not isinstance(guard, GuardThresholds):
        raise TypeError(f"guard must be a cdd_engine.runtime.int8_guard.GuardThresholds or None, got "
                        f"{type(guard).__name__}")
    if keep_fp32 is not None and keep_fp32 not in KEEP_FP32_CHOICES:
        raise ValueError(f"keep_fp32 must be one of {KEEP_FP32_CHOICES}, got {keep_fp32!r}")
    check_quantization(quantization)
    if keep_fp32 is not None and (quantization or {}).get("keep_fp32") not in (None, keep_fp32):
        raise ValueError(f"keep_fp32={keep_fp32!r} and quantization['keep_fp32']={quantization['keep_fp32']!r} "
                         f"disagree: give one")
    if isinstance(calibration_frames, (str, os.PathLike)):
        images_in_dir(calibration_frames)
    elif calibration_frames is None and isinstance(checkpoint, RDModel):
        raise ValueError("precision 'int8' from an RDModel object needs calibration_frames (normal uint8 frames "
                         "or a directory of images): a run directory calibrates on its own training images")
    if data is not None and not Path(data).is_dir():
        raise ValueError(f"data (the labelled test set for the INT8 guard) {data} is not a directory")
    return guard or GuardThresholds()


def _int8_guard(tmp: Path, out: Path, checkpoint: Any, model: RDModel, name: str, max_batch: int, source: dict,
                am: dict, thr: dict, reason: str, options: dict[str, Any], plan: Any, thresholds: Any,
                data: Any, int8_fallback: bool, winograd: bool, t0: float, engine_options: dict[str, Any]) -> Path:
    """Run the accuracy guard on the INT8 engine in ``tmp`` and record it in engine.json's "int8"
    section; -> the directory to swap into place (``tmp``, or a new fp32 build on a fallback).
    Raises AccuracyGuardError when the guard fails and no fallback was asked for."""
    from .int8_guard import describe, run_guard
    from ..engine_format import read_manifest

    opts = {k: engine_options[k] for k in ("device",) if engine_options.get(k) is not None}
    engine = Engine(tmp, runtime="python", **opts)
    result = run_guard(engine, model, am, plan, thresholds, data=data,
                       run_dir=None if isinstance(checkpoint, RDModel) else checkpoint)
    del engine
    manifest = read_manifest(tmp, verify_hashes=False)
    section = {"tool": manifest["build"].pop("int8_tool"), "calibration": plan.record, "guard": result}
    if name == "openvino":
        section["quantization"] = manifest["build"].pop("int8_quantization")
    print_line = f"INT8 accuracy guard ({result['source']}): {describe(result)}"
    log.warning(print_line) if not result["passed"] else log.info(print_line)
    if result["passed"]:
        manifest["int8"] = section
        write_manifest(tmp, manifest)
        return tmp
    if not int8_fallback:
        raise AccuracyGuardError(
            f"refusing the INT8 engine: {print_line}. The quantized network disagrees with the fp32 reference; "
            f"calibrate on more or more representative normal images (--calibration DIR, --calibration-size), "
            f"or pass --int8-fallback (int8_fallback=True) to build fp32 instead. Nothing was written to {out}")
    log.warning("INT8 guard failed: building fp32 instead (int8_fallback)")
    fp32_dir = atomic_dir.new_temp_dir(out)
    section["fallback"] = "fp32"
    fp_options = dict(options, winograd=winograd) if name == "openvino" else dict(options)
    try:  # the fp32 ONNX graph of the INT8 build is reused: the export is the slow step
        _write_engine(fp32_dir, model, name, "fp32", max_batch, source, am, thr, reason, fp_options, None, None, t0,
                      int8_section=section, onnx_from=tmp / "model.onnx")
        _probe(fp32_dir, engine_options)
    except BaseException:
        atomic_dir.discard(fp32_dir)
        raise
    atomic_dir.discard(tmp)
    return fp32_dir


def _write_engine(out: Path, model: RDModel, name: str, precision: str, max_batch: int, source: dict,
                  am: dict, thr: dict, reason: str, options: dict[str, Any],
                  plan: Any, timing_cache: str | None, t0: float, int8_section: dict | None = None,
                  onnx_from: Path | None = None) -> None:
    """Export ``model`` for backend ``name`` into the empty directory ``out``, engine.json last."""
    feature_dtype = "float16" if precision == "fp16" and name in ("tensorrt", "torch") else "float32"
    extra: dict[str, Any] = {"build": {"backend_choice": reason, "options": options}}
    if name == "torch":
        extra["model"] = _save_torch(model, out)
    elif name == "aoti":
        from ..export.aoti import PACKAGE_FILE, export_aoti

        info = export_aoti(model, out / PACKAGE_FILE, image_size=model.image_size, max_batch=max_batch,
                           precision=precision, device=options["device"])
        extra["aoti"] = {"device": options["device"], "torch_version": torch.__version__, "min_batch": 1,
                         "max_batch": int(max_batch), "channels_last": info["channels_last"],
                         "batchnorm_folded": info["batchnorm_folded"]}
        extra["build"].update({k: info[k] for k in ("folded_batchnorms", "fold_max_rel_error", "inductor_configs",
                                                    "export_seconds", "compile_seconds") if k in info})
    else:
        from ..export.onnx import export_onnx, non_finite_initializers, verify_onnx

        dtype = torch.float16 if precision == "fp16" and name == "tensorrt" else torch.float32
        if onnx_from is not None and dtype == torch.float32:  # the same fp32 graph, already exported
            import shutil
            onnx_path = Path(shutil.copyfile(onnx_from, out / "model.onnx"))
        else:
            onnx_path = export_onnx(model, out / "model.onnx", max_batch=max_batch, dtype=dtype)
        bad = non_finite_initializers(onnx_path)
        if bad:  # a backend may turn NaN into finite numbers (OpenVINO's ReLU), so the probe cannot see it
            raise NonFiniteOutputError(f"refusing to build: the exported graph's constants {bad[:4]} hold NaN/inf "
                                       f"(folded from the weights and BatchNorm statistics: a negative variance, "
                                       f"an overflow{' in fp16' if dtype == torch.float16 else ''}): bad weights")
        if options["verify"] and dtype == torch.float32:
            try:
                extra["build"]["onnx_max_rel_error_vs_torch"] = verify_onnx(model, onnx_path)
            except ImportError as e:  # onnxruntime is optional at run time (a dev extra)
                log.warning("ONNX graph not checked against torch: %s (pip install onnxruntime)", e)
                extra["build"]["onnx_check"] = f"skipped: {e}"
        if name == "openvino":
            from ..export.openvino import convert_to_openvino
            calib = None if plan is None else _calibration_batches(model, plan.calibration, 1)
            q = None if calib is None else dict(options.get("quantization") or {}, keep_fp32=options.get("keep_fp32"))
            ir = convert_to_openvino(onnx_path, out, precision=precision, winograd=options["winograd"],
                                     calibration=calib, quantization=q,
                                     **(_accuracy_control_inputs(model, am, calib) if q and
                                        q.get("accuracy_control") is not None else {}))
            extra["build"]["winograd_convolutions"] = ir.winograd_convolutions
            if precision == "int8":  # moved to the top-level "int8" section once the guard has run
                from ..export.quantize import nncf_version
                extra["build"]["int8_tool"] = f"nncf {nncf_version()}"
                extra["build"]["int8_quantization"] = ir.quantization
        else:
            from ..export.tensorrt import build_plan, quantize_qdq
            graph = onnx_path
            if precision == "int8":
                import onnxruntime
                graph = quantize_qdq(onnx_path, out / "model_int8_qdq.onnx",
                                     _calibration_batches(model, plan.calibration, max_batch))
                extra["build"]["int8_tool"] = f"onnxruntime {onnxruntime.__version__} (QDQ)"
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
    if int8_section is not None:
        manifest["int8"] = int8_section
    write_manifest(out, manifest)


def _aoti_device(device: Any) -> str:
    """The device kind an aoti package is compiled for: "cpu" (default) or "cuda" (any index)."""
    kind = torch.device(device).type if device is not None else "cpu"
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"backend 'aoti' builds for device 'cpu' or 'cuda', got {device!r}")
    return kind


def _save_torch(model: RDModel, out: Path) -> dict[str, Any]:
    from .backends.torch_backend import save_model
    return save_model(model, out)
