"""Convert the result files of the first sessions (one JSON or wide CSV per run) into the
long-format family CSVs of results_csv.py, so that every figure they hold can be queried.

    python benchmarks/import_legacy_results.py [--src benchmarks/results] [--out-dir benchmarks/results]
    python benchmarks/import_legacy_results.py --check      # every number of every file found in its rows?

Each original file becomes one run: its run_id is the file's path under ``--src`` without the
suffix (``engine_runtime_2026-11-28T2002``, ``openvino_probe_2026-11-28/options_run1``,
``cdd_accuracy/cpu_grid_2026-11-28``), so a citation in RESULTS.md names the file it came from.
``date``, ``machine`` and ``commit`` are what the file itself records (the file name's date, a
``run``/``time_utc`` field, the CPU model and core count, a "code 4a0346a" note) and ``unknown``
where it records nothing. Nothing is added from the narrative in RESULTS.md.

Kinds, and the family each goes to (the family of the script that wrote it):

- ``engine_throughput_cpu_*.json``  -> throughput (``throughput.py``; the ``.md`` beside each is a
  view of the same JSON and is only checked); ``*_repeats_*.json`` is a list of short runs;
- ``engine_runtime_*.json``         -> engine_runtime (``bench_engine_runtime.py``);
- ``native_*.json``                 -> native (``bench_native.py``);
- ``gpu_check_*.json``              -> gpu_check (``gpu_check.py``);
- ``serving_*.json``                -> serving (``serving.py``; its ``.csv`` is a rounded view, checked);
- ``demo_accuracy_*.csv``           -> demo_accuracy (``demo_accuracy.py``);
- ``openvino_probe_*/*.json``       -> openvino_probe (``openvino_probe.py``);
- ``cdd_accuracy/*.csv``            -> cdd_accuracy (``cdd_accuracy.py``).

Metric names and config keys are the ones the scripts write today (results_csv.rows_from_dict of
the same dicts), and besides: raw per-call times become rows too (config ``i`` = call index;
``raw_lists``), so that a figure derived from them (the share of rounds above a bar) can still be
recomputed. A run already present in its family CSV is skipped: running the script twice adds
nothing. ``--check`` looks up every number of every file (JSON numbers exactly, CSV and markdown
cells at their printed precision) among the values and config values of its run's rows.

The files were removed from the repository once this check passed on all of them; to run the
conversion again, check out the commit before their removal
(``git log --diff-filter=D --oneline -- benchmarks/results``) and run it there.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_csv import (  # benchmarks/ on the path
    COLUMNS,
    RESULTS_DIR,
    ResultsWriter,
    cdd_accuracy_rows,
    config_text,
    engine_text,
    read_rows,
    rows_from_dict,
)

UNKNOWN = "unknown"
Row = tuple  # (metric, value, unit, config)


@dataclass
class Run:
    family: str
    run_id: str
    date: str = UNKNOWN
    machine: str = UNKNOWN
    commit: str = UNKNOWN
    rows: list[Row] = field(default_factory=list)

    def add(self, result: dict, raw_lists: bool = True, **config: Any) -> None:
        self.rows += [(m, v, u, {**config, **extra}) for m, v, u, extra in rows_from_dict(result, raw_lists=raw_lists)]


# ------------------------------------------------------------------ what a file records about its run

def stem_date(name: str) -> str:
    """2026-11-28T2051 -> 2026-11-28T20:51; 2026-11-28 -> 2026-11-28; no date -> unknown."""
    m = re.search(r"(\d{4}-\d{2}-\d{2})(?:T(\d{2}):?(\d{2}))?", name)
    if not m:
        return UNKNOWN
    return m.group(1) + (f"T{m.group(2)}:{m.group(3)}" if m.group(2) else "")


def commit_in(text: str | None) -> str:
    """The commit a note names ("code 4a0346a: ...", "commit 9b3184f code"), else unknown."""
    m = re.search(r"\b(?:code|commit) ([0-9a-f]{7,40})\b", text or "")
    return m.group(1) if m else UNKNOWN


def machine_of(m: Any) -> str:
    """'AMD EPYC x2' from a machine dict (cpu + cpu_count or cores), like results_csv.machine()."""
    if not isinstance(m, dict) or not m.get("cpu"):
        return UNKNOWN
    cores = m.get("cpu_count", m.get("cores"))
    return f"{m['cpu']} x{cores}" if cores else str(m["cpu"])


def software(m: Any) -> dict[str, str]:
    """The versions and ISA a machine/meta dict records (config of the run's rows: RESULTS.md cites them)."""
    if not isinstance(m, dict):
        return {}
    out = {k: str(m[k]) for k in ("torch", "openvino", "triton", "cuda") if m.get(k)}
    if isinstance(m.get("simd"), list):
        out["simd"] = ",".join(map(str, m["simd"]))
    return out


def cell(text: str) -> Any:
    """A CSV cell as int, float or the text itself."""
    t = text.strip()
    if re.fullmatch(r"-?\d+", t):
        return int(t)
    try:
        return float(t)
    except ValueError:
        return t


def read_csv(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: cell(v) for k, v in r.items()} for r in csv.DictReader(f)]


