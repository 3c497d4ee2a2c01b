"""The C++ engine through ``cdd_engine._native.Engine`` against the Python reference pipeline.

The engine directory is the tiny random-teacher resnet18 engine written by
``csrc/tests/make_test_engine.py`` (reference scores from cdd_engine.preprocess -> PyTorch ->
cdd_engine.anomaly_map in float64). Checks scores and maps (model and input size), batches
given as lists or one array, 8 Python threads sharing one engine, the GIL being released
while scoring, and clear errors for bad engine directories.
"""
from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cdd_engine.anomaly_map import anomaly_map
from cdd_engine.preprocess import resize_normalize
from native_helpers import mte, native_or_skip

native = native_or_skip()

RTOL = 1e-5


@pytest.fixture(scope="module")
def engine_dir() -> str:
    return mte.cached_engine()["engine"]


@pytest.fixture(scope="module")
def model():
    return mte.tiny_model()


@pytest.fixture(scope="module")
def engine(engine_dir):
    return native.Engine(engine_dir, num_threads=2)


def reference(model, frames):
    """Python reference: maps (N, H, W) and scores (N,) in float64."""
    mean, std = model.normalization
    maps, scores = [], []
    with torch.no_grad():
        for img, fmt in frames:
            arr = img[None, ..., None] if img.ndim == 2 else img[None]
            t, s = model(resize_normalize(arr, model.image_size, mean, std, pixel_format=fmt))
            m, sc = anomaly_map([f.double() for f in t], [f.double() for f in s], model.image_size)
            maps.append(m[0].numpy())
            scores.append(float(sc[0]))
    return np.stack(maps), np.array(scores)


