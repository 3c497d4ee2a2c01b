"""``Engine(runtime="native")`` vs ``Engine(runtime="python")`` vs the eager PyTorch reference, in one
run, interleaved and paired (issue 5, deliverable 5: the Python Engine on the C++ library).

wide_resnet50_2 RD (random teacher) at 256x256, fp32 OpenVINO engine, uint8 256x256 RGB frames
in, scores and model-size maps out, batch 8 and batch 1. Native contenders: the default
(openvino_mode "auto": 1 stream for single frames, 2 for batches), "latency" (1) and "throughput" (2). Every round runs each contender once in
a rotated order; ratios are medians of per-round ratios (paired: both sides of a ratio ran
seconds apart, so load from other jobs on the shared cores hits them alike), beside the ratio of
medians. Wall and process CPU seconds are both kept.

    python benchmarks/bench_engine_runtime.py [--engine DIR] [--batches 8,1] [--rounds 5] [--threads 2]

Without --engine the WRN50 engine of bench_native.py is built once into its cache directory.
Appends every figure (per-call times included) as long-format rows to
benchmarks/results/engine_runtime.csv (results_csv.py; ``--results-csv ''`` for none), writes the
run's JSON to ``--json`` (default engine_runtime_<time>.json in the current directory) and prints
a Markdown table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT), str(ROOT / "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)

import cdd_engine  # noqa: E402
from bench_native import BACKBONE, SEED, SIZE, build_engine  # noqa: E402
from cdd_engine.bench import eager_pipeline, machine_info  # noqa: E402
from cdd_engine.models.rd import build_rd_model  # noqa: E402
from results_csv import RESULTS_DIR, ResultsWriter  # noqa: E402

CONFIG_KEYS = ("threads", "rounds", "model", "runtime", "note")  # a run's settings: config of its rows


def write_csv(out: dict, path: str | os.PathLike | None = None, **writer: object) -> Path:
    """The run as rows of benchmarks/results/engine_runtime.csv: every number of ``out`` with the
    batch and the run's settings as config, per-call times included (config ``i`` = round).
    import_legacy_results.py converts the older engine_runtime_*.json files the same way."""
    w = ResultsWriter("engine_runtime", path, **writer)
    base = {k: out[k] for k in CONFIG_KEYS if k in out}
    for b, res in out["batches"].items():
        w.add_dict(res, raw_lists=True, batch=int(b), **base)
    w.add_dict({k: v for k, v in out.items() if k not in ("batches", *base)}, raw_lists=True, **base)
    return w.write()


def run_rounds(contenders: dict, rounds: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(wall seconds, process CPU seconds) per call, one call per contender per round, order rotated."""
    names = list(contenders)
    for name in names:  # warm-up: first calls compile / allocate
        contenders[name]()
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            c0, t0 = time.process_time(), time.perf_counter()
            contenders[name]()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", help="an existing wide_resnet50_2 256x256 fp32 OpenVINO engine directory")
    ap.add_argument("--batches", default="8,1")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--note", default="")
    ap.add_argument("--json", default=None, help="the run's JSON (default: engine_runtime_<time>.json here)")
    ap.add_argument("--results-csv", default=str(RESULTS_DIR / "engine_runtime.csv"), metavar="CSV",
                    help="long-format rows appended here (results_csv.py); '' for none")
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]

    torch.set_num_threads(args.threads)
    model = build_rd_model(BACKBONE, pretrained=False, image_size=SIZE, seed=SEED).eval()
    engine_dir = Path(args.engine) if args.engine else build_engine(model, max(batches))
    info = machine_info()
    native = cdd_engine.load(engine_dir, runtime="native", num_threads=args.threads)  # "auto": 1 or 2 streams
    native1 = cdd_engine.load(engine_dir, runtime="native", num_threads=args.threads, openvino_mode="latency")
    native2 = cdd_engine.load(engine_dir, runtime="native", num_threads=args.threads, openvino_mode="throughput")
    python = cdd_engine.load(engine_dir, runtime="python", num_threads=args.threads)
    eager = eager_pipeline(model)
    rng = np.random.default_rng(0)
    out = {"run": datetime.datetime.now().strftime("%Y-%m-%dT%H:%M"), "note": args.note, "machine": info,
           "threads": args.threads, "rounds": args.rounds, "model": f"{BACKBONE} RD (random teacher) {SIZE}x{SIZE} fp32",
           "runtime": native.runtime, "batches": {}}
    for b in batches:
        frames = rng.integers(0, 256, size=(b, SIZE, SIZE, 3), dtype=np.uint8)
        contenders = {"eager": lambda: eager(frames),
                      "python": lambda: python.score(frames),
                      "native": lambda: native.score(frames),
                      "native_1_stream": lambda: native1.score(frames),
                      "native_2_streams": lambda: native2.score(frames)}
        wall, cpu = run_rounds(contenders, args.rounds)
        ref_maps, ref_scores = eager(frames)
        rn, rp = native.score(frames), python.score(frames)
        med = {k: statistics.median(v) for k, v in wall.items()}
        res = {"wall_s": wall, "cpu_s": cpu, "median_s": med,
               "images_per_s": {k: b / v for k, v in med.items()},
               "median_cpu_s": {k: statistics.median(v) for k, v in cpu.items()},
               "loadavg_after": list(os.getloadavg()),
               "native_score_max_rel_vs_eager": float(np.max(np.abs(rn.scores - ref_scores) / np.abs(ref_scores))),
               "native_vs_python_score_max_rel": float(np.max(np.abs(rn.scores - rp.scores) / np.abs(rp.scores))),
               "native_vs_python_map_max_rel": float(np.abs(rn.maps - rp.maps).max() / np.abs(rp.maps).max())}
        ratios = {}
        for a, base in (("native", "eager"), ("python", "eager"), ("native", "python"),
                        ("native_1_stream", "python"), ("native_1_stream", "eager"),
                        ("native_2_streams", "python"), ("native_2_streams", "eager")):
            paired = [x / y for x, y in zip(wall[base], wall[a])]
            ratios[f"{a} vs {base}"] = {"paired_median": statistics.median(paired), "of_medians": med[base] / med[a],
                                        "cpu_of_medians": res["median_cpu_s"][base] / res["median_cpu_s"][a]}
        res["speedups"] = ratios
        out["batches"][str(b)] = res
        print(f"batch {b}: " + ", ".join(f"{k} {v:.3f} s" for k, v in med.items()) + f"; load {os.getloadavg()}",
              flush=True)
    out["loadavg_end"] = list(os.getloadavg())
    path = Path(args.json or f"engine_runtime_{out['run'].replace(':', '')}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(markdown(out))
    print(f"wrote {path}")
    if args.results_csv:
        print(f"rows appended to {write_csv(out, args.results_csv)}")
    return 0


def markdown(r: dict) -> str:
    lines = ["| batch | contender | median s / call | images/s | CPU s / call | vs eager (paired) | vs Python runtime (paired) |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    names = {"eager": "eager PyTorch reference", "python": "Engine(runtime=\"python\")",
             "native": "Engine(runtime=\"native\") (default openvino_mode=\"auto\")",
             "native_1_stream": "Engine(runtime=\"native\", openvino_mode=\"latency\"), 1 stream",
             "native_2_streams": "Engine(runtime=\"native\", openvino_mode=\"throughput\"), 2 streams"}
    for b, res in r["batches"].items():
        for k, label in names.items():
            sp = res["speedups"]
            ve = "1.00x" if k == "eager" else f"{sp[f'{k} vs eager']['paired_median']:.2f}x" if f"{k} vs eager" in sp else ""
            vp = "1.00x" if k == "python" else f"{sp[f'{k} vs python']['paired_median']:.2f}x" if f"{k} vs python" in sp else ""
            lines.append(f"| {b} | {label} | {res['median_s'][k]:.3f} | {res['images_per_s'][k]:.2f} | "
                         f"{res['median_cpu_s'][k]:.2f} | {ve} | {vp} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