def run_id_of(path: Path, src: Path) -> str:
    return path.relative_to(src).with_suffix("").as_posix()


# ------------------------------------------------------------------ one converter per kind of file

def throughput(path: Path, src: Path) -> Run:
    d = json.loads(path.read_text())
    run = Run("throughput", run_id_of(path, src), stem_date(path.name))
    if isinstance(d, list):  # *_repeats_*: short runs of WRN50 at batch 1 and 8, one item per (run, batch)
        seen: dict[int, int] = {}
        for item in d:
            b = item["batch"]
            cfg = {"batch": b, "repeat": seen.get(b, 0)}
            seen[b] = cfg["repeat"] + 1
            run.add({k: v for k, v in item.items() if k not in ("batch", "load")}, **cfg)
            run.add({"loadavg": item["load"]}, **cfg)
        for i, (m, v, u, c) in enumerate(run.rows):  # 'ratio' and 'paired' are eager/engine ratios
            if m in ("ratio", "paired"):
                run.rows[i] = (m, v, "x", c)
        return run
    run.machine = machine_of(d.get("machine"))
    sw = software(d.get("machine"))
    run.add(d, image_size=d.get("image_size"), **sw)  # what throughput.py writes: add_dict(results, image_size=...)
    for pipeline, runtime in (d.get("engine_runtimes") or {}).items():  # text: one marker row (value 1) each
        backbone, _, backend = pipeline.partition("/")
        run.rows.append(("engine_runtime", 1.0, "", {"backbone": backbone, "backend": backend, "runtime": runtime,
                                                      "image_size": d.get("image_size"), **sw}))
    return run


def engine_runtime(path: Path, src: Path) -> Run:
    d = json.loads(path.read_text())
    run = Run("engine_runtime", run_id_of(path, src), d.get("run") or stem_date(path.name),
              machine_of(d.get("machine")), commit_in(d.get("note")))
    base = engine_runtime_config(d)
    sw = software(d.get("machine"))
    for b, res in d.get("batches", {}).items():
        run.add(res, batch=int(b), **base, **sw)
    run.add({k: v for k, v in d.items() if k not in ("batches", *base)}, **base, **sw)
    return run


def engine_runtime_config(d: dict) -> dict:
    """The settings of a bench_engine_runtime.py run (the same keys it writes to its CSV)."""
    return {k: d[k] for k in ("threads", "rounds", "model", "runtime", "note") if k in d}


NATIVE_CONFIG = ("threads", "batch", "iters", "model", "torch", "openvino", "note")  # bench_native.CONFIG_KEYS


def native(path: Path, src: Path) -> Run:
    d = json.loads(path.read_text())
    run = Run("native", run_id_of(path, src), d.get("run") or d.get("date") or stem_date(path.name),
              machine_of(d.get("machine")), commit_in(d.get("note")))
    run.add({k: v for k, v in d.items() if k not in (*NATIVE_CONFIG, "machine")},  # as bench_native.write_csv
            **{k: d[k] for k in NATIVE_CONFIG if k in d})
    return run


