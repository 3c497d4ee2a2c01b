"""The shared manifest contract restated (docs/engine_format.md), independently of both readers, and
what a mutated engine.json must therefore give: a refusal, the unchanged result, or a valid change."""
from __future__ import annotations

import json
import math
from typing import Any

from .jsontext import Refused, strict_parse

FEATURE_NAMES = ["teacher_0", "teacher_1", "teacher_2", "student_0", "student_1", "student_2"]


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def contract_violation(m: Any) -> str | None:
    """The first rule of the shared manifest contract that ``m`` breaks, or None. Only the rules
    the contract states explicitly; anything else is left to agreement between the readers."""
    if not isinstance(m, dict):
        return "not an object"
    if m.get("format") != "cdd-engine":
        return "format"
    fv = m.get("format_version")
    if not _int(fv) or fv not in (1, 2):  # version 2 added aoti/bf16/tf32, which these engines never use
        return "format_version"
    mb = m.get("max_batch")
    if not _int(mb) or not 1 <= mb <= 4096:
        return "max_batch"
    size = m.get("image_size")
    if not isinstance(size, list) or len(size) != 2 or not all(_int(v) and 32 <= v <= 4096 for v in size):
        return "image_size"
    feats = m.get("features")
    if not isinstance(feats, list) or [f.get("name") if isinstance(f, dict) else None
                                       for f in feats] != FEATURE_NAMES:
        return "features names"
    for f in feats:
        s = f.get("shape")
        if not isinstance(s, list) or len(s) != 3 or not all(_int(v) for v in s):
            return "feature shape"
        if not (1 <= s[0] <= 65536 and 1 <= s[1] <= size[0] and 1 <= s[2] <= size[1]):
            return "feature shape range"
        if f.get("dtype") not in ("float32", "float16"):
            return "feature dtype"
    for t, s in zip(feats[:3], feats[3:], strict=True):
        if t["shape"] != s["shape"] or t["dtype"] != s["dtype"]:
            return "teacher/student features differ"
    inp = m.get("input")
    if not isinstance(inp, dict):
        return "input"
    mean, std = inp.get("mean"), inp.get("std")
    if not isinstance(mean, list) or len(mean) != 3 or not all(_num(v) and -1000 <= v <= 1000 for v in mean):
        return "input.mean"
    if not isinstance(std, list) or len(std) != 3 or not all(_num(v) and 1e-3 <= v <= 1000 for v in std):
        return "input.std"
    am = m.get("anomaly_map")
    if not isinstance(am, dict) or am.get("mode") not in ("add", "mul"):
        return "anomaly_map.mode"
    sigma, trunc, eps = am.get("sigma"), am.get("truncate"), am.get("eps")
    if not _num(sigma) or not 0 < sigma <= 64:
        return "sigma"
    if not _num(trunc) or not 0 < trunc <= 16:
        return "truncate"
    if not 1 <= math.floor(trunc * sigma + 0.5) <= 1024:
        return "blur radius"
    if not _num(eps) or not 1e-12 <= eps <= 1e-3:
        return "eps"
    thr = m.get("threshold")
    v = thr.get("value") if isinstance(thr, dict) else None
    if not _num(v) or v < 0:
        return "threshold.value"
    return None


# fields whose change alters what the engine computes from the same model files
SCORE_FIELDS = ("input", "anomaly_map")
# fields that must match the model files: a change can only be refused
# (format_version is not one: versions 1 and 2 describe these engines identically, and any other
# version breaks the contract above)
MODEL_FIELDS = ("image_size", "features", "precision", "backend", "files", "model", "format")
# fields that change the verdict but not scores and maps
VERDICT_FIELDS = ("threshold",)


def _shapes(features: list) -> list:
    return [(f.get("name"), f.get("shape")) for f in features]


def classify_manifest(data: bytes, original: dict) -> dict:
    """Expectation for engine.json bytes: {"refuse": bool, "mode": "same"|"valid", "why": str}."""
    try:
        m = strict_parse(data)
    except Refused as e:
        return {"refuse": True, "mode": "same", "why": str(e)}
    except ValueError as e:  # duplicate keys, NaN/Infinity tokens: the readers must only agree...
        if str(e) == "duplicate":
            return {"refuse": False, "mode": "agree", "why": "duplicate keys"}
        bad = contract_violation(json.loads(data.decode("utf-8-sig")))
        if bad:  # ... unless the value breaks a contract rule however it is read
            return {"refuse": True, "mode": "same", "why": f"contract: {bad} (NaN token)"}
        return {"refuse": False, "mode": "agree", "why": "NaN token in an unscored field"}
    bad = contract_violation(m)
    if bad:
        return {"refuse": True, "mode": "same", "why": f"contract: {bad}"}
    changed = sorted(k for k in set(m) | set(original) if m.get(k) != original.get(k))
    if changed == ["features"] and _shapes(m["features"]) == _shapes(original["features"]):
        # only the declared feature dtypes: the contract ties precision, not these, to the model
        return {"refuse": False, "mode": "same", "why": "feature dtypes relabelled"}
    if any(k in MODEL_FIELDS for k in changed):
        return {"refuse": True, "mode": "same", "why": f"model mismatch: {changed}"}
    if any(k in SCORE_FIELDS for k in changed):
        return {"refuse": False, "mode": "valid", "why": f"valid edit of {changed}"}
    return {"refuse": False, "mode": "same", "why": f"neutral: {changed}" if changed else "equal"}
