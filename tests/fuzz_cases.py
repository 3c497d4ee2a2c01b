"""The fuzz campaign of tests/test_fuzz.py (issue 16): seeded mutations of engine manifests, model
files, run directories and frames, each judged by an oracle, run in worker subprocesses.

Oracle (docs/engine_format.md and the readers' shared manifest rules): every case ends in one of

- a clear refusal: an exception of an accepted type with a message (see ACCEPTED below), or
- a result identical to the unmutated input's (a mutation that does not change meaning: key order,
  whitespace, a BOM, another memory layout of the same pixels), or
- for a change a valid engine may carry (another mean, sigma, threshold): finite scores on which the
  Python and the C++ reader agree within the documented 1e-5 relative.

Failures: a crash or hang of the worker, memory blow-up, an error of another type ("raw" errors:
KeyError, RecursionError, a torch RuntimeError...), a "silent change" (a mutation that should have
been refused, or that must not change the result, loads and gives other scores), readers that
disagree on accepting a manifest, non-finite scores given as a verdict, a later valid call spoiled
by an earlier bad one ("poisoned"), and an existing engine destroyed by a failed build ("lost").

The case list is a pure function of SEED (``all_cases``), so pytest can parametrize on case ids;
the worker (``python tests/fuzz_cases.py worker FIXTURES_JSON``) reads case ids on stdin and
prints ``START id reader`` before each reader call and ``RESULT {json}`` after each case, so the
parent (``run_campaign``) knows which case and reader a crash or hang belongs to.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

SEED = 20261204
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CASE_TIMEOUT_S = 20.0      # one case, all its readers, on a loaded 2-core machine (normal: < 5 s)
SPECIAL_TIMEOUT_S = 8.0    # cases that may block on a FIFO
RSS_LIMIT_BYTES = 2 << 30  # a worker above this is killed: a read of /dev/zero, an unchecked allocation
#                            (a worker holding torch, OpenVINO and the fixture engines uses ~0.7 GiB)
MAX_FRAME_PIXELS = 2 ** 28
TOL = 1e-5                 # documented fp32 tolerance between readers (relative)
RUN_BACKBONE, RUN_SIZE = "efficientnet_lite0", 32  # the tiniest real RD model: ~0.1 s per build/load

# ------------------------------------------------------------------------------------- JSON text
class Raw:
    """A JSON token written as is (NaN, 1e400, a huge integer, broken text)."""

    def __init__(self, text: str) -> None:
        self.text = text


class Pairs(list):
    """An object written from (key, value) pairs, so duplicate keys are possible."""


def dumps(v: Any, indent: int | None = 2, _level: int = 0) -> str:
    """json.dumps that also writes Raw tokens and Pairs objects."""
    pad = "" if indent is None else "\n" + " " * (indent * (_level + 1))
    end = "" if indent is None else "\n" + " " * (indent * _level)
    sep = ", " if indent is None else ","
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, (dict, Pairs)):
        items = list(v.items()) if isinstance(v, dict) else list(v)
        if not items:
            return "{}"
        return "{" + sep.join(pad + json.dumps(k) + ": " + dumps(x, indent, _level + 1) for k, x in items) + end + "}"
    if isinstance(v, list):
        if not v:
            return "[]"
        return "[" + sep.join(pad + dumps(x, indent, _level + 1) for x in v) + end + "]"
    return json.dumps(v)


class Refused(Exception):
    """The mutated text is not a manifest a reader may accept (contract rule named in the message)."""


def strict_parse(data: bytes) -> Any:
    """The contract's reading of engine.json bytes: one leading UTF-8 BOM skipped, UTF-8 only,
    standard JSON only (no NaN/Infinity, no overflow to inf), nesting at most 64.
    Raises Refused; duplicate keys raise ValueError("duplicate") (readers must only agree)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Refused(f"invalid UTF-8 ({e})") from e

    def const(name: str) -> Any:
        raise ValueError("non-standard constant")  # RFC 8259 has none; the contract says nothing

    def num(s: str) -> float:
        f = float(s)
        if not math.isfinite(f):
            raise Refused(f"number {s} overflows")
        return f

    def pairs(p: list) -> dict:
        keys = [k for k, _ in p]
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate")
        return dict(p)

    depth = maxd = 0
    in_str = esc = False
    for ch in text:  # nesting depth outside strings
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            maxd = max(maxd, depth)
        elif ch in "]}":
            depth -= 1
    if maxd > 64:
        raise Refused(f"nesting depth {maxd} > 64")
    try:
        return json.loads(text, parse_constant=const, parse_float=num, object_pairs_hook=pairs,
                          parse_int=lambda d: int(d) if len(d) <= 4000 else 10 ** 4000)  # just "huge"
    except json.JSONDecodeError as e:
        raise Refused(f"not JSON ({e})") from e


# ------------------------------------------------------------------------ the contract, restated
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
    if not _int(fv) or fv != 1:
        return "format_version"
    mb = m.get("max_batch")
    if not _int(mb) or not 1 <= mb <= 4096:
        return "max_batch"
    size = m.get("image_size")
    if not isinstance(size, list) or len(size) != 2 or not all(_int(v) and 32 <= v <= 4096 for v in size):
        return "image_size"
    feats = m.get("features")
    if not isinstance(feats, list) or [f.get("name") if isinstance(f, dict) else None for f in feats] != FEATURE_NAMES:
        return "features names"
    for f in feats:
        s = f.get("shape")
        if not isinstance(s, list) or len(s) != 3 or not all(_int(v) for v in s):
            return "feature shape"
        if not (1 <= s[0] <= 65536 and 1 <= s[1] <= size[0] and 1 <= s[2] <= size[1]):
            return "feature shape range"
        if f.get("dtype") not in ("float32", "float16"):
            return "feature dtype"
    for t, s in zip(feats[:3], feats[3:]):
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
MODEL_FIELDS = ("image_size", "features", "precision", "backend", "files", "model", "format", "format_version")
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


# ------------------------------------------------------------------------------ case generation
NASTY = [("null", None), ("true", True), ("str", "x"), ("list", []), ("obj", {}), ("zero", 0),
         ("neg", -1), ("big", Raw("1e308")), ("nan", Raw("NaN")), ("inf", Raw("1e400")),
         ("u64", Raw(str(2 ** 64))), ("half", 0.5), ("nanstr", "NaN")]
INFO_PATHS = {"package_version", "created", "source_checkpoint", "build", "threshold.source",
              "threshold.statistics", "model.backbone_weights"}


