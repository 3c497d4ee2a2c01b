"""Write a tiny engine directory (and demo frames with reference scores) for the native tests.

The network is a random-teacher ``build_rd_model("resnet18", pretrained=False, image_size=64,
seed=0)``: ~11 M parameters, features (64,16,16), (128,8,8), (256,4,4), a few ms per frame.
``--micro`` writes a three-convolution stand-in with the same output contract instead
(32x32 input, features (8,8,8), (16,4,4), (32,2,2), ~50 us per frame) for tests that score
thousands of times (memory growth, AddressSanitizer). ``--int8`` writes the INT8 engine of the
tiny network instead (NNCF post-training quantization on 40 seeded smooth frames, accuracy guard on
held-out ones); its ``reference.json`` scores are the Python runtime's scores of that INT8 engine
(the native runtime must match them: same IR, same CPU plugin), with the fp32 reference scores
beside them as ``fp32_scores``. The directory is written by ``cdd_engine.build(model, backend="openvino")``, so the tests
exercise the real engine format end to end; a checkout without the Python runtime falls
back to writing docs/engine_format.md by hand (model.onnx + OpenVINO IR + engine.json).

Reference scores come from the Python reference pipeline: ``cdd_engine.preprocess``
(float32, as training) -> the PyTorch model -> ``cdd_engine.anomaly_map`` in float64.

    python csrc/tests/make_test_engine.py --out ENGINE_DIR [--frames FRAMES_DIR] [--micro | --int8]

FRAMES_DIR gets P6 (RGB) / P5 (gray) files of odd sizes and ``reference.json``
({"files": [...], "formats": [...], "scores": [...]}).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run from a build tree: import the package from the checkout
    sys.path.insert(0, str(ROOT))

from cdd_engine.anomaly_map import anomaly_map  # noqa: E402
from cdd_engine.models.rd import RDModel, build_rd_model  # noqa: E402
from cdd_engine.preprocess import resize_normalize  # noqa: E402

BACKBONE = "resnet18"
IMAGE_SIZE = 64      # features 16/8/4: the smallest size the three scales survive
SEED = 0
MAX_BATCH = 4        # small on purpose: batches of 5+ frames get split into chunks
OUTPUTS = [f"teacher_{i}" for i in range(3)] + [f"student_{i}" for i in range(3)]
# (height, width, format): odd sizes, down- and up-scaling, all three pixel formats
FRAME_SPECS = [(64, 64, "RGB"), (97, 131, "RGB"), (45, 33, "MONO"), (200, 150, "BGR"),
               (64, 80, "MONO"), (31, 257, "RGB"), (128, 128, "BGR"), (77, 77, "RGB"), (150, 90, "MONO")]


class _MicroTeacher(torch.nn.Module):
    """Three strided convolutions: (B,3,32,32) -> [(B,8,8,8), (B,16,4,4), (B,32,2,2)]."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = torch.nn.ModuleList([torch.nn.Conv2d(3, 8, 3, stride=4, padding=1),
                                          torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
                                          torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats, h = [], x
        for conv in self.convs:
            h = torch.tanh(conv(h))  # tanh, not relu: no all-zero feature vectors
            feats.append(h)
        return feats


class _MicroStudent(torch.nn.Module):
    """One 1x1 convolution per scale."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = torch.nn.ModuleList([torch.nn.Conv2d(c, c, 1) for c in (8, 16, 32)])

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [conv(f) for conv, f in zip(self.convs, feats)]


def micro_model() -> RDModel:
    """RD's output contract at a fraction of the cost: an RDModel with a 3-conv teacher."""
    torch.manual_seed(SEED)
    return RDModel(_MicroTeacher(), _MicroStudent(), "micro", (32, 32),
                   ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))).eval()


class _Flat(torch.nn.Module):
    """RDModel -> a flat tuple of the six feature maps, in OUTPUTS order."""

    def __init__(self, model: RDModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        t, s = self.model(x)
        return (*t, *s)


def tiny_model(micro: bool = False) -> RDModel:
    if micro:
        return micro_model()
    return build_rd_model(BACKBONE, pretrained=False, image_size=IMAGE_SIZE, seed=SEED).eval()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def make_frames(seed: int = 1) -> list[tuple[np.ndarray, str]]:
    """Smooth random uint8 frames (a random field plus a bright blob), one per FRAME_SPECS entry."""
    rng = np.random.default_rng(seed)
    frames = []
    for h, w, fmt in FRAME_SPECS:
        c = 1 if fmt == "MONO" else 3
        base = rng.integers(0, 256, size=(h, w, c)).astype(np.float64)
        yy, xx = np.mgrid[0:h, 0:w]
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        blob = 120.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.15 * min(h, w) + 1) ** 2))
        img = np.clip(0.6 * base + blob[..., None], 0, 255).astype(np.uint8)
        frames.append((img[..., 0] if c == 1 else img, fmt))
    return frames


