"""``Engine(..., runtime=...)``: the C++ library (libcdd_engine through cdd_engine._native) behind the
Python Engine, against the Python runtime and the float64 reference pipeline.

The engine is the tiny resnet18 OpenVINO engine of engine_helpers (64², max_batch 4). Frames are
fresh random uint8 frames of odd sizes in every pixel format, padded rows (a crop of a bigger
frame), layouts the module cannot read in place, torch tensors. Tolerances (docs/anomaly_map.md): scores
and maps within 1e-5 relative of the float64 reference (RTOL). Tests that need the compiled module
skip with the reason when it is not built; the runtime-choice tests run everywhere.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cdd_engine
from cdd_engine.runtime import BackendUnavailable, EngineFormatError
from cdd_engine.runtime import native_runtime

from engine_helpers import one_torch_thread  # noqa: F401 (autouse fixture)
from engine_helpers import RTOL, copy_engine, engine_dir, model_and_run_dir, reference, rel_err
from native_helpers import needs_native

NATIVE = native_runtime.native_module()


@pytest.fixture(scope="module")
def model():
    return model_and_run_dir()[0]


@pytest.fixture(scope="module")
def native_engine():
    return cdd_engine.load(engine_dir("openvino"), runtime="native")


@pytest.fixture(scope="module")
def python_engine():
    return cdd_engine.load(engine_dir("openvino"), runtime="python")


def random_frame(rng: np.random.Generator, h: int, w: int, c: int | None = 3) -> np.ndarray:
    """Uniform random uint8 pixels (fresh per call; never constant)."""
    return rng.integers(0, 256, size=(h, w) if c is None else (h, w, c), dtype=np.uint8)


def odd_cases(seed: int) -> list[tuple[str, object, str]]:
    """(name, images, pixel_format): odd sizes, every format, padded rows, unreadable layouts."""
    rng = np.random.default_rng(seed)
    big = random_frame(rng, 90, 120)
    chw = torch.from_numpy(rng.integers(0, 256, size=(3, 45, 61), dtype=np.uint8))  # planar, as some SDKs give
    return [
        ("rgb 37x53 list", [random_frame(rng, 37, 53), random_frame(rng, 64, 64), random_frame(rng, 101, 47)], "RGB"),
        ("bgr batch 6 (> max_batch)", np.stack([random_frame(rng, 41, 67) for _ in range(6)]), "BGR"),
        ("mono (H, W) list", [random_frame(rng, 29, 83, c=None), random_frame(rng, 70, 31, c=None)], "MONO"),
        ("mono (N, H, W)", np.stack([random_frame(rng, 33, 47, c=None) for _ in range(2)]), "MONO"),
        ("crop with padded rows", [big[7:60, 11:98]], "RGB"),
        ("every other column (copied once)", [big[:, ::2]], "BGR"),
        ("torch uint8 CPU tensor", torch.from_numpy(np.stack([random_frame(rng, 50, 70) for _ in range(2)])), "RGB"),
        ("torch CHW permuted to HWC", [chw.permute(1, 2, 0)], "RGB"),
    ]


def _frame_list(images) -> list[np.ndarray]:
    items = list(images) if not isinstance(images, list) else images
    return [np.asarray(f.numpy() if isinstance(f, torch.Tensor) else f) for f in items]


# ----------------------------------------------------------------------------- runtime choice
def test_auto_and_native_need_the_module(monkeypatch, caplog):
    """With the module missing: "native" is a clear BackendUnavailable, "auto" is the Python runtime."""
    monkeypatch.setattr(native_runtime, "native_module", lambda: None)
    with pytest.raises(BackendUnavailable, match=r"runtime='native' cannot run 'openvino' engine here: .*not built"):
        cdd_engine.load(engine_dir("openvino"), runtime="native")
    with caplog.at_level(logging.INFO, logger="cdd_engine"):
        eng = cdd_engine.load(engine_dir("openvino"))
    assert eng.runtime == "python" and "runtime='python'" in repr(eng)
    said = [r.getMessage() for r in caplog.records if "runtime python" in r.getMessage()]
    assert len(said) == 1 and "not built" in said[0]


def test_auto_falls_back_when_the_cpp_engine_cannot_load(monkeypatch, caplog):
    """A C++ load failure (BackendUnavailable) is a warning and the Python runtime under "auto", an
    error under "native" (a stand-in module and loader: runs without the real module)."""
    from cdd_engine.runtime import engine as engine_module

    def refuse(*args, **kwargs):
        raise BackendUnavailable("libcdd_engine could not load it on CPU: stand-in failure")

    monkeypatch.setattr(native_runtime, "native_module", lambda: SimpleNamespace(WITH_OPENVINO=True))
    monkeypatch.setattr(engine_module, "NativeRunner", refuse)
    with caplog.at_level(logging.INFO, logger="cdd_engine"):
        eng = cdd_engine.load(engine_dir("openvino"))
    assert eng.runtime == "python"
    assert any(r.levelno == logging.WARNING and "stand-in failure" in r.getMessage() for r in caplog.records)
    with pytest.raises(BackendUnavailable, match="stand-in failure"):
        cdd_engine.load(engine_dir("openvino"), runtime="native")


@pytest.mark.parametrize("with_trt,device,want", [(True, None, "native"), (True, "cuda:1", "native"),
                                                 (True, "cpu", "python"), (False, None, "python")])
def test_tensorrt_engines_choose_native_only_with_a_tensorrt_build_on_cuda(monkeypatch, with_trt, device, want):
    """The choice alone (no TensorRT or GPU here, docs/where_it_runs.md): a stand-in module says what it was built with."""
    monkeypatch.setattr(native_runtime, "native_module",
                        lambda: SimpleNamespace(WITH_OPENVINO=True, WITH_TENSORRT=with_trt))
    name, reason = native_runtime.choose_runtime("auto", {"backend": "tensorrt"}, device, {})
    assert name == want and reason.startswith("auto")
    if want == "python":
        with pytest.raises(BackendUnavailable, match="TensorRT"):
            native_runtime.choose_runtime("native", {"backend": "tensorrt"}, device, {})


def test_runtime_arguments_are_checked():
    with pytest.raises(ValueError, match=r"runtime must be one of \('auto', 'native', 'python'\), got 'c\+\+'"):
        cdd_engine.load(engine_dir("openvino"), runtime="c++")
    with pytest.raises(BackendUnavailable, match="torch engine .* Python runtime only"):
        cdd_engine.load(engine_dir("torch"), runtime="native")
    with pytest.raises(TypeError, match="num_streams is an option of the native runtime"):
        cdd_engine.load(engine_dir("openvino"), runtime="python", num_streams=2)
    with pytest.raises(ValueError, match="num_streams must be an integer >= 1, got 0"):
        cdd_engine.load(engine_dir("openvino"), num_streams=0)
    with pytest.raises(ValueError, match="OpenVINO backend runs on the CPU, got device='gpu'"):
        cdd_engine.load(engine_dir("openvino"), device="gpu")  # auto -> the Python backend's own check
    with pytest.raises(BackendUnavailable, match="OpenVINO backend runs on the CPU, got device='cuda'"):
        cdd_engine.load(engine_dir("openvino"), runtime="native", device="cuda")
    assert cdd_engine.load(engine_dir("torch")).runtime == "python"  # auto: torch engines are Python only


@needs_native
def test_native_runtime_is_chosen_and_said(native_engine, caplog):
    label = f"native C++ (libcdd_engine {NATIVE.__version__})"
    assert native_engine.runtime == label and f"runtime={label!r}" in repr(native_engine)
    with caplog.at_level(logging.INFO, logger="cdd_engine"):
        eng = cdd_engine.load(engine_dir("openvino"))  # auto
    assert eng.runtime == label
    said = [r.getMessage() for r in caplog.records if "runtime native" in r.getMessage()]
    assert len(said) == 1 and "auto" in said[0]
    with pytest.raises(ValueError, match="OpenVINO mode must be one of"):
        cdd_engine.load(engine_dir("openvino"), runtime="native", openvino_mode="fastest")
    with pytest.raises(ValueError, match="num_threads must be an integer >= 0, got -1"):
        cdd_engine.load(engine_dir("openvino"), runtime="native", num_threads=-1)


@needs_native
def test_streams_follow_openvino_mode(model):
    """"auto": single frames on a 1-stream C++ engine, calls of several frames on a 2-stream one
    loaded on first need (results within RTOL of the reference either way); "latency",
    "throughput" and num_streams= give one engine of a fixed stream count."""
    rng = np.random.default_rng(19)
    x = np.stack([random_frame(rng, 43, 59) for _ in range(3)])
    eng = cdd_engine.load(engine_dir("openvino"), runtime="native")
    runner = eng._native
    single = np.concatenate([eng.score(x[i:i + 1]).scores for i in range(3)])
    assert runner.engine.num_streams == 1 and runner._batch_engine is None
    both = eng.score(x).scores
    assert runner._batch_engine is not None and runner._batch_engine.num_streams == 2
    want = reference(model, list(x))[1]
    assert rel_err(single, want) <= RTOL and rel_err(both, want) <= RTOL
    for options, streams in ((dict(openvino_mode="latency"), 1), (dict(openvino_mode="throughput"), 2),
                             (dict(num_streams=3), 3)):
        r = cdd_engine.load(engine_dir("openvino"), runtime="native", **options)._native
        assert r.engine.num_streams == streams and r.engine_for(3) is r.engine and r.engine_for(1) is r.engine


@needs_native
def test_hashes_are_checked_once_before_the_cpp_engine(tmp_path):
    """The Python reader verifies the SHA-256 (the C++ engine is told not to hash again): a flipped
    byte in model.bin is the same EngineFormatError on both runtimes."""
    d = copy_engine("openvino", tmp_path / "e")
    data = bytearray((d / "model.bin").read_bytes())
    data[len(data) // 3] ^= 0xFF
    (d / "model.bin").write_bytes(bytes(data))
    for runtime in ("native", "python"):
        with pytest.raises(EngineFormatError, match="model.bin: SHA-256 .* does not match"):
            cdd_engine.load(d, runtime=runtime)


# ----------------------------------------------------------------------------- results
@needs_native
@pytest.mark.parametrize("case", range(8), ids=[c[0] for c in odd_cases(0)])
def test_native_matches_reference_and_python_runtime(native_engine, python_engine, model, case):
    name, images, fmt = odd_cases(100 + case)[case]
    got = native_engine.score(images, pixel_format=fmt)
    py = python_engine.score(images, pixel_format=fmt)
    want_maps, want_scores = reference(model, _frame_list(images), fmt)
    assert got.maps.shape == want_maps.shape and got.maps.dtype == np.float32 and got.scores.dtype == np.float32
    assert rel_err(got.scores, want_scores) <= RTOL and rel_err(got.maps, want_maps) <= RTOL
    assert rel_err(py.scores, want_scores) <= RTOL  # the Python runtime on the same frames
    assert rel_err(got.scores, py.scores) <= 2 * RTOL  # each within RTOL of the reference
    np.testing.assert_array_equal(got.is_anomalous, got.scores > native_engine.threshold)


@needs_native
def test_input_size_maps(native_engine, python_engine, model):
    """map_size="input": each map at its frame's size. Against the float64 reference map resized by
    torch (bilinear, antialiased) within RTOL, as test_engine asks of the Python runtime; native vs
    Python runtime within 2 * RTOL (each is within RTOL of that resized reference)."""
    rng = np.random.default_rng(7)
    imgs = [random_frame(rng, 37, 53), random_frame(rng, 200, 150), random_frame(rng, 64, 64), random_frame(rng, 31, 257)]
    got = native_engine.score(imgs, map_size="input")
    py = python_engine.score(imgs, map_size="input")
    want_maps, _ = reference(model, imgs)
    assert isinstance(got.maps, list) and [m.shape for m in got.maps] == [f.shape[:2] for f in imgs]
    for m, p, w in zip(got.maps, py.maps, want_maps):
        want = F.interpolate(torch.from_numpy(w)[None, None], size=m.shape, mode="bilinear", align_corners=False,
                             antialias=True)[0, 0].numpy()
        assert m.dtype == np.float32 and rel_err(m, want) <= RTOL
        assert rel_err(m, p) <= 2 * RTOL
    none = native_engine.score(imgs, return_maps=False)
    assert none.maps is None
    np.testing.assert_array_equal(none.scores, got.scores)


@needs_native
def test_threshold_override_and_setter():
    rng = np.random.default_rng(11)
    x = np.stack([random_frame(rng, 48, 56) for _ in range(5)])
    eng = cdd_engine.load(engine_dir("openvino"), runtime="native")
    scores = eng.score(x).scores
    mid = float(np.median(scores))
    other = cdd_engine.load(engine_dir("openvino"), runtime="native", threshold=mid)
    r = other.score(x)
    assert r.threshold == mid and r.is_anomalous.sum() == 2  # strictly above the median of 5
    np.testing.assert_array_equal(r.is_anomalous, scores > mid)
    other.threshold = float(scores.min()) - 1.0  # the Python Engine's threshold, no reload
    r = other.score(x)
    assert r.is_anomalous.all() and r.threshold == other.threshold
    other.threshold = float(scores.max())
    assert not other.score(x).is_anomalous.any()
    with pytest.raises(ValueError, match="finite number"):
        other.threshold = float("inf")


@needs_native
def test_float_frames_fall_back_to_the_python_runtime(model):
    """Float frames (and features()) go to the Python backend, created on first need only."""
    rng = np.random.default_rng(13)
    x = np.stack([random_frame(rng, 45, 77) for _ in range(3)])
    eng = cdd_engine.load(engine_dir("openvino"), runtime="native")
    u8 = eng.score(x)
    assert eng._backend is None  # uint8 frames: the network was compiled once, in C++
    f32 = eng.score(x.astype(np.float32), float_range=(0, 255))
    assert eng._backend is not None
    want_maps, want_scores = reference(model, list(x))
    assert rel_err(f32.scores, want_scores) <= RTOL and rel_err(f32.maps, want_maps) <= RTOL
    assert rel_err(f32.scores, u8.scores) <= 2 * RTOL
    f64 = eng.score([torch.from_numpy(f).double() for f in x], float_range=(0, 255))
    np.testing.assert_array_equal(f64.scores, f32.scores)
    assert len(eng.features(x[:2])) == 6


@needs_native
def test_eight_threads_share_one_engine():
    eng = cdd_engine.load(engine_dir("openvino"), runtime="native", num_streams=2)
    rng = np.random.default_rng(17)
    jobs = [[random_frame(rng, 30 + 7 * t, 50 + 3 * i) for i in range(1 + t % 3)] for t in range(8)]
    serial = [eng.score(j).scores for j in jobs]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda j: eng.score(j).scores, jobs * 2))
    for got, want in zip(parallel, serial * 2):
        np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------- errors
BAD_INPUTS = [
    ("int16 batch", lambda: (np.zeros((1, 8, 8, 3), np.int16) + 3, "RGB")),
    ("int32 tensor", lambda: (torch.ones(1, 8, 8, 3, dtype=torch.int32), "RGB")),
    ("int64 list", lambda: ([np.ones((8, 8, 3), np.int64)], "RGB")),
    ("one frame without batch", lambda: (np.ones((8, 8, 3), np.uint8), "RGB")),
    ("5-d", lambda: (np.ones((1, 1, 8, 8, 3), np.uint8), "RGB")),
    ("4 channels", lambda: (np.ones((2, 8, 8, 4), np.uint8), "RGB")),
    ("RGB as MONO", lambda: (np.ones((2, 8, 8, 3), np.uint8), "MONO")),
    ("empty batch", lambda: (np.zeros((0, 8, 8, 3), np.uint8), "RGB")),
    ("empty list", lambda: ([], "RGB")),
    ("zero-sized frame", lambda: ([np.ones((9, 9, 3), np.uint8), np.zeros((17, 0, 3), np.uint8)], "RGB")),
    ("mixed channels", lambda: ([np.ones((9, 9, 3), np.uint8), np.ones((9, 9, 1), np.uint8)], "RGB")),
    ("not an array", lambda: ("frame.png", "RGB")),
    ("list of lists", lambda: ([[1, 2, 3]], "RGB")),
    ("bad pixel format", lambda: (np.ones((1, 8, 8, 3), np.uint8), "RGBA")),
    ("NaN float frame", lambda: (np.full((1, 8, 8, 3), np.nan, np.float32), "RGB")),
]


@needs_native
@pytest.mark.parametrize("make", [b[1] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_the_same_error_on_both_runtimes(native_engine, python_engine, make):
    images, fmt = make()
    errors = []
    for eng in (native_engine, python_engine):
        with pytest.raises((TypeError, ValueError)) as info:
            eng.score(images, pixel_format=fmt)
        errors.append((type(info.value), str(info.value)))
    assert errors[0] == errors[1] and errors[0][1]
    with pytest.raises(ValueError, match="map_size must be one of"):
        native_engine.score(np.ones((1, 8, 8, 3), np.uint8), map_size="full")



@pytest.mark.parametrize("name", ["GRAY", "L", "RGB8", "mono8", "RGBA"])
def test_the_module_and_the_python_runtime_take_the_same_pixel_format_names(python_engine, name):
    # one list of names (runtime/frames.py PIXEL_FORMATS, any case): the C++ module used to take
    # aliases (GRAY, L, RGB8, ...) that the Python runtime refused
    from native_helpers import native_or_skip
    module_engine = native_or_skip().Engine(str(engine_dir("openvino")), num_threads=1)
    rgb = random_frame(np.random.default_rng(5), 37, 41)
    for score in (module_engine.score, python_engine.score):
        with pytest.raises(ValueError, match="pixel_format"):
            score(rgb[None], pixel_format=name)
    mono = random_frame(np.random.default_rng(6), 37, 41, None)
    a = module_engine.score(mono[None], pixel_format="mono")[0]  # (scores, verdicts, maps)
    b = python_engine.score(mono[None], pixel_format="Mono").scores
    np.testing.assert_allclose(a, b, rtol=RTOL)
