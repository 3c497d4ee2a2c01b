"""Overlays an operator reads without help (issue 11 items 2, 10, 11): labelled pictures, the
contact sheet, output names that never collide, the no-overwrite rule and bounded memory."""
from __future__ import annotations

import argparse
import json
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from cdd_engine import cli_engine
from cdd_engine import visualize as viz

from engine_helpers import one_torch_thread  # noqa: F401 (autouse fixture)
from engine_helpers import THRESHOLD, engine_dir, frames


def _frame(h, w, seed=0):
    return np.random.default_rng(seed).integers(30, 220, size=(h, w, 3), dtype=np.uint8)


def _blob(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * r * r)).astype(np.float32)


def _count(pic: Image.Image, rgb) -> int:
    return int(np.all(np.asarray(pic) == np.array(rgb, np.uint8), axis=-1).sum())


# ----------------------------------------------------------------------------- names and the no-overwrite rule
def test_mirrored_names_never_collide(tmp_path):
    paths = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", tmp_path / "a" / "sub" / "x.png",
             tmp_path / "a" / "x.jpg", tmp_path / "b" / "y.bmp"]
    names = viz.mirrored_names(paths, "_overlay.png")
    assert names == ["a/x_png_overlay.png", "b/x_overlay.png", "a/sub/x_overlay.png", "a/x_jpg_overlay.png",
                     "b/y_overlay.png"]
    assert len(set(names)) == len(paths)
    # one folder: plain names, as before; the same file twice: one name
    assert viz.mirrored_names([tmp_path / "a" / "x.png", tmp_path / "a" / "y.png"], ".png") == ["x.png", "y.png"]
    assert viz.mirrored_names([tmp_path / "a/x.png", tmp_path / "a/./x.png"], ".png") == ["x.png", "x.png"]
    assert viz.relative_inputs(paths[:2]) == ["a/x.png", "b/x.png"]


