"""Heat-map overlays of anomaly maps (PNG, drawn with Pillow) that an operator reads without help.

:func:`render_overlay` draws one picture: a title (the image's name), its score, the threshold
and the verdict (OK / DEFECT, coloured), the image (with the ground-truth outline where known)
beside the heat map, a colour bar with its numeric scale and the threshold marked on it, and a
line saying whether the colour scale is this image's own or shared by a set. :func:`contact_sheet`
puts the worst N of a set on one picture. Pictures are drawn at a bounded size (``MAX_SIDE``
on the long side of each panel), never at full resolution, so a 100-megapixel frame costs a few
tens of MB, not GBs (issue 11). Writers never overwrite a file this tool did not write
(:func:`claim_outputs`). What the pictures show, their names and the rules: docs/overlays.md.

The colormap is a hand-written "jet"-like ramp (dark blue -> cyan -> yellow -> dark red), so
matplotlib is not needed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .threshold import is_anomalous

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


# ------------------------------------------------------------------ bounded, labelled pictures
MAX_SIDE = 2048  # long side of a drawn panel: bounds memory whatever the frame size (issue 11)
MIN_SIDE = 320   # small (model-size) images are enlarged so the labels stay legible beside them
TILE = 256       # contact-sheet tile side
OK_RGB, DEFECT_RGB = (0, 140, 60), (210, 25, 25)
BACKGROUND, FOREGROUND, MUTED = (28, 28, 28), (245, 245, 245), (185, 185, 185)
_LUT = colormap(np.linspace(0.0, 1.0, 1024))  # colours by table lookup: no float RGB image is ever made


def display_size(h: int, w: int, max_side: int = MAX_SIDE, min_side: int = MIN_SIDE) -> tuple[int, int]:
    """(h, w) scaled, aspect kept, so the long side is at most ``max_side`` and at least ``min_side``."""
    if h < 1 or w < 1 or not 1 <= min_side <= max_side:
        raise ValueError(f"need a positive image size and 1 <= min_side <= max_side, got {h}x{w}, "
                         f"{min_side}, {max_side}")
    long = max(h, w)
    f = max_side / long if long > max_side else (min_side / long if long < min_side else 1.0)
    return max(1, round(h * f)), max(1, round(w * f))


def verdict(score: float, threshold: float | None) -> str | None:
    """"DEFECT" when threshold.is_anomalous (the engine's rule: above the threshold, or NaN/inf),
    "OK" otherwise, None without a threshold."""
    return None if threshold is None else ("DEFECT" if is_anomalous(score, threshold) else "OK")


def _resized_rgb(image: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """uint8 (H, W) or (H, W, 3) -> RGB image of ``size`` (h, w); shrinking is antialiased."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise ValueError(f"need a uint8 (H,W) or (H,W,3) image, got {a.dtype} {a.shape}")
    im = Image.fromarray(a)  # bytes stay bytes: at most one uint8 copy of a large frame
    if im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return im.convert("RGB")


def _resized_map(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) map of any size -> float32 (h, w) (bilinear, antialiased when shrinking)."""
    m = np.asarray(amap)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"need a 2-D anomaly map, got shape {m.shape}")
    im = Image.fromarray(m.astype(np.float32, copy=False))
    if im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.float32)


def _heat(m: np.ndarray, vmin: float, vmax: float) -> Image.Image:
    """Display-size float map -> colour-mapped RGB image (uint16 indices into the table)."""
    idx = (m - np.float32(vmin)) * np.float32((len(_LUT) - 1) / (vmax - vmin))
    np.nan_to_num(idx, copy=False, nan=0.0)
    np.clip(idx, 0, len(_LUT) - 1, out=idx)
    return Image.fromarray(_LUT[(idx + 0.5).astype(np.uint16)])


def _outline_image(mask: np.ndarray, size: tuple[int, int]) -> Image.Image | None:
    """Ground-truth outline at display size as an "L" paste mask (2-3 px thick), None if the mask is empty."""
    from PIL import ImageFilter
    m = np.asarray(mask).astype(bool)
    if not m.any():
        return None
    # bilinear then a cut at one half: a smooth outline when a model-size mask is enlarged
    big = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((size[1], size[0]), Image.Resampling.BILINEAR))
    edge = Image.fromarray(outline(big > 127).astype(np.uint8) * 255)
    return edge.filter(ImageFilter.MaxFilter(3 if max(size) < 900 else 5))


def _font(px: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def format_number(v: float, digits: int = 4) -> str:
    """A score or threshold as the overlays and the report print it."""
    return f"{v:.{digits}g}"


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    """``text`` cut from the left (keeping the file name) with "..." until it fits ``width``."""
    if draw.textlength(text, font=font) <= width:
        return text
    while len(text) > 1 and draw.textlength("..." + text, font=font) > width:
        text = text[1:]
    return "..." + text


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> list[str]:
    lines: list[str] = []
    for word in text.split(" "):
        if lines and draw.textlength(lines[-1] + " " + word, font=font) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def _badge(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font) -> float:
    """Verdict in white on red (DEFECT) or green (OK); returns its right edge."""
    x, y = xy
    l, t, r, b = draw.textbbox((x, y), text, font=font)
    p = max(3, (b - t) // 4)
    draw.rectangle((l - p, t - p, r + p, b + p), fill=DEFECT_RGB if text == "DEFECT" else OK_RGB)
    draw.text((x, y), text, font=font, fill=(255, 255, 255))
    return r + p


def _score_line(draw, xy, score: float | None, threshold: float | None, truth: str | None, font, small) -> None:
    x, y = xy
    if score is not None:
        shown = "none" if threshold is None else format_number(threshold)
        text = f"score {format_number(score)}   threshold {shown}   "
        draw.text((x, y), text, font=font, fill=FOREGROUND)
        x += draw.textlength(text, font=font)
        v = verdict(score, threshold)
        if v is not None:
            x = _badge(draw, (x, y), v, font) + draw.textlength("   ", font=font)
    if truth:
        draw.text((x, y + (font.size - small.size) // 2 if hasattr(font, "size") else y), f"truth: {truth}",
                  font=small, fill=MUTED)


def _bar_ticks(vmin: float, vmax: float, n: int = 5) -> list[float]:
    return [vmin + (vmax - vmin) * k / (n - 1) for k in range(n)]


def _vertical_bar(canvas: Image.Image, x: int, y: int, w: int, h: int, vmin: float, vmax: float,
                  threshold: float | None, font, score: float | None = None) -> None:
    """Colour bar (top = vmax) with numeric ticks on its right, the threshold marked across it and
    a white arrow on its left at this image's score."""
    idx = np.linspace(len(_LUT) - 1, 0, h).round().astype(np.intp)
    canvas.paste(Image.fromarray(np.repeat(_LUT[idx][:, None, :], w, axis=1)), (x, y))
    d = ImageDraw.Draw(canvas)
    d.rectangle((x - 1, y - 1, x + w, y + h), outline=FOREGROUND)

    def y_of(v: float) -> float:
        return y + (vmax - v) / (vmax - vmin) * (h - 1)

    asc = d.textbbox((0, 0), "0", font=font)[3]
    ty = y_of(threshold) if threshold is not None and vmin <= threshold <= vmax else None
    for v in _bar_ticks(vmin, vmax):
        yy = y_of(v)
        d.line((x + w, yy, x + w + 5, yy), fill=FOREGROUND, width=max(2, w // 12))
        if ty is None or abs(yy - ty) > 1.1 * asc:
            d.text((x + w + 9, yy - asc / 2 - 1), format_number(v, 3), font=font, fill=FOREGROUND)
    if ty is not None:
        d.line((x - 4, ty, x + w + 4, ty), fill=(0, 0, 0), width=max(5, w // 5))
        d.line((x - 4, ty, x + w + 4, ty), fill=(255, 255, 255), width=max(2, w // 12))
        d.text((x + w + 9, ty - asc / 2 - 1), f"threshold {format_number(threshold, 3)}", font=font, fill=(255, 255, 255))
    if score is not None and np.isfinite(score):
        sy, a = y_of(min(max(score, vmin), vmax)), max(8, round(w * 0.7))
        d.polygon([(x - 3, sy), (x - 3 - a, sy - a * 0.7), (x - 3 - a, sy + a * 0.7)], fill=(255, 255, 255),
                  outline=(0, 0, 0))


def _panels(image: np.ndarray, amap: np.ndarray, mask: np.ndarray | None, vmin: float, vmax: float,
            max_side: int) -> tuple[Image.Image, Image.Image, bool]:
    """(image with the ground-truth outline, heat-map blend, whether an outline was drawn), at display size."""
    if not (np.isfinite(vmin) and np.isfinite(vmax) and vmax > vmin):
        raise ValueError(f"need finite vmin < vmax, got {vmin}, {vmax}")
    h, w = np.shape(image)[:2]
    size = display_size(h, w, max_side)
    base = _resized_rgb(image, size)
    heat = Image.blend(base, _heat(_resized_map(amap, size), vmin, vmax), 0.5)
    edge = _outline_image(mask, size) if mask is not None else None
    if edge is not None:  # green on the image, white on the heat map (the ramp has no white)
        base.paste(CONTOUR_RGB, (0, 0), edge)
        heat.paste((255, 255, 255), (0, 0), edge)
    return base, heat, edge is not None


def render_overlay(image: np.ndarray, amap: np.ndarray, *, vmin: float, vmax: float, scale_note: str,
                   name: str = "", score: float | None = None, threshold: float | None = None,
                   mask: np.ndarray | None = None, truth: str | None = None, max_side: int = MAX_SIDE
                   ) -> Image.Image:
    """One labelled overlay picture (RGB), drawn at a bounded size.

    Top: ``name``; score, threshold and the verdict badge (DEFECT red / OK green) and, where
    known, ``truth``. Middle: the image (green ground-truth outline when ``mask`` is given)
    beside the heat-map blend, then a colour bar from ``vmin`` to ``vmax`` with numeric ticks
    and the threshold marked. Bottom: what the panels are and ``scale_note`` (say whether the
    colour scale is this image's own or shared by a set, e.g. "shared by all 25 images of this
    evaluation"). Each panel is at most ``max_side`` pixels on its long side (small images are
    enlarged to ``MIN_SIDE``), whatever the size of ``image`` and ``amap``.
    """
    left, heat, outlined = _panels(image, amap, mask, vmin, vmax, max_side)
    return _compose(left, heat, outlined, vmin=vmin, vmax=vmax, scale_note=scale_note, name=name, score=score,
                    threshold=threshold, truth=truth)


def _compose(left: Image.Image, heat: Image.Image, outlined: bool, *, vmin: float, vmax: float, scale_note: str,
             name: str, score: float | None, threshold: float | None, truth: str | None) -> Image.Image:
    dw, dh = left.size
    fs = int(np.clip(round(max(dw, dh) / 28), 16, 80))  # legible when a large picture is fitted to a screen
    font, big, small = _font(fs), _font(round(fs * 1.25)), _font(max(14, round(fs * 0.85)))
    pad = max(8, fs // 2)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    labels = [format_number(v, 3) for v in _bar_ticks(vmin, vmax)]
    if threshold is not None:
        labels.append(f"threshold {format_number(threshold, 3)}")
    bar_w = max(14, fs)
    label_w = max(probe.textlength(t, font=small) for t in labels)
    width = int(pad + dw + pad + dw + 2 * pad + bar_w + 9 + label_w + pad)
    legend = ("left: the image" + (" (green line: ground-truth defect, white on the heat map)" if outlined else "")
              + "; right: anomaly heat map (blue low, dark red high; the arrow on the colour bar is the "
              "score, the map's highest value). " + scale_note)
    foot = _wrap(probe, legend, small, width - 2 * pad)
    line = lambda f: probe.textbbox((0, 0), "Ag", font=f)[3] + max(4, fs // 4)  # noqa: E731
    top = pad + line(font) + line(big) + pad
    height = int(top + dh + pad + len(foot) * line(small) + pad)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    d = ImageDraw.Draw(canvas)
    d.text((pad, pad), _fit(d, name, font, width - 2 * pad), font=font, fill=FOREGROUND)
    _score_line(d, (pad, pad + line(font)), score, threshold, truth, big, font)
    canvas.paste(left, (pad, top))
    canvas.paste(heat, (2 * pad + dw, top))
    _vertical_bar(canvas, 2 * pad + 2 * dw + 2 * pad, top, bar_w, dh, vmin, vmax, threshold, small, score)
    y = top + dh + pad
    for text in foot:
        d.text((pad, y), text, font=small, fill=MUTED)
        y += line(small)
    return canvas


def contact_sheet(tiles: Sequence[dict[str, Any]], *, title: str, scale_note: str, vmin: float, vmax: float,
                  threshold: float | None = None, cols: int = 4) -> Image.Image:
    """The worst N on one picture: ``tiles`` are dicts with "image" (a heat-map blend, PIL, any
    size: shown at ``TILE`` px), "name" (or a shorter "short"), "score" (and "truth", or a shorter
    "tag"), in the order to show. Each tile is labelled with name, score and verdict and framed in
    the verdict's colour; the header says ``title``, ``scale_note`` and shows the colour bar with
    the threshold."""
    if not tiles:
        raise ValueError("a contact sheet needs at least one tile")
    cols = max(1, min(cols, len(tiles)))
    rows = -(-len(tiles) // cols)
    fs, pad, border = 15, 10, 4
    font, big, small = _font(fs), _font(20), _font(13)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line = lambda f: probe.textbbox((0, 0), "Ag", font=f)[3] + 5  # noqa: E731
    cell_w, cell_h = TILE + 2 * border, TILE + 2 * border + 2 * line(font) + 4
    width = pad + cols * (cell_w + pad)
    note = _wrap(probe, scale_note, font, width - 2 * pad)
    bar_h = 14
    top = pad + line(big) + len(note) * line(font) + bar_h + line(small) + 2 * pad
    canvas = Image.new("RGB", (width, top + rows * (cell_h + pad)), BACKGROUND)
    d = ImageDraw.Draw(canvas)
    d.text((pad, pad), _fit(d, title, big, width - 2 * pad), font=big, fill=FOREGROUND)
    y = pad + line(big)
    for text in note:
        d.text((pad, y), text, font=font, fill=MUTED)
        y += line(font)
    # horizontal colour bar: vmin on the left, the threshold marked
    bw = width - 2 * pad
    idx = np.linspace(0, len(_LUT) - 1, bw).round().astype(np.intp)
    canvas.paste(Image.fromarray(np.repeat(_LUT[idx][None], bar_h, axis=0)), (pad, y))
    for v in _bar_ticks(vmin, vmax):
        xx = pad + (v - vmin) / (vmax - vmin) * (bw - 1)
        t = format_number(v, 3)
        tx = min(max(pad, xx - d.textlength(t, font=small) / 2), width - pad - d.textlength(t, font=small))
        d.text((tx, y + bar_h + 2), t, font=small, fill=FOREGROUND)
    if threshold is not None and vmin <= threshold <= vmax:
        xx = pad + (threshold - vmin) / (vmax - vmin) * (bw - 1)
        d.line((xx, y - 3, xx, y + bar_h + 3), fill=(0, 0, 0), width=5)
        d.line((xx, y - 3, xx, y + bar_h + 3), fill=(255, 255, 255), width=2)
    y = top
    for k, t in enumerate(tiles):
        x0, y0 = pad + (k % cols) * (cell_w + pad), top + (k // cols) * (cell_h + pad)
        im = t["image"].copy()
        im.thumbnail((TILE, TILE), Image.Resampling.BILINEAR)
        v = verdict(t["score"], threshold)
        frame = {None: MUTED, "OK": OK_RGB, "DEFECT": DEFECT_RGB}[v]
        d.rectangle((x0, y0, x0 + cell_w - 1, y0 + TILE + 2 * border - 1), fill=frame)
        canvas.paste(im, (x0 + border + (TILE - im.width) // 2, y0 + border + (TILE - im.height) // 2))
        ty = y0 + TILE + 2 * border + 3
        d.text((x0, ty), _fit(d, t.get("short") or t["name"], font, cell_w), font=font, fill=FOREGROUND)
        s = f"#{k + 1}  score {format_number(t['score'])}  "
        d.text((x0, ty + line(font)), s, font=font, fill=FOREGROUND)
        if v is not None:
            xv = x0 + d.textlength(s, font=font)
            d.text((xv, ty + line(font)), v, font=font, fill=(255, 110, 110) if v == "DEFECT" else (110, 220, 140))
            xv += d.textlength(v + "  ", font=font)
            tag = t.get("tag") or t.get("truth")
            if tag:
                d.text((xv, ty + line(font)), _fit(d, f"({tag})", font, x0 + cell_w - xv), font=font, fill=MUTED)
    return canvas


def shared_scale(maps: Sequence[np.ndarray], threshold: float | None) -> tuple[float, float]:
    """One colour scale for a set: min..max over all maps, stretched to include the threshold."""
    lo = min(float(np.nanmin(m)) for m in maps)
    hi = max(float(np.nanmax(m)) for m in maps)
    if threshold is not None and np.isfinite(threshold):
        hi, lo = max(hi, float(threshold)), min(lo, float(threshold))
    return lo, (hi if hi > lo else lo + 1e-6)


def worst(scores: Sequence[float], n: int) -> list[int]:
    """Indices of the ``n`` highest scores, highest first (ties keep input order)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:max(0, n)].tolist()


# ------------------------------------------------------------------ output names and the no-overwrite rule
MARKER = ".cdd-engine-outputs.json"  # in an output folder: the files this tool wrote there
CONTACT_SHEET = "contact_sheet.png"


def _below_common_parent(paths: Sequence[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """(normalised absolute paths, the same relative to their common parent folder)."""
    if not paths:
        return [], []
    norm = [Path(os.path.normpath(os.path.abspath(p))) for p in paths]
    common = Path(os.path.commonpath([str(p.parent) for p in norm]))
    return norm, [p.relative_to(common) for p in norm]


def relative_inputs(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Input paths relative to their common parent folder ("/"-separated): the names shown on pictures."""
    return [r.as_posix() for r in _below_common_parent(paths)[1]]


def mirrored_names(paths: Sequence[str | os.PathLike], suffix: str) -> list[str]:
    """Output names (relative, "/"-separated) that mirror the inputs' folders below their common
    parent, so the same file name in two folders never gives one output: ``a/x.png, b/x.png`` ->
    ``a/x<suffix>, b/x<suffix>``. Two inputs of one folder sharing a stem (x.png, x.jpg) keep
    their extension in the name (``x_png<suffix>``); the same path given twice gives one name."""
    norm, rel = _below_common_parent(paths)
    names = [(r.parent / (r.stem + suffix)).as_posix() for r in rel]
    owners: dict[str, set[Path]] = {}
    for n, p in zip(names, norm):
        owners.setdefault(n, set()).add(p)
    names = [(r.parent / f"{r.stem}_{r.suffix.lstrip('.').lower()}{suffix}").as_posix() if len(owners[n]) > 1
             else n for n, r in zip(names, rel)]
    seen: dict[str, Path] = {}
    for n, p in zip(names, norm):
        if seen.setdefault(n, p) != p:
            raise ValueError(f"two inputs would share the output name {n}: {seen[n]} and {p}; rename one")
    return names


def _ours(out: Path) -> set[str] | None:
    """Files the marker says this tool wrote in ``out`` (empty: no marker; None: a marker that is not ours)."""
    p = out / MARKER
    if not os.path.lexists(p):
        return set()
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
        if isinstance(d, dict) and d.get("written_by") == "cdd-engine" and isinstance(d.get("files"), list):
            return {str(f) for f in d["files"]}
    except (OSError, UnicodeDecodeError, ValueError):
        pass
    return None


def claim_outputs(out_dir: str | os.PathLike, names: Sequence[str], force: bool = False) -> None:
    """Refuse (FileExistsError), before any work, to write ``names`` (relative to ``out_dir``) when
    one of them already exists and this tool did not write it (the folder's marker file lists
    what it wrote, so a rerun into the same folder replaces only its own overlays). ``force``
    (the CLI's --force) overwrites anyway. Other files in the folder are left alone either way."""
    out = Path(out_dir)
    if os.path.lexists(out) and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; overlays need a folder")
    ours = _ours(out)
    clash = [n for n in names if os.path.lexists(out / n) and (ours is None or n not in ours)]
    if ours is None:
        clash.insert(0, MARKER)
    if clash and not force:
        raise FileExistsError(f"{out} already holds {len(clash)} file(s) that cdd-engine did not write and would "
                              f"overwrite (e.g. {clash[0]}); choose an empty or new folder, or pass --force "
                              f"to overwrite them")


def record_outputs(out_dir: str | os.PathLike, names: Sequence[str]) -> None:
    """Add ``names`` to the folder's marker (see :func:`claim_outputs`)."""
    out = Path(out_dir)
    files = sorted((_ours(out) or set()) | set(names))
    (out / MARKER).write_text(json.dumps({"written_by": "cdd-engine", "files": files}, indent=1) + "\n",
                              encoding="utf-8")


def write_overlay_set(out_dir: str | os.PathLike, names: Sequence[str], items, n: int, *, threshold: float | None,
                      vmin: float, vmax: float, scale_note: str, sheet_title: str, worst_n: int = 16,
                      force: bool = False) -> list[Path]:
    """Draw and save one labelled overlay per item, plus ``contact_sheet.png`` of the ``worst_n``.

    ``items`` yields ``n`` dicts (one at a time, so only one full frame is held): "image",
    "map", "name", "score" and optionally "mask", "truth", "tag" and "short" (a shorter truth and
    name for the sheet).
    Names are claimed first (:func:`claim_outputs`); returns the overlay paths (the contact sheet is not among them).
    """
    out = Path(out_dir)
    claim_outputs(out, list(names) + [CONTACT_SHEET], force)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    tiles: dict[int, dict[str, Any]] = {}
    scores: list[float] = []
    for i, (rel, it) in enumerate(zip(names, items)):
        left, heat, outlined = _panels(it["image"], it["map"], it.get("mask"), vmin, vmax, MAX_SIDE)
        pic = _compose(left, heat, outlined, vmin=vmin, vmax=vmax, scale_note=scale_note, name=it["name"],
                       score=it["score"], threshold=threshold, truth=it.get("truth"))
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pic.save(path)
        written.append(path)
        heat.thumbnail((TILE, TILE), Image.Resampling.BILINEAR)
        tiles[i] = {"image": heat, "name": it["name"], "score": float(it["score"]), "truth": it.get("truth"),
                    "tag": it.get("tag"), "short": it.get("short")}
        scores.append(float(it["score"]))
        keep = set(worst(scores, worst_n))
        for k in [k for k in tiles if k not in keep]:
            del tiles[k]
    if len(written) != n:
        raise ValueError(f"expected {n} overlays, drew {len(written)}")
    if tiles:
        order = worst(scores, worst_n)
        contact_sheet([tiles[k] for k in order], title=sheet_title, scale_note=scale_note, vmin=vmin, vmax=vmax,
                      threshold=threshold).save(out / CONTACT_SHEET)
    record_outputs(out, [p.relative_to(out).as_posix() for p in written] + [CONTACT_SHEET])
    return written


def check_eval_overlays(out_dir: str | Path, samples, force: bool = False) -> list[str]:
    """The names :func:`save_overlays` will write for ``samples``, after :func:`claim_outputs`
    (call it before scoring, so a refusal costs nothing)."""
    names = mirrored_names([s.path for s in samples], ".png")
    claim_outputs(out_dir, names + ["scores.csv", CONTACT_SHEET], force)
    return names


def save_score_overlays(out_dir: str | Path, paths: Sequence[str | os.PathLike], frames, maps: Sequence[np.ndarray],
                        scores: Sequence[float], threshold: float, worst_n: int = 16, force: bool = False
                        ) -> list[Path]:
    """``score --overlay``'s pictures: ``<input tree below the inputs' common parent>/<stem>_overlay.png``
    per image (:func:`mirrored_names`), each labelled with its score, the threshold and the verdict,
    and ``contact_sheet.png`` of the ``worst_n``. ``frames`` yields the uint8 frames in order (any
    size: pictures are drawn at a bounded size); ``maps`` may be at model or frame resolution.
    One colour scale for the call, stated on every picture."""
    names = mirrored_names(paths, "_overlay.png")
    claim_outputs(out_dir, names + [CONTACT_SHEET], force)
    vmin, vmax = shared_scale(maps, threshold)
    n = len(names)
    note = (f"Colour scale {format_number(vmin, 3)} to {format_number(vmax, 3)} (anomaly-map value), "
            + (f"shared by all {n} images of this score call." if n > 1 else "this image's own."))
    shown = relative_inputs(paths)
    items = ({"image": f, "map": m, "name": name, "score": float(sc)}
             for f, m, name, sc in zip(frames, maps, shown, scores))
    return write_overlay_set(out_dir, names, items, n, threshold=threshold, vmin=vmin, vmax=vmax, scale_note=note,
                             sheet_title=f"score: the {min(worst_n, n)} highest scores of {n} images",
                             worst_n=worst_n, force=True)


def save_overlays(out_dir: str | Path, dataset, maps: np.ndarray, scores: np.ndarray,
                  mean: Sequence[float], std: Sequence[float], threshold: float | None = None,
                  worst_n: int = 16, force: bool = False) -> list[Path]:
    """``eval``'s pictures: one labelled overlay per test image, named after it and mirroring the
    test tree (``<defect>/<stem>.png`` for MVTec), ``contact_sheet.png`` (the ``worst_n`` highest
    scores) and ``scores.csv``. Colours are on one scale for the whole set (min..max of all maps,
    including the threshold), and every picture says so. Refuses to overwrite a file this tool
    did not write (:func:`claim_outputs`) unless ``force``."""
    out_dir = Path(out_dir)
    paths = [s.path for s in dataset.samples]
    names = check_eval_overlays(out_dir, dataset.samples, force)
    shown = relative_inputs(paths)
    vmin, vmax = shared_scale(list(maps), threshold)
    note = (f"Colour scale {format_number(vmin, 3)} to {format_number(vmax, 3)} (anomaly-map value), shared by all {len(paths)} "
            f"images of this evaluation.")

    def items():
        for i, sample in enumerate(dataset.samples):
            item = dataset[i]
            yield {"image": denormalize(item["image"].numpy(), mean, std), "map": maps[i],
                   "mask": item["mask"][0].numpy() > 0.5 if "mask" in item else None,
                   "name": shown[i], "score": float(scores[i]),
                   "truth": "good" if sample.label == 0 else (f"defect ({sample.defect_type})" if sample.label == 1
                                                              else None), "tag": sample.defect_type}

    title = f"eval: the {min(worst_n, len(paths))} highest scores of {len(paths)} test images"
    written = write_overlay_set(out_dir, names, items(), len(paths), threshold=threshold, vmin=vmin, vmax=vmax,
                                scale_note=note, sheet_title=title, worst_n=worst_n, force=True)
    rows = ["path,defect_type,label,score"]
    rows += [f"{n},{s.defect_type},{s.label},{scores[i]:.6g}" for i, (n, s) in enumerate(zip(names, dataset.samples))]
    (out_dir / "scores.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    record_outputs(out_dir, ["scores.csv"])
    return written
