"""``cdd-engine build | score | bench``: the deployment subcommands.

Registered by :mod:`cdd_engine.cli` through :func:`add_build_parser`, :func:`add_score_parser`
and :func:`add_bench_parser` (each adds its parser and sets ``handler``; handlers return an exit
status, errors are turned into one line by ``cli.main``).
"""
from __future__ import annotations

import argparse
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


def _non_negative_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
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
               "  cdd-engine build --checkpoint runs/bottle --backend torch --out engines/bottle_torch\n"
               "  cdd-engine build --checkpoint runs/bottle --precision int8 --data mvtec --out engines/bottle_int8\n"
               "  cdd-engine build --checkpoint runs/bottle --backend aoti --device cuda --out engines/bottle_aoti")
    p.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help="run directory written by train")
    p.add_argument("--out", required=True, metavar="ENGINE_DIR", help="engine directory to write")
    p.add_argument("--backend", default="auto", choices=("auto", "openvino", "tensorrt", "torch", "aoti"),
                   help="engine backend; auto: TensorRT on an NVIDIA GPU when installed, else OpenVINO; aoti: the "
                        "network compiled ahead of time by PyTorch's AOTInductor (model.pt2) for --device")
    p.add_argument("--precision", default=None, choices=("fp32", "fp16", "bf16", "tf32", "int8"),
                   help="default fp32 (fp16 for aoti on cuda). fp16: TensorRT/torch/aoti on CUDA (OpenVINO: fp16 "
                        "weights); bf16: aoti; tf32: torch/aoti on CUDA; int8: OpenVINO (NNCF) or TensorRT, "
                        "calibrated on the run's training images (or --calibration DIR), checked by an accuracy "
                        "guard against fp32 that refuses the build when it fails")
    p.add_argument("--device", default=None, metavar="DEV",
                   help="torch device the engine is built for and loaded on (aoti, torch), e.g. cpu or cuda")
    p.add_argument("--max-batch", type=_positive_int, default=32, metavar="N", help="largest batch per network call")
    p.add_argument("--threshold", type=float, default=None, metavar="T",
                   help="score threshold (default: the one derived from the training scores)")
    p.add_argument("--teacher-weights", default=None, metavar="PATH",
                   help="where the teacher's weights are, if not where training found them")
    p.add_argument("--calibration", default=None, metavar="DIR",
                   help="int8: normal images to calibrate on (default: the run's own training images)")
    p.add_argument("--calibration-size", type=_positive_int, default=300, metavar="N",
                   help="int8: calibrate on at most N images (seeded choice; fewer when fewer exist)")
    p.add_argument("--calibration-seed", type=_non_negative_int, default=0, metavar="S",
                   help="int8: seed of the calibration/guard image choice (a build is reproducible)")
    p.add_argument("--int8-fallback", action="store_true",
                   help="int8: build fp32 instead when the accuracy guard fails (default: refuse the build)")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="int8: labelled MVTec-layout data set; the guard then also compares image/pixel AUROC")
    # the choices here and in --int8-quantization's help are export/quantize.py's lists, written out
    # so that parsing does not import torch (tests/test_int8_settings.py ties them together)
    p.add_argument("--keep-fp32", default=None, choices=("none", "student_last", "student", "teacher_first", "teacher"),
                   help="OpenVINO int8: layers left in float32 (default none: everything int8, fastest; "
                        "teacher_first: the teacher's first stage, closer to fp32, slower)")
    p.add_argument("--int8-quantization", action="append", default=None, metavar="KEY=VALUE",
                   help="OpenVINO int8: an NNCF setting, repeatable: preset=performance|mixed, "
                        "bias_correction=fast|full|none, activation_range=default|minmax|mean_minmax|median_minmax|"
                        "mean_quantile|histogram, overflow_fix=enable|first_layer|disable (default enable: 7-bit "
                        "weights, no int16 saturation on CPUs without VNNI, the same scores on every CPU), "
                        "accuracy_control=DROP (revert the quantizers that hurt the Spearman of INT8 vs fp32 "
                        "scores most until it drops by at most DROP; slower build); "
                        "defaults and their measurements: cdd_engine/export/quantize.py")
    p.add_argument("--timing-cache", default=None, metavar="FILE", help="TensorRT timing cache (read and updated)")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check of the exported graph "
                   "(the NaN/inf check of the weights and of a probe batch always runs)")
    p.add_argument("--no-winograd", action="store_true", help="OpenVINO: keep the 3x3 convolutions direct "
                   "(by default those with >= 256 channels become Winograd F(2x2, 3x3); engine.json records it)")
    p.add_argument("--force", action="store_true",
                   help="replace --out even if it is a non-empty folder that is not an engine")
    p.set_defaults(handler=run_build)