def test_claim_outputs_refuses_files_it_did_not_write(tmp_path):
    out = tmp_path / "ov"
    viz.claim_outputs(out, ["a.png"])                     # a new folder
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    viz.claim_outputs(out, ["a.png"])                     # other files are left alone, not refused
    (out / "a.png").write_bytes(b"user's picture")
    with pytest.raises(FileExistsError, match=r"did not write.*a\.png.*--force"):
        viz.claim_outputs(out, ["a.png", "b.png"])
    viz.claim_outputs(out, ["a.png"], force=True)
    viz.record_outputs(out, ["a.png"])                    # from now on a.png is ours: a rerun may replace it
    viz.claim_outputs(out, ["a.png", "b.png"])
    (out / viz.MARKER).write_text("{}")                   # a marker this tool did not write is not trusted
    with pytest.raises(FileExistsError):
        viz.claim_outputs(out, ["a.png"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        viz.claim_outputs(tmp_path / "file", ["a.png"])
    assert (out / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- the pictures
def test_overlay_shows_verdict_scale_and_ground_truth():
    img, amap = _frame(64, 80), 0.2 + _blob(64, 80, 20, 50, 6)
    mask = _blob(64, 80, 20, 50, 6) > 0.5
    common = dict(vmin=0.0, vmax=1.5, scale_note="Colour scale 0 to 1.5, shared by all 9 images.", name="x/y.png")
    bad = viz.render_overlay(img, amap, score=1.2, threshold=0.8, mask=mask, truth="defect (spot)", **common)
    good = viz.render_overlay(img, amap, score=0.5, threshold=0.8, **common)
    assert bad.mode == "RGB" and bad.width == good.width
    # the panels are enlarged to MIN_SIDE so the labels stay legible next to them
    assert bad.width > 2 * viz.MIN_SIDE and bad.height > viz.MIN_SIDE * 64 / 80
    assert _count(bad, viz.DEFECT_RGB) > 200 and _count(bad, viz.OK_RGB) == 0        # red DEFECT badge
    assert _count(good, viz.OK_RGB) > 200 and _count(good, viz.DEFECT_RGB) == 0      # green OK badge
    assert _count(bad, viz.CONTOUR_RGB) > 50 and _count(good, viz.CONTOUR_RGB) == 0  # ground-truth outline
    # the colour bar: every colour of the ramp's ends is on the picture
    for end in (viz._LUT[0], viz._LUT[-1]):
        assert _count(good, end) >= viz.MIN_SIDE // 32  # at least one row of the bar
    assert viz.verdict(0.8, 0.8) == "OK" and viz.verdict(0.81, 0.8) == "DEFECT" and viz.verdict(1.0, None) is None
    with pytest.raises(ValueError, match="vmin < vmax"):
        viz.render_overlay(img, amap, vmin=1.0, vmax=1.0, scale_note="")


def test_overlay_of_a_large_frame_is_bounded_in_size_and_memory():
    """Issue 11: a 100 MP frame peaked at 10 GB because the blend was done in float64 at full size.
    On a 20 MP frame (and a full-size map) the drawing allocates a few display-size arrays only:
    one full-size float RGB array alone would be 229 MiB (float32), a copy of the map 76 MiB."""
    h, w = 4000, 5000
    img = np.empty((h, w, 3), np.uint8)
    img[...] = (np.arange(w, dtype=np.uint16) % 251).astype(np.uint8)[None, :, None]
    amap = np.empty((h, w), np.float32)
    amap[...] = np.linspace(0, 1, w, dtype=np.float32)[None]
    tracemalloc.start()
    try:
        pic = viz.render_overlay(img, amap, vmin=0.0, vmax=1.0, scale_note="own scale", name="big.png",
                                 score=1.0, threshold=0.5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # two panels of at most MAX_SIDE, plus labels and the colour bar
    assert pic.width < 2 * viz.MAX_SIDE + 800 and pic.height < viz.MAX_SIDE + 600
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert viz.display_size(h, w) == (1638, 2048) and viz.display_size(10_000, 10_000) == (2048, 2048)


def test_contact_sheet_orders_and_labels_the_worst():
    assert viz.worst([0.1, 0.9, 0.5, 0.9], 3) == [1, 3, 2]
    tiles = [{"image": Image.new("RGB", (64, 48), (50, 50, 50)), "name": f"n{i}", "score": s}
             for i, s in enumerate([0.9, 0.7, 0.2])]
    sheet = viz.contact_sheet(tiles, title="worst 3", scale_note="shared", vmin=0.0, vmax=1.0, threshold=0.5, cols=2)
    assert sheet.width == 10 + 2 * (viz.TILE + 8 + 10)
    # two DEFECT tiles framed red, one OK tile framed green
    assert _count(sheet, viz.DEFECT_RGB) > 2 * 4 * viz.TILE and _count(sheet, viz.OK_RGB) > 4 * viz.TILE
    with pytest.raises(ValueError):
        viz.contact_sheet([], title="", scale_note="", vmin=0.0, vmax=1.0)


# ----------------------------------------------------------------------------- score --overlay (CLI)
def _main(argv):
    parser = argparse.ArgumentParser(prog="cdd-engine")
    common = argparse.ArgumentParser(add_help=False)
    for flag in ("--debug", "--quiet"):
        common.add_argument(flag, action="store_true")
    common.add_argument("--threads", type=int, default=None)
    sub = parser.add_subparsers(dest="command")
    real = sub.add_parser
    sub.add_parser = lambda name, **kw: real(name, parents=[common], **kw)  # as cli.build_parser does
    cli_engine.add_score_parser(sub)
    args = parser.parse_args(argv)
    return args.handler(args)


def test_score_overlays_mirror_the_tree_and_never_overwrite(tmp_path, capsys):
    """Item 2 (score --overlays DIR): two folders holding the same file names gave one overlay per name (the last)."""
    x = frames(3, 70, 90, seed=7)
    for d in ("line1", "line2"):
        (tmp_path / d).mkdir()
    for i in range(2):
        Image.fromarray(x[i]).save(tmp_path / "line1" / f"f{i}.png")
    Image.fromarray(x[2]).save(tmp_path / "line2" / "f0.png")     # same name, another image
    ov = tmp_path / "ov"
    assert _main(["score", "--engine", str(engine_dir("torch")), str(tmp_path / "line1"), str(tmp_path / "line2"),
                  "--overlays", str(ov), "--json", str(tmp_path / "r.json")]) == 0
    got = sorted(p.relative_to(ov).as_posix() for p in ov.rglob("*.png"))
    assert got == ["contact_sheet.png", "line1/f0_overlay.png", "line1/f1_overlay.png", "line2/f0_overlay.png"]
    a, b = (np.asarray(Image.open(ov / f"line{k}/f0_overlay.png")) for k in (1, 2))
    assert a.shape == b.shape and not np.array_equal(a, b)
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    for r in results:  # each picture carries its verdict's colour
        name = r["image"].split(str(tmp_path) + "/")[-1].replace(".png", "_overlay.png")
        pic = Image.open(ov / name)
        assert _count(pic, viz.DEFECT_RGB if r["score"] > THRESHOLD else viz.OK_RGB) > 100
    # a rerun replaces its own overlays; a user's file at an overlay's name stops the run before scoring
    assert _main(["score", "--engine", str(engine_dir("torch")), str(tmp_path / "line1"), str(tmp_path / "line2"),
                  "--overlays", str(ov)]) == 0
    capsys.readouterr()
    user = tmp_path / "mine"
    user.mkdir()
    (user / "f0_overlay.png").write_bytes(b"the user's own file")
    with pytest.raises(FileExistsError, match="--force"):
        _main(["score", "--engine", str(engine_dir("torch")), str(tmp_path / "line2"), "--overlays", str(user)])
    assert (user / "f0_overlay.png").read_bytes() == b"the user's own file"
    assert capsys.readouterr().out == ""  # nothing was scored
    assert _main(["score", "--engine", str(engine_dir("torch")), str(tmp_path / "line2"), "--overlays", str(user),
                  "--force"]) == 0
    assert Image.open(user / "f0_overlay.png").mode == "RGB"
