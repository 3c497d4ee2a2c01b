"""Write, read and validate an engine directory (docs/engine_format.md, format version 1).

The manifest ``engine.json`` is written last, so an interrupted build leaves a directory
that ``read_manifest`` refuses ("missing engine.json") instead of a half-built engine.
Every file listed under ``files`` is checked on read: present, the recorded size, the
recorded SHA-256. Any mismatch is an :class:`EngineFormatError` naming the file.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

from ..version import __version__
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
_REQUIRED = ("format", "format_version", "package_version", "created", "source_checkpoint", "backend",
             "precision", "max_batch", "image_size", "input", "features", "anomaly_map", "threshold", "files")
_HASH_CHUNK = 1 << 22  # 4 MiB reads: hashing a 435 MB WRN50 model takes about a second


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


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        _fail(f"engine.json: {what} must be a positive integer, got {value!r}")
    return value


def _finite_floats(value: Any, n: int, what: str) -> None:
    if (not isinstance(value, list) or len(value) != n
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        _fail(f"engine.json: {what} must be a list of {n} finite numbers, got {value!r}")


def validate_manifest(m: Any) -> None:
    """Check the structure and values of a manifest; raise EngineFormatError on the first problem."""
    if not isinstance(m, dict):
        _fail(f"engine.json must hold a JSON object, got {type(m).__name__}")
    if m.get("format") != FORMAT:
        _fail(f"engine.json: 'format' must be {FORMAT!r}, got {m.get('format')!r} (not a cdd-engine engine)")
    version = m.get("format_version")
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
    _positive_int(m["max_batch"], "max_batch")
    size = m["image_size"]
    if not isinstance(size, list) or len(size) != 2:
        _fail(f"engine.json: image_size must be [H, W], got {size!r}")
    for v in size:
        _positive_int(v, "image_size")
    inp = m["input"]
    if not isinstance(inp, dict):
        _fail("engine.json: 'input' must be an object")
    for key, want in (("name", "image"), ("layout", "NCHW"), ("dtype", "float32"), ("color", "RGB"),
                      ("resize", "bilinear_antialias")):
        if inp.get(key) != want:
            _fail(f"engine.json: input.{key} must be {want!r}, got {inp.get(key)!r}")
    _finite_floats(inp.get("mean"), 3, "input.mean")
    _finite_floats(inp.get("std"), 3, "input.std")
    if any(s <= 0 for s in inp["std"]):
        _fail(f"engine.json: input.std must be positive, got {inp['std']}")
    feats = m["features"]
    if not isinstance(feats, list) or [f.get("name") if isinstance(f, dict) else None for f in feats] != list(FEATURE_NAMES):
        _fail(f"engine.json: features must list {list(FEATURE_NAMES)} in order")
    for f in feats:
        shape = f.get("shape")
        if not isinstance(shape, list) or len(shape) != 3:
            _fail(f"engine.json: feature {f['name']} shape must be [C, h, w], got {shape!r}")
        for v in shape:
            _positive_int(v, f"feature {f['name']} shape")
        if f.get("dtype") not in ("float32", "float16"):
            _fail(f"engine.json: feature {f['name']} dtype must be float32 or float16, got {f.get('dtype')!r}")
    for t, s in zip(feats[:3], feats[3:]):
        if t["shape"] != s["shape"]:
            _fail(f"engine.json: {t['name']} {t['shape']} and {s['name']} {s['shape']} must have equal shapes")
    am = m["anomaly_map"]
    if not isinstance(am, dict) or am.get("mode") not in ("add", "mul"):
        _fail(f"engine.json: anomaly_map.mode must be 'add' or 'mul', got {am!r}")
    for key in ("sigma", "truncate", "eps"):
        v = am.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            _fail(f"engine.json: anomaly_map.{key} must be a finite number >= 0, got {v!r}")
    if am.get("upsample") != "bilinear_align_corners" or am.get("blur_boundary") != "reflect":
        _fail("engine.json: anomaly_map.upsample must be 'bilinear_align_corners' and blur_boundary 'reflect'")
    thr = m["threshold"]
    v = thr.get("value") if isinstance(thr, dict) else None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        _fail(f"engine.json: threshold.value must be a finite number, got {v!r}")
    files = m["files"]
    if not isinstance(files, dict):
        _fail("engine.json: 'files' must be an object {name: {sha256, bytes}}")
    for name, rec in files.items():
        if "/" in name or "\\" in name or name in ("", ".", "..", MANIFEST):
            _fail(f"engine.json: file name {name!r} must be a plain file name inside the engine directory")
        if (not isinstance(rec, dict) or not isinstance(rec.get("sha256"), str) or len(rec["sha256"]) != 64
                or isinstance(rec.get("bytes"), bool) or not isinstance(rec.get("bytes"), int)):
            _fail(f"engine.json: files[{name!r}] must be {{'sha256': 64 hex chars, 'bytes': int}}, got {rec!r}")
    for name in BACKEND_FILES[m["backend"]]:
        if name not in files:
            _fail(f"engine.json: backend {m['backend']!r} needs {name!r} listed under 'files'")


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
    if not path.is_file():
        _fail(f"{path}: missing {MANIFEST} (not an engine directory, or its build did not finish)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EngineFormatError(f"{path}: corrupt {MANIFEST}, not valid JSON ({e})") from e
    validate_manifest(manifest)
    for name, rec in manifest["files"].items():
        fpath = root / name
        if not fpath.is_file():
            _fail(f"{fpath}: file listed in {MANIFEST} is missing")
        size = fpath.stat().st_size
        if size != rec["bytes"]:
            _fail(f"{fpath}: size {size} bytes, {MANIFEST} records {rec['bytes']} (truncated or replaced)")
        if verify_hashes:
            digest = sha256_file(fpath)
            if digest != rec["sha256"]:
                _fail(f"{fpath}: SHA-256 {digest[:16]}... does not match {rec['sha256'][:16]}... recorded in "
                      f"{MANIFEST} (the file was modified or belongs to another engine)")
    return manifest
