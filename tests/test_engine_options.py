"""The engine's backend options as typed objects (runtime/options.py) against the Engine keywords.

- each class checks its values once, with the messages the keywords always gave;
- the keywords and the typed objects make the same object and score fresh random frames of odd
  sizes the same way, on the tiny resnet18 engines of engine_helpers (64², max_batch 4), both
  within 1e-5 relative of the float64 reference (RTOL, docs/anomaly_map.md);
- a typed object plus a keyword, an object of another backend's class, and a keyword of another
  backend are TypeErrors;
- the verdict: one rule (float32 score > float32(threshold), or non-finite) on both runtimes and in
  the library's own (unused) verdict.
"""
from __future__ import annotations

import dataclasses
import logging
from types import SimpleNamespace

import numpy as np
import pytest

import cdd_engine
from cdd_engine import AotiOptions, OpenVINOOptions, TensorRTOptions, TorchOptions
from cdd_engine.runtime import native_runtime
from cdd_engine.runtime.options import BOTH, NATIVE, PYTHON, backend_options

from engine_helpers import one_torch_thread  # noqa: F401 (autouse fixture)
from engine_helpers import RTOL, engine_dir, model_and_run_dir, reference, rel_err
from native_helpers import needs_native

NATIVE_MODULE = native_runtime.native_module()
CLASSES = (OpenVINOOptions, TorchOptions, AotiOptions, TensorRTOptions)


def fresh_rng() -> tuple[int, np.random.Generator]:
    """A new seed per run (put in failure messages), so each run scores frames it has not seen."""
    seed = int(np.random.SeedSequence().entropy % (2 ** 31))
    return seed, np.random.default_rng(seed)


def odd_frames(rng: np.random.Generator) -> list[np.ndarray]:
    """Five uniform random uint8 RGB frames of odd sizes (more than max_batch 4: two chunks)."""
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            for h, w in ((37, 53), (101, 47), (64, 64), (29, 83), (71, 45))]


