"""README.md's examples run (issue 11: a README that does not run fails CI).

Every fenced ```bash and ```python block of README.md is read at test time and run:

- Python blocks run in README order as one session (one process, shared names, so a later block
  may continue an earlier one), in a fresh temporary folder.
- Each bash block runs on its own (``bash -euo pipefail``) in a fresh temporary folder, with this
  interpreter's ``bin`` first on PATH so ``cdd-engine`` and ``python`` are the ones under test.
- Blocks that match a rule of SKIP are not run; the rule says why. Nothing else is skipped: a
  new example in README is run by this test without any change here.

README's examples are written to be quick (the demo data generator, ``--quick``, 64² and two
epochs); ```text blocks (usage synopses) are not examples and are not run.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
TIMEOUT_S = 900

# (why a block is not run, how to recognise it)
SKIP = [
    ("installs packages: .ci/run runs the quick start's install and test commands itself, in a fresh "
     "virtual environment",
     lambda code: re.search(r"^\s*pip install\b", code, re.MULTILINE) is not None),
    ("needs an NVIDIA GPU",
     lambda code: re.search(r"""device\s*=\s*["']cuda|--device cuda""", code) is not None),
]


def blocks(lang: str) -> list[tuple[int, str]]:
    """(line number, code) of every ```lang block of README.md, in order."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(2)) for m in FENCE.finditer(text) if m.group(1) == lang]


def skip_reason(code: str) -> str | None:
    return next((why for why, match in SKIP if match(code)), None)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, (f"{what} failed (exit {proc.returncode}):\n--- stdout\n{proc.stdout[-3000:]}"
                                  f"\n--- stderr\n{proc.stderr[-5000:]}")


def test_readme_has_examples_and_every_skip_has_a_reason():
    bash, python = blocks("bash"), blocks("python")
    runnable = [c for _, c in bash + python if skip_reason(c) is None]
    assert len([c for _, c in python if skip_reason(c) is None]) >= 2, "README's Python examples went missing"
    assert len([c for _, c in bash if skip_reason(c) is None]) >= 1, "README's CLI example went missing"
    skipped = [(line, skip_reason(c)) for line, c in bash + python if skip_reason(c) is not None]
    # today: the quick start (install + demo, tests) and the GPU install; a new skip is a conscious change
    assert len(skipped) <= 2, f"more README blocks skipped than expected: {skipped}"
    assert runnable


@pytest.mark.slow
@pytest.mark.parametrize("line, code", [pytest.param(line, code, id=f"line{line}") for line, code in blocks("bash")])
def test_bash_block(line, code, tmp_path):
    why = skip_reason(code)
    if why:
        pytest.skip(f"README.md line {line}: {why}")
    _run(["bash", "-euo", "pipefail", "-c", code], tmp_path, f"README.md bash block at line {line}")


@pytest.mark.slow
def test_python_blocks(tmp_path):
    parts = []
    for line, code in blocks("python"):
        why = skip_reason(code)
        parts.append(f"# --- README.md line {line}" + (f": skipped ({why})\n" if why else f"\n{code}\n"))
    script = tmp_path / "readme_session.py"
    script.write_text("".join(parts), encoding="utf-8")
    _run([sys.executable, str(script)], tmp_path, "README.md's Python blocks (line numbers in the script's comments)")
