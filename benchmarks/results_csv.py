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
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import platform
import secrets
import subprocess
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
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
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


def rows_from_dict(result: Mapping[str, Any], prefix: str = "", unit: str = "", context: Mapping[str, Any] | None = None,
                   ) -> list[tuple[str, float, str, dict[str, Any]]]:
    """(metric, value, unit, extra config) for every finite number in a nested result dict.

    Nested keys are joined with '.' (``{"latency": {"p50_ms": 3}}`` -> ``latency.p50_ms``) and a
    key without a unit of its own takes its parent's (``{"images_per_s": {"native": 40}}`` ->
    img/s). A list of dicts is a table: in each item the strings and booleans describe the row
    (they join its config: ``{"case": "odd b1", "mode": "add", "passed": true}``) and the numbers
    are its metrics. Other lists (raw timings), strings and booleans are not measurements.
    """
    out = []
    ctx = dict(context or {})
    for k, v in result.items():
        name = f"{prefix}{k}"
        own = unit_of(str(k)) or unit
        if isinstance(v, Mapping):
            out += rows_from_dict(v, name + ".", own, ctx)
        elif isinstance(v, list) and v and all(isinstance(x, Mapping) for x in v):
            for item in v:
                labels = {kk: vv for kk, vv in item.items() if isinstance(vv, (str, bool))}
                out += rows_from_dict({kk: vv for kk, vv in item.items() if kk not in labels}, name + ".", own,
                                      {**ctx, **labels})
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.append((name, float(v), own, ctx))
    return out


class ResultsWriter:
    """Collects the rows of one run of one benchmark family and appends them to its CSV."""

    def __init__(self, benchmark: str, path: str | os.PathLike | None = None, *, run_id: str | None = None,
                 machine_desc: str | None = None, commit_id: str | None = None) -> None:
        if not benchmark or any(c in benchmark for c in "/\\ "):
            raise ValueError(f"benchmark must be a plain name (it is the file name), got {benchmark!r}")
        self.benchmark = benchmark
        self.path = Path(path) if path is not None else RESULTS_DIR / f"{benchmark}.csv"
        now = _dt.datetime.now(_dt.timezone.utc)
        self.run_id = run_id or new_run_id(now)
        self.date = now.strftime("%Y-%m-%dT%H:%M:%SZ")
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

    def add_dict(self, result: Mapping[str, Any], prefix: str = "", **config: Any) -> int:
        """Every finite number of a nested result dict (:func:`rows_from_dict`); returns how many."""
        rows = rows_from_dict(result, prefix)
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