# ----------------------------------------------------------------------------- the objects alone
@pytest.mark.parametrize("make,error,message", [
    (lambda: OpenVINOOptions(mode="fastest"), ValueError,
     r"OpenVINO mode must be one of \('auto', 'latency', 'throughput'\), got 'fastest'"),
    (lambda: OpenVINOOptions(mode="LATENCY"), ValueError, "OpenVINO mode must be one of"),
    (lambda: OpenVINOOptions(sub_batch=0), ValueError, "sub_batch must be a positive integer, got 0"),
    (lambda: OpenVINOOptions(sub_batch=2.0), ValueError, "sub_batch must be a positive integer, got 2.0"),
    (lambda: OpenVINOOptions(sub_batch=True), ValueError, "sub_batch must be a positive integer, got True"),
    (lambda: OpenVINOOptions(sub_batch=np.int64(2)), ValueError, "sub_batch must be a positive integer"),
    *[(lambda c=c, v=v: c(num_streams=v), ValueError, rf"num_streams must be an integer >= 1, got {v!r}")
      for c in CLASSES for v in (0, -3, True, 1.5)],
])
def test_bad_values_are_the_errors_the_keywords_gave(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_values_are_normalised_once_and_frozen():
    o = OpenVINOOptions(mode="throughput", sub_batch=3, static_shapes=0, num_streams=np.int64(2))
    assert o == OpenVINOOptions(mode="throughput", sub_batch=3, static_shapes=False, num_streams=2)
    assert type(o.num_streams) is int and o.static_shapes is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.mode = "latency"
    assert OpenVINOOptions().given() == {} and TorchOptions().given() == {}


def test_each_field_says_which_runtime_honours_it():
    want = {
        OpenVINOOptions: {"mode": BOTH, "sub_batch": BOTH, "static_shapes": BOTH, "num_streams": NATIVE},
        TorchOptions: {"use_triton": PYTHON, "cuda_graphs": PYTHON, "num_streams": NATIVE},
        AotiOptions: {"use_triton": PYTHON, "cuda_graphs": PYTHON, "num_streams": NATIVE},
        TensorRTOptions: {"use_triton": PYTHON, "num_streams": NATIVE},
    }
    for cls, fields in want.items():
        assert {f.name: f.metadata["runtime"] for f in dataclasses.fields(cls)} == fields, cls
    o = OpenVINOOptions(mode="latency", sub_batch=2, num_streams=3)
    assert o.only_for(PYTHON) == [] and o.only_for(NATIVE) == ["num_streams"]
    assert TensorRTOptions(use_triton=True, num_streams=2).only_for(PYTHON) == ["use_triton"]
    # the Python backend gets what it honours, under its own argument names
    assert o.python_backend_kwargs() == {"mode": "latency", "sub_batch": 2}


@pytest.mark.parametrize("backend,device,options,want", [
    ("openvino", None, OpenVINOOptions(), "native"),
    ("openvino", None, OpenVINOOptions(mode="throughput", static_shapes=False, num_streams=3), "native"),
    ("openvino", None, OpenVINOOptions(sub_batch=2), "native"), ("openvino", None, {"sub_batch": 2}, "native"),
    ("openvino", None, {}, "native"),
    ("tensorrt", "cuda", TensorRTOptions(num_streams=2), "native"),
    ("tensorrt", "cuda", TensorRTOptions(use_triton=True), "python"), ("tensorrt", "cuda", {"use_triton": True}, "python"),
])
def test_choose_runtime_asks_the_object(monkeypatch, backend, device, options, want):
    """A stand-in module built with OpenVINO and TensorRT: only an option the Python runtime alone
    honours moves "auto" to it, and "native" refuses it with the message the keywords gave."""
    monkeypatch.setattr(native_runtime, "native_module",
                        lambda: SimpleNamespace(WITH_OPENVINO=True, WITH_TENSORRT=True))
    name, reason = native_runtime.choose_runtime("auto", {"backend": backend}, device, options)
    assert name == want and reason.startswith("auto")
    if want == "python":
        assert "['use_triton'] belong to the Python runtime" in reason
        with pytest.raises(TypeError, match=r"runtime='native' does not take option\(s\) \['use_triton'\]"):
            native_runtime.choose_runtime("native", {"backend": backend}, device, options)


def test_keywords_map_onto_the_backends_class():
    assert backend_options("openvino", openvino_mode="latency", sub_batch=2, static_shapes=False, num_streams=2) \
        == OpenVINOOptions(mode="latency", sub_batch=2, static_shapes=False, num_streams=2)
    assert backend_options("torch", use_triton=False, cuda_graphs=False) == TorchOptions(use_triton=False,
                                                                                         cuda_graphs=False)
    assert backend_options("aoti", cuda_graphs=True, num_streams=1) == AotiOptions(cuda_graphs=True, num_streams=1)
    assert backend_options("tensorrt", use_triton=True) == TensorRTOptions(use_triton=True)
    assert backend_options("tensorrt", use_triton=None, openvino_mode=None) == TensorRTOptions()  # None: not given
    with pytest.raises(TypeError, match=r"backend 'tensorrt' does not take option\(s\) \['mode', 'static_shapes'\]"):
        backend_options("tensorrt", openvino_mode="latency", static_shapes=True)
    with pytest.raises(TypeError, match=r"backend 'openvino' does not take option\(s\) \['cuda_graphs'\]"):
        backend_options("openvino", cuda_graphs=False)
    with pytest.raises(TypeError, match="a 'aoti' engine takes AotiOptions, got TorchOptions"):
        backend_options("aoti", TorchOptions())
    with pytest.raises(TypeError, match="options must be one of OpenVINOOptions, .* got dict"):
        backend_options("openvino", {"mode": "latency"})
    with pytest.raises(TypeError, match=r"keyword\(s\) \['num_streams'\] both set engine options"):
        backend_options("openvino", OpenVINOOptions(mode="latency"), num_streams=2)


# ----------------------------------------------------------------------------- real engines
@pytest.fixture(scope="module")
def model():
    return model_and_run_dir()[0]


@pytest.mark.parametrize("backend,keywords,typed", [
    ("openvino", dict(runtime="python", openvino_mode="throughput", sub_batch=3),
     OpenVINOOptions(mode="throughput", sub_batch=3)),
    ("openvino", dict(runtime="python", openvino_mode="latency", static_shapes=False),
     OpenVINOOptions(mode="latency", static_shapes=False)),
    ("openvino", dict(openvino_mode="throughput", num_streams=2), OpenVINOOptions(mode="throughput", num_streams=2)),
    ("openvino", dict(sub_batch=2), OpenVINOOptions(sub_batch=2)),  # native: frames_per_request
    ("torch", dict(use_triton=False, cuda_graphs=False), TorchOptions(use_triton=False, cuda_graphs=False)),
])
def test_keywords_and_typed_objects_score_the_same(model, backend, keywords, typed):
    seed, rng = fresh_rng()
    x = odd_frames(rng)
    keywords = dict(keywords)  # the parameter itself stays as collected
    runtime = keywords.pop("runtime", "auto")
    by_keywords = cdd_engine.load(engine_dir(backend), runtime=runtime, **keywords)
    by_object = cdd_engine.load(engine_dir(backend), runtime=runtime, options=typed)
    assert by_keywords.options == by_object.options == typed
    assert by_keywords.runtime == by_object.runtime
    a, b = by_keywords.score(x), by_object.score(x)
    want_maps, want_scores = reference(model, x)
    # the same options on the same runtime: the same computation (1e-6 allows a reordered sum
    # between two compilations of the same network), and both within RTOL of the reference
    assert rel_err(a.scores, b.scores) <= 1e-6 and rel_err(a.maps, b.maps) <= 1e-6, f"seed {seed}"
    assert rel_err(a.scores, want_scores) <= RTOL and rel_err(a.maps, want_maps) <= RTOL, f"seed {seed}"
    np.testing.assert_array_equal(a.is_anomalous, b.is_anomalous)


def test_options_and_a_keyword_together_are_a_type_error():
    with pytest.raises(TypeError, match=r"keyword\(s\) \['openvino_mode'\] both set engine options: give each "
                                        r"option once, in the options object"):
        cdd_engine.load(engine_dir("openvino"), options=OpenVINOOptions(mode="latency"), openvino_mode="latency")
    with pytest.raises(TypeError, match=r"keyword\(s\) \['cuda_graphs'\] both set"):
        cdd_engine.load(engine_dir("torch"), options=TorchOptions(use_triton=False), cuda_graphs=False)


@pytest.mark.parametrize("runtime", ["auto", "python", "native"])
def test_options_of_another_backend(runtime):
    """Another backend's class or keyword is a TypeError at load whatever the runtime (the Python
    backends' message for keywords, as before the typed objects)."""
    with pytest.raises(TypeError, match="a 'torch' engine takes TorchOptions, got OpenVINOOptions"):
        cdd_engine.load(engine_dir("torch"), runtime=runtime, options=OpenVINOOptions())
    with pytest.raises(TypeError, match=r"backend 'torch' does not take option\(s\) \['mode'\]"):
        cdd_engine.load(engine_dir("torch"), runtime=runtime, openvino_mode="latency")
    with pytest.raises(TypeError, match=r"backend 'openvino' does not take option\(s\) \['use_triton'\]"):
        cdd_engine.load(engine_dir("openvino"), runtime=runtime, use_triton=False)
    # before the typed objects the native runtime let this one through until the first float frame
    with pytest.raises(TypeError, match=r"backend 'openvino' does not take option\(s\) \['cuda_graphs'\]"):
        cdd_engine.load(engine_dir("openvino"), runtime=runtime, cuda_graphs=False)


def test_num_streams_on_a_torch_engine_is_ignored_as_before(caplog):
    """A torch engine always runs on the Python runtime: num_streams (native only) is ignored with a
    warning under "auto" and a TypeError with runtime="python", given either way."""
    for kwargs in (dict(num_streams=2), dict(options=TorchOptions(num_streams=2))):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="cdd_engine"):
            eng = cdd_engine.load(engine_dir("torch"), **kwargs)
        assert eng.runtime == "python"
        assert any("num_streams=2 ignored" in r.getMessage() for r in caplog.records)
        with pytest.raises(TypeError, match="num_streams is an option of the native runtime"):
            cdd_engine.load(engine_dir("torch"), runtime="python", **kwargs)