def leaves(v: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(v, dict) and v:
        return [p for k, x in v.items() for p in leaves(x, path + (k,))]
    if isinstance(v, list) and v:
        return [p for i, x in enumerate(v) for p in leaves(x, path + (i,))]
    return [path]


def _informational(path: tuple) -> bool:
    s = ".".join(str(p) for p in path)
    return any(s == p or s.startswith(p + ".") for p in INFO_PATHS)


def manifest_cases(target: str, manifest: dict, rng: random.Random) -> list[dict]:
    """engine.json mutations for ``target`` ("ov" or "torch"): ids are stable strings."""
    out: list[dict] = []

    def add(name: str, op: str, **args: Any) -> None:
        out.append({"id": f"{target}/manifest/{name}", "target": target, "kind": "manifest", "op": op, "args": args})

    # every leaf gets nasty values; informational leaves (not scored) fewer on the OpenVINO engine,
    # whose accepted cases cost a model compile per reader
    # Every leaf gets nasty values on the OpenVINO engine (both readers); the torch engine (Python
    # reader only, same validator) gets its own sections' leaves. Accepted cases cost a model
    # compile or build per reader, so leaves that are never scored get one value.
    torch_only = ("model", "files", "features", "backend", "precision")
    for path in leaves(manifest):
        pname = ".".join(str(p) for p in path)
        values = NASTY
        if target == "torch" and path[0] not in torch_only:
            continue
        if _informational(path):
            values = NASTY[:1]
        elif target == "ov" and path[0] in ("input", "anomaly_map", "threshold"):
            values = [nv for nv in NASTY if nv[0] not in ("zero", "neg", "half")]  # valid ones: see edges
        elif path[0] in ("features", "files"):
            values = NASTY[:1] + NASTY[5:8] if target == "ov" else NASTY[:1] + NASTY[5:7]
        elif pname in ("model.student.decoder_blocks.1", "model.student.decoder_blocks.2"):
            values = NASTY[:1] + NASTY[5:7]  # .0 gets them all
        for vname, v in values:
            add(f"set:{pname}={vname}", "set", path=list(path), value=_enc(v))
    # range edges of the contract (both sides) and valid edits
    edges = {
        ("max_batch",): [0, 4096, 4097, 1, 2.0],
        ("image_size", 0): [31, 32, 64, 4096, 4097, 32.0], ("image_size", 1): [31, 4097],
        ("input", "mean", 0): [-1000, -1000.5, 1000.5, 0.0, 1e-300], ("input", "std", 1): [1e-3, 9e-4, 1e-300, 1000,
                                                                                      1000.5, -0.25, 0.3],
        ("anomaly_map", "sigma"): [64, 64.01, 1e9, 2.0, 0.1, 1e-300, 0.3],
        ("anomaly_map", "truncate"): [16, 16.5, 0.1, 2.0, 1e-9],
        ("anomaly_map", "eps"): [1e-12, 1e-13, 1e-3, 2e-3, 0.0],
        ("anomaly_map", "mode"): ["mul", "max", "ADD"],
        ("threshold", "value"): [0.0, -1e-9, 1e300, 123.5],
        ("format_version",): [Raw("1.0"), Raw("1e0"), Raw("-0"), 2, Raw("1.5")],
        ("precision",): ["fp16", "int8", "fp64"],
        ("backend",): ["tensorrt", "openvino" if target == "torch" else "torch", "onnx"],
        ("features", 0, "shape", 0): [65537, 9], ("features", 3, "dtype"): ["float16"],
        ("features", 0, "dtype"): ["float16"], ("features", 2, "shape", 1): [33],
    }
    for path, values in edges.items():
        if target == "torch" and path[0] not in torch_only + ("image_size",):
            continue
        for v in values:
            add(f"edge:{'.'.join(map(str, path))}={_label(v)}", "set", path=list(path), value=_enc(v))
    if target == "torch":  # the rest is the same validator as on the OpenVINO engine
        for key in ("model", "files", "features", "backend"):
            add(f"delete:{key}", "delete", path=[key])
        for path in (("model", "student"), ("model", "backbone"), ("model", "student", "channels")):
            add(f"delete:{'.'.join(path)}", "delete", path=list(path))
        add("wrap:model.student.width_multx1", "wrap", path=["model", "student", "width_mult"], depth=1)
        for op in ("bom", "compact", "deep100000", "nan_token", "bigint_dig"):
            add(f"text:{op}", "text", how=op)
        size = len(dumps(manifest).encode())
        for i in range(10):
            add(f"truncate:{i}", "truncate", at=rng.randrange(1, size))
        for i in range(20):
            add(f"flip:{i}", "flip", at=rng.randrange(size), bit=rng.randrange(8))
        for how in ("fifo", "dev_zero", "directory", "symlink_ok"):
            add(f"file:{how}", "file", how=how)
        return out
    # both sigma and truncate: radius 0 and the largest radius allowed
    add("edge:radius0", "multi", sets=[[["anomaly_map", "sigma"], 0.2], [["anomaly_map", "truncate"], 1.0]])
    add("edge:radius1024", "multi", sets=[[["anomaly_map", "sigma"], 64], [["anomaly_map", "truncate"], 16]])
    add("edge:radius1025", "multi", sets=[[["anomaly_map", "sigma"], 64.0], [["anomaly_map", "truncate"], 16.0078125]])
    add("edge:features_both_C9", "multi", sets=[[["features", 0, "shape", 0], 9], [["features", 3, "shape", 0], 9]])
    add("edge:features_both_f16", "multi", sets=[[["features", i, "dtype"], "float16"] for i in range(6)])
    for key in manifest:
        add(f"delete:{key}", "delete", path=[key])
    for path in (("input", "mean"), ("anomaly_map", "sigma"), ("features", 0, "shape"), ("threshold", "value"),
                 ("files", next(iter(manifest["files"])), "sha256")):
        add(f"delete:{'.'.join(map(str, path))}", "delete", path=list(path))
    for path in (("max_batch",), ("anomaly_map", "sigma"), ("input", "std"), ("image_size",)):
        for depth in (1, 3, 70):
            add(f"wrap:{'.'.join(map(str, path))}x{depth}", "wrap", path=list(path), depth=depth)
    # duplicate keys: the same value (harmless) and another value (readers must agree)
    add("dup:max_batch_same", "dup", path=[], key="max_batch", value=manifest["max_batch"])
    add("dup:sigma_other", "dup", path=["anomaly_map"], key="sigma", value=2.0)
    add("dup:format_other", "dup", path=[], key="format", value="other")
    add("dup:threshold_value_neg", "dup", path=["threshold"], key="value", value=-1.0)
    add("extra:top_key", "set", path=["zz_extra"], value=_enc({"a": [1, 2]}))
    add("extra:am_key", "set", path=["anomaly_map", "zz_extra"], value=1)
    # text-level rewrites that keep the meaning
    for op in ("bom", "compact", "reorder", "crlf", "lead_ws", "trail_ws", "escapes", "tabs", "indent0"):
        add(f"text:{op}", "text", how=op)
    # text-level damage
    for op in ("bom2", "utf16", "latin1", "overlong", "nul", "lone_surrogate", "trail_garbage", "empty", "null",
               "array", "string", "number", "two_docs", "deep100", "deep65", "deep64", "deep100000",
               "pad17mib", "comment", "single_quotes", "trailing_comma", "nan_token", "nan_sigma", "bigint_dig"):
        add(f"text:{op}", "text", how=op)
    size = len(dumps(manifest).encode())
    for i in range(24):
        add(f"truncate:{i}", "truncate", at=rng.randrange(1, size))
    for i in range(60):
        add(f"flip:{i}", "flip", at=rng.randrange(size), bit=rng.randrange(8))
    for i in range(20):
        add(f"byte:{i}", "byte", at=rng.randrange(size), value=rng.choice([0, 0x22, 0x5c, 0x7b, 0x7d, 0x2c, 0x30,
                                                                            0x39, 0x2d, 0x65, 0x80, 0xff]))
    # what sits at engine.json
    for how in ("fifo", "dev_zero", "directory", "symlink_ok", "dangling", "missing", "dev_null"):
        add(f"file:{how}", "file", how=how)
    return out


def _enc(v: Any) -> Any:
    """JSON-safe encoding of a value that may hold Raw tokens (cases travel as JSON)."""
    if isinstance(v, Raw):
        return {"__raw__": v.text}
    if isinstance(v, dict):
        return {"__obj__": {k: _enc(x) for k, x in v.items()}}
    if isinstance(v, list):
        return [_enc(x) for x in v]
    return v


def _dec(v: Any) -> Any:
    if isinstance(v, dict) and "__raw__" in v:
        return Raw(v["__raw__"])
    if isinstance(v, dict) and "__obj__" in v:
        return {k: _dec(x) for k, x in v["__obj__"].items()}
    if isinstance(v, list):
        return [_dec(x) for x in v]
    return v


def _label(v: Any) -> str:
    return dumps(v, indent=None).replace(" ", "")


def model_cases(target: str, rng: random.Random) -> list[dict]:
    files = ["model.onnx", "model.xml", "model.bin"] if target == "ov" else ["model.safetensors"]
    out: list[dict] = []

    def add(name: str, op: str, **args: Any) -> None:
        out.append({"id": f"{target}/model/{name}", "target": target, "kind": "model", "op": op, "args": args})

    for f in files:
        for rehash in (False, True):
            tag = f"{f}{'+rehash' if rehash else ''}"
            add(f"delete:{tag}", "model", file=f, how="delete", rehash=rehash)
            add(f"empty:{tag}", "model", file=f, how="truncate", at=0, rehash=rehash)
            add(f"half:{tag}", "model", file=f, how="truncate", frac=0.5, rehash=rehash)
            add(f"minus1:{tag}", "model", file=f, how="truncate", frac=-1, rehash=rehash)
            add(f"append:{tag}", "model", file=f, how="append", rehash=rehash)
            for i in range((3 if target == "ov" else 6) if rehash else 2):
                add(f"flip{i}:{tag}", "model", file=f, how="flip", seed=rng.randrange(1 << 30), rehash=rehash)
        for how in ("fifo", "dev_zero", "directory", "symlink_ok"):
            add(f"file:{how}:{f}", "model", file=f, how=how, rehash=False)
    if target == "ov":
        add("swap:xml_bin", "model", file="model.xml", how="swap", other="model.bin", rehash=False)
        add("swap:xml_bin+rehash", "model", file="model.xml", how="swap", other="model.bin", rehash=True)
        add("swap:onnx_xml+rehash", "model", file="model.onnx", how="swap", other="model.xml", rehash=True)
        add("swap:foreign_bin+rehash", "model", file="model.bin", how="foreign", rehash=True)
        for what in ("nan", "inf", "big"):
            add(f"weights:{what}+rehash", "model", file="model.bin", how="weights", what=what, rehash=True)
        add("weights:nan", "model", file="model.bin", how="weights", what="nan", rehash=False)
        add("xml:fp16_label+rehash", "model", file="model.xml", how="xml_f16", rehash=True)
    else:
        add("swap:other_engine", "model", file="model.safetensors", how="other_engine", rehash=False)
        add("swap:other_engine+rehash", "model", file="model.safetensors", how="other_engine", rehash=True)
        for what in ("nan", "inf", "big"):
            add(f"weights:{what}+rehash", "model", file="model.safetensors", how="st_weights", what=what, rehash=True)
        for hdr in ST_HEADER_MUTATIONS:
            add(f"st_header:{hdr}+rehash", "model", file="model.safetensors", how="st_header", hdr=hdr, rehash=True)
    return out


ST_HEADER_MUTATIONS = ("len_huge", "len_past_end", "len_zero", "json_garbage", "dtype_f16", "dtype_i64",
                       "dtype_bogus", "shape_grow", "shape_neg", "offsets_past_end", "offsets_reversed",
                       "offsets_overlap", "drop_tensor", "extra_tensor", "metadata_nonstr", "rename_tensor")


def run_cases(rng: random.Random) -> list[dict]:
    """Run-directory mutations, each built with the torch backend over an existing engine."""
    out: list[dict] = []

    def add(name: str, expect: str, op: str, **args: Any) -> None:
        out.append({"id": f"run/{name}", "target": "run", "kind": "run", "op": op, "expect": expect, "args": args})

    cfg = [
        (("model", "image_size"), [[0, 0], [31, 32], [4097, 32], "32"], "refuse"),
        (("model", "image_size"), [[40, 48]], "valid"),
        (("model", "normalization", "std"), [[0, 1, 1], [1e-300, 1, 1], [1e-4, 1, 1], [Raw("NaN"), 1, 1],
                                             [1001, 1, 1]], "refuse"),
        (("model", "normalization", "std"), [[0.3, 0.3, 0.3]], "valid"),
        (("model", "normalization", "mean"), [[Raw("NaN"), 0, 0], [1001, 0, 0], [0, 0]], "refuse"),
        (("model", "anomaly_map", "sigma"), [1e9, 0, -1, 64.5, Raw("NaN"), 1e-300], "refuse"),
        (("model", "anomaly_map", "sigma"), [64], "valid"),
        (("model", "anomaly_map", "mode"), ["max", None], "refuse"),
        (("model", "anomaly_map", "mode"), ["mul"], "valid"),
        (("model", "student", "channels"), [[1, 2, 3], None], "refuse"),
        (("model", "student", "width_mult"), [0, "x"], "refuse"),
        (("model", "student", "bottleneck_blocks"), [-1], "refuse"),
        (("model", "student", "decoder_blocks"), [[1], [-1, 1, 1]], "refuse"),
        (("model", "backbone"), ["resnet999", None], "refuse"),
        (("model", "teacher_weights_id"), ["sha256:0000"], "refuse"),
        (("format",), ["other"], "refuse"),
        (("format_version",), [2, True, Raw("1.5")], "refuse"),
        (("epoch",), ["x"], "either"),
        (("files", "student.safetensors"), ["0" * 64, None], "refuse"),
    ]
    for path, values, expect in cfg:
        for v in values:
            add(f"config:{'.'.join(path)}={_label(v)}", expect, "config_set", path=list(path), value=_enc(v))
    for key in ("model", "files", "format", "format_version"):
        add(f"config:delete:{key}", "refuse", "config_delete", path=[key])
    for how, expect in (("bom", "either"), ("compact", "same"), ("truncate", "refuse"), ("latin1", "refuse"),
                        ("deep100000", "refuse"), ("array", "refuse")):
        add(f"config:text:{how}", expect, "config_text", how=how)
    for v, expect in ((-0.5, "refuse"), (Raw("NaN"), "refuse"), (Raw("1e400"), "refuse"), ("0.5", "refuse"),
                      (True, "refuse"), (0.0, "valid")):
        add(f"scores:threshold={_label(v)}", expect, "scores_set", value=_enc(v))
    for how, expect in (("delete", "refuse"), ("garbage", "refuse"), ("bom", "either"), ("fifo", "refuse")):
        add(f"scores:file:{how}", expect, "scores_file", how=how)
    for f in ("student.safetensors", "teacher.safetensors"):
        for how in ("flip", "truncate", "delete"):
            add(f"tensors:{how}:{f}", "refuse", "tensors", file=f, how=how, rehash=False,
                seed=rng.randrange(1 << 30))
        for hdr in ST_HEADER_MUTATIONS if f.startswith("student") else ("len_huge", "dtype_f16", "shape_grow"):
            add(f"tensors:st_header:{hdr}:{f}+rehash", "refuse" if hdr != "metadata_nonstr" else "either",
                "tensors", file=f, how="st_header", hdr=hdr, rehash=True)
        add(f"tensors:weights:nan:{f}+rehash", "refuse_or_nonfinite", "tensors", file=f, how="st_weights",
            what="nan", rehash=True)
        add(f"tensors:file:fifo:{f}", "refuse", "tensors", file=f, how="fifo", rehash=False)
    return out


# frames: (name, expect). "same": the result equals the canonical frames'; "refuse"; "either": the
# canonical result (within TOL) or a refusal; "valid": finite scores or a refusal, no crash.
FRAME_CASES = [
    ("fortran_order", "same"), ("neg_stride_w", "same"), ("neg_stride_h", "same"), ("padded_rows", "same"),
    ("planar_channels", "same"), ("readonly", "same"), ("torch", "same"), ("torch_permuted", "same"),
    ("list", "same"), ("tuple", "same"), ("list_torch", "same"), ("list_noncontig", "same"),
    ("lowercase_rgb", "same"), ("bgr_reversed", "same"), ("batch_over_max", "same"), ("broadcast_batch", "same"),
    ("torch_expand", "same"), ("mono_nhw", "same"), ("list_mixed_sizes", "same"), ("every_other_column", "same"),
    ("return_maps_false", "same"), ("single", "same"),
    ("float32", "either"), ("float64", "either"), ("float16", "either"), ("requires_grad", "either"),
    ("list_mixed_dtype", "either"),
    ("int8", "refuse"), ("int16", "refuse"), ("uint16", "refuse"), ("int32", "refuse"), ("int64", "refuse"),
    ("uint32", "refuse"), ("bool", "refuse"), ("complex64", "refuse"), ("object", "refuse"), ("strings", "refuse"),
    ("float_nan", "refuse"), ("float_inf", "refuse"), ("float_neg", "refuse"), ("float_256", "refuse"),
    ("float_1e30", "refuse"), ("rank0", "refuse"), ("rank1", "refuse"), ("rank2_rgb", "refuse"),
    ("rank3_rgb", "refuse"), ("rank5", "refuse"), ("rank6", "refuse"), ("channels0", "refuse"),
    ("channels2", "refuse"), ("channels4", "refuse"), ("channels5", "refuse"), ("mono_3ch", "refuse"),
    ("n0", "refuse"), ("h0", "refuse"), ("w0", "refuse"), ("empty_list", "refuse"), ("list_none", "refuse"),
    ("list_int", "refuse"), ("nested_lists", "refuse"), ("dict", "refuse"), ("none", "refuse"),
    ("string", "refuse"), ("bytes", "refuse"), ("list_mixed_channels", "refuse"), ("list_nan_frame", "refuse"),
    ("fmt_yuv", "refuse"), ("fmt_empty", "refuse"), ("fmt_none", "refuse"), ("fmt_int", "refuse"),
    ("fmt_bytes", "either"), ("fmt_rgba", "refuse"), ("huge_broadcast", "refuse"), ("huge_mono_row", "refuse"),
    ("map_size_bogus", "refuse"), ("meta_tensor", "refuse"),
    ("tiny_1x1", "valid"), ("row_1x3000", "valid"), ("large_3000x4000", "valid"), ("col_3000x1", "valid"), ("mono_nhw1", "valid"),
    ("map_size_input", "valid"), ("black", "valid"), ("white", "valid"),
]
FRAME_TARGETS = ("py-torch", "py-ov", "native", "raw")
RAW_SKIP = {"torch", "torch_permuted", "list_torch", "torch_expand", "requires_grad", "meta_tensor", "lowercase_rgb",
            "map_size_input", "map_size_bogus", "return_maps_false"}


# the module reads frames in place and refuses, with a ValueError naming the strides, layouts whose
# pixels are not packed in rows (the Python Engine copies those first): for it "either", not "same"
RAW_IN_PLACE_ONLY = {"fortran_order", "neg_stride_w", "neg_stride_h", "planar_channels", "list_noncontig",
                     "bgr_reversed", "every_other_column", "broadcast_batch", "padded_rows"}


def frame_cases() -> list[dict]:
    return [{"id": f"frames/{t}/{name}", "target": t, "kind": "frames", "op": name,
             "expect": "either" if t == "raw" and name in RAW_IN_PLACE_ONLY else expect, "args": {}}
            for t in FRAME_TARGETS for name, expect in FRAME_CASES if not (t == "raw" and name in RAW_SKIP)]


def all_cases(seed: int = SEED) -> list[dict]:
    """The deterministic case list (from the canonical manifests' structure: mutations apply to
    the fixture engines' real engine.json by path; test_fuzz checks the structures match)."""
    manifests = canonical_manifests()
    rng = random.Random(seed)
    cases = (manifest_cases("ov", manifests["ov"], rng) + manifest_cases("torch", manifests["torch"], rng)
             + model_cases("ov", rng) + model_cases("torch", rng) + run_cases(rng) + frame_cases())
    ids = [c["id"] for c in cases]
    assert len(set(ids)) == len(ids), "duplicate case ids"
    return cases


def canonical_manifests() -> dict[str, dict]:
    """The two engines' manifests as built by ``make_fixtures``, with build-time values (dates,
    hashes, timings) replaced by stand-ins: only the structure feeds the case list."""
    features = lambda shapes: [{"name": n, "shape": list(s), "dtype": "float32"}  # noqa: E731
                               for n, s in zip(FEATURE_NAMES, shapes + shapes)]
    common = {"format": "cdd-engine", "format_version": 1, "package_version": "x", "created": "x",
              "source_checkpoint": {}, "backend": "x", "precision": "fp32", "max_batch": 4, "image_size": [32, 32],
              "input": {"name": "image", "layout": "NCHW", "dtype": "float32", "color": "RGB", "mean": [0, 0, 0],
                        "std": [1, 1, 1], "resize": "bilinear_antialias"},
              "features": [], "anomaly_map": {"mode": "add", "sigma": 4.0, "truncate": 4.0, "eps": 1e-8,
                                              "upsample": "bilinear_align_corners", "blur_boundary": "reflect"},
              "threshold": {"value": 0.5, "source": "x", "statistics": {}}, "files": {}}
    ov = json.loads(json.dumps(common))
    ov.update(source_checkpoint={"path": None, "method": "unknown", "backbone": "micro"}, backend="openvino",
              features=features([(8, 8, 8), (16, 4, 4), (32, 2, 2)]),
              files={f: {"sha256": "0" * 64, "bytes": 1} for f in ("model.onnx", "model.xml", "model.bin")},
              build={"backend_choice": "asked for", "seconds": 1.0})
    th = json.loads(json.dumps(common))
    th.update(source_checkpoint={"path": "x", "method": "rd", "backbone": RUN_BACKBONE, "epoch": 1,
                                 "teacher_weights_id": "random:0"},
              backend="torch", features=features([(40, 8, 8), (80, 4, 4), (320, 2, 2)]),
              files={"model.safetensors": {"sha256": "0" * 64, "bytes": 1}},
              build={"backend_choice": "asked for", "seconds": 1.0},
              model={"backbone": RUN_BACKBONE, "student": {"channels": [40, 80, 320], "width_mult": 1,
                                                            "bottleneck_blocks": 1, "decoder_blocks": [1, 1, 1]}})
    th["threshold"]["statistics"] = {"n": 5, "mean": 0.5, "std": 0.1, "median": 0.5, "min": 0.4, "max": 0.6, "k": 3.0}
    return {"ov": ov, "torch": th}


def structure(m: Any) -> Any:
    """A manifest's shape (keys and list lengths) without its values: what the case list depends on."""
    if isinstance(m, dict):
        return {k: structure(v) for k, v in m.items()}
    if isinstance(m, list):
        return [structure(v) for v in m]
    return None


# ------------------------------------------------------------------------------------ fixtures
def make_fixtures(root: Path) -> dict:
    """Build the fixture engines once: a micro OpenVINO engine (three convolutions, 32x32) and a
    run directory of the smallest real RD model with its torch engine. -> {name: path}."""
    import numpy as np  # noqa: F401
    import torch

    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT / "csrc" / "tests"))
    import make_test_engine as mte
    from engine_helpers import write_run_dir

    import cdd_engine
    from cdd_engine.models import build_rd_model

    torch.set_num_threads(1)
    root.mkdir(parents=True, exist_ok=True)
    ov = Path(mte.cached_engine(micro=True)["engine"])
    shutil.copytree(ov, root / "engine_ov")
    model = build_rd_model(RUN_BACKBONE, pretrained=False, image_size=RUN_SIZE, seed=0).eval()
    run = write_run_dir(root / "run", model)
    cdd_engine.build(run, backend="torch", max_batch=4, output_dir=root / "engine_torch", runtime="python")
    # a second torch engine of another seed: a model file swapped between engines
    other = build_rd_model(RUN_BACKBONE, pretrained=False, image_size=RUN_SIZE, seed=1).eval()
    run2 = write_run_dir(root / "run_other", other)
    cdd_engine.build(run2, backend="torch", max_batch=4, output_dir=root / "engine_torch_other", runtime="python")
    return {"root": str(root), "ov": str(root / "engine_ov"), "torch": str(root / "engine_torch"),
            "torch_other": str(root / "engine_torch_other"), "run": str(run)}


