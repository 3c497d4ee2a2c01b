"""Throughput benchmarks: engines against the eager PyTorch reference pipeline, in one run.

What is timed, per backbone and batch size: uint8 frames (N, H, W, 3) in -> scores and maps
(N, H, W) out.

- ``eager``: the reference pipeline, ``resize_normalize -> RDModel -> anomaly_map`` in
  ``torch.inference_mode`` (what training and evaluation use);
- ``<backend>``: ``Engine.score(frames)`` of an engine built from the same model;
  ``openvino-int8``: the INT8 OpenVINO engine (issue 14), always timed beside its fp32 engine
  in the same rounds, with its ratios against that fp32 engine as well as against eager.

Calls are interleaved round by round (eager, engine, eager, engine, ... with the order
rotated every round), because the machines this runs on are shared and their load drifts:
each round's pair sees about the same load. Reported: images/s from the median call time,
p50/p99 latency per call and per image, the ratio of median images/s, and the median of the
per-round ratios (the most load-robust figure).

The stage breakdown comes from the same rounds, so it agrees with the throughput table: the
eager contender's own timed calls record their stages (pre-processing, network, map; their
sum is the call), and the engine's stages (pre-processing, network + map, output, on its
Python backend) are one more contender of the same interleaved rounds. Both are per image.
They used to be timed after the main loop, in a separate burst: on a shared, oversubscribed
machine torch's threads then waited on each other's barriers (one run: eager network 2,030
ms/image there against a 188 ms whole call in the table). Torch and the engines run with the
same thread count (``torch.get_num_threads()``, set by ``--threads``), recorded in the results.

``postprocess_benchmark`` times the anomaly map alone on WRN50-shaped features (fast paths vs
the eager reference). :func:`engine_benchmark` times an engine a user built (``bench --engine``).

``demo_engine_step`` is the "build an engine and print its images/s beside eager" step of
``cdd-engine demo``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .anomaly_map import anomaly_map
from .preprocess import resize_normalize

log = logging.getLogger("cdd_engine.bench")
DEFAULT_BACKBONES = ("wide_resnet50_2", "efficientnet_lite0")
# the fp32 OpenVINO engine and its INT8 twin (NNCF, calibrated on random frames: a speed row only)
DEFAULT_BACKENDS = ("openvino", "openvino-int8")
DEFAULT_BATCHES = (1, 8, 32)


# ----------------------------------------------------------------------------- machine
def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, library versions and the load average (the runs share cores)."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count(), "torch": torch.__version__,
                            "torch_threads": torch.get_num_threads()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
        info["simd"] = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
                        if f" {f}" in flags]
        mem = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
        info["memory_gb"] = round(int(mem.split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    try:
        import openvino
        info["openvino"] = openvino.__version__.split("-")[0]
    except ImportError:
        pass
    # ONEDNN_MAX_CPU_ISA=AVX2 makes oneDNN (OpenVINO's CPU plugin, torch) dispatch as on an AVX2 CPU;
    # figures taken so must say so next to the CPU's own flags
    isa_cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    if isa_cap:
        info["onednn_isa_cap"] = isa_cap
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    info["loadavg_start"] = _loadavg()
    return info


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# ----------------------------------------------------------------------------- pipelines
EAGER_STAGES = ("eager_pre", "eager_network", "eager_map")
ENGINE_STAGES = ("engine_pre", "engine_network_and_map", "engine_out")


def eager_pipeline(model: torch.nn.Module, mode: str = "add", sigma: float = 4.0,
                   stages: dict[str, list[float]] | None = None) -> Callable[[np.ndarray], Any]:
    """The reference pipeline as a callable: uint8 (N,H,W,3) -> (maps (N,H,W), scores (N,)).

    ``stages``: when given, every call appends its seconds of pre-processing, network and map
    (map includes the copy out) to ``stages[EAGER_STAGES[i]]``; they add up to the call.
    """
    mean, std = model.normalization
    size = tuple(model.image_size)

    def run(frames: np.ndarray):
        with torch.inference_mode():
            t0 = time.perf_counter()
            x = resize_normalize(frames, size, mean, std)
            t1 = time.perf_counter()
            t, s = model(x)
            t2 = time.perf_counter()
            maps, scores = anomaly_map(t, s, size, mode, sigma)
            out = maps.numpy(), scores.numpy()
            t3 = time.perf_counter()
        if stages is not None:
            for name, v in zip(EAGER_STAGES, (t1 - t0, t2 - t1, t3 - t2)):
                stages.setdefault(name, []).append(v)
        return out

    return run


def _percentile(v: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(v), q))


def time_interleaved(contenders: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1, seed: int = 0
                     ) -> dict[str, list[float]]:
    """Seconds per call of each contender, ``rounds`` calls each, interleaved: every round runs each
    contender once, in a new random order (seeded, so a run can be repeated).

    Random, not rotated: a rotation keeps every contender right behind the same one, and the one
    behind the eager pipeline pays for torch's OpenMP threads still spinning after it returns.
    Measured (2 shared cores, efficientnet_lite0 batch 8, six runs, benchmarks/RESULTS.md "Frames
    per request"): the fp32 engine in that slot took 9-25 % longer (p50) than the very same engine
    elsewhere in the round."""
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    rng = random.Random(seed)
    for _ in range(rounds):
        order = rng.sample(names, len(names))
        for name in order:
            t0 = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def summarize(times: dict[str, list[float]], batch: int, baseline: str = "eager") -> dict[str, dict[str, float]]:
    """images/s, p50/p99 latency (ms per call), p50 ms per image and ratios against ``baseline``
    (no ratios when ``baseline`` was not timed)."""
    out = {}
    base = np.asarray(times[baseline]) if baseline in times else None
    for name, t in times.items():
        t = np.asarray(t)
        row = {"images_per_s": batch / float(np.median(t)), "p50_ms": 1e3 * _percentile(t, 50),
               "p99_ms": 1e3 * _percentile(t, 99), "p50_ms_per_image": 1e3 * _percentile(t, 50) / batch,
               "calls": int(t.size)}
        if name != baseline and base is not None:
            row["ratio_vs_eager"] = float(np.median(base) / np.median(t))
            row["median_paired_ratio"] = float(np.median(base / t))
        out[name] = row
    return out


def staged_engine_call(engine, frames: np.ndarray, stages: dict[str, list[float]]) -> Callable[[], Any]:
    """A contender that runs the engine's stages one by one on its Python backend (pre-processing,
    ``score_batch``, copy out) and appends each one's seconds to ``stages[ENGINE_STAGES[i]]``.

    Whichever runtime ``Engine.score`` uses, these are the Python backend's stages; the native
    runtime runs the same model files.
    """
    from .runtime.engine import to_numpy
    from .runtime.frames import to_frames

    n = frames.shape[0]

    def run():
        t0 = time.perf_counter()
        x = engine.prepare(to_frames(frames), 0, n)
        t1 = time.perf_counter()
        maps, scores = engine.backend.score_batch(x)
        t2 = time.perf_counter()
        to_numpy(maps).copy(), to_numpy(scores).copy()  # what Engine.score does with the backend's outputs
        t3 = time.perf_counter()
        for name, v in zip(ENGINE_STAGES, (t1 - t0, t2 - t1, t3 - t2)):
            stages.setdefault(name, []).append(v)

    return run


def _stage_summary(stages: dict[str, list[float]], n: int, warmup: int) -> dict[str, float]:
    """Median ms per image of each stage, the warm-up calls left out."""
    return {k: 1e3 * float(np.median(v[warmup:])) / n for k, v in stages.items() if len(v) > warmup}


# INT8 engines of random-weight models (throughput only): calibrated on random uint8 frames at the
# model size. Speed does not depend on the ranges NNCF picks; accuracy is measured on trained runs
# (benchmarks/int8_accuracy.py), so the build's accuracy guard is run and recorded in engine.json
# but not enforced here (a random teacher on noise frames has no meaningful score ranking).
# 32 frames (8 held out for the guard, 24 calibrate): NNCF's statistics pass over WRN50 at 256²
# stays under a minute on 2 cores.
INT8_CALIBRATION_FRAMES = 32
INT8_BUILD_OPTIONS: dict[str, Any] = {}


def speed_only_guard():
    """Guard thresholds that every INT8 engine meets: for throughput rows of random-weight models."""
    from .runtime.int8_guard import GuardThresholds
    return GuardThresholds(min_spearman=-1.0, max_map_rel_error_mean=1e30, max_map_rel_error_max=1e30,
                           max_image_auroc_drop=1.0, max_pixel_auroc_drop=1.0)


def _calibration_frames(model: torch.nn.Module, n: int = INT8_CALIBRATION_FRAMES) -> np.ndarray:
    h, w = model.image_size
    return np.random.default_rng(1234).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def _engine_for(backbone: str, backend: str, model: torch.nn.Module, engines_dir: Path, max_batch: int,
                engine_options: dict[str, Any]):
    """Load (or build) the engine of ``backend`` for ``model`` in ``engines_dir``.

    ``engine_options`` may hold the build-time keys ``"_winograd"`` (OpenVINO: rewrite the 3x3
    convolutions as Winograd, the export's default, or not) and ``"_precision"`` ("fp32" default,
    "int8": OpenVINO post-training quantization, never Winograd); the rest go to ``Engine``.
    """
    import cdd_engine
    from .errors import EngineFormatError

    engine_options = dict(engine_options)
    precision = engine_options.pop("_precision", "fp32")
    winograd = engine_options.pop("_winograd", True) and precision != "int8"
    if precision == "int8":
        suffix = "-int8"
    else:
        suffix = ("-winograd" if winograd else "-direct") if backend == "openvino" else ""
    out = engines_dir / f"{backbone}_{model.image_size[0]}_{backend}{suffix}"
    if (out / "engine.json").is_file():
        try:
            eng = cdd_engine.load(out, **engine_options)
            if eng.max_batch >= max_batch and eng.precision == precision:
                return eng
        except EngineFormatError as e:
            log.info("rebuilding %s: %s", out, e)
    log.info("building the %s engine of %s (random weights) in %s", backend + suffix, backbone, out)
    build_options: dict[str, Any] = {}
    if precision != "fp32":
        build_options["precision"] = precision
    if precision == "int8":
        build_options.update(calibration_frames=_calibration_frames(model), guard=speed_only_guard(),
                             **INT8_BUILD_OPTIONS)
    return cdd_engine.build(model, backend=backend, max_batch=max_batch, output_dir=out, threshold=1.0,
                            verify=False, winograd=winograd, **build_options, **engine_options)


def parse_variant(spec: str) -> tuple[str, str, dict[str, Any]]:
    """An engine to time -> (label, backend, options).

    "openvino", "torch", "openvino:latency" / "openvino:throughput" (how batches run),
    "openvino-direct[:mode]": the OpenVINO engine built without the Winograd rewrite of its 3x3
    convolutions (export/openvino.py), to time both in the same run; "openvino-int8[:mode]": the
    INT8 OpenVINO engine (NNCF post-training quantization), timed beside its fp32 counterpart
    (:func:`fp32_partner`); "/N" after the backend and mode runs N frames per request when a batch is
    split over streams (``sub_batch``; "openvino-int8:throughput/4"); a trailing "@python" or
    "@native" picks the Engine's runtime (default: native where it is built).
    """
    spec_main, _, runtime = spec.partition("@")
    spec_main, slash, sub_batch = spec_main.partition("/")
    backend, _, mode = spec_main.partition(":")
    options: dict[str, Any] = {}
    if slash:
        if backend not in ("openvino", "openvino-direct", "openvino-int8") or not sub_batch.isdigit() \
                or int(sub_batch) < 1:
            raise ValueError(f"frames per request are an OpenVINO option, as openvino[-int8][:mode]/N with "
                             f"N >= 1, got {spec!r}")
        options["sub_batch"] = int(sub_batch)
    if runtime:
        if runtime not in ("native", "python"):
            raise ValueError(f"runtime must be @native or @python, got {spec!r}")
        options["runtime"] = runtime
    if backend == "openvino-direct":
        backend, options["_winograd"] = "openvino", False
    elif backend == "openvino-int8":
        backend, options["_precision"] = "openvino", "int8"
    elif backend.endswith("-int8"):
        raise ValueError(f"INT8 rows here are openvino-int8 (a TensorRT INT8 plan needs a GPU: build it with "
                         f"'cdd-engine build --precision int8' and time it with 'bench --engine'), got {spec!r}")
    if mode:
        if backend != "openvino":
            raise ValueError(f"only openvino takes a mode (openvino:auto|latency|throughput), got {spec!r}")
        options["openvino_mode"] = mode
    return spec, backend, options


def fp32_partner(spec: str) -> str | None:
    """The fp32 variant an INT8 variant is compared with ("openvino-int8:latency@native" ->
    "openvino:latency@native"), None for variants that are not INT8. A "/N" (frames per request)
    is dropped: INT8 settings are compared with the fp32 engine as it runs by default."""
    label, _, options = parse_variant(spec)
    if options.get("_precision") != "int8":
        return None
    main, _, runtime = spec.partition("@")
    return main.partition("/")[0].replace("openvino-int8", "openvino", 1) + (f"@{runtime}" if runtime else "")


def with_fp32_partners(specs: Sequence[str]) -> list[str]:
    """``specs`` with each INT8 variant's fp32 partner added right before it when missing, so
    every INT8 row has its fp32 row from the same interleaved rounds."""
    out: list[str] = []
    for spec in specs:
        partner = fp32_partner(spec)
        if partner is not None and partner not in specs and partner not in out:
            out.append(partner)
        if spec not in out:
            out.append(spec)
    return out


def add_fp32_ratios(results: dict[str, dict[str, float]], times: dict[str, list[float]],
                    partners: dict[str, str]) -> None:
    """INT8 rows: ``ratio_vs_fp32`` (median images/s over the fp32 engine's) and
    ``median_paired_ratio_vs_fp32`` (median over rounds of fp32 call time / INT8 call time, the
    two calls of a round run back to back, so they see about the same load)."""
    for label, partner in partners.items():
        if label in times and partner in times:
            a, b = np.asarray(times[partner]), np.asarray(times[label])
            results[label]["ratio_vs_fp32"] = float(np.median(a) / np.median(b))
            results[label]["median_paired_ratio_vs_fp32"] = float(np.median(a / b))


def _time_runs(name: str, model: torch.nn.Module | None, engines: dict[str, Any], batch_sizes: Sequence[int],
               frame_hw: tuple[int, int], rounds: int | dict[int, int], stages: bool, say: Callable[[str], None],
               rng: np.random.Generator, anomaly_map_options: dict[str, Any] | None = None,
               warmup: int = 1, partners: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Interleaved rounds of eager (when ``model`` is given) and every engine, per batch size; the
    stage breakdown is recorded in the same rounds (see the module docstring). ``partners``:
    INT8 label -> its fp32 engine's label, for :func:`add_fp32_ratios`."""
    runs = []
    for batch in batch_sizes:
        n_rounds = rounds[batch] if isinstance(rounds, dict) else rounds
        frames = rng.integers(0, 256, size=(batch, *frame_hw, 3), dtype=np.uint8)
        contenders: dict[str, Callable[[], Any]] = {}
        eager_stages: dict[str, list[float]] = {}
        if model is not None:
            eager = eager_pipeline(model, **(anomaly_map_options or {}), stages=eager_stages if stages else None)
            contenders["eager"] = lambda: eager(frames)
        engine_stages: dict[str, dict[str, list[float]]] = {}
        for label, eng in engines.items():
            contenders[label] = lambda eng=eng: eng.score(frames)
            if stages:
                engine_stages[label] = {}
                contenders[f"{label} (stages)"] = staged_engine_call(eng, frames, engine_stages[label])
        say(f"{name} batch {batch}: {n_rounds} interleaved rounds of {', '.join(contenders)}")
        load0 = _loadavg()
        times = time_interleaved(contenders, n_rounds, warmup=warmup)
        for label in engine_stages:
            times.pop(f"{label} (stages)")
        run = {"backbone": name, "batch": batch, "loadavg": [load0, _loadavg()],
               "results": summarize(times, batch), "seconds": {k: v for k, v in times.items()}}
        add_fp32_ratios(run["results"], times, partners or {})
        if stages:
            eager_ms = _stage_summary(eager_stages, batch, warmup)
            run["stages_ms_per_image"] = {label: {**_stage_summary(st, batch, warmup), **eager_ms}
                                          for label, st in engine_stages.items()}
        runs.append(run)
        for label in engines:
            r = run["results"][label]
            vs = (f", {r['ratio_vs_eager']:.2f}x eager ({run['results']['eager']['images_per_s']:.2f} img/s); "
                  f"paired {r['median_paired_ratio']:.2f}x") if "eager" in run["results"] else ""
            if "ratio_vs_fp32" in r:
                vs += f"; {r['ratio_vs_fp32']:.2f}x fp32 (paired {r['median_paired_ratio_vs_fp32']:.2f}x)"
            say(f"  {label}: {r['images_per_s']:.2f} img/s{vs}")
    return runs


def _new_results(image_size: Any, frame_size: Any, batch_sizes: Sequence[int], backends: Sequence[str],
                 threads: int) -> dict[str, Any]:
    return {"machine": machine_info(), "image_size": image_size, "frame_size": frame_size,
            "batch_sizes": list(batch_sizes), "backends": list(backends),
            "threads": {"torch": torch.get_num_threads(), "engines": threads}, "runs": []}


def throughput_benchmark(backbones: Sequence[str] = DEFAULT_BACKBONES, backends: Sequence[str] = DEFAULT_BACKENDS,
                         batch_sizes: Sequence[int] = DEFAULT_BATCHES, image_size: int = 256,
                         frame_size: int | None = None, rounds: int | dict[int, int] = 5,
                         engines_dir: str | os.PathLike | None = None, stage_reps: int = 2,
                         progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Engines vs the eager reference, interleaved. Returns the JSON-able results.

    Args:
        backbones: RD teachers to build (random weights: speed does not depend on them).
        backends: engines to time: "openvino", "torch", or "openvino:<mode>" for one OpenVINO
            way of running batches (auto, latency, throughput; see backends/openvino_backend.py);
            "openvino-int8[:mode]" for the INT8 engine (its fp32 partner is added when missing).
        batch_sizes: frames per call.
        frame_size: side of the square uint8 input frames (default: the model size, no resize).
        rounds: timed calls per contender (an int, or {batch: rounds}).
        engines_dir: where engines are built/reused (default: a temporary directory, removed at the end).
        stage_reps: 0 skips the per-stage breakdown (any other value: it is recorded in the same rounds).
    """
    from .models import build_rd_model
    from .training.config import check_image_size

    check_image_size(image_size, "image_size")
    say = progress or (lambda msg: log.info(msg))
    backends = with_fp32_partners(backends)
    variants = [parse_variant(b) for b in backends]
    partners = {label: fp32_partner(label) for label, _, _ in variants if fp32_partner(label)}
    threads = torch.get_num_threads()  # the engines get torch's thread count: one contest, equal cores
    frame_size = frame_size or image_size
    results = _new_results(image_size, frame_size, batch_sizes, backends, threads)
    rng = np.random.default_rng(0)
    max_batch = max(batch_sizes)
    with contextlib.ExitStack() as stack:
        if engines_dir is None:  # nothing is left behind in the temporary folder
            engines_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="cdd_bench_"))
        engines_path = Path(engines_dir)
        for backbone in backbones:
            model = build_rd_model(backbone, pretrained=False, image_size=image_size, seed=0).eval()
            engines = {label: _engine_for(backbone, backend, model, engines_path, max_batch,
                                          {"num_threads": threads, **options})
                       for label, backend, options in variants}
            # which runtime ran each engine ("native" C++ or "python"; Engine picks native where it can)
            results.setdefault("engine_runtimes", {}).update(
                {f"{backbone}/{label}": str(getattr(eng, "runtime", "python")) for label, eng in engines.items()})
            results["runs"] += _time_runs(backbone, model, engines, batch_sizes, (frame_size, frame_size), rounds,
                                          bool(stage_reps), say, rng, partners=partners)
            del engines  # closed before their temporary folder goes
    results["machine"]["loadavg_end"] = _loadavg()
    return results


def engine_benchmark(engine_dir: str | os.PathLike, batch_sizes: Sequence[int] = (1, 8),
                     rounds: int | dict[int, int] = 5, frame_size: int | None = None, stages: bool = True,
                     eager: bool = True, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time an engine a user built (``cdd-engine bench --engine DIR``), with the same tables as
    :func:`throughput_benchmark`. The eager reference is timed beside it when ``eager`` and the
    engine's source checkpoint (engine.json ``source_checkpoint.path``) can still be loaded;
    otherwise the engine alone (``results["eager_note"]`` says why)."""
    import cdd_engine

    say = progress or (lambda msg: log.info(msg))
    threads = torch.get_num_threads()
    engine = cdd_engine.load(engine_dir, num_threads=threads)
    h, w = (int(v) for v in engine.manifest["image_size"])
    if max(batch_sizes) > engine.max_batch:
        say(f"note: batches above the engine's max batch {engine.max_batch} are split by Engine.score")
    frame_hw = (frame_size, frame_size) if frame_size else (h, w)
    results = _new_results([h, w], list(frame_hw), batch_sizes, [engine.backend_name], threads)
    results["engine_dir"] = str(engine.engine_dir)
    model, am = None, {}
    source = (engine.manifest.get("source_checkpoint") or {}).get("path")
    if not eager:
        results["eager_note"] = "not asked for (--no-eager)"
    elif not source:
        results["eager_note"] = "the engine was built from a model object, not a run directory"
    else:
        try:
            from .checkpoint import load_checkpoint
            model = load_checkpoint(source)
            amap = engine.manifest.get("anomaly_map", {})
            am = {"mode": amap.get("mode", "add"), "sigma": float(amap.get("sigma", 4.0))}
        except Exception as e:  # the engine stands on its own; say why eager is missing
            results["eager_note"] = f"source checkpoint {source} not loadable here: {e}"
    if "eager_note" in results:
        say(f"eager reference not timed: {results['eager_note']}")
    # an INT8 (or fp16) engine's rows say so; fp32 rows keep the backend's name
    label = engine.backend_name if engine.precision == "fp32" else f"{engine.backend_name}-{engine.precision}"
    results["engine_runtimes"] = {f"engine/{label}": str(getattr(engine, "runtime", "python"))}
    results["runs"] = _time_runs("engine", model, {label: engine}, batch_sizes, frame_hw, rounds,
                                 stages and model is not None, say, np.random.default_rng(0), am)
    results["machine"]["loadavg_end"] = _loadavg()
    return results


# ----------------------------------------------------------------------------- post-processing alone
def postprocess_benchmark(batch: int = 8, image_size: int = 256, rounds: int = 7,
                          shapes: Sequence[tuple[int, int, int]] = ((256, 64, 64), (512, 32, 32), (1024, 16, 16)),
                          ) -> dict[str, Any]:
    """The anomaly map alone on WRN50-shaped fp32 features: eager reference vs the fast paths
    (torch separable, OpenVINO graph, Triton fused on CUDA when present). ms per image."""
    from .runtime.postprocess import FastAnomalyMap

    g = torch.Generator().manual_seed(0)
    t = [torch.randn(batch, *s, generator=g) for s in shapes]
    s_ = [x + 0.3 * torch.randn(x.shape, generator=g) for x in t]
    fast = FastAnomalyMap(image_size)
    contenders: dict[str, Callable[[], Any]] = {
        "eager": lambda: anomaly_map(t, s_, image_size),
        "torch_fast": lambda: fast(t, s_),
    }
    try:
        contenders["openvino_graph"] = _openvino_post(shapes, image_size, t, s_)
    except ImportError:
        pass
    if torch.cuda.is_available():
        try:
            from .runtime.backends.torch_backend import import_kernels
            k = import_kernels()
            tc, sc = [x.cuda() for x in t], [x.cuda() for x in s_]

            def triton_run():
                k.fused_anomaly_map(tc, sc, image_size)
                torch.cuda.synchronize()

            contenders["triton_cuda"] = triton_run
        except Exception as e:  # reported, not fatal: the CPU figures stand on their own
            log.info("triton post-processing not timed: %s", e)
    times = time_interleaved(contenders, rounds)
    res = summarize(times, batch)
    return {"batch": batch, "image_size": image_size, "feature_shapes": [list(x) for x in shapes],
            "ms_per_image": {k: 1e3 / v["images_per_s"] for k, v in res.items()},
            "speedup_vs_eager": {k: v.get("ratio_vs_eager", 1.0) for k, v in res.items()}}


def _openvino_post(shapes, image_size, t, s_) -> Callable[[], Any]:
    import openvino as ov
    import openvino.opset13 as ops

    from .runtime.backends.openvino_backend import append_anomaly_map
    from .engine_format import FEATURE_NAMES

    params, results = [], []
    for i, name in enumerate(FEATURE_NAMES):
        p = ops.parameter([-1, *shapes[i % 3]], np.float32, name=f"in_{name}")
        r = ops.result(ops.multiply(p, ops.constant(np.float32(1.0))))
        r.output(0).get_tensor().set_names({name})
        params.append(p)
        results.append(r)
    manifest = {"image_size": [image_size, image_size], "features": [{"shape": list(x)} for x in shapes] * 2,
                "anomaly_map": {"mode": "add", "sigma": 4.0, "truncate": 4.0, "eps": 1e-8}}
    model = append_anomaly_map(ov.Model(results, params, "post"), manifest)
    req = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                 "PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
    inputs = [x.numpy() for x in t + s_]
    return lambda: req.infer(inputs, share_inputs=True)


# ----------------------------------------------------------------------------- report
def to_markdown(results: dict[str, Any], command: str | None = None) -> str:
    """A markdown table of a throughput_benchmark result (+ post-processing when present)."""
    m = results["machine"]
    cap = f"; oneDNN ISA capped at {m['onednn_isa_cap']}" if m.get("onednn_isa_cap") else ""
    lines = [f"Machine: {m.get('cpu', '?')}, {m.get('cpu_count')} cores ({', '.join(m.get('simd', []))}{cap}), "
             f"{m.get('memory_gb', '?')} GB; torch {m['torch']} ({m['torch_threads']} threads), "
             f"OpenVINO {m.get('openvino', '-')}; load average {m.get('loadavg_start')} -> {m.get('loadavg_end')} "
             f"(shared cores). Model {results['image_size']}², uint8 frames {results['frame_size']}², "
             f"{'fp32 except the -int8 rows' if _has_int8(results) else 'fp32'}."]
    if command:
        lines.append(f"Command: `{command}`")
    if results.get("engine_dir"):
        lines.append(f"Engine: {results['engine_dir']}" + (f" (eager not timed: {results['eager_note']})"
                                                            if results.get("eager_note") else ""))
    if results.get("threads"):
        lines.append(f"Threads: torch {results['threads']['torch']}, engines {results['threads']['engines']}.")
    if results.get("engine_runtimes"):
        lines.append("Engine runtimes: " + ", ".join(f"{k} {v}" for k, v in results["engine_runtimes"].items()))

    def ratio(r: dict, key: str) -> str:  # "-" when eager was not timed (bench --engine without its checkpoint)
        return f"{r[key]:.2f}" if key in r else "-"

    int8 = _has_int8(results)
    head = "| backbone | batch | pipeline | images/s | p50 ms/call | p99 ms/call | p50 ms/image | " \
           "x eager (medians) | x eager (paired) |"
    lines += ["", head + (" x fp32 engine (medians) | x fp32 engine (paired) |" if int8 else ""),
              "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if int8 else "")]
    for run in results["runs"]:
        for name, r in run["results"].items():
            base = name == "eager"
            row = (f"| {run['backbone']} | {run['batch']} | {name} | {r['images_per_s']:.2f} | "
                   f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['p50_ms'] / run['batch']:.1f} | "
                   f"{'1.00' if base else ratio(r, 'ratio_vs_eager')} | "
                   f"{'1.00' if base else ratio(r, 'median_paired_ratio')} |")
            if int8:
                row += f" {ratio(r, 'ratio_vs_fp32')} | {ratio(r, 'median_paired_ratio_vs_fp32')} |"
            lines.append(row)
    stages = [(run, b, st) for run in results["runs"] for b, st in run.get("stages_ms_per_image", {}).items()]
    if stages:
        lines += ["", "Stages, ms per image (median over the same interleaved rounds as the table above; the "
                      "engine's stages on its Python backend; each 'call' column is that table's p50 ms/image):", "",
                  "| backbone | batch | engine | pre | network+map | out | engine call | eager pre | eager network | "
                  "eager map | eager call |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for run, b, st in stages:
            call = {k: v["p50_ms"] / run["batch"] for k, v in run["results"].items()}
            lines.append(f"| {run['backbone']} | {run['batch']} | {b} | {st['engine_pre']:.1f} | "
                         f"{st['engine_network_and_map']:.1f} | {st['engine_out']:.2f} | {call[b]:.1f} | "
                         f"{st['eager_pre']:.1f} | {st['eager_network']:.1f} | {st['eager_map']:.1f} | "
                         f"{call['eager']:.1f} |")
    post = results.get("postprocess")
    if post:
        lines += ["", f"Anomaly map alone (batch {post['batch']}, WRN50 feature shapes, fp32), ms per image:", "",
                  "| path | ms/image | x eager |", "|---|---|---|"]
        for k, v in post["ms_per_image"].items():
            lines.append(f"| {k} | {v:.2f} | {post['speedup_vs_eager'][k]:.1f} |")
    return "\n".join(lines) + "\n"


def _has_int8(results: dict[str, Any]) -> bool:
    return any("ratio_vs_fp32" in r for run in results.get("runs", []) for r in run["results"].values())


def write_results(results: dict[str, Any], json_path: str | os.PathLike | None = None,
                  md_path: str | os.PathLike | None = None, command: str | None = None) -> str:
    md = to_markdown(results, command)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if md_path:
        Path(md_path).parent.mkdir(parents=True, exist_ok=True)
        Path(md_path).write_text(md, encoding="utf-8")
    return md


# ----------------------------------------------------------------------------- demo step
def demo_engine_step(run_dir: str | os.PathLike, test_images: Sequence[Any], out_dir: str | os.PathLike,
                     backend: str = "auto", batch: int = 8, rounds: int = 3) -> dict[str, Any]:
    """Build an engine from a demo run, score the test images through it, time it against eager.

    Args:
        run_dir: checkpoint written by training.
        test_images: uint8 frames (H, W, 3) or paths of image files.
        out_dir: where the engine directory goes (``out_dir/engine``).
        batch: frames per timed call (taken from the test images, repeated if there are fewer).

    Returns:
        {"engine_dir", "backend", "backend_choice" (why: "asked for" or auto's reason), "runtime", "build_seconds", "scores" (list), "is_anomalous" (list),
         "threshold", "engine_images_per_s", "eager_images_per_s", "speedup", "max_abs_score_diff"}
        where the last one compares the engine's scores with the eager reference's on the test images.
    """
    import cdd_engine
    from .checkpoint import load_checkpoint, read_config

    color = read_config(run_dir).get("data", {}).get("color") or "rgb"
    frames = [_as_frame(im, color) for im in test_images]
    if not frames:
        raise ValueError("demo_engine_step needs at least one test image")
    t0 = time.perf_counter()
    engine = cdd_engine.build(run_dir, backend=backend, output_dir=Path(out_dir) / "engine")
    build_s = time.perf_counter() - t0
    result = engine.score(frames)
    model = load_checkpoint(run_dir)
    am = read_config(run_dir)["model"].get("anomaly_map", {})
    eager = eager_pipeline(model, am.get("mode", "add"), am.get("sigma", 4.0))
    ref_scores = np.concatenate([eager(f[None])[1] for f in frames])
    same_size = [f for f in frames if f.shape == frames[0].shape]
    timed = np.stack([same_size[i % len(same_size)] for i in range(batch)])
    times = time_interleaved({"eager": lambda: eager(timed), "engine": lambda: engine.score(timed)}, rounds)
    res = summarize(times, batch)
    return {"engine_dir": str(engine.engine_dir), "backend": engine.backend_name,
            "backend_choice": engine.manifest.get("build", {}).get("backend_choice", backend),
            "runtime": getattr(engine, "runtime", "python"), "build_seconds": build_s,
            "scores": result.scores.tolist(), "is_anomalous": result.is_anomalous.tolist(),
            "threshold": engine.threshold, "engine_images_per_s": res["engine"]["images_per_s"],
            "eager_images_per_s": res["eager"]["images_per_s"], "speedup": res["engine"]["ratio_vs_eager"],
            "max_abs_score_diff": float(np.abs(result.scores - ref_scores).max())}


def _as_frame(im: Any, color: str = "rgb") -> np.ndarray:
    """A frame, or an image file decoded the way training read it (grey files replicated to RGB)."""
    if isinstance(im, (str, os.PathLike)):
        from .data import load_image
        return load_image(im, color)
    return np.asarray(im)
