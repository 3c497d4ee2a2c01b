"""The aoti backend (AOTInductor package, export/aoti.py, runtime/backends/aoti_backend.py) on the
CPU, and the device-independent logic of the GPU path (runtime/cuda_graphs.py).

The tiny efficientnet_lite0 RD engine is compiled once per test process (tests/aoti_fixtures.py,
~30-90 s on 2 shared cores); everything else here takes seconds. Reference: the fp32 torch model
and the float64 anomaly map of cdd_engine/anomaly_map.py, frame by frame, on fresh random frames.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import cdd_engine
from cdd_engine.engine_format import (FORMAT_VERSION, check_aoti_runtime, read_manifest, sha256_file,
                                      validate_manifest)
from cdd_engine.errors import EngineFormatError
from cdd_engine.export.aoti import FOLD_RTOL, check_options, fold_and_check, fold_batchnorm, tf32_mode
from cdd_engine.runtime import cuda_graphs as cg
from cdd_engine.runtime.build import default_precision

from aoti_fixtures import MAX_BATCH, tiny_aoti_engine, tiny_aoti_model, tiny_run_dir  # noqa: F401 (fixtures)
from engine_helpers import frames, one_torch_thread, reference, rel_err  # noqa: F401 (autouse fixture)

RTOL = 1e-5  # docs/anomaly_map.md: fp32 engines against the float64 reference


def fresh_seed() -> int:
    """A new seed per run (reported in failures), so the parity tests see fresh frames each time."""
    return int(np.random.SeedSequence().entropy % (2 ** 31))


@pytest.fixture()
def engine_copy(tiny_aoti_engine, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_aoti_engine, tmp_path / "engine"))


def rewrite_manifest(engine_dir: Path, edit) -> None:
    path = engine_dir / "engine.json"
    m = json.loads(path.read_text())
    edit(m)
    path.write_text(json.dumps(m))


def rehash(engine_dir: Path, name: str = "model.pt2") -> None:
    """Re-record a damaged file's size and hash, so only the package's own checks can refuse it."""
    def edit(m):
        m["files"][name] = {"sha256": sha256_file(engine_dir / name), "bytes": os.path.getsize(engine_dir / name)}
    rewrite_manifest(engine_dir, edit)


# ---------------------------------------------------------------- parity on the CPU


def test_score_parity_odd_sizes_and_batches(tiny_aoti_engine, tiny_aoti_model):
    engine = cdd_engine.load(tiny_aoti_engine, runtime="python")
    assert engine.backend_name == "aoti" and engine.runtime == "python"
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    cases = {
        "batch > max_batch, odd size": frames(MAX_BATCH + 3, 37, 53, seed=seed),
        "batch 1 at model size": frames(1, 64, 64, seed=seed + 1),
        "list of odd sizes": [frames(1, int(h), int(w), seed=seed + 2 + i)[0]
                              for i, (h, w) in enumerate(rng.integers(17, 130, size=(3, 2)))],
    }
    for what, fr in cases.items():
        got = engine.score(fr)
        want_maps, want_scores = reference(tiny_aoti_model, list(fr))
        assert rel_err(got.maps, want_maps) < RTOL, (what, seed)
        assert rel_err(got.scores, want_scores) < RTOL, (what, seed)
        np.testing.assert_array_equal(got.is_anomalous, got.scores > engine.threshold)


def test_bgr_frames_and_input_size_maps(tiny_aoti_engine, tiny_aoti_model):
    engine = cdd_engine.load(tiny_aoti_engine, runtime="python")
    seed = fresh_seed()
    fr = frames(2, 45, 31, seed=seed)
    got = engine.score(fr[..., ::-1].copy(), pixel_format="BGR", map_size="input")
    want_maps, want_scores = reference(tiny_aoti_model, list(fr))
    assert rel_err(got.scores, want_scores) < RTOL, seed
    assert [m.shape for m in got.maps] == [(45, 31)] * 2


def test_features_match_the_torch_model(tiny_aoti_engine, tiny_aoti_model):
    engine = cdd_engine.load(tiny_aoti_engine, runtime="python")
    fr = frames(3, 64, 64, seed=fresh_seed())
    x = engine.prepare(cdd_engine.runtime.frames.to_frames(fr), 0, 3).clone()
    with torch.no_grad():
        t, s = tiny_aoti_model(x)
    for got, want in zip(engine.features(fr), (*t, *s)):
        assert got.shape == want.shape and got.dtype == torch.float32
        assert rel_err(got, want) < RTOL


def test_backend_refuses_batches_outside_the_package_range(tiny_aoti_engine):
    engine = cdd_engine.load(tiny_aoti_engine, runtime="python")
    with pytest.raises(ValueError, match="batches of 1..4"):
        engine.backend.features(torch.randn(MAX_BATCH + 1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\)"):
        engine.backend.features(torch.randn(1, 3, 32, 64))


def test_runtime_choice_without_the_native_aoti_backend(tiny_aoti_engine):
    """"auto" runs an aoti engine natively only when libcdd_engine was built with its AOTInductor
    backend (the module's WITH_AOTI); otherwise the Python runtime, and "native" says why not."""
    from cdd_engine.runtime.native_runtime import native_module

    if getattr(native_module(), "WITH_AOTI", False):
        pytest.skip("this native module has the AOTInductor backend (tests/test_native_aoti.py covers it)")
    assert cdd_engine.load(tiny_aoti_engine).runtime == "python"
    with pytest.raises(cdd_engine.errors.BackendUnavailable, match="no AOTInductor backend"):
        cdd_engine.load(tiny_aoti_engine, runtime="native")
    with pytest.raises(cdd_engine.errors.BackendUnavailable, match="cuda_graphs belongs to the Python runtime"):
        cdd_engine.load(tiny_aoti_engine, runtime="native", cuda_graphs=False)


# ---------------------------------------------------------------- the manifest


def test_manifest_fields(tiny_aoti_engine):
    m = read_manifest(tiny_aoti_engine)
    assert m["format_version"] == FORMAT_VERSION == 2
    assert m["backend"] == "aoti" and m["precision"] == "fp32"
    assert set(m["files"]) == {"model.pt2"}
    assert m["aoti"] == {"device": "cpu", "torch_version": torch.__version__, "min_batch": 1,
                         "max_batch": MAX_BATCH, "channels_last": True, "batchnorm_folded": True}
    assert all(f["dtype"] == "float32" for f in m["features"])
    b = m["build"]
    assert b["options"]["device"] == "cpu"
    assert b["folded_batchnorms"] > 50  # efficientnet_lite0 teacher + student: 67 BatchNorms, each after a conv
    assert 0 <= b["fold_max_rel_error"] <= FOLD_RTOL
    assert b["compile_seconds"] > 0 and b["inductor_configs"] == {"freezing": True}


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.pop("aoti"), "needs an 'aoti' object"),
    (lambda m: m["aoti"].update(device="tpu"), "aoti.device must be one of"),
    (lambda m: m["aoti"].update(torch_version=""), "torch_version must be a non-empty string"),
    (lambda m: m["aoti"].update(torch_version=2.13), "torch_version must be a non-empty string"),
    (lambda m: m["aoti"].update(min_batch=2), "min_batch must be the integer 1"),
    (lambda m: m["aoti"].update(min_batch=True), "min_batch must be the integer 1"),
    (lambda m: m["aoti"].update(max_batch=MAX_BATCH + 1), "max_batch must be the integer max_batch"),
    (lambda m: m["aoti"].update(channels_last=1), "channels_last must be true or false"),
    (lambda m: m["aoti"].pop("batchnorm_folded"), "batchnorm_folded must be true or false"),
    (lambda m: m.update(precision="fp16"), "runs on CUDA only"),
    (lambda m: m.update(precision="int8"), "backend 'aoti' takes precision"),
    (lambda m: [f.update(dtype="float16") for f in m["features"]], "outputs float32 features"),
    (lambda m: m["files"].update({"model.onnx": m["files"].pop("model.pt2")}), "needs 'model.pt2'"),
    (lambda m: m.update(format_version=3), "format_version 3 is not supported.*reads versions 1, 2"),
])
def test_validation_refuses_a_bad_aoti_section(tiny_aoti_engine, edit, match):
    m = json.loads((tiny_aoti_engine / "engine.json").read_text())
    validate_manifest(m)  # the real one passes
    edit(m)
    with pytest.raises(EngineFormatError, match=match):
        validate_manifest(m)


