"""Ahead-of-time compilation of every Triton kernel for sm_90 and sm_80, with no GPU.

Runs ``python -m cdd_engine.kernels.aot`` in a subprocess (a process without TRITON_INTERPRET: the
interpreter tests set it in this one), one variant per Triton kernel function, and checks the
written cubin / PTX / header / manifest. Registers must be reported and spills must be zero:
every kernel had none when the tile sizes were chosen (Triton 3.9), and a change that
introduces spills should be looked at, not shipped silently.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]
# One variant of each @triton.jit kernel (the CLI's default builds all variants).
VARIANTS = ["cdd_cosine_partials_fp16_nchw_d16", "cdd_map_add", "cdd_row_max",
            "cdd_preprocess_u8_to_fp16", "cdd_preprocess_mma_u8_to_fp16"]


def _env():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    return env


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot")
    # the two architectures in parallel (2 cores)
    procs = [subprocess.Popen([sys.executable, "-m", "cdd_engine.kernels.aot", "--arch", arch, "--out", str(out),
                               "--only", *VARIANTS], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for arch in ("90", "80")]
    logs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stdout + stderr
        logs.append(stdout)
    print("".join(logs))  # registers / spills table, shown with pytest -s
    return out, "".join(logs)


@pytest.mark.parametrize("arch", [90, 80])
def test_every_kernel_compiles(built, arch):
    out, _ = built
    infos = json.loads((out / f"manifest.sm{arch}.json").read_text())
    assert sorted(i["name"] for i in infos) == sorted(VARIANTS)
    for info in infos:
        stem = f"{info['name']}.sm{arch}"
        cubin = (out / f"{stem}.cubin").read_bytes()
        assert cubin[:4] == b"\x7fELF", info["name"]
        ptx = (out / f"{stem}.ptx").read_text()
        assert f".target sm_{arch}" in ptx and f".entry {info['triton_name']}" in ptx
        assert info["arch"] == arch and info["threads"] == 32 * info["num_warps"]
        # launch contract: runtime arguments, then Triton's scratch pointers
        assert len(info["ptx_params"]) == len(info["args"]) + info["extra_scratch_params"]
        assert info["extra_scratch_params"] >= 0
        assert info["global_scratch_bytes"] == 0, f"{info['name']} needs global scratch"
        assert isinstance(info["n_regs"], int) and 0 < info["n_regs"] <= 255, info
        assert info["n_spills"] == 0, f"{info['name']} sm_{arch} spills: {info}"
        header = (out / f"{stem}.h").read_text()
        prefix = f"{info['name'].upper()}_SM{arch}"
        assert f'#define {prefix}_ENTRY "{info["triton_name"]}"' in header
        assert re.search(rf"#define {prefix}_SHARED_BYTES {info['shared_bytes']}\b", header)
        assert re.search(rf"#define {prefix}_NUM_PARAMS {len(info['ptx_params'])}\b", header)


def test_headers_are_valid_c(built):
    out, _ = built
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler on this machine")
    src = out / "all_headers.c"
    src.write_text("".join(f'#include "{h.name}"\n' for h in sorted(out.glob("*.h"))) + "int main(void){return 0;}\n")
    proc = subprocess.run([cc, "-fsyntax-only", "-Wall", "-Werror", str(src)], cwd=out, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
