"""The ``cdd-engine`` command line.

Each subcommand is one ``add_<name>(subparsers)`` function that builds its parser and sets
its handler; :data:`COMMANDS` lists them in help order. A new subcommand is one more
function and one more list entry. Handlers return an exit status; errors become one line on
stderr and exit status 2 (``--debug`` shows the traceback).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from . import cli_io
from .cli_help import HelpFormatter as _Formatter

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

DESCRIPTION = """\
cdd-engine: fully unsupervised anomaly detection for industrial inspection.
Train a teacher-student model (Reverse Distillation) on a folder of line images that are
mostly good (some may be defective; nobody knows which), evaluate it, and score images.
"""
EPILOG = """\
examples:
  cdd-engine demo                          generate a demo set, train, evaluate, build an engine (~minutes on CPU)
  cdd-engine train --data mvtec --category bottle --out runs/bottle
  cdd-engine eval --checkpoint runs/bottle --data mvtec --json metrics.json
  cdd-engine --threads 1 eval ...          global options go before or after the command
  cdd-engine <command> --help              options of one command
"""


def _write_json(a: argparse.Namespace, obj: Any) -> None:
    """``--json FILE`` (checked by cli_io.check_output before the work) or ``--json -`` (stdout)."""
    cli_io.write_json(a.json, obj, stream=getattr(a, "json_stream", None))


def _add_output_options(p: argparse.ArgumentParser, json_help: str) -> None:
    p.add_argument("--json", metavar="FILE", default=None,
                   help=f"{json_help} ('-': to stdout, the other output then goes to stderr)")
    p.add_argument("--force", action="store_true", help=cli_io.force_help())


def _skip_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip-bad-images", action="store_true",
                   help="skip image files that cannot be decoded, list them and go on (default: stop at the "
                        "first one)")


def _print_metrics(m: dict, indent: str = "  ") -> None:
    def f(k: str) -> str:
        return "n/a (no masks)" if m.get(k) is None else f"{m[k]:.4f}"

    print(f"{indent}image AUROC {f('image_auroc')}   pixel AUROC {f('pixel_auroc')}   "
          f"AUPRO {f('aupro')}   F1-max {f('f1_max')}")
    line = (f"{indent}test images: {m['n_test']} ({m['n_test_good']} good, {m['n_test_anomalous']} anomalous); "
            f"train images: {m['n_train']} ({m['n_injected']} injected anomalies)")
    print(line)
    if "f1_at_threshold" in m:
        print(f"{indent}F1 at the threshold from training scores ({m['threshold']:.4f}): {m['f1_at_threshold']:.4f}")


# ----------------------------------------------------------------------------- shared options
def _add_model_options(p: argparse.ArgumentParser) -> None:
    from .models import TEACHERS
    from .training.config import IMAGE_SIZE_RULE
    from .training import DEFAULT_EPOCHS, method_names
    g = p.add_argument_group("model and training")
    g.add_argument("--method", default="rd", choices=method_names(),
                   help="rd = Reverse Distillation; cdd = Cross-Domain Distillation (K domain students + a "
                        "global student that never learns the training set's defects)")
    g.add_argument("--domains", type=int, default=3, metavar="K", help="cdd: number of domains (domain students)")
    g.add_argument("--partition", default="random", choices=("random", "cluster"),
                   help="cdd: how the training set is split into domains: seeded random, or k-means of the "
                        "teacher's pooled features")
    g.add_argument("--cdd-option", action="append", default=[], metavar="NAME=VALUE",
                   help="cdd: any other CDD option (aggregate=median, teacher_gate=0.9, teacher_share=0.3, "
                        "schedule=alternate, warmup_epochs=2, ...; see cdd_engine.cdd.CDDOptions); repeatable")
    g.add_argument("--backbone", default="efficientnet_lite0", choices=sorted(TEACHERS),
                   help="frozen ImageNet teacher; efficientnet_lite0 is the fast CPU default")
    g.add_argument("--teacher-weights", metavar="PATH", default=None,
                   help="teacher weights file (.pth/.safetensors, torchvision layout for the ResNets); "
                        "default: the backbone's packaged weights ('random' for tests only)")
    g.add_argument("--image-size", type=int, default=256, metavar="N",
                   help=f"square model input side in pixels; {IMAGE_SIZE_RULE}")
    g.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, metavar="N", help="training epochs")
    g.add_argument("--batch-size", type=int, default=16, metavar="N", help="images per training step")
    g.add_argument("--lr", type=float, default=0.005, help="Adam learning rate (betas 0.5, 0.999)")
    g.add_argument("--seed", type=int, default=0, metavar="S", help="seeds initialisation, batch order and noise")
    g.add_argument("--eval-every", type=int, default=0, metavar="N",
                   help="also evaluate every N epochs (0: only at the end)")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    g.add_argument("--num-workers", type=int, default=0, metavar="N", help="DataLoader workers")
    g.add_argument("--no-feature-cache", action="store_true",
                   help="recompute the teacher's features every epoch instead of caching them in memory")


def _add_data_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=required, metavar="DIR", help="data set root")
    g.add_argument("--layout", default=None if not required else "mvtec", choices=("mvtec", "visa", "folder"),
                   help="mvtec: <cat>/train/good, <cat>/test/<defect>, <cat>/ground_truth; visa: VisA; "
                        "folder: any images, all unlabelled training images")
    g.add_argument("--category", default=None, metavar="NAME",
                   help="category folder inside --data (needed when the root holds several)")


def _cdd_options(a: argparse.Namespace) -> dict[str, Any]:
    """--domains/--partition/--cdd-option NAME=VALUE -> TrainConfig.method_options (method cdd only)."""
    if a.method != "cdd":
        return {}
    import cdd_engine.cdd.method  # noqa: F401  (registers method "cdd")
    opts: dict[str, Any] = {"domains": a.domains, "partition": a.partition}
    for item in a.cdd_option:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--cdd-option takes NAME=VALUE, got {item!r}")
        try:
            opts[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            opts[name.strip()] = value  # a bare word such as median or alternate
    return opts


def _train_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    return dict(method=a.method, method_options=_cdd_options(a), backbone=a.backbone, teacher_weights=a.teacher_weights,
                image_size=a.image_size, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed,
                eval_every=a.eval_every, device=a.device, num_workers=a.num_workers,
                cache_features="no" if a.no_feature_cache else "auto", progress=not a.quiet)


# ----------------------------------------------------------------------------- demo
DEMO_DEFAULTS = {"image_size": 256, "epochs": 30, "n_train": 200, "n_test_good": 100, "n_test_defect": 100,
                 "noise_ratio": 0.1}
DEMO_QUICK = {"image_size": 64, "epochs": 2, "n_train": 12, "n_test_good": 6, "n_test_defect": 6,
              "noise_ratio": 0.1}


def add_demo(sub) -> None:
    from .data.demo import DEMO_CATEGORIES
    from .training.config import IMAGE_SIZE_RULE
    p = sub.add_parser(
        "demo", formatter_class=_Formatter,
        help="generate a demo data set, train, evaluate, print a report",
        description="Generate an offline demo data set in MVTec layout (a real texture with synthetic "
                    "scratches, stains, holes, pasted patches and colour shifts), contaminate its training "
                    "set with unlabelled defective images (FUAD), train the CPU default model, evaluate and "
                    "print a short report.",
        epilog="examples:\n  cdd-engine demo\n  cdd-engine demo --category grass --out demo_grass\n"
               "  cdd-engine demo --quick            a tiny run (seconds) to check an install")
    p.add_argument("--out", default="cdd_demo", metavar="DIR", help="where the data set and the run go")
    p.add_argument("--category", default="brick", choices=DEMO_CATEGORIES, help="demo texture")
    p.add_argument("--epochs", type=int, default=None, metavar="N",
                   help=f"training epochs (default {DEMO_DEFAULTS['epochs']}, --quick {DEMO_QUICK['epochs']})")
    p.add_argument("--image-size", type=int, default=None, metavar="N",
                   help=f"image side (default {DEMO_DEFAULTS['image_size']}, --quick {DEMO_QUICK['image_size']}); "
                        f"{IMAGE_SIZE_RULE}")
    p.add_argument("--noise-ratio", type=float, default=None, metavar="R",
                   help=f"contamination: fraction of |train| drawn from the test anomalies "
                        f"(default {DEMO_DEFAULTS['noise_ratio']})")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seeds the data set, noise and training")
    p.add_argument("--quick", action="store_true", help="tiny data set, 2 epochs, 64² (for tests and CI)")
    p.add_argument("--backend", default="auto", choices=("auto", "openvino", "tensorrt", "torch"),
                   help="engine backend of the last step (auto: TensorRT on an NVIDIA GPU when installed, else OpenVINO)")
    p.add_argument("--no-engine", action="store_true",
                   help="skip building the scoring engine and timing it against the eager reference")
    _add_output_options(p, "also write the report as JSON to FILE")
    p.set_defaults(handler=run_demo)


def run_demo(a: argparse.Namespace) -> int:
    from .data import make_demo_dataset
    from .training import train
    from .training.config import check_image_size
    s = dict(DEMO_QUICK if a.quick else DEMO_DEFAULTS)
    if a.epochs is not None:
        s["epochs"] = a.epochs
    if a.image_size is not None:
        s["image_size"] = a.image_size
    if a.noise_ratio is not None:
        s["noise_ratio"] = a.noise_ratio
    check_image_size(s["image_size"], "--image-size")  # before the data set is generated
    cli_io.check_output(a.json, "--json", a.force)
    out = Path(a.out).expanduser().absolute()
    run_dir = out / "runs" / f"{a.category}_rd_seed{a.seed}"
    n = 1
    while run_dir.exists():  # running the demo again keeps the earlier runs
        n += 1
        run_dir = out / "runs" / f"{a.category}_rd_seed{a.seed}-{n}"
    t0 = time.perf_counter()
    say = (lambda *x: None) if a.quiet else print
    steps = 3 if a.no_engine else 4
    say(f"[1/{steps}] generating the demo data set ({a.category}, {s['n_train']} train, "
        f"{s['n_test_good']} good + {s['n_test_defect']} defective test images, {s['image_size']}²) in {out / 'data'}")
    data = make_demo_dataset(out / "data", categories=(a.category,), image_size=s["image_size"],
                             n_train=s["n_train"], n_test_good=s["n_test_good"],
                             n_test_defect=s["n_test_defect"], seed=a.seed)
    t_data = time.perf_counter() - t0
    say(f"[2/{steps}] training RD (efficientnet_lite0 teacher, {s['epochs']} epochs); int({s['noise_ratio']} x |train|) "
        f"defective test images join the training set unlabelled (FUAD)")
    t1 = time.perf_counter()
    train(data, run_dir, layout="mvtec", category=a.category, image_size=s["image_size"], epochs=s["epochs"],
          noise_ratio=s["noise_ratio"], seed=a.seed, progress=not a.quiet)
    t_train = time.perf_counter() - t1
    say(f"[3/{steps}] report")
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    report = {"category": a.category, "metrics": {k: v for k, v in metrics.items() if k != "history"},
              "seconds": {"data": t_data, "train_and_eval": t_train, "total": time.perf_counter() - t0,
                          "epochs": sum(config["timings"]["epoch_s"]),
                          "teacher_features": config["timings"]["feature_cache_s"]},
              "settings": s, "checkpoint": str(run_dir), "data": str(data)}
    print(f"demo '{a.category}' ({s['image_size']}², {s['epochs']} epochs, noise ratio {s['noise_ratio']}):")
    _print_metrics(metrics)
    sec = report["seconds"]
    print(f"  time: {sec['total']:.0f} s total (data {sec['data']:.0f} s, training + evaluation "
          f"{sec['train_and_eval']:.0f} s)")
    print(f"  checkpoint: {run_dir}")
    print(f"  evaluate again: cdd-engine eval --checkpoint {run_dir} --data {data} --overlays {out / 'overlays'}")
    if not a.no_engine:
        say(f"[4/{steps}] building a scoring engine ({a.backend}) and timing it against the eager reference")
        report["engine"] = _demo_engine(run_dir, out, a.backend, metrics)
    if a.json:
        _write_json(a, report)
    return 0


def _demo_engine(run_dir: Path, out: Path, backend: str, metrics: dict) -> dict:
    """Build an engine from the demo's checkpoint, score the evaluated test set through it and
    print its images/s beside the eager reference's (both timed in this run, batch 8)."""
    from .bench import demo_engine_step
    from .checkpoint import read_config
    from .data import NoiseManifest, read_dataset
    from .metrics import image_auroc
    d = read_config(run_dir)["data"]
    # the test set the evaluation used: injected training images are not test images
    split = NoiseManifest.load(run_dir / d.get("noise_manifest", "noise_manifest.json")).apply(
        read_dataset(d["root"], layout=d["layout"], category=d["category"]))
    r = demo_engine_step(run_dir, [s.path for s in split.test], out / "engines" / run_dir.name, backend=backend,
                         batch=8, rounds=3)
    r["image_auroc"] = image_auroc([s.label for s in split.test], r["scores"])
    print(f"  engine: {r['backend']} ({r['backend_choice']}; runtime {r['runtime']}) in {r['engine_dir']}, "
          f"built in {r['build_seconds']:.0f} s")
    print(f"    scored {len(split.test)} test images: image AUROC {r['image_auroc']:.4f} "
          f"(eager {metrics['image_auroc']:.4f}), largest score difference to eager {r['max_abs_score_diff']:.1e}")
    print(f"    batch 8, uint8 frames in -> scores + maps out: engine {r['engine_images_per_s']:.1f} images/s, "
          f"eager PyTorch {r['eager_images_per_s']:.1f} images/s ({r['speedup']:.2f}x; median of 3 interleaved "
          f"rounds on this machine)")
    print(f"    score images: cdd-engine score --engine {r['engine_dir']} IMAGE...")
    return {k: v for k, v in r.items() if k not in ("scores", "is_anomalous")}


