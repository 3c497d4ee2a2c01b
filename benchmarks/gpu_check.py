#!/usr/bin/env python
"""One-shot GPU check of the Triton kernels: correctness, speed, pipeline, AOT launch contract.

Meant for one run on the GPU machine (one H200, torch + CUDA, Triton 3.6, no network, no
TensorRT), in under 5 minutes; prints a report and writes JSON to ``--out`` (after every
section, so a crash or a timeout still leaves the results so far). Sections:

a. correctness: fused kernels vs the float64 reference on random inputs (odd shapes, real
   backbone shapes, fp32/fp16/bf16, add/mul, NCHW/channels_last, channel splits) and fused
   pre-processing vs the float64 reference steps;
b. post-processing time: fused vs eager reference ``anomaly_map`` (``triton.testing.do_bench``
   median, L2 flushed), wide_resnet50_2 and efficientnet_lite0 feature shapes at 256^2,
   batch 1/8/32, fp32/fp16; bandwidth = feature bytes read / time, against a device copy;
c. pre-processing time: fused vs eager steps for 1920x1080 RGB frames -> 256^2;
d. whole pipeline (uint8 frames -> preprocess -> RD model -> map + score): eager fp32 vs fp16
   model + channels_last + fused kernels, batch 8 and 32 (needs ``cdd_engine.models``);
e. AOT: ``cdd_engine.kernels.aot`` builds every variant for this GPU with this Triton, then the cubins are
   loaded and launched through the CUDA driver API (ctypes: cuModuleLoadData +
   cuLaunchKernel, exactly what the C++ engine does) and compared with the JIT path;
t. tuning sweep of block sizes (informative; run last, skipped when time is short).

``--quick`` runs a small correctness part only, on the CPU through TRITON_INTERPRET=1 when no
GPU is present, so CI can exercise this script.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="JSON report path")
    ap.add_argument("--quick", action="store_true", help="tiny correctness checks only (CPU interpreter ok)")
    ap.add_argument("--budget-s", type=float, default=270.0, help="skip sections that would start later")
    ap.add_argument("--sections", default="a,b,c,d,e,t", help="comma-separated subset of a,b,c,d,e,t")
    ap.add_argument("--apply-tuned", action="store_true",
                    help="run the tuning sweep first and use its fastest configurations in a-d")
    ap.add_argument("--results-csv", default=None,
                    help="also append the report's numbers as long-format rows here (results_csv.py); default "
                         "benchmarks/results/gpu_check.csv on a GPU, none with --quick or without one (interpreter "
                         "checks are no measurement); '' for none")
    return ap.parse_args()


ARGS = _parse()
import torch  # noqa: E402  (does not import Triton)

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    if not ARGS.quick:
        print("no CUDA device: only --quick (CPU interpreter) can run here", file=sys.stderr)
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first Triton import

sys.path.insert(0, str(ROOT))
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402

try:
    from cdd_engine.kernels import anomaly_map as K, preprocess as P  # noqa: E402
except ImportError:
    from cdd_engine.kernels import anomaly_map as K, preprocess as P  # noqa: E402
from cdd_engine.anomaly_map import anomaly_map  # noqa: E402
from cdd_engine.preprocess import resize_normalize, to_rgb_nchw  # noqa: E402

DEV = torch.device("cuda" if HAS_CUDA else "cpu")
T0 = time.time()
REPORT: dict = {"meta": {}, "sections": {}, "errors": {}, "skipped": {}}
SHAPES = {
    "wide_resnet50_2": [(256, 64, 64), (512, 32, 32), (1024, 16, 16)],
    "efficientnet_lite0": [(24, 64, 64), (40, 32, 32), (112, 16, 16)],
}
ODD_SCALES = [(5, 5, 7), (24, 9, 13), (33, 19, 27)]
ODD_IMAGE = (37, 53)
RTOL_MAP = 1e-5  # docs/anomaly_map.md; inputs are exact in fp32/fp64, so fp16/bf16 inputs are held to it too


def write_report() -> None:
    REPORT["meta"]["elapsed_s"] = round(time.time() - T0, 1)
    Path(ARGS.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ARGS.out).write_text(json.dumps(REPORT, indent=1, default=str))


def section(key: str, title: str, fn, quick_ok: bool = False) -> None:
    if key not in ARGS.sections.split(","):
        REPORT["skipped"][key] = "not selected"
        return
    if ARGS.quick and not quick_ok:
        REPORT["skipped"][key] = "--quick"
        return
    if time.time() - T0 > ARGS.budget_s:
        REPORT["skipped"][key] = f"time budget {ARGS.budget_s}s used up"
        print(f"\n== {key}. {title}: SKIPPED (time budget)")
        return
    print(f"\n== {key}. {title}", flush=True)
    t = time.time()
    try:
        REPORT["sections"][key] = fn()
    except Exception:
        REPORT["errors"][key] = traceback.format_exc()
        print(REPORT["errors"][key], flush=True)
    print(f"   ({time.time() - t:.1f} s)", flush=True)
    write_report()


def bench(fn, rep: int = 100) -> float:
    """Median ms of fn with the L2 flushed before each run (triton.testing.do_bench)."""
    try:
        return float(triton.testing.do_bench(fn, warmup=25, rep=rep, return_mode="median"))
    except TypeError:  # older signature
        return float(triton.testing.do_bench(fn, warmup=25, rep=rep, quantiles=[0.5])[0])


def bench_graph(fn) -> float | None:
    """Median ms of fn replayed in a CUDA graph (no launch overhead), or None if capture fails."""
    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median"))
    except Exception as e:  # capture can fail on some stacks; the plain timing stands
        print(f"   cuda graph timing unavailable: {type(e).__name__}: {e}")
        return None


def feats(batch, scales, dtype, seed, channels_last=False):
    g = torch.Generator(device=DEV).manual_seed(seed)
    out = []
    for _ in range(2):
        xs = [torch.randn(batch, c, h, w, generator=g, device=DEV, dtype=torch.float32).to(dtype)
              for c, h, w in scales]
        if channels_last:
            xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
        out.append(xs)
    return out


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).abs() / ref.double().abs().clamp_min(1e-30)).max().item()


# ------------------------------------------------------------------------------------------
def meta() -> None:
    m = REPORT["meta"]
    m.update(python=platform.python_version(), torch=torch.__version__, triton=triton.__version__,
             device=str(DEV), quick=ARGS.quick, interpreter=os.environ.get("TRITON_INTERPRET") == "1")
    if HAS_CUDA:
        p = torch.cuda.get_device_properties(0)
        m.update(gpu=p.name, sm_count=p.multi_processor_count, capability=f"{p.major}.{p.minor}",
                 memory_gb=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda)
    print("meta:", json.dumps(m))


def sec_correctness() -> dict:
    rows = []
    ok = True

    def case(name, t, s, image, mode, **kw):
        nonlocal ok
        maps, scores = K.fused_anomaly_map(t, s, image, mode=mode, **kw)
        rm, rs = anomaly_map([x.double() for x in t], [x.double() for x in s], image, mode=mode)
        e_map, e_score = rel_err(maps, rm), rel_err(scores, rs)
        passed = e_map <= RTOL_MAP and e_score <= RTOL_MAP
        ok &= passed
        rows.append(dict(case=name, mode=mode, map_rel_err=e_map, score_rel_err=e_score, passed=passed))
        print(f"   {'PASS' if passed else 'FAIL'} {name:<44} {mode:<4} map {e_map:.2e} score {e_score:.2e}")

    dtypes = [torch.float32, torch.float16] + ([] if ARGS.quick else [torch.bfloat16])
    batches = [1, 2] if ARGS.quick else [1, 3]
    layouts = [False] if ARGS.quick else [False, True]
    for dtype in dtypes:
        for batch in batches:
            for cl in layouts:
                for mode in ("add", "mul"):
                    t, s = feats(batch, ODD_SCALES, dtype, seed=batch + 7 * len(mode))
                    if cl:
                        t = [x.contiguous(memory_format=torch.channels_last) for x in t]
                        s = [x.contiguous(memory_format=torch.channels_last) for x in s]
                    case(f"odd {str(dtype)[6:]} b{batch}{' cl' if cl else ''}", t, s, ODD_IMAGE, mode)
    t, s = feats(2, ODD_SCALES, torch.float32, seed=3)
    case("odd fp32 b2 splits=3", t, s, ODD_IMAGE, "add", _splits=3)
    if not ARGS.quick:
        for bb, scales in SHAPES.items():
            for dtype in (torch.float32, torch.float16):
                for cl in (False, True):
                    for mode in ("add", "mul"):
                        t, s = feats(2, scales, dtype, seed=11, channels_last=cl)
                        case(f"{bb} {str(dtype)[6:]} b2{' cl' if cl else ''} (auto splits)", t, s, 256, mode)

    pre_rows = []
    pre_cases = [((2, 47, 61, 3), (20, 33), "BGR", 5), ((1, 23, 17, 1), (40, 50), "MONO", 0)]
    if not ARGS.quick:
        pre_cases = [((2, 1080, 1920, 3), (256, 256), "RGB", 0)] + pre_cases
    for shape, size, fmt, pad in pre_cases:
        n, H, W, c = shape
        g = torch.Generator(device=DEV).manual_seed(H)
        base = torch.randint(0, 256, (n, H, W * c + pad), generator=g, device=DEV, dtype=torch.uint8)
        frames = base[:, :, :W * c].unflatten(2, (W, c))
        x = to_rgb_nchw(frames, fmt).double()
        try:
            r = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        except RuntimeError:  # float64 antialias not on this device: CPU
            r = F.interpolate(x.cpu(), size=size, mode="bilinear", align_corners=False, antialias=True).to(DEV)
        mean = torch.tensor(P.IMAGENET_MEAN, dtype=torch.float64, device=DEV).view(1, 3, 1, 1) * 255
        std = torch.tensor(P.IMAGENET_STD, dtype=torch.float64, device=DEV).view(1, 3, 1, 1) * 255
        ref = (r - mean) / std
        for impl, out_dtype, atol in [(i, d, a) for i in P.IMPLS for d, a in ((torch.float32, 2e-6),
                                                                              (torch.float16, 1e-3))]:
            out = P.fused_preprocess(frames, size, pixel_format=fmt, out_dtype=out_dtype, impl=impl)
            err = (out.double() - ref).abs()
            rtol = 1e-5 if out_dtype == torch.float32 else 1e-3
            passed = bool((err <= atol + rtol * ref.abs()).all())
            ok &= passed
            name = f"preprocess[{impl}] {H}x{W} {fmt} -> {size} {str(out_dtype)[6:]}{' padded' if pad else ''}"
            pre_rows.append(dict(case=name, max_abs_err=err.max().item(), passed=passed))
            print(f"   {'PASS' if passed else 'FAIL'} {name:<60} max abs err {err.max().item():.2e}")
    return {"passed": ok, "anomaly_map": rows, "preprocess": pre_rows}


def copy_bandwidth() -> float:
    """GB/s of a 1 GiB device-to-device copy, counting bytes read + written."""
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device=DEV)
    b = torch.empty_like(a)
    ms = bench(lambda: b.copy_(a))
    del a, b
    return 2 * n / (ms * 1e-3) / 1e9


def _pass1_only(t, s):
    plans = [K._split_plan(x, y, None) for x, y in zip(t, s)]
    B = t[0].shape[0]
    sizes = [k * 3 * B * x.shape[2] * x.shape[3] for (k, _), x in zip(plans, t)]
    ws = torch.empty(sum(sizes), dtype=torch.float32, device=DEV)

    def run():
        off = 0
        for (x, y), (k, cps), n in zip(zip(t, s), plans, sizes):
            K._launch_pass1(x, y, ws[off:off + n], k, cps)
            off += n
    return run


def sec_postprocess() -> dict:
    """GPU time from CUDA-graph replay (no launch overhead) is the bandwidth metric; do_bench
    times (L2 flushed, Python launch cost included) show what an eager caller sees."""
    copy_bw = copy_bandwidth()
    print(f"   device copy bandwidth (read + write): {copy_bw:.0f} GB/s")
    rows = []
    for bb, scales in SHAPES.items():
        for dtype in (torch.float32, torch.float16):
            for batch in (1, 8, 32):
                for cl in ((False, True) if dtype == torch.float16 else (False,)):
                    t, s = feats(batch, scales, dtype, seed=batch, channels_last=cl)
                    nbytes = sum(x.numel() * x.element_size() for x in t + s)
                    fused = lambda: K.fused_anomaly_map(t, s, 256)  # noqa: E731
                    eager = lambda: anomaly_map(t, s, 256)  # noqa: E731
                    p1 = _pass1_only(t, s)
                    ms_f, ms_e = bench(fused), bench(eager)
                    g_f, g_p1 = bench_graph(fused), bench_graph(p1)
                    gpu_f = g_f if g_f is not None else ms_f
                    gpu_p1 = g_p1 if g_p1 is not None else bench(p1)
                    bw, bw1 = nbytes / (gpu_f * 1e-3) / 1e9, nbytes / (gpu_p1 * 1e-3) / 1e9
                    row = dict(backbone=bb, dtype=str(dtype)[6:], layout="channels_last" if cl else "nchw",
                               batch=batch, feature_mb=nbytes / 1e6, fused_ms=ms_f, eager_ms=ms_e,
                               speedup=ms_e / ms_f, fused_graph_ms=g_f, pass1_graph_ms=g_p1,
                               fused_gbps=bw, pass1_gbps=bw1, fused_frac_copy_bw=bw / copy_bw,
                               pass1_frac_copy_bw=bw1 / copy_bw, splits=[K._split_plan(a, b, None)[0]
                                                                         for a, b in zip(t, s)])
                    rows.append(row)
                    print(f"   {bb:<18} {row['dtype']:<8} {row['layout']:<13} b{batch:<3} {nbytes / 1e6:6.1f} MB"
                          f"  eager {ms_e:.3f} ms  fused {ms_f:.3f} ms (x{ms_e / ms_f:4.1f})  GPU time: fused "
                          f"{gpu_f * 1e3:6.1f} us = {bw:5.0f} GB/s = {100 * bw / copy_bw:3.0f}% copy, pass 1 "
                          f"{gpu_p1 * 1e3:6.1f} us = {100 * bw1 / copy_bw:3.0f}%", flush=True)
    return {"copy_gbps": copy_bw, "target_frac": 0.6, "rows": rows}


def eager_preprocess(frames, size, mean, std, fmt="RGB"):
    """The reference's steps with the mean/std tensors on the frames' device."""
    x = to_rgb_nchw(frames, fmt)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(mean, dtype=torch.float32, device=frames.device).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32, device=frames.device).view(1, 3, 1, 1) * 255.0
    return (x - m) / s


def sec_preprocess() -> dict:
    rows = []
    res: dict = {"rows": rows}
    probe = torch.randint(0, 256, (1, 64, 64, 3), dtype=torch.uint8, device=DEV)
    try:
        resize_normalize(probe, 32)
        res["reference_on_gpu"] = "works"
    except Exception as e:  # the reference builds mean/std on the CPU
        res["reference_on_gpu"] = f"fails: {type(e).__name__}: {str(e)[:200]}"
    print(f"   cdd_engine.preprocess.resize_normalize on a CUDA tensor: {res['reference_on_gpu']}")
    for batch in (1, 8, 32):
        frames = torch.randint(0, 256, (batch, 1080, 1920, 3), dtype=torch.uint8, device=DEV)
        mean, std = P.IMAGENET_MEAN, P.IMAGENET_STD
        ms_e = bench(lambda: eager_preprocess(frames, (256, 256), mean, std))
        ms_32 = bench(lambda: P.fused_preprocess(frames, 256))
        ms_16 = bench(lambda: P.fused_preprocess(frames, 256, out_dtype=torch.float16, channels_last=True))
        other = "taps" if P.DEFAULT_IMPL == "mma" else "mma"
        ms_o = bench(lambda: P.fused_preprocess(frames, 256, impl=other))
        gbps = frames.numel() / (ms_16 * 1e-3) / 1e9
        rows.append(dict(batch=batch, impl=P.DEFAULT_IMPL, eager_ms=ms_e, fused_fp32_ms=ms_32,
                         fused_fp16_cl_ms=ms_16, speedup_fp32=ms_e / ms_32, input_gbps_fp16=gbps,
                         other_impl=other, other_impl_fp32_ms=ms_o))
        print(f"   1080p RGB -> 256^2 b{batch:<3} eager {ms_e:.3f} ms  fused[{P.DEFAULT_IMPL}] fp32 {ms_32:.3f} ms "
              f"(x{ms_e / ms_32:.1f})  fp16 channels_last {ms_16:.3f} ms  input read {gbps:.0f} GB/s  "
              f"[{other}] fp32 {ms_o:.3f} ms", flush=True)
    return res


def sec_pipeline() -> dict:
    try:
        from cdd_engine.models import build_rd_model
    except Exception as e:
        msg = f"cdd_engine.models.build_rd_model not importable ({type(e).__name__}: {e}); section skipped"
        print("   " + msg)
        return {"skipped": msg}
    res: dict = {"rows": [], "notes": "random weights (pretrained=False); eager fp32 uses cuDNN defaults "
                 f"(allow_tf32={torch.backends.cudnn.allow_tf32})"}
    model = build_rd_model("wide_resnet50_2", pretrained=False, seed=0).to(DEV).eval()
    mean, std = model.normalization
    half = copy.deepcopy(model).half().to(memory_format=torch.channels_last).eval()
    size = tuple(model.image_size)

    @torch.inference_mode()
    def eager(frames):
        t, s = model(eager_preprocess(frames, size, mean, std))
        return anomaly_map(t, s, size)

    @torch.inference_mode()
    def half_eager_post(frames):
        x = eager_preprocess(frames, size, mean, std).half().contiguous(memory_format=torch.channels_last)
        t, s = half(x)
        return anomaly_map(t, s, size)

    @torch.inference_mode()
    def fast(frames):
        x = P.fused_preprocess(frames, size, mean, std, out_dtype=torch.float16, channels_last=True)
        t, s = half(x)
        return K.fused_anomaly_map(t, s, size)

    for batch in (8, 32):
        frames = torch.randint(0, 256, (batch, 1080, 1920, 3), dtype=torch.uint8, device=DEV)
        m_ref, s_ref = eager(frames)
        m_fast, s_fast = fast(frames)
        err_map = rel_err(m_fast, m_ref)
        err_norm = ((m_fast.double() - m_ref.double()).abs().max() / m_ref.double().abs().max()).item()
        err_score = rel_err(s_fast, s_ref)
        ms_e = bench(lambda: eager(frames), rep=300)
        ms_h = bench(lambda: half_eager_post(frames), rep=300)
        ms_f = bench(lambda: fast(frames), rep=300)
        row = dict(batch=batch, eager_fp32_ms=ms_e, fp16_cl_eager_pre_post_ms=ms_h, fp16_cl_fused_ms=ms_f,
                   speedup=ms_e / ms_f, fused_vs_eager_pre_post=ms_h / ms_f,
                   img_per_s_fused=batch / (ms_f * 1e-3), map_rel_err_vs_fp32=err_map,
                   map_err_rel_to_max=err_norm, score_rel_err_vs_fp32=err_score)
        res["rows"].append(row)
        print(f"   WRN50 RD b{batch:<3} eager fp32 {ms_e:.2f} ms  fp16+CL eager pre/post {ms_h:.2f} ms  "
              f"fp16+CL fused {ms_f:.2f} ms  (x{ms_e / ms_f:.2f}, {batch / (ms_f * 1e-3):.0f} img/s)  "
              f"fp16 vs fp32: map {err_map:.1e} (max-normed {err_norm:.1e}), score {err_score:.1e}", flush=True)
    return res


# ---------------------------------------------------------------- AOT + driver API launches
class _Driver:
    """The few CUDA driver calls the C++ engine makes, through ctypes."""

    def __init__(self):
        self.lib = ctypes.CDLL("libcuda.so.1")
        self.lib.cuModuleLoadData.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
        self.lib.cuModuleGetFunction.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p, ctypes.c_char_p]
        self.lib.cuLaunchKernel.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [
            ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_void_p)]
        self.lib.cuModuleUnload.argtypes = [ctypes.c_void_p]
        self._keep = []

    def _ok(self, rc, what):
        if rc != 0:
            raise RuntimeError(f"{what} failed with CUresult {rc}")

    def load(self, cubin: bytes, entry: str):
        buf = ctypes.create_string_buffer(cubin, len(cubin))
        mod, fn = ctypes.c_void_p(), ctypes.c_void_p()
        self._ok(self.lib.cuModuleLoadData(ctypes.byref(mod), ctypes.cast(buf, ctypes.c_void_p)), "cuModuleLoadData")
        self._ok(self.lib.cuModuleGetFunction(ctypes.byref(fn), mod, entry.encode()), "cuModuleGetFunction")
        self._keep.append((buf, mod))
        return fn

    def launch(self, fn, grid, info, values: dict):
        """values: runtime argument name -> int (pointer or int32), in the manifest's order."""
        cvals = []
        for a in info["args"]:
            v = values[a["name"]]
            cvals.append(ctypes.c_uint64(v) if a["type"].startswith("*") else ctypes.c_int32(v))
        cvals += [ctypes.c_uint64(0)] * info["extra_scratch_params"]  # global / profile scratch
        params = (ctypes.c_void_p * len(cvals))(*[ctypes.cast(ctypes.byref(v), ctypes.c_void_p) for v in cvals])
        stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        self._ok(self.lib.cuLaunchKernel(fn, grid[0], grid[1], grid[2], info["threads"], 1, 1,
                                         info["shared_bytes"], stream, params, None), "cuLaunchKernel")


def sec_aot() -> dict:
    tuned = {k: getattr(K if k in TUNABLE else P, k) for k in DEFAULTS}
    apply_config(DEFAULTS)  # the AOT variants are built from the code's defaults
    try:
        return _sec_aot()
    finally:
        apply_config(tuned)


def _sec_aot() -> dict:
    cc = torch.cuda.get_device_capability(0)
    arch = cc[0] * 10 + cc[1]
    out = Path(tempfile.mkdtemp(prefix="cdd_aot_"))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", "cdd_engine.kernels.aot", "--arch", str(arch), "--out", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    print("   " + proc.stdout.replace("\n", "\n   "))
    if proc.returncode != 0:
        raise RuntimeError(f"AOT build failed: {proc.stderr[-3000:]}")
    infos = {i["name"]: i for i in json.loads((out / f"manifest.sm{arch}.json").read_text())}
    res: dict = {"arch": arch, "kernels": {n: {k: i.get(k) for k in ("n_regs", "n_spills", "shared_bytes",
                                                                       "num_warps", "extra_scratch_params")}
                                            for n, i in infos.items()}, "launch_checks": []}
    drv = _Driver()

    def fn_of(name):
        i = infos[name]
        return drv.load((out / f"{name}.sm{arch}.cubin").read_bytes(), i["triton_name"]), i

    # 1) preprocess fp32 ("taps" and "mma"), 1080p RGB -> 256^2, against the JIT launcher
    frames = torch.randint(0, 256, (2, 1080, 1920, 3), dtype=torch.uint8, device=DEV)
    want = P.fused_preprocess(frames, 256, impl="taps")
    got = torch.empty_like(want)
    y0, wy = P._tables(1080, 256, DEV)
    x0, wx = P._tables(1920, 256, DEV)
    aff = P._affine(tuple(P.IMAGENET_MEAN), tuple(P.IMAGENET_STD), DEV)
    fn, info = fn_of("cdd_preprocess_u8_to_fp32")
    d = info["defines"]
    drv.launch(fn, (triton.cdiv(256, d["BLOCK_N"]), triton.cdiv(256, d["BLOCK_M"]), 2), info, dict(
        src_ptr=frames.data_ptr(), out_ptr=got.data_ptr(), y0_ptr=y0.data_ptr(), wy_ptr=wy.data_ptr(),
        x0_ptr=x0.data_ptr(), wx_ptr=wx.data_ptr(), affine_ptr=aff.data_ptr(), H=1080, W=1920, h=256, w=256,
        ky=wy.shape[1], kx=wx.shape[1], src_sn=frames.stride(0), src_sh=frames.stride(1),
        src_sw=frames.stride(2), out_sn=got.stride(0), out_sc=got.stride(1), out_sh=got.stride(2),
        ch0=0, ch1=1, ch2=2))
    torch.cuda.synchronize()
    e = (got - want).abs().max().item()
    res["launch_checks"].append(dict(kernel="cdd_preprocess_u8_to_fp32", max_abs_diff_vs_jit=e, passed=e <= 1e-5))
    print(f"   {'PASS' if e <= 1e-5 else 'FAIL'} driver-API launch of preprocess taps: max |aot - jit| = {e:.2e}")

    want = P.fused_preprocess(frames, 256, impl="mma")
    got = torch.empty_like(want)
    fn, info = fn_of("cdd_preprocess_mma_u8_to_fp32")
    d = info["defines"]
    rlo, wyb, clo, wxb = (x.to(DEV) for x in P._mma_tables_cpu(1080, 1920, 256, 256, d["BLOCK_M"], d["BLOCK_N"],
                                                                  d["ROW_CHUNK"], d["COL_CHUNK"]))
    drv.launch(fn, (triton.cdiv(256, d["BLOCK_N"]), triton.cdiv(256, d["BLOCK_M"]), 2), info, dict(
        src_ptr=frames.data_ptr(), out_ptr=got.data_ptr(), rlo_ptr=rlo.data_ptr(), wyb_ptr=wyb.data_ptr(),
        clo_ptr=clo.data_ptr(), wxb_ptr=wxb.data_ptr(), affine_ptr=aff.data_ptr(), H=1080, W=1920, h=256, w=256,
        rw=wyb.shape[2], cw=wxb.shape[2], src_sn=frames.stride(0), src_sh=frames.stride(1),
        src_sw=frames.stride(2), out_sn=got.stride(0), out_sc=got.stride(1), out_sh=got.stride(2),
        ch0=0, ch1=1, ch2=2))
    torch.cuda.synchronize()
    e = (got - want).abs().max().item()
    res["launch_checks"].append(dict(kernel="cdd_preprocess_mma_u8_to_fp32", max_abs_diff_vs_jit=e, passed=e <= 1e-5))
    print(f"   {'PASS' if e <= 1e-5 else 'FAIL'} driver-API launch of preprocess mma: max |aot - jit| = {e:.2e}")

    # 2) anomaly map, mode add: pass 1 (fp16 NCHW, d16 variant) + sandwich + row max
    t, s = feats(2, SHAPES["wide_resnet50_2"], torch.float16, seed=21)
    B = 2
    want_m, want_s = K.fused_anomaly_map(t, s, 256)
    ref_m, ref_s = anomaly_map([x.double() for x in t], [x.double() for x in s], 256)
    plans = [K._split_plan(x, y, None) for x, y in zip(t, s)]
    x_offs, total = [], 0
    for (k, _), x in zip(plans, t):
        x_offs.append(total)
        total += k * 3 * B * x.shape[2] * x.shape[3]
    ws = torch.empty(total, dtype=torch.float32, device=DEV)
    fn, info = fn_of("cdd_cosine_partials_fp16_nchw_d16")
    assert info["defines"]["BLOCK_P"] == K._pass1_config(t[0], s[0])[1]
    for x, y, (k, cps), off in zip(t, s, plans, x_offs):
        _, C, h, w = x.shape
        drv.launch(fn, (triton.cdiv(h * w, info["defines"]["BLOCK_P"]), B, k), info, dict(
            t_ptr=x.data_ptr(), s_ptr=y.data_ptr(), ws_ptr=ws.data_ptr() + 4 * off, c_div=C, hw=h * w, w=w,
            t_sb=x.stride(0), t_sc=x.stride(1), t_sh=x.stride(2), s_sb=y.stride(0), s_sc=y.stride(1),
            s_sh=y.stride(2), batch=B, c_per_split=cps))
    ops, _ = K._operators((256, 256), tuple((x.shape[2], x.shape[3]) for x in t), 4.0, "add",
                          K.MAP_BLOCK_M, K.MAP_BLOCK_N)
    a, bt, win, meta_t = ops.on(DEV, tuple(k for k, _ in plans), tuple(x_offs))
    fn, info = fn_of("cdd_map_add")
    grid = (triton.cdiv(256, info["defines"]["BLOCK_N"]), triton.cdiv(256, info["defines"]["BLOCK_M"]), B)
    maps = torch.empty(B, 256, 256, dtype=torch.float32, device=DEV)
    tile_max = torch.empty(B * grid[0] * grid[1], dtype=torch.float32, device=DEV)
    drv.launch(fn, grid, info, dict(x_ptr=ws.data_ptr(), a_ptr=a.data_ptr(), bt_ptr=bt.data_ptr(),
                                    meta_ptr=meta_t.data_ptr(), win_ptr=win.data_ptr(), out_ptr=maps.data_ptr(),
                                    tile_max_ptr=tile_max.data_ptr(), num_scales=len(t), batch=B, H=256, W=256))
    scores = torch.empty(B, dtype=torch.float32, device=DEV)
    fn, info = fn_of("cdd_row_max")
    drv.launch(fn, (B, 1, 1), info, dict(x_ptr=tile_max.data_ptr(), out_ptr=scores.data_ptr(), n=grid[0] * grid[1]))
    torch.cuda.synchronize()
    e_jit = max(rel_err(maps, want_m), rel_err(scores, want_s))
    e_ref = max(rel_err(maps, ref_m), rel_err(scores, ref_s))
    passed = e_jit <= 1e-6 and e_ref <= RTOL_MAP
    res["launch_checks"].append(dict(kernel="cdd_cosine_partials_fp16_nchw_d16+cdd_map_add+cdd_row_max",
                                     splits=[k for k, _ in plans], rel_diff_vs_jit=e_jit, rel_err_vs_fp64=e_ref,
                                     passed=passed))
    print(f"   {'PASS' if passed else 'FAIL'} driver-API launch of the anomaly map (splits {[k for k, _ in plans]}):"
          f" rel diff vs JIT {e_jit:.1e}, vs float64 reference {e_ref:.1e}")
    res["passed"] = all(c["passed"] for c in res["launch_checks"])
    return res


TUNABLE = ("PASS1_NCHW", "PASS1_CL", "PROGRAMS_PER_SM", "MAP_BLOCK_M", "MAP_BLOCK_N", "MAP_BLOCK_K",
           "MAP_NUM_WARPS")
TUNABLE_P = ("MMA_ROW_CHUNK", "MMA_COL_CHUNK", "MMA_NUM_WARPS", "DEFAULT_IMPL")
DEFAULTS = {**{k: getattr(K, k) for k in TUNABLE}, **{k: getattr(P, k) for k in TUNABLE_P}}


def apply_config(cfg: dict) -> None:
    for k, v in cfg.items():
        setattr(K if k in TUNABLE else P, k, v)


def sec_tune() -> dict:
    """Sweep block sizes with CUDA-graph (GPU-only) timings; returns the fastest of each kind."""
    t_start = time.time()
    limit = 110.0  # seconds for the whole sweep
    rows, best = [], {}

    def sweep(kind, candidates, make_fn, graph=True):
        top = None
        for cfg in candidates:
            if time.time() - t_start > limit:
                print(f"   {kind}: sweep cut at the time limit")
                break
            apply_config(cfg)
            try:
                fn = make_fn()
                ms = bench_graph(fn) if graph else bench(fn)
            except Exception as e:
                print(f"   {kind} {cfg}: failed: {type(e).__name__}: {str(e)[:200]}")
                continue
            finally:
                apply_config({k: DEFAULTS[k] for k in cfg})
            if ms is None:
                continue
            rows.append(dict(kind=kind, config={k: str(v) for k, v in cfg.items()}, ms=ms))
            print(f"   {kind:<34} {cfg}: {ms * 1e3:8.1f} us", flush=True)
            if top is None or ms < top[1]:
                top = (cfg, ms)
        if top:
            best[kind] = top

    t, s = feats(32, SHAPES["wide_resnet50_2"], torch.float16, seed=1)
    p1 = [dict(PASS1_NCHW=c, PROGRAMS_PER_SM=pps)
          for c in ((16, 128, 4, 1), (32, 128, 4, 1), (64, 128, 8, 1), (16, 128, 4, 3), (32, 128, 4, 3),
                    (32, 128, 4, 4), (64, 128, 8, 3), (16, 256, 4, 3), (32, 64, 4, 3))
          for pps in (2, 4)]
    sweep("pass1 wrn fp16 b32 nchw", p1, lambda: _pass1_only(t, s))
    tc = [x.contiguous(memory_format=torch.channels_last) for x in t]
    sc = [x.contiguous(memory_format=torch.channels_last) for x in s]
    p1c = [dict(PASS1_CL=c) for c in ((2048, 64, 4, 1), (4096, 64, 4, 1), (2048, 64, 4, 3), (4096, 64, 8, 3),
                                       (4096, 128, 8, 3), (2048, 32, 4, 3))]
    sweep("pass1 wrn fp16 b32 channels_last", p1c, lambda: _pass1_only(tc, sc))
    del t, s, tc, sc
    te, se = feats(32, SHAPES["efficientnet_lite0"], torch.float16, seed=2)
    p2 = [dict(MAP_BLOCK_M=bm, MAP_BLOCK_N=bn, MAP_BLOCK_K=bk, MAP_NUM_WARPS=nw)
          for bm, bn, bk, nw in ((64, 64, 16, 8), (64, 64, 32, 8), (64, 64, 32, 4), (128, 64, 32, 8),
                                 (64, 128, 32, 8), (32, 64, 32, 4), (128, 64, 16, 8), (128, 128, 32, 8))]
    sweep("map add effnet fp16 b32", p2, lambda: (lambda: K.fused_anomaly_map(te, se, 256)))
    mul_cands = [c for c in p2 if c == best.get("map add effnet fp16 b32", (None,))[0]] + [p2[0]]
    sweep("map mul effnet fp16 b32", mul_cands, lambda: (lambda: K.fused_anomaly_map(te, se, 256, mode="mul")))
    frames = torch.randint(0, 256, (32, 1080, 1920, 3), dtype=torch.uint8, device=DEV)
    pp = [dict(DEFAULT_IMPL="mma", MMA_ROW_CHUNK=rc, MMA_COL_CHUNK=kc, MMA_NUM_WARPS=nw)
          for rc, kc, nw in ((16, 64, 8), (16, 32, 4), (32, 32, 4), (16, 64, 4), (32, 64, 8))] + [
          dict(DEFAULT_IMPL="taps")]
    sweep("preprocess 1080p b32 fp16 cl", pp, lambda: (lambda: P.fused_preprocess(
        frames, 256, out_dtype=torch.float16, channels_last=True)), graph=False)
    chosen = {}
    for kind, (cfg, ms) in best.items():
        if kind.startswith("map mul"):
            continue
        chosen.update(cfg)
    print(f"   fastest: {chosen}")
    return {"rows": rows, "best": {k: dict(config={a: str(b) for a, b in c.items()}, ms=m)
                                   for k, (c, m) in best.items()}, "chosen": {k: str(v) for k, v in chosen.items()},
            "_chosen": chosen}


def main() -> int:
    meta()
    write_report()
    if HAS_CUDA and ARGS.apply_tuned and not ARGS.quick:
        section("t", "tuning sweep (GPU time from CUDA graphs)", sec_tune)
        chosen = REPORT["sections"].get("t", {}).pop("_chosen", {})
        apply_config(chosen)
        REPORT["meta"]["applied_config"] = {k: str(v) for k, v in chosen.items()}
        print(f"   applied to the following sections: {chosen}")
    section("a", "correctness vs float64 reference", sec_correctness, quick_ok=True)
    if HAS_CUDA:
        section("b", "post-processing: fused vs eager anomaly_map", sec_postprocess)
        section("c", "pre-processing: fused vs eager", sec_preprocess)
        section("e", "AOT build + CUDA driver API launches", sec_aot)
        section("d", "pipeline: eager fp32 vs fp16 + channels_last + fused", sec_pipeline)
        if not ARGS.apply_tuned:
            section("t", "tuning sweep (GPU time from CUDA graphs)", sec_tune)
            REPORT["sections"].get("t", {}).pop("_chosen", None)
    else:
        for k in "bcdet":
            REPORT["skipped"].setdefault(k, "no CUDA device")
    a = REPORT["sections"].get("a", {})
    e = REPORT["sections"].get("e", {})
    REPORT["passed"] = bool(a.get("passed")) and not REPORT["errors"] and e.get("passed", True)
    write_report()
    if ARGS.results_csv is None:
        ARGS.results_csv = str(Path(__file__).resolve().parent / "results" / "gpu_check.csv") \
            if HAS_CUDA and not ARGS.quick else ""
    if ARGS.results_csv:
        from results_csv import ResultsWriter  # benchmarks/ is this script's directory
        w = ResultsWriter("gpu_check", ARGS.results_csv)
        n = w.add_dict(REPORT["sections"], quick=ARGS.quick, sections=ARGS.sections, apply_tuned=ARGS.apply_tuned,
                       device=str(REPORT["meta"].get("device", DEV)))
        print(f"appended {n} rows to {w.write()}")
    print(f"\n== summary: {'PASS' if REPORT['passed'] else 'FAIL'}  errors in sections: "
          f"{sorted(REPORT['errors']) or 'none'}  skipped: {REPORT['skipped'] or 'none'}  "
          f"({time.time() - T0:.0f} s)  report: {ARGS.out}")
    return 0 if REPORT["passed"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        write_report()
