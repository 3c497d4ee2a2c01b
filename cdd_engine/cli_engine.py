"""``cdd-engine build | score | bench``: the deployment subcommands.

Registered by :mod:`cdd_engine.cli` through :func:`add_build_parser`, :func:`add_score_parser`
and :func:`add_bench_parser` (each adds its parser and sets ``handler``; handlers return an exit
status, errors are turned into one line by ``cli.main``).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .cli_help import HelpFormatter as _Formatter

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm")


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _int_list(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _log_to_stderr(quiet: bool) -> None:
    if not quiet:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
        logging.getLogger("cdd_engine").setLevel(logging.INFO)


# ----------------------------------------------------------------------------- build
def add_build_parser(sub) -> None:
    p = sub.add_parser(
        "build", formatter_class=_Formatter, help="build a scoring engine from a run directory",
        description="Export a checkpoint's teacher + student to an engine directory (docs/engine_format.md): "
                    "model.onnx plus the backend's own files, engine.json with the threshold and file hashes. "
                    "'auto' picks TensorRT on an NVIDIA GPU when TensorRT is installed, else OpenVINO (CPU).",
        epilog="examples:\n  cdd-engine build --checkpoint runs/bottle --out engines/bottle\n"
               "  cdd-engine build --checkpoint runs/bottle --backend tensorrt --precision fp16 --out engines/bottle_trt\n"
               "  cdd-engine build --checkpoint runs/bottle --backend torch --out engines/bottle_torch")
    p.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help="run directory written by train")
    p.add_argument("--out", required=True, metavar="ENGINE_DIR", help="engine directory to write")
    p.add_argument("--backend", default="auto", choices=("auto", "openvino", "tensorrt", "torch"))
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"),
                   help="fp16: TensorRT/torch on CUDA (OpenVINO: fp16 weights); int8: TensorRT with --calibration")
    p.add_argument("--max-batch", type=_positive_int, default=32, metavar="N", help="largest batch per network call")
    p.add_argument("--threshold", type=float, default=None, metavar="T",
                   help="score threshold (default: the one derived from the training scores)")
    p.add_argument("--teacher-weights", default=None, metavar="PATH",
                   help="where the teacher's weights are, if not where training found them")
    p.add_argument("--calibration", default=None, metavar="DIR", help="normal images for INT8 calibration")
    p.add_argument("--timing-cache", default=None, metavar="FILE", help="TensorRT timing cache (read and updated)")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check of the exported graph")
    p.set_defaults(handler=run_build)


def run_build(a: argparse.Namespace) -> int:
    import cdd_engine

    _log_to_stderr(a.quiet)
    calibration = None
    if a.calibration:
        calibration = [_read_image(p)[0] for p in _expand_images([a.calibration])]
    t0 = time.perf_counter()
    engine = cdd_engine.build(a.checkpoint, backend=a.backend, precision=a.precision, max_batch=a.max_batch,
                              output_dir=a.out, threshold=a.threshold, teacher_weights=a.teacher_weights,
                              verify=not a.no_verify, calibration_frames=calibration, timing_cache=a.timing_cache)
    m = engine.manifest
    print(f"engine: {engine.engine_dir}")
    print(f"  backend {m['backend']} ({m['build']['backend_choice']}), precision {m['precision']}, "
          f"max batch {m['max_batch']}, image size {m['image_size'][0]}x{m['image_size'][1]}")
    print(f"  threshold {engine.threshold:.6g} ({m['threshold']['source']}); files: {', '.join(m['files'])}")
    print(f"  runtime here: {engine.runtime}")
    print(f"  built in {time.perf_counter() - t0:.1f} s; score with: cdd-engine score --engine {engine.engine_dir} IMAGE...")
    return 0


# ----------------------------------------------------------------------------- score
def add_score_parser(sub) -> None:
    p = sub.add_parser(
        "score", formatter_class=_Formatter, help="score images with an engine",
        description="Score image files (or every image in the given folders) with an engine directory. Prints "
                    "one line per image (score, verdict); --json writes the results as JSON (to stdout with "
                    "no FILE), --overlay writes a heat-map overlay PNG per image.",
        epilog="examples:\n  cdd-engine score --engine engines/bottle line/*.png\n"
               "  cdd-engine score --engine engines/bottle line/ --json results.json --overlay heatmaps/\n"
               "  cdd-engine score --engine engines/bottle frame.png --json")
    p.add_argument("--engine", required=True, metavar="ENGINE_DIR")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="write results as JSON to FILE (stdout if FILE is omitted)")
    p.add_argument("--overlay", default=None, metavar="DIR", help="write <name>_overlay.png heat maps here")
    p.add_argument("--threshold", type=float, default=None, metavar="T", help="override the engine's threshold")
    p.add_argument("--device", default=None, help="torch/tensorrt engines: cpu or cuda")
    p.set_defaults(handler=run_score)


def _expand_images(paths: Sequence[str]) -> list[Path]:
    out: list[Path] = []
    for text in paths:
        p = Path(text)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {p}")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such image file or folder: {p}")
    return out


def _read_image(path: Path) -> tuple[np.ndarray, str]:
    """Decode an image file -> (uint8 frame, pixel format). Grey files stay single-channel (MONO)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("L", "I;16", "I", "F", "1"):
                arr = np.asarray(im.convert("L") if im.mode != "L" else im)
                return arr, "MONO"
            return np.asarray(im.convert("RGB")), "RGB"
    except OSError as e:
        raise ValueError(f"cannot read image {path}: {e}") from e


