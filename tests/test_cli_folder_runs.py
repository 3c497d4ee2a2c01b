"""Folder runs (issue 11 items 6 and 10): one unreadable file stops train/eval/score with an error
that names the file and --skip-bad-images; with the flag it is listed (output and JSON) and the
run goes on. ``eval --json`` holds every test image's score, threshold, verdict and label."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from cdd_engine.cli import main
from cdd_engine.metrics import image_auroc

from engine_helpers import engine_dir, frames
from rd_fixtures import one_torch_thread, write_tiny_mvtec  # noqa: F401 (autouse fixture)

TINY = ["--teacher-weights", "random", "--image-size", "64", "--batch-size", "4", "--epochs", "1", "--quiet"]


def _one_line_error(capsys, code, *needles) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny data set with one corrupt training image and a run trained with --skip-bad-images."""
    root = tmp_path_factory.mktemp("folder_runs")
    data = write_tiny_mvtec(root / "data")
    bad = data / "widget/train/good/004.png"
    bad.write_bytes(bad.read_bytes()[:60])                    # truncated: the header survives
    run = root / "run"
    assert main(["train", "--data", str(data), "--category", "widget", "--out", str(run), "--skip-bad-images",
                 *TINY]) == 0
    return data, run, bad


def test_train_stops_at_a_bad_file_by_default(trained, tmp_path, capsys):
    data, _, bad = trained
    code = main(["train", "--data", str(data), "--category", "widget", "--out", str(tmp_path / "r"), *TINY])
    _one_line_error(capsys, code, str(bad), "--skip-bad-images")


def test_train_skips_lists_and_goes_on(trained, capsys):
    _, run, bad = trained
    skipped = json.loads((run / "skipped_images.json").read_text())["skipped"]
    assert [e["path"] for e in skipped] == [str(bad)] and "cannot read image" in skipped[0]["error"]
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["n_train"] == 8                    # 9 written, 1 unreadable
    assert str(bad) not in {e["path"] for e in json.loads((run / "train_scores.json").read_text())["scores"]}


def test_eval_json_has_every_image_and_skips_on_request(trained, tmp_path, capsys):
    data, run, _ = trained
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    report = tmp_path / "m.json"
    assert main(["eval", "--checkpoint", str(run), "--data", str(copy), "--json", str(report), "--quiet"]) == 0
    m = json.loads(report.read_text())
    images = m["images"]
    assert len(images) == m["n_test"] == 7
    for e in images:
        assert set(e) >= {"path", "score", "threshold", "verdict", "label"}
        assert e["threshold"] == m["threshold"]
        assert e["verdict"] == ("anomalous" if e["score"] > m["threshold"] else "ok")
        assert e["label"] == ("good" if "/test/good/" in e["path"] else "anomalous")
    assert image_auroc([e["label"] == "anomalous" for e in images], [e["score"] for e in images]) \
        == pytest.approx(m["image_auroc"])

    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--data", str(copy), "--json", "-", "--quiet"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["images"] == images and "image AUROC" in out.err   # stdout: the JSON alone

    broken = copy / "widget/test/good/001.png"
    broken.write_bytes(b"\x89PNG not really")
    capsys.readouterr()
    code = main(["eval", "--checkpoint", str(run), "--data", str(copy), "--quiet"])
    _one_line_error(capsys, code, str(broken), "--skip-bad-images")
    report2 = tmp_path / "m2.json"
    assert main(["eval", "--checkpoint", str(run), "--data", str(copy), "--json", str(report2),
                 "--skip-bad-images"]) == 0
    assert str(broken) in capsys.readouterr().out
    m2 = json.loads(report2.read_text())
    assert [e["path"] for e in m2["skipped_images"]] == [str(broken)]
    assert m2["n_test"] == 6 and str(broken) not in {e["path"] for e in m2["images"]}


def test_score_skips_lists_and_goes_on(tmp_path, capsys):
    folder = tmp_path / "line"
    (folder / "sub").mkdir(parents=True)
    for i, f in enumerate(frames(2, 64, 64, seed=5)):
        Image.fromarray(f).save(folder / f"{i}.png")
    bad = folder / "sub" / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    eng = str(engine_dir("torch"))
    code = main(["score", "--engine", eng, str(folder)])
    _one_line_error(capsys, code, str(bad), "--skip-bad-images")
    report = tmp_path / "r.json"
    assert main(["score", "--engine", eng, str(folder), "--skip-bad-images", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 unreadable image(s)" in out and str(bad) in out
    r = json.loads(report.read_text())
    assert r["n_images"] == 2 and [e["path"] for e in r["skipped_images"]] == [str(bad)]
    assert np.isfinite([e["score"] for e in r["results"]]).all()
