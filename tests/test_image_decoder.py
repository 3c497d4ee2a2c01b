"""One image decoder for every path (issue 11 item 3): training's loader, evaluation and
``cdd-engine score`` read a file to the same pixels, whatever its format and mode; 16-bit grey
is scaled (never clipped), EXIF orientation is applied everywhere, and a file over Pillow's
decompression-bomb limit is a clear error, not a warning followed by gigabytes."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cdd_engine.cli import main
from cdd_engine.cli_engine import _read_image
from cdd_engine.data import load_image
from cdd_engine.data.images import ImageTooLargeError, UnreadableImageError, decode_image, load_mask

from engine_helpers import one_torch_thread  # noqa: F401 (autouse fixture)
from engine_helpers import engine_dir, frames, model_and_run_dir, reference, rel_err

RGB = frames(1, 40, 56, seed=7)[0]
GREY = RGB[..., 1]
GREY16 = (np.linspace(0, 65535, 40 * 56).reshape(40, 56)).astype(np.uint16)
SCALED16 = ((GREY16.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
GREY_PALETTE = Image.fromarray(GREY).convert("P")  # every palette colour grey


def _palette_colour() -> Image.Image:
    return Image.fromarray(RGB).quantize(16)


CASES = {
    "png-L": (lambda: Image.fromarray(GREY), "png", "gray"),
    "png-16bit": (lambda: Image.fromarray(GREY16), "png", "gray"),
    "tiff-16bit": (lambda: Image.fromarray(GREY16), "tiff", "gray"),
    "png-RGB": (lambda: Image.fromarray(RGB), "png", "rgb"),
    "png-RGBA": (lambda: Image.fromarray(np.dstack([RGB, np.full(GREY.shape, 128, np.uint8)])), "png", "rgb"),
    "png-palette-colour": (_palette_colour, "png", "rgb"),
    "png-palette-grey": (lambda: GREY_PALETTE, "png", "gray"),
    "png-LA": (lambda: Image.fromarray(np.dstack([GREY, GREY])), "png", "gray"),
    "jpeg-RGB": (lambda: Image.fromarray(RGB), "jpeg", "rgb"),
    "jpeg-L": (lambda: Image.fromarray(GREY), "jpeg", "gray"),
    "bmp-RGB": (lambda: Image.fromarray(RGB), "bmp", "rgb"),
    "tiff-RGB": (lambda: Image.fromarray(RGB), "tiff", "rgb"),
    "bmp-1bit": (lambda: Image.fromarray(GREY > 128), "bmp", "gray"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_path_decodes_a_file_the_same_way(case, tmp_path):
    make, fmt, kind = CASES[case]
    path = tmp_path / f"x.{fmt}"
    make().save(path)
    got_kind, arr = decode_image(path)
    assert got_kind == kind and arr.dtype == np.uint8 and arr.shape[:2] == (40, 56)
    train = load_image(path, kind)                       # training and evaluation
    score, pixel_format = _read_image(path)              # cdd-engine score
    assert pixel_format == ("MONO" if kind == "gray" else "RGB")
    expect = np.repeat(arr[..., None], 3, axis=2) if kind == "gray" else arr
    np.testing.assert_array_equal(train, expect)
    np.testing.assert_array_equal(score, arr)
    if case in ("png-16bit", "tiff-16bit"):
        np.testing.assert_array_equal(arr, SCALED16)     # scaled to 8 bits, not clipped to white
        assert arr.min() == 0 and arr.max() == 255 and len(np.unique(arr)) > 200
    if case in ("png-L", "png-palette-grey", "png-LA"):
        np.testing.assert_array_equal(arr, GREY)


def test_score_of_a_16bit_file_is_the_score_of_its_scaled_pixels(tmp_path, capsys):
    """The bug: score read 16-bit grey through Pillow's L mode, which clips (an all-white frame)."""
    model, _ = model_and_run_dir()
    y, x = np.mgrid[0:64, 0:64]
    grey16 = (16000 + 180 * x + 120 * y).astype(np.uint16)        # well inside 0..65535, far above 255
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    assert main(["score", "--engine", str(engine_dir("torch")), str(tmp_path / "g16.png"), "--json", "-"]) == 0
    got = json.loads(capsys.readouterr().out)["results"][0]["score"]
    scaled = ((grey16.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    assert rel_err([got], reference(model, [scaled], "MONO")[1]) <= 1e-5
    clipped = np.full_like(scaled, 255)
    assert abs(got - reference(model, [clipped], "MONO")[1][0]) > 1e-3


def _exif_rotated(path, arr, orientation=6):
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = orientation                           # 6: the viewer turns it 90° clockwise
    im.save(path, exif=exif)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_exif_orientation_is_applied_everywhere(fmt, tmp_path):
    path = tmp_path / f"r.{fmt}"
    _exif_rotated(path, RGB)
    kind, arr = decode_image(path)
    assert arr.shape == (56, 40, 3)                      # as a viewer shows it
    assert load_image(path, "rgb").shape == (56, 40, 3) and _read_image(path)[0].shape == (56, 40, 3)
    if fmt == "png":                                     # lossless: exactly the rotated pixels
        np.testing.assert_array_equal(arr, np.rot90(RGB, -1))
    mask = tmp_path / "m.png"
    _exif_rotated(mask, (GREY > 128).astype(np.uint8) * 255)
    np.testing.assert_array_equal(load_mask(mask, (56, 40)), np.rot90(GREY > 128, -1).astype(np.float32))


def test_a_decompression_bomb_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.fromarray(RGB[:36, :36]).save(tmp_path / "warned.png")   # 1296 px: Pillow only warns here
    Image.fromarray(RGB).save(tmp_path / "refused.png")            # 2240 px: Pillow refuses
    for name in ("warned.png", "refused.png"):
        with pytest.raises(ImageTooLargeError, match="MAX_IMAGE_PIXELS = 1000 pixels"):
            decode_image(tmp_path / name)
        with pytest.raises(ImageTooLargeError):
            load_image(tmp_path / name, "rgb")
    assert main(["score", "--engine", str(engine_dir("torch")), str(tmp_path / "warned.png")]) == 2
    err = capsys.readouterr().err
    assert "too large to decode" in err and "--skip-bad-images" in err and len(err.strip().splitlines()) == 1


def test_a_float_image_has_no_stated_range_and_is_refused(tmp_path):
    Image.fromarray(GREY.astype(np.float32) / 255).save(tmp_path / "f.tiff")
    with pytest.raises(UnreadableImageError, match="unsupported pixel mode 'F'"):
        decode_image(tmp_path / "f.tiff")
