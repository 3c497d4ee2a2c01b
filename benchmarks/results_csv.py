"""Benchmark results as data: one long-format CSV per benchmark family.

Every measurement is one row::

    run_id, date, commit, machine, benchmark, config, metric, value, unit

- ``run_id``: one id per script run (UTC time + random suffix), so the rows of one run group;
- ``date``: UTC ISO time of the run; ``commit``: ``git rev-parse --short HEAD`` of the checkout
  (``+dirty`` when it has uncommitted changes, ``unknown`` outside git);
- ``machine``: CPU model and core count, plus the GPU name when torch sees one;
- ``benchmark``: the family's name (also the file name: ``benchmarks/results/<benchmark>.csv``);
- ``config``: the settings of this measurement as compact JSON with sorted keys (batch, backend,
  threads, ...), so a reader filters rows by any key;
- ``metric`` / ``value`` / ``unit``: one number and its unit (``ms``, ``img/s``, ``x``, ...).

Rows are appended, so a file accumulates runs; :func:`read_rows` reads it back. RESULTS.md stays
the narrative and cites these files. Any script may use it (only the standard library is
imported)::

    from results_csv import ResultsWriter          # benchmarks/ on sys.path (scripts there have it)
    w = ResultsWriter("native")
    w.add("images_per_s", 41.2, "img/s", backend="native", batch=8, threads=2)
    w.add_dict({"p50_ms": 3.1, "p99_ms": 5.0}, batch=1)   # units from the names (UNIT_SUFFIXES)
    w.write()                                      # -> benchmarks/results/native.csv

Query from a shell (standard library only)::

    python benchmarks/results_csv.py families
    python benchmarks/results_csv.py show throughput --where backbone=wide_resnet50_2 --where batch=8 \
        --metric 'runs.results.*.images_per_s' [--run RUN_ID_OR_GLOB]
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import fnmatch
import json
import math
import os
import platform
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
COLUMNS = ("run_id", "date", "commit", "machine", "benchmark", "config", "metric", "value", "unit")
# metric-name endings, then parts, -> unit (add_dict and rows_from_dict use them when no unit is given)
UNIT_SUFFIXES = (("images_per_s", "img/s"), ("frames_per_s", "img/s"), ("gb_per_s", "GB/s"), ("_per_s", "1/s"),
                 ("_us", "us"), ("_ms", "ms"), ("_s", "s"), ("_mb", "MB"), ("_kib", "KiB"), ("speedup", "x"),
                 ("auroc", "1"), ("aupro", "1"), ("f1_max", "1"))
UNIT_PARTS = (("rel_diff", "1"), ("rel_err", "1"), ("seconds", "s"), ("_ms_", "ms"), ("_vs_", "x"))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine() -> str:
    """CPU model and cores; the oneDNN ISA cap when one is set; the GPU's name when torch sees one.

    ``ONEDNN_MAX_CPU_ISA=AVX2`` makes oneDNN (OpenVINO's CPU plugin and torch) dispatch as on a CPU
    without AVX-512/VNNI: how this project measures AVX2 figures on a newer CPU. Rows so taken
    must say so, or they read as the CPU's own figures.
    """
    desc = f"{cpu_name()} x{os.cpu_count()}"
    isa_cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    if isa_cap:
        desc += f" (oneDNN ISA capped: {isa_cap})"
    try:
        import torch
        if torch.cuda.is_available():
            desc += f"; {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return desc


def commit(root: Path = ROOT) -> str:
    """Short commit of the checkout, '+dirty' when tracked files changed, 'unknown' outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        # the results files themselves do not count: a run appending to them would mark the next one dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)benchmarks/results"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def new_run_id(now: _dt.datetime | None = None) -> str:
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def unit_of(metric: str) -> str:
    """The unit a metric name implies (UNIT_SUFFIXES), '' when none does."""
    name = metric.lower()
    for suffix, unit in UNIT_SUFFIXES:
        if name.endswith(suffix):
            return unit
    for part, unit in UNIT_PARTS:
        if part in name:
            return unit
    return ""


def config_text(config: Mapping[str, Any]) -> str:
    return json.dumps(dict(config), sort_keys=True, separators=(",", ":"), default=str)


def _load_names(name: str, v: Any) -> list[tuple[str, float]] | None:
    """A load average ([1, 5, 15 min]) or a pair of them ([start, end]) as named numbers, else None."""
    def triple(x):
        return isinstance(x, list) and len(x) == 3 and all(_is_number(y) for y in x)
    if "loadavg" not in name.rsplit(".", 1)[-1]:
        return None
    if triple(v):
        return [(f"{name}.{m}min", float(x)) for m, x in zip((1, 5, 15), v)]
    if isinstance(v, list) and len(v) == 2 and all(triple(x) for x in v):
        return [(f"{name}.{when}.{m}min", float(x)) for when, t in zip(("start", "end"), v) for m, x in zip((1, 5, 15), t)]
    return None


# ------------------------------------------------------------------ rows of one family, shared by its script
# and by import_legacy_results.py (which converted that family's older files the same way)
ENGINE_PATH = re.compile(r"^(Engine\()'[^']*',\s*")
CDD_CONFIG = ("category", "noise", "seed", "method", "epochs", "image_size", "n_train", "n_injected",
              "n_test_good", "n_test_anomalous")
CDD_RATIOS = ("f1_mad3", "f1_mad2", "f1_q_noise", "report_precision")  # unitless, like the AUROCs


def engine_text(engine_repr: str) -> str:
    """An Engine's repr without its directory (a temporary path of the machine that ran it): serving rows."""
    return ENGINE_PATH.sub(r"\1", engine_repr)


def cdd_accuracy_rows(row: Mapping[str, Any]) -> list[tuple[str, float, str, dict[str, Any]]]:
    """(metric, value, unit, config) of one cdd_accuracy.py result row."""
    cfg = {k: row[k] for k in CDD_CONFIG if k in row}
    if "noise" in cfg:
        cfg["noise"] = float(cfg["noise"])
    opts = row.get("options")
    if opts not in (None, ""):
        cfg["options"] = json.loads(opts) if isinstance(opts, str) else opts
    out = []
    for m, v, u, _ in rows_from_dict({k: v for k, v in row.items() if k not in CDD_CONFIG and k != "options"}):
        out.append((m, v, "1" if m in CDD_RATIOS else u, cfg))
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def rows_from_dict(result: Mapping[str, Any], prefix: str = "", unit: str = "", context: Mapping[str, Any] | None = None,
                   raw_lists: bool = False) -> list[tuple[str, float, str, dict[str, Any]]]:
    """(metric, value, unit, extra config) for every finite number in a nested result dict.

    Nested keys are joined with '.' (``{"latency": {"p50_ms": 3}}`` -> ``latency.p50_ms``) and a
    key without a unit of its own takes its parent's (``{"images_per_s": {"native": 40}}`` ->
    img/s). A list of dicts is a table: in each item the strings, booleans and integers describe
    the row (they join its config: ``{"case": "odd b1", "batch": 8, "passed": true}``; an integer
    is a setting such as a batch or a tile size, a measurement is a float) and the floats are its
    metrics. Other lists (raw timings), strings and booleans are not measurements, unless
    ``raw_lists``: then a list of numbers gives one row per item with its index as config ``i``
    (a list of such lists adds ``j``), and a load average (a key with ``loadavg`` in its name)
    gives ``<key>.1min/5min/15min`` (``<key>.start.1min`` ... for a [start, end] pair).
    """
    out = []
    ctx = dict(context or {})
    for k, v in result.items():
        name = f"{prefix}{k}"
        own = unit_of(str(k)) or unit
        if isinstance(v, Mapping):
            out += rows_from_dict(v, name + ".", own, ctx, raw_lists)
        elif isinstance(v, list) and v and all(isinstance(x, Mapping) for x in v):
            for item in v:
                labels = {kk: vv for kk, vv in item.items() if isinstance(vv, (str, bool, int))}
                out += rows_from_dict({kk: vv for kk, vv in item.items() if kk not in labels}, name + ".", own,
                                      {**ctx, **labels}, raw_lists)
        elif raw_lists and isinstance(v, list):
            loads = _load_names(name, v)
            if loads is not None:
                out += [(n, x, "", ctx) for n, x in loads]
                continue
            for i, x in enumerate(v):
                if _is_number(x) and math.isfinite(x):
                    out.append((name, float(x), own, {**ctx, "i": i}))
                elif isinstance(x, list):
                    out += [(name, float(y), own, {**ctx, "i": i, "j": j})
                            for j, y in enumerate(x) if _is_number(y) and math.isfinite(y)]
        elif _is_number(v) and math.isfinite(v):
            out.append((name, float(v), own, ctx))
    return out


class ResultsWriter:
    """Collects the rows of one run of one benchmark family and appends them to its CSV."""

    def __init__(self, benchmark: str, path: str | os.PathLike | None = None, *, run_id: str | None = None,
                 machine_desc: str | None = None, commit_id: str | None = None, date: str | None = None) -> None:
        if not benchmark or any(c in benchmark for c in "/\\ "):
            raise ValueError(f"benchmark must be a plain name (it is the file name), got {benchmark!r}")
        self.benchmark = benchmark
        self.path = Path(path) if path is not None else RESULTS_DIR / f"{benchmark}.csv"
        now = _dt.datetime.now(_dt.timezone.utc)
        self.run_id = run_id or new_run_id(now)
        self.date = date or now.strftime("%Y-%m-%dT%H:%M:%SZ")  # date: an older run's own (import_legacy_results.py)
        self.machine = machine_desc if machine_desc is not None else machine()
        self.commit = commit_id if commit_id is not None else commit()
        self.rows: list[dict[str, str]] = []

    def add(self, metric: str, value: float, unit: str | None = None, **config: Any) -> None:
        """One measurement; ``config`` are its settings (batch=8, backend="openvino", ...)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{metric}: value must be a number, got {value!r}")
        self.rows.append({"run_id": self.run_id, "date": self.date, "commit": self.commit,
                          "machine": self.machine, "benchmark": self.benchmark, "config": config_text(config),
                          "metric": metric, "value": repr(float(value)),
                          "unit": unit_of(metric) if unit is None else unit})

    def add_dict(self, result: Mapping[str, Any], prefix: str = "", *, raw_lists: bool = False, **config: Any) -> int:
        """Every finite number of a nested result dict (:func:`rows_from_dict`); returns how many."""
        rows = rows_from_dict(result, prefix, raw_lists=raw_lists)
        for metric, value, unit, extra in rows:
            self.add(metric, value, unit, **{**config, **extra})
        return len(rows)

    def write(self) -> Path:
        """Append the collected rows (header first when the file is new); returns the path."""
        return append_rows(self.path, self.rows)


def append_rows(path: str | os.PathLike, rows: Iterable[Mapping[str, str]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file() or path.stat().st_size == 0
    if not new:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), None)
        if tuple(header or ()) != COLUMNS:
            raise ValueError(f"{path} is not a long-format results file (header {header}, expected {list(COLUMNS)})")
    with open(path, "a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        if new:
            w.writeheader()
        for r in rows:
            w.writerow(r)
    return path


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a results file, ``value`` as float and ``config`` as a dict."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{path} is not a long-format results file (header {reader.fieldnames})")
        return [dict(r, value=float(r["value"]), config=json.loads(r["config"])) for r in reader]


# ---------------------------------------------------------------- query from a shell (standard library only)

def family_path(family: str, results_dir: str | os.PathLike = RESULTS_DIR) -> Path:
    """``results/<family>.csv``; a path to a CSV file is taken as it is."""
    if family.endswith(".csv") or os.sep in family or "/" in family:
        return Path(family)
    return Path(results_dir) / f"{family}.csv"


def _lookup(row: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    """A column (run_id, machine, ...) or a config key; dotted keys reach into nested config."""
    if key in COLUMNS and key != "config":
        return True, row[key]
    node: Any = row["config"]
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _matches(v: Any, want: str) -> bool:
    """Config values compare as written on the command line: 8, 0.4, true, openvino (or "openvino")."""
    texts = {str(v), json.dumps(v, default=str)}
    if _is_number(v):
        try:
            return float(want) == float(v)
        except ValueError:
            return False
    return want in texts or any(fnmatch.fnmatchcase(t, want) for t in texts)


def select(rows: Iterable[Mapping[str, Any]], where: Iterable[str] = (), metric: str | None = None,
           run: str | None = None) -> list[Mapping[str, Any]]:
    """Rows whose every ``key=value`` of ``where`` holds, whose metric and run_id match (globs allowed)."""
    conds = []
    for w in where:
        if "=" not in w:
            raise ValueError(f"--where wants key=value, got {w!r}")
        k, v = w.split("=", 1)
        conds.append((k.strip(), v.strip()))
    out = []
    for r in rows:
        if metric is not None and not fnmatch.fnmatchcase(r["metric"], metric):
            continue
        if run is not None and not fnmatch.fnmatchcase(r["run_id"], run):
            continue
        ok = True
        for k, v in conds:
            found, got = _lookup(r, k)
            if not found or not _matches(got, v):
                ok = False
                break
        if ok:
            out.append(r)
    return out


CELL_CHARS = 60  # a config cell longer than this (every CDD option) is cut: --where still sees all of it


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    text = v if isinstance(v, str) else json.dumps(v, separators=(",", ":"), default=str)
    return text if len(text) <= CELL_CHARS else text[:CELL_CHARS - 3] + "..."


def format_table(rows: list[Mapping[str, Any]]) -> str:
    """A plain-text table: run_id, date, the config keys that differ between rows, metric, value, unit.

    Settings shared by every shown row are printed once above the table instead of in each line.
    """
    if not rows:
        return "(no rows)\n"
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r["config"] if k not in keys]
    varying = [k for k in keys if len({json.dumps(r["config"].get(k, None), sort_keys=True, default=str)
                                      for r in rows}) > 1]
    common = {k: rows[0]["config"][k] for k in keys if k not in varying and k in rows[0]["config"]}
    head = ["run_id", "date", *varying, "metric", "value", "unit"]
    body = [[r["run_id"], r["date"], *(_cell(r["config"][k]) if k in r["config"] else "" for k in varying),
             r["metric"], _cell(r["value"]), r["unit"]] for r in rows]
    width = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = []
    machines = sorted({r["machine"] for r in rows})
    if common:
        lines.append("same in every row: " + ", ".join(f"{k}={_cell(v)}" for k, v in common.items()))
    lines.append("machine: " + " | ".join(machines))
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, width)))
    lines.append("  ".join("-" * w for w in width))
    for b in body:
        lines.append("  ".join(str(x).ljust(w) for x, w in zip(b, width)).rstrip())
    lines.append(f"({len(rows)} rows)")
    return "\n".join(lines) + "\n"


def families(results_dir: str | os.PathLike = RESULTS_DIR) -> list[dict[str, Any]]:
    """Every ``<family>.csv`` of the results folder: rows, runs, first and last date, metrics."""
    out = []
    for p in sorted(Path(results_dir).glob("*.csv")):
        with open(p, newline="", encoding="utf-8") as f:
            if tuple(next(csv.reader(f), ())) != COLUMNS:
                continue  # another kind of CSV (not a family)
        rows = read_rows(p)
        dates = sorted(r["date"] for r in rows if r["date"] != "unknown")
        out.append({"family": p.stem, "rows": len(rows), "runs": len({r["run_id"] for r in rows}),
                    "first": dates[0] if dates else "unknown", "last": dates[-1] if dates else "unknown",
                    "metrics": len({r["metric"] for r in rows})})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="results_csv.py", description="Query the long-format benchmark results.")
    ap.add_argument("--dir", default=str(RESULTS_DIR), help="results folder (default: benchmarks/results)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("families", help="list the families (one CSV each) with their row and run counts")
    sh = sub.add_parser("show", help="print the rows of one family as a table")
    sh.add_argument("family", help="family name (results/<family>.csv) or a path to a results CSV")
    sh.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                    help="keep rows whose config key (dotted for nested keys) or column equals VALUE "
                         "(numbers compare as numbers; globs allowed); repeatable")
    sh.add_argument("--metric", default=None, help="metric name or glob, e.g. 'runs.results.*.images_per_s'")
    sh.add_argument("--run", default=None, help="run_id or glob")
    sh.add_argument("--runs", action="store_true", help="list the matching runs (id, date, commit, rows) instead")
    a = ap.parse_args(argv)
    if a.cmd == "families":
        fams = families(a.dir)
        if not fams:
            print(f"no results CSVs in {a.dir}")
            return 1
        head = ("family", "rows", "runs", "first", "last", "metrics")
        body = [[str(f[h]) for h in head] for f in fams]
        width = [max(len(x) for x in col) for col in zip(head, *body)]
        for line in [head, ["-" * w for w in width], *body]:
            print("  ".join(x.ljust(w) for x, w in zip(line, width)).rstrip())
        return 0
    path = family_path(a.family, a.dir)
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(Path(a.dir).glob("*.csv")))
        print(f"no results file {path} (families: {known or 'none'})", file=sys.stderr)
        return 2
    try:
        rows = select(read_rows(path), a.where, a.metric, a.run)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.runs:
        runs: dict[str, list] = {}
        for r in rows:
            runs.setdefault(r["run_id"], []).append(r)
        for rid, rs in runs.items():
            print(f"{rid}  {rs[0]['date']}  {rs[0]['commit']}  {len(rs)} rows  {rs[0]['machine']}")
        return 0
    sys.stdout.write(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
