"""One worker process: runs cases (mutate a scratch copy, call the readers, judge) and reports each
result on stdout. ``python -m fuzz.worker FIXTURES_JSON`` from tests/."""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .cases import MEANING_KEPT, SEED, all_cases
from .contract import classify_manifest
from .fixtures import fixture_manifests
from .frames import make_frames
from .judge import TOL, describe_diff, judge, judge_result, same_result, short
from .mutations import (
    apply_model_mutation,
    apply_run_mutation,
    link_or_copy,
    mutate_manifest_bytes,
    put_special,
    replace_file,
    scratch_copy,
    snapshot,
)

# Accepted refusals (docs/engine_format.md: bad input is a clear error of the engine's own type):
# - loading an engine directory (Python runtime): EngineError and subclasses (EngineFormatError,
#   BackendUnavailable, NonFiniteOutputError at score time) - the contract names EngineFormatError;
# - the C++ reader through the module: ValueError (InvalidArgument/EngineFormat), FileNotFoundError
#   (NotFound), RuntimeError (Unsupported/Backend) and NonFiniteOutputError, i.e. the translations of
#   cdd::Error codes (a pybind11-translated std::exception is indistinguishable from Backend);
# - frames / call arguments: TypeError or ValueError (runtime/frames.py's documented errors);
# - building from a run directory: CheckpointError, EngineError, ValueError, TypeError.
# Never accepted anywhere: RecursionError, MemoryError, UnicodeError, json.JSONDecodeError,
# KeyError, IndexError, AttributeError, OverflowError, ZeroDivisionError, and an empty message.
NEVER = (RecursionError, MemoryError, UnicodeError, json.JSONDecodeError, KeyError, IndexError,
         AttributeError, ArithmeticError, NotImplementedError, AssertionError)


def accepted(reader: str, e: BaseException) -> bool:
    from cdd_engine.checkpoint import CheckpointError
    from cdd_engine.runtime import EngineError

    if isinstance(e, NEVER) or not str(e).strip():
        return False
    if reader.startswith("frames"):
        return isinstance(e, (TypeError, ValueError)) or type(e).__name__ == "NonFiniteOutputError"
    if reader == "native":
        return type(e) in (ValueError, FileNotFoundError, RuntimeError) or isinstance(e, EngineError)
    if reader == "build":
        return isinstance(e, (CheckpointError, EngineError, ValueError, TypeError))
    return isinstance(e, EngineError)


def _fmt_err(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:160]}"