def fixture_manifests(fx: dict) -> dict[str, dict]:
    return {t: json.loads((Path(fx[t]) / "engine.json").read_text()) for t in ("ov", "torch")}


# ------------------------------------------------------------------------------------ mutations
def _get(doc: Any, path: list) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _set(doc: Any, path: list, value: Any) -> None:
    _get(doc, path[:-1])[path[-1]] = value


def _as_pairs(doc: Any) -> Any:
    if isinstance(doc, dict):
        return Pairs((k, _as_pairs(v)) for k, v in doc.items())
    if isinstance(doc, list):
        return [_as_pairs(v) for v in doc]
    return doc


def mutate_manifest_bytes(case: dict, manifest: dict) -> bytes:
    """The mutated engine.json bytes of a "manifest" case (file-type cases: the original text)."""
    a = case["args"]
    op = case["op"]
    m = json.loads(json.dumps(manifest))
    text = dumps(m)
    if op == "set":
        try:
            _set(m, a["path"], _dec(a["value"]))
        except (KeyError, IndexError, TypeError):
            _get(m, a["path"][:-1])[a["path"][-1]] = _dec(a["value"])
        return dumps(m).encode()
    if op == "multi":
        for path, v in a["sets"]:
            _set(m, path, _dec(v))
        return dumps(m).encode()
    if op == "delete":
        del _get(m, a["path"][:-1])[a["path"][-1]]
        return dumps(m).encode()
    if op == "wrap":
        v = _get(m, a["path"])
        for _ in range(a["depth"]):
            v = [v]
        _set(m, a["path"], v)
        return dumps(m).encode()
    if op == "dup":
        p = _as_pairs(m)
        parent = p
        for k in a["path"]:
            parent = dict(parent)[k]
        parent.append((a["key"], a["value"]))
        return dumps(p).encode()
    if op == "truncate":
        return text.encode()[:a["at"]]
    if op == "flip":
        b = bytearray(text.encode())
        b[a["at"]] ^= 1 << a["bit"]
        return bytes(b)
    if op == "byte":
        b = bytearray(text.encode())
        b[a["at"]] = a["value"]
        return bytes(b)
    if op == "text":
        return _text_mutation(a["how"], m, text)
    if op in ("file", "model"):
        return text.encode()
    raise ValueError(f"unknown manifest op {op}")


