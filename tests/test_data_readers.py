"""Readers (MVTec, VisA csv + raw, folder), image/mask decoding and ImageDataset on tiny trees."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cdd_engine.data import (ANOMALOUS, GOOD, UNKNOWN, DatasetError, ImageDataset, MissingPathError,
                             detect_color, guess_layout, list_categories, load_image, load_mask, read_dataset)
from cdd_engine.preprocess import resize_normalize

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _img(path: Path, size=(20, 16), mode="RGB", seed=0) -> Path:
    """Random image, size = (W, H)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def _mask(path: Path, size=(20, 16), box=(2, 3, 9, 11)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((size[1], size[0]), np.uint8)
    y0, x0, y1, x1 = box
    m[y0:y1, x0:x1] = 255
    Image.fromarray(m).save(path)
    return path


def make_mvtec(root: Path, category="widget", n_train=3, mode="RGB") -> Path:
    c = root / category
    for i in range(n_train):
        _img(c / "train" / "good" / f"{i:03d}.png", mode=mode, seed=i)
    for i in range(2):
        _img(c / "test" / "good" / f"{i:03d}.png", mode=mode, seed=10 + i)
    for d, n in (("crack", 2), ("scratch", 1)):
        for i in range(n):
            _img(c / "test" / d / f"{i:03d}.png", mode=mode, seed=20 + i)
            _mask(c / "ground_truth" / d / f"{i:03d}_mask.png")
    (c / "license.txt").write_text("not an image")
    return root


def make_visa_raw(root: Path, category="pcb9", n_normal=6, n_anomaly=2, anno=True) -> Path:
    c = root / category / "Data"
    for i in range(n_normal):
        _img(c / "Images" / "Normal" / f"{i:04d}.JPG", seed=i)
    lines = ["image,label,mask"]
    for i in range(n_anomaly):
        _img(c / "Images" / "Anomaly" / f"{i:03d}.JPG", seed=50 + i)
        _mask(c / "Masks" / "Anomaly" / f"{i:03d}.png")
        lines.append(f"{category}/Data/Images/Anomaly/{i:03d}.JPG,\"chip,crack\","
                     f"{category}/Data/Masks/Anomaly/{i:03d}.png")
    if anno:
        (root / category / "image_anno.csv").write_text("\n".join(lines) + "\n")
    return root


def add_visa_csv(root: Path, category="pcb9", n_normal=6, n_anomaly=2) -> Path:
    rows = ["object,split,label,image,mask"]
    for i in range(n_normal):
        split = "train" if i < n_normal - 2 else "test"
        rows.append(f"{category},{split},normal,{category}/Data/Images/Normal/{i:04d}.JPG,")
    for i in range(n_anomaly):
        rows.append(f"{category},test,anomaly,{category}/Data/Images/Anomaly/{i:03d}.JPG,"
                    f"{category}/Data/Masks/Anomaly/{i:03d}.png")
    (root / "split_csv").mkdir(exist_ok=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


# ----------------------------------------------------------------------------- MVTec
def test_mvtec_reader(tmp_path):
    root = make_mvtec(tmp_path / "mv")
    split = read_dataset(root, "mvtec", "widget")
    assert split.name == "mvtec:widget" and split.root == str(root)
    assert [Path(s.path).name for s in split.train] == ["000.png", "001.png", "002.png"]
    assert all(s.label == UNKNOWN and s.mask_path is None and s.defect_type == "good" for s in split.train)
    assert [(s.defect_type, s.label) for s in split.test] == [
        ("crack", ANOMALOUS), ("crack", ANOMALOUS), ("good", GOOD), ("good", GOOD), ("scratch", ANOMALOUS)]
    for s in split.test:
        assert Path(s.path).is_absolute()
        if s.label == ANOMALOUS:
            assert s.mask_path == str(root / "widget" / "ground_truth" / s.defect_type / (Path(s.path).stem + "_mask.png"))
        else:
            assert s.mask_path is None
    assert list_categories(root, "mvtec") == ["widget"]
    # root = the category folder itself, and a root with a single category
    assert read_dataset(root / "widget", "mvtec").train == split.train
    assert read_dataset(root, "mvtec").test == split.test


def test_mvtec_errors(tmp_path):
    root = make_mvtec(tmp_path / "mv")
    make_mvtec(root, "other")
    with pytest.raises(MissingPathError, match="does not exist"):
        read_dataset(tmp_path / "nope", "mvtec")
    with pytest.raises(MissingPathError, match=r"'gadget' not found.*other, widget"):
        read_dataset(root, "mvtec", "gadget")
    with pytest.raises(DatasetError, match="2 MVTec categories"):
        read_dataset(root, "mvtec")
    with pytest.raises(ValueError, match="layout must be one of"):
        read_dataset(root, "coco")
    (root / "widget" / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(MissingPathError, match=r"mask missing for anomalous image .*crack/001.png"):
        read_dataset(root, "mvtec", "widget")
    for p in (root / "other" / "train" / "good").iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match="training set is empty"):
        read_dataset(root, "mvtec", "other")


def test_wrong_layout_names_the_likely_one(tmp_path):
    visa = make_visa_raw(tmp_path / "visa")
    with pytest.raises(DatasetError, match="looks like the 'visa' layout"):
        read_dataset(visa, "mvtec")
    mv = make_mvtec(tmp_path / "mv")
    with pytest.raises(DatasetError, match="looks like the 'mvtec' layout"):
        read_dataset(mv, "visa")
    with pytest.raises(DatasetError, match="looks like the 'mvtec' layout"):
        read_dataset(mv, "folder")  # would otherwise train on test images and masks
    flat = tmp_path / "flat"
    _img(flat / "a.png")
    with pytest.raises(DatasetError, match="looks like the 'folder' layout"):
        read_dataset(flat, "mvtec")
    assert guess_layout(visa) == "visa" and guess_layout(mv) == "mvtec" and guess_layout(flat) == "folder"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no image files"):
        read_dataset(empty, "mvtec")


# ----------------------------------------------------------------------------- VisA
def test_visa_csv_split(tmp_path):
    root = add_visa_csv(make_visa_raw(tmp_path / "visa"))
    split = read_dataset(root, "visa", "pcb9")
    assert split.name == "visa:pcb9"
    assert [Path(s.path).name for s in split.train] == ["0000.JPG", "0001.JPG", "0002.JPG", "0003.JPG"]
    assert all(s.label == UNKNOWN for s in split.train)
    good = [s for s in split.test if s.label == GOOD]
    bad = [s for s in split.test if s.label == ANOMALOUS]
    assert [Path(s.path).name for s in good] == ["0004.JPG", "0005.JPG"]
    assert [s.defect_type for s in bad] == ["chip,crack", "chip,crack"]  # from image_anno.csv
    assert all(Path(s.mask_path).is_file() for s in bad)
    assert list_categories(root, "visa") == ["pcb9"]
    with pytest.raises(MissingPathError, match=r"'pcb1' not found.*pcb9"):
        read_dataset(root, "visa", "pcb1")
    (root / "pcb9" / "Data" / "Masks" / "Anomaly" / "001.png").unlink()
    with pytest.raises(MissingPathError, match="mask listed in the split file does not exist"):
        read_dataset(root, "visa", "pcb9")


def test_visa_csv_bad_header(tmp_path):
    root = make_visa_raw(tmp_path / "visa")
    (root / "split_csv").mkdir()
    (root / "split_csv" / "1cls.csv").write_text("object,split,image\npcb9,train,x.JPG\n")
    with pytest.raises(DatasetError, match="missing label, mask"):
        read_dataset(root, "visa", "pcb9")


def test_visa_raw_seeded_split(tmp_path):
    root = make_visa_raw(tmp_path / "visa", n_normal=7, n_anomaly=3, anno=False)
    split = read_dataset(root, "visa", "pcb9")
    bad = [s for s in split.test if s.label == ANOMALOUS]
    good = [s for s in split.test if s.label == GOOD]
    assert len(bad) == 3 and len(good) == 3 and len(split.train) == 4  # all anomalies + as many normals
    assert all(s.defect_type == "anomaly" for s in bad)
    names = {Path(s.path).name for s in split.train} | {Path(s.path).name for s in good}
    assert names == {f"{i:04d}.JPG" for i in range(7)}
    again = read_dataset(root, "visa", "pcb9")
    assert again.train == split.train and again.test == split.test  # fixed seed
    # never more than half of the normals go to test
    root2 = make_visa_raw(tmp_path / "visa2", n_normal=3, n_anomaly=5)
    s2 = read_dataset(root2, "visa")
    assert len(s2.train) == 2 and sum(s.label == GOOD for s in s2.test) == 1
    (root / "pcb9" / "Data" / "Masks" / "Anomaly" / "002.png").unlink()
    with pytest.raises(MissingPathError, match="mask missing for anomalous image"):
        read_dataset(root, "visa", "pcb9")


# ----------------------------------------------------------------------------- folder
def test_folder_reader(tmp_path):
    root = tmp_path / "line"
    _img(root / "b.png")
    _img(root / "a.jpg")
    _img(root / "sub" / "c.bmp")
    _img(root / "sub" / "deeper" / "d.tiff")
    (root / "notes.txt").write_text("x")
    _img(root / ".hidden" / "e.png")
    split = read_dataset(root, "folder")
    rel = [Path(s.path).relative_to(root).as_posix() for s in split.train]
    assert rel == ["a.jpg", "b.png", "sub/c.bmp", "sub/deeper/d.tiff"]
    assert all(s.label == UNKNOWN and s.defect_type == "unknown" and s.mask_path is None for s in split.train)
    assert split.test == []
    assert list_categories(root, "folder") == ["sub"]
    assert len(read_dataset(root, "folder", "sub").train) == 2
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "x.txt").write_text("x")
    with pytest.raises(DatasetError, match="training set is empty"):
        read_dataset(tmp_path / "none", "folder")


# ----------------------------------------------------------------------------- images
def test_load_image_modes(tmp_path):
    rgb = load_image(_img(tmp_path / "c.png", (13, 9)), "rgb")
    assert rgb.shape == (9, 13, 3) and rgb.dtype == np.uint8
    gray_path = _img(tmp_path / "g.png", (13, 9), mode="L", seed=3)
    gray = load_image(gray_path, "gray")
    assert gray.shape == (9, 13, 3)
    np.testing.assert_array_equal(gray[..., 0], np.asarray(Image.open(gray_path)))
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
    with pytest.raises(DatasetError, match=r"expected RGB, got grayscale \(mode L\): .*g.png"):
        load_image(gray_path, "rgb")
    with pytest.raises(DatasetError, match=r"expected grayscale, got RGB \(mode RGB\)"):
        load_image(tmp_path / "c.png", "gray")
    # an RGB file holding a gray picture is fine in a gray data set
    Image.fromarray(np.repeat(np.asarray(Image.open(gray_path))[..., None], 3, 2)).save(tmp_path / "g3.png")
    np.testing.assert_array_equal(load_image(tmp_path / "g3.png", "gray"), gray)
    # 16-bit gray is scaled to 8 bit
    Image.fromarray(np.full((9, 9), 65535, np.uint16)).save(tmp_path / "g16.png")
    assert load_image(tmp_path / "g16.png", "gray").min() == 255
    _img(tmp_path / "tiny.png", (7, 20))
    with pytest.raises(DatasetError, match="smaller than 8x8"):
        load_image(tmp_path / "tiny.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DatasetError, match=r"cannot read image .*bad.png"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(MissingPathError, match="does not exist"):
        load_image(tmp_path / "missing.png")


def test_detect_color_and_masks(tmp_path):
    gray = make_mvtec(tmp_path / "g", mode="L")
    rgb = make_mvtec(tmp_path / "c")
    assert detect_color(read_dataset(gray, "mvtec").train) == "gray"
    assert detect_color(read_dataset(rgb, "mvtec")) == "rgb"
    with pytest.raises(ValueError, match="empty"):
        detect_color([])
    m = _mask(tmp_path / "m.png", size=(40, 32), box=(4, 8, 20, 24))
    full = load_mask(m, (32, 40))
    assert full.dtype == np.float32 and set(np.unique(full)) == {0.0, 1.0} and full.sum() == 16 * 16
    half = load_mask(m, (16, 20))
    assert half.shape == (16, 20) and half.sum() == 8 * 8  # area kept when shrinking


def test_image_dataset(tmp_path):
    split = read_dataset(make_mvtec(tmp_path / "mv"), "mvtec")
    size = (16, 20)  # the files' own size: the cache holds them exactly
    ds = ImageDataset(split.test, size, MEAN, STD, color="rgb", with_masks=True, cache=True)
    nocache = ImageDataset(split.test, size, MEAN, STD, color="rgb", with_masks=True, cache=False)
    for i in range(len(ds)):
        a, b = ds[i], nocache[i]
        want = resize_normalize(torch.from_numpy(load_image(split.test[i].path))[None], size, MEAN, STD)[0]
        torch.testing.assert_close(a["image"], want, rtol=0, atol=0)
        torch.testing.assert_close(b["image"], want, rtol=0, atol=0)
        assert a["label"] == split.test[i].label and a["path"] == split.test[i].path
        assert a["mask"].shape == (1, 16, 20)
        assert a["mask"].sum() == (56 if a["label"] == ANOMALOUS else 0)
    # a resized cache differs from the exact path by at most half a grey level
    small = ImageDataset(split.test, (11, 13), MEAN, STD, cache=True)
    exact = ImageDataset(split.test, (11, 13), MEAN, STD, cache=False)
    for i in range(len(small)):
        d = (small[i]["image"] - exact[i]["image"]) * torch.tensor(STD).view(3, 1, 1) * 255
        assert d.abs().max() <= 0.5 + 1e-4
        assert "mask" not in small[i]
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 3, 16, 20) and batch["mask"].shape == (2, 1, 16, 20)


def test_image_dataset_errors(tmp_path):
    root = make_mvtec(tmp_path / "mv")
    split = read_dataset(root, "mvtec")
    with pytest.raises(ValueError, match="at least one sample"):
        ImageDataset([], (16, 16), MEAN, STD)
    with pytest.raises(TypeError, match="DatasetSplit"):
        ImageDataset(split, (16, 16), MEAN, STD)
    with pytest.raises(ValueError, match="std must be > 0"):
        ImageDataset(split.train, (16, 16), MEAN, (0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="mean must be 3"):
        ImageDataset(split.train, (16, 16), (0.5, 0.5), STD)
    with pytest.raises(ValueError, match="size must be"):
        ImageDataset(split.train, (4, 16), MEAN, STD)
    with pytest.raises(DatasetError, match="expected grayscale, got RGB"):
        ImageDataset(split.train, (16, 16), MEAN, STD, color="gray")[0]
    # a mask of another size than its image is a wrong pairing, not something to resize
    bad = next(s for s in split.test if s.label == ANOMALOUS)
    _mask(Path(bad.mask_path), size=(30, 30))
    with pytest.raises(DatasetError, match="mask .* is 30x30 but its image .* is 20x16"):
        ImageDataset([bad], (16, 16), MEAN, STD, with_masks=True)[0]
