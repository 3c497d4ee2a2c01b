"""Clear errors, never silent wrong scores: bad frames, bad arguments, and damaged engine
directories (missing, truncated, corrupt, other version, other hash, files that do not fit).

Frame checks run on a torch engine (cheap to load); the directory checks damage private copies.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import cdd_engine
from cdd_engine.runtime import BackendUnavailable, EngineFormatError
from cdd_engine.engine_format import file_record, read_manifest

from engine_helpers import one_torch_thread  # noqa: F401 (autouse fixture)
from engine_helpers import copy_engine, engine_dir, frames, model_and_run_dir, tiny_model


@pytest.fixture(scope="module")
def engine():
    return cdd_engine.load(engine_dir("torch"))


# ----------------------------------------------------------------------------- frames
@pytest.mark.parametrize("bad,dtype_name", [
    (np.zeros((1, 8, 8, 3), np.int16), "int16"),
    (np.zeros((1, 8, 8, 3), np.uint16), "uint16"),
    (np.zeros((1, 8, 8, 3), bool), "bool"),
    (torch.zeros(1, 8, 8, 3, dtype=torch.int32), "int32"),
    ([np.zeros((8, 8, 3), np.int64)], "int64"),
])
def test_wrong_dtype(engine, bad, dtype_name):
    with pytest.raises(TypeError, match=f"must be uint8.*{dtype_name}"):
        engine.score(bad)


@pytest.mark.parametrize("bad,pattern", [
    (np.zeros((8, 8, 3), np.uint8) + 1, r"batch \(N, H, W, C\).*frame\[None\]"),
    (np.zeros((8, 8), np.uint8) + 1, r"got shape \(8, 8\)"),
    (np.zeros((1, 1, 8, 8, 3), np.uint8) + 1, r"got shape \(1, 1, 8, 8, 3\)"),
    ([np.zeros((1, 8, 8, 3), np.uint8) + 1], r"frame 0: each list element must be one frame"),
])
def test_wrong_shape(engine, bad, pattern):
    with pytest.raises(ValueError, match=pattern):
        engine.score(bad)


def test_wrong_channel_count(engine):
    with pytest.raises(ValueError, match=r"RGB needs 3 channel\(s\), got 4"):
        engine.score(np.ones((2, 8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match=r"MONO needs 1 channel\(s\), got 3"):
        engine.score(np.ones((2, 8, 8, 3), np.uint8), pixel_format="MONO")
    with pytest.raises(ValueError, match=r"frame 0: pixel_format BGR needs 3 channel\(s\), got 2"):
        engine.score([np.ones((8, 8, 2), np.uint8)] * 2, pixel_format="BGR")


def test_empty_batch(engine):
    with pytest.raises(ValueError, match="empty batch"):
        engine.score(np.zeros((0, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="empty batch"):
        engine.score([])
    with pytest.raises(ValueError, match="empty batch"):
        engine.score(torch.zeros(0, 64, 64, dtype=torch.uint8), pixel_format="MONO")


def test_zero_sized_frame(engine):
    with pytest.raises(ValueError, match="zero-sized frame 0x64"):
        engine.score(np.zeros((2, 0, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="frame 1: zero-sized frame 17x0"):
        engine.score([frames(1, 20, 20)[0], np.zeros((17, 0, 3), np.uint8)])


def test_list_mixing_channel_counts(engine):
    rgb, gray = frames(1, 30, 30)[0], frames(1, 30, 30, c=1)[0]
    with pytest.raises(ValueError, match=r"frame 1 has 1 channel\(s\) but frame 0 has 3"):
        engine.score([rgb, gray])
    with pytest.raises(ValueError, match=r"frame 2 has 3 channel\(s\) but frame 0 has 1"):
        engine.score([gray, gray[..., 0], rgb], pixel_format="MONO")


def test_nan_inf_and_out_of_range_floats(engine):
    x = frames(2, 16, 16).astype(np.float32)
    x[1, 3, 4, 2] = np.nan
    with pytest.raises(ValueError, match="1 NaN/inf"):
        engine.score(x, float_range=(0, 255))
    y = torch.from_numpy(frames(1, 16, 16)).float()
    y[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN/inf"):
        engine.score([y[0]], float_range=(0, 255))
    with pytest.raises(ValueError, match=r"\[0, 255\].*got values in \[-1"):
        engine.score(np.full((1, 16, 16, 3), -1.0), float_range=(0, 255))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        engine.score(np.full((1, 16, 16, 3), 300.0, np.float32), float_range=(0, 255))
    with pytest.raises(ValueError, match=r"float_range=\[0, 1\], got values in \[2, 2"):
        engine.score(np.full((1, 16, 16, 3), 2.0, np.float32), float_range=(0, 1))


def test_bad_arguments(engine):
    x = frames(1, 16, 16)
    with pytest.raises(TypeError, match="numpy array, a torch tensor or a list"):
        engine.score("frame.png")
    with pytest.raises(TypeError, match="frame 0: expected a numpy array or torch tensor"):
        engine.score([[1, 2, 3]])
    with pytest.raises(ValueError, match="pixel_format must be one of"):
        engine.score(x, pixel_format="RGBA")
    with pytest.raises(ValueError, match="map_size must be one of"):
        engine.score(x, map_size="full")
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        cdd_engine.load(engine.engine_dir, threshold=float("inf"))


def test_features_refuses_more_than_max_batch(engine):
    with pytest.raises(ValueError, match="at most max_batch"):
        engine.features(frames(engine.max_batch + 1, 16, 16))


# ----------------------------------------------------------------------------- build arguments
def test_build_rejects_bad_arguments(tmp_path):
    model, run = model_and_run_dir()
    with pytest.raises(ValueError, match="backend must be one of"):
        cdd_engine.build(run, backend="onnxruntime")
    with pytest.raises(ValueError, match=r"supports precision \('fp32', 'fp16', 'tf32'\), got 'int8'"):
        cdd_engine.build(run, backend="torch", precision="int8")
    with pytest.raises(ValueError, match="max_batch must be a positive integer"):
        cdd_engine.build(run, backend="torch", max_batch=0)
    with pytest.raises(ValueError, match="needs threshold="):
        cdd_engine.build(model, backend="torch")
    with pytest.raises(TypeError, match="run directory path or an RDModel"):
        cdd_engine.build(42, backend="torch")
    from cdd_engine.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match="does not exist"):
        cdd_engine.build(tmp_path / "no_such_run", backend="torch")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_gpu_only_options_are_refused_on_cpu(tmp_path):
    eng = cdd_engine.build(tiny_model(seed=2), backend="torch", threshold=1.0, output_dir=tmp_path / "e")
    with pytest.raises(BackendUnavailable, match="cuda"):
        cdd_engine.load(eng.engine_dir, device="cuda")
    with pytest.raises(BackendUnavailable, match="fp16 torch engine runs on CUDA only"):
        cdd_engine.build(tiny_model(seed=2), backend="torch", precision="fp16", threshold=1.0,
                         output_dir=tmp_path / "h")


# ----------------------------------------------------------------------------- engine directories
def _edit_manifest(d, fn):
    path = d / "engine.json"
    m = json.loads(path.read_text())
    fn(m)
    path.write_text(json.dumps(m))


def test_missing_directory_and_manifest(tmp_path):
    with pytest.raises(EngineFormatError, match="does not exist"):
        cdd_engine.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngineFormatError, match="missing engine.json"):
        cdd_engine.load(tmp_path / "empty")


def test_corrupt_and_truncated_manifest(tmp_path):
    d = copy_engine("torch", tmp_path / "e")
    text = (d / "engine.json").read_text()
    (d / "engine.json").write_text(text[: len(text) // 2])
    with pytest.raises(EngineFormatError, match="corrupt engine.json, not valid JSON"):
        cdd_engine.load(d)
    (d / "engine.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(EngineFormatError, match="not UTF-8 text"):
        cdd_engine.load(d)
    (d / "engine.json").write_text("[1, 2]")
    with pytest.raises(EngineFormatError, match="JSON object"):
        cdd_engine.load(d)


@pytest.mark.parametrize("edit,pattern", [
    (lambda m: m.update(format_version=3), "format_version 3 is not supported.*reads versions 1, 2"),
    (lambda m: m.update(format="something-else"), "not a cdd-engine engine"),
    (lambda m: m.pop("threshold"), r"missing required keys \['threshold'\]"),
    (lambda m: m.update(backend="onnxruntime"), "backend must be one of"),
    (lambda m: m.update(image_size=[64]), r"image_size must be \[H, W\]"),
    (lambda m: m["input"].update(std=[0.2, 0.0, 0.2]), r"input.std entries must be in \[0.001, 1000\]"),
    (lambda m: m["features"].reverse(), "features must list"),
    (lambda m: m["anomaly_map"].update(mode="max"), "anomaly_map.mode"),
    (lambda m: m["threshold"].update(value=None), "threshold.value must be a finite number"),
    (lambda m: m["files"].pop("model.safetensors"), "needs 'model.safetensors' listed"),
    (lambda m: m["files"].update({"../escape": m["files"]["model.safetensors"]}), "plain file name"),
])
def test_mismatched_manifest_values(tmp_path, edit, pattern):
    d = copy_engine("torch", tmp_path / "e")
    _edit_manifest(d, edit)
    with pytest.raises(EngineFormatError, match=pattern):
        cdd_engine.load(d)


def test_model_file_missing_truncated_or_changed(tmp_path):
    d = copy_engine("torch", tmp_path / "e")
    weights = d / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-100])
    with pytest.raises(EngineFormatError, match=r"model.safetensors: size .* \(truncated or replaced\)"):
        cdd_engine.load(d)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(flipped))
    with pytest.raises(EngineFormatError, match="model.safetensors: SHA-256 .* does not match"):
        cdd_engine.load(d)
    weights.unlink()
    with pytest.raises(EngineFormatError, match="model.safetensors: file listed in engine.json is missing"):
        cdd_engine.load(d)


def test_openvino_file_set_is_checked(tmp_path):
    """An OpenVINO engine needs model.onnx, model.xml and model.bin, each size- and hash-checked.
    (Stand-in files: read_manifest checks the directory before any OpenVINO code runs; it reads
    model.xml's constants' types only, to check the precision.)"""
    d = copy_engine("torch", tmp_path / "ov")
    _edit_manifest(d, lambda m: m.update(features=[{**f, "dtype": "float32"} for f in m["features"]]))
    rng = np.random.default_rng(0)
    for name in ("model.onnx", "model.bin"):
        (d / name).write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (d / "model.xml").write_text('<?xml version="1.0"?>\n<net name="stand-in" version="11"><layers/></net>\n')
    _edit_manifest(d, lambda m: (m.update(backend="openvino"), m.update(files={
        n: file_record(d / n) for n in ("model.onnx", "model.xml", "model.bin")})))
    assert read_manifest(d)["backend"] == "openvino"
    with open(d / "model.bin", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(EngineFormatError, match="model.bin: size 1000 bytes"):
        cdd_engine.load(d)
    (d / "model.xml").unlink()
    with pytest.raises(EngineFormatError, match="model.xml: file listed in engine.json is missing"):
        read_manifest(d)
    _edit_manifest(d, lambda m: m["files"].pop("model.xml"))
    with pytest.raises(EngineFormatError, match="backend 'openvino' needs 'model.xml'"):
        read_manifest(d)


def test_files_swapped_between_engines_are_caught(tmp_path):
    """A model file from another engine with a re-hashed manifest still must fit the recorded model."""
    d = copy_engine("torch", tmp_path / "e")
    other = cdd_engine.build(tiny_model(seed=9), backend="torch", threshold=1.0, output_dir=tmp_path / "o")
    shutil.copy(other.engine_dir / "model.safetensors", d / "model.safetensors")
    with pytest.raises(EngineFormatError, match="SHA-256"):
        cdd_engine.load(d)
    # someone "fixes" the hash by hand, and the student shape recorded in engine.json is wrong
    _edit_manifest(d, lambda m: (m["files"].update({"model.safetensors": file_record(d / "model.safetensors")}),
                                 m["model"]["student"].update(decoder_blocks=[1, 1, 1])))
    with pytest.raises(EngineFormatError, match="does not fit the model in engine.json"):
        cdd_engine.load(d)


def test_interrupted_rebuild_leaves_the_old_engine(tmp_path, monkeypatch):
    d = copy_engine("torch", tmp_path / "e")
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    from cdd_engine.runtime.backends import torch_backend

    def boom(model, out):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch_backend, "save_model", boom)
    with pytest.raises(KeyboardInterrupt):
        cdd_engine.build(tiny_model(seed=1), backend="torch", threshold=1.0, output_dir=d)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before  # builds are transactional (issue 16)
    cdd_engine.load(d)
