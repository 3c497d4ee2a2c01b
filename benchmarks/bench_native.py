"""Native C++ engine (libcdd_engine through cdd_engine._native) against the eager PyTorch
reference pipeline and the Python OpenVINO path, measured interleaved in one run.

Issue 5 targets (2 cores, fp32, batch 8, wide_resnet50_2 RD at 256x256, uint8 frames in,
scores and maps out): native >= 1.7x eager images/s and not slower than the Python OpenVINO
path; the fused C++ post-processing alone >= 5x the eager reference anomaly map.

    python benchmarks/bench_native.py [--engine DIR] [--batch 8] [--iters 5] [--threads 2]

Without --engine a random-teacher WRN50 RD engine is built once with cdd_engine.build into
a cache directory (a few minutes); the eager pipeline runs the very same model, so the script
also reports how far the native scores are from the eager ones. Results are appended as rows to
benchmarks/results/native.csv (results_csv.py), the run's JSON goes to ``--json`` (default
native_<time>.json in the current directory), and the native section of benchmarks/RESULTS.md is
rewritten from the CSV: the latest run in full, then every run (other sections are left as they are).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cdd_engine.anomaly_map import anomaly_map  # noqa: E402
from cdd_engine.models.rd import build_rd_model  # noqa: E402
from cdd_engine.native import load as load_native  # noqa: E402
from cdd_engine.preprocess import resize_normalize  # noqa: E402
from results_csv import ResultsWriter, cpu_name, read_rows  # noqa: E402  (benchmarks/ is this script's directory)

BACKBONE, SIZE, SEED = "wide_resnet50_2", 256, 0
BEGIN, END = "<!-- bench_native:begin -->", "<!-- bench_native:end -->"


def build_engine(model, batch: int) -> Path:
    """A WRN50 OpenVINO engine of ``model`` in a cache directory (built once)."""
    import cdd_engine
    out = Path(tempfile.gettempdir()) / f"cdd_bench_{BACKBONE}_{SIZE}_b{batch}_seed{SEED}"
    if not (out / "engine.json").is_file():
        print(f"building the {BACKBONE} engine (once) ...", flush=True)
        cdd_engine.build(model, backend="openvino", precision="fp32", max_batch=batch, output_dir=out,
                         threshold=1.0, verify=False, num_threads=2)
    return out


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def timed_both(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process: all threads) of one call. On a machine
    shared with other jobs the CPU time is the steadier measure of the work done."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", help="an existing wide_resnet50_2 OpenVINO engine directory")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=5, help="timed batches per pipeline (after one warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true", help="print only; do not touch benchmarks/")
    ap.add_argument("--note", default="", help="a remark stored with this run (code version, load, ...)")
    ap.add_argument("--summarize", action="store_true",
                    help="only rewrite the RESULTS.md section from the runs in benchmarks/results/native.csv")
    ap.add_argument("--json", default=None, help="the run's JSON (default: native_<time>.json here)")
    args = ap.parse_args(argv)
    if args.summarize:
        write_markdown()
        return 0

    native = load_native()
    import cdd_engine
    torch.set_num_threads(args.threads)
    model = build_rd_model(BACKBONE, pretrained=False, image_size=SIZE, seed=SEED).eval()
    mean, std = model.normalization
    engine_dir = Path(args.engine) if args.engine else build_engine(model, args.batch)
    same_model = args.engine is None

    # 1 stream: one request on all threads (best for single frames); 2 streams: a batch is
    # split over two requests running at once (best for batches on 2 cores)
    nat1 = native.Engine(str(engine_dir), num_threads=args.threads, num_streams=1)
    nat2 = native.Engine(str(engine_dir), num_threads=args.threads, num_streams=2)
    py_ov = cdd_engine.load(engine_dir, num_threads=args.threads)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(args.batch, SIZE, SIZE, 3), dtype=np.uint8)

    def eager():
        with torch.no_grad():
            t, s = model(resize_normalize(frames, SIZE, mean, std))
            return anomaly_map(t, s, SIZE)

    def python_openvino():
        return py_ov.score(frames, "RGB")

    def native_engine():
        return nat2.score(frames, "RGB")

    def native_engine_1():
        return nat1.score(frames, "RGB")

    pipelines = {"eager PyTorch reference": eager, "Python OpenVINO path (cdd_engine.load)": python_openvino,
                 "native C++ engine, num_streams=2 (cdd_engine._native)": native_engine,
                 "native C++ engine, num_streams=1": native_engine_1}
    for fn in pipelines.values():  # warm-up: first inference compiles kernels
        fn()
    times: dict[str, list[float]] = {k: [] for k in pipelines}
    cpu: dict[str, list[float]] = {k: [] for k in pipelines}
    names = list(pipelines)
    for it in range(args.iters):  # interleaved, rotating order: drift hits all alike
        r = it % len(names)
        for k in names[r:] + names[:r]:
            wall, c = timed_both(pipelines[k])
            times[k].append(wall)
            cpu[k].append(c)
    med = {k: statistics.median(v) for k, v in times.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    ips = {k: args.batch / v for k, v in med.items()}
    for k in names:
        print(f"{k}: {med[k]:.3f} s/batch, {ips[k]:.3f} images/s, CPU {cpu_med[k]:.2f} s/batch "
              f"(wall {[round(x, 2) for x in times[k]]})", flush=True)

    parity = None
    if same_model:
        ref_maps, ref_scores = eager()
        s, maps, _, _ = native_engine()
        parity = float(np.max(np.abs(s - ref_scores.numpy()) / np.abs(ref_scores.numpy())))

    # post-processing alone: WRN50 features of this batch, eager reference vs fused C++
    with torch.no_grad():
        tf, sf = model(resize_normalize(frames, SIZE, mean, std))
    tn, sn = [np.ascontiguousarray(f.numpy()) for f in tf], [np.ascontiguousarray(f.numpy()) for f in sf]
    anomaly_map(tf, sf, SIZE)
    native.anomaly_map(tn, sn, (SIZE, SIZE), num_threads=args.threads)
    post_eager = statistics.median(timed(lambda: anomaly_map(tf, sf, SIZE)) for _ in range(args.iters))
    post_fused = statistics.median(timed(lambda: native.anomaly_map(tn, sn, (SIZE, SIZE), num_threads=args.threads))
                                   for _ in range(args.iters))

    eager_k, ov_k, nat_k, nat1_k = names
    result = {
        "date": datetime.date.today().isoformat(), "run": datetime.datetime.now().strftime("%Y-%m-%dT%H:%M"),
        "note": args.note, "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
        "threads": args.threads, "batch": args.batch, "iters": args.iters, "model": f"{BACKBONE} RD (random teacher) "
        f"at {SIZE}x{SIZE}, fp32", "torch": torch.__version__, "openvino": __import__("openvino").__version__,
        "seconds_per_batch_median": med, "images_per_s": ips, "cpu_seconds_per_batch_median": cpu_med,
        "seconds_per_batch_all": times, "load_average_1min_at_end": os.getloadavg()[0],
        "native_vs_eager": ips[nat_k] / ips[eager_k], "native_vs_python_openvino": ips[nat_k] / ips[ov_k],
        "python_openvino_vs_eager": ips[ov_k] / ips[eager_k], "native_1_stream_vs_eager": ips[nat1_k] / ips[eager_k],
        "postprocess_ms_per_image": {"eager reference": 1e3 * post_eager / args.batch,
                                     "fused C++": 1e3 * post_fused / args.batch},
        "postprocess_speedup": post_eager / post_fused,
        "native_score_max_rel_diff_vs_eager": parity,
    }
    result["native_vs_eager_cpu_time"] = cpu_med[eager_k] / cpu_med[nat_k]
    result["native_vs_python_openvino_cpu_time"] = cpu_med[ov_k] / cpu_med[nat_k]
    result["targets"] = targets(result)
    print(json.dumps(result, indent=1))
    if not args.no_write:
        out = Path(args.json or f"native_{result['run'].replace(':', '')}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        csv_path = write_csv(result)
        write_markdown(result)
        print(f"wrote {out}, {csv_path.relative_to(ROOT)} and the native section of benchmarks/RESULTS.md")
    return 0


def targets(r: dict) -> dict[str, bool]:
    """Issue 5's bars against one run's figures."""
    return {"native >= 1.7x eager": r["native_vs_eager"] >= 1.7,
            "native >= Python OpenVINO": r["native_vs_python_openvino"] >= 1.0,
            "fused post-processing >= 5x eager": r["postprocess_speedup"] >= 5.0}


RESULTS_DIR = ROOT / "benchmarks" / "results"
CONFIG_KEYS = ("threads", "batch", "iters", "model", "torch", "openvino", "note")


def write_csv(result: dict, path: Path | None = None) -> Path:
    """The run's measurements as long-format rows of benchmarks/results/native.csv (results_csv.py)."""
    w = ResultsWriter("native", path)
    config = {k: result[k] for k in CONFIG_KEYS if k in result}
    w.add_dict({k: v for k, v in result.items() if k not in CONFIG_KEYS and k != "machine"}, **config)
    return w.write()


