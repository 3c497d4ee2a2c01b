"""Heat-map overlays of anomaly maps on test images (PNG, written with Pillow).

The colormap is a hand-written "jet"-like ramp (dark blue -> cyan -> yellow -> dark red), so
matplotlib is not needed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

# (position, (r, g, b)) anchors of the ramp, linearly interpolated.
_JET = ((0.0, (0.0, 0.0, 0.5)), (0.11, (0.0, 0.0, 1.0)), (0.35, (0.0, 1.0, 1.0)),
        (0.65, (1.0, 1.0, 0.0)), (0.89, (1.0, 0.0, 0.0)), (1.0, (0.5, 0.0, 0.0)))
CONTOUR_RGB = (0, 255, 0)  # ground-truth outline


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape, clipped) -> uint8 RGB of shape (..., 3)."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    pos = [p for p, _ in _JET]
    rgb = np.stack([np.interp(v, pos, [c[ch] for _, c in _JET]) for ch in range(3)], axis=-1)
    return np.round(rgb * 255.0).astype(np.uint8)


def overlay(image: np.ndarray, amap: np.ndarray, vmin: float, vmax: float, alpha: float = 0.5) -> np.ndarray:
    """Blend a colour-mapped (H, W) anomaly map over a uint8 (H, W, 3) image -> uint8 (H, W, 3).

    ``vmin``/``vmax`` fix the colour scale (use one range for a whole test set so images compare).
    """
    if image.shape[:2] != amap.shape or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"need image (H,W,3) and map (H,W) of the same size, got {image.shape} and {amap.shape}")
    if not vmax > vmin:
        raise ValueError(f"need vmax > vmin, got vmin {vmin}, vmax {vmax}")
    heat = colormap((amap - vmin) / (vmax - vmin)).astype(np.float64)
    out = (1.0 - alpha) * image.astype(np.float64) + alpha * heat
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a binary (H, W) mask (mask pixels with a 4-neighbour outside it)."""
    m = np.asarray(mask, dtype=bool)
    p = np.pad(m, 1, mode="constant", constant_values=False)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~inner


def denormalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised float (3, H, W) -> uint8 (H, W, 3)."""
    x = image * np.asarray(std, dtype=np.float32)[:, None, None] + np.asarray(mean, dtype=np.float32)[:, None, None]
    return np.clip(np.round(x.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)


def overlay_panel(image: np.ndarray, amap: np.ndarray, mask: np.ndarray | None, vmin: float, vmax: float
                  ) -> np.ndarray:
    """[image with ground-truth outline | heat-map overlay] side by side -> uint8 (H, 2W, 3)."""
    left = image.copy()
    if mask is not None and mask.any():
        left[outline(mask)] = CONTOUR_RGB
    return np.concatenate([left, overlay(image, amap, vmin, vmax)], axis=1)


def save_overlays(out_dir: str | Path, dataset, maps: np.ndarray, scores: np.ndarray,
                  mean: Sequence[float], std: Sequence[float]) -> list[Path]:
    """One PNG per test image: ``out_dir/<defect_type>/<stem>.png``, colours on one scale for
    the whole set (min..max of all maps). Also writes ``out_dir/scores.csv``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vmin, vmax = float(maps.min()), float(maps.max())
    if not vmax > vmin:
        vmax = vmin + 1e-12
    written, rows = [], ["path,defect_type,label,score"]
    for i, sample in enumerate(dataset.samples):
        item = dataset[i]
        image = denormalize(item["image"].numpy(), mean, std)
        mask = item["mask"][0].numpy() > 0.5 if "mask" in item else None
        panel = overlay_panel(image, maps[i], mask, vmin, vmax)
        path = out_dir / sample.defect_type / (Path(sample.path).stem + ".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(panel).save(path)
        written.append(path)
        rows.append(f"{path.relative_to(out_dir).as_posix()},{sample.defect_type},{sample.label},{scores[i]:.6g}")
    (out_dir / "scores.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return written
