"""Engine throughput against the eager PyTorch reference pipeline, in one interleaved run.

Writes JSON (every call's time, the machine, load averages) and a markdown table (images/s,
p50/p99 latency, ratios, per-stage costs, the anomaly map alone). The figures recorded in
benchmarks/RESULTS.md come from:

    python benchmarks/throughput.py --out OUT    # OUT.json and OUT.md; rows appended to results/throughput.csv

Defaults: wide_resnet50_2 and efficientnet_lite0 (random weights; speed does not depend on
them) at 256², batch 1, 8, 32, the fp32 and INT8 OpenVINO engines vs eager, 256² uint8 frames. Both
pipelines use the machine's default threads. The cores are shared: interleave and read the
medians and the paired ratios, and the load averages beside them.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdd_engine.bench import postprocess_benchmark, throughput_benchmark, write_results  # noqa: E402
from results_csv import RESULTS_DIR, ResultsWriter  # noqa: E402  (benchmarks/ is this script's directory)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", default="wide_resnet50_2,efficientnet_lite0")
    ap.add_argument("--backends", default="openvino,openvino-int8",
                    help="comma-separated: openvino, torch, openvino:latency, openvino:throughput, "
                         "openvino-direct[:mode] (built without the Winograd rewrite), openvino-int8[:mode] "
                         "(INT8, NNCF; its fp32 engine is added to the same rounds), an OpenVINO one with /N "
                         "(N frames per request when a batch is split over streams: openvino-int8:throughput/4), "
                         "any of them @python or @native")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--frame-size", type=int, default=None)
    ap.add_argument("--rounds", default="1:9,8:5,32:3", help="timed calls per pipeline: N or batch:N,...")
    ap.add_argument("--engines-dir", default=None, help="reuse engines built here (default: temporary)")
    ap.add_argument("--stage-reps", type=int, default=2)
    ap.add_argument("--no-postprocess", action="store_true")
    ap.add_argument("--out", default="engine_throughput", help="writes OUT.json and OUT.md")
    ap.add_argument("--results-csv", default=str(RESULTS_DIR / "throughput.csv"), metavar="CSV",
                    help="also append every figure as long-format rows here (results_csv.py); '' for none")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rounds = ({int(k): int(v) for k, v in (x.split(":") for x in a.rounds.split(","))}
              if ":" in a.rounds else int(a.rounds))
    batches = [int(b) for b in a.batch_sizes.split(",")]
    results = throughput_benchmark(a.backbones.split(","), a.backends.split(","), batches, a.image_size,
                                   a.frame_size, rounds, a.engines_dir, a.stage_reps, progress=print)
    if not a.no_postprocess:
        results["postprocess"] = postprocess_benchmark()
    command = "python benchmarks/throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(write_results(results, f"{a.out}.json", f"{a.out}.md", command=command.strip()))
    if a.results_csv:
        w = ResultsWriter("throughput", a.results_csv)
        n = w.add_dict(results, image_size=a.image_size)
        print(f"{n} rows appended to {w.write()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
