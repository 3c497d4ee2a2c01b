"""Offline demo data in the MVTec AD layout: real textures, synthetic defects, exact masks.

Textures are the real photographs that ship with scikit-image (``skimage.data.brick``,
``grass`` and ``gravel``, 512x512 grayscale), so no download is needed. Other
``skimage.data`` images were judged by eye and left out: they are scenes or objects, not
stationary textures (the wood table in ``coffee`` is a 120x260 strip with its own real
scratches, highlights and a lighting gradient).

Train/test separation. Each texture is cut into four quadrants; the top-left and
bottom-right quadrants are the *train region*, the other two the *test region*, so
both see the texture's spatial variation (the brick photo's perspective, the grass
photo's leaves). Every training crop lies inside one train quadrant and every test crop
(good or defective) inside one test quadrant, so no test image shares a pixel with a
training image. The crop side `crop_size` is in texture pixels; a quadrant must hold it
1.25 times (room for varied positions), otherwise every quadrant is magnified on its own
(bicubic, so no pixel of a neighbouring quadrant leaks in) until it does. Each crop then
gets one of the 8 dihedral transforms, is resized to `image_size`, gets its defect (test
images) and a mild brightness/contrast jitter. The crop boxes, in the coordinates of the
original texture, are written to ``<category>/crops.json`` with each image's transform
and defect parameters.

Defects (folders ``test/<kind>/``, masks ``ground_truth/<kind>/<stem>_mask.png``), drawn
at the output resolution with sizes relative to the image side S, every kind from one
fixed parameter distribution (so training contamination drawn from the test anomalies
repeats the test defects' distribution, as on a real line):

=========  ===================================================================================
scratch    thin curved line (quadratic Bezier), length 0.25-0.5 S, width 1.2-2.4 px at S=256,
           brighter or darker by 45-80 grey levels
stain      soft-edged irregular blob, radius 0.05-0.10 S, darker (x0.55-0.8) or lighter
           (+25-45 % towards white) with patchy strength; tinted per channel for RGB textures
hole       dark irregular region (grey 10-40), radius 0.03-0.06 S, with a rim lit from one side
patch      irregular piece of another texture, radius 0.06-0.11 S, at the same pixel scale,
           its mean matched to the surroundings and its contrast to the image (the structure
           differs, not the brightness)
shift      sharp-edged irregular region, radius 0.06-0.12 S, intensity x0.7-0.85 or x1.15-1.35
           (per-channel gains for RGB textures)
=========  ===================================================================================

A mask pixel is defect where the defect's coverage is >= 0.5 (edges are antialiased).
Everything is drawn from numpy's PCG64 seeded per image from (seed, category, image), so
the same arguments give byte-identical files.
"""
from __future__ import annotations

import json
import math
import shutil
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

DEMO_VERSION = 1
GENERATOR = "cdd_engine.data.demo"
DEMO_CATEGORIES: tuple[str, ...] = ("brick", "grass", "gravel")
DEFECT_KINDS: tuple[str, ...] = ("scratch", "stain", "hole", "patch", "shift")
ROOM = 1.25  # a region side must be >= 1.25 * crop side so crop positions vary
JITTER_CONTRAST = (0.92, 1.08)  # mild lighting change between shots
JITTER_BRIGHTNESS = (-8.0, 8.0)  # grey levels

_SPLIT_ID = {"train": 0, "good": 1, "defect": 2}
_TRAIN_QUADRANTS = ((0, 0), (1, 1))  # (row, col) of top-left and bottom-right
_TEST_QUADRANTS = ((0, 1), (1, 0))


