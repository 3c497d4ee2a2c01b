"""Engine format version 1 directories still load (docs/engine_format.md, "Reading version 1").

A version-1 engine is made on the fly: a torch engine built now (format 2) whose engine.json is
rewritten as a version-1 build wrote it (format_version 1; version 1 had no other differences
for the backends it knew). It must load and score exactly as the version-2 directory, and a
version-1 manifest naming anything version 2 added (backend aoti, precision bf16/tf32) is refused.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import cdd_engine
from cdd_engine.engine_format import FORMAT_VERSION, READ_VERSIONS, read_manifest, validate_manifest
from cdd_engine.errors import EngineFormatError

from engine_helpers import copy_engine, engine_dir, frames, one_torch_thread  # noqa: F401 (autouse fixture)


def as_version_1(src: Path, dest: Path) -> Path:
    d = Path(shutil.copytree(src, dest))
    m = json.loads((d / "engine.json").read_text())
    assert m["format_version"] == FORMAT_VERSION == 2
    m["format_version"] = 1
    (d / "engine.json").write_text(json.dumps(m, indent=2) + "\n")
    return d


def test_reader_versions():
    assert READ_VERSIONS == (1, 2)


def test_version_1_engine_loads_and_scores_like_version_2(tmp_path):
    v2 = engine_dir("torch")
    v1 = as_version_1(v2, tmp_path / "v1")
    assert read_manifest(v1)["format_version"] == 1
    fr = frames(3, 50, 41, seed=int(np.random.SeedSequence().entropy % 2 ** 31))
    a = cdd_engine.load(v1).score(fr)
    b = cdd_engine.load(v2).score(fr)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.maps, b.maps)


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.update(backend="aoti"), r"backend must be one of \('openvino', 'tensorrt', 'torch'\) "
                                         r"\(format version 1\)"),
    (lambda m: m.update(precision="bf16"), r"precision must be one of \('fp32', 'fp16', 'int8'\) \(format version 1\)"),
    (lambda m: m.update(precision="tf32"), r"precision must be one of .* \(format version 1\)"),
    (lambda m: m.update(format_version=0), "format_version 0 is not supported"),
    (lambda m: m.update(format_version=3), "format_version 3 is not supported.*reads versions 1, 2.*rebuild"),
])
def test_version_1_refuses_what_version_2_added(tmp_path, edit, match):
    m = json.loads((engine_dir("torch") / "engine.json").read_text())
    m["format_version"] = 1
    validate_manifest(m)
    edit(m)
    with pytest.raises(EngineFormatError, match=match):
        validate_manifest(m)


def test_version_2_precision_per_backend(tmp_path):
    m = json.loads((engine_dir("torch") / "engine.json").read_text())
    m["precision"] = "bf16"  # bf16 is an aoti precision
    with pytest.raises(EngineFormatError, match=r"backend 'torch' takes precision \('fp32', 'fp16', 'tf32'\)"):
        validate_manifest(m)
    m["precision"] = "tf32"  # tf32 is a torch precision too (CUDA only: refused at load on the CPU)
    validate_manifest(m)
    d = copy_engine("torch", tmp_path / "t")
    (d / "engine.json").write_text(json.dumps(m))
    with pytest.raises(cdd_engine.errors.BackendUnavailable, match="tf32 torch engine runs on CUDA only"):
        cdd_engine.load(d, device="cpu")
