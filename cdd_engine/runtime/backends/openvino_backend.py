"""OpenVINO backend (CPU): the IR network with the anomaly map appended to its graph.

At load the runtime reads ``model.xml`` (image -> six feature maps) and appends docs/anomaly_map.md
as OpenVINO operations: per-pixel cosine distance (multiply, reduce over channels, sqrt,
max(., eps)), then the separable upsample+blur as MatMuls with the constant matrices of
:mod:`cdd_engine.runtime.postprocess` (``A_s d_s B_s^T`` summed for ``add``; upsample,
multiply, blur for ``mul``), then the max. The CPU plugin runs that on its own threads with
fused kernels, and the 14.7 MB/image of WRN50 features never reach Python. Measured on the
2-core development machine (batch 8, WRN50 feature shapes, interleaved; benchmarks/RESULTS.md):
7.5 ms/image in the graph against 13.2 ms/image for the torch separable path and 85 ms for the
eager reference.

That is for fp32 engines. A reduced-precision engine's graph (fp16, int8) ends with the cosine
distances instead and the rest of the map runs in float32 in torch, as in the C++ engine (see
DISTANCE_OUTPUTS). Every engine is compiled with inference precision f32, so only what the IR
itself quantizes (an INT8 engine's FakeQuantize'd convolutions) runs below float32.

The IR itself may hold Winograd F(2x2, 3x3) subgraphs in place of its wide 3x3 convolutions
(written by the export, export/openvino.py, export/openvino_winograd.py): nothing to do here,
the runtime compiles whatever model.xml holds.

Compiled models are cached per batch size with static shapes (static shapes let the CPU
plugin pick its kernels once: WRN50 RD at batch 1 ran 467 ms static vs 490 ms dynamic in one
interleaved probe, a difference within the noise of these shared cores), and
each thread gets its own infer requests, so one Engine may be shared by threads.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...engine_format import FEATURE_NAMES
from ...errors import BackendUnavailable, EngineFormatError
from ..options import OPENVINO_MODES, default_sub_batch
from ..postprocess import FastAnomalyMap

log = logging.getLogger("cdd_engine.runtime")
MAP_OUTPUT, SCORE_OUTPUT = "anomaly_map", "score"
# Reduced-precision engines (fp16, int8) output the per-scale cosine distances instead, and the
# rest of the map runs in float32 outside the network, as in the C++ engine (the same output
# names): with the whole map in the graph the CPU plugin ran the upsample/blur matmuls at its
# default reduced inference precision (bf16 on CPUs that have it), 6.7e-3 relative to fp32 on the
# tiny test engine against 6.8e-4 with the map in float32 (docs/engine_format.md: features in
# reduced precision, map in float32).
DISTANCE_OUTPUTS = tuple(f"cdd_distance_{s}" for s in range(3))
# Compiled static-shape models kept at once (latency batch 1, throughput jobs, a remainder and
# the features-only model); each holds its own repacked weights (~0.5 GB for WRN50 RD).
MAX_COMPILED = 4


def _ov():
    try:
        import openvino as ov
        import openvino.opset13 as ops
    except ImportError as e:  # pragma: no cover - openvino is an install requirement
        raise BackendUnavailable(f"OpenVINO is not installed: {e} (pip install openvino)") from e
    return ov, ops


def check_model(model: Any, manifest: dict, path: str) -> None:
    """The IR's interface against engine.json (the C++ reader's rules): one input (B, 3, H, W)
    (dynamic dimensions allowed), outputs teacher_0..student_2 of static shape (B, C, h, w)."""
    if len(model.inputs) != 1:
        raise EngineFormatError(f"{path}: the model must have one input, it has {len(model.inputs)}")
    H, W = manifest["image_size"]
    ips = model.input(0).get_partial_shape()
    ok = ips.rank.is_static and ips.rank.get_length() == 4 and all(
        ips[d + 1].is_dynamic or ips[d + 1].get_length() == want for d, want in enumerate((3, H, W)))
    if not ok:
        raise EngineFormatError(f"{path}: model input has shape {ips}, engine.json says (B, 3, {H}, {W})")
    for f in manifest["features"]:
        try:
            ps = model.output(f["name"]).get_partial_shape()
        except RuntimeError as e:
            raise EngineFormatError(f"{path}: the model has no output named {f['name']}") from e
        ok = ps.rank.is_static and ps.rank.get_length() == 4 and all(
            ps[d + 1].is_static and ps[d + 1].get_length() == want for d, want in enumerate(f["shape"]))
        if not ok:
            raise EngineFormatError(f"{path}: model output {f['name']} has shape {ps}, engine.json says "
                                    f"(B, {', '.join(str(v) for v in f['shape'])})")


def _feature_port(model: Any, name: str) -> Any:
    # the port feeding the Result node, not the Result itself (a Model's outputs are Result nodes)
    return model.output(name).get_node().input_value(0)


def _distances(ops: Any, ov: Any, model: Any, eps: Any, s: int) -> Any:
    """(B, h, w) float32 cosine distance of scale s, the reference's formula, as graph operations."""
    axis1 = ops.constant(np.array([1], dtype=np.int64))
    t = _feature_port(model, FEATURE_NAMES[s])
    st = _feature_port(model, FEATURE_NAMES[s + 3])
    if t.get_element_type() != ov.Type.f32:
        t, st = ops.convert(t, "f32"), ops.convert(st, "f32")
    dot = ops.reduce_sum(ops.multiply(t, st), axis1, False)
    nt = ops.maximum(ops.sqrt(ops.reduce_sum(ops.multiply(t, t), axis1, False)), eps)
    ns = ops.maximum(ops.sqrt(ops.reduce_sum(ops.multiply(st, st), axis1, False)), eps)
    return ops.subtract(ops.constant(np.float32(1.0)), ops.divide(dot, ops.multiply(nt, ns)))


