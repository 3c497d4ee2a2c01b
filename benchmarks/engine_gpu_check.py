"""GPU check of the engine's torch backend with the Triton kernels (run on a machine with a CUDA GPU).

What it checks, in about 3 minutes on one H200:

1. parity: a torch engine on CUDA (Triton pre-processing + fused anomaly map) against the
   reference pipeline (CPU, float64 anomaly map) from uint8 frames of odd sizes: fp32 engine
   maps/scores within 1e-5 relative, fp16 engine maps within 2e-3 (docs/anomaly_map.md);
2. throughput, wide_resnet50_2 at 256² (random weights), batch 1/8/32, uint8 frames in ->
   scores and maps out: eager fp32 reference pipeline on the GPU vs the fp32 and fp16 engines,
   interleaved; CUDA-synchronised wall time;
3. the anomaly map alone on WRN50 feature shapes: eager reference vs torch separable path vs
   the fused Triton kernel.

Usage: python benchmarks/engine_gpu_check.py [--json OUT.json] [--quick]
Prints a markdown report; TensorRT is not exercised (not installable there, docs/where_it_runs.md).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cdd_engine  # noqa: E402
from cdd_engine.anomaly_map import anomaly_map  # noqa: E402
from cdd_engine.models import build_rd_model  # noqa: E402
from cdd_engine.preprocess import resize_normalize  # noqa: E402
from cdd_engine.runtime.postprocess import FastAnomalyMap  # noqa: E402


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def sync_time(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def reference(model, imgs) -> tuple[np.ndarray, np.ndarray]:
    """resize_normalize -> fp32 model (CPU) -> anomaly map in float64, frame by frame."""
    maps, scores = [], []
    with torch.no_grad():
        for img in imgs:
            x = resize_normalize(img[None], model.image_size, *model.normalization)
            t, s = model(x)
            m, sc = anomaly_map([f.double() for f in t], [f.double() for f in s], model.image_size)
            maps.append(m[0].numpy())
            scores.append(float(sc[0]))
    return np.stack(maps), np.array(scores)


def parity(tmp: Path) -> dict:
    model = build_rd_model("resnet18", pretrained=False, image_size=64, seed=0).eval()
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(64, 64), (97, 131), (200, 150), (31, 257)]]
    want_maps, want_scores = reference(model, imgs)
    out = {}
    for precision, tol in (("fp32", 1e-5), ("fp16", 2e-3)):
        eng = cdd_engine.build(model, backend="torch", precision=precision, threshold=1.0,
                               output_dir=tmp / f"tiny_{precision}", device="cuda")
        assert eng.backend.kernels is not None, "Triton kernels were not picked up on CUDA"
        r = eng.score(imgs)
        bgr = eng.score([np.ascontiguousarray(i[..., ::-1]) for i in imgs], pixel_format="BGR")
        out[precision] = {"map_rel_err": rel(r.maps, want_maps), "score_rel_err": rel(r.scores, want_scores),
                          "bgr_vs_rgb": rel(bgr.scores, r.scores), "tolerance": tol,
                          "ok": rel(r.maps, want_maps) <= tol and rel(r.scores, want_scores) <= tol}
    return out


def throughput(tmp: Path, batches, reps: int) -> list[dict]:
    model = build_rd_model("wide_resnet50_2", pretrained=False, image_size=256, seed=0).eval()
    engines = {p: cdd_engine.build(model, backend="torch", precision=p, threshold=1.0, max_batch=max(batches),
                                   output_dir=tmp / f"wrn_{p}", device="cuda") for p in ("fp32", "fp16")}
    gpu_model = build_rd_model("wide_resnet50_2", pretrained=False, image_size=256, seed=0).eval().cuda()
    mean, std = gpu_model.normalization
    rows = []
    for b in batches:
        frames = np.random.default_rng(b).integers(0, 256, (b, 256, 256, 3), dtype=np.uint8)

        def eager():
            with torch.inference_mode():
                x = resize_normalize(torch.from_numpy(frames).cuda(), 256, mean, std)
                t, s = gpu_model(x)
                m, sc = anomaly_map(t, s, 256)
                m.cpu().numpy(), sc.cpu().numpy()

        fns = {"eager_fp32": eager, **{f"engine_{p}": (lambda e=e: e.score(frames)) for p, e in engines.items()}}
        for fn in fns.values():
            fn()
        times = {k: [] for k in fns}
        for _ in range(reps):
            for k, fn in fns.items():
                times[k] += sync_time(fn, 1)
        base = np.median(times["eager_fp32"])
        for k, t in times.items():
            rows.append({"batch": b, "pipeline": k, "images_per_s": b / float(np.median(t)),
                         "p50_ms": 1e3 * float(np.median(t)), "p99_ms": 1e3 * float(np.percentile(t, 99)),
                         "x_eager": float(base / np.median(t))})
    return rows


def postprocess_alone(reps: int) -> dict:
    from cdd_engine.runtime.backends.torch_backend import import_kernels

    k = import_kernels()
    g = torch.Generator(device="cuda").manual_seed(0)
    shapes = [(256, 64, 64), (512, 32, 32), (1024, 16, 16)]
    res = {}
    for dtype in (torch.float32, torch.float16):
        t = [torch.randn(8, *s, generator=g, device="cuda").to(dtype) for s in shapes]
        s_ = [x + 0.3 * torch.randn(x.shape, generator=g, device="cuda").to(dtype) for x in t]
        fast = FastAnomalyMap(256)
        fns = {"eager": lambda: anomaly_map(t, s_, 256), "torch_separable": lambda: fast(t, s_),
               "triton_fused": lambda: k.fused_anomaly_map(t, s_, 256)}
        want = anomaly_map([x.double() for x in t], [x.double() for x in s_], 256)[0]
        errs = {n: rel(fn()[0].cpu(), want.cpu()) for n, fn in fns.items()}
        bytes_read = sum(x.numel() * x.element_size() for x in t + s_)
        row = {}
        for n, fn in fns.items():
            fn()
            ms = 1e3 * float(np.median(sync_time(fn, reps)))
            row[n] = {"ms_per_batch8": ms, "rel_err_vs_float64": errs[n],
                      "feature_read_GBps": bytes_read / (ms * 1e-3) / 1e9}
        res[str(dtype).replace("torch.", "")] = row
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to check here")
        return 1
    import triton
    reps = 3 if a.quick else 7
    report = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "triton": triton.__version__}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        report["parity"] = parity(tmp)
        print("parity:", json.dumps(report["parity"], indent=1), flush=True)
        report["postprocess"] = postprocess_alone(reps * 3)
        print("postprocess:", json.dumps(report["postprocess"], indent=1), flush=True)
        report["throughput"] = throughput(tmp, (1, 8, 32), reps)
    report["seconds"] = time.perf_counter() - t0
    print(f"\nGPU {report['gpu']}, torch {report['torch']}, triton {report['triton']}\n")
    print("| batch | pipeline | images/s | p50 ms | p99 ms | x eager fp32 |\n|---|---|---|---|---|---|")
    for r in report["throughput"]:
        print(f"| {r['batch']} | {r['pipeline']} | {r['images_per_s']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{r['x_eager']:.2f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2))
    ok = all(v["ok"] for v in report["parity"].values())
    print("parity", "OK" if ok else "FAILED")
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