def _quantization_settings(pairs: list[str]) -> dict[str, object]:
    """--int8-quantization KEY=VALUE ... -> the quantization dict of build() (checked there)."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"--int8-quantization takes KEY=VALUE, got {pair!r}")
        if key == "accuracy_control":
            try:
                out[key] = float(value)
            except ValueError:
                raise ValueError(f"--int8-quantization accuracy_control takes a number (a Spearman drop), "
                                 f"got {value!r}") from None
        else:
            out[key] = value
    return out


def run_build(a: argparse.Namespace) -> int:
    import cdd_engine
    from .checkpoint import read_config
    from .training.config import check_image_size

    # the size rule, before minutes of export (a run trained before the rule was enforced may break it)
    check_image_size(tuple(read_config(a.checkpoint)["model"]["image_size"]), "the checkpoint's image size")
    # The summary below states the backend choice, the runtime and the build time once: build()'s and
    # Engine's own INFO lines say the same (some twice), so they stay off here; warnings still show.
    build_log = logging.getLogger("cdd_engine")
    if not a.quiet:
        print(f"building an engine from {a.checkpoint} (backend {a.backend}, {a.precision or 'default precision'}) "
              f"in {a.out} ...",
              file=sys.stderr)
    int8 = {}
    if a.precision == "int8":
        int8 = dict(calibration_frames=a.calibration, calibration_size=a.calibration_size,
                    calibration_seed=a.calibration_seed, int8_fallback=a.int8_fallback, data=a.data,
                    keep_fp32=a.keep_fp32)
        if a.int8_quantization:
            int8["quantization"] = _quantization_settings(a.int8_quantization)
    elif a.calibration or a.int8_fallback or a.data or a.keep_fp32 or a.int8_quantization:
        raise ValueError("--calibration, --int8-fallback, --data, --keep-fp32 and --int8-quantization are for "
                         "--precision int8")
    t0 = time.perf_counter()
    level = build_log.level
    build_log.setLevel(logging.WARNING)
    try:
        engine = cdd_engine.build(a.checkpoint, backend=a.backend, precision=a.precision, max_batch=a.max_batch,
                                  output_dir=a.out, threshold=a.threshold, teacher_weights=a.teacher_weights,
                                  verify=not a.no_verify, timing_cache=a.timing_cache, overwrite=a.force,
                                  winograd=not a.no_winograd, device=a.device, **int8)
    finally:
        build_log.setLevel(level)
    m = engine.manifest
    print(f"engine: {engine.engine_dir}")
    print(f"  backend {m['backend']} ({m['build']['backend_choice']}), precision {m['precision']}, "
          f"max batch {m['max_batch']}, image size {m['image_size'][0]}x{m['image_size'][1]}")
    print(f"  threshold {engine.threshold:.6g} ({m['threshold']['source']}); files: {', '.join(m['files'])}")
    if "int8" in m:  # what the accuracy guard measured (also on a fallback to fp32)
        from .runtime.int8_guard import describe
        cal, guard = m["int8"]["calibration"], m["int8"]["guard"]
        print(f"  int8 ({m['int8']['tool']}): {cal['size']} calibration images ({cal['source']}, seed {cal['seed']})")
        print(f"  accuracy guard: {describe(guard)}")
        if m["int8"].get("fallback"):
            print(f"  the INT8 engine failed its guard: built {m['precision']} instead (--int8-fallback)")
    print(f"  runtime here: {engine.runtime}")
    print(f"  built in {time.perf_counter() - t0:.1f} s; score with: cdd-engine score --engine {engine.engine_dir} IMAGE...")
    return 0


# ----------------------------------------------------------------------------- score
def add_score_parser(sub) -> None:
    p = sub.add_parser(
        "score", formatter_class=_Formatter, help="score images with an engine",
        description="Score image files (or every image in the given folders) with an engine directory. Prints "
                    "one line per image (score, verdict); --json FILE writes the results as JSON (--json - to "
                    "stdout), --overlays DIR writes a heat-map overlay PNG per image. Files are decoded as "
                    "training decodes them (16-bit grey scaled to 8 bits, EXIF orientation applied).",
        epilog="examples:\n  cdd-engine score --engine engines/bottle line/*.png\n"
               "  cdd-engine score --engine engines/bottle line/ --json results.json --overlays heatmaps/\n"
               "  cdd-engine score --engine engines/bottle frame.png --json -")
    p.add_argument("--engine", required=True, metavar="ENGINE_DIR", help="engine directory written by build")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    # every option takes its value explicitly: an optional value would swallow an IMAGE (issue 11)
    p.add_argument("--json", default=None, metavar="FILE",
                   help="write results as JSON to FILE ('-': to stdout, instead of the table)")
    p.add_argument("--overlays", dest="overlay", default=None, metavar="DIR",
                   help="write labelled heat maps here (the inputs' folders mirrored: <folder>/<name>_overlay.png) "
                        "and contact_sheet.png of the highest scores")
    p.add_argument("--overlay", dest="overlay", default=None, metavar="DIR", help=argparse.SUPPRESS)  # old spelling
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing --json file (a report this command wrote before included) and "
                        "overlay files this command did not write; the input images are never overwritten")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="skip image files that cannot be decoded, list them (and in --json) and go on "
                        "(default: stop at the first one)")
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
    """Decode an image file with the package's one decoder (cdd_engine.data.images.decode_image, as
    training does) -> (uint8 frame, pixel format). Grey files stay single-channel (MONO): the engine
    replicates them to RGB exactly as training's loader does."""
    from .data.images import decode_image

    kind, arr = decode_image(path)
    return arr, ("MONO" if kind == "gray" else "RGB")


