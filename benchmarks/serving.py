"""Throughput and latency through Triton Inference Server against in-process ``Engine.score``,
in one run (docs/serving.md).

    python benchmarks/serving.py --out serving_run     # serving_run.json / .csv; rows appended to results/serving.csv

Builds an OpenVINO engine (random weights: speed does not depend on them; efficientnet_lite0 at
256² by default), exports it with ``export_triton``, starts the nvidia-pytriton ``tritonserver``
on 127.0.0.1 and measures, for each of 1, 4 and 16 concurrent clients (threads, each with its own
connection, sending batch-8 requests back to back for ``--seconds``, after a ``--warmup`` at
each client count so that the merged batch sizes are compiled): frames/s, and p50/p99 latency
per request. In-process ``Engine.score`` on the same batch-8 frames runs before the first and
after every server phase (the server is idle then); each server phase is compared with the mean
of the two in-process phases on either side of it. Every reply is checked
against the in-process scores of its own frames (each client sends its own frames).
Writes OUT.json (every latency) and OUT.csv (one row per phase). The cores are shared: read the
load averages recorded beside the figures.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cdd_engine  # noqa: E402
from cdd_engine.serving import LocalTritonServer, export_triton  # noqa: E402
from results_csv import RESULTS_DIR, ResultsWriter, engine_text  # noqa: E402  (benchmarks/: this script's directory)

MODEL = "bench"
RESULTS_CSV = RESULTS_DIR / "serving.csv"


def _frames(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _summary(name: str, clients: int, frames: int, wall: float, lat: list[float]) -> dict:
    lat_ms = np.array(lat) * 1e3
    return {"phase": name, "clients": clients, "requests": len(lat), "frames": frames, "seconds": round(wall, 3),
            "frames_per_s": round(frames / wall, 2), "p50_ms": round(float(np.percentile(lat_ms, 50)), 2),
            "p99_ms": round(float(np.percentile(lat_ms, 99)), 2), "latencies_ms": [round(x, 3) for x in lat_ms],
            "loadavg": os.getloadavg()}


def in_process(engine, batch: np.ndarray, seconds: float) -> dict:
    lat, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < seconds or len(lat) < 3:
        t = time.perf_counter()
        engine.score(batch, return_maps=False)
        lat.append(time.perf_counter() - t)
    return _summary("in-process Engine.score", 1, len(lat) * len(batch), time.perf_counter() - t0, lat)


def through_server(url: str, protocol: str, clients: int, batches: list[np.ndarray], want: list[np.ndarray],
                   seconds: float) -> dict:
    if protocol == "http":
        import tritonclient.http as mod
    else:
        import tritonclient.grpc as mod
    lat: list[list[float]] = [[] for _ in range(clients)]
    wrong = []
    start = threading.Barrier(clients + 1, timeout=300)

    def run(c: int) -> None:
        conn = mod.InferenceServerClient(url)
        batch, expected = batches[c % len(batches)], want[c % len(batches)]
        inp = mod.InferInput("FRAMES", list(batch.shape), "UINT8")
        inp.set_data_from_numpy(batch)
        out = [mod.InferRequestedOutput("SCORE")]
        start.wait()
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds or not lat[c]:
            t = time.perf_counter()
            r = conn.infer(MODEL, [inp], outputs=out)
            lat[c].append(time.perf_counter() - t)
            if not np.allclose(r.as_numpy("SCORE").reshape(-1), expected, rtol=1e-5):
                wrong.append(c)
        conn.close()

    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if wrong:
        raise AssertionError(f"{len(wrong)} replies did not match their own frames' scores")
    flat = [x for c in lat for x in c]
    return _summary(f"triton {protocol}", clients, len(flat) * len(batches[0]), wall, flat)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default=None, help="an engine directory (default: build one, see --backbone)")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=256, help="model input and frame size")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--seconds", type=float, default=20.0, help="per phase")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds per client count before measuring")
    ap.add_argument("--protocol", default="http", choices=("http", "grpc"))
    ap.add_argument("--instances", type=int, default=1)
    ap.add_argument("--max-queue-delay-us", type=int, default=2000)
    ap.add_argument("--out", default="serving", help="writes OUT.json and OUT.csv")
    ap.add_argument("--results-csv", default=str(RESULTS_CSV),
                    help="long-format rows appended here (results_csv.py); '' for none")
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cdd_serving_bench_"))
    if a.engine is None:
        from cdd_engine.models import build_rd_model
        model = build_rd_model(a.backbone, pretrained=False, image_size=a.image_size, seed=0).eval()
        engine = cdd_engine.build(model, backend="openvino", threshold=1.0, max_batch=32,
                                  output_dir=work / "engine", verify=False)
    else:
        engine = cdd_engine.load(a.engine)
    size = engine.image_size[0] if a.engine else a.image_size
    clients = [int(c) for c in a.clients.split(",")]
    batches = [_frames(a.batch, size, seed) for seed in range(max(clients))]
    want = [engine.score(b, return_maps=False).scores for b in batches]
    print(f"engine: {engine!r}")

    export_triton(engine.engine_dir, work / "repo", name=MODEL, instances=a.instances,
                  max_queue_delay_us=a.max_queue_delay_us)
    rows = [in_process(engine, batches[0], a.seconds)]
    print(rows[-1]["phase"], rows[-1]["frames_per_s"], "frames/s")
    with LocalTritonServer(work / "repo", work_dir=work / "server") as server:
        server.wait_ready([MODEL], 300)
        url = server.http_url if a.protocol == "http" else server.grpc_url
        for c in clients:  # warm-up: the batch sizes that merged requests produce compile on first use
            through_server(url, a.protocol, c, batches, want, a.warmup)
        for c in clients:  # interleaved: in-process, server, in-process, server, ..., in-process
            rows.append(through_server(url, a.protocol, c, batches, want, a.seconds))
            print(rows[-1]["phase"], c, "clients:", rows[-1]["frames_per_s"], "frames/s, p50",
                  rows[-1]["p50_ms"], "ms, p99", rows[-1]["p99_ms"], "ms")
            rows.append(in_process(engine, batches[0], a.seconds))
            print(rows[-1]["phase"], rows[-1]["frames_per_s"], "frames/s")
        stats = __import__("tritonclient.http", fromlist=["x"]).InferenceServerClient(
            server.http_url).get_inference_statistics(MODEL)["model_stats"][0]
    # each server phase against the mean of the in-process phases just before and after it
    for i in range(1, len(rows), 2):
        rows[i]["vs_in_process"] = round(rows[i]["frames_per_s"] /
                                         ((rows[i - 1]["frames_per_s"] + rows[i + 1]["frames_per_s"]) / 2), 3)
    for r in rows[::2]:
        r["vs_in_process"] = 1.0
    result = {"command": "python benchmarks/serving.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": platform.platform(),
              "cpus": os.cpu_count(), "engine": repr(engine), "batch": a.batch, "protocol": a.protocol,
              "instances": a.instances, "max_queue_delay_us": a.max_queue_delay_us,
              "server_stats": {"requests": stats["inference_stats"]["success"]["count"],
                               "executions": stats["execution_count"], "frames": stats["inference_count"]},
              "rows": rows}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["phase", "clients", "requests", "frames", "seconds", "frames_per_s", "p50_ms", "p99_ms",
                    "vs_in_process", "load1"])
        for r in rows:
            w.writerow([r["phase"], r["clients"], r["requests"], r["frames"], r["seconds"], r["frames_per_s"],
                        r["p50_ms"], r["p99_ms"], r["vs_in_process"], round(r["loadavg"][0], 2)])
    if a.results_csv:
        lw = ResultsWriter("serving", a.results_csv)
        for i, r in enumerate(rows):  # phase_index: the in-process phase runs several times with one config
            cfg = {"phase": r["phase"], "phase_index": i, "clients": r["clients"], "batch": a.batch, "protocol": a.protocol,
                   "instances": a.instances, "max_queue_delay_us": a.max_queue_delay_us,
                   "engine": engine_text(repr(engine))}  # without its temporary directory
            for metric in ("frames_per_s", "p50_ms", "p99_ms", "vs_in_process"):
                lw.add(metric, r[metric], "x" if metric == "vs_in_process" else None, **cfg)
            lw.add("load1", r["loadavg"][0], "", **cfg)
        print(f"appended {len(lw.rows)} rows to {lw.write()}")
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.csv')}; server: {result['server_stats']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
