"""Measure the demo's automatic thread rule (cdd_engine/threads.py, issue 11 item 7).

The demo's training spends its time in student steps on cached teacher features: RD with the
efficientnet_lite0 teacher at 256², batch 16, Adam. This script times such steps with torch at
1 and at all cores, alone and beside another job that keeps 2 threads busy (a torch matmul loop
in a subprocess, the "other 2-thread job" of issue 11), interleaved over rounds so that drifting
load from other users hits every configuration alike. It prints the 1-minute load average seen
before each measurement, the value ``cdd_engine.threads.auto_threads`` would pick, and the median
seconds per step.

    python benchmarks/thread_rule.py [--rounds 3] [--steps 4]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from results_csv import RESULTS_DIR, ResultsWriter  # benchmarks/ is this script's directory

BUSY = ("import torch, time\ntorch.set_num_threads(2)\na = torch.randn(512, 512)\n"
        "t = time.time()\nwhile time.time() - t < 3600:\n    a = (a @ a).tanh()\n")


def student_steps(threads: int, steps: int) -> float:
    """Median seconds of one demo training step (student forward + backward + Adam, batch 16)."""
    from cdd_engine.models import build_rd_model
    from cdd_engine.training.loss import rd_loss
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_rd_model("efficientnet_lite0", image_size=256, pretrained=False, seed=0)
    x = torch.randn(16, 3, 256, 256)
    feats = model.teacher_features(x)  # the demo caches these once
    opt = torch.optim.Adam(model.student.parameters(), lr=0.005, betas=(0.5, 0.999))
    times = []
    for _ in range(steps + 1):  # the first step warms up the allocator
        t0 = time.perf_counter()
        loss = rd_loss(feats, model.student(feats))
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--results-csv", default=str(RESULTS_DIR / "thread_rule.csv"),
                   help="long-format rows appended here (results_csv.py); '' for none")
    a = p.parse_args()
    from cdd_engine.threads import auto_threads, usable_cores
    cores = usable_cores()
    rows = []
    for r in range(a.rounds):
        for busy in (False, True):
            job = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
            try:
                if job:
                    time.sleep(5)  # let the other job and the load average get going
                for threads in sorted({1, cores}):
                    load = os.getloadavg()[0]
                    row = {"round": r, "other_2_thread_job": busy, "threads": threads, "load1": round(load, 2),
                           "auto_threads": auto_threads(), "s_per_step": round(student_steps(threads, a.steps), 3)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                if job:
                    job.terminate()
                    job.wait()
    if a.results_csv:
        w = ResultsWriter("thread_rule", a.results_csv)
        for x in rows:
            cfg = {"round": x["round"], "other_2_thread_job": x["other_2_thread_job"], "threads": x["threads"],
                   "steps": a.steps, "cores": cores}
            w.add("s_per_step", x["s_per_step"], "s", **cfg)
            w.add("load1", x["load1"], "", **cfg)
            w.add("auto_threads", x["auto_threads"], "threads", **cfg)
        print(f"appended {len(w.rows)} rows to {w.write()}")
    print(f"\ncores {cores}; median s/step (rounds {a.rounds}, steps {a.steps}):")
    for busy in (False, True):
        for threads in sorted({1, cores}):
            v = [x["s_per_step"] for x in rows if x["other_2_thread_job"] == busy and x["threads"] == threads]
            loads = [x["load1"] for x in rows if x["other_2_thread_job"] == busy and x["threads"] == threads]
            print(f"  other 2-thread job {'yes' if busy else 'no ':3s}  threads {threads}: "
                  f"{statistics.median(v):.2f} s/step  (load1 {min(loads):.1f}-{max(loads):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