def run_score(a: argparse.Namespace) -> int:
    import cdd_engine

    from . import cli_io
    from .data.images import DatasetError

    paths = _expand_images(a.images)
    cli_io.check_output(a.json, "--json", a.force, inputs=paths)  # before the engine is even loaded
    if a.overlay:  # refuse a folder holding files this tool did not write before any scoring
        _write_overlays(Path(a.overlay), paths, None, None, None, None, getattr(a, "force", False))
    # --threads is one of cli.py's common options: it also sets the engine's inference threads
    engine = cdd_engine.load(a.engine, threshold=a.threshold, device=a.device,
                             num_threads=getattr(a, "threads", None))
    # Files are decoded one engine batch at a time (a folder of thousands is never all in memory);
    # a call takes one pixel format: grey files are scored as MONO, colour files as RGB.
    results: list[dict[str, Any]] = []
    maps: list[np.ndarray] = []
    skipped: list[dict[str, str]] = []
    kept: list[Path] = []
    seconds = 0.0
    for start in range(0, len(paths), engine.max_batch):
        decoded = []
        for p in paths[start:start + engine.max_batch]:
            try:
                decoded.append((p, *_read_image(p)))
            except DatasetError as e:
                if not a.skip_bad_images:
                    raise
                skipped.append({"path": str(p), "error": str(e)})
        done: dict[int, tuple[dict[str, Any], np.ndarray | None]] = {}
        for fmt in ("RGB", "MONO"):
            idx = [i for i, (_, _, f) in enumerate(decoded) if f == fmt]
            if not idx:
                continue
            t0 = time.perf_counter()
            r = engine.score([decoded[i][1] for i in idx], pixel_format=fmt, return_maps=bool(a.overlay),
                             map_size="model")  # model-size maps: overlays are drawn at a bounded size
            seconds += time.perf_counter() - t0
            for j, i in enumerate(idx):
                done[i] = ({"image": str(decoded[i][0]), "score": float(r.scores[j]),
                            "is_anomalous": bool(r.is_anomalous[j])}, r.maps[j] if a.overlay else None)
        for i in sorted(done):
            kept.append(decoded[i][0])
            results.append(done[i][0])
            if a.overlay:
                maps.append(done[i][1])
    if not kept:
        raise ValueError(f"none of the {len(paths)} image file(s) could be read, e.g. {skipped[0]['error']}")
    paths = kept
    decoded = (_read_image(p) for p in paths)  # overlays decode each file again, one at a time
    if a.overlay:
        _write_overlays(Path(a.overlay), paths, decoded, maps, [r["score"] for r in results], engine.threshold,
                        getattr(a, "force", False))
    report = {"engine": str(engine.engine_dir), "backend": engine.backend_name, "runtime": engine.runtime,
              "threshold": engine.threshold,
              "n_images": len(paths), "n_anomalous": sum(r["is_anomalous"] for r in results),
              "seconds": seconds, "results": results, "skipped_images": skipped}
    if a.json == cli_io.STDOUT:
        cli_io.write_json(a.json, report, stream=getattr(a, "json_stream", None))
        for e in skipped:  # stdout is the JSON alone; the skipped files are named on stderr too
            print(f"skipped unreadable image (--skip-bad-images): {e['path']}: {e['error']}", file=sys.stderr)
        return 0
    width = max(len(r["image"]) for r in results)
    for r in results:
        print(f"{r['image']:<{width}}  {r['score']:.6f}  {'ANOMALOUS' if r['is_anomalous'] else 'ok'}")
    print(f"{report['n_anomalous']} of {len(paths)} anomalous (threshold {engine.threshold:.6g}); "
          f"{len(paths) / max(seconds, 1e-9):.1f} images/s with {engine.backend_name} ({engine.runtime})")
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s) (--skip-bad-images):")
        for e in skipped:
            print(f"  {e['path']}: {e['error']}")
    if a.json:
        cli_io.write_json(a.json, report)
        print(f"JSON: {a.json}")
    if a.overlay:
        print(f"overlays: {a.overlay}")
    return 0