# ----------------------------------------------------------------------------- train
def add_train(sub) -> None:
    p = sub.add_parser(
        "train", formatter_class=_Formatter, help="train a model on a data set -> run directory (checkpoint)",
        description="Train the student of a teacher-student anomaly detector. The run directory holds the "
                    "checkpoint (safetensors + JSON, updated every epoch), the noise manifest, the training "
                    "scores with the derived threshold and, when the data set has a labelled test set, "
                    "metrics.json. An interrupted run continues with --resume to the same result.",
        epilog="examples:\n"
               "  cdd-engine train --data mvtec --category bottle --out runs/bottle\n"
               "  cdd-engine train --data mvtec --category bottle --noise-ratio 0.1 --out runs/bottle_noisy\n"
               "  cdd-engine train --data line_images --layout folder --out runs/line\n"
               "  cdd-engine train --data mvtec --category bottle --backbone wide_resnet50_2 \\\n"
               "      --teacher-weights wide_resnet50_2-95faca4d.pth --device cuda --out runs/bottle_wrn\n"
               "  cdd-engine train ... --out runs/bottle --resume      continue an interrupted run")
    _add_data_options(p)
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to write")
    g = p.add_argument_group("fully unsupervised protocol (FUAD)")
    g.add_argument("--noise-ratio", type=float, default=0.0, metavar="R",
                   help="move int(R*|train|) anomalous test images, drawn with the seed, into the training "
                        "set without labels (SoftPatch protocol)")
    g.add_argument("--overlap", action="store_true", help="keep the injected images in the test set too")
    _add_model_options(p)
    _skip_option(p)
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty --out that is not a run to resume (a previous run there is replaced)")
    p.set_defaults(handler=run_train)