def gpu_check(path: Path, src: Path) -> Run:
    d = json.loads(path.read_text())
    meta = d.get("meta", {})
    run = Run("gpu_check", run_id_of(path, src), stem_date(path.name),
              f"{UNKNOWN}; {meta['gpu']}" if meta.get("gpu") else UNKNOWN, commit_in(meta.get("note")))
    cfg = {"quick": meta.get("quick"), "device": meta.get("device"),  # as gpu_check.py's add_dict(sections, ...)
           **software(meta)}
    run.add(d.get("sections", {}), **cfg)
    run.add({"meta": meta}, **cfg)
    return run


def serving(path: Path, src: Path) -> Run:
    d = json.loads(path.read_text())
    machine = f"{d['machine']} x{d['cpus']}" if d.get("machine") else UNKNOWN
    run = Run("serving", run_id_of(path, src), d.get("time_utc") or stem_date(path.name), machine)
    base = {"batch": d.get("batch"), "protocol": d.get("protocol"), "instances": d.get("instances"),
            "max_queue_delay_us": d.get("max_queue_delay_us"), "engine": engine_text(str(d.get("engine", "")))}
    for i, r in enumerate(d.get("rows", [])):  # the rows serving.py writes, then the counts and every latency
        cfg = {"phase": r["phase"], "phase_index": i, "clients": r["clients"], **base}  # in-process ran 4 times
        for metric in ("frames_per_s", "p50_ms", "p99_ms", "vs_in_process"):
            run.rows.append((metric, float(r[metric]), "x" if metric == "vs_in_process" else
                             ("img/s" if metric == "frames_per_s" else "ms"), cfg))
        load = r.get("loadavg") or []
        for name, v in zip(("load1", "load5", "load15"), load):
            run.rows.append((name, float(v), "", cfg))
        run.add({k: r[k] for k in ("requests", "frames", "seconds", "latencies_ms") if k in r}, **cfg)
    run.add({"server_stats": d.get("server_stats", {})}, phase="whole run", **base)
    return run


DEMO_CONFIG = ("category", "seed", "n_train", "n_test", "epochs", "image_size")  # demo_accuracy.CONFIG_FIELDS


def demo_accuracy(path: Path, src: Path) -> Run:
    run = Run("demo_accuracy", run_id_of(path, src), stem_date(path.name))
    for r in read_csv(path):
        run.add({k: v for k, v in r.items() if k not in DEMO_CONFIG}, **{k: r[k] for k in DEMO_CONFIG if k in r})
    return run


PROBES = {"network": "network", "options": "options", "peak": "peak", "wino_layers": "wino-layers",
          "wino_net": "wino-net"}


def openvino_probe(path: Path, src: Path) -> Run:
    d = json.loads(path.read_text())
    run = Run("openvino_probe", run_id_of(path, src), stem_date(path.parent.name))
    probe = next((v for k, v in sorted(PROBES.items(), key=lambda kv: -len(kv[0])) if path.stem.startswith(k)),
                 path.stem)
    cfg: dict[str, Any] = {"probe": probe}
    for kind in ("winograd", "direct"):  # the engine the probe ran, where the file name says
        if f"_{kind}_" in f"_{path.stem}_" and probe != "wino-layers":
            cfg["engine"] = kind
    run.add({k: v for k, v in d.items() if k != "properties"}, **cfg)
    for variant, props in (d.get("properties") or {}).items():  # compiled-model properties, as text in the file
        nums = {k: v for k, v in props.items() if re.fullmatch(r"-?\d+(\.\d+)?|True|False", str(v))}
        text = {k.lower(): str(v) for k, v in props.items() if k not in nums}
        for k, v in nums.items():
            value = {"True": 1.0, "False": 0.0}.get(str(v), None)
            run.rows.append((f"properties.{k}", float(v) if value is None else value, "bool" if value is not None else "",
                             {**cfg, "variant": variant, **text}))
    return run


