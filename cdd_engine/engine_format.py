"""Write, read and validate an engine directory (docs/engine_format.md, format version 1).

The manifest ``engine.json`` is written last, so an interrupted build leaves a directory
that ``read_manifest`` refuses ("missing engine.json") instead of a half-built engine.
Every file listed under ``files`` is checked on read: a regular file, the recorded size, the
recorded SHA-256. Any mismatch is an :class:`EngineFormatError` naming the file.

The hashes protect the model files, not engine.json's own fields, so every field is
range-checked here with the same rules as the C++ reader (csrc/src/manifest.cpp): both readers
accept exactly the same manifests (docs/engine_format.md, "What a reader refuses"), and the
``precision`` field is checked against what the model file holds.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import stat
import struct
from pathlib import Path
from typing import Any

from . import limits
from .version import __version__
from .errors import EngineFormatError

FORMAT = "cdd-engine"
FORMAT_VERSION = 1
MANIFEST = "engine.json"
BACKENDS = ("openvino", "tensorrt", "torch")
PRECISIONS = ("fp32", "fp16", "int8")
FEATURE_NAMES = ("teacher_0", "teacher_1", "teacher_2", "student_0", "student_1", "student_2")
# Files each backend needs beside engine.json (all must also be listed under "files").
BACKEND_FILES = {
    "openvino": ("model.onnx", "model.xml", "model.bin"),
    "tensorrt": ("model.onnx", "model.plan"),
    "torch": ("model.safetensors",),
}
# package_version, created and source_checkpoint are written by every build but only informative:
# like the C++ reader, a reader does not need them
_REQUIRED = ("format", "format_version", "backend", "precision", "max_batch", "image_size", "input", "features",
             "anomaly_map", "threshold", "files")
_HASH_CHUNK = 1 << 22  # 4 MiB reads: hashing a 435 MB WRN50 model takes about a second

# Limits shared with the C++ reader (docs/engine_format.md; the numbers live in cdd_engine/limits.py).
# engine.json is a few kB; the byte and depth limits keep a hostile file from exhausting memory or
# the interpreter's stack.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_JSON_DEPTH = 64  # arrays/objects open at once, the top-level object counting as one
MAX_BATCH = limits.MAX_BATCH[1]
IMAGE_SIDE = limits.IMAGE_SIDE
MAX_CHANNELS = 65536
MEAN_RANGE = limits.MEAN
STD_RANGE = limits.STD
MAX_SIGMA = limits.SIGMA[1]
MAX_TRUNCATE = limits.TRUNCATE[1]
MAX_BLUR_RADIUS = limits.MAX_BLUR_RADIUS
EPS_RANGE = limits.EPS
MAX_FILE_BYTES = 2 ** 53  # what a JSON number holds exactly
_BOM = b"\xef\xbb\xbf"
_HEX = frozenset("0123456789abcdef")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks (models are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def file_record(path: str | os.PathLike) -> dict[str, Any]:
    """``{"sha256": hex, "bytes": size}`` of one file, as stored under ``files``."""
    return {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_manifest(*, engine_dir: str | os.PathLike, backend: str, precision: str, max_batch: int,
                  image_size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...],
                  features: list[dict[str, Any]], anomaly_map: dict[str, Any], threshold: dict[str, Any],
                  source_checkpoint: dict[str, Any], files: list[str], extra: dict[str, Any] | None = None,
                  ) -> dict[str, Any]:
    """Assemble a format-1 manifest, hashing ``files`` (names relative to ``engine_dir``)."""
    root = Path(engine_dir)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "created": utc_now(),
        "source_checkpoint": source_checkpoint,
        "backend": backend,
        "precision": precision,
        "max_batch": int(max_batch),
        "image_size": [int(image_size[0]), int(image_size[1])],
        "input": {"name": "image", "layout": "NCHW", "dtype": "float32", "color": "RGB",
                  "mean": [float(m) for m in mean], "std": [float(s) for s in std],
                  "resize": "bilinear_antialias"},
        "features": features,
        "anomaly_map": anomaly_map,
        "threshold": threshold,
        "files": {name: file_record(root / name) for name in files},
    }
    if extra:
        manifest.update(extra)
    validate_manifest(manifest)
    return manifest


def write_manifest(engine_dir: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Validate and write ``engine.json`` atomically (temp file + rename)."""
    validate_manifest(manifest)
    path = Path(engine_dir) / MANIFEST
    tmp = path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _fail(msg: str) -> None:
    raise EngineFormatError(msg)


