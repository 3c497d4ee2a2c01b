"""Writes tests/golden/anomaly_map_operators.json: golden vectors of the anomaly map and its operators.

    python tests/golden/make_golden.py            # rewrite the file
    python tests/golden/make_golden.py --check    # exit 1 when the reference no longer gives the file

Everything expected is computed in float64 by the Python reference (cdd_engine/anomaly_map.py,
cdd_engine/preprocess.py's resize rule via cdd_engine/operators.py) from fresh seeded random
inputs with odd shapes. The inputs are float32 (features) or uint8 (frames) values written
exactly, so a float32 implementation reads the very numbers the reference used. Checked by
tests/test_golden.py (reference, fast CPU path, native module, Triton in the interpreter),
csrc/tests/test_golden.cpp (C++ kernels and operators) and csrc/tests/test_cuda_kernels.cpp
(GPU launchers). Regenerate only for a deliberate change of the specification (docs/anomaly_map.md).

Sigmas: 4 (the default: radius 16 is wider than the 13-pixel map side, so the reflect boundary
folds several times), 1.125 (truncate * sigma + 0.5 = 5.0 exactly: pins the floor-based radius
rule; truncate 3.99 gives radius 4) and 0 (no blur).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cdd_engine import limits, operators  # noqa: E402
from cdd_engine.anomaly_map import EPS, anomaly_map  # noqa: E402

OUT = Path(__file__).with_name("anomaly_map_operators.json")
SEED = 20261204
FORMAT = 1
IMAGE = (19, 13)                      # (H, W) of the maps: odd, not square
BATCH = 2
SCALES = [(5, 7, 5), (3, 4, 3), (6, 1, 2)]  # (C, h, w); h = 1 covers the one-sample upsampling case
MODES = ("add", "mul")
SIGMAS = (4.0, 1.125, 0.0)
TAP_SIGMAS = ((4.0, 4.0), (1.125, 4.0), (1.125, 3.99), (0.375, 4.0), (2.5, 4.0))
RADIUS_RULE = ((4.0, 4.0), (1.125, 4.0), (1.125, 3.99), (0.375, 4.0), (0.375, 3.99), (64.0, 16.0), (2.5, 0.2))
UPSAMPLE = ((7, 3), (5, 1), (1, 4), (13, 5))     # (n_out, n_in)
BLUR = ((5, 4.0), (9, 1.125))                    # (n, sigma): n = 5 with radius 16 reflects 3+ times
RESIZE = ((11, 4), (3, 7), (10, 10), (17, 5))    # (in, out): down, up, identity, strong down
PREPROCESS = (("RGB8", 9, 14, (5, 6)), ("BGR8", 4, 3, (7, 5)), ("Mono8", 8, 8, (3, 5)))
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _flat(x) -> list[float]:
    return [float(v) for v in np.asarray(x, dtype=np.float64).reshape(-1)]


def _features(rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    t, s = [], []
    for c, h, w in SCALES:
        # student = teacher + noise of varying size: distances spread over (0, 2), none near 0
        tt = rng.standard_normal((BATCH, c, h, w)).astype(np.float32)
        noise = rng.standard_normal((BATCH, c, h, w)) * rng.uniform(0.3, 2.0, size=(BATCH, 1, h, w))
        t.append(tt)
        s.append((tt + noise).astype(np.float32))
    return t, s


def _preprocess_ref(pixels: np.ndarray, fmt: str, out_hw: tuple[int, int]) -> np.ndarray:
    """(h, w, c) uint8 -> (3, H, W) float64: RGB order, separable antialiased resize, normalise."""
    h, w, _ = pixels.shape
    x = pixels.astype(np.float64)
    rgb = {"RGB8": x, "BGR8": x[..., ::-1], "Mono8": np.repeat(x[..., :1], 3, axis=2)}[fmt]
    ry = operators.resize_matrix(h, out_hw[0])
    rx = operators.resize_matrix(w, out_hw[1])
    out = np.stack([ry @ rgb[..., c] @ rx.T for c in range(3)])
    return (out / 255.0 - np.asarray(MEAN)[:, None, None]) / np.asarray(STD)[:, None, None]


def build() -> dict:
    rng = np.random.default_rng(SEED)
    t, s = _features(rng)
    cases = []
    for mode in MODES:
        for sigma in SIGMAS:
            maps, scores = anomaly_map([torch.from_numpy(x).double() for x in t],
                                       [torch.from_numpy(x).double() for x in s], IMAGE, mode=mode, sigma=sigma)
            cases.append({"mode": mode, "sigma": sigma, "maps": _flat(maps), "scores": _flat(scores)})
    frames = []
    for fmt, h, w, out_hw in PREPROCESS:
        c = 1 if fmt == "Mono8" else 3
        pixels = rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)
        frames.append({"format": fmt, "height": h, "width": w, "out": list(out_hw),
                       "pixels": [int(v) for v in pixels.reshape(-1)],
                       "expected": _flat(_preprocess_ref(pixels, fmt, out_hw))})
    return {
        "format": FORMAT,
        "about": "golden vectors of docs/anomaly_map.md, written by tests/golden/make_golden.py (float64 "
                 "reference, seeded random inputs); do not edit by hand",
        "seed": SEED,
        "eps": EPS,
        "taps": [{"sigma": sg, "truncate": tr, "taps": _flat(operators.gaussian_taps(sg, tr))}
                 for sg, tr in TAP_SIGMAS],
        "radius_rule": [{"sigma": sg, "truncate": tr, "radius": limits.blur_radius(sg, tr)} for sg, tr in RADIUS_RULE],
        "upsample": [{"n_out": o, "n_in": i, "matrix": _flat(operators.bilinear_matrix(o, i))} for o, i in UPSAMPLE],
        "blur": [{"n": n, "sigma": sg, "truncate": operators.TRUNCATE, "matrix": _flat(operators.blur_matrix(n, sg))}
                 for n, sg in BLUR],
        "resize": [{"in": i, "out": o, "matrix": _flat(operators.resize_matrix(i, o))} for i, o in RESIZE],
        "anomaly_map": {
            "image_size": list(IMAGE), "batch": BATCH, "truncate": operators.TRUNCATE,
            "scales": [list(x) for x in SCALES],
            "teacher": [_flat(x) for x in t], "student": [_flat(x) for x in s],
            "cases": cases,
        },
        "preprocess": {"mean": list(MEAN), "std": list(STD), "frames": frames},
    }


def _max_diff(a, b, path="") -> tuple[float, str]:
    """Largest |a - b| over the numbers of two JSON trees (inf where the structure differs)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return float("inf"), path
        return max((_max_diff(a[k], b[k], f"{path}.{k}") for k in a), default=(0.0, path))
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return float("inf"), path
        return max((_max_diff(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b))), default=(0.0, path))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)), path
    return (0.0 if a == b else float("inf")), path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed file instead of writing it")
    args = ap.parse_args(argv)
    data = build()
    if args.check:
        diff, where = _max_diff(json.loads(OUT.read_text()), data)
        print(f"largest difference {diff:.3g}" + (f" at {where}" if diff else ""))
        return 0 if diff <= 1e-12 else 1
    OUT.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
