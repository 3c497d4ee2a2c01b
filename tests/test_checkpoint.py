"""Checkpoints: a run directory loads back to the trained model, and every kind of damage
(missing, corrupt, truncated, other version, mismatched shapes, swapped teacher) is a
CheckpointError with a clear message."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from cdd_engine import checkpoint as ckpt
from cdd_engine import load_checkpoint
from cdd_engine.anomaly_map import anomaly_map
from cdd_engine.checkpoint import CheckpointError, load_threshold, read_config
from cdd_engine.data import ImageDataset, read_dataset
from cdd_engine.models.efficientnet_lite import EfficientNetLite0
from cdd_engine.training import threshold_from_scores, train
from rd_fixtures import TINY, one_torch_thread, write_tiny_mvtec  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    data = write_tiny_mvtec(root / "data")
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: runs before the per-test one-thread fixture
    try:
        run = train(data, root / "run", category="widget", epochs=1, noise_ratio=0.25, **TINY)
    finally:
        torch.set_num_threads(n)
    return data, run


@pytest.fixture
def run_copy(trained, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(trained[1], dst)
    return dst


def _rehash(run, name):
    """Make config.json agree with a deliberately altered file (to reach the checks behind the hash)."""
    cfg = json.loads((run / "config.json").read_text())
    cfg["files"][name] = "sha256:" + hashlib.sha256((run / name).read_bytes()).hexdigest()
    (run / "config.json").write_text(json.dumps(cfg))


def test_load_checkpoint_gives_the_trained_model_in_eval_mode(trained):
    data, run = trained
    model = load_checkpoint(run)
    assert not model.training and not model.student.training and not model.teacher.training
    assert model.image_size == (64, 64)
    assert model.normalization == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert all(not p.requires_grad for p in model.teacher.parameters())
    saved = load_file(str(run / "student.safetensors"))
    for k, v in model.student.state_dict().items():
        assert torch.equal(v, saved[k]), k
    # The loaded model reproduces the training scores recorded in train_scores.json.
    recorded = json.loads((run / "train_scores.json").read_text())
    split = read_dataset(data, "mvtec", "widget")
    from cdd_engine.data import NoiseManifest
    split = NoiseManifest.load(run / "noise_manifest.json").apply(split)
    ds = ImageDataset(split.train, model.image_size, *model.normalization, color="rgb")
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    with torch.no_grad():
        t, s = model(x)
        _, scores = anomaly_map(t, s, model.image_size)
    assert [tuple(f.shape) for f in s] == [(11, 24, 16, 16), (11, 40, 8, 8), (11, 112, 4, 4)]
    np.testing.assert_allclose(scores.numpy(), [e["score"] for e in recorded["scores"]], rtol=1e-4)


def test_config_and_threshold(trained):
    _, run = trained
    cfg = read_config(run)
    assert cfg["format"] == ckpt.FORMAT and cfg["format_version"] == ckpt.FORMAT_VERSION
    assert cfg["model"]["backbone"] == "efficientnet_lite0"
    assert cfg["data"]["category"] == "widget" and cfg["data"]["noise_manifest"] == "noise_manifest.json"
    assert cfg["training"]["lr"] == 0.005 and cfg["training"]["betas"] == [0.5, 0.999]
    scores = [e["score"] for e in json.loads((run / "train_scores.json").read_text())["scores"]]
    assert load_threshold(run) == pytest.approx(threshold_from_scores(np.array(scores))["threshold"])


def test_no_pickle_anywhere(trained):
    """Every file is JSON or safetensors (8-byte header length, JSON header, raw data), nothing
    torch.save/pickle could have written."""
    files = [p for p in trained[1].rglob("*") if p.is_file()]
    assert len(files) >= 8
    for p in files:
        data = p.read_bytes()
        if p.suffix == ".json":
            json.loads(data)
            continue
        assert p.suffix == ".safetensors", p
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
        assert 8 + n + end == len(data), p


# ----------------------------------------------------------------------------- damage
def test_missing_directory_and_config(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(tmp_path)


def test_config_not_json_or_wrong_format(run_copy):
    (run_copy / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_config(run_copy)
    (run_copy / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a cdd-engine checkpoint"):
        read_config(run_copy)


def test_newer_format_version(run_copy):
    cfg = json.loads((run_copy / "config.json").read_text())
    cfg["format_version"] = ckpt.FORMAT_VERSION + 1
    (run_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="format version 2.*newer"):
        load_checkpoint(run_copy)


def test_missing_student(run_copy):
    (run_copy / "student.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing student.safetensors"):
        load_checkpoint(run_copy)


def test_truncated_student_is_caught_by_its_hash(run_copy):
    p = run_copy / "student.safetensors"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or was changed"):
        load_checkpoint(run_copy)


def test_unreadable_safetensors_even_with_a_matching_hash(run_copy):
    p = run_copy / "student.safetensors"
    p.write_bytes(p.read_bytes()[:1000])
    _rehash(run_copy, "student.safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(run_copy)


def test_mismatched_shapes(run_copy):
    p = run_copy / "student.safetensors"
    state = load_file(str(p))
    key = next(k for k in state if k.endswith("conv1.weight"))
    state[key] = torch.randn(state[key].shape[0] + 1, *state[key].shape[1:])
    save_file(state, str(p))
    _rehash(run_copy, "student.safetensors")
    with pytest.raises(CheckpointError, match="does not fit.*size mismatch"):
        load_checkpoint(run_copy)


def test_tampered_random_teacher(run_copy):
    p = run_copy / "teacher.safetensors"
    state = load_file(str(p))
    k = next(iter(state))
    state[k] = state[k] + 1.0
    save_file(state, str(p))
    with pytest.raises(CheckpointError, match="teacher.safetensors is corrupt or was changed"):
        load_checkpoint(run_copy)


def test_teacher_weights_file_with_another_hash(tmp_path):
    """A run trained with a teacher weights file refuses a different file."""
    data = write_tiny_mvtec(tmp_path / "data", n_train=4, n_good=2, n_bad=2)
    torch.manual_seed(0)
    full = EfficientNetLite0()  # untrimmed: the layout the weights file has
    good, other = tmp_path / "t1.safetensors", tmp_path / "t2.safetensors"
    save_file(full.state_dict(), str(good))
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in full.state_dict().items()}, str(other))
    run = train(data, tmp_path / "run", category="widget", epochs=1,
                **dict(TINY, teacher_weights=str(good)))
    assert not (run / "teacher.safetensors").exists()        # a file source exists: no copy
    assert load_checkpoint(run).teacher_weights_id.startswith("sha256:")
    with pytest.raises(CheckpointError, match="differ from those it was trained with"):
        load_checkpoint(run, teacher_weights=other)
    with pytest.raises(CheckpointError, match="cannot rebuild the teacher"):
        load_checkpoint(run, teacher_weights=tmp_path / "missing.pth")


def test_threshold_errors(run_copy, tmp_path):
    (run_copy / "train_scores.json").write_text(json.dumps({"threshold": "high"}))
    with pytest.raises(CheckpointError, match="finite number"):
        load_threshold(run_copy)
    with pytest.raises(CheckpointError, match="no train_scores.json"):
        load_threshold(tmp_path)


# ----------------------------------------------------------------------------- model settings (issue 16 item 8)
@pytest.mark.parametrize("edit, rule", [
    (lambda m: m.update(image_size=[0, 0]), r"image_size must be \[H, W\] with integers in \[32, 4096\], got \[0, 0\]"),
    (lambda m: m.update(image_size=[64]), r"image_size must be \[H, W\]"),
    (lambda m: m.update(image_size=["64", 64]), r"image_size must be \[H, W\]"),
    (lambda m: m.update(image_size=[True, 64]), r"image_size must be \[H, W\]"),
    (lambda m: m.update(image_size=[64, 100000]), r"image_size .*4096"),
    (lambda m: m.update(image_size=[50, 50]), r"image_size sides must be a multiple of 32.*got \[50, 50\]"),
    (lambda m: m["normalization"].update(std=[0.2, 0.0, 0.2]), r"normalization std must be 3 finite numbers in \[0.001"),
    (lambda m: m["normalization"].update(mean=[0.5, 0.5]), "normalization mean must be 3 finite numbers"),
    (lambda m: m.pop("normalization"), "model.normalization is missing"),
    (lambda m: m["anomaly_map"].update(mode="max"), r"anomaly_map.mode must be one of \('add', 'mul'\)"),
    (lambda m: m["anomaly_map"].update(sigma=-1.0), "anomaly_map.sigma must be 0 .*got -1.0"),
    (lambda m: m["anomaly_map"].update(sigma=1e9), "blur radius .*MAX_BLUR_RADIUS"),
    (lambda m: m["student"].update(channels=[]), r"student.channels must be 3 integers"),
])
def test_nonsense_model_settings_are_refused_where_config_json_is_read(run_copy, edit, rule):
    cfg = json.loads((run_copy / "config.json").read_text())
    edit(cfg["model"])
    (run_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=rule):
        read_config(run_copy)
    with pytest.raises(CheckpointError, match="config.json: invalid model settings"):
        load_checkpoint(run_copy)


# ----------------------------------------------------------------------------- permissions (issue 11 item 11)
def test_checkpoint_files_get_normal_permissions(trained, tmp_path):
    old = os.umask(0o022)
    try:
        ckpt.write_json(tmp_path / "a.json", {"x": 1})
        ckpt.write_tensors(tmp_path / "t.safetensors", {"w": torch.zeros(2)})
    finally:
        os.umask(old)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {
        "a.json": 0o644, "t.safetensors": 0o644}  # and no temporary file left beside them
    run = trained[1]
    for name in ("config.json", "student.safetensors", "train_scores.json", "state/optimizer.safetensors"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o666 & ~old, name
