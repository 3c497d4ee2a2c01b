"""``cdd-engine build | score | bench`` (cdd_engine/cli_engine.py) on the tiny run directory.

The subcommands are exercised through a parser built the way ``cdd_engine.cli`` registers them
(and through ``cli.main`` once registered there).
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from cdd_engine import cli_engine

from engine_helpers import one_torch_thread  # noqa: F401 (autouse fixture)
from engine_helpers import THRESHOLD, engine_dir, frames, model_and_run_dir, reference, rel_err


def _main(argv):
    parser = argparse.ArgumentParser(prog="cdd-engine")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true")
    common.add_argument("--quiet", action="store_true")
    common.add_argument("--threads", type=int, default=None)
    sub = parser.add_subparsers(dest="command")
    real = sub.add_parser
    sub.add_parser = lambda name, **kw: real(name, parents=[common], **kw)  # as cli.build_parser does
    for add in (cli_engine.add_build_parser, cli_engine.add_score_parser, cli_engine.add_bench_parser):
        add(sub)
    args = parser.parse_args(argv)
    return args.handler(args)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    x = frames(3, 70, 90, seed=42)
    for i, f in enumerate(x):
        Image.fromarray(f).save(d / f"rgb_{i}.png")
    Image.fromarray(x[0][..., 1]).save(d / "gray.png")
    return d, x


def test_build_command(tmp_path, capsys):
    _, run = model_and_run_dir()
    assert _main(["build", "--checkpoint", str(run), "--backend", "torch", "--max-batch", "2",
                  "--out", str(tmp_path / "eng"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "backend torch (asked for)" in out and f"threshold {THRESHOLD:.6g}" in out
    assert "runtime here: python" in out  # a torch engine never runs on the native library
    m = json.loads((tmp_path / "eng" / "engine.json").read_text())
    assert m["max_batch"] == 2 and m["backend"] == "torch"


def test_build_command_records_no_winograd(tmp_path):
    _, run = model_and_run_dir()
    assert _main(["build", "--checkpoint", str(run), "--backend", "openvino", "--max-batch", "2", "--no-verify",
                  "--no-winograd", "--out", str(tmp_path / "eng"), "--quiet"]) == 0
    m = json.loads((tmp_path / "eng" / "engine.json").read_text())
    assert m["build"]["options"]["winograd"] is False and m["build"]["winograd_convolutions"] == 0


def test_score_command_json_and_overlays(images, tmp_path, capsys):
    folder, x = images
    model, _ = model_and_run_dir()
    assert _main(["score", "--engine", str(engine_dir("torch")), str(folder), "--json", str(tmp_path / "r.json"),
                  "--overlays", str(tmp_path / "ov")]) == 0
    printed = capsys.readouterr().out
    assert "of 4 anomalous" in printed and "with torch (python)" in printed
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["runtime"] == "python"
    by_name = {r["image"].split("/")[-1]: r for r in report["results"]}
    assert set(by_name) == {"gray.png", "rgb_0.png", "rgb_1.png", "rgb_2.png"}
    want = reference(model, list(x))[1]
    got = [by_name[f"rgb_{i}.png"]["score"] for i in range(3)]
    assert rel_err(got, want) <= 1e-5
    gray_want = reference(model, [x[0][..., 1]], "MONO")[1]
    assert rel_err([by_name["gray.png"]["score"]], gray_want) <= 1e-5
    assert all(r["is_anomalous"] == (r["score"] > THRESHOLD) for r in report["results"])
    ov = sorted(p.name for p in (tmp_path / "ov").glob("*_overlay.png"))
    assert ov == ["gray_overlay.png", "rgb_0_overlay.png", "rgb_1_overlay.png", "rgb_2_overlay.png"]


def test_score_command_json_to_stdout_and_threshold(images, capsys):
    folder, _ = images
    assert _main(["score", "--engine", str(engine_dir("torch")), str(folder / "rgb_1.png"), "--json", "-",
                  "--threshold", "-5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["threshold"] == -5.0 and report["results"][0]["is_anomalous"] is True


def test_score_command_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such image file or folder"):
        _main(["score", "--engine", str(engine_dir("torch")), str(tmp_path / "missing.png")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        _main(["score", "--engine", str(engine_dir("torch")), str(tmp_path / "empty")])
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        _main(["score", "--engine", str(engine_dir("torch")), str(tmp_path / "bad.png")])


def test_bench_command_small(tmp_path, capsys):
    assert _main(["bench", "--backbones", "resnet18", "--backends", "torch", "--batch-sizes", "1,2",
                  "--image-size", "64", "--rounds", "2", "--no-postprocess", "--engines-dir", str(tmp_path / "e"),
                  "--json", str(tmp_path / "b.json"), "--md", str(tmp_path / "b.md"), "--quiet"]) == 0
    res = json.loads((tmp_path / "b.json").read_text())
    assert [(r["backbone"], r["batch"]) for r in res["runs"]] == [("resnet18", 1), ("resnet18", 2)]
    for r in res["runs"]:
        assert set(r["results"]) == {"eager", "torch"}
        assert r["results"]["torch"]["images_per_s"] > 0 and r["results"]["torch"]["calls"] == 2
    md = (tmp_path / "b.md").read_text()
    assert "| resnet18 | 2 | torch |" in md and "cdd-engine bench --backbones resnet18" in md
    assert md in capsys.readouterr().out


def test_demo_engine_step(images, tmp_path):
    """The demo's engine step: build from the run, score the test images (files or arrays), time vs eager."""
    from cdd_engine.bench import demo_engine_step

    folder, x = images
    model, run = model_and_run_dir()
    files = sorted(str(p) for p in folder.glob("rgb_*.png"))
    out = demo_engine_step(run, files, tmp_path / "demo", backend="torch", batch=2, rounds=1)
    assert out["backend"] == "torch" and out["engine_dir"] == str(tmp_path / "demo" / "engine")
    assert out["backend_choice"] == "asked for"
    assert rel_err(out["scores"], reference(model, list(x))[1]) <= 1e-5
    assert out["max_abs_score_diff"] <= 1e-5 * max(out["scores"])
    assert out["is_anomalous"] == [s > THRESHOLD for s in out["scores"]]
    assert out["engine_images_per_s"] > 0 and out["eager_images_per_s"] > 0 and out["speedup"] > 0
    arrays = demo_engine_step(run, list(x[:1]), tmp_path / "demo2", backend="torch", batch=1, rounds=1)
    assert arrays["scores"] == pytest.approx(out["scores"][:1], rel=1e-6)
    with pytest.raises(ValueError, match="at least one test image"):
        demo_engine_step(run, [], tmp_path / "demo3", backend="torch")


