"""INT8 post-training quantization of the OpenVINO network with NNCF (``nncf.quantize``).

NNCF inserts FakeQuantize operations (per-channel symmetric int8 weights, per-tensor int8
activations) whose ranges come from statistics over the calibration images; the OpenVINO CPU
plugin runs the convolutions between them in int8. No quantizer of our own: the ranges, the
placement and the bias correction are NNCF's.

The settings (:data:`QUANTIZATION_DEFAULTS`) were chosen by measurement on the nine demo runs
(brick, grass, gravel x seeds 0-2: efficientnet_lite0 RD, 256x256, 170 calibration and 50 guard
images of the run's training set, 180 test images scored by ``cdd-engine eval --engine``),
on this project's 2-core AVX-512 VNNI machine and again with the int8 kernels capped at AVX2
(``ONEDNN_MAX_CPU_ISA=AVX2``: no VNNI, the u8 x s8 pair sums saturate at int16). "rho" is the
Spearman correlation of the INT8 and fp32 engines' test-image scores, "err" their mean
absolute score difference over the std of the fp32 scores; first the screening on grass seed 1,
the run the old default fitted worst (fp32 image AUROC 0.5731):

===============================  ======  ============  =========================  =========================
setting (others default)         guard   fp32 convs    VNNI: d image / rho / err  AVX2: d image / rho / err
===============================  ======  ============  =========================  =========================
old default (fast BC, all int8)  0.850   0             -0.0121 / 0.949 / 0.206    +0.0172 / 0.819 / 0.456
preset mixed                     0.881   0             -0.0112 / 0.938 / 0.222    +0.0234 / 0.837 / 0.422
full bias correction             0.856   0             +0.0012 / 0.962 / 0.166    +0.0586 / 0.825 / 0.414
activations mean_quantile        0.820   0             -0.0301 / 0.920 / 0.274    -0.0086 / 0.772 / 0.477
activations histogram            0.968   0             -0.0165 / 0.926 / 0.234    +0.0258 / 0.811 / 0.485
keep teacher_first (9 convs)     0.869   9             -0.0072 / 0.963 / 0.150    -0.0056 / 0.961 / 0.168
keep teacher (33 convs)          0.877   33            -0.0049 / 0.982 / 0.107    -0.0030 / 0.980 / 0.110
accuracy_control 0.05 (415 s)    0.931   3             -0.0219 / 0.956 / 0.191    +0.0131 / 0.818 / 0.470
full BC + teacher_first (new)    0.866   9             +0.0080 / 0.983 / 0.111    -0.0030 / 0.973 / 0.145
===============================  ======  ============  =========================  =========================

On AVX2 the error comes from the teacher's first stage (the saturating int8 kernels on its
wide-range activations): keeping it in fp32 brings AVX2 to the VNNI figures; full bias
correction then lowers the rest (err 0.150 -> 0.111 VNNI, 0.168 -> 0.145 AVX2). The whole
teacher in fp32 is no more accurate and leaves no speed-up (1.06x fp32); NNCF's accuracy
control (50 calibration images as validation) left 3 convolutions in fp32 that fit its
validation images (guard 0.931) but not the test set, at 12x the build time. Keeping the
student or its last convolutions in fp32 measured no better earlier (brick: image AUROC
0.9937 in all three, slower; benchmarks/RESULTS.md).

The new default against the old on all nine runs (means over the three seeds of each category;
rho / err / image AUROC delta / pixel AUROC delta, INT8 - fp32):

=========  ===  ====================================  ====================================
category   set  VNNI: rho / err / d image / d pixel    AVX2: rho / err / d image / d pixel
=========  ===  ====================================  ====================================
brick      old  0.975 / 0.097 / +0.0027 / -0.0001      0.953 / 0.119 / +0.0009 / -0.0028
brick      new  0.996 / 0.032 / +0.0017 / +0.0000      0.989 / 0.061 / +0.0018 / -0.0009
grass      old  0.960 / 0.216 / -0.0041 / -0.0007      0.833 / 0.484 / -0.0067 / +0.0037
grass      new  0.982 / 0.119 / -0.0031 / -0.0021      0.973 / 0.157 / -0.0118 / -0.0018
gravel     old  0.968 / 0.176 / -0.0003 / -0.0006      0.884 / 0.484 / +0.0084 / -0.0082
gravel     new  0.988 / 0.100 / +0.0030 / -0.0012      0.977 / 0.147 / +0.0050 / -0.0020
=========  ===  ====================================  ====================================

The new default agrees better with fp32 on every run and both ISAs (score error halved on
VNNI, a third of the old on AVX2), the guard's Spearman rises from 0.874-0.967 (as recorded
at the old builds) to 0.964-0.996 (grass seed 1: 0.866, still refused), and the pixel AUROC
stays within 0.004 of fp32 everywhere (old, AVX2: -0.0102 on gravel seed 0). The image AUROC delta of the near-chance categories
(grass, gravel: AUROC 0.55-0.67) is not smaller: there the good and defective scores interleave
so closely that a score error of 0.1 std still moves AUROC by up to 0.02 either way. Cost:
the INT8 builds took 21-40 s on a busy machine (the old default: 15-31 s as recorded); the batch-8 engine call (grass seed 1, native runtime, paired medians of 15) went
from 28.8 to 30.8-34.1 ms on VNNI (fp32 49.7 ms: 1.72x -> 1.46-1.61x) and stayed at 1.16-1.25x
fp32 on AVX2. ``keep_fp32="none"`` with ``bias_correction="fast"`` is the old, fastest setting.

**One engine, the same scores on every CPU: the overflow fix.** The "new" rows above still
differ between the two ISAs (grass seed 1: d image +0.0080 VNNI, -0.0030 AVX2), because the
kernels without VNNI saturate where VNNI does not. NNCF's ``overflow_fix="enable"`` quantizes
every weighted layer's weights to 7 bits, so no pair sum can saturate; with it (and the rest of
the new default) the INT8 engine's test-set scores were **identical** on VNNI and AVX2 on all
nine runs, so the guard measured on the build machine holds on any line PC:

=========  ============================  ===========================================
category   per seed: d image (rho)       mean d image / d pixel, both ISAs (new: VNNI | AVX2)
=========  ============================  ===========================================
brick      +0.0054 -0.0004 -0.0006       +0.0015 / +0.0002  (+0.0017 | +0.0018)
           (0.991 0.998 0.997)
grass      -0.0220 +0.0070 -0.0089       -0.0080 / -0.0004  (-0.0031 | -0.0118)
           (0.980 0.971 0.979)
gravel     +0.0054 +0.0075 -0.0026       +0.0034 / -0.0007  (+0.0030 | +0.0050)
           (0.984 0.978 0.983)
=========  ============================  ===========================================

Agreement with fp32 lies between the "new" row's VNNI and AVX2 figures (score err 0.023-0.152;
guard Spearman 0.966-0.992, grass seed 1 0.875), the pixel AUROC stays within 0.0017, and the
kernels, hence the speed, are those of the 8-bit weights (benchmarks/RESULTS.md). The overflow
fix on the all-int8 setting (``keep_fp32="none"``) was also ISA-independent but agreed less
(grass rho 0.941-0.964). So ``overflow_fix="enable"`` is the default;
``overflow_fix="first_layer"`` (NNCF's own default) gives the "new" rows. On the micro test
model the default engine's scores are bit-identical with oneDNN capped at AVX2 and natively;
with "first_layer" they are 1.3 % apart (tests/test_int8_settings.py).

**With the overflow fix the teacher's first stage can be int8 again** (``keep_fp32="none"``,
full bias correction, ``overflow_fix="enable"``: the shipped default). The first stage was kept in
fp32 against the AVX2 saturation, which the fix removes, and it is the costliest part of
efficientnet_lite0 in fp32 (network alone, batch 8, paired medians: 38.2 -> 22.8 ms VNNI,
42.8 -> 33.2 ms AVX2). Again identical scores on both ISAs on all nine runs:

=========  ============================  ===============================  ==============
category   per seed: d image (rho)       mean d image / mean d pixel      guard Spearman
=========  ============================  ===============================  ==============
brick      +0.0066 -0.0012 +0.0002       +0.0019 / -0.0000                0.974-0.985
           (0.986 0.990 0.991)
grass      -0.0041 +0.0182 -0.0056       +0.0028 / +0.0004                0.804-0.924
           (0.964 0.941 0.955)                                            (2 of 3 refused)
gravel     +0.0071 -0.0059 -0.0046       -0.0011 / -0.0013                0.8998-0.945
           (0.968 0.963 0.963)
=========  ============================  ===============================  ==============

The three-seed means are within 0.005 of fp32 for all three categories on both ISAs; the
agreement with fp32 is lower than with the first stage in fp32 (score err 0.067-0.247 against
0.023-0.152), and the guard refuses three of the nine builds (grass seeds 0 and 1, gravel
seed 1 at 0.8998; RD itself is near chance there). ``keep_fp32="teacher_first"`` buys that agreement back at lite0's speed.

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
from ..errors import AccuracyGuardError, BackendUnavailable

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
# NNCF's overflow fix (nncf.OverflowFix): int8 multiply-adds without VNNI (AVX2, AVX-512 without
# VNNI) sum u8 x s8 pairs into saturating int16; "enable" (our default: the same scores on every
# CPU, measured in the docstring) quantizes every convolution's weights to 7 bits so the sums
# cannot saturate, "first_layer" (NNCF's default) only the input's first convolutions, "disable" none.
OVERFLOW_FIXES = ("first_layer", "enable", "disable")
QUANTIZATION_DEFAULTS = {"preset": "performance", "bias_correction": "full", "activation_range": "default",
                         "keep_fp32": KEEP_FP32_DEFAULT, "accuracy_control": None, "overflow_fix": "enable"}
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
                         ("activation_range", ACTIVATION_RANGES), ("keep_fp32", KEEP_FP32_CHOICES),
                         ("overflow_fix", OVERFLOW_FIXES)):
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
    if settings["overflow_fix"] != "first_layer":
        from nncf.quantization.advanced_parameters import OverflowFix

        kw["overflow_fix"] = OverflowFix(settings["overflow_fix"])
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
    from ..metrics import spearman
    import openvino as ov

    # f32 as the engines run it (a CPU with bf16 support would otherwise compute the reference in
    # bf16: Spearman 0.987 against the f32 network on 50 grass images, measured)
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
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
    if n_fq == 0 and settings["accuracy_control"] is not None:
        raise AccuracyGuardError(
            f"refusing the INT8 engine: NNCF's accuracy control reverted every quantized layer to fp32 and still "
            f"found no network within a Spearman drop of {settings['accuracy_control']} on the validation images; "
            f"calibrate on more representative normal images or allow a larger accuracy_control drop")
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