def _write_overlays(out: Path, paths: list[Path], decoded, maps, scores, threshold, force: bool) -> None:
    """Labelled overlays mirroring the input tree, plus contact_sheet.png (cdd_engine.visualize);
    with ``decoded`` None only checks that nothing this tool did not write would be overwritten."""
    from .visualize import claim_outputs, mirrored_names, save_score_overlays, CONTACT_SHEET

    if decoded is None:
        claim_outputs(out, mirrored_names(paths, "_overlay.png") + [CONTACT_SHEET], force)
        return
    save_score_overlays(out, paths, (img for img, _ in decoded), maps, scores, threshold, force=force)


# ----------------------------------------------------------------------------- bench
def add_bench_parser(sub) -> None:
    p = sub.add_parser(
        "bench", formatter_class=_Formatter, help="time engines against the eager PyTorch pipeline",
        description="Images/s and p50/p99 latency of engines (uint8 frames in, scores and maps out) against the "
                    "eager PyTorch reference pipeline (resize_normalize -> RD model -> reference anomaly map), "
                    "interleaved in one run, for random-weight models (speed does not depend on the weights). "
                    "Also times the anomaly map alone (fast paths vs eager). Writes JSON and a markdown table. "
                    "With --engine DIR, times an engine you built instead (and, when its run directory is "
                    "still there, the eager pipeline of the same checkpoint). Torch and the engines use the "
                    "same thread count (--threads). Engines built here go to a temporary folder that is "
                    "removed at the end, unless --engines-dir is given.",
        epilog="examples:\n  cdd-engine bench --backbones efficientnet_lite0 --batch-sizes 1,8\n"
               "  cdd-engine bench --json bench.json --md bench.md\n"
               "  cdd-engine bench --engine engines/bottle --batch-sizes 1,8")
    p.add_argument("--engine", default=None, metavar="ENGINE_DIR",
                   help="time this engine (built by 'cdd-engine build') instead of random-weight models")
    p.add_argument("--backbones", default="wide_resnet50_2,efficientnet_lite0", help="comma-separated teachers")
    p.add_argument("--backends", default="openvino,openvino-int8",  # bench.DEFAULT_BACKENDS (torch-free import)
                   help="comma-separated engine backends to time: openvino, openvino-int8, torch, ... "
                        "(see benchmarks/throughput.py --help)")
    p.add_argument("--batch-sizes", type=_int_list, default=[1, 8, 32], metavar="B,B,...",
                   help="frames per call, comma-separated")
    p.add_argument("--image-size", type=_positive_int, default=256, metavar="N",
                   help="model resolution (a multiple of 32, at least 32)")
    p.add_argument("--frame-size", type=_positive_int, default=None, metavar="N",
                   help="side of the uint8 input frames (default: the model resolution)")
    p.add_argument("--rounds", type=_positive_int, default=5, metavar="N", help="timed calls per pipeline")
    p.add_argument("--engines-dir", default=None, metavar="DIR", help="build/reuse engines here")
    p.add_argument("--no-postprocess", action="store_true", help="skip the anomaly-map-alone benchmark")
    p.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON to FILE")
    p.add_argument("--md", default=None, metavar="FILE", help="write the markdown tables to FILE")
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing --json/--md file (results this command wrote before included)")
    p.set_defaults(handler=run_bench)


