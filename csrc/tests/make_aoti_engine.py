"""Write a tiny aoti engine directory (format version 2, model.pt2) and demo frames with reference
scores, for the C++ AOTInductor backend's tests (ctest ``engine_aoti``, tests/test_native_aoti.py).

The network is make_test_engine's three-convolution stand-in at a non-square 32x48 input (so a
swapped height/width cannot pass), stored channels-last (the package then returns channels-last
features, which the C++ side must read correctly), exported with a dynamic batch in
[1, MAX_BATCH] and compiled by ``torch._inductor.aoti_compile_and_package`` for the CPU: ~15 s on
a 2-core machine. engine.json is written by hand from docs/engine_format.md, so these tests do
not depend on the Python build path.

Reference scores come from the Python reference pipeline on the eager model:
``cdd_engine.preprocess`` (float32) -> the PyTorch model -> ``cdd_engine.anomaly_map`` in float64.

    python csrc/tests/make_aoti_engine.py --out ENGINE_DIR [--frames FRAMES_DIR] [--reuse]
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import make_test_engine as mte  # noqa: E402
from cdd_engine.models.rd import RDModel  # noqa: E402

IMAGE_SIZE = (32, 48)  # features (8, 12), (4, 6), (2, 3)
MAX_BATCH = 4          # batches of 5+ frames get split into chunks
SEED = 0


def micro_model() -> RDModel:
    torch.manual_seed(SEED)
    return RDModel(mte._MicroTeacher(), mte._MicroStudent(), "micro", IMAGE_SIZE,
                   ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))).eval()


def compile_package(model: RDModel, path: Path, max_batch: int = MAX_BATCH) -> None:
    """model.pt2: one float32 NCHW input with a dynamic batch, six float32 outputs."""
    flat = mte._Flat(model).eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, *model.image_size)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    with torch.no_grad():
        ep = torch.export.export(flat, (x,), dynamic_shapes=({0: batch},))
        torch._inductor.aoti_compile_and_package(ep, package_path=str(path))


def write_manifest(model: RDModel, out: Path, threshold: float, **aoti: object) -> dict:
    with torch.no_grad():
        t, s = model(torch.zeros(1, 3, *model.image_size))
    mean, std = model.normalization
    pt2 = out / "model.pt2"
    manifest = {
        "format": "cdd-engine",
        "format_version": 2,
        "package_version": "0.1.0",
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source_checkpoint": {"path": "(random test model)", "method": "rd", "backbone": "micro"},
        "backend": "aoti",
        "precision": "fp32",
        "max_batch": MAX_BATCH,
        "image_size": list(model.image_size),
        "input": {"name": "image", "layout": "NCHW", "dtype": "float32", "color": "RGB",
                  "mean": list(mean), "std": list(std), "resize": "bilinear_antialias"},
        "features": [{"name": n, "shape": list(f.shape[1:]), "dtype": "float32"}
                     for n, f in zip(mte.OUTPUTS, [*t, *s])],
        "anomaly_map": {"mode": "add", "sigma": 4.0, "truncate": 4.0, "eps": 1e-8,
                        "upsample": "bilinear_align_corners", "blur_boundary": "reflect"},
        "threshold": {"value": threshold, "source": "test:median of demo frames", "statistics": {}},
        "files": {"model.pt2": {"sha256": mte.sha256(pt2), "bytes": pt2.stat().st_size}},
        "aoti": {"device": "cpu", "torch_version": torch.__version__, "min_batch": 1, "max_batch": MAX_BATCH,
                 "channels_last": True, "batchnorm_folded": False, **aoti},
    }
    (out / "engine.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def make_engine(out: str | os.PathLike, frames_dir: str | os.PathLike | None = None) -> dict:
    """Writes the engine directory (and demo frames + reference.json); returns
    {"engine": path, "scores": [...], "frames": path or absent}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = micro_model()
    mean, std = model.normalization
    frames = mte.make_frames()
    scores, _ = mte.reference(model, frames, mean, std)
    threshold = float(np.median(scores))
    compile_package(model, out / "model.pt2")
    write_manifest(model, out, threshold)
    result = {"engine": str(out), "scores": scores.tolist()}
    if frames_dir is not None:
        frames_dir = Path(frames_dir)
        frames_dir.mkdir(parents=True, exist_ok=True)
        files, formats = [], []
        for i, (img, fmt) in enumerate(frames):
            if fmt == "BGR":  # files hold RGB: store the frame as the RGB it means
                img, fmt = img[..., ::-1], "RGB"
            name = f"frame_{i:02d}.{'pgm' if img.ndim == 2 else 'ppm'}"
            mte.write_pnm(frames_dir / name, img)
            files.append(name)
            formats.append(fmt)
        (frames_dir / "reference.json").write_text(json.dumps(
            {"files": files, "formats": formats, "scores": scores.tolist(), "threshold": threshold}, indent=1))
        result["frames"] = str(frames_dir)
    return result


def cached_engine(root: str | os.PathLike | None = None) -> dict:
    """:func:`make_engine` into a cache directory keyed by this script, make_test_engine.py and
    the torch version (a package is tied to its torch), so reruns skip the ~15 s compilation."""
    h = hashlib.sha256(Path(__file__).read_bytes() + (HERE / "make_test_engine.py").read_bytes()
                       + torch.__version__.encode())
    base = Path(root or tempfile.gettempdir()) / f"cdd_native_test_aoti_{h.hexdigest()[:12]}"
    done = base / "done.json"
    if done.is_file():
        return json.loads(done.read_text())
    tmp = base.with_name(base.name + f".{os.getpid()}")
    make_engine(tmp / "engine", tmp / "frames")
    try:
        tmp.rename(base)
    except OSError:  # another process won the race: use its copy
        shutil.rmtree(tmp, ignore_errors=True)
        return json.loads(done.read_text())
    r = make_engine_result(base)
    done.write_text(json.dumps(r))
    return r


def make_engine_result(base: Path) -> dict:
    ref = json.loads((base / "frames" / "reference.json").read_text())
    return {"engine": str(base / "engine"), "frames": str(base / "frames"), "scores": ref["scores"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="engine directory to write")
    ap.add_argument("--frames", help="also write demo frames and reference.json here")
    ap.add_argument("--reuse", action="store_true", help="link --out/--frames to the cache pytest uses")
    args = ap.parse_args()
    if args.reuse:
        r = cached_engine()
        for link, target in ((args.out, r["engine"]), (args.frames, r.get("frames"))):
            if link and target:
                link = Path(link)
                if link.is_symlink() or link.is_file():
                    link.unlink()
                elif link.is_dir():
                    shutil.rmtree(link)
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(target, target_is_directory=True)
    else:
        r = make_engine(args.out, args.frames)
    print(json.dumps({k: v for k, v in r.items() if k != "scores"}))


if __name__ == "__main__":
    main()