def _is_int(value: Any) -> bool:
    """A JSON integer: written without fraction or exponent (true/false, 1.0 and 1.5 are not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _int_in(value: Any, lo: int, hi: int, what: str) -> int:
    if not _is_int(value) or not lo <= value <= hi:
        _fail(f"engine.json: {what} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number_in(value: Any, lo: float, hi: float, what: str, lo_open: bool = False) -> float:
    if not _is_number(value):
        _fail(f"engine.json: {what} must be a finite number, got {value!r}")
    if (value <= lo if lo_open else value < lo) or value > hi:
        _fail(f"engine.json: {what} must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def _numbers_in(value: Any, n: int, lo: float, hi: float, what: str) -> None:
    if not isinstance(value, list) or len(value) != n or not all(_is_number(v) for v in value):
        _fail(f"engine.json: {what} must be a list of {n} finite numbers, got {value!r}")
    for v in value:
        _number_in(v, lo, hi, f"{what} entries")


def json_depth(value: Any) -> int:
    """Arrays/objects nested in ``value`` (a scalar: 0, ``{}``: 1), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            children = v.values()
        elif isinstance(v, list):
            children = v
        else:
            continue
        deepest = max(deepest, d)
        stack.extend((c, d + 1) for c in children)
    return deepest


def validate_manifest(m: Any) -> None:
    """Check the structure and values of a manifest; raise EngineFormatError on the first problem."""
    if not isinstance(m, dict):
        _fail(f"engine.json must hold a JSON object, got {type(m).__name__}")
    if m.get("format") != FORMAT:
        _fail(f"engine.json: 'format' must be {FORMAT!r}, got {m.get('format')!r} (not a cdd-engine engine)")
    version = m.get("format_version")
    if not _is_int(version):
        _fail(f"engine.json: format_version must be an integer ({FORMAT_VERSION}), got {version!r}")
    if version != FORMAT_VERSION:
        _fail(f"engine.json: format_version {version!r} is not supported by this reader (it reads version "
              f"{FORMAT_VERSION}); rebuild the engine with this package version ({__version__})")
    missing = [k for k in _REQUIRED if k not in m]
    if missing:
        _fail(f"engine.json: missing required keys {missing}")
    if m["backend"] not in BACKENDS:
        _fail(f"engine.json: backend must be one of {BACKENDS}, got {m['backend']!r}")
    if m["precision"] not in PRECISIONS:
        _fail(f"engine.json: precision must be one of {PRECISIONS}, got {m['precision']!r}")
    _int_in(m["max_batch"], 1, MAX_BATCH, "max_batch")
    size = m["image_size"]
    if not isinstance(size, list) or len(size) != 2:
        _fail(f"engine.json: image_size must be [H, W], got {size!r}")
    for v in size:
        _int_in(v, *IMAGE_SIDE, "image_size entries")
    H, W = size
    inp = m["input"]
    if not isinstance(inp, dict):
        _fail("engine.json: 'input' must be an object")
    for key, want in (("name", "image"), ("layout", "NCHW"), ("dtype", "float32"), ("color", "RGB"),
                      ("resize", "bilinear_antialias")):
        if inp.get(key) != want:
            _fail(f"engine.json: input.{key} must be {want!r}, got {inp.get(key)!r}")
    _numbers_in(inp.get("mean"), 3, *MEAN_RANGE, "input.mean")
    _numbers_in(inp.get("std"), 3, *STD_RANGE, "input.std")
    feats = m["features"]
    if not isinstance(feats, list) or [f.get("name") if isinstance(f, dict) else None for f in feats] != list(FEATURE_NAMES):
        _fail(f"engine.json: features must list {list(FEATURE_NAMES)} in order")
    for f in feats:
        shape = f.get("shape")
        if not isinstance(shape, list) or len(shape) != 3:
            _fail(f"engine.json: feature {f['name']} shape must be [C, h, w], got {shape!r}")
        _int_in(shape[0], 1, MAX_CHANNELS, f"feature {f['name']} channels C")
        _int_in(shape[1], 1, H, f"feature {f['name']} height h (at most image_size H)")
        _int_in(shape[2], 1, W, f"feature {f['name']} width w (at most image_size W)")
        if f.get("dtype") not in ("float32", "float16"):
            _fail(f"engine.json: feature {f['name']} dtype must be float32 or float16, got {f.get('dtype')!r}")
    for t, s in zip(feats[:3], feats[3:]):
        if t["shape"] != s["shape"] or t["dtype"] != s["dtype"]:
            _fail(f"engine.json: {t['name']} {t['shape']} {t['dtype']} and {s['name']} {s['shape']} {s['dtype']} "
                  f"must have equal shapes and dtypes")
    am = m["anomaly_map"]
    if not isinstance(am, dict) or am.get("mode") not in ("add", "mul"):
        _fail(f"engine.json: anomaly_map.mode must be 'add' or 'mul', got {am!r}")
    sigma = _number_in(am.get("sigma"), 0.0, MAX_SIGMA, "anomaly_map.sigma", lo_open=True)
    truncate = _number_in(am.get("truncate"), 0.0, MAX_TRUNCATE, "anomaly_map.truncate", lo_open=True)
    _number_in(am.get("eps"), *EPS_RANGE, "anomaly_map.eps")
    radius = limits.blur_radius(sigma, truncate)
    if not 1 <= radius <= MAX_BLUR_RADIUS:
        _fail(f"engine.json: anomaly_map blur radius floor(truncate * sigma + 0.5) = {radius} must be in "
              f"[1, {MAX_BLUR_RADIUS}] (MAX_BLUR_RADIUS)")
    if am.get("upsample") != "bilinear_align_corners" or am.get("blur_boundary") != "reflect":
        _fail("engine.json: anomaly_map.upsample must be 'bilinear_align_corners' and blur_boundary 'reflect'")
    thr = m["threshold"]
    # scores are sums of cosine distances, never negative: a negative threshold flags every frame
    _number_in(thr.get("value") if isinstance(thr, dict) else None, 0.0, math.inf, "threshold.value")
    files = m["files"]
    if not isinstance(files, dict):
        _fail("engine.json: 'files' must be an object {name: {sha256, bytes}}")
    for name, rec in files.items():
        if "/" in name or "\\" in name or name in ("", ".", "..", MANIFEST):
            _fail(f"engine.json: file name {name!r} must be a plain file name inside the engine directory")
        if (not isinstance(rec, dict) or not isinstance(rec.get("sha256"), str) or len(rec["sha256"]) != 64
                or not set(rec["sha256"]) <= _HEX or not _is_int(rec.get("bytes"))
                or not 0 <= rec["bytes"] <= MAX_FILE_BYTES):
            _fail(f"engine.json: files[{name!r}] must be {{'sha256': 64 lower-case hex digits, 'bytes': integer "
                  f">= 0}}, got {rec!r}")
    for name in BACKEND_FILES[m["backend"]]:
        if name not in files:
            _fail(f"engine.json: backend {m['backend']!r} needs {name!r} listed under 'files'")
    if "int8" in m:
        _validate_int8_section(m["int8"], m["precision"])
    if m["backend"] == "torch":
        # the torch backend runs the network in the features' dtype: precision names it
        want = "float16" if m["precision"] == "fp16" else "float32"
        if any(f["dtype"] != want for f in feats):
            _fail(f"engine.json: a torch engine of precision {m['precision']!r} has {want} features, got "
                  f"{[f['dtype'] for f in feats]}")


