"""Run the example program on the demo frames and compare its JSON lines with the Python
reference scores (docs/anomaly_map.md: 1e-5 relative).

    python check_example.py CDD_INSPECT ENGINE_DIR FRAMES_DIR [--batch N] [--rtol R]

For the INT8 engine (make_test_engine.py --int8) the reference is the Python runtime's INT8
scores and ``--rtol 1e-4`` (tests/test_int8.py: NATIVE_INT8_RTOL).

Exit status 0 when every frame's score, threshold and verdict match; prints the worst error.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

RTOL = 1e-5


def run(program: str, engine: str, frames: str, batch: int = 4) -> list[dict]:
    ref = json.loads((Path(frames) / "reference.json").read_text())
    files = [str(Path(frames) / f) for f in ref["files"]]
    proc = subprocess.run([program, "--engine", engine, "--batch", str(batch), "--threads", "2", *files],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"{program} exited with {proc.returncode}: {proc.stderr.strip()}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def compare(lines: list[dict], frames: str, rtol: float = RTOL) -> float:
    """Worst relative score error; raises AssertionError on any mismatch."""
    ref = json.loads((Path(frames) / "reference.json").read_text())
    assert len(lines) == len(ref["files"]), f"{len(lines)} JSON lines for {len(ref['files'])} frames"
    worst = 0.0
    for line, name, want in zip(lines, ref["files"], ref["scores"]):
        assert "error" not in line, line
        assert Path(line["image"]).name == name, (line["image"], name)
        err = abs(line["score"] - want) / abs(want)
        worst = max(worst, err)
        assert err <= rtol, f"{name}: score {line['score']} vs reference {want} (rel. err {err:.2e})"
        assert abs(line["threshold"] - ref["threshold"]) <= 1e-6 * abs(ref["threshold"])
        if abs(want - ref["threshold"]) > rtol * abs(want):  # verdicts on the threshold itself may flip
            assert line["is_anomalous"] == (want > ref["threshold"]), line
    return worst


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("program")
    ap.add_argument("engine")
    ap.add_argument("frames")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rtol", type=float, default=RTOL)
    a = ap.parse_args()
    worst = compare(run(a.program, a.engine, a.frames, a.batch), a.frames, a.rtol)
    print(f"example matches the Python reference: worst relative score error {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
