"""Builds fail closed (issue 16 items 1-3): NaN weights or a non-finite probe batch refuse the
build on every backend (``verify=False`` too); options outside the shared limits are refused
before any work; a failed, interrupted or killed rebuild leaves the previous engine loadable
and scoring exactly as before, and a rebuild never leaves a mix of two builds."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import cdd_engine
from cdd_engine.checkpoint import CONFIG_FILE, CheckpointError
from cdd_engine.runtime import atomic_dir
from cdd_engine.errors import EngineError, NonFiniteOutputError
from engine_helpers import frames, tiny_model, write_run_dir

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return write_run_dir(tmp_path_factory.mktemp("run") / "run", tiny_model(seed=3))


@pytest.fixture(scope="module")
def probe_frames():
    return frames(3, 64, 64, seed=7)


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _siblings(d: Path) -> list[str]:
    return sorted(p.name for p in d.parent.iterdir() if p.name.startswith(f".{d.name}."))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ----------------------------------------------------------------------------- non-finite models
@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_nan_weight_is_refused_naming_the_tensor(tmp_path, backend):
    model = tiny_model(seed=4)
    with torch.no_grad():
        model.student.decoder.stages[0][0].conv1.weight[0, 0, 0, 0] = float("nan")
    out = tmp_path / "e"
    with pytest.raises(NonFiniteOutputError, match=r"student\.decoder\.stages\.0\.0\.conv1\.weight.*1 non-finite"):
        cdd_engine.build(model, backend=backend, threshold=1.0, output_dir=out, verify=False)
    assert not out.exists() and _siblings(out) == []
    assert issubclass(NonFiniteOutputError, EngineError)


@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_finite_weights_with_non_finite_output_are_refused_without_verify(tmp_path, backend):
    # every weight finite, yet the teacher's features overflow to inf (a BatchNorm scale of 3e38)
    model = tiny_model(seed=4)
    bn = [m for m in model.teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]
    with torch.no_grad():
        bn.weight[0] = 3e38
    out = tmp_path / "e"
    with pytest.raises(NonFiniteOutputError, match="non-finite|NaN/inf"):
        cdd_engine.build(model, backend=backend, threshold=1.0, output_dir=out, verify=False)
    assert not out.exists() and _siblings(out) == []


@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_invalid_batchnorm_statistics_are_refused_without_verify(tmp_path, backend):
    # a negative variance: torch computes NaN (the probe sees it); the exporter folds it into NaN
    # convolution weights that OpenVINO's ReLU turns into zeros (only the graph check sees it)
    model = tiny_model(seed=4)
    bn = next(m for m in model.teacher.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_var[0] = -4.0
    out = tmp_path / "e"
    with pytest.raises(NonFiniteOutputError, match="non-finite|NaN/inf"):
        cdd_engine.build(model, backend=backend, threshold=1.0, output_dir=out, verify=False)
    assert not out.exists() and _siblings(out) == []


# ----------------------------------------------------------------------------- limits before work
@pytest.mark.parametrize("options, rule", [
    ({"sigma": 1e9}, r"sigma must be a finite number in \(0, 64\]"),
    ({"sigma": 0.0}, r"sigma must be a finite number in \(0, 64\]"),
    ({"sigma": 0.1}, r"blur radius .* = 0 must be in \[1, 1024\]"),
    ({"sigma": float("nan")}, "sigma must be a finite number"),
    ({"threshold": -1.0}, "threshold must be a finite number >= 0"),
    ({"max_batch": 5000}, "max_batch must be a positive integer, at most 4096"),
])
def test_build_options_outside_the_limits_are_refused_before_any_work(run, tmp_path, monkeypatch, options, rule):
    build_mod = sys.modules["cdd_engine.runtime.build"]  # the package attribute is the function
    monkeypatch.setattr(build_mod, "_load_source", lambda *a, **k: pytest.fail("loaded before checking"))
    out = tmp_path / "e"
    with pytest.raises(ValueError, match=rule):
        cdd_engine.build(run, backend="torch", output_dir=out, **options)
    assert not out.exists()


def _edit_config(run: Path, dst: Path, fn) -> Path:
    import shutil
    shutil.copytree(run, dst)
    cfg = json.loads((dst / CONFIG_FILE).read_text())
    fn(cfg["model"])
    (dst / CONFIG_FILE).write_text(json.dumps(cfg))
    return dst


def test_checkpoint_sigma_outside_the_limits_is_refused(run, tmp_path):
    huge = _edit_config(run, tmp_path / "huge", lambda m: m["anomaly_map"].update(sigma=1e9))
    with pytest.raises(CheckpointError, match=r"sigma .*MAX_BLUR_RADIUS.*1000000000"):
        cdd_engine.build(huge, backend="torch", output_dir=tmp_path / "e1")
    # within the checkpoint's own limit (radius <= 1024) but above an engine's sigma <= 64
    wide = _edit_config(run, tmp_path / "wide", lambda m: m["anomaly_map"].update(sigma=100.0))
    with pytest.raises(ValueError, match=r"sigma must be a finite number in \(0, 64\], got 100.0"):
        cdd_engine.build(wide, backend="torch", output_dir=tmp_path / "e2")
    # an explicit valid sigma overrides a checkpoint's unusable one
    eng = cdd_engine.build(wide, backend="torch", output_dir=tmp_path / "e3", sigma=4.0)
    assert eng.manifest["anomaly_map"]["sigma"] == 4.0
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e2").exists()


# ----------------------------------------------------------------------------- transactional output
def test_failed_rebuild_leaves_the_old_engine_untouched(run, tmp_path, monkeypatch, probe_frames):
    out = tmp_path / "e"
    old = cdd_engine.build(run, backend="torch", max_batch=2, output_dir=out)
    want, before = old.score(probe_frames).scores, _snapshot(out)
    from cdd_engine.runtime.backends import torch_backend
    real = torch_backend.save_model

    def half_then_fail(model, d):
        real(model, d)
        raise OSError("disk full")

    monkeypatch.setattr(torch_backend, "save_model", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        cdd_engine.build(run, backend="torch", max_batch=2, output_dir=out, threshold=0.9)
    assert _snapshot(out) == before and _siblings(out) == []
    np.testing.assert_array_equal(cdd_engine.load(out).score(probe_frames).scores, want)


def test_rebuild_with_another_backend_replaces_the_whole_directory(run, tmp_path):
    out = tmp_path / "e"
    cdd_engine.build(run, backend="openvino", max_batch=2, output_dir=out, verify=False)
    (out / "engine.json").chmod(0o640)  # the new directory takes the old one's permissions
    os.chmod(out, 0o750)
    eng = cdd_engine.build(run, backend="torch", max_batch=2, output_dir=out)
    assert sorted(p.name for p in out.iterdir()) == ["engine.json", "model.safetensors"]
    assert eng.backend_name == "torch" and _siblings(out) == []
    assert out.stat().st_mode & 0o777 == 0o750


def test_non_empty_folder_that_is_not_an_engine_is_refused_unless_overwrite(run, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "model.onnx").write_text("my own file")
    (out / "engine.json").write_text("{\"not\": \"an engine\"}")
    with pytest.raises(FileExistsError, match=r"not a cdd-engine engine .*engine.json, model.onnx.*--force"):
        cdd_engine.build(run, backend="torch", output_dir=out)
    assert (out / "model.onnx").read_text() == "my own file"
    cdd_engine.build(run, backend="torch", output_dir=out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["engine.json", "model.safetensors"]
    # an engine holding a file its engine.json does not list is not replaced silently either
    (out / "notes.txt").write_text("line 3 settings")
    with pytest.raises(FileExistsError, match=r"does not list \(notes.txt\)"):
        cdd_engine.build(run, backend="torch", output_dir=out)
    assert (out / "notes.txt").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        cdd_engine.build(run, backend="torch", output_dir=tmp_path / "file", overwrite=True)


def test_output_that_is_or_contains_the_checkpoint_is_refused_even_with_overwrite(run):
    for out in (run, run.parent):
        with pytest.raises(ValueError, match="is or contains the checkpoint"):
            cdd_engine.build(run, backend="torch", output_dir=out, overwrite=True)
    assert (run / CONFIG_FILE).is_file()


def test_cli_build_force(run, tmp_path):
    from cdd_engine.cli import main
    out = tmp_path / "mine"
    out.mkdir()
    (out / "readme.txt").write_text("x")
    args = ["build", "--checkpoint", str(run), "--backend", "torch", "--out", str(out), "--no-verify"]
    assert main(args) != 0 and (out / "readme.txt").exists()
    assert main(args + ["--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["engine.json", "model.safetensors"]


def test_leftovers_of_a_killed_build_are_recovered_or_cleaned(run, tmp_path, probe_frames):
    out = tmp_path / "e"
    want = cdd_engine.build(run, backend="torch", max_batch=2, output_dir=out).score(probe_frames).scores
    pid = _dead_pid()
    # killed between the fallback's two renames: the old engine is aside, the new one complete
    aside = out.with_name(f".e.{atomic_dir.ASIDE_TAG}-{pid}-{'a' * 12}")
    os.rename(out, aside)
    stale = out.with_name(f".e.{atomic_dir.TEMP_TAG}-{pid}-{'b' * 12}")
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    live = out.with_name(f".e.{atomic_dir.TEMP_TAG}-{os.getpid()}-{'c' * 12}")  # a running build's: kept
    live.mkdir()
    unrelated = tmp_path / ".e.cdd-build-notapid"
    unrelated.mkdir()
    atomic_dir.recover(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, live.name, unrelated.name])
    np.testing.assert_array_equal(cdd_engine.load(out).score(probe_frames).scores, want)


_BUILD = ("import cdd_engine, sys; cdd_engine.build(sys.argv[1], backend='torch', max_batch=2, "
          "output_dir=sys.argv[2], threshold=0.5)")


def _start_build(run: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(TESTS.parent),
                                                                             os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-c", _BUILD, str(run), str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_killing_a_rebuild_at_any_moment_leaves_a_working_engine(run, tmp_path, probe_frames):
    """SIGKILL and SIGINT at spread-out moments of a rebuild (same weights, another threshold):
    the directory is always either the old engine, byte for byte, or the new one, complete;
    it scores exactly as before; the next build cleans whatever the killed one left."""
    out = tmp_path / "e"
    old = cdd_engine.build(run, backend="torch", max_batch=2, output_dir=out, threshold=0.25)
    want = old.score(probe_frames).scores
    t0 = time.monotonic()
    p = _start_build(run, out)
    assert p.wait(timeout=600) == 0, p.stderr.read().decode()
    full = time.monotonic() - t0
    new = _snapshot(out)
    assert json.loads(new["engine.json"])["threshold"]["value"] == 0.5
    outcomes = []
    for sig, fracs in ((signal.SIGKILL, (0.4, 0.75, 0.92)), (signal.SIGINT, (0.5, 0.9))):
        for frac in fracs:
            if json.loads((out / "engine.json").read_text())["threshold"]["value"] != 0.25:
                cdd_engine.build(run, backend="torch", max_batch=2, output_dir=out, threshold=0.25)  # old again
            before = _snapshot(out)
            p = _start_build(run, out)
            time.sleep(frac * full)
            p.send_signal(sig)
            rc = p.wait(timeout=600)
            got = _snapshot(out)
            assert got == before or got.keys() == new.keys(), (sig, frac, sorted(got))
            if got != before:
                assert json.loads(got["engine.json"])["threshold"]["value"] == 0.5
            np.testing.assert_array_equal(cdd_engine.load(out).score(probe_frames).scores, want)
            if sig == signal.SIGINT and rc != 0:
                assert _siblings(out) == [], (frac, _siblings(out))  # Ctrl-C cleans up at once
            outcomes.append((sig, frac, rc, got == before))
    cdd_engine.build(run, backend="torch", max_batch=2, output_dir=out)
    assert _siblings(out) == []
    # at least one kill interrupted the build with the old engine still in place, or this proves nothing
    assert any(rc != 0 and same for _, _, rc, same in outcomes), outcomes


def test_swap_without_atomic_exchange_falls_back_to_two_renames(tmp_path, monkeypatch):
    """Where renameat2 is missing: rename aside, rename in, delete aside; a failure of the second
    rename puts the old directory back."""
    monkeypatch.setattr(atomic_dir, "_exchange", lambda a, b: False)
    out = tmp_path / "e"
    out.mkdir()
    (out / "old.txt").write_text("old")
    new = atomic_dir.new_temp_dir(out)
    (new / "new.txt").write_text("new")
    atomic_dir.swap_into_place(new, out)
    assert [p.name for p in tmp_path.iterdir()] == ["e"] and [p.name for p in out.iterdir()] == ["new.txt"]

    newer = atomic_dir.new_temp_dir(out)
    real_rename = os.rename

    def second_rename_fails(a, b):
        if Path(a) == newer:
            raise KeyboardInterrupt
        real_rename(a, b)
    monkeypatch.setattr(os, "rename", second_rename_fails)
    with pytest.raises(KeyboardInterrupt):
        atomic_dir.swap_into_place(newer, out)
    monkeypatch.setattr(os, "rename", real_rename)
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["e", newer.name])  # the caller discards it
