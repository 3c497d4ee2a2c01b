"""``eval --engine``: a built engine evaluated on a labelled test set agrees with ``eval
--checkpoint`` on the run it was built from (same test set after the noise manifest, same
metrics within the fp32 engine's rounding), and bad engine directories, missing data and
contradictory options are one clear error with exit status 2."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import cdd_engine
from cdd_engine.cli import main
from cdd_engine.errors import EngineFormatError
from cdd_engine.evaluate import evaluate_engine, evaluate_run
from cdd_engine.models import build_rd_model
from rd_fixtures import one_torch_thread, write_tiny_mvtec  # noqa: F401 (autouse fixture)

pytest.importorskip("openvino")

TINY_ARGS = ["--teacher-weights", "random", "--image-size", "64", "--batch-size", "4", "--quiet"]
# fp32 OpenVINO against eager torch on this tiny model: scores agree to float32 rounding (measured
# <= 1.7e-7 relative; image/pixel AUROC, AUPRO and F1 identical); 1e-4 leaves room for other CPUs' kernels while still catching a wrong resize,
# normalisation or channel order (those move scores by >1e-2 relative).
SCORE_RTOL = 1e-4
# maps: per-pixel differences of the same rounding, relative to the largest map value
MAP_RTOL = 1e-4


@pytest.fixture(scope="module")
def run_and_engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalengine")
    data = write_tiny_mvtec(root / "data", n_train=9, n_good=3, n_bad=4, seed=5)
    # an odd-sized good test image: frames of different sizes in one engine call, resized by the engine
    rng = np.random.default_rng(11)
    Image.fromarray(rng.integers(30, 220, size=(37, 53, 3), dtype=np.uint8)).save(
        data / "widget" / "test" / "good" / "odd.png")
    run = root / "run"
    assert main(["train", "--data", str(data), "--category", "widget", "--epochs", "1", "--noise-ratio", "0.25",
                 "--seed", "2", "--out", str(run), *TINY_ARGS]) == 0
    engine = cdd_engine.build(run, backend="openvino", output_dir=root / "engine", max_batch=3)
    return data, run, engine.engine_dir


def test_engine_eval_agrees_with_checkpoint_eval(run_and_engine):
    data, run, engine_dir = run_and_engine
    ref = evaluate_run(run, data=data)
    # batch 5 over 6 test images: a full chunk and a remainder; the engine splits 5 into 3 + 2 itself
    got = evaluate_engine(engine_dir, batch_size=5)   # data, category, colour and manifest from the run
    assert got["data"] == ref["data"] and got["checkpoint"] == str(run.absolute())
    assert got["noise_manifest"] is not None
    assert (got["n_test"], got["n_test_good"], got["n_test_anomalous"], got["n_train"], got["n_injected"]) == \
        (ref["n_test"], ref["n_test_good"], ref["n_test_anomalous"], ref["n_train"], ref["n_injected"]) == \
        (6, 4, 2, 11, 2)
    assert [r["path"] for r in got["images"]] == [r["path"] for r in ref["images"]]
    s_ref = np.array([r["score"] for r in ref["images"]])
    s_got = np.array([r["score"] for r in got["images"]])
    assert np.all(s_ref > 0)
    np.testing.assert_allclose(s_got, s_ref, rtol=SCORE_RTOL)
    # the test scores differ by >= 4e-4 relative, far more than the rounding, so the rankings and AUROCs are identical
    assert abs(got["image_auroc"] - ref["image_auroc"]) <= 1e-6
    assert abs(got["f1_max"] - ref["f1_max"]) <= 1e-6
    # pixel metrics rank ~25k pixels: a few near-ties may swap under the rounding
    assert abs(got["pixel_auroc"] - ref["pixel_auroc"]) <= 1e-4
    assert abs(got["aupro"] - ref["aupro"]) <= 1e-3
    assert got["threshold"] == pytest.approx(ref["threshold"], rel=1e-6)
    assert [r["verdict"] for r in got["images"]] == [r["verdict"] for r in ref["images"]]
    assert (got["backend"], got["precision"]) == ("openvino", "fp32")


def test_engine_maps_are_the_eager_maps(run_and_engine):
    """score_engine_dataset's maps and masks line up with score_dataset's, image by image."""
    from cdd_engine.checkpoint import load_checkpoint
    from cdd_engine.data import ImageDataset, read_dataset
    from cdd_engine.evaluate import score_dataset, score_engine_dataset
    data, run, engine_dir = run_and_engine
    model = load_checkpoint(run)
    test = read_dataset(data, "mvtec", "widget").test
    ds = ImageDataset(test, model.image_size, *model.normalization, with_masks=True, cache=False)
    m_ref, s_ref, k_ref = score_dataset(model, ds, batch_size=4)
    m_got, s_got, k_got = score_engine_dataset(cdd_engine.load(engine_dir), ds, batch_size=4)
    assert m_got.shape == m_ref.shape == (len(test), 64, 64)
    np.testing.assert_array_equal(k_got, k_ref)
    assert k_ref.any()
    assert np.abs(m_got - m_ref).max() <= MAP_RTOL * np.abs(m_ref).max()
    np.testing.assert_allclose(s_got, s_ref, rtol=SCORE_RTOL)


def test_cli_eval_engine_json_matches_the_function(run_and_engine, tmp_path, capsys):
    data, run, engine_dir = run_and_engine
    out = tmp_path / "m.json"
    code = main(["eval", "--engine", str(engine_dir), "--data", str(data), "--category", "widget",
                 "--json", str(out), "--overlays", str(tmp_path / "ov"), "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert "openvino fp32 engine" in text and "image AUROC" in text
    m = json.loads(out.read_text())
    want = evaluate_engine(engine_dir, data=data, category="widget")
    for k in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "n_test", "threshold"):
        assert m[k] == pytest.approx(want[k], abs=1e-9), k
    assert len([p for p in (tmp_path / "ov").rglob("*.png") if p.name != "contact_sheet.png"]) == m["n_test"]


def test_engine_without_its_run_directory(run_and_engine, tmp_path):
    """Built from a model object (no run directory): --data is required, no manifest is applied."""
    data, _, _ = run_and_engine
    model = build_rd_model("efficientnet_lite0", pretrained=False, image_size=64, seed=1).eval()
    eng = cdd_engine.build(model, backend="openvino", threshold=0.5, output_dir=tmp_path / "e", verify=False)
    with pytest.raises(ValueError, match="pass --data"):
        evaluate_engine(eng.engine_dir)
    r = evaluate_engine(eng.engine_dir, data=data, category="widget")
    assert r["noise_manifest"] is None and r["checkpoint"] is None
    assert (r["n_test"], r["n_injected"]) == (8, 0)   # every test image: nothing says which were injected
    assert r["threshold"] == 0.5 and 0.0 <= r["image_auroc"] <= 1.0


def _one_line_error(capsys, code, *needles):
    out = capsys.readouterr()
    assert code == 2, out
    lines = [ln for ln in out.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "error:" in lines[0], out.err
    assert "Traceback" not in out.err
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_engine_dirs_are_a_clear_error(run_and_engine, tmp_path, capsys):
    data, run, engine_dir = run_and_engine
    code = main(["eval", "--engine", str(tmp_path / "absent"), "--data", str(data), "--quiet"])
    _one_line_error(capsys, code, "absent")
    code = main(["eval", "--engine", str(run), "--data", str(data), "--quiet"])   # a run directory, not an engine
    _one_line_error(capsys, code, "engine.json")
    broken = tmp_path / "broken"
    shutil.copytree(engine_dir, broken)
    (broken / "model.bin").write_bytes((broken / "model.bin").read_bytes()[:-64])   # truncated weights
    code = main(["eval", "--engine", str(broken), "--data", str(data), "--quiet"])
    _one_line_error(capsys, code, "model.bin")
    with pytest.raises(EngineFormatError):
        evaluate_engine(broken, data=data)


def test_checkpoint_and_engine_are_exclusive_and_one_is_required(run_and_engine, capsys):
    data, run, engine_dir = run_and_engine
    for argv in (["eval", "--data", str(data)],
                 ["eval", "--checkpoint", str(run), "--engine", str(engine_dir), "--data", str(data)]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "--checkpoint" in err and "--engine" in err
    code = main(["eval", "--engine", str(engine_dir), "--teacher-weights", "w.pth", "--quiet"])
    _one_line_error(capsys, code, "--teacher-weights is an option of --checkpoint")
    code = main(["eval", "--engine", str(engine_dir), "--batch-size", "0", "--quiet"])
    _one_line_error(capsys, code, "--batch-size must be >= 1")
