"""The C++ engine fails closed (issue 16 items 1, 2, 6, 8; issue 11 item 12), through ``_native``.

Cases that crashed, hung or ran for minutes before the fix run in a child process with a time
limit, so a regression fails this test instead of killing or stalling the test run.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from native_helpers import mte, native_or_skip

native = native_or_skip()

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def engine_dir() -> str:
    return mte.cached_engine()["engine"]


def variant(src: str, dst: Path, edit=None, text_edit=None, copy: tuple[str, ...] = ()) -> str:
    """dst: the engine at src with model files linked (or copied, for `copy`) and engine.json edited."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in Path(src).iterdir():
        if f.name == "engine.json":
            continue
        if f.name in copy:
            (dst / f.name).write_bytes(f.read_bytes())
        else:
            (dst / f.name).symlink_to(f.resolve())
    m = json.loads((Path(src) / "engine.json").read_text())
    if edit:
        edit(m)
    text = json.dumps(m)
    if text_edit:
        text = text_edit(text)
    (dst / "engine.json").write_text(text, encoding="utf-8")
    return str(dst)


def in_child(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter with `native` loaded; a crash shows as a negative returncode."""
    prog = "from cdd_engine.native import load\nnative = load()\n" + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def expect_child_error(code: str, error: str, fragment: str, timeout: float = 120) -> None:
    """The child's code raises `error` with `fragment` in its message: no crash, no hang."""
    wrapped = f"""
try:
{textwrap.indent(textwrap.dedent(code), '    ')}
except {error} as e:
    print("REFUSED:", e)
else:
    print("ACCEPTED")
"""
    try:
        r = in_child(wrapped, timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"no answer within {timeout} s (hang or runaway work)")
    assert r.returncode == 0, f"child died with {r.returncode}: {r.stderr[-2000:]}"
    assert "REFUSED:" in r.stdout, r.stdout + r.stderr[-2000:]
    assert fragment in r.stdout, r.stdout


# ---------------------------------------------------------------- item 2: blur radius overflow

@pytest.mark.parametrize("sigma,truncate", [(1e9, 4.0), (4.0, 1e9), (1e300, 1e300), (65.0, 16.0)])
def test_anomaly_map_kernel_refuses_a_huge_blur_radius(sigma, truncate):
    # int(truncate * sigma + 0.5) overflowed: a segfault in gaussian_taps
    expect_child_error(f"""
        import numpy as np
        t = [np.ones((1, 4, 8, 8), np.float32)]
        s = [np.full((1, 4, 8, 8), 0.5, np.float32)]
        native.anomaly_map(t, s, (64, 64), sigma={sigma!r}, truncate={truncate!r})
    """, "ValueError", "MAX_BLUR_RADIUS")


def test_anomaly_map_kernel_refuses_huge_sizes_before_allocating():
    t = [np.ones((1, 4, 8, 8), np.float32)]
    with pytest.raises(ValueError, match="MAX_MAP_PIXELS"):
        native.anomaly_map(t, t, (1 << 20, 1 << 20))
    with pytest.raises(ValueError, match="MAX_MAP_PIXELS"):
        native.preprocess([np.zeros((8, 8, 3), np.uint8)], "RGB", (1 << 20, 1 << 20), (0, 0, 0), (1, 1, 1))
    # the largest radius the manifest allows still works
    maps, scores = native.anomaly_map(t, [np.full((1, 4, 8, 8), 0.5, np.float32)], (64, 64), sigma=64.0,
                                      truncate=16.0)
    assert maps.shape == (1, 64, 64) and np.isfinite(scores).all()


@pytest.mark.parametrize("key,value", [("truncate", 1e9), ("sigma", 1e6)])
def test_engine_json_huge_blur_is_refused_at_load(engine_dir, tmp_path, key, value):
    # truncate 1e9: a segfault while loading; sigma 1e6: an 83 s load
    d = variant(engine_dir, tmp_path / "e", lambda m: m["anomaly_map"].__setitem__(key, value))
    expect_child_error(f"native.Engine({d!r}, num_threads=1)", "ValueError", key, timeout=60)


# ---------------------------------------------------------------- issue 11 item 12 / issue 16 item 8

def _set(path, value):
    def edit(m):
        obj = m
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value
    return edit


def _feature_h(m):
    h = m["image_size"][0] + 1
    for f in m["features"]:
        if f["name"] in ("teacher_0", "student_0"):
            f["shape"][1] = h


REFUSED = {
    "sigma_0": (_set(("anomaly_map", "sigma"), 0), "sigma"),
    "truncate_0": (_set(("anomaly_map", "truncate"), 0), "truncate"),
    "eps_1e6": (_set(("anomaly_map", "eps"), 1e6), "eps"),
    "std_1e300": (lambda m: m["input"]["std"].__setitem__(0, 1e300), "input.std"),
    "std_1e-300": (lambda m: m["input"]["std"].__setitem__(0, 1e-300), "input.std"),
    "threshold_negative": (_set(("threshold", "value"), -1.0), "threshold"),
    "image_size_0": (_set(("image_size",), [0, 0]), "image_size"),
    "max_batch_0": (_set(("max_batch",), 0), "max_batch"),
    "format_version_true": (_set(("format_version",), True), "format_version"),
    "format_version_1.5": (_set(("format_version",), 1.5), "format_version"),
    "format_version_1.0": (_set(("format_version",), 1.0), "format_version"),
    "feature_h_above_H": (_feature_h, "teacher_0"),
    "precision_fp16_relabel": (_set(("precision",), "fp16"), "precision"),
    "precision_int8_relabel": (_set(("precision",), "int8"), "precision"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_engine_json_out_of_range_is_refused(engine_dir, tmp_path, case):
    edit, fragment = REFUSED[case]
    d = variant(engine_dir, tmp_path / "e", edit)
    with pytest.raises(ValueError, match=re.escape(fragment)):
        native.Engine(d, num_threads=1)


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_python_reader_refuses_the_same_manifests(engine_dir, tmp_path, case):
    from cdd_engine.engine_format import read_manifest
    from cdd_engine.errors import EngineFormatError
    d = variant(engine_dir, tmp_path / "e", REFUSED[case][0])
    with pytest.raises(EngineFormatError):
        read_manifest(d, verify_hashes=False)


def test_both_readers_accept_the_edges_of_the_ranges(engine_dir, tmp_path):
    from cdd_engine.engine_format import read_manifest

    def edges(m):
        m["anomaly_map"].update(eps=1e-3, sigma=64.0, truncate=16.0)  # radius 1024 = MAX_BLUR_RADIUS
        m["threshold"]["value"] = 0
        m["input"]["std"][2] = 1e-3
        m["input"]["mean"][2] = -1000
        m["max_batch"] = 4096
    d = variant(engine_dir, tmp_path / "edges", edges, text_edit=lambda t: "\ufeff" + t)
    assert read_manifest(d, verify_hashes=False)["max_batch"] == 4096
    e = native.Engine(d, num_threads=1, verify_hashes=False)
    assert e.threshold == 0.0 and e.max_batch == 4096


def test_engine_json_bom_accepted_and_deep_nesting_refused(engine_dir, tmp_path):
    d = variant(engine_dir, tmp_path / "bom", text_edit=lambda t: "\ufeff" + t)
    assert native.Engine(d, num_threads=1).image_size[0] > 0
    deep = Path(variant(engine_dir, tmp_path / "deep"))
    (deep / "engine.json").write_text("[" * 64 + "]" * 64)
    with pytest.raises(ValueError, match="top level must be an object"):
        native.Engine(str(deep), num_threads=1)
    (deep / "engine.json").write_text('{"a": ' * 65 + "1" + "}" * 65)
    with pytest.raises(ValueError, match="nesting deeper than 64"):
        native.Engine(str(deep), num_threads=1)


# ---------------------------------------------------------------- item 6: file types and sizes

def test_engine_json_fifo_and_device_are_refused_without_blocking(engine_dir, tmp_path):
    fifo = Path(variant(engine_dir, tmp_path / "fifo"))
    (fifo / "engine.json").unlink()
    os.mkfifo(fifo / "engine.json")
    expect_child_error(f"native.Engine({str(fifo)!r}, num_threads=1)", "ValueError", "regular file", timeout=60)
    zero = Path(variant(engine_dir, tmp_path / "zero"))
    (zero / "engine.json").unlink()
    (zero / "engine.json").symlink_to("/dev/zero")
    expect_child_error(f"native.Engine({str(zero)!r}, num_threads=1)", "ValueError", "regular file", timeout=60)


def test_oversized_engine_json_is_refused_before_reading(engine_dir, tmp_path):
    d = Path(variant(engine_dir, tmp_path / "big"))
    with open(d / "engine.json", "r+b") as f:
        f.truncate((16 << 20) + 1)  # sparse
    with pytest.raises(ValueError, match="16777216"):
        native.Engine(str(d), num_threads=1)


# ---------------------------------------------------------------- item 1: non-finite output

def test_diverged_model_raises_instead_of_a_normal_verdict(engine_dir, tmp_path):
    """First convolution's weights at 1e38 (as a diverged run leaves them): NaN maps, which the
    old engine scored -inf and called normal."""
    d = Path(variant(engine_dir, tmp_path / "nan", copy=("model.bin",)))
    xml = (d / "model.xml").read_text()
    m = re.search(r'<data element_type="f32" shape="[^"]*" offset="(\d+)" size="(\d+)"', xml)
    off, size = int(m[1]), int(m[2])
    with open(d / "model.bin", "r+b") as f:
        f.seek(off)
        f.write(np.full(size // 4, 1e38, np.float32).tobytes())
    from cdd_engine import errors
    want = getattr(errors, "NonFiniteOutputError", RuntimeError)
    img = (np.arange(40 * 30 * 3) * 7 % 256).astype(np.uint8).reshape(30, 40, 3)
    for din in (True, False):
        e = native.Engine(str(d), num_threads=1, verify_hashes=False, distances_in_network=din)
        for return_maps in (True, False):
            with pytest.raises(want, match="non-finite output") as info:
                e.score([img, img], return_maps=return_maps)
            assert not isinstance(info.value, ValueError)


# ---------------------------------------------------------------- item 8: huge resize windows

@pytest.mark.parametrize("shape,size", [((1, 1_000_000), (16, 64)), ((300_000, 3), (16, 5))])
def test_preprocess_of_huge_windows_matches_float64(shape, size):
    # float sums over ~10^5 taps drifted by 1.6e-4 relative (1e8 pixels: 3e-2)
    img = np.random.default_rng(7).integers(0, 256, size=shape, dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    got = native.preprocess([img], "MONO", size, mean, std, 2)[0]
    x = torch.from_numpy(img).double()[None, None]
    ref = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)[0, 0].numpy()
    for c in range(3):
        want = (ref / 255 - mean[c]) / std[c]
        err = np.abs(got[c] - want).max() / np.abs(want).max()
        assert err <= 1e-5, f"channel {c}: relative error {err:.2e}"


def test_tall_narrow_frame_needs_no_giant_buffer():
    # 16777216 x 1 -> 64 x 256: width first needed a 16 GB float buffer (MemoryError here, under a
    # 6 GB data limit); height first needs 64 x 1 floats
    expect_child_error("""
        import resource
        import numpy as np
        resource.setrlimit(resource.RLIMIT_DATA, (6 << 30, 6 << 30))
        img = np.random.default_rng(3).integers(0, 256, size=(1 << 24, 1), dtype=np.uint8)
        x = native.preprocess([img], "MONO", (64, 256), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 2)
        assert x.shape == (1, 3, 64, 256) and np.isfinite(x).all()
        raise ValueError("resized")
    """, "ValueError", "resized", timeout=120)