def runs_from_csv(path: Path | None = None) -> list[dict]:
    """Every run of native.csv as the result dict it was written from (numbers and settings; the
    per-batch time lists keep their last item only), in the file's order."""
    path = path or RESULTS_DIR / "native.csv"
    if not path.is_file():
        return []
    runs: dict[str, dict] = {}
    for row in read_rows(path):
        r = runs.get(row["run_id"])
        if r is None:
            cpu, _, cores = row["machine"].split(";")[0].rpartition(" x")
            r = runs[row["run_id"]] = {**row["config"], "run_id": row["run_id"], "run": row["date"].rstrip("Z")[:16], "date": row["date"][:10],
                                       "machine": {"cpu": cpu or row["machine"], "cores": int(cores) if cores.isdigit()
                                                   else cores}}
        top, _, rest = row["metric"].partition(".")  # pipeline names hold dots: split once
        if rest:
            r.setdefault(top, {})[rest] = row["value"]
        else:
            r[top] = row["value"]
    for r in runs.values():
        r.setdefault("native_score_max_rel_diff_vs_eager", None)
        r["targets"] = targets(r)
    return list(runs.values())


def write_markdown(latest: dict | None = None) -> None:
    """The native section of RESULTS.md: the latest run in full, then every run of native.csv in one table."""
    runs = runs_from_csv()
    if not runs and latest is None:
        raise SystemExit("no runs in benchmarks/results/native.csv yet: run the benchmark first")
    r = latest or runs[-1]
    names = list(r["seconds_per_batch_median"])
    lines = [BEGIN, "## Native C++ engine (libcdd_engine, issue 5)", "",
             f"`python benchmarks/bench_native.py` on {r['date']}: {r['machine']['cpu']}, {r['machine']['cores']} cores, "
             f"{r['threads']} threads, {r['model']}, batch {r['batch']}, uint8 {SIZE}x{SIZE} RGB frames in, scores "
             f"and maps out; median of {r['iters']} interleaved batches per pipeline (torch {r['torch']}, "
             f"OpenVINO {r['openvino']}).", "",
             f"1-minute load average at the end: {r['load_average_1min_at_end']:.1f} on {r['machine']['cores']} "
             "cores (the machine is shared; CPU seconds of the process are given beside wall time).", "",
             "| pipeline | s / batch | images/s | vs eager | CPU s / batch | vs eager (CPU) |",
             "|---|---:|---:|---:|---:|---:|"]
    eager_ips = r["images_per_s"][names[0]]
    eager_cpu = r["cpu_seconds_per_batch_median"][names[0]]
    for k in names:
        c = r["cpu_seconds_per_batch_median"][k]
        lines.append(f"| {k} | {r['seconds_per_batch_median'][k]:.3f} | {r['images_per_s'][k]:.2f} | "
                     f"{r['images_per_s'][k] / eager_ips:.2f}x | {c:.2f} | {eager_cpu / c:.2f}x |")
    pm = r["postprocess_ms_per_image"]
    lines += ["", f"Post-processing alone (anomaly map + score of WRN50 features, batch {r['batch']}): eager "
              f"reference {pm['eager reference']:.1f} ms/image, fused C++ {pm['fused C++']:.2f} ms/image: "
              f"**{r['postprocess_speedup']:.1f}x**.", ""]
    if r["native_score_max_rel_diff_vs_eager"] is not None:
        lines += [f"Native scores vs the eager pipeline on the same frames: max relative difference "
                  f"{r['native_score_max_rel_diff_vs_eager']:.1e}.", ""]
    lines += ["Targets in this run: " + "; ".join(f"{k}: {'met' if ok else 'NOT met'}"
                                                  for k, ok in r["targets"].items())
              + f" (native: {r['native_vs_eager']:.2f}x eager, {r['native_vs_python_openvino']:.2f}x "
              f"the Python OpenVINO path; CPU time: {r['native_vs_eager_cpu_time']:.2f}x and "
              f"{r['native_vs_python_openvino_cpu_time']:.2f}x).", "",
              "Every run (same script and machine; `native` is the engine's best configuration in that run; "
              "rows in `results/native.csv`, a run_id per run):", "",
              "| run (run_id) | load (1 min) | native vs eager | native vs Python OpenVINO | same, CPU time | "
              "post-processing speed-up | note |", "|---|---:|---:|---:|---:|---:|---|"]
    def fmt(v, spec: str, unit: str = "") -> str:
        return "n/a" if v is None else f"{v:{spec}}{unit}"

    for x in runs or [r]:
        lines.append(f"| {'`' + x['run_id'] + '`' if 'run_id' in x else x.get('run', x['date'])} | {fmt(x.get('load_average_1min_at_end'), '.1f')} | "
                     f"{x['native_vs_eager']:.2f}x | {x['native_vs_python_openvino']:.2f}x | "
                     f"{fmt(x.get('native_vs_python_openvino_cpu_time'), '.2f', 'x')} | "
                     f"{x['postprocess_speedup']:.1f}x | {x.get('note', '')} |")
    lines.append(END)
    section = "\n".join(lines)
    md = ROOT / "benchmarks" / "RESULTS.md"
    text = md.read_text() if md.exists() else "# Benchmark results\n"
    if BEGIN in text and END in text:  # replace our own section only
        a, b = text.index(BEGIN), text.index(END) + len(END)
        text = text[:a] + section + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    md.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