def append_distances(model: Any, manifest: dict) -> Any:
    """ov.Model image -> features  =>  ov.Model image -> three (B, h_s, w_s) float32 distances."""
    ov, ops = _ov()
    eps = ops.constant(np.float32(manifest["anomaly_map"]["eps"]))
    outs = []
    for s, name in enumerate(DISTANCE_OUTPUTS):
        d = _distances(ops, ov, model, eps, s)
        d.output(0).get_tensor().set_names({name})
        outs.append(d)
    return ov.Model(outs, model.get_parameters(), "cdd_engine_distances")


def append_anomaly_map(model: Any, manifest: dict) -> Any:
    """ov.Model image -> features  =>  ov.Model image -> (anomaly_map (B,H,W), score (B,)), float32."""
    ov, ops = _ov()
    am = manifest["anomaly_map"]
    H, W = manifest["image_size"]
    shapes = tuple((f["shape"][1], f["shape"][2]) for f in manifest["features"][:3])
    post = FastAnomalyMap((H, W), am["mode"], am["sigma"], am["truncate"], am["eps"])
    mats = post.matrices(shapes, torch.float32, torch.device("cpu"))
    eps = ops.constant(np.float32(am["eps"]))

    def const(t: torch.Tensor):
        return ops.constant(np.ascontiguousarray(t.numpy()))

    def distance(s: int):
        return _distances(ops, ov, model, eps, s)

    if am["mode"] == "add":
        a_cat, bts = mats
        rows = [ops.matmul(distance(s), const(bts[s]), False, False) for s in range(3)]  # (B, h_s, W)
        maps = ops.matmul(const(a_cat), ops.concat(rows, 1), False, False)  # (B, H, W)
    else:
        us, vts, gh, gwt = mats
        prod = None
        for s in range(3):
            up = ops.matmul(const(us[s]), ops.matmul(distance(s), const(vts[s]), False, False), False, False)
            prod = up if prod is None else ops.multiply(prod, up)
        maps = ops.matmul(const(gh), ops.matmul(prod, const(gwt), False, False), False, False)
    score = ops.reduce_max(maps, ops.constant(np.array([1, 2], dtype=np.int64)), False)
    maps.output(0).get_tensor().set_names({MAP_OUTPUT})
    score.output(0).get_tensor().set_names({SCORE_OUTPUT})
    return ov.Model([maps, score], model.get_parameters(), "cdd_engine_scored")


