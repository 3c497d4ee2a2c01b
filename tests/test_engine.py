"""Engine.build/load/score on the CPU backends (torch, OpenVINO) against the reference pipeline.

Every comparison runs the whole pipeline from uint8 frames (resize_normalize -> torch model ->
anomaly_map in float64 is the reference) with the fp32 tolerance of docs/anomaly_map.md (1e-5
relative). Frames are smooth patterns plus noise of odd sizes, never constant.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import cdd_engine
from cdd_engine.runtime import Engine, ScoreResult
from cdd_engine.runtime import resize_normalize as rn
from cdd_engine.runtime.frames import to_frames

from engine_helpers import (one_torch_thread,  # noqa: F401 (autouse fixture)
                            IMAGE_SIZE, MAX_BATCH, RTOL, THRESHOLD, engine_dir, frames, model_and_run_dir,
                            reference, rel_err)

BACKENDS = ["torch", "openvino"]


@pytest.fixture(scope="module")
def model():
    return model_and_run_dir()[0]


# "openvino" loads with runtime="auto" (the C++ library where the native module is built);
# "openvino-python" keeps the Python OpenVINO backend covered there too.
ENGINES = {"torch": ("torch", {}), "openvino": ("openvino", {}),
           "openvino-python": ("openvino", {"runtime": "python"})}


@pytest.fixture(scope="module", params=list(ENGINES))
def engine(request):
    backend, options = ENGINES[request.param]
    return cdd_engine.load(engine_dir(backend), **options)


def test_build_from_run_dir_writes_the_manifest():
    _, run = model_and_run_dir()
    for backend in BACKENDS:
        d = engine_dir(backend)
        m = json.loads((d / "engine.json").read_text())
        assert m["format"] == "cdd-engine" and m["format_version"] == 2
        assert m["backend"] == backend and m["precision"] == "fp32" and m["max_batch"] == MAX_BATCH
        assert m["image_size"] == [IMAGE_SIZE, IMAGE_SIZE]
        assert m["threshold"]["value"] == THRESHOLD and m["threshold"]["source"] == "train_scores:median_mad"
        assert m["threshold"]["statistics"]["n"] == 5
        assert m["source_checkpoint"]["path"] == str(run.absolute())
        assert m["source_checkpoint"]["backbone"] == "resnet18" and m["source_checkpoint"]["method"] == "rd"
        assert [f["shape"] for f in m["features"]] == [[64, 16, 16], [128, 8, 8], [256, 4, 4]] * 2
        assert m["anomaly_map"] == {"mode": "add", "sigma": 4.0, "truncate": 4.0, "eps": 1e-8,
                                    "upsample": "bilinear_align_corners", "blur_boundary": "reflect"}
        want_files = {"openvino": {"model.onnx", "model.xml", "model.bin"}, "torch": {"model.safetensors"}}[backend]
        assert set(m["files"]) == want_files
        for name, rec in m["files"].items():
            assert (d / name).stat().st_size == rec["bytes"] and len(rec["sha256"]) == 64


def test_default_output_dir_is_inside_the_run(tmp_path):
    from engine_helpers import tiny_model, write_run_dir

    run = write_run_dir(tmp_path / "run", tiny_model(seed=5), threshold=0.25)
    eng = cdd_engine.build(run, backend="torch")
    assert eng.engine_dir == run / "engine_torch_fp32" and eng.threshold == 0.25


def test_numpy_batch_matches_reference(engine, model):
    x = frames(6, 71, 90, seed=1)  # 6 > max batch 4: split into 4 + 2
    r = engine.score(x)
    want_maps, want_scores = reference(model, x)
    assert isinstance(r, ScoreResult) and len(r) == 6
    assert r.maps.shape == (6, IMAGE_SIZE, IMAGE_SIZE) and r.maps.dtype == np.float32
    assert rel_err(r.maps, want_maps) <= RTOL
    assert rel_err(r.scores, want_scores) <= RTOL
    np.testing.assert_array_equal(r.is_anomalous, r.scores > THRESHOLD)
    assert r.threshold == THRESHOLD


def test_list_of_sizes_formats_and_map_size_input(engine, model):
    sizes = [(64, 64), (97, 131), (45, 33), (200, 150), (31, 257)]
    imgs = [frames(1, h, w, seed=10 + i)[0] for i, (h, w) in enumerate(sizes)]
    for fmt in ("RGB", "BGR"):
        r = engine.score(imgs, pixel_format=fmt, map_size="input")
        want_maps, want_scores = reference(model, imgs, fmt)
        assert rel_err(r.scores, want_scores) <= RTOL
        assert [m.shape for m in r.maps] == sizes
        for m, w_ in zip(r.maps, want_maps):
            want_in = torch.nn.functional.interpolate(torch.from_numpy(w_)[None, None], size=m.shape,
                                                      mode="bilinear", align_corners=False, antialias=True)[0, 0]
            assert rel_err(m, want_in) <= RTOL
    mono = [img[..., 0] for img in imgs]
    r = engine.score(mono, pixel_format="MONO")
    assert rel_err(r.scores, reference(model, mono, "MONO")[1]) <= RTOL


def test_bgr_is_rgb_reversed_and_mono_layouts_agree(engine):
    x = frames(3, 64, 64, seed=2)
    rgb = engine.score(x).scores
    np.testing.assert_allclose(engine.score(np.ascontiguousarray(x[..., ::-1]), pixel_format="BGR").scores, rgb,
                               rtol=1e-6)
    np.testing.assert_allclose(engine.score(x[..., ::-1], pixel_format="BGR").scores, rgb, rtol=1e-6)
    gray = x[..., 1]
    a = engine.score(gray, pixel_format="MONO").scores  # (N, H, W)
    b = engine.score(gray[..., None], pixel_format="MONO").scores  # (N, H, W, 1)
    c = engine.score(np.repeat(gray[..., None], 3, axis=-1)).scores  # RGB with equal channels
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, c, rtol=1e-6)


def test_torch_tensors_float_frames_and_padded_rows(engine):
    x = frames(3, 80, 60, seed=3)
    want = engine.score(x).scores
    np.testing.assert_array_equal(engine.score(torch.from_numpy(x)).scores, want)
    np.testing.assert_allclose(engine.score(x.astype(np.float32), float_range=(0, 255)).scores, want, rtol=1e-6)
    np.testing.assert_allclose(engine.score(torch.from_numpy(x).double(), float_range=(0, 255)).scores, want,
                               rtol=1e-6)
    # a camera buffer with padded rows: (N, H, W_padded, C) viewed as (N, H, W, C), no copy
    padded = np.zeros((3, 80, 64, 3), dtype=np.uint8)
    padded[:, :, :60] = x
    view = padded[:, :, :60]
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(engine.score(view).scores, want)
    ro = x.copy()
    ro.flags.writeable = False  # e.g. a memory-mapped file
    np.testing.assert_array_equal(engine.score(ro).scores, want)


def test_batches_split_to_max_batch_give_the_same_results(engine):
    x = frames(9, 64, 64, seed=4)
    whole = engine.score(x)
    singles = [engine.score(x[i:i + 1]) for i in range(9)]
    np.testing.assert_allclose(whole.scores, [s.scores[0] for s in singles], rtol=1e-6)
    np.testing.assert_allclose(whole.maps, np.concatenate([s.maps for s in singles]), rtol=1e-5, atol=1e-6)


def test_return_maps_false_and_threshold_override(engine):
    x = frames(3, 64, 64, seed=5)
    full = engine.score(x)
    r = engine.score(x, return_maps=False)
    assert r.maps is None
    np.testing.assert_array_equal(r.scores, full.scores)
    mid = float(np.median(full.scores))
    # the same runtime as `engine`: a score equal to the median must meet the very same number
    other = Engine(engine.engine_dir, threshold=mid, runtime="python" if engine.runtime == "python" else "native")
    assert other.threshold == mid and engine.threshold == THRESHOLD
    np.testing.assert_array_equal(other.score(x).is_anomalous, full.scores > mid)
    other.threshold = float(full.scores.min()) - 1.0
    assert other.score(x).is_anomalous.all() and other.score(x).threshold == other.threshold
    with pytest.raises(ValueError, match="finite number"):
        other.threshold = float("nan")


def test_engine_is_shared_by_threads(engine):
    batches = [frames(3, 64 + 7 * i, 64, seed=20 + i) for i in range(4)]
    want = [engine.score(b).scores for b in batches]
    got: dict[int, np.ndarray] = {}

    def work(i):
        for _ in range(2):
            got[i] = engine.score(batches[i]).scores

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        np.testing.assert_array_equal(got[i], want[i])


def test_features_match_the_torch_network(engine, model):
    """The network alone (OpenVINO vs torch): what the backend achieves before post-processing."""
    x = frames(2, 64, 64, seed=6)
    feats = engine.features(x)
    with torch.no_grad():
        t, s = model(engine.prepare(to_frames(x), 0, 2).clone())
    for got, want in zip(feats, (*t, *s)):
        assert rel_err(got, want) <= RTOL


def test_chunked_resize_of_large_frames_matches_reference(engine, model, monkeypatch):
    """Frames above CHUNK_ELEMENTS are resized in row chunks; lower the limit to test it on small frames."""
    monkeypatch.setattr(rn, "CHUNK_ELEMENTS", 3000)
    imgs = [frames(1, 397, 211, seed=7)[0], frames(1, 150, 500, seed=8)[0]]
    r = engine.score(imgs)
    assert rel_err(r.scores, reference(model, imgs)[1]) <= RTOL
    mono = [imgs[0][..., 2]]
    assert rel_err(engine.score(mono, pixel_format="MONO").scores, reference(model, mono, "MONO")[1]) <= RTOL


def test_100_megapixel_frame_is_scored_with_bounded_memory(tmp_path):
    """A 10000 x 10000 Mono8 frame (100 MB) scored in a fresh process; its peak RSS stays far below
    the 1.2 GB a float copy of the frame as RGB would take on its own."""
    script = textwrap.dedent(f"""
        import resource, json, numpy as np, torch
        torch.set_num_threads(1)
        import cdd_engine
        eng = cdd_engine.load({str(engine_dir("torch"))!r})
        i = (np.arange(10000) % 251).astype(np.uint8); x = i[None, :] + i[:, None] * np.uint8(3)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        r = eng.score([x], pixel_format="MONO")
        small = eng.score([x[::50, ::50]], pixel_format="MONO")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"score": float(r.scores[0]), "shape": list(r.maps.shape),
                          "finite": bool(np.isfinite(r.maps).all()), "small": float(small.scores[0]),
                          "extra_mb": (peak - base) / 1024}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=str(Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["finite"] and res["shape"] == [1, IMAGE_SIZE, IMAGE_SIZE]
    assert res["score"] > 0 and res["small"] > 0
    assert res["extra_mb"] < 400, f"scoring a 100 MP frame took {res['extra_mb']:.0f} MB beyond the frame"


def test_repr_and_properties(engine):
    text = repr(engine)
    assert engine.backend_name in text and "resnet18" in text and f"max_batch={MAX_BATCH}" in text
    assert engine.image_size == (IMAGE_SIZE, IMAGE_SIZE) and engine.precision == "fp32"


@pytest.mark.parametrize("runtime", ["auto", "python"])
@pytest.mark.parametrize("options", [dict(openvino_mode="latency"), dict(openvino_mode="throughput"),
                                     dict(sub_batch=3), dict(static_shapes=False)])
def test_openvino_ways_of_running_a_batch_agree(model, options, runtime):
    """auto (streams of single images), one latency request, throughput jobs of 3 with a
    remainder, dynamic shapes: the same maps and scores within fp32 tolerance."""
    x = frames(5, 64, 64, seed=30)  # max batch 4: chunks of 4 and 1
    want_maps, want_scores = reference(model, x)
    r = cdd_engine.load(engine_dir("openvino"), runtime=runtime, **options).score(x)
    assert rel_err(r.maps, want_maps) <= RTOL and rel_err(r.scores, want_scores) <= RTOL


def test_openvino_mode_is_checked():
    with pytest.raises(ValueError, match="OpenVINO mode must be one of"):
        cdd_engine.load(engine_dir("openvino"), openvino_mode="fastest")
    with pytest.raises(ValueError, match="sub_batch must be a positive integer"):
        cdd_engine.load(engine_dir("openvino"), sub_batch=0)
    for runtime in ("python", "auto"):  # a request holds at most max_batch frames, on both runtimes
        with pytest.raises(ValueError, match=f"sub_batch must be at most the engine's max_batch={MAX_BATCH}, got 5"):
            cdd_engine.load(engine_dir("openvino"), runtime=runtime, sub_batch=MAX_BATCH + 1)
    with pytest.raises(TypeError, match="does not take option"):
        cdd_engine.load(engine_dir("torch"), sub_batch=2)
