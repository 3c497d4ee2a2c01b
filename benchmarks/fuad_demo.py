"""A FUAD benchmark set with *recurring* defect kinds, in MVTec layout (for benchmarks/cdd_accuracy.py).

Why a separate set from the product's demo: to show what CDD is for, the images injected into
training by the noise protocol must come from the same defect distribution as the test
defects (a real line produces the same few kinds of defects again and again), the test set
must be large (hundreds of images: the standard error of image AUROC at 50 images is ~0.05),
and test crops must never overlap training crops. So:

- each category is one ``skimage.data`` texture (brick, grass, gravel: real photographs that
  load offline) or a seeded procedural one (concrete, :func:`_concrete`); the top half of the
  texture is the only source of training crops and the bottom half the only source of test
  crops (disjoint pixels), crops are 128x128 at random positions with random flips;
- a category has three defect kinds, each with a narrow parameter range so that it recurs:
  ``scratch`` (a bright line of fixed-ish angle and length), ``hole`` (a dark disk with a soft
  rim), ``paste`` (a patch cut from another photograph, ``skimage.data.moon``);
- ``test/<kind>/`` holds ``n_test_anomalous / 3`` images per kind with masks in
  ``ground_truth/<kind>/``; ``test/good`` ``n_test_good``; ``train/good`` ``n_train``.

The noise protocol (cdd_engine.data.inject_noise) then moves test anomalies into training.
Everything is drawn from numpy's default_rng(seed) and the category name: the same call writes
the same files.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = ("brick", "grass", "gravel", "concrete")
KINDS = ("scratch", "hole", "paste")
CROP = 128


def _concrete(size: int = 512, seed: int = 7) -> np.ndarray:
    """A stochastic, fine-grained surface (cast concrete): noise summed over four scales plus
    sparse dark pores. Unlike brick it has no period a student could lean on, unlike grass its
    contrast is low enough that the defects stand out to the teacher."""
    from scipy.ndimage import gaussian_filter
    rng = np.random.default_rng(seed)
    img = sum(w * gaussian_filter(rng.standard_normal((size, size)), s, mode="wrap")
              for s, w in ((1.0, 0.5), (3.0, 1.0), (8.0, 2.0), (24.0, 4.0)))
    img = 135.0 + 22.0 * (img - img.mean()) / img.std()
    for cy, cx, r in zip(*(rng.uniform(0, size, 400), rng.uniform(0, size, 400), rng.uniform(1.0, 2.5, 400))):
        y0, y1, x0, x1 = (min(max(int(v), 0), size) for v in (cy - 4, cy + 5, cx - 4, cx + 5))  # 9x9 window
        yy, xx = np.mgrid[y0:y1, x0:x1]
        img[y0:y1, x0:x1] -= 40.0 * np.clip(r - np.hypot(yy - cy, xx - cx) + 0.5, 0, 1)
    return np.clip(img, 0, 255).astype(np.float32)


PROCEDURAL = {"concrete": _concrete}  # generated here (seeded), not loaded from skimage.data


def _texture(name: str) -> np.ndarray:
    if name in PROCEDURAL:
        return PROCEDURAL[name]()
    import skimage.data
    img = getattr(skimage.data, name)()
    if img.ndim == 3:
        img = img[..., :3].mean(2)
    return img.astype(np.float32)


def _crop(src: np.ndarray, rng: np.random.Generator, rows: tuple[int, int]) -> np.ndarray:
    r0, r1 = rows
    y = int(rng.integers(r0, r1 - CROP + 1))
    x = int(rng.integers(0, src.shape[1] - CROP + 1))
    c = src[y:y + CROP, x:x + CROP].copy()
    if rng.random() < 0.5:
        c = c[:, ::-1]
    if rng.random() < 0.5:
        c = c[::-1, :]
    return np.ascontiguousarray(c)


def _soft_disk(cy: float, cx: float, r: float, soft: float = 1.5) -> np.ndarray:
    yy, xx = np.mgrid[:CROP, :CROP].astype(np.float32)
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    return np.clip((r - d) / soft + 0.5, 0.0, 1.0)


def _defect(img: np.ndarray, kind: str, rng: np.random.Generator, paste_src: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """-> (defective image float32 0..255, bool mask). Parameters vary little: the kinds recur."""
    margin = 24
    cy, cx = (float(v) for v in rng.uniform(margin, CROP - margin, 2))
    if kind == "scratch":
        ang = np.deg2rad(30.0 + rng.uniform(-10, 10))
        length = rng.uniform(40, 56)
        yy, xx = np.mgrid[:CROP, :CROP].astype(np.float32)
        dy, dx = np.sin(ang), np.cos(ang)
        t = (yy - cy) * dy + (xx - cx) * dx                  # along the line
        n = np.abs(-(yy - cy) * dx + (xx - cx) * dy)          # across
        alpha = np.clip(1.6 - n, 0, 1) * (np.abs(t) <= length / 2)
        out = img * (1 - alpha) + alpha * np.clip(img + 90.0, 0, 255)
    elif kind == "hole":
        alpha = _soft_disk(cy, cx, rng.uniform(6, 9))
        out = img * (1 - alpha) + alpha * rng.uniform(15, 35)
    elif kind == "paste":
        s = int(rng.integers(20, 27))
        y = int(rng.integers(0, paste_src.shape[0] - s))
        x = int(rng.integers(0, paste_src.shape[1] - s))
        patch = paste_src[y:y + s, x:x + s]
        alpha = np.zeros((CROP, CROP), np.float32)
        y0, x0 = int(cy - s / 2), int(cx - s / 2)
        out = img.copy()
        out[y0:y0 + s, x0:x0 + s] = patch
        alpha[y0:y0 + s, x0:x0 + s] = 1.0
    else:
        raise ValueError(f"unknown defect kind {kind!r}; known: {KINDS}")
    return out, alpha > 0.25


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8)).save(path)


def make_fuad_demo(root: str | os.PathLike, categories=CATEGORIES, n_train: int = 200, n_test_good: int = 200,
                   n_test_anomalous: int = 300, seed: int = 0) -> Path:
    """Write the set (MVTec layout, 8-bit gray PNGs of 128x128) under ``root``; returns the root.

    Skips a category whose folder is already complete (same counts), so reruns are cheap.
    """
    root = Path(root)
    paste_src = _texture("moon")
    for cat in categories:
        if cat not in CATEGORIES:
            raise ValueError(f"unknown category {cat!r}; choose from {CATEGORIES}")
        cdir = root / cat
        per_kind = n_test_anomalous // len(KINDS)
        done = cdir / ".complete"
        want = f"{n_train} {n_test_good} {per_kind} {seed}"
        if done.is_file() and done.read_text() == want:
            continue
        src = _texture(cat)
        half = src.shape[0] // 2
        rng = np.random.default_rng([seed, CATEGORIES.index(cat)])
        for i in range(n_train):
            _save(_crop(src, rng, (0, half)), cdir / "train" / "good" / f"{i:03d}.png")
        for i in range(n_test_good):
            _save(_crop(src, rng, (half, src.shape[0])), cdir / "test" / "good" / f"{i:03d}.png")
        for kind in KINDS:
            for i in range(per_kind):
                img, mask = _defect(_crop(src, rng, (half, src.shape[0])), kind, rng, paste_src)
                _save(img, cdir / "test" / kind / f"{i:03d}.png")
                _save(mask.astype(np.float32) * 255, cdir / "ground_truth" / kind / f"{i:03d}_mask.png")
        done.write_text(want)
    return root


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(make_fuad_demo(a.root, seed=a.seed))
