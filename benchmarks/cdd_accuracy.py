"""RD vs CDD (and CDD ablations) under contamination: image AUROC, pixel AUROC, AUPRO, training time.

FUAD protocol (cdd_engine.data.inject_noise): ``noise * |train|`` anomalous test images are
moved into the training set without labels. Default data (generated on first use): the
product's demo set (cdd_engine.data.demo, ``--demo-generator team``, 128², 200 train, 200 good
+ 300 defective test images per category) or the narrow recurring-defect set of
``benchmarks/fuad_demo.py`` (``--demo-generator narrow``); ``--data PATH --layout mvtec|visa``
runs the same grid on MVTec AD or VisA.

One *job* = (category, noise, seed): the teacher features of its training and test sets are
computed once and every method of the job trains on them (RD and CDD's global student use the
same loop, optimiser, initialisation and number of updates; only the target differs). Every
finished run appends one row to ``<out>/runs_<shard>.csv`` at once, so an interrupted grid
leaves usable results; ``--summarize`` merges all CSVs into ``summary.csv`` and ``summary.md``
(mean ± std over seeds). Shards (``--shard i --shards n``) split the jobs between processes
(e.g. several on one GPU). Every finished run is also appended at once as long-format rows to
``benchmarks/results/cdd_accuracy.csv`` (results_csv.py: one run_id per process, the row's
settings and CDD options as config; ``--results-csv ''`` for none).

Besides the accuracy metrics every row records, from the training scores alone: the F1 on the
test set at the threshold rules of cdd_engine.threshold (vs the best F1), and the precision of
the top-ranked training images at finding the injected ones (the contamination report).
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_csv import RESULTS_DIR, ResultsWriter, cdd_accuracy_rows, new_run_id  # noqa: E402
from cdd_engine.anomaly_map import anomaly_map  # noqa: E402
from cdd_engine.cdd import CDDOptions, train_cdd  # noqa: E402
from cdd_engine.cdd.trainer import new_student  # noqa: E402
from cdd_engine.data.images import ImageDataset, detect_color  # noqa: E402
from cdd_engine.data.noise import inject_noise  # noqa: E402
from cdd_engine.data.readers import read_dataset  # noqa: E402
from cdd_engine import metrics  # noqa: E402
from cdd_engine.models import build_teacher, teacher_spec  # noqa: E402
from cdd_engine.threshold import median_mad_threshold, quantile_threshold  # noqa: E402
from cdd_engine.training.loop import TeacherFeatures, fit_epoch, make_adam  # noqa: E402

# name -> CDD options (None = RD). "cdd" is the default config (CDDOptions()); the others each
# change one option. Rows written before the teacher gate became the default (2026-11-28, third
# session) ran "cdd" as pure CDD, i.e. today's "cdd_pure"; their options column says {}.
METHODS: dict[str, dict | None] = {
    "rd": None,
    "cdd": {},
    "cdd_pure": {"teacher_gate": 0.0},
    "cdd_cluster": {"partition": "cluster"},
    "cdd_median": {"aggregate": "median", "domains": 4},
    "cdd_k2": {"domains": 2},
    "cdd_k5": {"domains": 5},
    "cdd_alternate": {"schedule": "alternate", "warmup_epochs": 0},
    "cdd_teacher0.3": {"teacher_share": 0.3},
    "cdd_gate0.9": {"teacher_gate": 0.9},
    "cdd_gate0.75": {"teacher_gate": 0.75},
    "cdd_nonorm": {"normalize_targets": False},
}
FIELDS = ["category", "noise", "seed", "method", "epochs", "image_size", "n_train", "n_injected", "n_test_good",
          "n_test_anomalous", "image_auroc", "pixel_auroc", "aupro", "f1_max", "f1_mad3", "f1_mad2", "f1_q_noise",
          "report_precision", "train_seconds", "options"]


def _features_and_truth(teacher, ds: ImageDataset, device, batch_size: int = 32):
    """Teacher features (cached, CPU), labels (N,), masks (N,H,W) of a test set."""
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)
    feats, labels, masks = [], [], []
    with torch.no_grad():
        for item in loader:
            feats.append([f.cpu() for f in teacher(item["image"].to(device))])
            labels.append(item["label"])
            masks.append(item["mask"][:, 0])
    return ([torch.cat([f[s] for f in feats]) for s in range(len(feats[0]))],
            torch.cat(labels).numpy(), torch.cat(masks).numpy() > 0.5)


@torch.no_grad()
def score(student, feats: list[torch.Tensor], image_size: int, device, batch_size: int = 64):
    """Anomaly maps (N,H,W) float32 numpy and scores (N,) of cached teacher features."""
    student.eval()
    maps, scores = [], []
    for i in range(0, len(feats[0]), batch_size):
        t = [f[i:i + batch_size].to(device) for f in feats]
        m, s = anomaly_map(t, student(t), image_size)
        maps.append(m.float().cpu())
        scores.append(s.float().cpu())
    return torch.cat(maps).numpy(), torch.cat(scores).numpy()


def run_job(args, category: str, noise: float, seed: int, methods: list[str], writer) -> None:
    device = torch.device(args.device)
    split = read_dataset(args.data, args.layout, category)
    split, manifest = inject_noise(split, noise, seed)
    injected = set(manifest.injected)
    color = detect_color(split)
    spec = teacher_spec(args.backbone)
    teacher, _ = build_teacher(args.backbone, args.teacher_weights)
    teacher = teacher.to(device)
    size = (args.image_size, args.image_size)
    t0 = time.perf_counter()
    train_ds = ImageDataset(split.train, size, spec.mean, spec.std, color)
    train_feats = TeacherFeatures(teacher, train_ds, args.batch_size, device=device, cache=True)
    cache_s = time.perf_counter() - t0
    test_ds = ImageDataset(split.test, size, spec.mean, spec.std, color, with_masks=True)
    test_feats, labels, masks = _features_and_truth(teacher, test_ds, device)
    is_injected = np.array([os.path.relpath(s.path, split.root).replace(os.sep, "/") in injected
                            for s in split.train])
    channels = teacher.stage_channels

    def make_opt(params, lr, betas):
        # the fused CUDA Adam (same update rule) cuts ~10 kernel launches per tensor per step;
        # on the CPU the product's Adam (make_adam) is used
        if device.type == "cuda":
            return torch.optim.Adam(params, lr=lr, betas=tuple(betas), fused=True)
        return make_adam(params, lr, betas)
    for method in methods:
        t1 = time.perf_counter()
        opts = METHODS[method]
        if opts is None:
            student = new_student(args.backbone, channels, seed, device)
            opt = make_opt(student.parameters(), args.lr, (0.5, 0.999))
            gen = torch.Generator().manual_seed(seed)
            for e in range(args.epochs):
                fit_epoch(student, train_feats.batches(gen, args.batch_size), opt, progress=False)
        else:
            res = train_cdd(train_feats, args.backbone, channels, CDDOptions(**opts), args.epochs,
                            args.batch_size, args.lr, seed=seed, progress=False,
                            make_optimizer=make_opt)
            student = res.global_student
        train_s = time.perf_counter() - t1 + cache_s
        maps, scores = score(student, test_feats, args.image_size, device)
        _, train_scores = score(student, train_feats.cached, args.image_size, device)
        n_inj = int(is_injected.sum())
        if n_inj:
            top = np.argsort(-train_scores, kind="stable")[:n_inj]
            precision = float(is_injected[top].mean())
        else:
            precision = float("nan")
        q = 1.0 - max(noise, 0.01)
        row = {
            "category": category, "noise": noise, "seed": seed, "method": method, "epochs": args.epochs,
            "image_size": args.image_size, "n_train": len(split.train), "n_injected": n_inj,
            "n_test_good": int((labels == 0).sum()), "n_test_anomalous": int((labels == 1).sum()),
            "image_auroc": metrics.image_auroc(labels, scores),
            "pixel_auroc": metrics.pixel_auroc(masks, maps),
            "aupro": metrics.aupro(masks, maps) if not args.no_aupro else float("nan"),
            "f1_max": metrics.f1_max(labels, scores),
            "f1_mad3": metrics.f1_at_threshold(labels, scores, median_mad_threshold(train_scores, 3.0)),
            "f1_mad2": metrics.f1_at_threshold(labels, scores, median_mad_threshold(train_scores, 2.0)),
            "f1_q_noise": metrics.f1_at_threshold(labels, scores, quantile_threshold(train_scores, q)),
            "report_precision": precision, "train_seconds": train_s,
            # every CDD option as run (defaults included): a row stays readable when a default changes
            "options": json.dumps(CDDOptions(**opts).to_json() if opts is not None else {}),
        }
        writer(row)
        print(f"[{time.strftime('%H:%M:%S')}] {category} noise={noise} seed={seed} {method}: "
              f"img {row['image_auroc']:.4f} px {row['pixel_auroc']:.4f} pro {row['aupro']:.4f} "
              f"report-prec {precision:.3f} {train_s:.0f}s", flush=True)


def jobs(args) -> list[tuple[str, float, int, list[str]]]:
    """Priority order: core methods for every (seed, category, noise) first, ablations last."""
    out = []
    for seed in args.seeds:
        for cat in args.categories:
            for noise in args.noise:
                out.append((cat, noise, seed, list(args.methods)))
    if args.ablations:
        for seed in args.seeds:
            for cat in args.ablation_categories or args.categories:
                for noise in args.ablation_noise:
                    out.append((cat, noise, seed, list(args.ablations)))
    return out


def summarize(out: Path) -> str:
    rows = []
    for f in sorted(glob.glob(str(out / "runs_*.csv"))):
        with open(f, newline="") as fh:
            rows += list(csv.DictReader(fh))
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["category"], r["method"], float(r["noise"])), []).append(r)
    keys = sorted(groups, key=lambda k: (k[0], list(METHODS).index(k[1]) if k[1] in METHODS else 99, k[2]))
    metric_names = ["image_auroc", "pixel_auroc", "aupro", "f1_max", "f1_mad3", "f1_q_noise", "report_precision",
                    "train_seconds"]

    def ms(vals):
        v = np.array([float(x) for x in vals], dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            return "–", math.nan, math.nan
        sd = v.std(ddof=1) if v.size > 1 else 0.0
        return f"{v.mean():.3f} ± {sd:.3f}", v.mean(), sd

    lines = ["| category | method | noise | seeds | image AUROC | pixel AUROC | AUPRO | F1-max | F1 @ MAD3 "
             "| F1 @ quantile | report top-n precision | train s |",
             "|---|---|---|---|" + "---|" * 8]
    with open(out / "summary.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["category", "method", "noise", "seeds"] + [f"{m}_{s}" for m in metric_names for s in ("mean", "std")])
        for k in keys:
            g = groups[k]
            cells, nums = [], []
            for m in metric_names:
                txt, mean, sd = ms([r[m] for r in g])
                cells.append(txt if m != "train_seconds" else f"{mean:.0f} ± {sd:.0f}")
                nums += [mean, sd]
            lines.append(f"| {k[0]} | {k[1]} | {k[2]:g} | {len(g)} | " + " | ".join(cells) + " |")
            w.writerow([k[0], k[1], k[2], len(g)] + nums)
    md = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(md)
    return md


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None, help="data set root (default: generate the recurring-defect demo set)")
    p.add_argument("--layout", default="mvtec", choices=["mvtec", "visa"])
    p.add_argument("--demo-generator", default="team", choices=["team", "narrow"],
                   help="team: cdd_engine.data.demo; narrow: benchmarks/fuad_demo.py (3 narrow defect kinds)")
    p.add_argument("--demo-kinds", nargs="+", default=None, help="defect kinds of the generated demo set")
    p.add_argument("--demo-train", type=int, default=200)
    p.add_argument("--demo-test-good", type=int, default=200)
    p.add_argument("--demo-test-defect", type=int, default=300)
    p.add_argument("--categories", nargs="+", default=None)
    p.add_argument("--noise", nargs="+", type=float, default=[0.0, 0.1, 0.2, 0.4])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=["rd", "cdd"], choices=list(METHODS))
    p.add_argument("--ablations", nargs="*", default=[], choices=list(METHODS))
    p.add_argument("--ablation-categories", nargs="*", default=None)
    p.add_argument("--ablation-noise", nargs="+", type=float, default=[0.2])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--teacher-weights", default=None)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default="bench_cdd_accuracy",
                   help="working folder: data, runs_<shard>.csv (resume, --summarize), summary.md")
    p.add_argument("--results-csv", default=str(RESULTS_DIR / "cdd_accuracy.csv"), metavar="CSV",
                   help="long-format rows of every finished run appended here (results_csv.py); '' for none")
    p.add_argument("--shard", type=int, default=0)
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--budget-min", type=float, default=0.0, help="start no new job after this many minutes (0: none)")
    p.add_argument("--no-aupro", action="store_true", help="skip AUPRO (slowest metric on CPU)")
    p.add_argument("--summarize", action="store_true", help="only merge the CSVs under --out into summary.md")
    args = p.parse_args(argv)
    args.data_given = args.data is not None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.summarize:
        print(summarize(out))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data is None and args.demo_generator == "narrow":
        from fuad_demo import CATEGORIES, make_fuad_demo
        args.categories = args.categories or list(CATEGORIES)
        args.data = str(make_fuad_demo(out / "data_narrow"))
    if args.data is None:
        from cdd_engine.data.demo import DEMO_CATEGORIES, make_demo_dataset
        args.categories = args.categories or list(DEMO_CATEGORIES)
        args.data = str(out / "data")
        if args.shard == 0 or not (out / "data" / "dataset.json").is_file():
            make_demo_dataset(args.data, args.categories, image_size=args.image_size, n_train=args.demo_train,
                              n_test_good=args.demo_test_good, n_test_defect=args.demo_test_defect,
                              seed=0, defect_kinds=args.demo_kinds)
    if not args.categories:
        from cdd_engine.data.readers import list_categories
        args.categories = list_categories(args.data, args.layout)
    csv_path = out / f"runs_{args.shard}.csv"
    new = not csv_path.exists()
    fh = open(csv_path, "a", newline="")
    w = csv.DictWriter(fh, fieldnames=FIELDS)
    if new:
        w.writeheader()

    run_id = new_run_id()
    source = "data set" if args.data_given else f"{args.demo_generator} demo"

    def write(row):
        w.writerow(row)
        fh.flush()
        if args.results_csv:  # at once, like runs_<shard>.csv: an interrupted grid keeps what finished
            lw = ResultsWriter("cdd_accuracy", args.results_csv, run_id=run_id)
            for metric, value, unit, cfg in cdd_accuracy_rows(row):
                lw.add(metric, value, unit, **cfg, device=args.device, backbone=args.backbone, data=source,
                       batch_size=args.batch_size, lr=args.lr)
            lw.write()

    start = time.time()
    for i, (cat, noise, seed, methods) in enumerate(jobs(args)):
        if i % args.shards != args.shard:
            continue
        if args.budget_min and time.time() - start > 60 * args.budget_min:
            print(f"time budget of {args.budget_min} min reached; stopping before job {i}", flush=True)
            break
        run_job(args, cat, noise, seed, methods, write)
    fh.close()


if __name__ == "__main__":
    main()