# ----------------------------------------------------------------------------- the verdict
@needs_native
def test_one_verdict_rule_on_both_runtimes_and_in_the_library():
    """is_anomalous is "float32 score > threshold rounded to float32" on both runtimes (Engine._result,
    the one place) and in the library's own, unused verdict. A threshold one float64 step below or
    above a score rounds to that score in float32, so the score does not exceed it on any path
    (a float64 comparison would say it does, for the step below); the median splits the frames."""
    seed, rng = fresh_rng()
    x = odd_frames(rng)
    engines = {rt: cdd_engine.load(engine_dir("openvino"), runtime=rt) for rt in ("native", "python")}
    s = np.float64(engines["native"].score(x).scores[0])
    below, above = np.nextafter(s, -np.inf), np.nextafter(s, np.inf)
    assert np.float32(below) == np.float32(s) == np.float32(above)  # the boundary this test is about
    boundary = (float(below), float(s), float(above))
    for t in (*boundary, float(np.median(engines["python"].score(x).scores))):
        f32 = np.float32(t)
        lib = NATIVE_MODULE.Engine(str(engine_dir("openvino")), threshold=t, verify_hashes=False)
        lib_scores, _, lib_anomalous, lib_threshold = lib.score(x, "RGB", False, "model")
        assert np.float32(lib_threshold) == f32
        np.testing.assert_array_equal(lib_anomalous, lib_scores > f32, err_msg=f"library, t={t!r}, seed {seed}")
        for rt, eng in engines.items():
            eng.threshold = t
            got = eng.score(x, return_maps=False)
            assert got.threshold == t
            np.testing.assert_array_equal(got.is_anomalous, got.scores > f32, err_msg=f"{rt}, t={t!r}, seed {seed}")
            if t in boundary and got.scores[0] == np.float32(s):
                assert not got.is_anomalous[0], f"t={t!r} rounds to the score itself: not above it (seed {seed})"
