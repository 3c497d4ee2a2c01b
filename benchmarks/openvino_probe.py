"""Where the OpenVINO engine's batch-1 time goes, against eager PyTorch (issue 4), in interleaved runs.

    python benchmarks/openvino_probe.py network  --engine-dir DIR   # eager net / OV net / eager pipeline / Engine
    python benchmarks/openvino_probe.py options  --engine-dir DIR   # CPU plugin settings at batch 1
    python benchmarks/openvino_probe.py wino-net --engine-dir DIR   # direct vs Winograd IR, whole network
    python benchmarks/openvino_probe.py wino-layers                 # direct vs Winograd, single 3x3 layers
    python benchmarks/openvino_probe.py peak     --engine-dir DIR   # OV network vs OV's own large GEMM

DIR: an OpenVINO engine directory of wide_resnet50_2 at 256² (``cdd_engine.build``; build it with
``winograd=False`` or ``cdd-engine build --no-winograd`` for ``wino-net``, which rewrites the direct
IR itself). Every contender is timed round by round in a random order (time_interleaved): the
cores are shared, so read the paired ratios and the load averages printed beside them. ``--json``
keeps every call's time. The figures are in benchmarks/RESULTS.md (issue 4, CPU).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from cdd_engine.bench import eager_pipeline, time_interleaved  # noqa: E402
from results_csv import RESULTS_DIR, ResultsWriter  # noqa: E402  (benchmarks/ is this script's directory)

CFG = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}


def _report(times: dict[str, list[float]], base: str, scale: dict[str, float] | None = None) -> dict[str, Any]:
    """Median ms per call, best, and ratios base/this (of medians and paired per round)."""
    ref = np.asarray(times[base])
    out = {}
    for k, v in times.items():
        v = np.asarray(v) / (scale or {}).get(k, 1.0)
        r = ref / (scale or {}).get(base, 1.0)
        out[k] = {"median_ms": 1e3 * float(np.median(v)), "best_ms": 1e3 * float(v.min()),
                  f"{base}_over_this": float(np.median(r) / np.median(v)),
                  f"{base}_over_this_paired": float(np.median(r / v))}
        print(f"  {k:24s} {out[k]['median_ms']:8.1f} ms (best {out[k]['best_ms']:7.1f})  {base}/this "
              f"{out[k][f'{base}_over_this']:.3f}, paired {out[k][f'{base}_over_this_paired']:.3f}")
    return out


def _scored(core: Any, engine_dir: Path, batch: int = 1, winograd_min: int | None = None) -> Any:
    """The engine's network + in-graph anomaly map (what the runtimes compile), static batch."""
    from cdd_engine.runtime.backends.openvino_backend import append_anomaly_map
    from cdd_engine.export.openvino_winograd import apply_winograd

    manifest = json.loads((engine_dir / "engine.json").read_text())
    net = core.read_model(str(engine_dir / "model.xml"))
    if winograd_min is not None:
        print(f"  winograd >= {winograd_min} channels: {apply_winograd(net, winograd_min)} convolutions rewritten")
    model = append_anomaly_map(net, manifest)
    model.reshape({model.inputs[0]: [batch, 3, *manifest["image_size"]]})
    return model


