"""Export an engine directory as a Triton Inference Server model repository (docs/serving.md).

    export_triton("engines/bottle", "model_repository", name="bottle", instances=1)

writes::

    model_repository/bottle/config.pbtxt      Python backend, dynamic batching, instance group,
                                              threshold / pixel format / frame limit parameters
    model_repository/bottle/1/model.py        cdd_engine/serving/model.py (runs cdd_engine.Engine)
    model_repository/bottle/1/engine/         a verified copy of the engine directory

A later export with ``version=2`` adds ``2/`` beside ``1/`` and rewrites config.pbtxt for the
new engine; Triton serves the newest version (version_policy latest 1), so a restart (or a
repository reload) rolls the new engine out and ``1/`` stays for a roll-back.
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

from ..engine_format import read_manifest
from .requests import CHANNELS, DEFAULT_MAX_FRAME_SIDE, INPUT

MODEL_FILE = Path(__file__).with_name("model.py")
ENGINE_SUBDIR = "engine"
KINDS = ("auto", "cpu", "gpu")
DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_QUEUE_DELAY_US = 2000
_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def _count(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{what} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def instance_kind(kind: str, backend: str) -> str:
    """"auto": TensorRT engines run on a GPU (KIND_GPU), OpenVINO and torch engines on the CPU."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "auto":
        kind = "gpu" if backend == "tensorrt" else "cpu"
    if kind == "cpu" and backend == "tensorrt":
        raise ValueError("a TensorRT engine runs on a GPU only: use kind 'gpu' (or 'auto')")
    if kind == "gpu" and backend == "openvino":
        raise ValueError("cdd-engine's OpenVINO engines run on the CPU: use kind 'cpu' (or 'auto')")
    return "KIND_GPU" if kind == "gpu" else "KIND_CPU"


def config_pbtxt(name: str, manifest: dict[str, Any], *, instances: int, kind: str, max_batch_size: int,
                 max_queue_delay_us: int, threshold: float, pixel_format: str, max_frame_side: int,
                 num_threads: int) -> str:
    """The model configuration (protobuf text format) for one engine."""
    h, w = manifest["image_size"]
    params = {"threshold": repr(float(threshold)), "pixel_format": pixel_format,
              "max_frame_side": str(max_frame_side), "num_threads": str(num_threads),
              "engine_subdir": ENGINE_SUBDIR, "engine_backend": manifest["backend"],
              "engine_precision": manifest["precision"]}
    param_text = ",\n".join(f'  {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items())
    return f"""# Written by cdd-engine export-triton (docs/serving.md). Triton batches along dimension 0:
# FRAMES is (batch, height, width, {CHANNELS[pixel_format]}) uint8; requests of different frame sizes may share
# one execution (ragged batching: the model scores each size group as one batch).
name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{INPUT}"
    data_type: TYPE_UINT8
    dims: [ -1, -1, {CHANNELS[pixel_format]} ]
    allow_ragged_batch: true
  }}
]
output [
  {{ name: "SCORE" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "IS_ANOMALOUS" data_type: TYPE_BOOL dims: [ 1 ] }},
  {{ name: "THRESHOLD" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "MAP" data_type: TYPE_FP32 dims: [ {h}, {w} ] }}
]
instance_group [ {{ count: {instances} kind: {kind} }} ]
dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}
version_policy: {{ latest: {{ num_versions: 1 }} }}
parameters [
{param_text}
]
"""


def export_triton(engine_dir: str | os.PathLike, out: str | os.PathLike, *, name: str = "cdd_engine",
                  instances: int = 1, max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US, version: int = 1,
                  kind: str = "auto", max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, threshold: float | None = None,
                  pixel_format: str = "RGB", max_frame_side: int = DEFAULT_MAX_FRAME_SIDE,
                  num_threads: int = 0, force: bool = False) -> Path:
    """Write (or add a version to) a Triton model repository serving ``engine_dir``.

    Args:
        engine_dir: an engine directory (checked, hashes included, before anything is written).
        out: the model repository (created if missing; other models in it are left alone).
        name: the model's name in the repository and in client requests.
        instances: model instances (each loads the engine; on a CPU each competes for the cores).
        max_queue_delay_us: how long the dynamic batcher waits to fill a batch.
        version: the version directory to write; an existing one is refused unless ``force``.
        kind: "auto" (TensorRT -> KIND_GPU, else KIND_CPU), "cpu" or "gpu".
        max_batch_size: most frames in one execution (and in one request).
        threshold: overrides the engine's threshold (default: engine.json's).
        pixel_format: how the model reads the clients' frames: "RGB", "BGR" or "MONO".
        max_frame_side: larger frames get an error response instead of being resized.
        num_threads: inference threads per instance (0: the runtime's default, all cores).
        force: replace an existing version directory.

    Returns:
        The model's directory ``out/name``.
    """
    engine_dir = Path(engine_dir)
    manifest = read_manifest(engine_dir, verify_hashes=True)
    if not name or not set(name) <= _NAME_OK or name.startswith("."):
        raise ValueError(f"name must be letters, digits, '_', '-' or '.', got {name!r}")
    _count(instances, "instances", 1, 64)
    _count(max_queue_delay_us, "max_queue_delay_us", 0, 10_000_000)
    _count(version, "version", 1, 2**31 - 1)
    _count(max_batch_size, "max_batch_size", 1, 4096)
    _count(max_frame_side, "max_frame_side", 1, 65536)
    _count(num_threads, "num_threads", 0, 1024)
    if pixel_format not in CHANNELS:
        raise ValueError(f"pixel_format must be one of {tuple(CHANNELS)}, got {pixel_format!r}")
    if threshold is None:
        threshold = float(manifest["threshold"]["value"])
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    ikind = instance_kind(kind, manifest["backend"])

    model_dir = Path(out) / name
    version_dir = model_dir / str(version)
    if version_dir.exists():
        if not force:
            raise FileExistsError(f"{version_dir} exists: export with another version (--version) or force=True")
        shutil.rmtree(version_dir)
    tmp = model_dir / f".{version}.partial"  # a half-written version is never picked up by Triton
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        shutil.copy2(MODEL_FILE, tmp / "model.py")
        shutil.copytree(engine_dir, tmp / ENGINE_SUBDIR, symlinks=False)
        read_manifest(tmp / ENGINE_SUBDIR, verify_hashes=True)  # the copy is what will be served
        tmp.rename(version_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    text = config_pbtxt(name, manifest, instances=instances, kind=ikind, max_batch_size=max_batch_size,
                        max_queue_delay_us=max_queue_delay_us, threshold=float(threshold),
                        pixel_format=pixel_format, max_frame_side=max_frame_side, num_threads=num_threads)
    cfg_tmp = model_dir / ".config.pbtxt.partial"
    cfg_tmp.write_text(text)
    cfg_tmp.replace(model_dir / "config.pbtxt")
    return model_dir
