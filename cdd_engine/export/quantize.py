"""INT8 post-training quantization of the OpenVINO network with NNCF (``nncf.quantize``).

NNCF inserts FakeQuantize operations (per-channel symmetric int8 weights, per-tensor int8
activations) whose ranges come from statistics over the calibration images; the OpenVINO CPU
plugin runs the convolutions between them in int8. No quantizer of our own: the ranges, the
placement and the bias correction are NNCF's.

What stays in float32 (``keep_fp32``) was chosen by measurement on the trained demo run (mvtec
brick, efficientnet_lite0 RD at 256x256, 64 calibration training images, 40 held-out training
images, the 180 test images; fp32 network: image / pixel AUROC 0.9870 / 0.9721, 0.32 s per
batch of 8 on 2 busy AVX2 cores):

=================  =========  ===========  ================  ==============  ==========
keep_fp32          FQ ops     image AUROC  pixel AUROC       Spearman guard  batch-8 s
=================  =========  ===========  ================  ==============  ==========
none (default)     97         0.9937       0.9737            0.9790          0.28
student_last (9)   89         0.9937       0.9738            0.9773          0.31
student (34)       68         0.9937       0.9735            0.9784          0.44
=================  =========  ===========  ================  ==============  ==========

(mean relative map error 0.068-0.069 in all three). The features whose cosine distance is the
map come from both networks, and the teacher's share of the error is the same in all three:
keeping the student's last convolutions (the layers that write the features) or the whole
student (bottleneck + decoder) in fp32 bought no accuracy and cost speed, so everything is
quantized by default; ``keep_fp32`` stays an option for models where it does matter.

Winograd (export/openvino_winograd.py) is never applied to an INT8 IR: it rewrites the 3x3
convolutions as transforms + MatMuls in the Winograd domain, where the activations' ranges are
those of the transformed tiles (not of the feature maps) and the CPU plugin's int8 convolution
kernels no longer apply. Measured on the resnet18 64x64 test model (tests/engine_helpers.py, 2 busy
AVX2 cores, network alone, batch 8, median of 15): fp32 52.0 ms; INT8 without Winograd 24.0 ms
(2.17x); INT8 after the rewrite of its 3 eligible convolutions 64.3 ms (0.81x, slower than fp32)
with a larger map error (mean 0.0042 vs 0.0032). build() records ``winograd: false`` for int8.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np

from ..engine_format import FEATURE_NAMES
from ..errors import BackendUnavailable

log = logging.getLogger("cdd_engine.export")

NNCF_REQUIREMENT = "nncf>=3.4,<3.5"  # the version the figures below were measured with (setup.py pins it)
# Layers kept in float32 (NNCF ignored scope); the default by the measurements in the docstring.
KEEP_FP32_CHOICES = ("none", "student_last", "student", "teacher_first", "teacher")
KEEP_FP32_DEFAULT = "none"
# NNCF presets: "performance" = symmetric activations, "mixed" = asymmetric activations (both
# symmetric per-channel weights).
PRESETS = ("performance", "mixed")
# Bias correction after quantization: "fast" (NNCF's fast_bias_correction=True), "full" (the
# slower layer-by-layer BiasCorrection), "none".
BIAS_CORRECTIONS = ("fast", "full", "none")
# How activation ranges come from the calibration statistics (nncf.RangeEstimatorParametersSet);
# "default" leaves NNCF's choice (min / max over all images for the CPU target).
ACTIVATION_RANGES = ("default", "minmax", "mean_minmax", "median_minmax", "mean_quantile", "histogram")
# accuracy_control: None, or the largest drop of the Spearman correlation of INT8 vs fp32 image
# scores on validation images that nncf.quantize_with_accuracy_control may leave (it reverts the
# quantizers that hurt it most to fp32 until the drop is within this).
QUANTIZATION_DEFAULTS = {"preset": "performance", "bias_correction": "fast", "activation_range": "default",
                         "keep_fp32": KEEP_FP32_DEFAULT, "accuracy_control": None}
CONV_TYPES = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul")


def import_nncf():
    """``import nncf`` or BackendUnavailable saying what to install."""
    try:
        import nncf
    except ImportError as e:  # pragma: no cover - nncf is an install requirement
        raise BackendUnavailable(f"INT8 OpenVINO engines need NNCF: `import nncf` failed ({e}); "
                                 f"pip install '{NNCF_REQUIREMENT}'") from e
    return nncf


def _ancestors(outputs: Sequence[Any]) -> set[str]:
    """Friendly names of every operation that feeds one of ``outputs`` (ov.Output of Results)."""
    seen: set[str] = set()
    stack = [o.get_node() for o in outputs]
    while stack:
        node = stack.pop()
        name = node.get_friendly_name()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(inp.get_source_output().get_node() for inp in node.inputs())
    return seen


def _last_convolutions(output: Any) -> list[str]:
    """The convolution(s) nearest to a model output, walking up through element-wise operations."""
    found, seen = [], set()
    stack = [output.get_node()]
    while stack:
        node = stack.pop()
        name = node.get_friendly_name()
        if name in seen:
            continue
        seen.add(name)
        if node.get_type_name() in CONV_TYPES:
            found.append(name)
            continue
        stack.extend(inp.get_source_output().get_node() for inp in node.inputs())
    return found


def fp32_scope(model: Any, keep_fp32: str) -> list[str]:
    """Names of the weighted operations that ``keep_fp32`` leaves unquantized.

    "none": quantize everything; "student_last": the last convolution before each student
    output; "student": every weighted operation that does not feed the (frozen) teacher's
    outputs, i.e. the bottleneck and the student decoder; "teacher_first": the teacher's first
    stage (every weighted operation feeding its first feature output); "teacher": the whole
    teacher (everything feeding a teacher output).
    """
    if keep_fp32 not in KEEP_FP32_CHOICES:
        raise ValueError(f"keep_fp32 must be one of {KEEP_FP32_CHOICES}, got {keep_fp32!r}")
    if keep_fp32 == "none":
        return []
    by_name = {o.get_any_name(): o for o in model.outputs}
    missing = [n for n in FEATURE_NAMES if n not in by_name]
    if missing:
        raise ValueError(f"the network has no output(s) {missing}: not an RD feature network")
    teacher = [by_name[n] for n in FEATURE_NAMES[:3]]
    student = [by_name[n] for n in FEATURE_NAMES[3:]]
    if keep_fp32 == "student_last":
        names = [n for o in student for n in _last_convolutions(o)]
    elif keep_fp32.startswith("teacher"):
        names = list(_ancestors(teacher[:1] if keep_fp32 == "teacher_first" else teacher))
    else:
        in_teacher = _ancestors(teacher)
        names = [n for n in _ancestors(student) if n not in in_teacher]
    if keep_fp32 != "student_last":
        names = [op.get_friendly_name() for op in model.get_ordered_ops()
                 if op.get_type_name() in CONV_TYPES and op.get_friendly_name() in set(names)]
    return sorted(set(names))


def _int8_weights(op: Any) -> bool:
    """Whether a weighted operation's weights are quantized: a FakeQuantize, or (after NNCF's
    weight compression) an int8 Constant behind Convert / Subtract / Multiply."""
    node = op.input(1).get_source_output().get_node()
    while True:
        kind = node.get_type_name()
        if kind == "FakeQuantize":
            return True
        if kind == "Constant":
            return node.get_element_type().get_type_name() in ("i8", "u8")
        if kind not in ("Convert", "Subtract", "Multiply", "Reshape", "Transpose") or node.get_input_size() == 0:
            return False
        node = node.input(0).get_source_output().get_node()


def check_quantization(settings: Any) -> dict[str, str]:
    """Validate OpenVINO INT8 quantization settings (a mapping with some of the keys of
    :data:`QUANTIZATION_DEFAULTS`) -> the full settings, defaults filled in; ValueError names the
    bad key and its choices."""
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise ValueError(f"quantization settings must be a dict with keys {sorted(QUANTIZATION_DEFAULTS)}, "
                         f"got {type(settings).__name__}")
    unknown = sorted(set(settings) - set(QUANTIZATION_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown quantization setting(s) {unknown}: the settings are {sorted(QUANTIZATION_DEFAULTS)}")
    out = dict(QUANTIZATION_DEFAULTS)
    out.update({k: v for k, v in settings.items() if v is not None})
    ac = out["accuracy_control"]
    if ac is not None and (isinstance(ac, bool) or not isinstance(ac, (int, float)) or not 0.0 < ac < 1.0):
        raise ValueError(f"quantization accuracy_control must be None or a Spearman drop in (0, 1), got {ac!r}")
    for key, choices in (("preset", PRESETS), ("bias_correction", BIAS_CORRECTIONS),
                         ("activation_range", ACTIVATION_RANGES), ("keep_fp32", KEEP_FP32_CHOICES)):
        if out[key] not in choices:
            raise ValueError(f"quantization {key} must be one of {choices}, got {out[key]!r}")
    return out


def _advanced_parameters(nncf: Any, settings: dict[str, str]) -> Any:
    """nncf.AdvancedQuantizationParameters for ``settings`` (None when NNCF's defaults apply)."""
    kw: dict[str, Any] = {}
    if settings["bias_correction"] == "none":
        kw["disable_bias_correction"] = True
    if settings["activation_range"] != "default":
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        kw["activations_range_estimator_params"] = getattr(RangeEstimatorParametersSet,
                                                           settings["activation_range"].upper())
    return nncf.AdvancedQuantizationParameters(**kw) if kw else None


def _as_items(images: Sequence[np.ndarray], what: str) -> list[np.ndarray]:
    items = []
    for x in images:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[:2] != (1, 3):
            raise ValueError(f"{what} images must be (3, H, W) or (1, 3, H, W) float32, got {x.shape}")
        items.append(x)
    return items


def _score_agreement(model: Any, validation: Sequence[np.ndarray], score_fn: Callable[[dict], float],
                     ) -> Callable[[Any, Any], tuple[float, list[float]]]:
    """The validation function of nncf.quantize_with_accuracy_control: Spearman correlation of the
    model's image scores with the fp32 network's on the validation images (1.0 for the fp32
    network itself; labels are not needed). NNCF passes data items ``(index, image)``; the
    per-item values (minus the score error over the fp32 scores' spread) only choose its ranking
    subset."""
    from ..runtime.int8_guard import spearman
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU")
    ref = np.array([score_fn(_named(compiled, x)) for x in validation], dtype=np.float64)
    spread = max(float(np.std(ref)), 1e-12)

    def validate(compiled_model: Any, items: Any) -> tuple[float, list[float]]:
        idx, got = [], []
        for i, x in items:
            idx.append(i)
            got.append(score_fn(_named(compiled_model, x)))
        r, g = ref[idx], np.array(got, dtype=np.float64)
        per_item = (-np.abs(g - r) / spread).tolist()
        rho = spearman(r, g) if len(idx) >= 3 else np.nan
        if np.isnan(rho):  # one or two images, or constant scores: no rank order, the score error stands in
            return 1.0 + float(np.mean(per_item)), per_item
        return rho, per_item

    return validate


def _named(compiled: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    res = compiled(x)
    return {out.get_any_name(): res[out] for out in compiled.outputs}


def quantize_openvino(model: Any, calibration: Sequence[np.ndarray], settings: dict[str, Any] | None = None,
                      validation: Sequence[np.ndarray] | None = None,
                      score_fn: Callable[[dict], float] | None = None) -> tuple[Any, dict[str, Any]]:
    """NNCF post-training INT8 quantization of an ``openvino.Model`` (the RD feature network).

    Args:
        model: the fp32 network (input ``image``, outputs teacher_0..2, student_0..2).
        calibration: pre-processed images, each (3, H, W) or (1, 3, H, W) float32; NNCF sees them
            one at a time, in this order (the order and the set fix the result: a build is
            reproducible).
        settings: :data:`QUANTIZATION_DEFAULTS` keys (:func:`check_quantization`): the NNCF preset,
            the bias correction, the activation range estimator, the layers kept in float32
            (:func:`fp32_scope`), the accuracy control.
        validation, score_fn: accuracy control only: pre-processed images (as ``calibration``) and
            a function of the network's outputs ({name: array} of one image) -> its image score.

    Returns:
        (quantized ``openvino.Model`` holding FakeQuantize operations, a JSON-able record of the
        NNCF settings used).
    """
    settings = check_quantization(settings)
    nncf = import_nncf()
    items = _as_items(calibration, "calibration")
    if not items:
        raise ValueError("INT8 quantization needs at least one calibration image")
    ignored = fp32_scope(model, settings["keep_fp32"])
    # model_type stays None (a CNN, not a transformer); target CPU matches the backend;
    # subset_size = every image given (the caller picks the subset, seeded).
    common = dict(preset=getattr(nncf.QuantizationPreset, settings["preset"].upper()),
                  target_device=nncf.TargetDevice.CPU, subset_size=len(items),
                  fast_bias_correction=settings["bias_correction"] != "full",
                  ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None)
    if settings["accuracy_control"] is None:
        quantized = nncf.quantize(model, nncf.Dataset(items), advanced_parameters=_advanced_parameters(nncf, settings),
                                  **common)
    else:
        if not validation or score_fn is None:
            raise ValueError("quantization accuracy_control needs validation images and a score function")
        val = _as_items(validation, "validation")
        quantized = nncf.quantize_with_accuracy_control(
            model, nncf.Dataset(items), nncf.Dataset(list(enumerate(val)), lambda item: item[1]),
            _score_agreement(model, val, score_fn), max_drop=float(settings["accuracy_control"]),
            drop_type=nncf.DropType.ABSOLUTE, advanced_quantization_parameters=_advanced_parameters(nncf, settings),
            **common)
    n_fq = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    fp32_convs = sum(op.get_type_name() in CONV_TYPES and not _int8_weights(op) for op in quantized.get_ops())
    if n_fq == 0:
        raise RuntimeError("NNCF inserted no FakeQuantize operation: nothing was quantized")
    record = {**settings, "target_device": "CPU", "subset_size": len(items),
              "fast_bias_correction": settings["bias_correction"] == "fast",
              "fp32_layers": len(ignored), "fake_quantize_ops": n_fq, "fp32_convolutions": int(fp32_convs)}
    if settings["accuracy_control"] is not None:
        record["validation_images"] = len(validation or [])
    log.info("NNCF INT8: %d FakeQuantize ops, %d layers kept in fp32 (%s)", n_fq, len(ignored), settings)
    return quantized, record


def nncf_version() -> str:
    return str(import_nncf().__version__)