class OpenVINOBackend:
    """``score_batch(x (B,3,H,W) float32 CPU tensor) -> (maps (B,H,W), scores (B,))`` numpy arrays.

    Two ways of running a batch (``mode``):

    - ``latency``: one infer request over the whole batch, all threads on it
      (``PERFORMANCE_HINT=LATENCY``);
    - ``throughput``: the batch split into jobs of up to ``sub_batch`` images (default 1, 4 for
      INT8 engines: options.default_sub_batch; never fewer jobs than streams) run concurrently
      on the plugin's streams (``PERFORMANCE_HINT=THROUGHPUT``; 2 streams of 1 thread on 2 cores);
    - ``auto`` (default): latency for a single image, throughput for batches. Measured on the
      2-core development machine (benchmarks/RESULTS.md): a WRN50 batch of 8 as one request ran
      at about the per-image speed of batch 1 or worse (activations 8x larger than the caches),
      while two single-thread streams of one image each ran it faster and were less hurt by
      other processes on the same cores (no cross-thread barriers).

    Maps of a latency call are views of the thread's request buffers, overwritten by its next
    call: copy what must outlive it (Engine.score does).
    """

    name = "openvino"
    MODES = OPENVINO_MODES

    def __init__(self, engine_dir: str | os.PathLike, manifest: dict, *, num_threads: int | None = None,
                 mode: str = "auto", sub_batch: int | None = None, static_shapes: bool = True) -> None:
        # mode, sub_batch and static_shapes come checked from OpenVINOOptions (runtime/options.py,
        # through make_backend): the one place that validates them, for both runtimes
        ov, _ = _ov()
        self.device = torch.device("cpu")
        self.manifest = manifest
        self.mode = mode
        # None: by precision (up to 4 frames per job for INT8 engines, 1 otherwise; options.default_sub_batch)
        self.sub_batch = sub_batch or default_sub_batch(manifest["precision"], int(manifest["max_batch"]))
        self.static_shapes = bool(static_shapes)
        self._ov = ov
        self.core = ov.Core()
        xml = str(Path(engine_dir) / "model.xml")
        try:
            net = self.core.read_model(xml)
        except RuntimeError as e:  # the reader's own error types; the file's hash was checked already
            raise EngineFormatError(f"{xml}: OpenVINO cannot read the model ({e})") from e
        check_model(net, manifest, xml)
        self._features_model = net
        self._map_in_graph = manifest["precision"] == "fp32"
        if self._map_in_graph:
            self._scored_model = append_anomaly_map(net.clone(), manifest)
            self._outputs = {MAP_OUTPUT: tuple(manifest["image_size"]), SCORE_OUTPUT: ()}
        else:
            self._scored_model = append_distances(net.clone(), manifest)
            self._outputs = {name: tuple(f["shape"][1:]) for name, f in zip(DISTANCE_OUTPUTS, manifest["features"])}
            am = manifest["anomaly_map"]
            self._post = FastAnomalyMap(tuple(manifest["image_size"]), am["mode"], am["sigma"], am["truncate"],
                                        am["eps"])
        base: dict[str, Any] = {}
        # CPUs with AVX512-BF16/AMX default to bf16 inference; every engine computes in f32 except
        # what its IR quantizes: an INT8 engine's FakeQuantize'd convolutions run in int8 whatever the
        # hint, and the hint keeps its other layers and the distance graph out of bf16. (On an
        # AVX512-BF16 CPU the INT8 engine without it ran the cosine distances in bf16, and capped to
        # AVX2 its bf16 reorders took 41 of 96 ms; benchmarks/RESULTS.md.) docs/anomaly_map.md
        base["INFERENCE_PRECISION_HINT"] = "f32"
        if num_threads:
            base["INFERENCE_NUM_THREADS"] = int(num_threads)
        # Threads not pinned to cores: on cores shared with other processes a pinned thread waits for
        # its busy core while the other waits for it at the end of every layer. WRN50 RD, batch 1, on
        # the 2-core development machine (interleaved, benchmarks/RESULTS.md): unpinned 1.14-1.25x
        # faster in three runs at load 2.4-4.5, within 2 % of pinned when the cores were quiet.
        base["ENABLE_CPU_PINNING"] = False
        self.configs = {"latency": {**base, "PERFORMANCE_HINT": "LATENCY"},
                        "throughput": {**base, "PERFORMANCE_HINT": "THROUGHPUT"}}
        self._compiled: OrderedDict[tuple[str, str, int], Any] = OrderedDict()
        # the throughput plugin's stream count (its advised number of requests), learnt from the
        # first pool: it sizes the jobs before any model of the job size is compiled
        self._streams: int | None = None
        self._lock = threading.Lock()
        self._local = threading.local()

    def _compiled_for(self, kind: str, flavour: str, batch: int) -> Any:
        key = (kind, flavour, batch if self.static_shapes else -1)
        with self._lock:
            cm = self._compiled.get(key)
            if cm is not None:
                self._compiled.move_to_end(key)
                return cm
            model = (self._scored_model if kind == "score" else self._features_model).clone()
            if self.static_shapes:
                H, W = self.manifest["image_size"]
                model.reshape({model.inputs[0]: [batch, 3, H, W]})
            cm = self.core.compile_model(model, "CPU", self.configs[flavour])
            self._compiled[key] = cm
            while len(self._compiled) > MAX_COMPILED:
                self._compiled.popitem(last=False)
            return cm

    def _thread_cache(self) -> dict:
        cache = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = {}
        return cache

    def _request(self, kind: str, flavour: str, batch: int) -> Any:
        cm = self._compiled_for(kind, flavour, batch)
        cache = self._thread_cache()
        entry = cache.get(("req", kind, flavour, batch))
        if entry is None or entry[0] is not cm:
            entry = cache[("req", kind, flavour, batch)] = (cm, cm.create_infer_request())
        return entry[1]

    def _async_requests(self, batch: int) -> list:
        """This thread's pool of requests on the throughput model (one per stream, as the plugin advises)."""
        cm = self._compiled_for("score", "throughput", batch)
        cache = self._thread_cache()
        entry = cache.get(("pool", batch))
        if entry is None or entry[0] is not cm:
            n = max(1, int(cm.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
            self._streams = n
            entry = cache[("pool", batch)] = (cm, [cm.create_infer_request() for _ in range(n)])
        return entry[1]

    @staticmethod
    def _check(x: torch.Tensor) -> np.ndarray:
        if x.device.type != "cpu" or x.dtype != torch.float32 or not x.is_contiguous():
            raise ValueError(f"OpenVINO backend needs a contiguous float32 CPU tensor, got {x.dtype} on {x.device}")
        return x.numpy()

    def score_batch(self, x: torch.Tensor) -> tuple[Any, Any]:
        """-> (maps (B,H,W), scores (B,)): numpy arrays (fp32 engines) or float32 tensors."""
        outs = self._run_scored(self._check(x))
        if self._map_in_graph:
            return outs[MAP_OUTPUT], outs[SCORE_OUTPUT]
        return self._post.from_distances([torch.from_numpy(np.asarray(outs[n])) for n in DISTANCE_OUTPUTS])

    def _run_scored(self, arr: np.ndarray) -> dict[str, np.ndarray]:
        b = arr.shape[0]
        if self.mode == "latency" or (self.mode == "auto" and b == 1):
            out = self._request("score", "latency", b).infer({0: arr}, share_inputs=True, share_outputs=True)
            return {name: out[name] for name in self._outputs}
        res = {name: np.empty((b, *shape), dtype=np.float32) for name, shape in self._outputs.items()}
        streams = self._streams or len(self._async_requests(min(self.sub_batch, b)))  # first call only
        sub = min(self.sub_batch, b, -(-b // streams))  # never fewer jobs than streams (4 at 4 idles one)
        pool = self._async_requests(sub)
        full = b - b % sub
        started: list[int | None] = [None] * len(pool)  # first image of the job each request runs

        def collect(k: int) -> None:
            start = started[k]
            started[k] = None
            pool[k].wait()
            for name, a in res.items():
                a[start:start + sub] = pool[k].get_tensor(name).data

        try:
            # Round-robin over the pool without Python callbacks: a callback needs the GIL on a plugin
            # thread while the caller may hold it, which is how an AsyncInferQueue can deadlock.
            for j, start in enumerate(range(0, full, sub)):
                k = j % len(pool)
                if started[k] is not None:
                    collect(k)
                pool[k].start_async({0: arr[start:start + sub]}, share_inputs=True)
                started[k] = start
            if full < b:  # the remainder, meanwhile, as one request of its own size
                out = self._request("score", "throughput", b - full).infer({0: arr[full:]}, share_inputs=True)
                for name, a in res.items():
                    a[full:] = out[name]
            for k in range(len(pool)):
                if started[k] is not None:
                    collect(k)
        except BaseException:
            # no request may still read the caller's buffer after a failure, and none is reused
            for k in range(len(pool)):
                if started[k] is not None:
                    try:
                        pool[k].wait()
                    except Exception:  # noqa: BLE001 - the first error is the one reported
                        pass
            self._local.cache = None
            raise
        return res

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The network alone: six (B, C, h, w) float32 tensors (copies), for parity checks."""
        arr = self._check(x)
        out = self._request("features", "latency", arr.shape[0]).infer({0: arr}, share_inputs=True)
        return [torch.from_numpy(np.array(out[name])) for name in FEATURE_NAMES]
