"""Read anomaly-detection data sets from disk into `DatasetSplit`s.

Three layouts are understood:

``mvtec``  ``root/<category>/train/good/*``, ``root/<category>/test/<good|defect>/*`` and
           ``root/<category>/ground_truth/<defect>/<stem>_mask.png`` (MVTec AD; also what
           `cdd_engine.data.demo` writes). ``root`` may also be a category folder itself.
``visa``   VisA. With ``root/split_csv/1cls.csv`` (columns ``object,split,label,image,mask``,
           paths relative to ``root``) that documented one-class split is used. Without it,
           the raw layout ``root/<category>/Data/Images/{Normal,Anomaly}`` with masks in
           ``Data/Masks/Anomaly/<stem>.png`` (and optionally ``root/<category>/image_anno.csv``
           for defect names) is split here: every anomaly plus an equal number of normals
           (at most half of the normals) drawn with the fixed seed `VISA_RAW_SPLIT_SEED` go to
           test, the other normals to train. That split is ours, not VisA's: report it.
``folder`` every image under ``root`` (or ``root/<category>``), recursively, sorted by relative
           path, is an unlabelled training image; the test set is empty.

Training images always get label -1 (unknown): in fully unsupervised AD the learner never
knows which of them are good. ``Sample.defect_type`` keeps the provenance for reports.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Literal

import numpy as np

from .samples import ANOMALOUS, GOOD, UNKNOWN, DatasetError, DatasetSplit, MissingPathError, Sample

Layout = Literal["mvtec", "visa", "folder"]
LAYOUTS: tuple[str, ...] = ("mvtec", "visa", "folder")
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VISA_RAW_SPLIT_SEED = 0
VISA_COLUMNS = ("object", "split", "label", "image", "mask")


# ----------------------------------------------------------------------------- helpers
def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _images_in(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name."""
    return sorted((p for p in folder.iterdir() if _is_image(p)), key=lambda p: p.name)


