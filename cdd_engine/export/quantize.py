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
from typing import Any, Sequence

import numpy as np

from ..engine_format import FEATURE_NAMES
from ..errors import BackendUnavailable

log = logging.getLogger("cdd_engine.export")

NNCF_REQUIREMENT = "nncf>=3.4,<3.5"  # the version the figures below were measured with (setup.py pins it)
# Layers kept in float32 (NNCF ignored scope); the default by the measurements in the docstring.
KEEP_FP32_CHOICES = ("none", "student_last", "student")
KEEP_FP32_DEFAULT = "none"
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
    outputs, i.e. the bottleneck and the student decoder.
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
    else:
        in_teacher = _ancestors(teacher)
        names = [n for n in _ancestors(student) if n not in in_teacher]
        names = [op.get_friendly_name() for op in model.get_ordered_ops()
                 if op.get_type_name() in CONV_TYPES and op.get_friendly_name() in set(names)]
    return sorted(set(names))


def quantize_openvino(model: Any, calibration: Sequence[np.ndarray], *, keep_fp32: str = KEEP_FP32_DEFAULT,
                      fast_bias_correction: bool = True) -> tuple[Any, dict[str, Any]]:
    """NNCF post-training INT8 quantization of an ``openvino.Model`` (the RD feature network).

    Args:
        model: the fp32 network (input ``image``, outputs teacher_0..2, student_0..2).
        calibration: pre-processed images, each (3, H, W) or (1, 3, H, W) float32; NNCF sees them
            one at a time, in this order (the order and the set fix the result: a build is
            reproducible).
        keep_fp32: which layers stay in float32 (:func:`fp32_scope`).
        fast_bias_correction: NNCF's fast bias correction (True) or none.

    Returns:
        (quantized ``openvino.Model`` holding FakeQuantize operations, a JSON-able record of the
        NNCF settings used).
    """
    nncf = import_nncf()
    items = []
    for x in calibration:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[:2] != (1, 3):
            raise ValueError(f"calibration images must be (3, H, W) or (1, 3, H, W) float32, got {x.shape}")
        items.append(x)
    if not items:
        raise ValueError("INT8 quantization needs at least one calibration image")
    ignored = fp32_scope(model, keep_fp32)
    # Preset PERFORMANCE = symmetric activations (the CPU plugin's fastest int8 kernels); model_type
    # stays None (a CNN, not a transformer); target CPU matches the backend; subset_size = every
    # image given (the caller picks the subset, seeded).
    quantized = nncf.quantize(
        model, nncf.Dataset(items), preset=nncf.QuantizationPreset.PERFORMANCE,
        target_device=nncf.TargetDevice.CPU, subset_size=len(items), fast_bias_correction=fast_bias_correction,
        ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None)
    n_fq = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    if n_fq == 0:
        raise RuntimeError("NNCF inserted no FakeQuantize operation: nothing was quantized")
    record = {"preset": "performance", "target_device": "CPU", "subset_size": len(items),
              "fast_bias_correction": bool(fast_bias_correction), "keep_fp32": keep_fp32,
              "fp32_layers": len(ignored), "fake_quantize_ops": n_fq}
    log.info("NNCF INT8: %d FakeQuantize ops, %d layers kept in fp32 (%s)", n_fq, len(ignored), keep_fp32)
    return quantized, record


def nncf_version() -> str:
    return str(import_nncf().__version__)
