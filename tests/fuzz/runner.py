"""The parent side: workers in subprocesses, a crash, hang or memory blow-up pinned on its case, and
the failure table."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .fixtures import TESTS

CASE_TIMEOUT_S = 20.0      # one case, all its readers, on a loaded 2-core machine (normal: < 5 s)
SPECIAL_TIMEOUT_S = 8.0    # cases that may block on a FIFO
RSS_LIMIT_BYTES = 2 << 30  # a worker above this is killed: a read of /dev/zero, an unchecked allocation
#                            (a worker holding torch, OpenVINO and the fixture engines uses ~0.7 GiB)


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _last_error(path: Path) -> str:
    """The last stderr line of a dead worker that is not a warning (a fatal error message)."""
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines()
                 if ln.strip() and "Warning" not in ln and not ln.startswith(" ")]
    except OSError:
        return ""
    return f" ({lines[-1][:160]})" if lines else ""


def run_campaign(fx: dict, cases: list[dict], workers: int = 2, budget_s: float = 600.0,
                 log: Callable[[str], None] | None = None) -> dict:
    """Run ``cases`` in ``workers`` subprocesses. -> {"results": {id: fails}, "wall_s", ...}.

    A worker that dies or hangs is replaced; the case (and reader) it was running is reported
    as a crash / hang / memory failure and the rest of its cases go to the replacement."""
    import selectors
    import subprocess

    fx_path = Path(fx["root"]) / "fixtures.json"
    fx_path.write_text(json.dumps(fx))
    t0 = time.monotonic()
    queues = [[c for i, c in enumerate(cases) if i % workers == k] for k in range(workers)]
    results: dict[str, list] = {}
    times: dict[str, float] = {}
    outcomes: dict[str, list] = {}
    timeouts = {c["id"]: SPECIAL_TIMEOUT_S if "fifo" in c["id"] else CASE_TIMEOUT_S for c in cases}
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    restarts = 0

    class Slot:
        def __init__(self, queue: list[dict]) -> None:
            self.queue = list(queue)
            self.proc: Any = None
            self.current: str | None = None
            self.reader = ""
            self.started = 0.0
            self.buf = b""
            self.err_path = Path()

    def start(slot: Slot) -> None:
        slot.err_path = Path(fx["root"]) / f"worker_{id(slot)}_{restarts}.err"
        with open(slot.err_path, "wb") as err:
            slot.proc = subprocess.Popen([sys.executable, "-m", "fuzz.worker", str(fx_path)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                         env=env, cwd=str(TESTS))
        slot.buf = b""
        slot.current = "<startup>"
        slot.started = time.monotonic()
        os.set_blocking(slot.proc.stdout.fileno(), False)

    def feed(slot: Slot) -> None:
        if slot.queue:
            c = slot.queue.pop(0)
            slot.current, slot.reader, slot.started = c["id"], "", time.monotonic()
            slot.proc.stdin.write((c["id"] + "\n").encode())
            slot.proc.stdin.flush()
        else:
            slot.current = None
            slot.proc.stdin.close()

    slots = [Slot(q) for q in queues if q]
    for s in slots:
        start(s)
    sel = selectors.DefaultSelector()
    for s in slots:
        sel.register(s.proc.stdout, selectors.EVENT_READ, s)
    active = len(slots)
    while active:
        for key, _ in sel.select(timeout=0.05):
            slot: Slot = key.data
            try:
                chunk = slot.proc.stdout.read()
            except (BlockingIOError, ValueError):
                chunk = None
            if chunk:
                slot.buf += chunk
            elif chunk == b"":  # EOF: the worker ended
                sel.unregister(slot.proc.stdout)
                slot.proc.wait()
                if slot.current == "<startup>":  # it cannot even start: no point in retrying
                    why = (f"worker failed to start (exit status {slot.proc.returncode})"
                           + _last_error(slot.err_path))
                    for c in slot.queue:
                        results[c["id"]] = [("worker", why)]
                    slot.queue = []
                    active -= 1
                    continue
                if slot.current is not None:
                    results[slot.current] = [(slot.reader or "worker",
                                              f"CRASH: worker died with exit status {slot.proc.returncode}"
                                              + _last_error(slot.err_path))]
                    restarts += 1
                    if slot.queue and time.monotonic() - t0 < budget_s:
                        start(slot)
                        sel.register(slot.proc.stdout, selectors.EVENT_READ, slot)
                        continue
                active -= 1
                continue
            while b"\n" in slot.buf:
                line, slot.buf = slot.buf.split(b"\n", 1)
                text = line.decode("utf-8", "replace")
                if text == "READY":
                    feed(slot)
                elif text.startswith("START "):
                    slot.reader = text.split(" ", 2)[2]
                elif text.startswith("RESULT "):
                    out = json.loads(text[7:])
                    results[out["id"]] = [tuple(f) for f in out["fails"]]
                    times[out["id"]] = out["t"]
                    outcomes[out["id"]] = out.get("outcomes", [])
                    if log:
                        log(f"{len(results)}/{len(cases)} {out['id']}")
                    if time.monotonic() - t0 > budget_s:
                        slot.queue = []
                    feed(slot)
        now = time.monotonic()
        for slot in slots:
            p = slot.proc
            if slot.current is None or p.poll() is not None:
                continue
            limit = 300.0 if slot.current == "<startup>" else timeouts.get(slot.current, CASE_TIMEOUT_S)
            over = now - slot.started > limit
            rss = _rss(p.pid)
            if over or rss > RSS_LIMIT_BYTES:
                p.kill()
                p.wait()
                what = (f"HANG: no result after {now - slot.started:.0f} s" if over else
                        f"MEMORY: worker RSS {rss >> 20} MiB > {RSS_LIMIT_BYTES >> 20} MiB")
                if slot.current != "<startup>":
                    results[slot.current] = [(slot.reader or "worker", what)]
                slot.current = "<killed>"  # EOF handling restarts it
                results.pop("<killed>", None)
    results.pop("<killed>", None)
    results.pop("<startup>", None)
    return {"results": results, "wall_s": time.monotonic() - t0, "restarts": restarts, "times": times,
            "outcomes": outcomes}


def table(rows: list[tuple[str, str, str]]) -> str:
    """case | reader | outcome, as aligned text."""
    if not rows:
        return "(none)"
    w0 = max(len("case"), *(len(r[0]) for r in rows))
    w1 = max(len("reader"), *(len(r[1]) for r in rows))
    lines = [f"{'case':<{w0}}  {'reader':<{w1}}  outcome", f"{'-' * w0}  {'-' * w1}  -------"]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    return "\n".join(lines)