def cdd_accuracy(path: Path, src: Path) -> Run:
    gpu = path.stem.endswith("_h200")  # the file name is all these files record of the machine
    run = Run("cdd_accuracy", run_id_of(path, src), stem_date(path.name), f"{UNKNOWN}; NVIDIA H200" if gpu else UNKNOWN)
    for r in read_csv(path):
        run.rows += [(m, v, u, {**c, "device": "cuda" if gpu else "cpu"}) for m, v, u, c in cdd_accuracy_rows(r)]
    return run


# (glob under --src, converter); a file matching none of them is reported and left alone
KINDS: list[tuple[str, Callable[[Path, Path], Run]]] = [
    ("engine_throughput_cpu_*.json", throughput),
    ("engine_runtime_*.json", engine_runtime),
    ("native_*.json", native),
    ("gpu_check_*.json", gpu_check),
    ("serving_*.json", serving),
    ("demo_accuracy_*.csv", demo_accuracy),
    ("openvino_probe_*/*.json", openvino_probe),
    ("cdd_accuracy/*.csv", cdd_accuracy),
]
# views of a converted JSON (same stem): checked against its rows, not converted again
VIEWS = [("engine_throughput_cpu_*.md", ".json"), ("serving_*.csv", ".json")]


def legacy_files(src: Path) -> list[tuple[Path, Callable[[Path, Path], Run]]]:
    return [(p, fn) for pattern, fn in KINDS for p in sorted(src.glob(pattern))]


def convert(src: Path) -> list[Run]:
    return [fn(p, src) for p, fn in legacy_files(src)]


def write(runs: list[Run], out_dir: Path) -> dict[str, int]:
    """Append each run to ``out_dir/<family>.csv`` unless its run_id is there already; rows per family."""
    added: dict[str, int] = {}
    for run in runs:
        path = out_dir / f"{run.family}.csv"
        if path.is_file() and any(r["run_id"] == run.run_id for r in read_rows(path)):
            print(f"skipped {run.run_id}: already in {path.name}")
            continue
        w = ResultsWriter(run.family, path, run_id=run.run_id, machine_desc=run.machine, commit_id=run.commit,
                          date=run.date)
        for metric, value, unit, cfg in run.rows:
            w.add(metric, value, unit, **cfg)
        w.write()
        added[run.family] = added.get(run.family, 0) + len(run.rows)
    return added


# ------------------------------------------------------------------ rows written before tables were labelled

def relabel_table_batch(path: Path, table: str = "runs") -> int:
    """Rows that throughput.py wrote before results_csv took a table's integers as labels: there a
    ``runs.batch`` row came first in each item of the ``runs`` table, and the item's other rows had
    no batch in their config. Move that batch into the config of the item's rows (the rows after it,
    up to the next ``runs.batch`` row of the run) and drop the row: the same number, now a setting.
    Rewrites ``path``; returns how many rows gained a batch."""
    rows = read_rows(path)
    out, batch, moved = [], {}, 0
    for r in rows:
        if r["metric"] == f"{table}.batch":
            batch[r["run_id"]] = int(r["value"])
            continue
        if r["metric"].startswith(f"{table}.") and r["run_id"] in batch and "batch" not in r["config"]:
            r = {**r, "config": {**r["config"], "batch": batch[r["run_id"]]}}
            moved += 1
        out.append(r)
    if moved or len(out) != len(rows):
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
            w.writeheader()
            for r in out:
                w.writerow({**r, "config": config_text(r["config"]), "value": repr(float(r["value"]))})
    return moved


# ------------------------------------------------------------------ the check: nothing left behind

def _numbers(x: Any) -> list[float]:
    if isinstance(x, bool) or x is None:
        return []
    if isinstance(x, (int, float)):
        return [float(x)] if math.isfinite(x) else []
    if isinstance(x, dict):
        return [n for v in x.values() for n in _numbers(v)]
    if isinstance(x, list):
        return [n for v in x for n in _numbers(v)]
    return []


NUMBER_TEXT = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])")


def _printed(text: str) -> list[str]:
    """Numbers as printed in a CSV or markdown file (not inside words such as wide_resnet50_2)."""
    return NUMBER_TEXT.findall(text)


