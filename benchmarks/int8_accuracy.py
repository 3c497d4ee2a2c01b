"""INT8 against fp32 OpenVINO engines on the demo data set (issue 14's accuracy bar): for every
demo category x seed, train RD with the demo's default settings, build an fp32 and an INT8
OpenVINO engine from the run, evaluate both with ``cdd-engine eval --engine`` and report the
image/pixel AUROC deltas (INT8 - fp32). The bar: |image delta| <= 0.005, |pixel delta| <= 0.01.

Writes ``<out>/int8_accuracy.csv`` (one row per run: eager checkpoint, fp32 engine and INT8
engine metrics, deltas, the INT8 build's guard figures and build times) and
``<out>/int8_accuracy.md`` (a table ready for benchmarks/RESULTS.md).

    python benchmarks/int8_accuracy.py --out bench_int8                  # 3 categories x 3 seeds
    python benchmarks/int8_accuracy.py --out bench_int8 --seeds 0        # one seed per category
    python benchmarks/int8_accuracy.py --out bench_int8 --train-only     # train now, engines later
    python benchmarks/int8_accuracy.py --out bench_int8 --quick          # a tiny smoke run
    python benchmarks/int8_accuracy.py --out bench_int8 --int8-quantization keep_fp32=none \
        --int8-quantization bias_correction=fast   # other NNCF settings, engines beside the default ones

Settings are the demo's (``cdd-engine demo``: efficientnet_lite0 with its packaged weights, 256²,
30 epochs, 200 train / 100 good + 100 defective test images, noise ratio 0.1), except that one
data set (generator seed 0) is shared by all seeds, as in benchmarks/demo_accuracy.py; the seed
changes the noise draw, the student's initialisation and the batch order. The INT8 engine is
calibrated the way ``cdd-engine build --precision int8`` does by default (the run's own training
images). Every step is skipped when its output is already there, so an interrupted benchmark
continues where it stopped (``--rebuild`` builds the engines again).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import cdd_engine  # noqa: E402
from results_csv import RESULTS_DIR, ResultsWriter  # noqa: E402  (benchmarks/ is this script's directory)
from cdd_engine.bench import machine_info, speed_only_guard  # noqa: E402
from cdd_engine.errors import AccuracyGuardError  # noqa: E402
from cdd_engine.cli import DEMO_DEFAULTS, DEMO_QUICK, main as cli_main  # noqa: E402
from cdd_engine.data import make_demo_dataset  # noqa: E402
from cdd_engine.data.demo import DEMO_CATEGORIES  # noqa: E402
from cdd_engine.training import train  # noqa: E402
from cdd_engine.version import __version__  # noqa: E402

METRICS = ("image_auroc", "pixel_auroc", "aupro", "f1_max")
FIELDS = ("category", "seed", *(f"{p}_{m}" for p in ("eager", "fp32", "int8") for m in METRICS),
          "d_image_auroc", "d_pixel_auroc", "d_aupro", "int8_guard_refused", "fp32_threshold", "int8_threshold",
          "int8_verdicts_changed",
          "n_test", "fp32_build_s", "int8_build_s", "int8_guard", "train_s")
IMAGE_BAR, PIXEL_BAR = 0.005, 0.01   # issue 14


def train_one(data: Path, out: Path, category: str, seed: int, s: dict, progress: bool) -> Path:
    run_dir = out / "runs" / f"{category}_seed{seed}"
    cfg = run_dir / "config.json"
    if not (cfg.is_file() and json.loads(cfg.read_text()).get("complete")):
        train(data, run_dir, category=category, image_size=s["image_size"], epochs=s["epochs"],
              noise_ratio=s["noise_ratio"], seed=seed, progress=progress, resume=cfg.is_file())
    return run_dir


def build_one(run_dir: Path, precision: str, rebuild: bool, quantization: dict | None = None,
              tag: str = "") -> tuple[Path, float | None]:
    """-> (engine dir, build seconds or None when an earlier build was reused).

    An INT8 build the accuracy guard refuses is built again with the guard recorded but not
    enforced, so that its AUROC can still be measured; ``guard_refused.txt`` beside it keeps
    the refusal (the row says so)."""
    out = run_dir / f"engine_openvino_{precision}{tag}"
    refused = run_dir / f"guard_refused_{precision}{tag}.txt"
    q = {"quantization": quantization} if quantization else {}
    if (out / "engine.json").is_file() and not rebuild:
        return out, None
    if out.exists():
        shutil.rmtree(out)
    refused.unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        cdd_engine.build(run_dir, backend="openvino", precision=precision, output_dir=out, **q)
    except AccuracyGuardError as e:
        print(f"{run_dir.name}: {e}; building it again with the guard not enforced, to measure it", flush=True)
        refused.write_text(str(e) + "\n", encoding="utf-8")
        cdd_engine.build(run_dir, backend="openvino", precision=precision, output_dir=out, guard=speed_only_guard(),
                         **q)
    return out, time.perf_counter() - t0


def eval_engine(engine_dir: Path, rebuilt: bool) -> dict:
    """``cdd-engine eval --engine DIR --json FILE`` (the command the issue's bar is measured with)."""
    path = engine_dir.parent / f"eval_{engine_dir.name}.json"
    if rebuilt or not path.is_file():
        code = cli_main(["eval", "--engine", str(engine_dir), "--json", str(path), "--force", "--quiet"])
        if code != 0:
            raise RuntimeError(f"cdd-engine eval --engine {engine_dir} failed with exit status {code}")
    return json.loads(path.read_text())


def row_for(category: str, seed: int, run_dir: Path, rebuild: bool, quantization: dict | None = None,
            tag: str = "") -> dict:
    eager = json.loads((run_dir / "metrics.json").read_text())
    fp32_dir, fp32_s = build_one(run_dir, "fp32", rebuild)
    int8_dir, int8_s = build_one(run_dir, "int8", rebuild, quantization, tag)
    fp32 = eval_engine(fp32_dir, fp32_s is not None)
    int8 = eval_engine(int8_dir, int8_s is not None)
    manifest = json.loads((int8_dir / "engine.json").read_text())
    guard = (manifest.get("int8") or {}).get("guard")
    refused_file = run_dir / f"guard_refused_int8{tag}.txt"
    if refused_file.is_file():   # the default guard refused this engine; it was measured anyway
        guard = {"refused_by_default_guard": refused_file.read_text(encoding="utf-8").strip(), **(guard or {})}
    changed = sum(a["verdict"] != b["verdict"] for a, b in zip(fp32["images"], int8["images"]))
    r = {"category": category, "seed": seed, "n_test": fp32["n_test"],
         "fp32_threshold": fp32.get("threshold"), "int8_threshold": int8.get("threshold"),
         "int8_verdicts_changed": changed, "int8_guard_refused": refused_file.is_file(),
         "fp32_build_s": None if fp32_s is None else round(fp32_s, 1),
         "int8_build_s": None if int8_s is None else round(int8_s, 1),
         "int8_guard": json.dumps(guard, sort_keys=True) if guard is not None else "",
         "train_s": round(json.loads((run_dir / "config.json").read_text())["timings"]["train_s"], 1)}
    for prefix, m in (("eager", eager), ("fp32", fp32), ("int8", int8)):
        for k in METRICS:
            r[f"{prefix}_{k}"] = m.get(k)
    for k in ("image_auroc", "pixel_auroc", "aupro"):
        r[f"d_{k}"] = int8[k] - fp32[k]
    return r


def _ms(values: list[float], digits: int = 4) -> str:
    if len(values) == 1:
        return f"{values[0]:+.{digits}f}"
    return f"{statistics.mean(values):+.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def markdown(rows: list[dict], s: dict, seeds: list[int], info: dict, total_s: float, command: str,
             quantization: dict | None = None) -> str:
    ok_img = all(abs(r["d_image_auroc"]) <= IMAGE_BAR for r in rows)
    ok_px = all(abs(r["d_pixel_auroc"]) <= PIXEL_BAR for r in rows)
    lines = [
        f"Command: `{command}`",
        "",
        f"Demo data set (generator seed 0, {s['n_train']} train / {s['n_test_good']} good + {s['n_test_defect']} "
        f"defective test images per category, noise ratio {s['noise_ratio']}), RD with efficientnet_lite0 "
        f"(packaged weights), {s['image_size']}², {s['epochs']} epochs, seeds {', '.join(map(str, seeds))}. "
        f"Engines: OpenVINO fp32 and INT8 built from each run (INT8 calibrated on the run's training images, "
        f"the build's default; NNCF settings {quantization or 'the defaults'}), both evaluated with "
        f"`cdd-engine eval --engine`. cdd-engine {__version__}, "
        f"torch {torch.__version__}, OpenVINO {info.get('openvino', '?')}; {info.get('cpu', '?')} "
        f"({', '.join(info.get('simd', []))}), load average {info.get('loadavg_start')} -> "
        f"{info.get('loadavg_end')}. Total wall time {total_s / 60:.1f} min.",
        "",
        f"Bar (issue 14): |INT8 - fp32| image AUROC <= {IMAGE_BAR} ({'met' if ok_img else 'NOT met'} on every run), "
        f"pixel AUROC <= {PIXEL_BAR} ({'met' if ok_px else 'NOT met'} on every run).",
        "",
        "| category | seed | image AUROC eager / fp32 / INT8 | Δ image | pixel AUROC eager / fp32 / INT8 | Δ pixel | "
        "Δ AUPRO | verdicts changed | default guard | INT8 build s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['category']} | {r['seed']} | {r['eager_image_auroc']:.4f} / {r['fp32_image_auroc']:.4f} / "
                     f"{r['int8_image_auroc']:.4f} | {r['d_image_auroc']:+.4f} | {r['eager_pixel_auroc']:.4f} / "
                     f"{r['fp32_pixel_auroc']:.4f} / {r['int8_pixel_auroc']:.4f} | {r['d_pixel_auroc']:+.4f} | "
                     f"{r['d_aupro']:+.4f} | {r['int8_verdicts_changed']} / {r['n_test']} | "
                     f"{'REFUSED (measured anyway)' if r['int8_guard_refused'] else 'passed'} | "
                     f"{r['int8_build_s'] if r['int8_build_s'] is not None else 'reused'} |")
    cats = list(dict.fromkeys(r["category"] for r in rows))
    if len(rows) > len(cats):
        lines += ["", "Mean ± sample std of the deltas over seeds:", "",
                  "| category | runs | Δ image AUROC | Δ pixel AUROC | Δ AUPRO |", "|---|---|---|---|---|"]
        for c in cats:
            rs = [r for r in rows if r["category"] == c]
            lines.append(f"| {c} | {len(rs)} | {_ms([r['d_image_auroc'] for r in rs])} | "
                         f"{_ms([r['d_pixel_auroc'] for r in rs])} | {_ms([r['d_aupro'] for r in rs])} |")
    lines.append(f"\nLargest |Δ|: image {max(abs(r['d_image_auroc']) for r in rows):.4f}, "
                 f"pixel {max(abs(r['d_pixel_auroc']) for r in rows):.4f}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench_int8_accuracy", help="output folder (data, runs, engines, CSV, markdown)")
    p.add_argument("--categories", nargs="+", default=list(DEMO_CATEGORIES), choices=DEMO_CATEGORIES)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--train-only", action="store_true", help="train the runs (seed-major order) and stop")
    p.add_argument("--rebuild", action="store_true", help="build and evaluate the engines again")
    p.add_argument("--progress", action="store_true", help="show training progress bars")
    p.add_argument("--int8-quantization", action="append", default=None, metavar="KEY=VALUE",
                   help="NNCF settings of the INT8 engines, as `cdd-engine build --int8-quantization` (repeatable); "
                        "the engines then go to engine_openvino_int8_<setting> beside the default one")
    p.add_argument("--quick", action="store_true", help="the demo's --quick settings (64², 2 epochs, tiny sets)")
    p.add_argument("--results-csv", default=str(RESULTS_DIR / "int8_accuracy.csv"), metavar="CSV",
                   help="also append every figure as long-format rows here (results_csv.py); '' for none "
                        "(--quick: none by default)")
    args = p.parse_args(argv)
    s = dict(DEMO_QUICK if args.quick else DEMO_DEFAULTS)
    quantization, tag = None, ""
    if args.int8_quantization:
        from cdd_engine.cli_engine import _quantization_settings
        quantization = _quantization_settings(args.int8_quantization)
        tag = "_" + "_".join(f"{k}-{v}" for k, v in sorted(quantization.items()))
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    out = Path(args.out).absolute()
    t0 = time.perf_counter()
    data = out / "data"
    if not (data / "dataset.json").is_file():
        make_demo_dataset(data, categories=tuple(DEMO_CATEGORIES), image_size=s["image_size"], n_train=s["n_train"],
                          n_test_good=s["n_test_good"], n_test_defect=s["n_test_defect"], seed=0)
    # seed-major: with little time, every category gets its first seed before any gets a second
    pairs = [(c, seed) for seed in args.seeds for c in args.categories]
    rows = []
    for c, seed in pairs:
        run_dir = train_one(data, out, c, seed, s, args.progress)
        if args.train_only:
            print(f"{c} seed {seed}: trained ({run_dir})", flush=True)
            continue
        r = row_for(c, seed, run_dir, args.rebuild, quantization, tag)
        rows.append(r)
        print(f"{c} seed {seed}: image AUROC fp32 {r['fp32_image_auroc']:.4f} INT8 {r['int8_image_auroc']:.4f} "
              f"({r['d_image_auroc']:+.4f}); pixel AUROC fp32 {r['fp32_pixel_auroc']:.4f} INT8 "
              f"{r['int8_pixel_auroc']:.4f} ({r['d_pixel_auroc']:+.4f})", flush=True)
    if args.train_only:
        return 0
    info["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    with open(out / f"int8_accuracy{tag}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    command = "python benchmarks/int8_accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = markdown(rows, s, sorted({r["seed"] for r in rows}), info, time.perf_counter() - t0, command.strip(),
                  quantization)
    (out / f"int8_accuracy{tag}.md").write_text(md, encoding="utf-8")
    print(md)
    if args.results_csv and not (args.quick and args.results_csv == str(RESULTS_DIR / "int8_accuracy.csv")):
        w = ResultsWriter("int8_accuracy", args.results_csv)
        for r in rows:  # one run per category x seed; its strings (paths, guard verdicts) are not figures
            w.add_dict({k: v for k, v in r.items() if k not in ("category", "seed")}, category=r["category"],
                       seed=r["seed"])
        print(f"{len(w.rows)} rows appended to {w.write()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
