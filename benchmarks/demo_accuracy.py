"""Accuracy of the RD baseline on the product's demo data set: every demo category x seeds,
no contamination (noise ratio 0), through the public ``cdd_engine.train`` path.

Writes ``<out>/demo_accuracy.csv`` (one row per run) and ``<out>/demo_accuracy.md`` (image AUROC,
pixel AUROC and AUPRO as mean ± sample std over seeds, with the config and training times),
ready to paste into benchmarks/RESULTS.md.

    python benchmarks/demo_accuracy.py --out bench_demo            # 3 categories x 3 seeds
    python benchmarks/demo_accuracy.py --out bench_demo --quick    # a tiny smoke run

The data set is generated once (generator seed 0) and shared by all seeds; the seed
changes the student's initialisation and batch order. A run directory that already holds a
finished run is reused, so an interrupted benchmark continues where it stopped.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from cdd_engine.data import make_demo_dataset  # noqa: E402
from cdd_engine.data.demo import DEMO_CATEGORIES  # noqa: E402
from cdd_engine.training import train  # noqa: E402
from cdd_engine.version import __version__  # noqa: E402
from results_csv import RESULTS_DIR, ResultsWriter  # noqa: E402  (benchmarks/ is this script's directory)

FIELDS = ("category", "seed", "image_auroc", "pixel_auroc", "aupro", "f1_max", "n_train", "n_test",
          "epochs", "image_size", "train_s", "feature_cache_s", "eval_s", "wall_s")


def run_one(data: Path, out: Path, category: str, seed: int, args) -> dict:
    run_dir = out / "runs" / f"{category}_seed{seed}"
    t0 = time.perf_counter()
    cfg_path = run_dir / "config.json"
    finished = cfg_path.is_file() and json.loads(cfg_path.read_text()).get("complete")
    if not finished:
        train(data, run_dir, category=category, backbone=args.backbone, image_size=args.image_size,
              epochs=args.epochs, batch_size=args.batch_size, noise_ratio=0.0, seed=seed,
              progress=args.progress, resume=cfg_path.is_file())
    wall = time.perf_counter() - t0
    cfg = json.loads(cfg_path.read_text())
    m = json.loads((run_dir / "metrics.json").read_text())
    t = cfg["timings"]
    return {"category": category, "seed": seed, "image_auroc": m["image_auroc"], "pixel_auroc": m["pixel_auroc"],
            "aupro": m["aupro"], "f1_max": m["f1_max"], "n_train": m["n_train"], "n_test": m["n_test"],
            "epochs": cfg["epoch"], "image_size": cfg["model"]["image_size"][0],
            "train_s": round(t["train_s"], 1), "feature_cache_s": round(t["feature_cache_s"], 1),
            "eval_s": round(t.get("final_eval_s", 0.0), 1), "wall_s": round(wall, 1) if not finished else ""}


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def markdown(rows: list[dict], args, total_s: float) -> str:
    cats = list(dict.fromkeys(r["category"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    lines = [
        f"RD baseline, `{args.backbone}` teacher (packaged ImageNet weights), {args.image_size}², "
        f"{args.epochs} epochs, batch {args.batch_size}, Adam lr 0.005 betas (0.5, 0.999), noise ratio 0, "
        f"demo set {args.n_train} train / {args.n_test_good} good + {args.n_test_defect} defective test images "
        f"per category (generator seed 0), seeds {', '.join(map(str, seeds))}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s); cdd-engine {__version__}. "
        f"Mean ± sample std over seeds. Total wall time {total_s / 60:.1f} min.",
        "",
        "| category | image AUROC | pixel AUROC | AUPRO | F1-max | training s / run (mean) |",
        "|---|---|---|---|---|---|",
    ]
    for c in cats:
        rs = [r for r in rows if r["category"] == c]
        lines.append(f"| {c} | {mean_std([r['image_auroc'] for r in rs])} | {mean_std([r['pixel_auroc'] for r in rs])}"
                     f" | {mean_std([r['aupro'] for r in rs])} | {mean_std([r['f1_max'] for r in rs])}"
                     f" | {statistics.mean(r['train_s'] + r['feature_cache_s'] for r in rs):.0f} |")
    lines += ["", "Per run (seconds: epochs, teacher-feature caching, final evaluation):", "",
              "| category | seed | image AUROC | pixel AUROC | AUPRO | train s | features s | eval s |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['category']} | {r['seed']} | {r['image_auroc']:.4f} | {r['pixel_auroc']:.4f} | "
                     f"{r['aupro']:.4f} | {r['train_s']} | {r['feature_cache_s']} | {r['eval_s']} |")
    return "\n".join(lines) + "\n"


CONFIG_FIELDS = ("category", "seed", "n_train", "n_test", "epochs", "image_size")


def write_long_csv(rows: list[dict], args, path: str) -> Path:
    """One long-format row per measured number of each run (benchmarks/results_csv.py)."""
    w = ResultsWriter("demo_accuracy", path)
    for r in rows:
        config = {k: r[k] for k in CONFIG_FIELDS if k in r}
        config.update(backbone=args.backbone, batch_size=args.batch_size, package=__version__)
        w.add_dict({k: v for k, v in r.items() if k not in CONFIG_FIELDS}, **config)
    return w.write()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench_demo_accuracy", help="output folder (data, runs, CSV, markdown)")
    p.add_argument("--categories", nargs="+", default=list(DEMO_CATEGORIES), choices=DEMO_CATEGORIES)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--n-test-good", type=int, default=100)
    p.add_argument("--n-test-defect", type=int, default=100)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.add_argument("--quick", action="store_true", help="64², 2 epochs, tiny sets: checks the script runs")
    p.add_argument("--results-csv", default=str(RESULTS_DIR / "demo_accuracy.csv"),
                   help="long-format rows appended here (results_csv.py); '' for none (--quick: none by default)")
    args = p.parse_args(argv)
    if args.quick:
        args.image_size, args.epochs, args.n_train, args.n_test_good, args.n_test_defect = 64, 2, 12, 6, 6
        if args.results_csv == p.get_default("results_csv"):
            args.results_csv = ""  # a smoke run is no measurement
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out).absolute()
    t0 = time.perf_counter()
    data = out / "data"
    if not (data / "dataset.json").is_file():
        make_demo_dataset(data, categories=tuple(args.categories), image_size=args.image_size,
                          n_train=args.n_train, n_test_good=args.n_test_good,
                          n_test_defect=args.n_test_defect, seed=0)
    rows = []
    for c in args.categories:
        for s in args.seeds:
            r = run_one(data, out, c, s, args)
            rows.append(r)
            print(f"{c} seed {s}: image AUROC {r['image_auroc']:.4f}, pixel AUROC {r['pixel_auroc']:.4f}, "
                  f"AUPRO {r['aupro']:.4f} ({r['train_s']} s training)", flush=True)
    total = time.perf_counter() - t0
    with open(out / "demo_accuracy.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    if args.results_csv:
        print(f"appended to {write_long_csv(rows, args, args.results_csv)}")
    md = markdown(rows, args, total)
    (out / "demo_accuracy.md").write_text(md, encoding="utf-8")
    print(md)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
