"""The cdd-engine command line: help, train -> eval round trip with the noise manifest
re-applied, JSON and overlay output, one-line errors with exit status 2, and the demo."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from cdd_engine.cli import COMMANDS, build_parser, main
from rd_fixtures import one_torch_thread, write_tiny_mvtec  # noqa: F401 (autouse fixture)

TINY_ARGS = ["--teacher-weights", "random", "--image-size", "64", "--batch-size", "4", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_mvtec(tmp_path_factory.mktemp("cli") / "data")


def _one_line_error(capsys, code, *needles):
    out = capsys.readouterr()
    assert code == 2
    lines = [ln for ln in out.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "error:" in lines[0], out.err
    assert "Traceback" not in out.err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_help_explains_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for word in ("demo", "train", "eval", "examples:"):
        assert word in text
    for cmd in ("demo", "train", "eval"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert "examples:" in text and "--debug" in text
    assert len(COMMANDS) == len(build_parser()._subparsers._group_actions[0].choices)


def test_help_shows_real_defaults_once(capsys):
    """Defaults that say something are shown; None, off flags and ones the help explains are not."""
    for cmd in build_parser()._subparsers._group_actions[0].choices:
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "(default: None)" not in text and "(default: False)" not in text, cmd
        assert "one per core) (default:" not in text, cmd   # --threads explains its own default
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "(default: 5)" in " ".join(capsys.readouterr().out.split())   # --rounds


def test_train_options_cover_the_issue():
    p = build_parser()
    sub = p._subparsers._group_actions[0].choices["train"]
    opts = {o for a in sub._actions for o in a.option_strings}
    assert {"--data", "--layout", "--category", "--method", "--backbone", "--teacher-weights", "--image-size",
            "--epochs", "--batch-size", "--noise-ratio", "--seed", "--out", "--resume", "--eval-every",
            "--overlap"} <= opts


def test_train_then_eval_leaves_injected_images_out(data, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--data", str(data), "--category", "widget", "--epochs", "1", "--noise-ratio", "0.25",
                 "--out", str(run), *TINY_ARGS])
    assert code == 0
    assert "checkpoint:" in capsys.readouterr().out
    out_json, overlays = tmp_path / "m.json", tmp_path / "overlays"
    code = main(["eval", "--checkpoint", str(run), "--data", str(data), "--json", str(out_json),
                 "--overlays", str(overlays), "--quiet"])
    assert code == 0
    m = json.loads(out_json.read_text())
    for k in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
        assert 0.0 <= m[k] <= 1.0
    # 7 test images, int(0.25 * 9) = 2 anomalies moved into training by the run's manifest
    assert (m["n_test"], m["n_test_good"], m["n_test_anomalous"], m["n_train"], m["n_injected"]) == (5, 3, 2, 11, 2)
    injected = json.loads((run / "noise_manifest.json").read_text())["injected"]
    pngs = sorted(p for p in overlays.rglob("*.png") if p.name != "contact_sheet.png")
    assert len(pngs) == 5 and (overlays / "contact_sheet.png").is_file()
    assert not {p.stem for p in (overlays / "spot").glob("*.png")} & {i.split("/")[-1][:-4] for i in injected}
    im = Image.open(pngs[0])
    assert im.width > 2 * 320 and im.mode == "RGB"   # labelled image | heat map, 64² enlarged to stay legible
    # the same metrics as the run's own final evaluation
    final = json.loads((run / "metrics.json").read_text())
    assert m["image_auroc"] == final["image_auroc"] and m["aupro"] == pytest.approx(final["aupro"])


def test_errors_are_one_line_with_exit_status_2(data, tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "r"), *TINY_ARGS])
    _one_line_error(capsys, code, "does not exist")
    code = main(["train", "--data", str(data), "--category", "widget", "--noise-ratio", "0.9",
                 "--out", str(tmp_path / "r"), *TINY_ARGS])
    _one_line_error(capsys, code, "largest possible ratio")      # needs 8 anomalies, the test set has 4
    code = main(["train", "--data", str(data), "--category", "nope", "--out", str(tmp_path / "r"), *TINY_ARGS])
    _one_line_error(capsys, code, "nope")
    code = main(["eval", "--checkpoint", str(tmp_path), "--data", str(data)])
    _one_line_error(capsys, code, "not a cdd-engine checkpoint")
    code = main(["train", "--data", str(data), "--category", "widget", "--epochs", "0",
                 "--out", str(tmp_path / "r"), *TINY_ARGS])
    _one_line_error(capsys, code, "epochs must be >= 1")


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="not a cdd-engine checkpoint"):
        main(["eval", "--checkpoint", str(tmp_path), "--data", str(tmp_path), "--debug"])


def test_corrupt_checkpoint_in_eval(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--category", "widget", "--epochs", "1", "--out", str(run),
                 *TINY_ARGS]) == 0
    p = run / "student.safetensors"
    p.write_bytes(p.read_bytes()[:-10])
    capsys.readouterr()
    code = main(["eval", "--checkpoint", str(run), "--data", str(data), "--quiet"])
    _one_line_error(capsys, code, "student.safetensors is corrupt")


@pytest.mark.slow
def test_demo_quick_runs_end_to_end(tmp_path, capsys):
    """The real demo path (packaged efficientnet_lite0 weights, generated textures), tiny."""
    report = tmp_path / "report.json"
    code = main(["demo", "--quick", "--out", str(tmp_path / "demo"), "--quiet", "--json", str(report)])
    assert code == 0
    out = capsys.readouterr().out
    assert "image AUROC" in out and "checkpoint:" in out
    r = json.loads(report.read_text())
    assert r["category"] == "brick" and r["settings"]["noise_ratio"] == 0.1
    assert r["metrics"]["n_injected"] == 1                   # int(0.1 * 12)
    assert (tmp_path / "demo/runs/brick_rd_seed0/student.safetensors").is_file()
    assert r["metrics"]["n_test"] == 6 + 6 - 1
    # [4/4] the engine built from the checkpoint scores the same test set as the eager evaluation
    e = r["engine"]
    assert "images/s" in out and "eager PyTorch" in out
    assert Path(e["engine_dir"], "engine.json").is_file()
    assert e["backend"] == "openvino"                       # auto on a machine without TensorRT
    assert e["backend_choice"].startswith("auto: ") and f"({e['backend_choice']};" in out   # the choice is shown
    assert e["max_abs_score_diff"] <= 1e-4 * max(1.0, abs(e["threshold"]))
    assert e["image_auroc"] == pytest.approx(r["metrics"]["image_auroc"], abs=1e-9)
    assert e["engine_images_per_s"] > 0 and e["eager_images_per_s"] > 0