def run_train(a: argparse.Namespace) -> int:
    from .training import train
    run_dir = train(a.data, a.out, layout=a.layout, category=a.category, noise_ratio=a.noise_ratio,
                    overlap=a.overlap, resume=a.resume, force=a.force, skip_bad_images=a.skip_bad_images, **_train_kwargs(a))
    metrics_path = run_dir / "metrics.json"
    print(f"checkpoint: {run_dir}")
    _print_skipped(_read_skipped(run_dir))
    if metrics_path.is_file():
        _print_metrics(json.loads(metrics_path.read_text(encoding="utf-8")))
    return 0


# ----------------------------------------------------------------------------- eval
def add_eval(sub) -> None:
    p = sub.add_parser(
        "eval", formatter_class=_Formatter, help="evaluate a run directory or a built engine on a labelled test set",
        description="Compute image AUROC, pixel AUROC, AUPRO and F1-max of a checkpoint (--checkpoint) or of an "
                    "engine built from one (--engine: every test image scored by the engine itself from its uint8 "
                    "pixels, with the engine's resize, normalisation, precision and threshold) on a data set's "
                    "test images. Images the run injected into its training set (its noise manifest) are left "
                    "out of the test set automatically (for an engine: when its run directory is still there). "
                    "Data set, layout and category default to the run's.",
        epilog="examples:\n  cdd-engine eval --checkpoint runs/bottle --data mvtec\n"
               "  cdd-engine eval --checkpoint runs/bottle --data mvtec --json m.json --overlays heatmaps/\n"
               "  cdd-engine eval --engine runs/bottle/engine_openvino_int8 --data mvtec --category bottle")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="RUN_DIR", help="run directory written by train")
    src.add_argument("--engine", metavar="ENGINE_DIR", help="engine directory written by build")
    _add_data_options(p, required=False)
    p.add_argument("--teacher-weights", metavar="PATH", default=None,
                   help="--checkpoint: where the teacher's weights are (if not where they were at training time)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="images per network call")
    p.add_argument("--device", default=None,
                   help="torch device, e.g. cpu or cuda (default: cpu; --engine: the engine backend's default)")
    _add_output_options(p, "write the metrics and every test image's score and verdict as JSON to FILE")
    p.add_argument("--overlays", metavar="DIR", help="write a heat-map overlay PNG per test image")
    p.add_argument("--overlay", dest="overlays", metavar="DIR", help=argparse.SUPPRESS)  # score's old spelling
    _skip_option(p)
    p.set_defaults(handler=run_eval)


def run_eval(a: argparse.Namespace) -> int:
    from .evaluate import evaluate_engine, evaluate_run
    if a.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {a.batch_size}")
    cli_io.check_output(a.json, "--json", a.force)
    if a.engine is not None:
        if a.teacher_weights is not None:
            raise ValueError("--teacher-weights is an option of --checkpoint (an engine holds its teacher)")
        options = {} if a.device is None else {"device": a.device}
        if a.threads is not None:
            options["num_threads"] = a.threads
        m = evaluate_engine(a.engine, data=a.data, layout=a.layout, category=a.category, batch_size=a.batch_size,
                            progress=not a.quiet, overlays_dir=a.overlays, skip_bad_images=a.skip_bad_images,
                            force=a.force, **options)
        print(f"{m['data']} with the {m['backend']} {m['precision']} engine {m['engine']} (runtime {m['runtime']}):")
    else:
        m = evaluate_run(a.checkpoint, data=a.data, layout=a.layout, category=a.category,
                         teacher_weights=a.teacher_weights, batch_size=a.batch_size, device=a.device or "cpu",
                         progress=not a.quiet, overlays_dir=a.overlays, skip_bad_images=a.skip_bad_images,
                         force=a.force)
        print(f"{m['data']} with {m['checkpoint']}:")
    _print_metrics(m)
    _print_skipped(m.get("skipped_images", []))
    if a.overlays:
        print(f"  overlays: {a.overlays}")
    if a.json:
        _write_json(a, m)
        if a.json != cli_io.STDOUT:
            print(f"  JSON: {a.json}")
    return 0


def _read_skipped(run_dir: Path) -> list[dict]:
    from .data.readers import SKIPPED_FILE
    p = Path(run_dir) / SKIPPED_FILE
    return json.loads(p.read_text(encoding="utf-8"))["skipped"] if p.is_file() else []


def _print_skipped(skipped: list[dict]) -> None:
    """--skip-bad-images: every skipped file on its own line (stdout), with why."""
    if skipped:
        print(f"  skipped {len(skipped)} unreadable image(s) (--skip-bad-images):")
        for e in skipped:
            print(f"    {e['path']}: {e['error']}")


# ----------------------------------------------------------------------------- report
def add_report(sub) -> None:
    p = sub.add_parser(
        "report", formatter_class=_Formatter, help="rank the training images by anomaly score (find hidden defects)",
        description="Contamination report of a finished run: every training image ranked by the anomaly score "
                    "of the deployed student (CDD's global student never learned the training defects), a CSV "
                    "and JSON list, and heat-map overlays of the most suspicious images. When the run injected "
                    "known defects (--noise-ratio), the precision of the top-ranked images is reported.",
        epilog="examples:\n  cdd-engine report --checkpoint runs/line\n"
               "  cdd-engine report --checkpoint runs/line --top 32 --out suspicious/")
    p.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help="run directory written by train")
    p.add_argument("--out", metavar="DIR", default=None, help="output folder (default: RUN_DIR/report)")
    p.add_argument("--top", type=int, default=16, metavar="N", help="overlays of the N highest-scoring images")
    p.add_argument("--force", action="store_true",
                   help="overwrite files in the output folder that this command did not write (docs/overlays.md)")
    p.add_argument("--data", metavar="DIR", default=None, help="data set root, if it moved since training")
    p.add_argument("--teacher-weights", metavar="PATH", default=None,
                   help="where the teacher's weights are (if not where they were at training time)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.set_defaults(handler=run_report)


def run_report(a: argparse.Namespace) -> int:
    from .report import contamination_report
    r = contamination_report(a.checkpoint, a.out, top=a.top, data=a.data, device=a.device,
                             teacher_weights=a.teacher_weights, force=a.force)
    s = r["summary"]
    out = Path(a.out) if a.out else Path(a.checkpoint) / "report"
    print(f"{s['n_train']} training images, {s['n_above_threshold']} above the threshold {s['threshold']:.4g}")
    for e in r["ranked"][:min(a.top, 10)]:
        print(f"  {e['rank']:4d}  {e['score']:.4f}  {e['path']}")
    if s.get("precision_at_n_injected") is not None:
        print(f"  precision of the top {s['n_injected_known']} at finding the injected images: "
              f"{s['precision_at_n_injected']:.3f}")
    print(f"  list: {out / 'contamination.csv'}; overlays: {out / 'overlays'}")
    return 0


# ----------------------------------------------------------------------------- dispatch
from .cli_engine import add_bench_parser, add_build_parser, add_score_parser  # noqa: E402 (deployment commands)
from .serving.cli import add_export_triton_parser  # noqa: E402 (docs/serving.md)

COMMANDS: list[Callable[[Any], None]] = [add_demo, add_train, add_eval, add_report,
                                         add_build_parser, add_score_parser, add_bench_parser,
                                         add_export_triton_parser]


def _add_global_options(parser: argparse.ArgumentParser, add, default) -> None:
    """--debug, --quiet, --threads: accepted before and after the subcommand."""
    add("--debug", action="store_true", default=False if default is None else default,
        help="show the full traceback on errors")
    add("--quiet", action="store_true", default=False if default is None else default,
        help="no progress bars or logs")
    add("--threads", type=int, default=default, metavar="N",
        help="CPU threads for torch (default: one per core; demo: the cores the machine's load leaves free)")


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__
    parser = argparse.ArgumentParser(prog="cdd-engine", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"cdd-engine {__version__}")
    _add_global_options(parser, parser.add_argument_group("global options").add_argument,
                        None)
    # The same options after the subcommand. Their default there is SUPPRESS, so a value given before the
    # subcommand is not reset by the subparser; the top-level parser supplies the real defaults.
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, common.add_argument_group("global options (also before the command)").add_argument,
                        argparse.SUPPRESS)
    parser._common = common  # type: ignore[attr-defined]
    sub = parser.add_subparsers(dest="command", metavar="<command>", title="commands")
    real_add = sub.add_parser

    def add_parser(name, **kw):  # every subcommand gets --debug/--quiet
        kw.setdefault("parents", [common])
        return real_add(name, **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_ERROR
    try:
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be >= 1, got {args.threads}")
            import torch
            torch.set_num_threads(args.threads)
        elif args.command == "demo":  # the command people copy: fast on a busy machine too (cdd_engine/threads.py)
            import torch
            from . import threads
            torch.set_num_threads(threads.auto_threads())
            if not args.quiet:
                print(f"torch threads: {torch.get_num_threads()} ({threads.describe()}; --threads N overrides)",
                      file=sys.stderr)
        if getattr(args, "json", None) == cli_io.STDOUT:
            # --json -: stdout carries the JSON report alone; every other line goes to stderr
            args.json_stream = sys.stdout
            with contextlib.redirect_stdout(sys.stderr):
                return args.handler(args)
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted" + ("; continue with the same command and --resume" if args.command == "train" else ""),
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # one clear line for the user; --debug for developers
        if args.debug:
            raise
        msg = str(e).strip() or type(e).__name__
        from .data.images import UnreadableImageError
        if isinstance(e, UnreadableImageError) and hasattr(args, "skip_bad_images") and not args.skip_bad_images:
            msg += "; pass --skip-bad-images to skip unreadable files, list them and go on"
        if not isinstance(e, (ValueError, TypeError, OSError, RuntimeError)):
            msg = f"{type(e).__name__}: {msg} (run with --debug for the traceback)"
        print(f"cdd-engine {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