# ---------------------------------------------------------------- mismatches and damage


def test_other_torch_version_is_refused_with_rebuild_advice(engine_copy):
    rewrite_manifest(engine_copy, lambda m: m["aoti"].update(torch_version="2.4.0+cu121"))
    with pytest.raises(EngineFormatError, match=r"compiled with torch 2\.4\.0\+cu121.*rebuild"):
        cdd_engine.load(engine_copy, runtime="python")


def test_other_device_is_refused_with_rebuild_advice(engine_copy, tiny_aoti_engine):
    rewrite_manifest(engine_copy, lambda m: m["aoti"].update(device="cuda"))
    with pytest.raises(EngineFormatError, match=r"compiled for device 'cuda'.*'cpu'; rebuild"):
        cdd_engine.load(engine_copy, device="cpu", runtime="python")
    m = read_manifest(tiny_aoti_engine)
    with pytest.raises(EngineFormatError, match="compiled for device 'cpu' but is being loaded on 'cuda'"):
        check_aoti_runtime(m, "cuda")
    check_aoti_runtime(m, "cpu")  # and the real one passes


def test_missing_package_is_refused(engine_copy):
    (engine_copy / "model.pt2").unlink()
    with pytest.raises(EngineFormatError, match="model.pt2: file listed in engine.json is missing"):
        cdd_engine.load(engine_copy, runtime="python")