def reference(model: torch.nn.Module, frames: list[tuple[np.ndarray, str]], mean, std,
              mode: str = "add", sigma: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Python reference scores (N,) and model-size maps (N, H, W), float64."""
    scores, maps = [], []
    with torch.no_grad():
        for img, fmt in frames:
            arr = img[None, ..., None] if img.ndim == 2 else img[None]
            x = resize_normalize(arr, tuple(model.image_size), mean, std, pixel_format=fmt)
            t, s = model(x)
            m, sc = anomaly_map([f.double() for f in t], [f.double() for f in s], tuple(model.image_size),
                                mode=mode, sigma=sigma)
            scores.append(float(sc[0]))
            maps.append(m[0].numpy())
    return np.array(scores), np.stack(maps)


def export(model: torch.nn.Module, out: Path) -> None:
    """model.onnx (dynamic batch) and its OpenVINO IR model.xml/.bin (fp32)."""
    import openvino as ov
    x = torch.randn(2, 3, *model.image_size)  # batch >= 2 so the batch axis stays symbolic
    # the wrapper must be in eval mode too: the exporter restores the wrapper's mode afterwards,
    # which would otherwise switch the student's BatchNorm to training
    torch.onnx.export(_Flat(model).eval(), (x,), str(out / "model.onnx"), input_names=["image"], output_names=OUTPUTS,
                      dynamic_axes={"image": {0: "batch"}, **{o: {0: "batch"} for o in OUTPUTS}},
                      opset_version=17, dynamo=False)
    ov.save_model(ov.convert_model(str(out / "model.onnx")), str(out / "model.xml"), compress_to_fp16=False)
    model.eval()


def write_manifest(model: torch.nn.Module, out: Path, threshold: float, mode: str = "add",
                   sigma: float = 4.0) -> dict:
    with torch.no_grad():
        t, s = model(torch.zeros(1, 3, *model.image_size))
    mean, std = model.normalization
    manifest = {
        "format": "cdd-engine",
        "format_version": 1,
        "package_version": "0.1.0",
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source_checkpoint": {"path": "(random test model)", "method": "rd",
                              "backbone": getattr(model, "backbone", "micro")},
        "backend": "openvino",
        "precision": "fp32",
        "max_batch": MAX_BATCH,
        "image_size": list(model.image_size),
        "input": {"name": "image", "layout": "NCHW", "dtype": "float32", "color": "RGB",
                  "mean": list(mean), "std": list(std), "resize": "bilinear_antialias"},
        "features": [{"name": n, "shape": list(f.shape[1:]), "dtype": "float32"}
                     for n, f in zip(OUTPUTS, [*t, *s])],
        "anomaly_map": {"mode": mode, "sigma": sigma, "truncate": 4.0, "eps": 1e-8,
                        "upsample": "bilinear_align_corners", "blur_boundary": "reflect"},
        "threshold": {"value": threshold, "source": "test:median of demo frames", "statistics": {}},
        "files": {name: {"sha256": sha256(out / name), "bytes": (out / name).stat().st_size}
                  for name in ("model.onnx", "model.xml", "model.bin")},
    }
    (out / "engine.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def write_pnm(path: Path, img: np.ndarray) -> None:
    """Binary PPM (P6) for (H, W, 3), PGM (P5) for (H, W)."""
    magic = b"P5" if img.ndim == 2 else b"P6"
    with open(path, "wb") as f:
        f.write(magic + b"\n%d %d\n255\n" % (img.shape[1], img.shape[0]))
        f.write(np.ascontiguousarray(img).tobytes())


INT8_CALIBRATION = 40  # smooth seeded frames: 32 calibrate, 8 are held out for the accuracy guard


def calibration_frames(n: int = INT8_CALIBRATION, seed: int = 2) -> list[np.ndarray]:
    """Smooth random 64x64 RGB frames (a random field plus a blob) for INT8 calibration."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        base = rng.integers(0, 256, size=(8, 8, 3)).astype(np.float32)
        img = torch.nn.functional.interpolate(torch.from_numpy(base).permute(2, 0, 1)[None], size=(IMAGE_SIZE,) * 2,
                                              mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
        out.append(np.clip(img + rng.normal(0, 8, size=img.shape), 0, 255).astype(np.uint8))
    return out


def make_engine(out: str | os.PathLike, frames_dir: str | os.PathLike | None = None,
                micro: bool = False, int8: bool = False) -> dict:
    """Writes the engine directory (and demo frames); returns {"engine": path, "scores": [...]}
    with the reference scores of :func:`make_frames` (for ``int8``: the Python runtime's scores of
    the INT8 engine, and "fp32_scores")."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = tiny_model(micro)
    mean, std = model.normalization
    frames = make_frames()
    scores, _ = reference(model, frames, mean, std)
    threshold = float(np.median(scores))
    try:
        from cdd_engine.runtime import build
    except ImportError:  # a checkout without the Python runtime: the documented format by hand
        build = None
    fp32_scores = scores
    if int8:
        if build is None:
            raise SystemExit("--int8 needs the Python runtime (cdd_engine.runtime.build with NNCF)")
        engine = build(model, backend="openvino", precision="int8", max_batch=MAX_BATCH, output_dir=out,
                       threshold=threshold, verify=False, calibration_frames=calibration_frames(),
                       runtime="python", num_threads=1)
        scores = np.array([float(engine.score([img], pixel_format=fmt).scores[0]) for img, fmt in frames])
    elif build is not None:
        build(model, backend="openvino", precision="fp32", max_batch=MAX_BATCH, output_dir=out,
              threshold=threshold, verify=False, num_threads=1)
    else:
        export(model, out)
        write_manifest(model, out, threshold=threshold)
    result = {"engine": str(out), "scores": scores.tolist()}
    if frames_dir is not None:
        frames_dir = Path(frames_dir)
        frames_dir.mkdir(parents=True, exist_ok=True)
        files, formats = [], []
        for i, (img, fmt) in enumerate(frames):
            if fmt == "BGR":  # files hold RGB: store the frame as the RGB it means
                img, fmt = img[..., ::-1], "RGB"
            name = f"frame_{i:02d}.{'pgm' if img.ndim == 2 else 'ppm'}"
            write_pnm(frames_dir / name, img)
            files.append(name)
            formats.append(fmt)
        doc = {"files": files, "formats": formats, "scores": scores.tolist(), "threshold": threshold}
        if int8:
            doc["fp32_scores"] = fp32_scores.tolist()
        (frames_dir / "reference.json").write_text(json.dumps(doc, indent=1))
        result["frames"] = str(frames_dir)
    return result


def cached_engine(micro: bool = False, root: str | os.PathLike | None = None, int8: bool = False) -> dict:
    """:func:`make_engine` into a cache directory keyed by this script's and the package's content, so test
    sessions reuse an engine instead of exporting it again (~10 s). Returns make_engine's dict
    plus "frames" (not for micro)."""
    import tempfile
    # keyed by this script AND the package's Python sources: the engine and its reference scores
    # come from the build and the Python runtime, so a cache made before a runtime change (e.g. the
    # INT8 engine's inference precision) must not be reused after it
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for src in sorted((ROOT / "cdd_engine").rglob("*.py")):
        digest.update(src.relative_to(ROOT).as_posix().encode() + b"\0" + src.read_bytes())
    key = digest.hexdigest()[:12]
    kind = "micro" if micro else "int8" if int8 else "tiny"
    base = Path(root or tempfile.gettempdir()) / f"cdd_native_test_{kind}_{key}"
    done = base / "done.json"
    if done.is_file():
        return json.loads(done.read_text())
    tmp = base.with_name(base.name + f".{os.getpid()}")
    r = make_engine(tmp / "engine", None if micro else tmp / "frames", micro=micro, int8=int8)
    try:
        tmp.rename(base)
    except OSError:  # another process won the race: use its copy
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
        return json.loads(done.read_text())
    r["engine"] = str(base / "engine")
    if not micro:
        r["frames"] = str(base / "frames")
    done.write_text(json.dumps(r))
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="engine directory to write")
    ap.add_argument("--frames", help="also write demo frames and reference.json here")
    ap.add_argument("--micro", action="store_true", help="the ~50 us/frame stand-in network")
    ap.add_argument("--int8", action="store_true", help="the INT8 (NNCF) engine of the tiny network")
    ap.add_argument("--reuse", action="store_true",
                    help="link --out/--frames to the cache that the pytest suite uses (cached_engine)")
    args = ap.parse_args()
    if args.reuse:
        r = cached_engine(micro=args.micro, int8=args.int8)
        for link, target in ((args.out, r["engine"]), (args.frames, r.get("frames"))):
            if link and target:
                link = Path(link)
                if link.is_symlink() or link.is_file():
                    link.unlink()
                elif link.is_dir():
                    import shutil
                    shutil.rmtree(link)
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(target, target_is_directory=True)
    else:
        r = make_engine(args.out, args.frames, micro=args.micro, int8=args.int8)
    print(json.dumps({k: v for k, v in r.items() if k != "scores"}))


if __name__ == "__main__":
    main()