def run_bench(a: argparse.Namespace) -> int:
    from . import cli_io
    from .bench import engine_benchmark, postprocess_benchmark, throughput_benchmark, write_results
    from .training.config import check_image_size

    for path, option in ((a.json, "--json"), (a.md, "--md")):
        if path == cli_io.STDOUT:
            raise ValueError(f"{option} takes a file name here (the tables are printed anyway)")
        cli_io.check_output(path, option, a.force)
    _log_to_stderr(a.quiet)
    say = (lambda msg: None) if a.quiet else (lambda msg: print(msg, file=sys.stderr))
    if a.engine:
        results = engine_benchmark(a.engine, a.batch_sizes, a.rounds, a.frame_size, progress=say)
        command = f"cdd-engine bench --engine {a.engine} --batch-sizes {','.join(map(str, a.batch_sizes))} " \
                  f"--rounds {a.rounds}"
    else:
        check_image_size(a.image_size, "--image-size")
        results = throughput_benchmark([b for b in a.backbones.split(",") if b],
                                       [b for b in a.backends.split(",") if b], a.batch_sizes, a.image_size,
                                       a.frame_size, a.rounds, a.engines_dir, progress=say)
        command = (f"cdd-engine bench --backbones {a.backbones} --backends {a.backends} --batch-sizes "
                   f"{','.join(map(str, a.batch_sizes))} --image-size {a.image_size} --rounds {a.rounds}")
    if not a.no_postprocess:
        results["postprocess"] = postprocess_benchmark(rounds=a.rounds)
    command += f" --frame-size {a.frame_size}" if a.frame_size else ""
    print(write_results(results, a.json, a.md, command=command))
    return 0


__all__ = ["add_build_parser", "add_score_parser", "add_bench_parser"]