def run_score(a: argparse.Namespace) -> int:
    import cdd_engine

    # --threads is one of cli.py's common options: it also sets the engine's inference threads
    engine = cdd_engine.load(a.engine, threshold=a.threshold, device=a.device,
                             num_threads=getattr(a, "threads", None))
    paths = _expand_images(a.images)
    decoded = [_read_image(p) for p in paths]
    # a call takes one pixel format: grey files are scored as MONO, colour files as RGB
    results: list[dict[str, Any] | None] = [None] * len(paths)
    maps: list[np.ndarray | None] = [None] * len(paths)
    t0 = time.perf_counter()
    for fmt in ("RGB", "MONO"):
        idx = [i for i, (_, f) in enumerate(decoded) if f == fmt]
        for start in range(0, len(idx), engine.max_batch):
            chunk = idx[start:start + engine.max_batch]
            r = engine.score([decoded[i][0] for i in chunk], pixel_format=fmt, return_maps=bool(a.overlay),
                             map_size="input")
            for j, i in enumerate(chunk):
                results[i] = {"image": str(paths[i]), "score": float(r.scores[j]),
                              "is_anomalous": bool(r.is_anomalous[j])}
                if a.overlay:
                    maps[i] = r.maps[j]
    seconds = time.perf_counter() - t0
    if a.overlay:
        _write_overlays(Path(a.overlay), paths, decoded, maps, engine.threshold)
    report = {"engine": str(engine.engine_dir), "backend": engine.backend_name, "runtime": engine.runtime,
              "threshold": engine.threshold,
              "n_images": len(paths), "n_anomalous": sum(r["is_anomalous"] for r in results),
              "seconds": seconds, "results": results}
    if a.json == "-":
        print(json.dumps(report, indent=2))
        return 0
    width = max(len(r["image"]) for r in results)
    for r in results:
        print(f"{r['image']:<{width}}  {r['score']:.6f}  {'ANOMALOUS' if r['is_anomalous'] else 'ok'}")
    print(f"{report['n_anomalous']} of {len(paths)} anomalous (threshold {engine.threshold:.6g}); "
          f"{len(paths) / max(seconds, 1e-9):.1f} images/s with {engine.backend_name} ({engine.runtime})")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"JSON: {a.json}")
    if a.overlay:
        print(f"overlays: {a.overlay}")
    return 0


def _write_overlays(out: Path, paths: list[Path], decoded, maps, threshold: float) -> None:
    from PIL import Image

    from .visualize import overlay

    out.mkdir(parents=True, exist_ok=True)
    lo = min(float(m.min()) for m in maps)
    hi = max(max(float(m.max()) for m in maps), threshold)  # one colour scale for the whole call
    if not hi > lo:
        hi = lo + 1e-6
    for p, (img, fmt), m in zip(paths, decoded, maps):
        rgb = np.repeat(img[..., None], 3, axis=2) if fmt == "MONO" else img
        Image.fromarray(overlay(rgb, m, lo, hi)).save(out / f"{p.stem}_overlay.png")


# ----------------------------------------------------------------------------- bench
def add_bench_parser(sub) -> None:
    p = sub.add_parser(
        "bench", formatter_class=_Formatter, help="time engines against the eager PyTorch pipeline",
        description="Images/s and p50/p99 latency of engines (uint8 frames in, scores and maps out) against the "
                    "eager PyTorch reference pipeline (resize_normalize -> RD model -> reference anomaly map), "
                    "interleaved in one run, for random-weight models (speed does not depend on the weights). "
                    "Also times the anomaly map alone (fast paths vs eager). Writes JSON and a markdown table.",
        epilog="examples:\n  cdd-engine bench --backbones efficientnet_lite0 --batch-sizes 1,8\n"
               "  cdd-engine bench --json bench.json --md bench.md")
    p.add_argument("--backbones", default="wide_resnet50_2,efficientnet_lite0", help="comma-separated teachers")
    p.add_argument("--backends", default="openvino", help="comma-separated engine backends to time")
    p.add_argument("--batch-sizes", type=_int_list, default=[1, 8, 32], metavar="B,B,...")
    p.add_argument("--image-size", type=_positive_int, default=256, metavar="N", help="model resolution")
    p.add_argument("--frame-size", type=_positive_int, default=None, metavar="N",
                   help="side of the uint8 input frames (default: the model resolution)")
    p.add_argument("--rounds", type=_positive_int, default=5, metavar="N", help="timed calls per pipeline")
    p.add_argument("--engines-dir", default=None, metavar="DIR", help="build/reuse engines here")
    p.add_argument("--no-postprocess", action="store_true", help="skip the anomaly-map-alone benchmark")
    p.add_argument("--json", default=None, metavar="FILE")
    p.add_argument("--md", default=None, metavar="FILE")
    p.set_defaults(handler=run_bench)


def run_bench(a: argparse.Namespace) -> int:
    from .bench import postprocess_benchmark, throughput_benchmark, write_results

    _log_to_stderr(a.quiet)
    say = (lambda msg: None) if a.quiet else (lambda msg: print(msg, file=sys.stderr))
    results = throughput_benchmark([b for b in a.backbones.split(",") if b], [b for b in a.backends.split(",") if b],
                                   a.batch_sizes, a.image_size, a.frame_size, a.rounds, a.engines_dir, progress=say)
    if not a.no_postprocess:
        results["postprocess"] = postprocess_benchmark(rounds=a.rounds)
    command = (f"cdd-engine bench --backbones {a.backbones} --backends {a.backends} --batch-sizes "
               f"{','.join(map(str, a.batch_sizes))} --image-size {a.image_size} --rounds {a.rounds}"
               + (f" --frame-size {a.frame_size}" if a.frame_size else ""))
    print(write_results(results, a.json, a.md, command=command))
    return 0


__all__ = ["add_build_parser", "add_score_parser", "add_bench_parser"]