def _network_flops(model: torch.nn.Module, size: int) -> float:
    """FLOPs (2 x multiply-adds) of the convolutions of one image."""
    macs = [0]

    def hook(mod, inp, out):
        if isinstance(mod, torch.nn.ConvTranspose2d):
            macs[0] += inp[0].numel() * mod.out_channels * math.prod(mod.kernel_size)
        else:
            macs[0] += out.numel() * mod.in_channels // mod.groups * math.prod(mod.kernel_size)

    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    with torch.inference_mode():
        model(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    return 2.0 * macs[0]


def probe_network(a) -> dict[str, Any]:
    import openvino as ov

    import cdd_engine
    from cdd_engine.models import build_rd_model

    model = build_rd_model(a.backbone, pretrained=False, image_size=a.size, seed=0).eval()
    flops = _network_flops(model, a.size)
    print(f"{a.backbone} {a.size}²: {flops / 1e9:.2f} GFLOP per image (convolutions)")
    core = ov.Core()
    net = core.read_model(str(Path(a.engine_dir) / "model.xml"))
    net.reshape({net.inputs[0]: [1, 3, a.size, a.size]})
    req = core.compile_model(net, "CPU", CFG).create_infer_request()
    x = torch.randn(1, 3, a.size, a.size, generator=torch.Generator().manual_seed(0))
    xn = x.numpy()
    engine = cdd_engine.load(a.engine_dir)
    eager = eager_pipeline(model)
    frames = np.random.default_rng(0).integers(0, 256, size=(1, a.size, a.size, 3), dtype=np.uint8)

    def eager_net():
        with torch.inference_mode():
            model(x)

    contenders: dict[str, Callable[[], Any]] = {
        "eager_network": eager_net,
        "openvino_network": lambda: req.infer({0: xn}, share_inputs=True, share_outputs=True),
        "eager_pipeline": lambda: eager(frames),
        "engine": lambda: engine.score(frames),
    }
    times = time_interleaved(contenders, a.rounds)
    res = _report(times, "eager_network")
    pr = np.median(np.asarray(times["eager_pipeline"]) / np.asarray(times["engine"]))
    print(f"  eager_pipeline/engine paired {pr:.3f}; engine/openvino_network (medians) "
          f"{np.median(times['engine']) / np.median(times['openvino_network']):.3f}")
    for k in ("eager_network", "openvino_network"):
        print(f"  {k}: {flops / 1e9 / np.median(times[k]):.0f} GFLOP/s")
    return {"times": times, "summary": res, "gflop": flops / 1e9, "engine_runtime": str(getattr(engine, "runtime", "?"))}


OPTION_VARIANTS = {
    "latency": {"PERFORMANCE_HINT": "LATENCY"},
    "throughput_1stream": {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": 1},
    "no_hint_1stream_2threads": {"NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": 2},
    "latency_1thread": {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1},
    "latency_no_pinning": {"PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False},
}


def probe_options(a) -> dict[str, Any]:
    import openvino as ov

    core = ov.Core()
    model = _scored(core, Path(a.engine_dir))
    x = np.random.default_rng(0).standard_normal(tuple(model.inputs[0].get_shape())).astype(np.float32)
    contenders, props = {}, {}
    chosen = a.variants.split(",") if a.variants else list(OPTION_VARIANTS)
    for name in chosen:
        opts = OPTION_VARIANTS[name]
        cm = core.compile_model(model.clone(), "CPU", {"INFERENCE_PRECISION_HINT": "f32", **opts})
        props[name] = {p: str(cm.get_property(p)) for p in ("INFERENCE_NUM_THREADS", "NUM_STREAMS",
                                                           "INFERENCE_PRECISION_HINT", "ENABLE_CPU_PINNING")}
        print(f"  {name}: {props[name]}")
        r = cm.create_infer_request()
        contenders[name] = lambda r=r: r.infer({0: x}, share_inputs=True, share_outputs=True)
    times = time_interleaved(contenders, a.rounds)
    return {"times": times, "summary": _report(times, chosen[0]), "properties": props}


def probe_wino_net(a) -> dict[str, Any]:
    import openvino as ov

    core = ov.Core()
    contenders = {}
    x = None
    for label, mc in [("direct", None)] + [(f"winograd>={m}", m) for m in a.min_channels]:
        model = _scored(core, Path(a.engine_dir), winograd_min=mc)
        if x is None:
            x = np.random.default_rng(0).standard_normal(tuple(model.inputs[0].get_shape())).astype(np.float32)
        r = core.compile_model(model, "CPU", CFG).create_infer_request()
        contenders[label] = lambda r=r: r.infer({0: x}, share_inputs=True, share_outputs=True)
    times = time_interleaved(contenders, a.rounds)
    return {"times": times, "summary": _report(times, "direct")}


def probe_wino_layers(a) -> dict[str, Any]:
    import openvino as ov
    import openvino.opset13 as ops

    from cdd_engine.export.openvino_winograd import winograd_conv3x3

    core = ov.Core()
    rng = np.random.default_rng(0)
    contenders, reps, errors = {}, {}, {}
    for c, s in ((128, 64), (256, 32), (512, 16), (1024, 8)):  # WRN50 RD's stride-1 3x3 layers at 256²
        w = (rng.standard_normal((c, c, 3, 3)) / math.sqrt(9 * c)).astype(np.float32)
        x = rng.standard_normal((1, c, s, s)).astype(np.float32)
        want = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(),
                                                     padding=1)).numpy()
        n = max(1, (20 * 64 * 64 * 128 * 128) // (s * s * c * c))  # equal work per timed call: 24 GFLOP
        for kind in ("direct", "winograd"):
            p = ops.parameter([1, c, s, s], np.float32)
            y = (ops.convolution(p, ops.constant(w), [1, 1], [1, 1], [1, 1], [1, 1]) if kind == "direct"
                 else winograd_conv3x3(p, w, s, s))
            r = core.compile_model(ov.Model([ops.relu(y)], [p]), "CPU", CFG).create_infer_request()
            key = f"{kind} C{c} {s}x{s}"
            errors[key] = float(np.abs(r.infer({0: x})[0] - want).max() / np.abs(want).max())
            contenders[key] = lambda r=r, x=x, n=n: [r.infer({0: x}, share_inputs=True, share_outputs=True)
                                                    for _ in range(n)]
            reps[key] = n
    times = time_interleaved(contenders, a.rounds)
    summary = {}
    for key in [k for k in contenders if k.startswith("direct")]:
        wkey = key.replace("direct", "winograd")
        d, w_ = np.asarray(times[key]) / reps[key], np.asarray(times[wkey]) / reps[wkey]
        summary[key[7:]] = {"direct_ms": 1e3 * float(np.median(d)), "winograd_ms": 1e3 * float(np.median(w_)),
                            "speedup": float(np.median(d) / np.median(w_)), "speedup_paired": float(np.median(d / w_)),
                            "err_direct": errors[key], "err_winograd": errors[wkey]}
        print(f"  {key[7:]:10s} direct {summary[key[7:]]['direct_ms']:7.2f} ms, winograd "
              f"{summary[key[7:]]['winograd_ms']:7.2f} ms: {summary[key[7:]]['speedup']:.2f}x "
              f"(paired {summary[key[7:]]['speedup_paired']:.2f}); rel. error vs float64 "
              f"{errors[key]:.1e} / {errors[wkey]:.1e}")
    return {"times": times, "summary": summary}


def probe_peak(a) -> dict[str, Any]:
    import openvino as ov
    import openvino.opset13 as ops

    core = ov.Core()
    n = 1536
    p = ops.parameter([n, n], np.float32)
    w = ops.constant(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32))
    gemm = core.compile_model(ov.Model([ops.matmul(p, w, False, False)], [p]), "CPU", CFG).create_infer_request()
    big = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    net = core.read_model(str(Path(a.engine_dir) / "model.xml"))
    net.reshape({net.inputs[0]: [1, 3, a.size, a.size]})
    req = core.compile_model(net, "CPU", CFG).create_infer_request()
    x = np.random.default_rng(0).standard_normal((1, 3, a.size, a.size)).astype(np.float32)
    from cdd_engine.models import build_rd_model
    flops = _network_flops(build_rd_model(a.backbone, pretrained=False, image_size=a.size, seed=0).eval(), a.size)
    times = time_interleaved({"gemm_x10": lambda: [gemm.infer({0: big}, share_inputs=True, share_outputs=True)
                                                   for _ in range(10)],
                              "network": lambda: req.infer({0: x}, share_inputs=True, share_outputs=True)}, a.rounds)
    g = np.asarray(times["gemm_x10"]) / (10 * 2 * n ** 3)
    nt = np.asarray(times["network"]) / flops
    eff = float(np.median(g / nt))
    print(f"  GEMM {1e-9 / np.median(g):.0f} GFLOP/s, network {1e-9 / np.median(nt):.0f} GFLOP/s: "
          f"network at {100 * eff:.0f}% of the GEMM's rate (paired)")
    return {"times": times, "network_over_gemm_efficiency": eff}


PROBES = {"network": probe_network, "options": probe_options, "wino-net": probe_wino_net,
          "wino-layers": probe_wino_layers, "peak": probe_peak}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("probe", choices=sorted(PROBES))
    ap.add_argument("--engine-dir", default=None, help="OpenVINO engine directory (all probes but wino-layers)")
    ap.add_argument("--backbone", default="wide_resnet50_2")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--min-channels", default="256,512", help="wino-net: Winograd thresholds to time")
    ap.add_argument("--variants", default=None, help="options: a comma-separated subset of " + ",".join(OPTION_VARIANTS))
    ap.add_argument("--json", default=None, help="write every call's time here")
    ap.add_argument("--results-csv", default=str(RESULTS_DIR / "openvino_probe.csv"),
                    help="long-format rows of the numbers (not the per-call lists) appended here; '' for none")
    a = ap.parse_args(argv)
    if a.probe != "wino-layers" and not a.engine_dir:
        ap.error(f"{a.probe} needs --engine-dir")
    a.min_channels = [int(v) for v in str(a.min_channels).split(",") if v]
    load0 = os.getloadavg()
    out = PROBES[a.probe](a)
    out["loadavg"] = [list(load0), list(os.getloadavg())]
    print(f"load average {[round(v, 2) for v in load0]} -> {[round(v, 2) for v in os.getloadavg()]}")
    if a.results_csv:
        w = ResultsWriter("openvino_probe", a.results_csv)
        n = w.add_dict({k: v for k, v in out.items() if k != "loadavg"}, probe=a.probe, backbone=a.backbone,
                       size=a.size, rounds=a.rounds)
        w.add("load1_start", load0[0], "", probe=a.probe)
        print(f"appended {n + 1} rows to {w.write()}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