def fresh_frames(seed: int, n: int = 5):
    """Random frames of odd sizes, all formats (fresh each call: never the fixture's)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = int(rng.integers(20, 160)), int(rng.integers(20, 160))
        fmt = ("RGB", "BGR", "MONO")[i % 3]
        shape = (h, w) if fmt == "MONO" else (h, w, 3)
        out.append((rng.integers(0, 256, size=shape, dtype=np.uint8), fmt))
    return out


def score_each(engine, frames, **kw):
    res = [engine.score([img], fmt, **kw) for img, fmt in frames]
    return np.concatenate([r[0] for r in res]), [r[1] for r in res], np.concatenate([r[2] for r in res])


@pytest.mark.parametrize("in_network", [True, False], ids=["distances_in_network", "features_out"])
def test_scores_and_maps_match_reference(engine_dir, model, in_network):
    engine = native.Engine(engine_dir, num_threads=2, distances_in_network=in_network)
    frames = fresh_frames(1)
    scores, maps, flags = score_each(engine, frames)
    ref_maps, ref_scores = reference(model, frames)
    np.testing.assert_allclose(scores, ref_scores, rtol=RTOL)
    for m, r in zip(maps, ref_maps):
        assert m.shape == (1, *model.image_size) and m.dtype == np.float32
        assert np.abs(m[0] - r).max() <= RTOL * np.abs(r).max()
    assert flags.dtype == np.bool_
    np.testing.assert_array_equal(flags, scores > engine.threshold)


def test_input_size_maps_are_the_reference_map_resized(engine, model):
    frames = fresh_frames(2, 3)
    _, maps, _ = score_each(engine, frames, map_size="input")
    ref_maps, _ = reference(model, frames)
    for (img, _), m, r in zip(frames, maps, ref_maps):
        assert isinstance(m, list) and m[0].shape == img.shape[:2]
        want = F.interpolate(torch.from_numpy(r)[None, None], size=img.shape[:2], mode="bilinear",
                             align_corners=False, antialias=True)[0, 0].numpy()
        assert np.abs(m[0] - want).max() <= RTOL * np.abs(want).max()


def test_batches_lists_and_arrays(engine):
    rng = np.random.default_rng(4)
    batch = rng.integers(0, 256, size=(9, 50, 70, 3), dtype=np.uint8)  # 9 > max_batch 4: split
    s_arr, m_arr, a_arr, thr = engine.score(batch, "BGR")
    s_list, _, _, _ = engine.score(list(batch), "BGR")
    s_one = np.array([engine.score([f], "BGR")[0][0] for f in batch])
    np.testing.assert_array_equal(s_arr, s_list)
    np.testing.assert_allclose(s_arr, s_one, rtol=1e-6)
    assert m_arr.shape == (9, *engine.image_size) and thr == engine.threshold
    np.testing.assert_array_equal(m_arr.reshape(9, -1).max(axis=1), s_arr)
    s_none, maps, _, _ = engine.score(batch, "BGR", return_maps=False)
    assert maps is None
    np.testing.assert_array_equal(s_none, s_arr)
    gray = rng.integers(0, 256, size=(2, 33, 47), dtype=np.uint8)
    assert engine.score(gray, "MONO")[0].shape == (2,)
    crop = batch[0][5:45, 3:66]  # a crop is read in place
    assert engine.score([crop], "BGR")[0][0] == engine.score([np.ascontiguousarray(crop)], "BGR")[0][0]


def test_eight_threads_share_one_engine(engine_dir):
    eng = native.Engine(engine_dir, num_threads=2, num_streams=2)
    frames = [f for f, _ in fresh_frames(5, 8) if f.ndim == 3]
    jobs = [[frames[(t + i) % len(frames)] for i in range(3)] for t in range(8)]
    serial = [eng.score(j, "RGB")[0] for j in jobs]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda j: eng.score(j, "RGB")[0], jobs * 2))
    for got, want in zip(parallel, serial * 2):
        np.testing.assert_array_equal(got, want)


def test_gil_is_released_while_scoring(engine):
    """Python code runs in another thread while score() is busy in C++."""
    rng = np.random.default_rng(6)
    batch = rng.integers(0, 256, size=(48, 64, 64, 3), dtype=np.uint8)  # ~0.3 s of scoring
    started, finished = threading.Event(), threading.Event()

    def work():
        started.set()
        engine.score(batch, "RGB", return_maps=False)
        finished.set()

    th = threading.Thread(target=work)
    th.start()
    started.wait()
    threading.Event().wait(0.02)                 # let the worker enter C++
    total = sum(i * i for i in range(200_000))   # pure Python: needs the GIL
    ran_during_scoring = not finished.is_set()
    th.join()
    assert total > 0 and ran_during_scoring


def test_threshold_and_sensitivity(engine_dir, engine):
    a = native.Engine(engine_dir, num_threads=1, threshold=0.5)
    assert a.threshold == 0.5
    b = native.Engine(engine_dir, num_threads=1, sensitivity=2.0)
    assert b.threshold == pytest.approx(engine.calibrated_threshold / 2, rel=1e-7)
    img = fresh_frames(7, 1)[0][0]
    s, _, flag, thr = a.score([img], "RGB")
    assert thr == 0.5 and flag[0] == (s[0] > 0.5)


def test_bad_engine_dirs_are_clear_errors(engine_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        native.Engine(str(tmp_path / "nope"))
    bad = tmp_path / "bad"
    shutil.copytree(engine_dir, bad)
    manifest = json.loads((bad / "engine.json").read_text())
    manifest["files"]["model.bin"]["sha256"] = "0" * 64
    (bad / "engine.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="sha256"):
        native.Engine(str(bad))
    manifest["format_version"] = 99
    (bad / "engine.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="format_version 99"):
        native.Engine(str(bad))
    (bad / "engine.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        native.Engine(str(bad))
    shutil.copy(Path(engine_dir) / "engine.json", bad / "engine.json")
    (bad / "model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="missing model file"):
        native.Engine(str(bad))
    with pytest.raises(ValueError, match="num_streams"):
        native.Engine(engine_dir, num_streams=0)