def _validate_int8_section(sec: Any, precision: str) -> None:
    """The optional top-level "int8" section (docs/engine_format.md): what an INT8 build calibrated
    on and what its accuracy guard measured. Informative, but its shape is checked, and an int8
    engine whose guard failed is refused (such a build writes fp32, recording the failed guard)."""
    if not isinstance(sec, dict):
        _fail("engine.json: 'int8' must be an object {tool, calibration, guard}")
    if not isinstance(sec.get("tool"), str) or not sec["tool"]:
        _fail(f"engine.json: int8.tool must be a non-empty string, got {sec.get('tool')!r}")
    if not isinstance(sec.get("calibration"), dict):
        _fail("engine.json: int8.calibration must be an object")
    guard = sec.get("guard")
    if not isinstance(guard, dict) or not isinstance(guard.get("passed"), bool) \
            or not isinstance(guard.get("thresholds"), dict):
        _fail("engine.json: int8.guard must be an object with 'passed' (true/false) and 'thresholds'")
    for key in ("map_rel_error_mean", "map_rel_error_max"):
        if guard.get(key) is not None and not _is_number(guard[key]):
            _fail(f"engine.json: int8.guard.{key} must be a finite number or null, got {guard[key]!r}")
    if guard.get("spearman") is not None:
        _number_in(guard["spearman"], -1.0, 1.0, "int8.guard.spearman")
    if precision == "int8" and not guard["passed"]:
        _fail("engine.json: precision is 'int8' but int8.guard.passed is false (an INT8 engine that failed its "
              "accuracy guard); rebuild the engine")
    if precision != "int8" and guard["passed"]:
        _fail(f"engine.json: an 'int8' section whose guard passed belongs to an int8 engine, but precision is "
              f"{precision!r}")