# ----------------------------------------------------------------------------- textures
def _load_texture(name: str) -> np.ndarray:
    """skimage.data texture -> float32 (H, W, C), C = 1 or 3, values 0..255."""
    from skimage import data as skdata  # imported here: only the demo needs scikit-image

    if name not in DEMO_CATEGORIES:
        raise ValueError(f"unknown demo category {name!r}; available: {', '.join(DEMO_CATEGORIES)}")
    img = np.asarray(getattr(skdata, name)())
    if img.ndim == 2:
        img = img[:, :, None]
    return img[:, :, :3].astype(np.float32)


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """float32 (h0, w0, C) -> float32 (h, w, C), bicubic (Pillow; antialiased when shrinking)."""
    if img.shape[:2] == (h, w):
        return img.copy()
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(img[:, :, c]), mode="F")
                        .resize((w, h), Image.Resampling.BICUBIC)) for c in range(img.shape[2])]
    return np.stack(chans, axis=2)


def _dihedral(img: np.ndarray, k: int) -> np.ndarray:
    out = np.rot90(img, k % 4, axes=(0, 1))
    return out[:, ::-1] if k >= 4 else out


class _Regions:
    """The four quadrants of a texture, each magnified on its own when the crop needs room."""

    def __init__(self, texture: np.ndarray, crop_size: int) -> None:
        h, w = texture.shape[:2]
        self.hh, self.hw = h // 2, w // 2
        side = min(self.hh, self.hw)
        want = max(1.0, ROOM * crop_size / side)
        qh, qw = math.ceil(self.hh * want), math.ceil(self.hw * want)
        self.scale = qh / self.hh  # the magnification actually applied (the sizes are whole pixels)
        self.crop = crop_size
        self.quads: dict[tuple[int, int], np.ndarray] = {}
        for r in range(2):
            for c in range(2):
                q = texture[r * self.hh:(r + 1) * self.hh, c * self.hw:(c + 1) * self.hw]
                self.quads[(r, c)] = _resize(q, qh, qw)

    def box(self, quad: tuple[int, int]) -> list[float]:
        r, c = quad
        return [r * self.hh, c * self.hw, (r + 1) * self.hh, (c + 1) * self.hw]

    def crop_at(self, rng: np.random.Generator, quads) -> tuple[np.ndarray, list[float]]:
        """A crop from a random quadrant of `quads` -> (crop (c,c,C), box in texture pixels)."""
        quad = quads[int(rng.integers(len(quads)))]
        q = self.quads[quad]
        y = int(rng.integers(q.shape[0] - self.crop + 1))
        x = int(rng.integers(q.shape[1] - self.crop + 1))
        crop = q[y:y + self.crop, x:x + self.crop]
        r, c = quad
        sy, sx = q.shape[0] / self.hh, q.shape[1] / self.hw  # exact, after rounding the magnified size
        box = [r * self.hh + y / sy, c * self.hw + x / sx,
               r * self.hh + (y + self.crop) / sy, c * self.hw + (x + self.crop) / sx]
        return crop, [round(v, 4) for v in box]