_LOAD_DAMAGED = textwrap.dedent("""
    import sys
    import cdd_engine
    from cdd_engine.errors import EngineFormatError
    for d in sys.argv[1:]:
        try:
            cdd_engine.load(d, runtime="python")
        except EngineFormatError as e:
            print("REFUSED:", e, flush=True)
        else:
            print("LOADED:", d, flush=True)
""")
DAMAGES = ("truncated", "garbage", "flipped_bytes", "empty_zip")


def test_corrupt_package_is_an_engine_format_error(tiny_aoti_engine, tmp_path):
    """Bytes damaged after the build, with the manifest's hash re-written to match, so only the
    package's own checks stand between them and the loader: an EngineFormatError for each, in a
    subprocess (one for all four: importing torch costs seconds) in case the loader crashed."""
    import zipfile

    dirs = []
    for damage in DAMAGES:
        d = Path(shutil.copytree(tiny_aoti_engine, tmp_path / damage))
        path = d / "model.pt2"
        data = bytearray(path.read_bytes())
        if damage == "truncated":
            data = data[:len(data) // 2]
        elif damage == "garbage":
            data = bytearray(np.random.default_rng(fresh_seed()).integers(0, 256, len(data), dtype=np.uint8).tobytes())
        elif damage == "flipped_bytes":  # inside the archive's members: their CRC catches it
            for i in range(len(data) // 3, len(data) // 3 + 64):
                data[i] ^= 0xFF
        else:  # a valid zip archive without the compiled model
            path.unlink()
            with zipfile.ZipFile(path, "w") as z:
                z.writestr("model/archive_format", "pt2")
            data = bytearray(path.read_bytes())
        path.write_bytes(bytes(data))
        rehash(d)
        dirs.append(str(d))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _LOAD_DAMAGED, *dirs], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == len(DAMAGES), proc.stdout
    for damage, line in zip(DAMAGES, lines):
        assert line.startswith("REFUSED:") and f"{damage}/model.pt2" in line and "rebuild" in line, (damage, line)


# ---------------------------------------------------------------- build options


@pytest.mark.parametrize("precision, device, match", [
    ("fp16", "cpu", "'fp16' runs on CUDA only"),
    ("tf32", "cpu", "'tf32' runs on CUDA only"),
    ("int8", "cpu", "backend 'aoti' supports precision"),
])
def test_build_refuses_cpu_precisions_before_compiling(tmp_path, precision, device, match):
    with pytest.raises(ValueError, match=match):
        cdd_engine.build(tiny_run_dir(), backend="aoti", precision=precision, device=device,
                         output_dir=tmp_path / "e")
    assert not (tmp_path / "e").exists()


def test_build_option_checks():
    with pytest.raises(ValueError, match="device 'cpu' or 'cuda'"):
        check_options("fp32", "mps", 4)
    if not torch.cuda.is_available():
        with pytest.raises(cdd_engine.errors.BackendUnavailable, match="compiled on the GPU"):
            check_options("fp16", "cuda", 4)
    check_options("bf16", "cpu", 4)


def test_default_precision():
    assert default_precision("aoti", "cuda") == "fp16"
    assert default_precision("aoti", "cuda:1") == "fp16"
    assert default_precision("aoti", None) == "fp32"
    assert default_precision("aoti", "cpu") == "fp32"
    assert default_precision("torch", "cuda") == "fp32"


def test_tf32_mode_sets_and_restores_the_global_flags():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    for enabled in (False, True):
        with tf32_mode(enabled):
            assert torch.backends.cuda.matmul.allow_tf32 is enabled
            assert torch.backends.cudnn.allow_tf32 is enabled
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    with pytest.raises(KeyError):
        with tf32_mode(not before[1]):
            raise KeyError("inside")
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


# ---------------------------------------------------------------- BatchNorm folding


class _ConvBN(torch.nn.Module):
    """conv -> BN, transposed conv -> BN and, with ``shared``, a conv output also read by an add
    (a pattern folding must not change)."""

    def __init__(self, shared: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = shared
        self.c1, self.b1 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        self.c2, self.b2 = torch.nn.ConvTranspose2d(8, 8, 2, stride=2, bias=False), torch.nn.BatchNorm2d(8)
        g = torch.Generator().manual_seed(1)
        for bn in (self.b1, self.b2):
            bn.running_mean.copy_(torch.randn(8, generator=g))
            bn.running_var.copy_(torch.rand(8, generator=g) + 0.3)
            bn.weight.data.copy_(torch.randn(8, generator=g))
            bn.bias.data.copy_(torch.randn(8, generator=g))
        self.eval()

    def forward(self, x):
        y = self.c1(x)
        h = torch.relu(self.b1(y))
        if self.shared:
            h = h + y  # y is read twice: folding b1 into c1 would change this sum
        return [h], [self.b2(self.c2(h))]


def test_fold_batchnorm_folds_conv_and_transposed_conv():
    x = torch.randn(2, 3, 11, 13)
    model = _ConvBN(shared=False)
    folded, info = fold_and_check(model, x)
    assert info["batchnorm_folded"] and info["folded_batchnorms"] == 2
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the caller's model untouched
    with torch.no_grad():
        (a,), (b,) = model(x)
        (af,), (bf,) = folded(x)
    assert rel_err(af, a) < 1e-5 and rel_err(bf, b) < 1e-5


def test_fold_that_would_change_the_model_is_dropped():
    x = torch.randn(2, 3, 11, 13)
    model = _ConvBN(shared=True)
    _, n = fold_batchnorm(model, x[:1])  # the hooks cannot see the functional add ...
    assert n == 2
    kept, info = fold_and_check(model, x)  # ... the check on a probe batch does
    assert kept is model and info["batchnorm_folded"] is False and info["fold_max_rel_error"] > FOLD_RTOL


# ---------------------------------------------------------------- GPU path logic (on the CPU)


def test_batch_buckets_and_bucket_choice():
    assert cg.batch_buckets(32) == (1, 2, 4, 8, 16, 32)
    assert cg.batch_buckets(6) == (1, 2, 4, 6)
    assert cg.batch_buckets(1) == (1,)
    b = cg.batch_buckets(6)
    assert [cg.bucket_for(n, b) for n in range(1, 7)] == [1, 2, 4, 4, 6, 6]
    for bad in (0, 7):
        with pytest.raises(ValueError, match="does not fit"):
            cg.bucket_for(bad, b)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="positive integer"):
            cg.batch_buckets(bad)
    assert cg.chunk_ranges(11, 4) == [(0, 4), (4, 8), (8, 11)]
    assert cg.chunk_ranges(4, 4) == [(0, 4)]


def test_pad_rows_repeats_the_last_row():
    src = torch.from_numpy(frames(3, 5, 7, seed=fresh_seed()))
    dst = torch.empty(8, 5, 7, 3, dtype=torch.uint8)
    cg.pad_rows(src, dst)
    assert torch.equal(dst[:3], src) and all(torch.equal(dst[i], src[2]) for i in range(3, 8))
    with pytest.raises(ValueError, match="cannot pad"):
        cg.pad_rows(src, torch.empty(2, 5, 7, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="cannot pad"):
        cg.pad_rows(src, torch.empty(4, 5, 6, 3, dtype=torch.uint8))


def test_captured_scorer_pipeline_on_the_cpu():
    """The chunked, padded, double-buffered pipeline of the CUDA graphs path (capture off on the
    CPU): per-frame results equal a direct computation, whatever the chunking and padding; the
    graph cache keeps at most ``max_graphs`` entries."""
    seen_batches = []

    def fn(x: torch.Tensor, fmt: str):
        seen_batches.append(int(x.shape[0]))
        f = x.float()
        maps = f.mean(-1) * (2.0 if fmt == "BGR" else 1.0)  # (b, h, w): any per-frame function
        return maps, maps.flatten(1).amax(1)

    scorer = cg.CapturedScorer(fn, cg.Device(torch.device("cpu")), max_batch=4, max_graphs=2)
    assert scorer.buckets == (1, 2, 4) and scorer.capture is False
    seed = fresh_seed()
    for n, fmt in ((11, "RGB"), (3, "BGR"), (1, "RGB")):
        fr = frames(n, 9, 6, seed=seed + n)
        seen_batches.clear()
        scores, maps = scorer.score(fr, fmt, max_batch=4)
        want = fr.astype(np.float32).mean(-1) * (2.0 if fmt == "BGR" else 1.0)
        np.testing.assert_allclose(maps, want, rtol=1e-6)
        np.testing.assert_allclose(scores, want.reshape(n, -1).max(1), rtol=1e-6)
        assert all(b in scorer.buckets for b in seen_batches)  # every call ran a whole bucket
    assert [(k[0], k[4]) for k in scorer._graphs] == [(4, "BGR"), (1, "RGB")]  # (4, RGB) dropped: least recent
    scores, maps = scorer.score(frames(5, 9, 6, seed=seed), "RGB", max_batch=4, want_maps=False)
    assert maps is None and scores.shape == (5,)
    assert [(k[0], k[4]) for k in scorer._graphs] == [(4, "RGB"), (1, "RGB")]
    with pytest.raises(ValueError, match="needs a CUDA device"):
        cg.CapturedScorer(fn, cg.Device(torch.device("cpu")), max_batch=4, capture=True)


def test_captured_scorer_with_the_aoti_backend_matches_engine_score(tiny_aoti_engine):
    """The same pipeline around the real package (CPU pre-processing instead of the Triton kernel):
    what the CUDA path computes per chunk equals Engine.score."""
    engine = cdd_engine.load(tiny_aoti_engine, runtime="python")
    from cdd_engine.runtime.frames import to_frames

    def fn(x: torch.Tensor, fmt: str):
        f = to_frames(x, fmt)
        return engine.backend.score_batch(engine.prepare(f, 0, len(f)).clone())

    scorer = cg.CapturedScorer(fn, cg.Device(torch.device("cpu")), max_batch=MAX_BATCH)
    fr = frames(MAX_BATCH + 2, 29, 41, seed=fresh_seed())
    scores, maps = scorer.score(fr, "RGB", max_batch=MAX_BATCH)
    want = engine.score(fr)
    assert rel_err(maps, want.maps) < 1e-6 and rel_err(scores, want.scores) < 1e-6
    assert engine.backend.score_uint8(fr, "RGB") is None  # the CUDA-graph path is CUDA only


def test_the_function_a_cuda_graph_captures_on_the_cpu(tiny_aoti_engine, tiny_aoti_model):
    """_score_frames (Triton pre-processing -> package -> fused Triton map; the kernels under
    TRITON_INTERPRET=1 here), run through the chunking and padding of the CUDA-graph pipeline
    without capture: within 1e-5 of the reference, so on a GPU only the capture itself is new."""
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton kernels on the CPU need TRITON_INTERPRET=1 (tests/conftest.py sets it)")
    engine = cdd_engine.load(tiny_aoti_engine, runtime="python", use_triton=True)
    backend = engine.backend
    assert backend.kernels is not None and backend.scorer is None  # no CUDA: nothing is captured
    scorer = cg.CapturedScorer(backend._score_frames, cg.Device(torch.device("cpu")), max_batch=MAX_BATCH,
                               context=backend._precision_mode)
    seed = fresh_seed()
    fr = frames(MAX_BATCH + 1, 33, 47, seed=seed)
    scores, maps = scorer.score(fr, "RGB", max_batch=MAX_BATCH)
    want_maps, want_scores = reference(tiny_aoti_model, list(fr))
    assert rel_err(maps, want_maps) < RTOL and rel_err(scores, want_scores) < RTOL, seed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; its CPU path is test_score_parity_odd_sizes_and_batches")
def test_cuda_package_scores_like_the_reference(tmp_path, tiny_aoti_model):  # pragma: no cover - GPU only
    engine = cdd_engine.build(tiny_run_dir(), backend="aoti", precision="fp32", device="cuda",
                              max_batch=MAX_BATCH, output_dir=tmp_path / "cuda")
    fr = frames(MAX_BATCH + 3, 37, 53, seed=fresh_seed())
    got = engine.score(fr)
    want_maps, want_scores = reference(tiny_aoti_model, list(fr))
    assert rel_err(got.maps, want_maps) < RTOL and rel_err(got.scores, want_scores) < RTOL


BF16_RTOL = 2e-3  # docs/engine_format.md: reduced-precision engines' maps against the fp32 reference


def test_parity_tolerances_are_the_documented_ones():
    from cdd_engine.export.aoti import PARITY_RTOL

    assert PARITY_RTOL == {"fp32": RTOL, "tf32": 1e-3, "fp16": BF16_RTOL, "bf16": BF16_RTOL}


def test_bf16_package_on_the_cpu(tiny_aoti_model):
    """bf16 compiles on the CPU too (~50 s for this model on 2 cores; measured map error 5.6e-4)."""
    from aoti_fixtures import tiny_aoti_engine_dir

    engine_dir = tiny_aoti_engine_dir("bf16")
    m = read_manifest(engine_dir)
    assert m["precision"] == "bf16" and all(f["dtype"] == "float32" for f in m["features"])
    engine = cdd_engine.load(engine_dir, runtime="python")
    seed = fresh_seed()
    fr = frames(MAX_BATCH + 1, 41, 35, seed=seed)
    got = engine.score(fr)
    want_maps, want_scores = reference(tiny_aoti_model, list(fr))
    err = rel_err(got.maps, want_maps)
    assert err < BF16_RTOL, (err, seed)
    assert err > 1e-6, "a bf16 package should differ from fp32 at all: was the network run in float32?"
    assert rel_err(got.scores, want_scores) < BF16_RTOL, seed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; the captured function runs on the CPU in test_the_function_a_cuda_graph_captures_on_the_cpu")
def test_cuda_default_precision_and_graphs_agree(tmp_path, tiny_aoti_model):  # pragma: no cover - GPU only
    """build(device="cuda") defaults to fp16 (within 2e-3); the CUDA-graph path and the plain
    per-chunk path give the same maps; the caller's TF32 flags are left as they were."""
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    engine = cdd_engine.build(tiny_run_dir(), backend="aoti", device="cuda", max_batch=MAX_BATCH,
                              output_dir=tmp_path / "fp16")
    assert engine.precision == "fp16" and engine.manifest["aoti"]["device"] == "cuda"
    fr = frames(2 * MAX_BATCH + 1, 37, 53, seed=fresh_seed())
    got = engine.score(fr)
    want_maps, want_scores = reference(tiny_aoti_model, list(fr))
    assert rel_err(got.maps, want_maps) < BF16_RTOL and rel_err(got.scores, want_scores) < BF16_RTOL
    plain = cdd_engine.load(tmp_path / "fp16", cuda_graphs=False, runtime="python").score(fr)
    assert rel_err(got.maps, plain.maps) < 1e-6
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags
