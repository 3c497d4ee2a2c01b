"""Ahead-of-time build of the Triton kernels for the C++ engine (no GPU needed).

For each kernel variant this writes into the output directory:

- ``<name>.sm<arch>.cubin`` and ``<name>.sm<arch>.ptx``: load with ``cuModuleLoadData`` (the
  PTX lets the driver JIT for newer GPUs), get the function with ``cuModuleGetFunction`` by
  the Triton name in the header;
- ``<name>.sm<arch>.h``: a C header with the entry name, dynamic shared memory, threads per
  block, the compile-time constants and the parameter list for ``cuLaunchKernel``;
- ``manifest.sm<arch>.json``: the same for every kernel, plus registers and spills.

Launch contract (from the PTX entry): parameters are the kernel's non-constexpr arguments in
order (pointers as ``CUdeviceptr``, ints as ``int32_t``), followed by the scratch pointers that
Triton appends (global scratch, and profile scratch on newer Triton): pass 0 for each; the
header's ``*_NUM_PARAMS`` counts them. Block = ``*_THREADS`` x 1 x 1, dynamic shared memory =
``*_SHARED_BYTES`` (opt in with cuFuncSetAttribute when above 48 KiB). Pointer arguments must be
16-byte aligned (cudaMalloc gives 256). Variants named ``_d16`` assume what their header says
(e.g. h*w % 16 == 0); use the ``_any`` variant otherwise.

Registers and spills: ``CompiledKernel.n_regs`` needs a loaded module (a GPU), so they are read
offline from the cubin with Triton's bundled ``cuobjdump --dump-resource-usage`` (REG, STACK,
LOCAL) and from ``ptxas -v`` run on the same PTX (spill stores / loads).

CLI: ``python -m cdd_engine.kernels.aot --arch 90 --out DIR``. Works with Triton 3.6 to 3.9 (ASTSource with a name->type signature and constexprs).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import triton

from . import anomaly_map as _am
from . import preprocess as _pp

DIV16 = [["tt.divisibility", 16]]


@dataclass
class KernelSpec:
    """One compiled variant: a Triton kernel, its argument types and fixed constants."""

    name: str
    fn: Any
    types: dict[str, str]            # runtime argument -> Triton type ("*fp16", "i32", ...)
    constexprs: dict[str, Any]       # compile-time arguments (includes ints fixed to 1)
    div16: tuple[str, ...] = ()      # runtime arguments promised divisible by 16
    num_warps: int = 4
    num_stages: int = 3
    grid: str = ""
    notes: str = ""
    defines: dict[str, int] = field(default_factory=dict)


def _cosine_spec(dtype: str, aligned: bool) -> KernelSpec:
    t = "*" + dtype
    block_c, block_p, warps, stages = _am.PASS1_NCHW  # the launcher's NCHW configuration
    types = {"t_ptr": t, "s_ptr": t, "ws_ptr": "*fp32", "c_div": "i32", "hw": "i32", "w": "i32",
             "t_sb": "i32", "t_sc": "i32", "t_sh": "i32", "s_sb": "i32", "s_sc": "i32", "s_sh": "i32",
             "batch": "i32", "c_per_split": "i32"}
    const = {"t_sw_div": 1, "s_sw_div": 1, "C_ALIGN": 1, "SW_ALIGN": 1, "FLAT": True,
             "BLOCK_C": block_c, "BLOCK_P": block_p, "STAGES": stages}
    div = ("t_ptr", "s_ptr", "ws_ptr", "c_per_split")
    if aligned:
        div += ("hw", "t_sc", "s_sc", "t_sb", "s_sb")
    return KernelSpec(
        name=f"cdd_cosine_partials_{dtype}_nchw_{'d16' if aligned else 'any'}", fn=_am._cosine_partials_kernel,
        types=types, constexprs=const, div16=div, num_warps=warps,
        grid="(ceil(h*w / BLOCK_C_P), B, splits) with BLOCK_C_P = BLOCK_P",
        notes=("pass 1 of the anomaly map for one scale, contiguous NCHW features; c_div = C; "
               "c_per_split a multiple of BLOCK_C; writes ws (splits, 3, B, h*w) fp32"
               + ("; requires h*w % 16 == 0 (so all strides are multiples of 16)" if aligned else "")),
        defines={"BLOCK_C": block_c, "BLOCK_P": block_p})


def _sandwich_spec(name: str, from_partials: bool, mul: bool, notes: str) -> KernelSpec:
    return KernelSpec(
        name=name, fn=_am._sandwich_kernel,
        types={"x_ptr": "*fp32", "a_ptr": "*fp32", "bt_ptr": "*fp32", "meta_ptr": "*i32", "win_ptr": "*i32",
               "out_ptr": "*fp32", "tile_max_ptr": "*fp32", "num_scales": "i32", "batch": "i32",
               "H": "i32", "W": "i32"},
        constexprs={"FROM_PARTIALS": from_partials, "MUL": mul, "BLOCK_M": _am.MAP_BLOCK_M,
                    "BLOCK_N": _am.MAP_BLOCK_N, "BLOCK_K": _am.MAP_BLOCK_K},
        div16=("x_ptr", "a_ptr", "bt_ptr", "meta_ptr", "win_ptr", "out_ptr", "tile_max_ptr"),
        num_warps=_am.MAP_NUM_WARPS, grid="(ceil(W / BLOCK_N), ceil(H / BLOCK_M), B)", notes=notes,
        defines={"BLOCK_M": _am.MAP_BLOCK_M, "BLOCK_N": _am.MAP_BLOCK_N, "BLOCK_K": _am.MAP_BLOCK_K})


def _preprocess_spec(out: str) -> KernelSpec:
    return KernelSpec(
        name=f"cdd_preprocess_u8_to_{out}", fn=_pp._preprocess_kernel,
        types={"src_ptr": "*u8", "out_ptr": "*" + out, "y0_ptr": "*i32", "wy_ptr": "*fp32", "x0_ptr": "*i32",
               "wx_ptr": "*fp32", "affine_ptr": "*fp32", "H": "i32", "W": "i32", "h": "i32", "w": "i32",
               "ky": "i32", "kx": "i32", "src_sn": "i32", "src_sh": "i32", "src_sw": "i32",
               "out_sn": "i32", "out_sc": "i32", "out_sh": "i32", "ch0": "i32", "ch1": "i32", "ch2": "i32"},
        constexprs={"src_sc": 1, "out_sw": 1, "BLOCK_M": _pp.PRE_BLOCK_M, "BLOCK_N": _pp.PRE_BLOCK_N,
                    "ROW_CHUNK": _pp.PRE_ROW_CHUNK},
        div16=("out_ptr", "y0_ptr", "wy_ptr", "x0_ptr", "wx_ptr", "affine_ptr"),
        num_warps=_pp.PRE_NUM_WARPS, grid="(ceil(w / BLOCK_N), ceil(h / BLOCK_M), N)",
        notes=("uint8 HWC frames (byte row stride src_sh, pixel stride src_sw = 3 or 1) -> NCHW "
               f"{out}; ch0..ch2 = source channel of R,G,B (RGB 0,1,2; BGR 2,1,0; MONO 0,0,0); "
               "tables from cdd_engine/operators.py antialias_taps"),
        defines={"BLOCK_M": _pp.PRE_BLOCK_M, "BLOCK_N": _pp.PRE_BLOCK_N, "ROW_CHUNK": _pp.PRE_ROW_CHUNK})


def _preprocess_mma_spec(out: str) -> KernelSpec:
    return KernelSpec(
        name=f"cdd_preprocess_mma_u8_to_{out}", fn=_pp._preprocess_mma_kernel,
        types={"src_ptr": "*u8", "out_ptr": "*" + out, "rlo_ptr": "*i32", "wyb_ptr": "*fp32", "clo_ptr": "*i32",
               "wxb_ptr": "*fp16", "affine_ptr": "*fp32", "H": "i32", "W": "i32", "h": "i32", "w": "i32",
               "rw": "i32", "cw": "i32", "src_sn": "i32", "src_sh": "i32", "src_sw": "i32",
               "out_sn": "i32", "out_sc": "i32", "out_sh": "i32", "ch0": "i32", "ch1": "i32", "ch2": "i32"},
        constexprs={"src_sc": 1, "out_sw": 1, "BLOCK_M": _pp.MMA_BLOCK_M, "BLOCK_N": _pp.MMA_BLOCK_N,
                    "ROW_CHUNK": _pp.MMA_ROW_CHUNK, "COL_CHUNK": _pp.MMA_COL_CHUNK,
                    "INV_SCALE": 1.0 / _pp.MMA_WEIGHT_SCALE},
        div16=("out_ptr", "rlo_ptr", "wyb_ptr", "clo_ptr", "wxb_ptr", "affine_ptr", "rw", "cw"),
        num_warps=_pp.MMA_NUM_WARPS, grid="(ceil(w / BLOCK_N), ceil(h / BLOCK_M), N)",
        notes=("uint8 HWC frames -> NCHW " + out + " on the tensor cores; band tables from "
               "cdd_engine/kernels/preprocess.py band_tables (rw, cw multiples of ROW_CHUNK / COL_CHUNK, both "
               "multiples of 16); ch0..ch2 as for cdd_preprocess_u8_to_*"),
        defines={"BLOCK_M": _pp.MMA_BLOCK_M, "BLOCK_N": _pp.MMA_BLOCK_N, "ROW_CHUNK": _pp.MMA_ROW_CHUNK,
                 "COL_CHUNK": _pp.MMA_COL_CHUNK, "WEIGHT_SCALE": int(_pp.MMA_WEIGHT_SCALE)})


def kernel_specs() -> list[KernelSpec]:
    """Every variant the C++ engine embeds."""
    return [
        _cosine_spec("fp16", True), _cosine_spec("fp16", False),
        _cosine_spec("fp32", True), _cosine_spec("fp32", False),
        _sandwich_spec("cdd_map_add", True, False, "mode add (or mul without blur): final map + tile maxima"),
        _sandwich_spec("cdd_map_mul_product", True, True, "mode mul with blur, step 1: product map (B,H,W)"),
        _sandwich_spec("cdd_map_blur", False, False, "mode mul with blur, step 2: blur of the product map"),
        KernelSpec(name="cdd_row_max", fn=_am._row_max_kernel,
                   types={"x_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32"}, constexprs={"BLOCK": 64},
                   div16=("x_ptr", "out_ptr"), num_warps=1, grid="(B, 1, 1)",
                   notes="scores[b] = max(tile_max[b, :n])", defines={"BLOCK": 64}),
        _preprocess_spec("fp32"), _preprocess_spec("fp16"),
        _preprocess_mma_spec("fp32"), _preprocess_mma_spec("fp16"),
    ]


def _ast_source(spec: KernelSpec):
    fn = spec.fn
    if not hasattr(fn, "arg_names") or type(fn).__name__ == "InterpretedFunction":
        raise RuntimeError("kernels were imported with TRITON_INTERPRET=1; run the AOT build in a "
                           "process without it")
    names = list(fn.arg_names)
    missing = set(names) - set(spec.types) - set(spec.constexprs)
    if missing:
        raise ValueError(f"{spec.name}: arguments without a type or constant: {sorted(missing)}")
    signature = {n: ("constexpr" if n in spec.constexprs else spec.types[n]) for n in names}
    attrs = {(names.index(n),): DIV16 for n in spec.div16}
    return triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=dict(spec.constexprs), attrs=attrs)


def _tool(name: str, arch: int) -> str | None:
    """Path of a CUDA tool bundled with Triton (or on PATH)."""
    try:
        from triton.backends.nvidia import compiler as nvc
        if name == "ptxas":
            try:
                return nvc.get_ptxas(arch).path
            except TypeError:  # older Triton: get_ptxas() without arch
                return nvc.get_ptxas().path
        from triton import knobs
        return getattr(knobs.nvidia, name).path
    except Exception:
        from shutil import which
        return which(name)


def _resource_usage(cubin: bytes, arch: int) -> dict[str, int]:
    """REG / STACK / LOCAL / SHARED of the cubin's kernel, via cuobjdump."""
    tool = _tool("cuobjdump", arch)
    if not tool:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        out = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True).stdout
    finally:
        os.unlink(path)
    res = {}
    for key in ("REG", "STACK", "SHARED", "LOCAL"):
        m = re.search(rf"\b{key}:(\d+)", out)
        if m:
            res[key.lower()] = int(m.group(1))
    return res


def _ptxas_spills(ptx: str, arch: int) -> dict[str, int]:
    """Registers and spill bytes reported by ``ptxas -v`` on the kernel's PTX."""
    tool = _tool("ptxas", arch)
    if not tool:
        return {}
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(ptx)
        proc = subprocess.run([tool, "-v", f"--gpu-name={gpu}", str(src), "-o", str(Path(d) / "k.o")],
                              capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    res = {}
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if m:
        res["spill_store_bytes"], res["spill_load_bytes"] = int(m.group(1)), int(m.group(2))
    m = re.search(r"Used (\d+) registers", log)
    if m:
        res["ptxas_regs"] = int(m.group(1))
    return res


def _ptx_params(ptx: str) -> list[str]:
    """Parameter types of the PTX entry (e.g. 'u64', 'u32'), in order."""
    m = re.search(r"\.entry\s+\w+\s*\(([^)]*)\)", ptx)
    return re.findall(r"\.param\s+\.(\w+)", m.group(1)) if m else []


def compile_spec(spec: KernelSpec, arch: int) -> tuple[Any, dict[str, Any]]:
    """Compile one variant for sm_<arch>; returns (CompiledKernel, info dict)."""
    from triton.backends.compiler import GPUTarget
    target = GPUTarget("cuda", arch, 32)
    options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages, "enable_fp_fusion": True}
    compiled = triton.compile(_ast_source(spec), target=target, options=options)
    md = compiled.metadata
    ptx = compiled.asm["ptx"]
    params = _ptx_params(ptx)
    runtime_args = [n for n in spec.fn.arg_names if n not in spec.constexprs]
    info: dict[str, Any] = {
        "name": spec.name, "triton_name": md.name, "arch": arch, "triton_version": triton.__version__,
        "num_warps": md.num_warps, "threads": md.num_warps * 32, "shared_bytes": md.shared,
        "global_scratch_bytes": getattr(md, "global_scratch_size", 0),
        "profile_scratch_bytes": getattr(md, "profile_scratch_size", 0),
        "constexprs": {k: (int(v) if isinstance(v, bool) else v) for k, v in spec.constexprs.items()},
        "args": [{"name": n, "type": spec.types[n], "div16": n in spec.div16} for n in runtime_args],
        "ptx_params": params, "extra_scratch_params": len(params) - len(runtime_args),
        "grid": spec.grid, "notes": spec.notes, "defines": spec.defines,
    }
    usage = _resource_usage(compiled.asm["cubin"], arch)
    info.update(usage)
    info.update(_ptxas_spills(ptx, arch))
    info["n_regs"] = usage.get("reg", info.get("ptxas_regs"))
    spills = [info.get(k) for k in ("spill_store_bytes", "spill_load_bytes", "local")]
    info["n_spills"] = sum(v for v in spills if v is not None) if any(v is not None for v in spills) else None
    return compiled, info


def _c_type(ty: str) -> str:
    if ty.startswith("*"):
        return "CUdeviceptr"
    return {"i32": "int32_t", "i64": "int64_t", "u32": "uint32_t"}[ty]


def _header(info: dict[str, Any]) -> str:
    p = info["name"].upper() + f"_SM{info['arch']}"
    lines = [
        f"/* {info['name']} for sm_{info['arch']}: generated by cdd_engine/kernels/aot.py (Triton {info['triton_version']}). */",
        f"/* {info['notes']} */",
        f"/* grid: {info['grid']} */",
        "#pragma once",
        f'#define {p}_ENTRY "{info["triton_name"]}"',
        f'#define {p}_CUBIN "{info["name"]}.sm{info["arch"]}.cubin"',
        f'#define {p}_PTX "{info["name"]}.sm{info["arch"]}.ptx"',
        f"#define {p}_NUM_WARPS {info['num_warps']}",
        f"#define {p}_THREADS {info['threads']}",
        f"#define {p}_SHARED_BYTES {info['shared_bytes']}",
        f"#define {p}_GLOBAL_SCRATCH_BYTES {info['global_scratch_bytes']}",
        f"#define {p}_NUM_PARAMS {len(info['ptx_params'])}",
        f"#define {p}_NUM_EXTRA_SCRATCH_PARAMS {info['extra_scratch_params']}",
    ]
    for k, v in info["defines"].items():
        lines.append(f"#define {p}_{k} {v}")
    lines.append(f"/* registers {info.get('n_regs')}, spill bytes {info.get('n_spills')} */")
    lines.append("/* cuLaunchKernel parameters, in order (then the scratch pointers, pass 0):")
    for a in info["args"]:
        lines.append(f"     {_c_type(a['type'])} {a['name']}{' (multiple of 16)' if a['div16'] else ''}")
    lines.append("*/")
    return "\n".join(lines) + "\n"


def build(arch: int, out_dir: str | os.PathLike, only: list[str] | None = None) -> list[dict[str, Any]]:
    """Compile every variant (or those named in ``only``) for sm_<arch> into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    infos = []
    specs = [s for s in kernel_specs() if not only or s.name in only]
    if only and len(specs) != len(set(only)):
        known = [s.name for s in kernel_specs()]
        raise ValueError(f"unknown kernel name(s) in {only}; known: {known}")
    for spec in specs:
        compiled, info = compile_spec(spec, arch)
        stem = f"{spec.name}.sm{arch}"
        (out / f"{stem}.cubin").write_bytes(compiled.asm["cubin"])
        (out / f"{stem}.ptx").write_text(compiled.asm["ptx"])
        (out / f"{stem}.h").write_text(_header(info))
        infos.append(info)
    (out / f"manifest.sm{arch}.json").write_text(json.dumps(infos, indent=1))
    return infos


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Compile the cdd-engine Triton kernels ahead of time (no GPU).")
    ap.add_argument("--arch", type=int, action="append", help="compute capability, e.g. 90 or 80 (repeatable)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--only", nargs="*", help="compile only these variant names")
    ap.add_argument("--list", action="store_true", help="list variant names and exit")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(s.name for s in kernel_specs()))
        return 0
    for arch in args.arch or [90]:
        for info in build(arch, args.out, args.only):
            print(f"sm_{arch} {info['name']:<34} regs {info['n_regs']!s:>4} spills {info['n_spills']!s:>4} "
                  f"shared {info['shared_bytes']:>6} warps {info['num_warps']} params {len(info['ptx_params'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
