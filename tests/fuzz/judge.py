"""Is a reader's outcome allowed by the case's expectation?"""
from __future__ import annotations

import math
from typing import Any

TOL = 1e-5  # documented fp32 tolerance between readers (relative)


def short(s: Any) -> str:
    return "[" + ", ".join(f"{float(x):.4g}" for x in list(s)[:3]) + "]"


def _rel(a: Any, b: Any) -> float:
    import numpy as np
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    with np.errstate(invalid="ignore"):
        d = float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-30))
    return d if d == d else math.inf


def same_result(r: dict, ref: dict, tol: float = 0.0) -> bool:
    if _rel(r["scores"], ref["scores"]) > tol:
        return False
    if (r.get("maps") is None) != (ref.get("maps") is None):
        return False
    return r.get("maps") is None or _rel(r["maps"], ref["maps"]) <= tol


def describe_diff(r: dict, ref: dict) -> str:
    return (f"scores {short(r['scores'])} vs {short(ref['scores'])} "
            f"(max rel {_rel(r['scores'], ref['scores']):.2g})")


def judge_result(res: dict, base: dict, expect: dict) -> list:
    """One reader that loaded and scored: is that allowed?"""
    import numpy as np
    reader = res["reader"]
    s = res["scores"]
    if not bool(np.isfinite(s).all()):
        return [(reader, f"NON-FINITE scores {short(s)} given as a verdict (is_anomalous "
                         f"{res['isan'].tolist()})")]
    if expect["refuse"]:
        changed = not same_result(res, base)
        what = "SILENT CHANGE: " + describe_diff(res, base) if changed else "ACCEPTED (same scores)"
        return [(reader, f"{what}; should refuse: {expect['why']}")]
    fails = []
    if not np.array_equal(res["isan"], s > res["thr"]):
        fails.append((reader, f"is_anomalous {res['isan'].tolist()} disagrees with scores > {res['thr']}"))
    if expect["mode"] == "same" and not same_result(res, base):
        fails.append((reader, f"SILENT CHANGE ({expect['why']}): {describe_diff(res, base)}"))
    if expect["mode"] == "nonfinite":
        fails.append((reader, f"finite scores {short(s)} from a model with a {expect['why']}"))
    return fails


def judge(case: dict, expect: dict, results: list, base: dict, agree: bool) -> list:
    fails = []
    for r in results:
        if r["ok"]:
            fails += judge_result(r, base[r["reader"]], expect)
        elif not r["accepted"]:
            fails.append((r["reader"], f"raw error {r['err']}"))
        elif expect.get("must_accept"):
            fails.append((r["reader"],
                          f"refused an unchanged-meaning manifest ({expect['why']}): {r['err']}"))
    if agree and len(results) == 2:
        a, b = results
        if a["ok"] != b["ok"]:
            said = [r["reader"] + (" accepts" if r["ok"] else f" refuses ({r['err'][:90]})") for r in results]
            fails.append(("both", "READERS DISAGREE: " + ", ".join(said)))
        elif a["ok"] and _rel(a["scores"], b["scores"]) > TOL:
            fails.append(("both", f"readers' scores differ: {short(a['scores'])} vs {short(b['scores'])}"))
    return fails