class Worker:
    """Runs cases in this process; the parent isolates crashes and hangs."""

    def __init__(self, fx: dict) -> None:
        import numpy as np
        import torch

        torch.set_num_threads(1)
        self.np, self.torch = np, torch
        self.fx = fx
        import cdd_engine
        self.cdd = cdd_engine
        try:
            from cdd_engine import native
            self.native_mod = native.load()
        except ImportError:
            self.native_mod = None
        self.scratch = Path(tempfile.mkdtemp(prefix="fuzz_", dir=fx["root"]))
        self.manifests = fixture_manifests(fx)
        self.frames = np.random.default_rng(SEED).integers(0, 256, (2, 41, 53, 3), dtype=np.uint8)
        # engine cases score one frame: one compiled network per load (batch 1) is the main cost
        self.frame1 = np.ascontiguousarray(self.frames[:1])
        self.base: dict[str, Any] = {}
        self.engines: dict[str, Any] = {}
        self.n = 0
        self.outcomes: list = []

    # ---- readers: -> ("ok", scores, maps, is_anomalous, threshold) or ("error", exc)
    def read_python(self, d: Path, images: Any = None, **kw: Any) -> tuple:
        e = self.cdd.load(d, runtime="python", num_threads=1)
        r = e.score(self.frame1 if images is None else images, **kw)
        return r.scores, r.maps, r.is_anomalous, r.threshold

    def read_native(self, d: Path, images: Any = None) -> tuple:
        # dynamic shapes: one compile per load (static ones compile again at the first score)
        e = self.native_mod.Engine(str(d), num_threads=1, verify_hashes=True, static_shapes=False)
        s, m, a, t = e.score(self.frame1 if images is None else images, "RGB", True, "model")
        return s, m, a, t

    def call(self, cid: str, reader: str, fn: Callable[[], tuple]) -> dict:
        print(f"START {cid} {reader}", flush=True)
        try:
            s, m, a, t = fn()
        except Exception as e:  # noqa: BLE001 - judged by accepted()
            self.outcomes.append((reader, _fmt_err(e)))
            return {"reader": reader, "ok": False, "accepted": accepted(reader, e), "err": _fmt_err(e),
                    "nonfinite": type(e).__name__ == "NonFiniteOutputError"}
        np = self.np
        s = np.asarray(s, dtype=np.float64)
        self.outcomes.append((reader, f"ok {short(s)}"))
        maps = None if m is None else (np.stack([np.asarray(x, np.float64) for x in m]) if isinstance(m, list)
                                       and len({np.shape(x) for x in m}) == 1 else m)
        return {"reader": reader, "ok": True, "scores": s, "maps": maps, "isan": np.asarray(a, bool),
                "thr": float(t)}

    def baseline(self, target: str) -> dict:
        if target not in self.base:
            reader = {"ov": ["python", "native"], "torch": ["python"]}[target]
            out = {}
            for r in reader:
                if r == "native" and self.native_mod is None:
                    continue
                res = self.call(f"baseline/{target}", r, lambda r=r: (self.read_python if r == "python" else
                                                                      self.read_native)(Path(self.fx[target])))
                if not res["ok"]:
                    raise RuntimeError(f"baseline {target}/{r} failed: {res['err']}")
                out[r] = res
            self.base[target] = out
        return self.base[target]

    def fresh(self, name: str) -> Path:
        self.n += 1
        return self.scratch / f"{self.n:05d}_{name}"

    # ---- case kinds
    def run(self, case: dict) -> dict:
        kind = case["kind"]
        self.outcomes: list = []
        try:
            if kind in ("manifest", "model"):
                fails = self.run_engine_case(case)
            elif kind == "run":
                fails = self.run_run_case(case)
            else:
                fails = self.run_frames_case(case)
        finally:
            for p in list(self.scratch.iterdir()):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink()
        return {"id": case["id"], "fails": fails, "outcomes": self.outcomes}

    def run_engine_case(self, case: dict) -> list:
        target = case["target"]
        base = self.baseline(target)
        src = Path(self.fx[target])
        d = scratch_copy(src, self.fresh("engine"))
        original = self.manifests[target]
        if case["kind"] == "manifest":
            data = mutate_manifest_bytes(case, original)
            if case["op"] == "file":
                how = case["args"]["how"]
                keep = d / "engine.json.orig"
                link_or_copy(d / "engine.json", keep)
                put_special(d / "engine.json", how, good=keep)
                keep.unlink()
                if how == "symlink_ok":
                    expect = {"refuse": False, "mode": "same", "why": "symlink to a regular file"}
                else:
                    expect = {"refuse": True, "mode": "same", "why": f"engine.json is {how}"}
            else:
                replace_file(d / "engine.json", data)
                expect = classify_manifest(data, original)
                if case["op"] == "text" and case["args"]["how"] in MEANING_KEPT:
                    expect["must_accept"] = True
        else:
            expect = apply_model_mutation(case, d, self.fx)
        results = [self.call(case["id"], "python", lambda: self.read_python(d))]
        if target == "ov" and self.native_mod is not None:
            results.append(self.call(case["id"], "native", lambda: self.read_native(d)))
        return judge(case, expect, results, base, agree=case["kind"] == "manifest")

    def run_run_case(self, case: dict) -> list:
        base = self.baseline("torch")["python"]
        run = scratch_copy(Path(self.fx["run"]), self.fresh("run"))
        out = scratch_copy(Path(self.fx["torch"]), self.fresh("engine"))
        apply_run_mutation(case, run)
        before = snapshot(out)
        expect = case["expect"]

        def build() -> tuple:
            self.cdd.build(run, backend="torch", max_batch=4, output_dir=out, runtime="python")
            return self.read_python(out)

        res = self.call(case["id"], "build", build)
        fails = []
        if res["ok"]:
            fails += judge_result(res, base, {"refuse": expect == "refuse", "mode": {
                "same": "same", "either": "same", "valid": "finite", "refuse": "same",
                "refuse_or_nonfinite": "nonfinite"}[expect], "why": expect})
        elif not res["accepted"]:
            fails.append(("build", f"raw error {res['err']}"))
        elif expect == "same":
            fails.append(("build", f"refused a valid run: {res['err']}"))
        if not res["ok"] and snapshot(out) != before:  # the engine in output_dir must be untouched
            old = self.call(case["id"], "old-engine", lambda: self.read_python(out))
            if not old["ok"] or not same_result(old, base):
                how = f"no longer loads ({old['err']})" if not old["ok"] else "gives other scores"
                fails.append(("build", f"LOST ENGINE: after the failed build the existing engine {how}"))
        return fails

    def engine_for(self, target: str) -> Any:
        if target not in self.engines:
            if target == "py-torch":
                e = self.cdd.load(self.fx["torch"], runtime="python", num_threads=1)
            elif target == "py-ov":
                e = self.cdd.load(self.fx["ov"], runtime="python", num_threads=1)
            elif target == "native":
                e = self.cdd.load(self.fx["ov"], runtime="native", num_threads=1)
            else:
                e = self.native_mod.Engine(self.fx["ov"], num_threads=1, verify_hashes=True)
            self.engines[target] = e
        return self.engines[target]

    def score_frames(self, target: str, images: Any, **kw: Any) -> tuple:
        e = self.engine_for(target)
        if target == "raw":
            s, m, a, t = e.score(images, kw.get("pixel_format", "RGB"), kw.get("return_maps", True),
                                 kw.get("map_size", "model"))
            return s, m, a, t
        r = e.score(images, **kw)
        return r.scores, r.maps, r.is_anomalous, r.threshold

    def run_frames_case(self, case: dict) -> list:
        target = case["target"]
        if target in ("native", "raw") and self.native_mod is None:
            return []
        reader = f"frames-{target}"
        images, canon, kw = make_frames(case["op"], self.frames)
        key = "frames-" + target
        if key not in self.base:  # the canonical frames' result on this engine, once per worker
            self.base[key] = self.call(case["id"], reader + "-ref",
                                       lambda: self.score_frames(target, self.frames))
        good = self.base[key]
        ref = good if canon is self.frames and kw.get("pixel_format") != "MONO" else None
        if canon is not None and ref is None:
            ref = self.call(case["id"], reader + "-canon", lambda: self.score_frames(
                target, canon, **{k: v for k, v in kw.items() if k == "pixel_format" and v == "MONO"}))
        res = self.call(case["id"], reader, lambda: self.score_frames(target, images, **kw))
        fails = []
        expect = case["expect"]
        if res["ok"]:
            if expect == "refuse":
                fails.append((reader, f"ACCEPTED invalid frames (scores {short(res['scores'])})"))
            elif not bool(self.np.isfinite(res["scores"]).all()):
                fails.append((reader, f"non-finite scores given as a verdict {short(res['scores'])}"))
            elif ref is not None and expect in ("same", "either") and ref["ok"]:
                tol = 0.0 if expect == "same" else TOL
                if kw.get("return_maps") is False:
                    res = dict(res, maps=ref["maps"])
                if kw.get("map_size") != "input" and not same_result(res, ref, tol):
                    fails.append((reader, f"SILENT CHANGE: {describe_diff(res, ref)}"))
        elif not res["accepted"]:
            fails.append((reader, f"raw error {res['err']}"))
        elif expect == "same":
            fails.append((reader, f"refused valid frames: {res['err']}"))
        # a bad call must not spoil the next valid one (per-thread buffers, engine state)
        after = self.call(case["id"], reader + "-after", lambda: self.score_frames(target, self.frames))
        if not after["ok"] or (good["ok"] and not same_result(after, good)):
            fails.append((reader, "POISONED: a valid call after this one " +
                          (f"fails ({after['err']})" if not after["ok"] else "gives other scores")))
        return fails



def worker_main(fx_path: str) -> None:
    fx = json.loads(Path(fx_path).read_text())
    w = Worker(fx)
    by_id = {c["id"]: c for c in all_cases()}
    print("READY", flush=True)
    for line in sys.stdin:
        cid = line.strip()
        if not cid:
            continue
        case = by_id[cid]
        t0 = time.monotonic()
        try:
            out = w.run(case)
        except Exception as e:  # noqa: BLE001 - a bug in the harness itself is reported, not hidden
            out = {"id": cid, "fails": [("harness", f"harness error {_fmt_err(e)}")]}
        out["t"] = round(time.monotonic() - t0, 3)
        print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    worker_main(sys.argv[1])
