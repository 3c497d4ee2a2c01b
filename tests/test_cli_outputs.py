"""The command line as people type it (issue 11 items 1, 8 and 11): options take their values
explicitly (an input image is never swallowed or overwritten), existing files are overwritten
only with --force, global options go before or after the command, and help shows defaults."""
from __future__ import annotations

import argparse
import json
import logging

import pytest
from PIL import Image

from cdd_engine.cli import build_parser, main

from engine_helpers import one_torch_thread  # noqa: F401 (autouse fixture)
from engine_helpers import engine_dir, frames, model_and_run_dir


@pytest.fixture()
def two_images(tmp_path):
    x = frames(2, 64, 64, seed=3)
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for p, f in zip(paths, x):
        Image.fromarray(f).save(p)
    return paths


def _subparsers():
    return build_parser()._subparsers._group_actions[0].choices


def test_no_option_takes_an_optional_value():
    """nargs='?' (or '*') on an option lets it swallow the next word: `--json a.png b.png`."""
    for name, sub in _subparsers().items():
        for a in sub._actions:
            if a.option_strings:
                assert a.nargs not in ("?", "*"), f"{name} {a.option_strings} takes an optional value"


def test_json_never_swallows_or_overwrites_an_input_image(two_images, capsys):
    a, b = two_images
    before = a.read_bytes()
    code = main(["score", "--engine", str(engine_dir("torch")), "--json", str(a), str(b)])
    err = capsys.readouterr().err
    assert code == 2 and "--json" in err and "image file name" in err
    assert a.read_bytes() == before                                  # the input is untouched
    # also with --force, and also when the input does not look like an image by name
    c = a.with_name("c.data")
    c.write_bytes(before)
    code = main(["score", "--engine", str(engine_dir("torch")), "--json", str(c), "--force", str(c), str(b)])
    assert code == 2 and "one of this command's inputs" in capsys.readouterr().err
    assert c.read_bytes() == before


def test_json_file_is_overwritten_only_with_force(two_images, tmp_path, capsys):
    report = tmp_path / "r.json"
    args = ["score", "--engine", str(engine_dir("torch")), *map(str, two_images), "--json", str(report)]
    assert main(args + ["--quiet"]) == 0
    first = json.loads(report.read_text())
    assert first["n_images"] == 2
    report.write_text("mine")
    capsys.readouterr()
    assert main(args) == 2                                             # a report written before is a file too
    assert "already exists; pass --force" in capsys.readouterr().err and report.read_text() == "mine"
    assert main(args + ["--force"]) == 0
    assert json.loads(report.read_text())["results"] == first["results"]


def test_json_dash_is_stdout_and_nothing_else(two_images, capsys):
    code = main(["score", "--engine", str(engine_dir("torch")), *map(str, two_images), "--json", "-"])
    out = capsys.readouterr().out
    assert code == 0 and json.loads(out)["n_images"] == 2


def test_global_options_before_and_after_the_command(two_images, capsys):
    import torch
    threads = torch.get_num_threads()
    try:
        for argv in (["--threads", "1", "--quiet", "score"], ["score", "--threads", "1", "--quiet"]):
            ns = build_parser().parse_args(argv + ["--engine", "E", "x.png"])
            assert (ns.threads, ns.quiet, ns.debug) == (1, True, False), argv
        ns = build_parser().parse_args(["--threads", "2", "eval", "--checkpoint", "R"])
        assert ns.threads == 2 and ns.quiet is False           # not reset by the subcommand's defaults
        assert main(["--threads", "1", "score", "--engine", str(engine_dir("torch")), str(two_images[0])]) == 0
        assert "of 1 anomalous" in capsys.readouterr().out
        with pytest.raises(Exception, match="not a cdd-engine checkpoint|does not exist"):
            main(["--debug", "eval", "--checkpoint", str(two_images[0].parent)])
    finally:
        torch.set_num_threads(threads)


def test_score_accepts_overlays_and_the_old_overlay_spelling(two_images, tmp_path, capsys):
    for flag in ("--overlays", "--overlay"):
        out = tmp_path / flag.strip("-")
        assert main(["score", "--engine", str(engine_dir("torch")), *map(str, two_images), flag, str(out),
                     "--quiet"]) == 0
        assert sorted(p.name for p in out.glob("*_overlay.png")) == ["a_overlay.png", "b_overlay.png"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    text = capsys.readouterr().out
    assert "--overlays DIR" in text and "--overlay DIR" not in text     # the old spelling is a hidden alias
    ns = build_parser().parse_args(["eval", "--checkpoint", "R", "--overlay", "D"])
    assert ns.overlays == "D"                                           # eval takes both spellings too


def test_help_shows_every_default(capsys):
    """Every option with a default that says something shows it (in the help text or appended)."""
    for name, sub in _subparsers().items():
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for a in sub._actions:
            if (not a.option_strings or a.help == argparse.SUPPRESS or a.default in (None, False, [], "==SUPPRESS==")
                    or isinstance(a, argparse._HelpAction)):
                continue
            shown = str(a.default) if not isinstance(a.default, list) else None
            assert a.help and ("default" in a.help.lower() or f"(default: {shown}" in text
                               or f"(default: {a.default}" in text), (name, a.option_strings)


def test_build_prints_backend_and_time_once(tmp_path, capsys, caplog):
    _, run = model_and_run_dir()
    with caplog.at_level(logging.INFO, logger="cdd_engine"):
        assert main(["build", "--checkpoint", str(run), "--backend", "torch", "--out", str(tmp_path / "e")]) == 0
        assert logging.getLogger("cdd_engine").level == logging.INFO              # restored after the build
    out = capsys.readouterr()
    text = out.out + out.err + caplog.text
    assert text.count("backend torch (") == 1, text
    assert text.count(" s; score with") == 1 and "engine written to" not in text, text
    assert text.count("runtime") == 1, text


def test_demo_refuses_a_bad_size_and_an_existing_json_before_any_work(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--image-size", "50", "--out", str(out)]) == 2
    assert "multiple of 32" in capsys.readouterr().err and not out.exists()
    report = tmp_path / "r.json"
    report.write_text("{}")
    assert main(["demo", "--quick", "--out", str(out), "--json", str(report)]) == 2
    assert "--force" in capsys.readouterr().err and not out.exists() and report.read_text() == "{}"
