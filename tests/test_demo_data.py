"""The offline demo generator: determinism, train/test separation, exact masks, MVTec layout."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from cdd_engine.data import ANOMALOUS, GOOD, ImageDataset, read_dataset
from cdd_engine.data import demo

SMALL = dict(n_train=8, n_test_good=3, n_test_defect=10, image_size=64)


@pytest.fixture(scope="module")
def brick64(tmp_path_factory) -> Path:
    return demo.make_demo_dataset(tmp_path_factory.mktemp("demo") / "d", categories=("brick",), **SMALL)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_reader(brick64):
    split = read_dataset(brick64, "mvtec", "brick")
    assert len(split.train) == 8
    assert sum(s.label == GOOD for s in split.test) == 3
    bad = [s for s in split.test if s.label == ANOMALOUS]
    assert sorted({s.defect_type for s in bad}) == sorted(demo.DEFECT_KINDS)
    assert len(bad) == 10  # spread evenly: 2 of each kind
    meta = json.loads((brick64 / "dataset.json").read_text())
    assert meta["version"] == demo.DEMO_VERSION and meta["arguments"]["image_size"] == 64
    assert meta["arguments"]["defect_kinds"] == list(demo.DEFECT_KINDS)
    assert meta["categories"]["brick"]["arguments"]["n_train"] == 8
    for s in split.train + split.test:
        im = Image.open(s.path)
        assert im.size == (64, 64) and im.mode == "L"


def test_deterministic_and_seeded(brick64, tmp_path):
    again = demo.make_demo_dataset(tmp_path / "again", categories=("brick",), **SMALL)
    assert _files(again) == _files(brick64)  # byte-identical
    other = demo.make_demo_dataset(tmp_path / "seed1", categories=("brick",), seed=1, **SMALL)
    a, b = _files(brick64), _files(other)
    assert a.keys() == b.keys()
    assert a["brick/train/good/000.png"] != b["brick/train/good/000.png"]
    # regenerating into the same folder replaces it (no stale files survive); dataset.json
    # keeps describing every category in the folder
    demo.make_demo_dataset(again, categories=("brick",), **{**SMALL, "n_train": 2})
    assert len(list((again / "brick" / "train" / "good").iterdir())) == 2
    demo.make_demo_dataset(again, categories=("grass",), **{**SMALL, "n_train": 3})
    meta = json.loads((again / "dataset.json").read_text())
    assert meta["arguments"]["categories"] == ["grass"]
    assert {c: v["arguments"]["n_train"] for c, v in meta["categories"].items()} == {"brick": 2, "grass": 3}


def _overlap(a, b) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def _inside(box, region) -> bool:
    return region[0] <= box[0] and region[1] <= box[1] and box[2] <= region[2] and box[3] <= region[3]


@pytest.mark.parametrize("crop_size", [192, 240, 233])  # > 204 does not fit 1.25x: quadrants magnified
def test_test_crops_never_overlap_training_crops(tmp_path, crop_size):
    root = demo.make_demo_dataset(tmp_path / "d", categories=("gravel",), crop_size=crop_size,
                                  n_train=30, n_test_good=10, n_test_defect=10, image_size=32)
    side = json.loads((root / "gravel" / "crops.json").read_text())
    assert (side["region_scale"] > 1.0) == (crop_size > 204)
    train_regions, test_regions = side["regions"]["train"], side["regions"]["test"]
    assert not any(_overlap(a, b) for a in train_regions for b in test_regions)
    train = [r["box"] for r in side["images"].values() if r["region"] == "train"]
    test = [r["box"] for r in side["images"].values() if r["region"] == "test"]
    assert len(train) == 30 and len(test) == 20
    assert all(any(_inside(b, r) for r in train_regions) for b in train)
    assert all(any(_inside(b, r) for r in test_regions) for b in test)
    assert not any(_overlap(a, b) for a in train for b in test)
    side_px = crop_size / side["region_scale"]  # crop side in original texture pixels
    assert all(abs((b[2] - b[0]) - side_px) < 0.01 for b in train + test)


def test_masks_are_exact(brick64):
    """Rebuild each defective image without its defect from crops.json: the pixels differ
    inside the mask and are identical away from it (a soft edge of a few pixels aside)."""
    from skimage import data as skdata

    texture = skdata.brick().astype(np.float32)[:, :, None]
    side = json.loads((brick64 / "brick" / "crops.json").read_text())
    assert side["region_scale"] == 1.0
    n_checked = 0
    for rel, rec in side["images"].items():
        y0, x0, y1, x1 = (int(v) for v in rec["box"])
        clean = demo._resize(np.ascontiguousarray(demo._dihedral(texture[y0:y1, x0:x1], rec["transform"])), 64, 64)
        j = rec["jitter"]
        clean = np.clip(np.rint((clean - 128.0) * j["contrast"] + 128.0 + j["brightness"]), 0, 255)[:, :, 0]
        saved = np.asarray(Image.open(brick64 / "brick" / rel)).astype(np.float32)
        if "defect" not in rec:
            np.testing.assert_array_equal(saved, clean)
            continue
        kind = rec["defect"]["kind"]
        mask_path = brick64 / "brick" / "ground_truth" / kind / (Path(rel).stem + "_mask.png")
        mask = np.asarray(Image.open(mask_path)) > 0
        assert mask.shape == (64, 64) and mask.any()
        assert 0.001 < mask.mean() < 0.08  # realistic size: not invisible, not huge
        assert abs(mask.mean() - rec["mask_fraction"]) < 1e-4
        away = ~ndimage.binary_dilation(mask, iterations=4)
        np.testing.assert_array_equal(saved[away], clean[away])
        assert np.abs(saved - clean)[mask].mean() > 5.0, f"{rel}: defect hardly changes its pixels"
        n_checked += 1
    assert n_checked == 10


def test_masks_through_the_dataset(brick64):
    split = read_dataset(brick64, "mvtec", "brick")
    ds = ImageDataset(split.test, (64, 64), (0.5,) * 3, (0.25,) * 3, color="gray", with_masks=True)
    for i, s in enumerate(split.test):
        m = ds[i]["mask"]
        assert (m.sum() > 0) == (s.label == ANOMALOUS)


@pytest.mark.parametrize("size", [128, 320])
def test_other_sizes_and_kind_selection(tmp_path, size):
    root = demo.make_demo_dataset(tmp_path / "d", categories=("grass",), image_size=size, n_train=2,
                                  n_test_good=1, n_test_defect=4, defect_kinds=("scratch", "patch"))
    split = read_dataset(root, "mvtec")
    assert sorted({s.defect_type for s in split.test}) == ["good", "patch", "scratch"]
    for s in split.test:
        assert Image.open(s.path).size == (size, size)
        if s.mask_path:
            m = np.asarray(Image.open(s.mask_path)) > 0
            assert m.shape == (size, size) and m.any() and not m.all()


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="categories must be distinct names"):
        demo.make_demo_dataset(tmp_path / "x", categories=("marble",))
    with pytest.raises(ValueError, match="defect_kinds must be distinct names"):
        demo.make_demo_dataset(tmp_path / "x", categories=("brick",), defect_kinds=("crack",))
    with pytest.raises(ValueError, match="image_size must be an int >= 32"):
        demo.make_demo_dataset(tmp_path / "x", image_size=16)
    (tmp_path / "mine" / "brick").mkdir(parents=True)
    with pytest.raises(ValueError, match="not written by the demo generator"):
        demo.make_demo_dataset(tmp_path / "mine", categories=("brick",), **SMALL)