def _images_under(folder: Path) -> list[Path]:
    """Image files anywhere below `folder` (hidden folders skipped), sorted by relative path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            p = Path(dirpath) / name
            if _is_image(p):
                found.append(p)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _subdirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def _check_root(root: str | os.PathLike) -> Path:
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a path (str or os.PathLike), got {type(root).__name__}")
    path = Path(os.path.normpath(Path(root).expanduser().absolute()))
    if not path.exists():
        raise MissingPathError(f"dataset root does not exist: {path}")
    if not path.is_dir():
        raise DatasetError(f"dataset root must be a folder, got a file: {path}")
    return path


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def _is_mvtec_category(p: Path) -> bool:
    return (p / "train").is_dir() and ((p / "test").is_dir() or (p / "train" / "good").is_dir())


def _is_visa_category(p: Path) -> bool:
    return (p / "Data" / "Images").is_dir()


def guess_layout(root: str | os.PathLike) -> str | None:
    """Which layout `root` (a dataset root or one category folder) looks like, or None."""
    path = Path(root)
    if not path.is_dir():
        return None
    subdirs = _subdirs(path)
    if (path / "split_csv" / "1cls.csv").is_file() or _is_visa_category(path) \
            or any(_is_visa_category(d) for d in subdirs):
        return "visa"
    if _is_mvtec_category(path) or any(_is_mvtec_category(d) for d in subdirs):
        return "mvtec"
    for _ in _images_iter(path):
        return "folder"
    return None


def _images_iter(folder: Path):
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
                yield Path(dirpath) / name


def _wrong_layout(root: Path, layout: str, what: str) -> DatasetError:
    guess = guess_layout(root)
    if guess is not None and guess != layout:
        hint = f"; it looks like the {guess!r} layout: pass layout={guess!r}"
    elif guess is None:
        hint = "; no image files were found there at all"
    else:
        hint = ""
    return DatasetError(f"{root} is not a {layout!r} data set: {what}{hint}")


def _unknown_category(root: Path, category: str, layout: str, existing: list[str]) -> DatasetError:
    listed = ", ".join(existing) if existing else "none"
    return MissingPathError(
        f"category {category!r} not found in {layout!r} data set {root}; categories there: {listed}")


def _require_train(split: DatasetSplit, where: Path) -> DatasetSplit:
    if not split.train:
        raise DatasetError(f"{split.name}: the training set is empty (no images in {where})")
    return split


# ----------------------------------------------------------------------------- public API
def list_categories(root: str | os.PathLike, layout: Layout) -> list[str]:
    """Category names that `read_dataset(root, layout, category=...)` accepts, sorted.

    mvtec: sub-folders with ``train/``; visa: the ``object`` column of ``split_csv/1cls.csv``
    or sub-folders with ``Data/Images``; folder: sub-folders that contain images.
    A root that is itself one category folder gives [] (read it with category=None).
    """
    _check_layout(layout)
    path = _check_root(root)
    if layout == "mvtec":
        return [d.name for d in _subdirs(path) if _is_mvtec_category(d)]
    if layout == "visa":
        csv_path = path / "split_csv" / "1cls.csv"
        if csv_path.is_file():
            return sorted({row["object"] for row in _read_visa_csv(csv_path)})
        return [d.name for d in _subdirs(path) if _is_visa_category(d)]
    return [d.name for d in _subdirs(path) if next(_images_iter(d), None) is not None]


def read_dataset(root: str | os.PathLike, layout: Layout = "mvtec",
                 category: str | None = None) -> DatasetSplit:
    """Read one category of a data set (see the module docstring for the layouts).

    With category=None, `root` must be a category folder itself or hold exactly one
    category. Raises DatasetError (a ValueError; MissingPathError for missing files and
    folders) for a missing root or category, a wrong layout, an empty training set and an
    anomalous image without its mask.
    """
    _check_layout(layout)
    path = _check_root(root)
    if category is not None and (not isinstance(category, str) or not category
                                 or "/" in category or "\\" in category or category in (".", "..")):
        raise ValueError(f"category must be a folder name, got {category!r}")
    if layout == "mvtec":
        return _read_mvtec(path, category)
    if layout == "visa":
        return _read_visa(path, category)
    return _read_folder(path, category)


SKIPPED_FILE = "skipped_images.json"  # a run directory's list of the files --skip-bad-images left out


def drop_unreadable(split: DatasetSplit, record: str | os.PathLike | None = None,
                    parts: tuple[str, ...] = ("train", "test")) -> DatasetSplit:
    """``split`` without the images that cannot be decoded (``--skip-bad-images``).

    Every image of ``parts`` (and a test image's mask) is decoded once. The skipped files
    are in the returned split's ``skipped`` ([{"path", "error"}]) and, when ``record`` is given,
    written there as JSON ``{"skipped": [...]}``. An empty training set afterwards is an error.
    """
    import json

    from .images import find_unreadable, load_mask
    todo = (split.train if "train" in parts else []) + (split.test if "test" in parts else [])
    bad = {e["path"]: e for e in find_unreadable([s.path for s in todo])}
    for s in (split.test if "test" in parts else []):
        if s.mask_path and s.path not in bad:
            try:
                load_mask(s.mask_path, (8, 8))
            except DatasetError as e:
                bad[s.path] = {"path": s.path, "error": f"its mask: {e}"}
    skipped = [bad[s.path] for s in split.train + split.test if s.path in bad]
    out = DatasetSplit(split.name, split.root, [s for s in split.train if s.path not in bad],
                       [s for s in split.test if s.path not in bad], skipped=skipped)
    if record is not None:
        Path(record).write_text(json.dumps({"skipped": skipped}, indent=2) + "\n", encoding="utf-8")
    if "train" in parts and not out.train:
        raise DatasetError(f"{split.name}: no readable training image left after skipping {len(skipped)} "
                           f"unreadable file(s), e.g. {skipped[0]['path']}: {skipped[0]['error']}")
    return out


# ----------------------------------------------------------------------------- mvtec
def _find_mask(gt_dir: Path, stem: str) -> Path | None:
    for ext in (".png",) + tuple(e for e in IMAGE_EXTENSIONS if e != ".png"):
        cand = gt_dir / f"{stem}_mask{ext}"
        if cand.is_file():
            return cand
    return None


def _category_dir(root: Path, category: str | None, layout: Layout, root_is_category: bool,
                  root_of_category: Path, none_found: str) -> tuple[Path, Path]:
    """(category folder, data-set root that relative paths refer to) for MVTec / VisA layouts.

    ``root`` may be the category folder itself (``root_is_category``; its data-set root is then
    ``root_of_category``) or a folder of categories, of which ``category`` picks one (needed
    when there are several).
    """
    if category is not None:
        cat_dir = root / category
        if not cat_dir.is_dir():
            raise _unknown_category(root, category, layout, list_categories(root, layout))
        return cat_dir, root
    if root_is_category:
        return root, root_of_category
    cats = list_categories(root, layout)
    if not cats:
        raise _wrong_layout(root, layout, none_found)
    if len(cats) > 1:
        raise DatasetError(f"{root} holds {len(cats)} {'MVTec' if layout == 'mvtec' else 'VisA'} categories "
                           f"({', '.join(cats)}); pass category=")
    return root / cats[0], root


def _read_mvtec(root: Path, category: str | None) -> DatasetSplit:
    cat_dir, data_root = _category_dir(root, category, "mvtec", _is_mvtec_category(root), root,
                                       "no category folder with train/good found")
    name = f"mvtec:{cat_dir.name}"
    train_dir = cat_dir / "train" / "good"
    if not train_dir.is_dir():
        raise _wrong_layout(cat_dir, "mvtec", "missing folder train/good")
    train = [Sample(str(p), UNKNOWN, None, "good") for p in _images_in(train_dir)]

    test: list[Sample] = []
    test_dir = cat_dir / "test"
    if test_dir.is_dir():
        for defect_dir in _subdirs(test_dir):
            defect = defect_dir.name
            for p in _images_in(defect_dir):
                if defect == "good":
                    test.append(Sample(str(p), GOOD, None, "good"))
                    continue
                gt_dir = cat_dir / "ground_truth" / defect
                mask = _find_mask(gt_dir, p.stem)
                if mask is None:
                    raise MissingPathError(
                        f"{name}: mask missing for anomalous image {p}: expected "
                        f"{gt_dir / (p.stem + '_mask.png')}")
                test.append(Sample(str(p), ANOMALOUS, str(mask), defect))
    return _require_train(DatasetSplit(name, str(data_root), train, test), train_dir)


# ----------------------------------------------------------------------------- visa
def _read_visa_csv(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in VISA_COLUMNS if c not in header]
        if missing:
            raise DatasetError(f"{csv_path}: expected columns {','.join(VISA_COLUMNS)}, "
                               f"got {','.join(header) or 'no header'} (missing {', '.join(missing)})")
        rows = []
        for row in reader:
            rows.append({k.strip(): (v or "").strip() for k, v in row.items() if k is not None})
    return rows


def _visa_defect_names(root: Path, category: str) -> dict[str, str]:
    """image path (relative to root, posix) -> defect label from image_anno.csv, if present."""
    anno = root / category / "image_anno.csv"
    if not anno.is_file():
        return {}
    names: dict[str, str] = {}
    with open(anno, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            image = (row.get("image") or "").strip()
            label = (row.get("label") or "").strip()
            if image and label:
                names[Path(image).as_posix()] = label
    return names


def _visa_file(root: Path, rel: str, what: str, name: str) -> Path:
    p = Path(os.path.normpath(root / rel))
    if not p.is_file():
        raise MissingPathError(f"{name}: {what} listed in the split file does not exist: {p}")
    return p


def _read_visa(root: Path, category: str | None) -> DatasetSplit:
    csv_path = root / "split_csv" / "1cls.csv"
    if csv_path.is_file():
        return _read_visa_csv_split(root, csv_path, category)
    return _read_visa_raw(root, category)


def _read_visa_csv_split(root: Path, csv_path: Path, category: str | None) -> DatasetSplit:
    rows = _read_visa_csv(csv_path)
    objects = sorted({r["object"] for r in rows})
    if category is None:
        if len(objects) != 1:
            raise DatasetError(f"{csv_path} lists {len(objects)} objects ({', '.join(objects)}); "
                               "pass category=")
        category = objects[0]
    if category not in objects:
        raise _unknown_category(root, category, "visa", objects)
    name = f"visa:{category}"
    defect_names = _visa_defect_names(root, category)
    train: list[Sample] = []
    test: list[Sample] = []
    for row in rows:
        if row["object"] != category:
            continue
        image = _visa_file(root, row["image"], "image", name)
        label = row["label"].lower()
        if label not in ("normal", "anomaly"):
            raise DatasetError(f"{csv_path}: label must be 'normal' or 'anomaly', got {row['label']!r} "
                               f"for {row['image']}")
        if row["split"] == "train":
            defect = "good" if label == "normal" else defect_names.get(Path(row["image"]).as_posix(), "anomaly")
            train.append(Sample(str(image), UNKNOWN, None, defect))
        elif row["split"] == "test":
            if label == "normal":
                test.append(Sample(str(image), GOOD, None, "good"))
            else:
                if not row["mask"]:
                    raise MissingPathError(f"{name}: mask missing for anomalous image {image} "
                                           f"(empty mask column in {csv_path})")
                mask = _visa_file(root, row["mask"], "mask", name)
                defect = defect_names.get(Path(row["image"]).as_posix(), "anomaly")
                test.append(Sample(str(image), ANOMALOUS, str(mask), defect))
        else:
            raise DatasetError(f"{csv_path}: split must be 'train' or 'test', got {row['split']!r} "
                               f"for {row['image']}")
    return _require_train(DatasetSplit(name, str(root), train, test), csv_path)


def _read_visa_raw(root: Path, category: str | None) -> DatasetSplit:
    cat_dir, data_root = _category_dir(root, category, "visa", _is_visa_category(root), root.parent,
                                       "no split_csv/1cls.csv and no <category>/Data/Images")
    name = f"visa:{cat_dir.name}"
    images_dir = cat_dir / "Data" / "Images"
    if not images_dir.is_dir():
        raise _wrong_layout(cat_dir, "visa", "missing folder Data/Images")
    normal_dir, anomaly_dir = images_dir / "Normal", images_dir / "Anomaly"
    normals = _images_in(normal_dir) if normal_dir.is_dir() else []
    anomalies = _images_in(anomaly_dir) if anomaly_dir.is_dir() else []
    defect_names = _visa_defect_names(data_root, cat_dir.name)
    mask_dir = cat_dir / "Data" / "Masks" / "Anomaly"

    test_anom: list[Sample] = []
    for p in anomalies:
        mask = mask_dir / f"{p.stem}.png"
        if not mask.is_file():
            raise MissingPathError(f"{name}: mask missing for anomalous image {p}: expected {mask}")
        rel = p.relative_to(data_root).as_posix()
        test_anom.append(Sample(str(p), ANOMALOUS, str(mask), defect_names.get(rel, "anomaly")))

    # All anomalies + as many normals (never more than half of them) go to test; seeded.
    n_test_normal = min(len(anomalies), len(normals) // 2)
    order = np.random.default_rng(VISA_RAW_SPLIT_SEED).permutation(len(normals))
    test_idx = set(order[:n_test_normal].tolist())
    train = [Sample(str(p), UNKNOWN, None, "good") for i, p in enumerate(normals) if i not in test_idx]
    test_good = [Sample(str(p), GOOD, None, "good") for i, p in enumerate(normals) if i in test_idx]
    return _require_train(DatasetSplit(name, str(data_root), train, test_good + test_anom), normal_dir)


# ----------------------------------------------------------------------------- folder
def _read_folder(root: Path, category: str | None) -> DatasetSplit:
    folder = root
    if category is not None:
        folder = root / category
        if not folder.is_dir():
            raise _unknown_category(root, category, "folder", list_categories(root, "folder"))
    guess = guess_layout(folder)
    if guess in ("mvtec", "visa"):
        # Reading an MVTec/VisA tree as a flat folder would train on test images and masks.
        raise DatasetError(f"{folder} looks like the {guess!r} layout (it has its test images and "
                           f"masks in it); pass layout={guess!r} instead of 'folder'")
    train = [Sample(str(p), UNKNOWN, None, "unknown") for p in _images_under(folder)]
    split = DatasetSplit(f"folder:{folder.name}", str(root), train, [])
    if not train:
        raise DatasetError(f"{split.name}: the training set is empty: no "
                           f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} files under {folder}")
    return split