# ----------------------------------------------------------------------------- shapes
def _blob_sdf(rng: np.random.Generator, size: int, radius: float, margin: float = 0.0) -> tuple[np.ndarray, dict]:
    """Signed distance (px, > 0 inside) to a random irregular blob placed inside the image.

    r(theta) = radius * (1 + sum_k a_k cos(k theta + phi_k)), k = 2..5, stretched by an
    aspect ratio 1-1.6 and rotated; `margin` extra pixels (a rim) are kept inside the image.
    """
    amps = np.concatenate([rng.uniform(0, 0.18, 2), rng.uniform(0, 0.07, 2)])
    phases = rng.uniform(0, 2 * np.pi, 4)
    aspect = rng.uniform(1.0, 1.6)
    rot = rng.uniform(0, np.pi)
    extent = radius * (1 + amps.sum()) * math.sqrt(aspect) + margin + 1
    lo, hi = min(extent, size / 2), max(size - extent, size / 2)
    cy, cx = rng.uniform(lo, hi), rng.uniform(lo, hi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    u = (dx * math.cos(rot) + dy * math.sin(rot)) / math.sqrt(aspect)
    v = (-dx * math.sin(rot) + dy * math.cos(rot)) * math.sqrt(aspect)
    theta = np.arctan2(v, u)
    rad = radius * (1 + sum(a * np.cos(k * theta + p) for k, a, p in zip(range(2, 6), amps, phases)))
    sdf = rad - np.hypot(u, v)
    params = {"center": [round(float(cy), 2), round(float(cx), 2)], "radius": round(float(radius), 2),
              "aspect": round(float(aspect), 3)}
    return sdf.astype(np.float32), params


def _coverage(sdf: np.ndarray) -> np.ndarray:
    """Antialiased coverage in [0,1] from a signed distance in pixels (0.5 on the boundary)."""
    return np.clip(sdf + 0.5, 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0,1]: a cells x cells random grid, bicubically upsampled."""
    grid = rng.uniform(0, 1, (cells, cells, 1)).astype(np.float32)
    return np.clip(_resize(grid, size, size)[:, :, 0], 0, 1)


# ----------------------------------------------------------------------------- defects
def _scratch(img, rng, size, other):
    unit = size / 256.0
    length = rng.uniform(0.25, 0.5) * size
    width = max(1.0, rng.uniform(1.2, 2.4) * unit)
    delta = rng.uniform(45, 80) * (1 if rng.uniform() < 0.6 else -1)
    m = 0.08 * size
    for _ in range(100):  # both ends inside the image
        p0 = rng.uniform(m, size - m, 2)
        ang = rng.uniform(0, 2 * np.pi)
        p2 = p0 + length * np.array([math.sin(ang), math.cos(ang)])
        if np.all(p2 >= m) and np.all(p2 <= size - m):
            break
    bend = rng.uniform(-0.3, 0.3) * length
    normal = np.array([math.cos(ang), -math.sin(ang)])
    p1 = (p0 + p2) / 2 + bend * normal
    t = np.linspace(0, 1, 33)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2  # (33, 2) polyline, (y, x)
    # exact distance of every pixel of the bounding box to the polyline
    y0, x0 = np.floor(pts.min(0) - width - 2).astype(int).clip(0, size)
    y1, x1 = np.ceil(pts.max(0) + width + 2).astype(int).clip(0, size)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    pix = np.stack([yy.ravel(), xx.ravel()], 1)[:, None, :]  # (P,1,2)
    a, b = pts[:-1][None], pts[1:][None]
    ab = b - a
    tt = np.clip(((pix - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-9), 0, 1)
    dist = np.linalg.norm(pix - (a + tt[..., None] * ab), axis=-1).min(1).reshape(yy.shape)
    sdf = np.full((size, size), -1e3, np.float32)
    sdf[y0:y1, x0:x1] = width / 2 - dist
    cov = _coverage(sdf)
    out = img + cov[:, :, None] * delta
    params = {"length": round(float(length), 2), "width": round(float(width), 3), "delta": round(float(delta), 2)}
    return out, sdf >= 0, params


def _stain(img, rng, size, other):
    radius = rng.uniform(0.05, 0.10) * size
    sdf, params = _blob_sdf(rng, size, radius)
    soft = max(1.0, 0.2 * radius)  # edge softness (px)
    cov = np.clip(0.5 + sdf / (2 * soft), 0, 1)  # 0.5 on the blob boundary
    strength = cov * (0.7 + 0.3 * _smooth_noise(rng, size, 6))  # patchy, like a dried liquid
    c = img.shape[2]
    tint = rng.uniform(0.85, 1.0, c) if c == 3 else np.ones(1)
    if rng.uniform() < 0.7:
        factor = rng.uniform(0.55, 0.8)
        out = img * (1 - strength[:, :, None] * (1 - factor * tint))
        params.update(tone="dark", factor=round(float(factor), 3))
    else:
        amount = rng.uniform(0.25, 0.45)
        out = img + strength[:, :, None] * amount * tint * (255 - img)
        params.update(tone="light", amount=round(float(amount), 3))
    return out, sdf >= 0, params


def _hole(img, rng, size, other):
    radius = rng.uniform(0.03, 0.06) * size
    rim = max(1.5, rng.uniform(0.2, 0.35) * radius)
    sdf, params = _blob_sdf(rng, size, radius, margin=rim)
    inside = _coverage(sdf)
    outer = _coverage(sdf + rim)
    ring = outer - inside
    cy, cx = params["center"]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    light = rng.uniform(0, 2 * np.pi)
    lit = 0.5 + 0.5 * np.cos(np.arctan2(yy - cy, xx - cx) - light)  # rim catches light on one side
    rim_delta = rng.uniform(25, 50)
    dark = rng.uniform(10, 40)
    depth = np.clip(sdf / max(radius, 1.0), 0, 1)  # 0 at the edge, 1 deep inside
    floor = dark + 15 * (1 - depth) + rng.normal(0, 3.0, (size, size)).astype(np.float32)  # walls lighter
    out = img + (ring * rim_delta * (lit - 0.3))[:, :, None]
    out = out * (1 - inside[:, :, None]) + (inside * floor)[:, :, None]
    params.update(rim=round(float(rim), 2), dark=round(float(dark), 2), rim_delta=round(float(rim_delta), 2))
    return out, (sdf + rim) >= 0, params


def _patch(img, rng, size, other):
    name, texture, crop_px = other[int(rng.integers(len(other)))]
    radius = rng.uniform(0.06, 0.11) * size
    sdf, params = _blob_sdf(rng, size, radius)
    mask = sdf >= 0
    # a piece of the other texture at the same pixel scale as the image
    src = max(8, int(round(crop_px)))  # the image shows crop_px texture pixels across
    y = int(rng.integers(texture.shape[0] - src + 1))
    x = int(rng.integers(texture.shape[1] - src + 1))
    piece = _resize(_dihedral(texture[y:y + src, x:x + src], int(rng.integers(8))), size, size)
    if piece.shape[2] != img.shape[2]:
        piece = np.repeat(piece.mean(2, keepdims=True), img.shape[2], axis=2)
    # mean of the surroundings, contrast of the image as a whole: matching the local contrast
    # too would flatten the piece to nothing on a plain spot (a brick face)
    bg, pc = img[mask], piece[mask]
    piece = (piece - pc.mean(0)) / np.maximum(pc.std(0), 1e-3) * img.reshape(-1, img.shape[2]).std(0) + bg.mean(0)
    cov = _coverage(sdf)[:, :, None]
    out = img * (1 - cov) + piece * cov
    params.update(source=name, source_box=[y, x, y + src, x + src])
    return out, mask, params


def _shift(img, rng, size, other):
    radius = rng.uniform(0.06, 0.12) * size
    sdf, params = _blob_sdf(rng, size, radius)
    gain = rng.uniform(0.7, 0.85) if rng.uniform() < 0.5 else rng.uniform(1.15, 1.35)
    c = img.shape[2]
    gains = gain * (rng.uniform(0.9, 1.1, c) if c == 3 else np.ones(1))
    cov = _coverage(sdf)[:, :, None]
    out = img * (1 + cov * (gains - 1))
    params.update(gain=round(float(gain), 3))
    return out, sdf >= 0, params


_DEFECTS = {"scratch": _scratch, "stain": _stain, "hole": _hole, "patch": _patch, "shift": _shift}


# ----------------------------------------------------------------------------- generator
def _rng(seed: int, category: str, split: str, index: int) -> np.random.Generator:
    key = [seed, zlib.crc32(category.encode()), _SPLIT_ID[split], index]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(key)))


def _jitter(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Lighting change between shots: contrast about mid-grey 128, then a brightness offset.

    The pivot is a constant (not the image mean) so a defect does not shift the lighting of
    the rest of its image; the exact factors go to crops.json."""
    contrast = float(rng.uniform(*JITTER_CONTRAST))
    brightness = float(rng.uniform(*JITTER_BRIGHTNESS))
    out = (img - 128.0) * contrast + 128.0 + brightness
    return out, {"contrast": contrast, "brightness": brightness}


def _save(img: np.ndarray, path: Path) -> None:
    arr = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    arr = arr[:, :, 0] if arr.shape[2] == 1 else arr
    Image.fromarray(arr).save(path, format="PNG", compress_level=1)  # level 1: 3x faster than 6, ~10% larger


def _check_int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    return int(v)


def make_demo_dataset(out_dir, categories: Sequence[str] = DEMO_CATEGORIES, image_size: int = 256,
                      n_train: int = 200, n_test_good: int = 100, n_test_defect: int = 100,
                      seed: int = 0, defect_kinds: Sequence[str] | None = None,
                      crop_size: int = 192) -> Path:
    """Write a demo data set in MVTec layout under `out_dir` and return its absolute path.

    image_size: side S of the square output images. crop_size: side of the texture crop in
    texture pixels (magnified regions when it does not fit, see the module docstring).
    n_test_defect images are spread over `defect_kinds` (default all of DEFECT_KINDS) in
    turn. Writes ``dataset.json`` (generator version, the arguments of every demo category in
    the folder, so calls for one category at a time accumulate) at the root and
    ``crops.json`` per category. A category folder that exists and was not written by this
    generator is an error; one that was is replaced.
    """
    if isinstance(categories, str):
        categories = (categories,)
    categories = tuple(categories)
    unknown = [c for c in categories if c not in DEMO_CATEGORIES]
    if not categories or unknown or len(set(categories)) != len(categories):
        raise ValueError(f"categories must be distinct names from {DEMO_CATEGORIES}, got {categories!r}")
    kinds = DEFECT_KINDS if defect_kinds is None else tuple(defect_kinds)
    bad = [k for k in kinds if k not in DEFECT_KINDS]
    if not kinds or bad or len(set(kinds)) != len(kinds):
        raise ValueError(f"defect_kinds must be distinct names from {DEFECT_KINDS}, got {defect_kinds!r}")
    image_size = _check_int("image_size", image_size, 32)
    n_train = _check_int("n_train", n_train, 1)
    n_test_good = _check_int("n_test_good", n_test_good, 0)
    n_test_defect = _check_int("n_test_defect", n_test_defect, 0)
    crop_size = _check_int("crop_size", crop_size, 16)
    seed = _check_int("seed", seed, 0)

    root = Path(out_dir).expanduser().absolute()
    for cat in categories:
        d = root / cat
        if d.exists() and not (d / "crops.json").is_file():
            raise ValueError(f"{d} exists and was not written by the demo generator; refusing to overwrite it")
    root.mkdir(parents=True, exist_ok=True)

    textures = {name: _load_texture(name) for name in DEMO_CATEGORIES}
    import skimage

    args = {"image_size": image_size, "n_train": n_train, "n_test_good": n_test_good,
            "n_test_defect": n_test_defect, "seed": seed, "defect_kinds": list(kinds), "crop_size": crop_size}
    info = _previous_categories(root)
    for cat in categories:
        info[cat] = {"arguments": args,
                     "texture": f"skimage.data.{cat} (scikit-image {skimage.__version__})",
                     **_make_category(root, cat, textures, image_size, n_train, n_test_good,
                                      n_test_defect, seed, kinds, crop_size)}
    meta = {
        "generator": GENERATOR,
        "version": DEMO_VERSION,
        "layout": "mvtec",
        "arguments": {"categories": list(categories), **args},  # of the latest call
        "categories": dict(sorted(info.items())),  # every demo category in the folder, with its own arguments
        "crop_boxes": "<category>/crops.json",
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return root


def _previous_categories(root: Path) -> dict:
    """Entries of an earlier dataset.json of this generator whose folders still exist."""
    try:
        old = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(old, dict) or old.get("generator") != GENERATOR or old.get("version") != DEMO_VERSION:
        return {}
    cats = old.get("categories")
    if not isinstance(cats, dict):
        return {}
    return {c: v for c, v in cats.items() if (root / c / "crops.json").is_file()}


def _make_category(root: Path, cat: str, textures: dict, size: int, n_train: int, n_good: int,
                   n_defect: int, seed: int, kinds: tuple[str, ...], crop_size: int) -> dict:
    cat_dir = root / cat
    if cat_dir.exists():
        shutil.rmtree(cat_dir)  # ours (checked above): start clean so no stale file survives
    regions = _Regions(textures[cat], crop_size)
    # textures for cut-and-paste defects: the others, at this category's pixel scale
    other = [(n, t, crop_size / regions.scale) for n, t in textures.items() if n != cat]
    (cat_dir / "train" / "good").mkdir(parents=True)
    (cat_dir / "test" / "good").mkdir(parents=True)
    records: dict[str, dict] = {}

    def crop_image(rng, quads):
        crop, box = regions.crop_at(rng, quads)
        k = int(rng.integers(8))
        img = _resize(np.ascontiguousarray(_dihedral(crop, k)), size, size)
        return img, {"box": box, "transform": k}

    for i in range(n_train):
        rng = _rng(seed, cat, "train", i)
        img, rec = crop_image(rng, _TRAIN_QUADRANTS)
        img, rec["jitter"] = _jitter(img, rng)
        rel = f"train/good/{i:03d}.png"
        _save(img, cat_dir / rel)
        records[rel] = {"region": "train", **rec}
    for i in range(n_good):
        rng = _rng(seed, cat, "good", i)
        img, rec = crop_image(rng, _TEST_QUADRANTS)
        img, rec["jitter"] = _jitter(img, rng)
        rel = f"test/good/{i:03d}.png"
        _save(img, cat_dir / rel)
        records[rel] = {"region": "test", **rec}
    counts = {k: 0 for k in kinds}
    for i in range(n_defect):
        kind = kinds[i % len(kinds)]
        j = counts[kind]
        counts[kind] += 1
        if j == 0:
            (cat_dir / "test" / kind).mkdir()
            (cat_dir / "ground_truth" / kind).mkdir(parents=True)
        rng = _rng(seed, cat, "defect", i)
        img, rec = crop_image(rng, _TEST_QUADRANTS)
        img, mask, params = _DEFECTS[kind](img, rng, size, other)
        img, rec["jitter"] = _jitter(img, rng)
        if not mask.any():  # placement keeps shapes inside the image; guard anyway
            raise RuntimeError(f"demo generator produced an empty {kind} mask ({cat}, image {i})")
        rel = f"test/{kind}/{j:03d}.png"
        _save(img, cat_dir / rel)
        Image.fromarray(mask.astype(np.uint8) * 255).save(
            cat_dir / "ground_truth" / kind / f"{j:03d}_mask.png", format="PNG", compress_level=1)
        records[rel] = {"region": "test", **rec, "defect": {"kind": kind, **params},
                        "mask_fraction": round(float(mask.mean()), 5)}
    h, w = textures[cat].shape[:2]
    sidecar = {
        "texture": cat, "texture_shape": [h, w], "crop_size": crop_size,
        "region_scale": round(regions.scale, 6),
        "regions": {"train": [regions.box(q) for q in _TRAIN_QUADRANTS],
                    "test": [regions.box(q) for q in _TEST_QUADRANTS]},
        "box_format": "[y0, x0, y1, x1] in pixels of the original texture, end exclusive",
        "images": records,
    }
    (cat_dir / "crops.json").write_text(json.dumps(sidecar, indent=1) + "\n", encoding="utf-8")
    return {"n_train": n_train, "n_test_good": n_good, "n_test_defect": dict(counts),
            "region_scale": round(regions.scale, 6)}