def _read_manifest_bytes(path: Path) -> bytes:
    """engine.json's bytes: a regular file (a symlink to one is fine) of at most MAX_MANIFEST_BYTES.
    A FIFO or device is refused before it is opened, so nothing blocks or reads forever."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        _fail(f"{path}: missing {MANIFEST} (not an engine directory, or its build did not finish)")
    except OSError as e:
        _fail(f"{path}: cannot read {MANIFEST} ({e})")
    if not stat.S_ISREG(st.st_mode):
        _fail(f"{path}: not a regular file (a FIFO, device or directory is refused)")
    if st.st_size > MAX_MANIFEST_BYTES:
        _fail(f"{path}: {st.st_size} bytes, more than the {MAX_MANIFEST_BYTES}-byte limit of an engine manifest")
    try:
        # O_NONBLOCK: the file may have been swapped for a FIFO since the stat; fstat checks again
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        _fail(f"{path}: cannot open {MANIFEST} ({e})")
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            _fail(f"{path}: not a regular file (a FIFO, device or directory is refused)")
        data = f.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        _fail(f"{path}: more than the {MAX_MANIFEST_BYTES}-byte limit of an engine manifest")
    return data


def parse_manifest(data: bytes, path: Path | str = MANIFEST, what: str = MANIFEST) -> Any:
    """engine.json bytes -> the JSON value: UTF-8 (a leading BOM is skipped), at most
    MAX_JSON_DEPTH nested arrays/objects. EngineFormatError otherwise, never a decode or
    recursion error."""
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EngineFormatError(f"{path}: corrupt {what}, not UTF-8 text ({e})") from e
    try:
        value = json.loads(text)
    except ValueError as e:  # JSONDecodeError, or an integer of more digits than Python converts
        raise EngineFormatError(f"{path}: corrupt {what}, not valid JSON ({e})") from e
    except RecursionError as e:  # deeper than the interpreter's stack; the limit below is far lower
        raise EngineFormatError(f"{path}: {what} nests arrays/objects deeper than {MAX_JSON_DEPTH} "
                                f"levels") from e
    if json_depth(value) > MAX_JSON_DEPTH:
        _fail(f"{path}: {what} nests arrays/objects deeper than {MAX_JSON_DEPTH} levels")
    return value


def _safetensors_dtypes(path: Path) -> set[str]:
    """The tensor dtypes a safetensors file's header names (F32, F16, ...), without reading tensors."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 2 <= n <= min(os.fstat(f.fileno()).st_size - 8, 100 * 1024 * 1024):
                _fail(f"{path}: not a safetensors file (header length {n})")
            header = parse_manifest(f.read(n), path, "safetensors header")
    except OSError as e:
        _fail(f"{path}: cannot read ({e})")
    if not isinstance(header, dict):
        _fail(f"{path}: not a safetensors file (its header is not an object)")
    return {str(v.get("dtype")) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}