def _deep(m: dict, depth: int) -> bytes:
    """The manifest with an extra key holding ``depth`` nested empty lists."""
    text = dumps(m, indent=None)
    return (text[:-1] + ', "zz_deep": ' + "[" * depth + "]" * depth + "}").encode()


def _text_mutation(how: str, m: dict, text: str) -> bytes:
    b = text.encode()
    if how == "bom":
        return b"\xef\xbb\xbf" + b
    if how == "bom2":
        return b"\xef\xbb\xbf\xef\xbb\xbf" + b
    if how == "compact":
        return json.dumps(m, separators=(",", ":")).encode()
    if how == "reorder":
        def rev(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: rev(v[k]) for k in reversed(list(v))}
            return [rev(x) for x in v] if isinstance(v, list) else v
        return json.dumps(rev(m), indent=1).encode()
    if how == "crlf":
        return b.replace(b"\n", b"\r\n")
    if how == "lead_ws":
        return b" \n\t\r " + b
    if how == "trail_ws":
        return b + b"\n\n \t\r\n"
    if how == "escapes":
        return text.replace('"cdd-engine"', '"\\u0063dd\\u002dengine"').replace('"add"', '"\\u0061dd"').encode()
    if how == "tabs":
        return json.dumps(m, indent="\t").encode()
    if how == "indent0":
        return json.dumps(m, indent=0).encode()
    if how == "utf16":
        return text.encode("utf-16")
    if how == "latin1":
        return text.replace('"unknown"', '"unkn\xf6wn"').replace('"rd"', '"r\xf6d"').encode("latin-1")
    if how == "overlong":
        return b.replace(b'"RGB"', b'"RG\xc1\x82"', 1)
    if how == "nul":
        return b.replace(b'"NCHW"', b'"NC\x00HW"', 1)
    if how == "lone_surrogate":
        return text.replace('"NCHW"', '"NCHW\\ud800"', 1).encode()
    if how == "trail_garbage":
        return b + b"garbage"
    if how == "empty":
        return b""
    if how in ("null", "array", "string", "number"):
        return {"null": b"null", "array": b"[" + b + b"]", "string": b'"cdd-engine"', "number": b"1"}[how]
    if how == "two_docs":
        return b + b + b"\n"
    if how.startswith("deep"):
        return _deep(m, int(how[4:]))
    if how == "pad17mib":
        return b[:-1] + b" " * (17 << 20) + b[-1:]
    if how == "comment":
        return b"// engine\n" + b
    if how == "single_quotes":
        return b.replace(b'"format"', b"'format'", 1)
    if how == "trailing_comma":
        return b[:b.rindex(b"}")] + b",}"
    if how == "nan_token":
        return b.replace(b'"created": ', b'"created": NaN, "zz": ', 1)
    if how == "nan_sigma":
        return b.replace(b'"sigma": ', b'"sigma": NaN, "zz": ', 1)

    if how == "bigint_dig":
        return b.replace(b'"max_batch": ', b'"max_batch": ' + b"9" * 5000 + b", \"zz\": ", 1)
    raise ValueError(f"unknown text mutation {how}")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def scratch_copy(src: Path, dst: Path) -> Path:
    """A copy of an engine or run directory; files are hard links (cases replace, never edit, them)."""
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.is_dir():
            shutil.copytree(p, dst / p.name)
        else:
            _link_or_copy(p, dst / p.name)
    return dst


def _replace(path: Path, data: bytes) -> None:
    if path.exists() or path.is_symlink():
        path.unlink()
    path.write_bytes(data)


def _special(path: Path, how: str, good: Path | None = None) -> None:
    """Put a FIFO, a link to /dev/zero, a directory, ... at ``path``."""
    if path.exists() or path.is_symlink():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if how == "fifo":
        os.mkfifo(path)
    elif how == "dev_zero":
        path.symlink_to("/dev/zero")
    elif how == "dev_null":
        path.symlink_to("/dev/null")
    elif how == "directory":
        path.mkdir()
    elif how == "dangling":
        path.symlink_to(path.with_name("does_not_exist"))
    elif how == "symlink_ok":
        target = path.with_name(path.name + ".real")
        shutil.copy2(good, target)
        path.symlink_to(target.name)
    elif how != "missing":
        raise ValueError(how)