def _found_printed(t: str, pool: set[float]) -> bool:
    v = float(t)
    if v in pool:
        return True
    if "e" in t.lower():  # 1.3e-07: same digits after rounding to the mantissa's precision
        mant = t.lower().split("e")[0]
        digits = len(mant.split(".")[1]) if "." in mant else 0
        return any(w != 0 and f"{w:.{digits}e}" == f"{v:.{digits}e}" for w in pool)
    d = len(t.split(".")[1]) if "." in t else 0
    return any(round(w, d) == v for w in pool)


def check(src: Path, out_dir: Path) -> list[str]:
    """Every number of every legacy file, looked up among its run's rows; returns what was not found."""
    rows_by_run: dict[str, list[dict]] = {}
    for p in sorted(out_dir.glob("*.csv")):
        if not _is_long_format(p):
            continue
        for r in read_rows(p):
            rows_by_run.setdefault(r["run_id"], []).append(r)

    def pool(run_id: str) -> set[float]:
        rows = rows_by_run.get(run_id, [])
        vals = {r["value"] for r in rows}
        vals |= {n for r in rows for n in _numbers(r["config"])}
        vals |= {float(m) for r in rows[:1] for m in re.findall(r" x(\d+)\b", r["machine"])}  # "AMD EPYC x2"
        return vals

    missing = []
    for path, _ in legacy_files(src):
        rid = run_id_of(path, src)
        have = pool(rid)
        if not have:
            missing.append(f"{rid}: no rows")
            continue
        if path.suffix == ".json":
            lost = [n for n in _numbers(json.loads(path.read_text())) if n not in have]
        else:
            lost = [t for t in _printed(path.read_text()) if not _found_printed(t, have)]
        missing += [f"{rid}: {n!r} not in the rows" for n in lost]
    for pattern, base_suffix in VIEWS:
        for path in sorted(src.glob(pattern)):
            rid = run_id_of(path.with_suffix(base_suffix), src)
            have = pool(rid)
            text = "\n".join(line for line in path.read_text().splitlines() if not line.startswith("Command:"))
            lost = [t for t in _printed(text) if not _found_printed(t, have)]
            missing += [f"{path.relative_to(src).as_posix()} (view of {rid}): {t} not in the rows" for t in lost]
    return missing


def _is_long_format(path: Path) -> bool:
    if path.suffix != ".csv":
        return False
    with open(path, newline="", encoding="utf-8") as f:
        return tuple(next(csv.reader(f), ())) == COLUMNS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", default=str(RESULTS_DIR), help="folder of the legacy files")
    ap.add_argument("--out-dir", default=str(RESULTS_DIR), help="folder of the family CSVs")
    ap.add_argument("--check", action="store_true", help="only check that every number is in the rows")
    ap.add_argument("--dry-run", action="store_true", help="convert and count, write nothing")
    ap.add_argument("--relabel-batch", metavar="CSV", help="only move the runs.batch rows of a throughput CSV "
                    "written before table integers became labels into their rows' config (relabel_table_batch)")
    a = ap.parse_args(argv)
    src, out = Path(a.src), Path(a.out_dir)
    if a.relabel_batch:
        print(f"{relabel_table_batch(Path(a.relabel_batch))} rows of {a.relabel_batch} gained their batch")
        return 0
    if a.check:
        missing = check(src, out)
        n = len(legacy_files(src))
        for m in missing:
            print(m)
        print(f"{n} files checked: {'every number found' if not missing else f'{len(missing)} numbers missing'}")
        return 1 if missing or not n else 0
    runs = convert(src)
    known = {p for p, _ in legacy_files(src)} | {p for pat, _ in VIEWS for p in src.glob(pat)}
    for p in sorted(src.rglob("*")):
        if p.is_file() and p not in known and p.suffix in (".json", ".csv", ".md") and not _is_long_format(p):
            print(f"not converted (no kind matches): {p.relative_to(src).as_posix()}")
    for r in runs:
        print(f"{r.run_id} -> {r.family}: {len(r.rows)} rows ({r.date}, {r.machine}, commit {r.commit})")
    if a.dry_run:
        return 0
    added = write(runs, out)
    print("rows added: " + (", ".join(f"{k} {v}" for k, v in sorted(added.items())) or "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