def _openvino_ir_contents(path: Path) -> tuple[set[str], bool]:
    """(element types of the IR's Const layers, whether it holds a FakeQuantize layer)."""
    import xml.etree.ElementTree as ET

    types: set[str] = set()
    quantized = False
    try:
        for _, el in ET.iterparse(str(path), events=("end",)):
            if el.tag == "layer":
                kind = el.get("type")
                if kind == "FakeQuantize":
                    quantized = True
                elif kind == "Const":
                    data = el.find("data")
                    if data is not None and data.get("element_type"):
                        types.add(data.get("element_type"))
                el.clear()
    except (ET.ParseError, OSError) as e:
        raise EngineFormatError(f"{path}: not a readable OpenVINO IR ({e})") from e
    return types, quantized


def check_precision(root: Path, m: dict[str, Any]) -> None:
    """engine.json's ``precision`` against the model file, as the C++ reader checks it: an fp32
    engine holds no float16 weights, an fp16 one does, an int8 OpenVINO IR holds FakeQuantize
    operations (NNCF's quantization) and an fp32/fp16 one none. (A TensorRT plan is opaque: its
    precision is not checked.)"""
    precision, why, file = m["precision"], "", ""
    if m["backend"] == "openvino":
        types, quantized = _openvino_ir_contents(root / "model.xml")
        if precision == "fp32" and "f16" in types:
            why = "it holds float16 weights"
        elif precision == "fp16" and "f16" not in types:
            why = "it holds no float16 weights"
        elif precision == "int8" and not quantized:
            why = "it holds no FakeQuantize operation (not an INT8 network)"
        elif precision != "int8" and quantized:
            why = "it holds FakeQuantize operations (an INT8 network)"
        file = "model.xml"
    elif m["backend"] == "torch":
        half = _safetensors_dtypes(root / "model.safetensors") & {"F16", "BF16"}
        if precision == "fp32" and half:
            why = f"it holds {sorted(half)} tensors"
        file = "model.safetensors"
    if why:
        _fail(f"{root / MANIFEST}: precision is {precision!r} but the model {file} disagrees: {why} "
              f"(a relabelled precision is refused)")


def read_manifest(engine_dir: str | os.PathLike, verify_hashes: bool = True) -> dict[str, Any]:
    """Read and validate ``engine.json``; check every listed file's presence, size and hash.

    Raises:
        EngineFormatError: missing directory or manifest, unparsable JSON, unknown format
            version, bad values, a listed file missing, truncated or with a different hash.
    """
    root = Path(engine_dir)
    if not root.is_dir():
        _fail(f"engine directory does not exist or is not a directory: {root}")
    path = root / MANIFEST
    manifest = parse_manifest(_read_manifest_bytes(path), path)
    validate_manifest(manifest)
    for name, rec in manifest["files"].items():
        fpath = root / name
        try:
            st = os.stat(fpath)
        except OSError:
            _fail(f"{fpath}: file listed in {MANIFEST} is missing")
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the reader, a device read forever
            _fail(f"{fpath}: file listed in {MANIFEST} is not a regular file")
        size = st.st_size
        if size != rec["bytes"]:
            _fail(f"{fpath}: size {size} bytes, {MANIFEST} records {rec['bytes']} (truncated or replaced)")
        if verify_hashes:
            digest = sha256_file(fpath)
            if digest != rec["sha256"]:
                _fail(f"{fpath}: SHA-256 {digest[:16]}... does not match {rec['sha256'][:16]}... recorded in "
                      f"{MANIFEST} (the file was modified or belongs to another engine)")
    check_precision(root, manifest)
    return manifest
