"""10,000 consecutive scoring calls through the Python module do not grow the process's
memory beyond its warm-up level (VmRSS from /proc/self/status). A tiny stand-in network
(~50 us per frame, csrc/tests/make_test_engine.py --micro) keeps this to seconds. The C++-only
variant of this check is the ctest ``memory`` (csrc/tests/test_memory.cpp)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from native_helpers import mte, native_or_skip

native = native_or_skip()

CALLS = 10_000
WARMUP = 500
# A leak of one 32x32 map per call would add 40 MB; allocator and numpy noise stay far below.
ALLOWED_GROWTH_KIB = 4096


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure() -> dict:
    """Warm up, then score CALLS times; RSS before and after (run in a fresh process)."""
    engine = native.Engine(mte.cached_engine(micro=True)["engine"], num_threads=2)
    rng = np.random.default_rng(8)
    frames = [rng.integers(0, 256, size=s, dtype=np.uint8) for s in [(48, 40, 3), (31, 33), (64, 64, 3)]]
    fmts = ["RGB", "MONO", "BGR"]
    sizes = ["model", "input"]

    def call(i: int) -> float:
        k = i % 3
        s, _, _, _ = engine.score([frames[k]], fmts[k], return_maps=i % 4 != 0, map_size=sizes[i % 2])
        return float(s[0])

    checksum = sum(call(i) for i in range(WARMUP))
    before = rss_kib()
    checksum += sum(call(i) for i in range(CALLS))
    return {"before": before, "after": rss_kib(), "checksum": checksum}


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_ten_thousand_calls_do_not_grow_memory():
    # A fresh process: inside the test session, threads and caches left by earlier tests
    # (torch, OpenVINO pools) move RSS by megabytes on their own and made this flaky.
    mte.cached_engine(micro=True)  # build the engine here, so the child only scores
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ)  # the child imports cdd_engine as this session does (installed or from the checkout)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    out = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=600, cwd=root, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    growth = r["after"] - r["before"]
    print(f"RSS warm {r['before']} KiB, after {CALLS} calls {r['after']} KiB, growth {growth} KiB")
    assert np.isfinite(r["checksum"])
    assert growth <= ALLOWED_GROWTH_KIB, f"RSS grew by {growth} KiB over {CALLS} calls"


if __name__ == "__main__":
    print(json.dumps(measure()))