def _flip_random(data: bytes, seed: int) -> bytes:
    r = random.Random(seed)
    b = bytearray(data)
    i = r.randrange(len(b))
    b[i] ^= 1 << r.randrange(8)
    return bytes(b)


def _st_split(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _st_join(header: Any, body: bytes, raw_header: bytes | None = None) -> bytes:
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body


def _first_float_tensor(header: dict) -> str:
    names = sorted(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32"
                   and "conv" in k.lower() or (k != "__metadata__" and v["dtype"] == "F32" and k.endswith("weight")))
    return names[0]


def st_header_mutation(data: bytes, hdr: str) -> bytes:
    header, body = _st_split(data)
    name = _first_float_tensor(header)
    t = header[name]
    if hdr == "len_huge":
        return struct.pack("<Q", 1 << 62) + data[8:]
    if hdr == "len_past_end":
        return struct.pack("<Q", len(data)) + data[8:]
    if hdr == "len_zero":
        return struct.pack("<Q", 0) + data[8:]
    if hdr == "json_garbage":
        raw = data[8:8 + struct.unpack("<Q", data[:8])[0]]
        return _st_join(None, body, raw[:len(raw) // 2] + b"\x00" * (len(raw) - len(raw) // 2))
    if hdr == "dtype_f16":
        t["dtype"] = "F16"
    elif hdr == "dtype_i64":
        t["dtype"] = "I64"
    elif hdr == "dtype_bogus":
        t["dtype"] = "Q7"
    elif hdr == "shape_grow":
        t["shape"] = [s * 2 for s in t["shape"]]
    elif hdr == "shape_neg":
        t["shape"] = [-1] + t["shape"][1:]
    elif hdr == "offsets_past_end":
        t["data_offsets"] = [t["data_offsets"][0], len(body) + 1024]
    elif hdr == "offsets_reversed":
        t["data_offsets"] = t["data_offsets"][::-1]
    elif hdr == "offsets_overlap":
        t["data_offsets"] = [0, t["data_offsets"][1] - t["data_offsets"][0]]
    elif hdr == "drop_tensor":
        del header[name]
    elif hdr == "extra_tensor":
        header["zz_extra"] = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    elif hdr == "metadata_nonstr":
        header["__metadata__"] = {"format": 3}
    elif hdr == "rename_tensor":
        header[name + "_x"] = header.pop(name)
    else:
        raise ValueError(hdr)
    return _st_join(header, body)


def st_weights(data: bytes, what: str) -> bytes:
    header, body = _st_split(data)
    name = _first_float_tensor(header)
    lo = header[name]["data_offsets"][0]
    value = {"nan": float("nan"), "inf": float("inf"), "big": 3e38}[what]
    b = bytearray(body)
    b[lo:lo + 4] = struct.pack("<f", value)
    return data[:len(data) - len(body)] + bytes(b)


def ov_weights(data: bytes, what: str) -> bytes:
    """model.bin: the first fp32 constant set to NaN/inf/huge (the micro model's first weights)."""
    value = {"nan": float("nan"), "inf": float("inf"), "big": 3e38}[what]
    b = bytearray(data)
    b[0:4] = struct.pack("<f", value)
    return bytes(b)


def rehash(engine: Path, names: list[str]) -> None:
    """Record the present size and SHA-256 of ``names`` in engine.json (a hostile, consistent edit)."""
    import hashlib
    m = json.loads((engine / "engine.json").read_text())
    for n in names:
        p = engine / n
        if p.is_file():
            m["files"][n] = {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "bytes": p.stat().st_size}
    _replace(engine / "engine.json", json.dumps(m, indent=2).encode())


def apply_model_mutation(case: dict, engine: Path, fx: dict) -> dict:
    """Mutate a model file of the scratch engine; -> expectation."""
    a = case["args"]
    f = engine / a["file"]
    data = f.read_bytes()
    how = a["how"]
    if how == "delete":
        f.unlink()
    elif how == "truncate":
        n = a.get("at", 0) if "frac" not in a else (len(data) - 1 if a["frac"] < 0 else int(len(data) * a["frac"]))
        _replace(f, data[:n])
    elif how == "append":
        _replace(f, data + b"\x00")
    elif how == "flip":
        _replace(f, _flip_random(data, a["seed"]))
    elif how in ("fifo", "dev_zero", "directory", "symlink_ok"):
        keep = engine / (a["file"] + ".orig")
        _link_or_copy(f, keep)
        _special(f, how, good=keep)
        keep.unlink()
    elif how == "swap":
        other = engine / a["other"]
        od = other.read_bytes()
        _replace(other, data)
        _replace(f, od)
        if a["rehash"]:
            rehash(engine, [a["other"]])
    elif how == "foreign":  # another engine's weights file under this name
        _replace(f, (Path(fx["torch"]) / "model.safetensors").read_bytes())
    elif how == "other_engine":
        _replace(f, (Path(fx["torch_other"]) / a["file"]).read_bytes())
    elif how == "weights":
        _replace(f, ov_weights(data, a["what"]))
    elif how == "st_weights":
        _replace(f, st_weights(data, a["what"]))
    elif how == "st_header":
        _replace(f, st_header_mutation(data, a["hdr"]))
    elif how == "xml_f16":
        _replace(f, data.replace(b'element_type="f32"', b'element_type="f16"'))
    else:
        raise ValueError(how)
    if a["rehash"]:
        rehash(engine, [a["file"]])
    if how == "symlink_ok":
        return {"refuse": False, "mode": "same", "why": "a symlink to a regular file is accepted"}
    if a["rehash"] and how in ("weights", "st_weights"):  # non-finite scores must raise (judge_result)
        return {"refuse": False, "mode": "finite", "why": f"{a['what']} weight: refuse or finite scores"}
    if a["rehash"]:
        return {"refuse": False, "mode": "finite", "why": "a consistent hostile edit: refuse or finite scores"}
    return {"refuse": True, "mode": "same", "why": "model file differs from engine.json's record"}


# ------------------------------------------------------------------------------------ frames
def make_frames(name: str, base: Any) -> tuple[Any, Any, dict]:
    """-> (images, canonical uint8 frames with the same pixels (or None), score kwargs)."""
    import numpy as np
    import torch

    F = base
    kw: dict = {"pixel_format": "RGB"}
    canon: Any = F
    rng = np.random.default_rng(SEED)
    if name == "fortran_order":
        img = np.asfortranarray(F)
    elif name == "neg_stride_w":
        img = np.ascontiguousarray(F[:, :, ::-1])[:, :, ::-1]
    elif name == "neg_stride_h":
        img = np.ascontiguousarray(F[:, ::-1])[:, ::-1]
    elif name == "padded_rows":
        big = np.zeros((F.shape[0], F.shape[1], F.shape[2] + 11, 3), np.uint8)
        big[:, :, :F.shape[2]] = F
        img = big[:, :, :F.shape[2]]
    elif name == "planar_channels":
        img = np.ascontiguousarray(F.transpose(3, 0, 1, 2)).transpose(1, 2, 3, 0)
    elif name == "readonly":
        img = F.copy()
        img.setflags(write=False)
    elif name == "torch":
        img = torch.from_numpy(F.copy())
    elif name == "torch_permuted":
        img = torch.from_numpy(np.ascontiguousarray(F.transpose(0, 3, 1, 2))).permute(0, 2, 3, 1)
    elif name == "list":
        img = [F[0], F[1]]
    elif name == "tuple":
        img = (F[0], F[1])
    elif name == "list_torch":
        img = [torch.from_numpy(F[0].copy()), torch.from_numpy(F[1].copy())]
    elif name == "list_noncontig":
        img = [np.asfortranarray(F[0]), F[1][:, ::-1][:, ::-1]]
    elif name == "lowercase_rgb":
        img, kw = F, {"pixel_format": "rgb"}
    elif name == "bgr_reversed":
        img, kw = F[..., ::-1], {"pixel_format": "BGR"}
    elif name == "batch_over_max":
        img = canon = np.concatenate([F, F[::-1], F], axis=0)
    elif name == "broadcast_batch":
        img = np.broadcast_to(F[:1], (3,) + F.shape[1:])
        canon = np.ascontiguousarray(img)
    elif name == "torch_expand":
        img = torch.from_numpy(F[:1].copy()).expand(3, -1, -1, -1)
        canon = np.repeat(F[:1], 3, axis=0)
    elif name == "mono_nhw":
        g = np.ascontiguousarray(F[..., 0])
        img, canon, kw = g, g[..., None], {"pixel_format": "MONO"}
    elif name == "mono_nhw1":
        img, canon, kw = np.ascontiguousarray(F[..., :1]), None, {"pixel_format": "MONO"}
    elif name == "list_mixed_sizes":
        img = canon = [F[0], F[1][:20, :31], np.ascontiguousarray(F[0][:7, :50])]
    elif name == "every_other_column":
        big = np.repeat(F, 2, axis=2)
        img, canon = big[:, :, ::2], np.ascontiguousarray(big[:, :, ::2])
    elif name == "return_maps_false":
        img, kw = F, {"pixel_format": "RGB", "return_maps": False}
    elif name == "single":
        img = canon = F[:1]
    elif name in ("float32", "float64", "float16"):
        img = F.astype(name)
    elif name == "requires_grad":
        img = torch.from_numpy(F.astype(np.float32)).requires_grad_(True)
    elif name == "list_mixed_dtype":
        img = [F[0], F[1].astype(np.float32)]
    elif name in ("int8", "int16", "uint16", "int32", "int64", "uint32", "bool", "complex64"):
        img = F.astype(name)
    elif name == "object":
        img = F.astype(object)
    elif name == "strings":
        img = F.astype(str)
    elif name.startswith("float_"):
        img = F.astype(np.float32)
        img[0, 3, 4, 1] = {"float_nan": np.nan, "float_inf": np.inf, "float_neg": -1.0, "float_256": 256.0,
                           "float_1e30": 1e30}[name]
    elif name == "rank0":
        img = np.uint8(3)
    elif name == "rank1":
        img = F.reshape(-1)
    elif name == "rank2_rgb":
        img = F[0, :, :, 0]
    elif name == "rank3_rgb":
        img = F[0]
    elif name == "rank5":
        img = F[None]
    elif name == "rank6":
        img = F[None, None]
    elif name.startswith("channels"):
        c = int(name[8:])
        img = np.zeros(F.shape[:3] + (c,), np.uint8) + 7
    elif name == "mono_3ch":
        img, kw = F, {"pixel_format": "MONO"}
    elif name == "n0":
        img = F[:0]
    elif name == "h0":
        img = F[:, :0]
    elif name == "w0":
        img = F[:, :, :0]
    elif name == "empty_list":
        img = []
    elif name == "list_none":
        img = [F[0], None]
    elif name == "list_int":
        img = [F[0], 3]
    elif name == "nested_lists":
        img = F[:1, :4, :4].tolist()
    elif name == "dict":
        img = {"frames": F}
    elif name == "none":
        img = None
    elif name == "string":
        img = "frame.png"
    elif name == "bytes":
        img = F.tobytes()
    elif name == "list_mixed_channels":
        img = [F[0], F[1][..., :1]]
    elif name == "list_nan_frame":
        bad = F[1].astype(np.float32)
        bad[0, 0, 0] = np.nan
        img = [F[0], bad]
    elif name.startswith("fmt_"):
        img = F
        kw = {"pixel_format": {"fmt_yuv": "YUV", "fmt_empty": "", "fmt_none": None, "fmt_int": 3,
                               "fmt_bytes": b"RGB", "fmt_rgba": "RGBA"}[name]}
    elif name == "huge_broadcast":
        img = np.broadcast_to(np.uint8(9), (1, 16385, 16385, 3))
    elif name == "huge_mono_row":
        img, kw = np.broadcast_to(np.uint8(9), (1, 1, MAX_FRAME_PIXELS + 1)), {"pixel_format": "MONO"}
    elif name == "map_size_bogus":
        img, kw = F, {"pixel_format": "RGB", "map_size": "huge"}
    elif name == "map_size_input":
        img, kw = F, {"pixel_format": "RGB", "map_size": "input"}
    elif name == "meta_tensor":
        img = torch.empty(F.shape, dtype=torch.uint8, device="meta")
    elif name == "tiny_1x1":
        img = F[:, :1, :1]
    elif name == "row_1x3000":
        img = rng.integers(0, 256, (1, 1, 3000, 3), dtype=np.uint8)
    elif name == "large_3000x4000":
        img = np.broadcast_to(F[:1, :1, :1], (1, 3000, 4000, 3)).copy()
        img[0, ::97, ::89] = 255
    elif name == "col_3000x1":
        img = rng.integers(0, 256, (1, 3000, 1, 3), dtype=np.uint8)
    elif name == "black":
        img = np.zeros_like(F)
    elif name == "white":
        img = np.full_like(F, 255)
    else:
        raise ValueError(name)
    return img, canon, kw


# ------------------------------------------------------------------------------------ worker
# Accepted refusals (docs/engine_format.md: bad input is a clear error of the engine's own type):
# - loading an engine directory (Python runtime): EngineError and subclasses (EngineFormatError,
#   BackendUnavailable, NonFiniteOutputError at score time) - the contract names EngineFormatError;
# - the C++ reader through the module: ValueError (InvalidArgument/EngineFormat), FileNotFoundError
#   (NotFound), RuntimeError (Unsupported/Backend) and NonFiniteOutputError, i.e. the translations of
#   cdd::Error codes (a pybind11-translated std::exception is indistinguishable from Backend);
# - frames / call arguments: TypeError or ValueError (runtime/frames.py's documented errors);
# - building from a run directory: CheckpointError, EngineError, ValueError, TypeError.
# Never accepted anywhere: RecursionError, MemoryError, UnicodeError, json.JSONDecodeError,
# KeyError, IndexError, AttributeError, OverflowError, ZeroDivisionError, and an empty message.
NEVER = (RecursionError, MemoryError, UnicodeError, json.JSONDecodeError, KeyError, IndexError, AttributeError,
         ArithmeticError, NotImplementedError, AssertionError)


def accepted(reader: str, e: BaseException) -> bool:
    from cdd_engine.checkpoint import CheckpointError
    from cdd_engine.runtime.errors import EngineError

    if isinstance(e, NEVER) or not str(e).strip():
        return False
    if reader.startswith("frames"):
        return isinstance(e, (TypeError, ValueError)) or type(e).__name__ == "NonFiniteOutputError"
    if reader == "native":
        return type(e) in (ValueError, FileNotFoundError, RuntimeError) or isinstance(e, EngineError)
    if reader == "build":
        return isinstance(e, (CheckpointError, EngineError, ValueError, TypeError))
    return isinstance(e, EngineError)


def _fmt_err(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:160]}"


class Worker:
    """Runs cases in this process; the parent isolates crashes and hangs."""

    def __init__(self, fx: dict) -> None:
        import numpy as np
        import torch

        torch.set_num_threads(1)
        self.np, self.torch = np, torch
        self.fx = fx
        import cdd_engine
        self.cdd = cdd_engine
        try:
            from cdd_engine import native
            self.native_mod = native.load()
        except ImportError:
            self.native_mod = None
        self.scratch = Path(tempfile.mkdtemp(prefix="fuzz_", dir=fx["root"]))
        self.manifests = fixture_manifests(fx)
        self.frames = np.random.default_rng(SEED).integers(0, 256, (2, 41, 53, 3), dtype=np.uint8)
        # engine cases score one frame: one compiled network per load (batch 1) is the main cost
        self.frame1 = np.ascontiguousarray(self.frames[:1])
        self.base: dict[str, Any] = {}
        self.engines: dict[str, Any] = {}
        self.n = 0
        self.outcomes: list = []

    # ---- readers: -> ("ok", scores, maps, is_anomalous, threshold) or ("error", exc)
    def read_python(self, d: Path, images: Any = None, **kw: Any) -> tuple:
        e = self.cdd.load(d, runtime="python", num_threads=1)
        r = e.score(self.frame1 if images is None else images, **kw)
        return r.scores, r.maps, r.is_anomalous, r.threshold

    def read_native(self, d: Path, images: Any = None) -> tuple:
        # dynamic shapes: one compile per load (static ones compile again at the first score)
        e = self.native_mod.Engine(str(d), num_threads=1, verify_hashes=True, static_shapes=False)
        s, m, a, t = e.score(self.frame1 if images is None else images, "RGB", True, "model")
        return s, m, a, t

    def call(self, cid: str, reader: str, fn: Callable[[], tuple]) -> dict:
        print(f"START {cid} {reader}", flush=True)
        try:
            s, m, a, t = fn()
        except Exception as e:  # noqa: BLE001 - judged by accepted()
            self.outcomes.append((reader, _fmt_err(e)))
            return {"reader": reader, "ok": False, "accepted": accepted(reader, e), "err": _fmt_err(e),
                    "nonfinite": type(e).__name__ == "NonFiniteOutputError"}
        np = self.np
        s = np.asarray(s, dtype=np.float64)
        self.outcomes.append((reader, f"ok {_short(s)}"))
        maps = None if m is None else (np.stack([np.asarray(x, np.float64) for x in m]) if isinstance(m, list)
                                       and len({np.shape(x) for x in m}) == 1 else m)
        return {"reader": reader, "ok": True, "scores": s, "maps": maps, "isan": np.asarray(a, bool), "thr": float(t)}

    def baseline(self, target: str) -> dict:
        if target not in self.base:
            reader = {"ov": ["python", "native"], "torch": ["python"]}[target]
            out = {}
            for r in reader:
                if r == "native" and self.native_mod is None:
                    continue
                res = self.call(f"baseline/{target}", r, lambda r=r: (self.read_python if r == "python" else
                                                                      self.read_native)(Path(self.fx[target])))
                if not res["ok"]:
                    raise RuntimeError(f"baseline {target}/{r} failed: {res['err']}")
                out[r] = res
            self.base[target] = out
        return self.base[target]

    def fresh(self, name: str) -> Path:
        self.n += 1
        return self.scratch / f"{self.n:05d}_{name}"

    # ---- case kinds
    def run(self, case: dict) -> dict:
        kind = case["kind"]
        self.outcomes: list = []
        try:
            if kind in ("manifest", "model"):
                fails = self.run_engine_case(case)
            elif kind == "run":
                fails = self.run_run_case(case)
            else:
                fails = self.run_frames_case(case)
        finally:
            for p in list(self.scratch.iterdir()):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink()
        return {"id": case["id"], "fails": fails, "outcomes": self.outcomes}

    def run_engine_case(self, case: dict) -> list:
        target = case["target"]
        base = self.baseline(target)
        src = Path(self.fx[target])
        d = scratch_copy(src, self.fresh("engine"))
        original = self.manifests[target]
        if case["kind"] == "manifest":
            data = mutate_manifest_bytes(case, original)
            if case["op"] == "file":
                how = case["args"]["how"]
                keep = d / "engine.json.orig"
                _link_or_copy(d / "engine.json", keep)
                _special(d / "engine.json", how, good=keep)
                keep.unlink()
                expect = ({"refuse": False, "mode": "same", "why": "symlink to a regular file"} if how == "symlink_ok"
                          else {"refuse": True, "mode": "same", "why": f"engine.json is {how}"})
            else:
                _replace(d / "engine.json", data)
                expect = classify_manifest(data, original)
                if case["op"] == "text" and case["args"]["how"] in ("bom", "compact", "reorder", "crlf", "lead_ws",
                                                                     "trail_ws", "escapes", "tabs", "indent0"):
                    expect["must_accept"] = True
        else:
            expect = apply_model_mutation(case, d, self.fx)
        results = [self.call(case["id"], "python", lambda: self.read_python(d))]
        if target == "ov" and self.native_mod is not None:
            results.append(self.call(case["id"], "native", lambda: self.read_native(d)))
        return judge(case, expect, results, base, agree=case["kind"] == "manifest")

    def run_run_case(self, case: dict) -> list:
        base = self.baseline("torch")["python"]
        run = scratch_copy(Path(self.fx["run"]), self.fresh("run"))
        out = scratch_copy(Path(self.fx["torch"]), self.fresh("engine"))
        apply_run_mutation(case, run)
        before = _snapshot(out)
        expect = case["expect"]

        def build() -> tuple:
            self.cdd.build(run, backend="torch", max_batch=4, output_dir=out, runtime="python")
            return self.read_python(out)

        res = self.call(case["id"], "build", build)
        fails = []
        if res["ok"]:
            fails += judge_result(res, base, {"refuse": expect == "refuse", "mode": {
                "same": "same", "either": "same", "valid": "finite", "refuse": "same",
                "refuse_or_nonfinite": "nonfinite"}[expect], "why": expect})
        elif not res["accepted"]:
            fails.append(("build", f"raw error {res['err']}"))
        elif expect == "same":
            fails.append(("build", f"refused a valid run: {res['err']}"))
        if not res["ok"] and _snapshot(out) != before:  # the engine in output_dir must be untouched
            old = self.call(case["id"], "old-engine", lambda: self.read_python(out))
            if not old["ok"] or not _same(old, base):
                fails.append(("build", "LOST ENGINE: after the failed build the existing engine "
                              + (f"no longer loads ({old['err']})" if not old["ok"] else "gives other scores")))
        return fails

    def engine_for(self, target: str) -> Any:
        if target not in self.engines:
            if target == "py-torch":
                e = self.cdd.load(self.fx["torch"], runtime="python", num_threads=1)
            elif target == "py-ov":
                e = self.cdd.load(self.fx["ov"], runtime="python", num_threads=1)
            elif target == "native":
                e = self.cdd.load(self.fx["ov"], runtime="native", num_threads=1)
            else:
                e = self.native_mod.Engine(self.fx["ov"], num_threads=1, verify_hashes=True)
            self.engines[target] = e
        return self.engines[target]

    def score_frames(self, target: str, images: Any, **kw: Any) -> tuple:
        e = self.engine_for(target)
        if target == "raw":
            s, m, a, t = e.score(images, kw.get("pixel_format", "RGB"), kw.get("return_maps", True),
                                 kw.get("map_size", "model"))
            return s, m, a, t
        r = e.score(images, **kw)
        return r.scores, r.maps, r.is_anomalous, r.threshold

    def run_frames_case(self, case: dict) -> list:
        target = case["target"]
        if target in ("native", "raw") and self.native_mod is None:
            return []
        reader = f"frames-{target}"
        images, canon, kw = make_frames(case["op"], self.frames)
        key = "frames-" + target
        if key not in self.base:  # the canonical frames' result on this engine, once per worker
            self.base[key] = self.call(case["id"], reader + "-ref", lambda: self.score_frames(target, self.frames))
        good = self.base[key]
        ref = good if canon is self.frames and kw.get("pixel_format") != "MONO" else None
        if canon is not None and ref is None:
            ref = self.call(case["id"], reader + "-canon", lambda: self.score_frames(
                target, canon, **{k: v for k, v in kw.items() if k == "pixel_format" and v == "MONO"}))
        res = self.call(case["id"], reader, lambda: self.score_frames(target, images, **kw))
        fails = []
        expect = case["expect"]
        if res["ok"]:
            if expect == "refuse":
                fails.append((reader, f"ACCEPTED invalid frames (scores {_short(res['scores'])})"))
            elif not bool(self.np.isfinite(res["scores"]).all()):
                fails.append((reader, f"non-finite scores given as a verdict {_short(res['scores'])}"))
            elif ref is not None and expect in ("same", "either") and ref["ok"]:
                tol = 0.0 if expect == "same" else TOL
                if kw.get("return_maps") is False:
                    res = dict(res, maps=ref["maps"])
                if kw.get("map_size") != "input" and not _same(res, ref, tol):
                    fails.append((reader, f"SILENT CHANGE: {_diff(res, ref)}"))
        elif not res["accepted"]:
            fails.append((reader, f"raw error {res['err']}"))
        elif expect == "same":
            fails.append((reader, f"refused valid frames: {res['err']}"))
        # a bad call must not spoil the next valid one (per-thread buffers, engine state)
        after = self.call(case["id"], reader + "-after", lambda: self.score_frames(target, self.frames))
        if not after["ok"] or (good["ok"] and not _same(after, good)):
            fails.append((reader, "POISONED: a valid call after this one " +
                          (f"fails ({after['err']})" if not after["ok"] else "gives other scores")))
        return fails


def _snapshot(d: Path) -> dict:
    """name -> bytes of every file under ``d`` (engines here are a few MB)."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def apply_run_mutation(case: dict, run: Path) -> None:
    import hashlib
    a = case["args"]
    op = case["op"]
    cfg_path = run / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if op == "config_set":
        _set(cfg, a["path"], _dec(a["value"]))
        _replace(cfg_path, dumps(cfg).encode())
    elif op == "config_delete":
        del _get(cfg, a["path"][:-1])[a["path"][-1]]
        _replace(cfg_path, dumps(cfg).encode())
    elif op == "config_text":
        text = dumps(cfg)
        _replace(cfg_path, {"bom": b"\xef\xbb\xbf" + text.encode(), "compact": json.dumps(cfg).encode(),
                            "truncate": text.encode()[:len(text) // 2],
                            "latin1": text.replace('"rd"', '"r\xf6d"').encode("latin-1"),
                            "deep100000": (text[:-1] + ', "zz": ' + "[" * 100000 + "]" * 100000 + "}").encode(),
                            "empty": b"", "array": b"[]"}[a["how"]])
    elif op == "scores_set":
        p = run / "train_scores.json"
        doc = json.loads(p.read_text())
        doc["threshold"] = _dec(a["value"])
        _replace(p, dumps(doc).encode())
    elif op == "scores_file":
        p = run / "train_scores.json"
        how = a["how"]
        if how == "delete":
            p.unlink()
        elif how == "truncate":
            _replace(p, p.read_bytes()[:20])
        elif how == "garbage":
            _replace(p, b"\xff\xfe garbage")
        elif how == "bom":
            _replace(p, b"\xef\xbb\xbf" + p.read_bytes())
        elif how == "fifo":
            p.unlink()
            os.mkfifo(p)
    elif op == "tensors":
        f = run / a["file"]
        data = f.read_bytes()
        how = a["how"]
        if how == "flip":
            _replace(f, _flip_random(data, a["seed"]))
        elif how == "truncate":
            _replace(f, data[:len(data) // 2])
        elif how == "delete":
            f.unlink()
        elif how == "st_header":
            _replace(f, st_header_mutation(data, a["hdr"]))
        elif how == "st_weights":
            _replace(f, st_weights(data, a["what"]))
        elif how == "fifo":
            f.unlink()
            os.mkfifo(f)
        if a["rehash"]:
            cfg["files"][a["file"]] = hashlib.sha256(f.read_bytes()).hexdigest()
            _replace(cfg_path, dumps(cfg).encode())
    elif op != "noop":
        raise ValueError(op)


# ------------------------------------------------------------------------------------ judging
def _short(s: Any) -> str:
    return "[" + ", ".join(f"{float(x):.4g}" for x in list(s)[:3]) + "]"


def _rel(a: Any, b: Any) -> float:
    import numpy as np
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    with np.errstate(invalid="ignore"):
        d = float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-30))
    return d if d == d else math.inf


def _same(r: dict, ref: dict, tol: float = 0.0) -> bool:
    if _rel(r["scores"], ref["scores"]) > tol:
        return False
    if (r.get("maps") is None) != (ref.get("maps") is None):
        return False
    return r.get("maps") is None or _rel(r["maps"], ref["maps"]) <= tol


def _diff(r: dict, ref: dict) -> str:
    return (f"scores {_short(r['scores'])} vs {_short(ref['scores'])} "
            f"(max rel {_rel(r['scores'], ref['scores']):.2g})")


def judge_result(res: dict, base: dict, expect: dict) -> list:
    """One reader that loaded and scored: is that allowed?"""
    import numpy as np
    reader = res["reader"]
    s = res["scores"]
    if not bool(np.isfinite(s).all()):
        return [(reader, f"NON-FINITE scores {_short(s)} given as a verdict (is_anomalous "
                         f"{res['isan'].tolist()})")]
    if expect["refuse"]:
        changed = not _same(res, base)
        return [(reader, ("SILENT CHANGE: " + _diff(res, base) if changed else "ACCEPTED (same scores)")
                 + f"; should refuse: {expect['why']}")]
    fails = []
    if not np.array_equal(res["isan"], s > res["thr"]):
        fails.append((reader, f"is_anomalous {res['isan'].tolist()} disagrees with scores > {res['thr']}"))
    if expect["mode"] == "same" and not _same(res, base):
        fails.append((reader, f"SILENT CHANGE ({expect['why']}): {_diff(res, base)}"))
    if expect["mode"] == "nonfinite":
        fails.append((reader, f"finite scores {_short(s)} from a model with a {expect['why']}"))
    return fails


def judge(case: dict, expect: dict, results: list, base: dict, agree: bool) -> list:
    fails = []
    for r in results:
        if r["ok"]:
            fails += judge_result(r, base[r["reader"]], expect)
        elif not r["accepted"]:
            fails.append((r["reader"], f"raw error {r['err']}"))
        elif expect.get("must_accept"):
            fails.append((r["reader"], f"refused an unchanged-meaning manifest ({expect['why']}): {r['err']}"))
    if agree and len(results) == 2:
        a, b = results
        if a["ok"] != b["ok"]:
            fails.append(("both", "READERS DISAGREE: " + ", ".join(
                f"{r['reader']} {'accepts' if r['ok'] else 'refuses (' + r['err'][:90] + ')'}" for r in results)))
        elif a["ok"] and _rel(a["scores"], b["scores"]) > TOL:
            fails.append(("both", f"readers' scores differ: {_short(a['scores'])} vs {_short(b['scores'])}"))
    return fails


def worker_main(fx_path: str) -> None:
    fx = json.loads(Path(fx_path).read_text())
    w = Worker(fx)
    by_id = {c["id"]: c for c in all_cases()}
    print("READY", flush=True)
    for line in sys.stdin:
        cid = line.strip()
        if not cid:
            continue
        case = by_id[cid]
        t0 = time.monotonic()
        try:
            out = w.run(case)
        except Exception as e:  # noqa: BLE001 - a bug in the harness itself is reported, not hidden
            out = {"id": cid, "fails": [("harness", f"harness error {_fmt_err(e)}")]}
        out["t"] = round(time.monotonic() - t0, 3)
        print("RESULT " + json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------ parent
def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _last_error(path: Path) -> str:
    """The last stderr line of a dead worker that is not a warning (a fatal error message)."""
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines()
                 if ln.strip() and "Warning" not in ln and not ln.startswith(" ")]
    except OSError:
        return ""
    return f" ({lines[-1][:160]})" if lines else ""


def run_campaign(fx: dict, cases: list[dict], workers: int = 2, budget_s: float = 600.0,
                 log: Callable[[str], None] | None = None) -> dict:
    """Run ``cases`` in ``workers`` subprocesses. -> {"results": {id: fails}, "wall_s", ...}.

    A worker that dies or hangs is replaced; the case (and reader) it was running is reported
    as a crash / hang / memory failure and the rest of its cases go to the replacement."""
    import selectors
    import subprocess

    fx_path = Path(fx["root"]) / "fixtures.json"
    fx_path.write_text(json.dumps(fx))
    t0 = time.monotonic()
    queues = [[c for i, c in enumerate(cases) if i % workers == k] for k in range(workers)]
    results: dict[str, list] = {}
    times: dict[str, float] = {}
    outcomes: dict[str, list] = {}
    timeouts = {c["id"]: SPECIAL_TIMEOUT_S if "fifo" in c["id"] else CASE_TIMEOUT_S for c in cases}
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    restarts = 0

    class Slot:
        def __init__(self, queue: list[dict]) -> None:
            self.queue = list(queue)
            self.proc: Any = None
            self.current: str | None = None
            self.reader = ""
            self.started = 0.0
            self.buf = b""
            self.err_path = Path()

    def start(slot: Slot) -> None:
        slot.err_path = Path(fx["root"]) / f"worker_{id(slot)}_{restarts}.err"
        with open(slot.err_path, "wb") as err:
            slot.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "worker", str(fx_path)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                         env=env, cwd=str(ROOT))
        slot.buf = b""
        slot.current = "<startup>"
        slot.started = time.monotonic()
        os.set_blocking(slot.proc.stdout.fileno(), False)

    def feed(slot: Slot) -> None:
        if slot.queue:
            c = slot.queue.pop(0)
            slot.current, slot.reader, slot.started = c["id"], "", time.monotonic()
            slot.proc.stdin.write((c["id"] + "\n").encode())
            slot.proc.stdin.flush()
        else:
            slot.current = None
            slot.proc.stdin.close()

    slots = [Slot(q) for q in queues if q]
    for s in slots:
        start(s)
    sel = selectors.DefaultSelector()
    for s in slots:
        sel.register(s.proc.stdout, selectors.EVENT_READ, s)
    active = len(slots)
    while active:
        for key, _ in sel.select(timeout=0.05):
            slot: Slot = key.data
            try:
                chunk = slot.proc.stdout.read()
            except (BlockingIOError, ValueError):
                chunk = None
            if chunk:
                slot.buf += chunk
            elif chunk == b"":  # EOF: the worker ended
                sel.unregister(slot.proc.stdout)
                slot.proc.wait()
                if slot.current == "<startup>":  # it cannot even start: no point in retrying
                    why = f"worker failed to start (exit status {slot.proc.returncode}){_last_error(slot.err_path)}"
                    for c in slot.queue:
                        results[c["id"]] = [("worker", why)]
                    slot.queue = []
                    active -= 1
                    continue
                if slot.current is not None:
                    results[slot.current] = [(slot.reader or "worker",
                                              f"CRASH: worker died with exit status {slot.proc.returncode}"
                                              + _last_error(slot.err_path))]
                    restarts += 1
                    if slot.queue and time.monotonic() - t0 < budget_s:
                        start(slot)
                        sel.register(slot.proc.stdout, selectors.EVENT_READ, slot)
                        continue
                active -= 1
                continue
            while b"\n" in slot.buf:
                line, slot.buf = slot.buf.split(b"\n", 1)
                text = line.decode("utf-8", "replace")
                if text == "READY":
                    feed(slot)
                elif text.startswith("START "):
                    slot.reader = text.split(" ", 2)[2]
                elif text.startswith("RESULT "):
                    out = json.loads(text[7:])
                    results[out["id"]] = [tuple(f) for f in out["fails"]]
                    times[out["id"]] = out["t"]
                    outcomes[out["id"]] = out.get("outcomes", [])
                    if log:
                        log(f"{len(results)}/{len(cases)} {out['id']}")
                    if time.monotonic() - t0 > budget_s:
                        slot.queue = []
                    feed(slot)
        now = time.monotonic()
        for slot in slots:
            p = slot.proc
            if slot.current is None or p.poll() is not None:
                continue
            over = now - slot.started > (timeouts.get(slot.current, CASE_TIMEOUT_S) if slot.current != "<startup>"
                                         else 300)
            rss = _rss(p.pid)
            if over or rss > RSS_LIMIT_BYTES:
                p.kill()
                p.wait()
                what = (f"HANG: no result after {now - slot.started:.0f} s" if over else
                        f"MEMORY: worker RSS {rss >> 20} MiB > {RSS_LIMIT_BYTES >> 20} MiB")
                if slot.current != "<startup>":
                    results[slot.current] = [(slot.reader or "worker", what)]
                slot.current = "<killed>"  # EOF handling restarts it
                results.pop("<killed>", None)
    results.pop("<killed>", None)
    results.pop("<startup>", None)
    return {"results": results, "wall_s": time.monotonic() - t0, "restarts": restarts, "times": times,
            "outcomes": outcomes}


def table(rows: list[tuple[str, str, str]]) -> str:
    """case | reader | outcome, as aligned text."""
    if not rows:
        return "(none)"
    w0 = max(len("case"), *(len(r[0]) for r in rows))
    w1 = max(len("reader"), *(len(r[1]) for r in rows))
    lines = [f"{'case':<{w0}}  {'reader':<{w1}}  outcome", f"{'-' * w0}  {'-' * w1}  -------"]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    return "\n".join(lines)


def findings_markdown(campaign: dict, cases: list[dict]) -> str:
    """Failures grouped by case family, for routing."""
    groups: dict[str, list] = {}
    for c in cases:
        for reader, what in campaign["results"].get(c["id"], [("worker", "NOT RUN (budget)")]):
            fam = c["id"].split(":")[0] if ":" in c["id"] else c["id"].rsplit("/", 1)[0]
            groups.setdefault(fam, []).append((c["id"], reader, what))
    out = [f"# Fuzz findings (seed {SEED}, {len(cases)} mutations, {campaign['wall_s']:.0f} s)", ""]
    n = sum(len(v) for v in groups.values())
    out.append(f"{n} failing reader results in {sum(1 for c in cases if campaign['results'].get(c['id']))} cases.")
    for fam, rows in sorted(groups.items()):
        out += ["", f"## {fam} ({len(rows)})", "", "```", table(rows), "```"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "worker":
        sys.path.insert(0, str(ROOT))
        worker_main(sys.argv[2])
    else:
        sys.exit("usage: fuzz_cases.py worker FIXTURES_JSON")