def test_score_decodes_batch_by_batch_and_keeps_the_order(tmp_path):
    """Files are decoded one engine batch at a time; grey and colour files mixed across batch
    boundaries come back in the order given, each with its reference score."""
    from engine_helpers import MAX_BATCH

    model, _ = model_and_run_dir()
    x = frames(MAX_BATCH + 3, 64, 64, seed=9)
    names, want = [], []
    for i, f in enumerate(x):
        grey = i % 3 == 1
        Image.fromarray(f[..., 0] if grey else f).save(tmp_path / f"{i:02d}.png")
        names.append(f"{i:02d}.png")
        want.append(reference(model, [f[..., 0]] if grey else [f], "MONO" if grey else "RGB")[1][0])
    assert _main(["score", "--engine", str(engine_dir("torch")), str(tmp_path), "--json", str(tmp_path / "r.json"),
                  "--quiet"]) == 0
    got = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [r["image"].split("/")[-1] for r in got] == names
    assert rel_err([r["score"] for r in got], want) <= 1e-5


def test_build_command_passes_aoti_device_and_precision(tmp_path):
    # the flags reach build(): fp16 and a CUDA device are refused on this CPU before any compilation
    # (a full aoti build is exercised by tests/test_aoti.py; compiling one here would cost ~1 min of CI)
    _, run = model_and_run_dir()
    out = tmp_path / "eng"
    with pytest.raises(ValueError, match="fp16"):
        _main(["build", "--checkpoint", str(run), "--backend", "aoti", "--precision", "fp16", "--out", str(out),
               "--quiet"])
    with pytest.raises((ValueError, RuntimeError), match="(?i)cuda"):
        _main(["build", "--checkpoint", str(run), "--backend", "aoti", "--device", "cuda", "--out", str(out),
               "--quiet"])
    with pytest.raises(SystemExit):  # not a precision of any backend
        _main(["build", "--checkpoint", str(run), "--precision", "fp8", "--out", str(out), "--quiet"])
    assert not out.exists()


def test_bench_defaults_are_the_library_defaults():
    """`cdd-engine bench` with no --backends/--backbones times what throughput_benchmark() does by
    default: the fp32 and INT8 OpenVINO engines of both teachers (the CLI keeps literals so that
    parsing arguments does not import torch)."""
    from cdd_engine import bench
    parser = argparse.ArgumentParser(prog="cdd-engine")
    cli_engine.add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench"])
    assert tuple(args.backends.split(",")) == bench.DEFAULT_BACKENDS == ("openvino", "openvino-int8")
    assert tuple(args.backbones.split(",")) == bench.DEFAULT_BACKBONES
