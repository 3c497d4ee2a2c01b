"""OpenVINO backend (CPU): the IR network with the anomaly map appended to its graph.

At load the runtime reads ``model.xml`` (image -> six feature maps) and appends DESIGN.md §3
as OpenVINO operations: per-pixel cosine distance (multiply, reduce over channels, sqrt,
max(., eps)), then the separable upsample+blur as MatMuls with the constant matrices of
:mod:`cdd_engine.runtime.postprocess` (``A_s d_s B_s^T`` summed for ``add``; upsample,
multiply, blur for ``mul``), then the max. The CPU plugin runs that on its own threads with
fused kernels, and the 14.7 MB/image of WRN50 features never reach Python. Measured on the
2-core development machine (batch 8, WRN50 feature shapes): 3.6 ms/image in the graph
against 6-10 ms/image for the torch fast path and 30+ ms for the eager reference.

Compiled models are cached per batch size with static shapes (static shapes let the CPU
plugin pick its kernels once; see benchmarks/RESULTS.md for the measured difference), and
each thread gets its own infer request, so one Engine may be shared by threads.
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

from ..engine_dir import FEATURE_NAMES
from ..errors import BackendUnavailable
from ..postprocess import FastAnomalyMap

log = logging.getLogger("cdd_engine.runtime")
MAP_OUTPUT, SCORE_OUTPUT = "anomaly_map", "score"
# Compiled static-shape models kept at once: batch 1, the max batch and a remainder cover a
# stream of max-batch chunks; each holds its own repacked weights (~0.5 GB for WRN50 RD).
MAX_COMPILED = 3


def _ov():
    try:
        import openvino as ov
        import openvino.opset13 as ops
    except ImportError as e:  # pragma: no cover - openvino is an install requirement
        raise BackendUnavailable(f"OpenVINO is not installed: {e} (pip install openvino)") from e
    return ov, ops


def append_anomaly_map(model: Any, manifest: dict) -> Any:
    """ov.Model image -> features  =>  ov.Model image -> (anomaly_map (B,H,W), score (B,)), float32."""
    ov, ops = _ov()
    am = manifest["anomaly_map"]
    H, W = manifest["image_size"]
    shapes = tuple((f["shape"][1], f["shape"][2]) for f in manifest["features"][:3])
    post = FastAnomalyMap((H, W), am["mode"], am["sigma"], am["truncate"], am["eps"])
    mats = post.matrices(shapes, torch.float32, torch.device("cpu"))
    axis1 = ops.constant(np.array([1], dtype=np.int64))
    eps = ops.constant(np.float32(am["eps"]))

    def const(t: torch.Tensor):
        return ops.constant(np.ascontiguousarray(t.numpy()))

    def feature(name: str):
        # the port feeding the Result node, not the Result itself (a Model's outputs are Result nodes)
        return model.output(name).get_node().input_value(0)

    def distance(s: int):
        t = feature(FEATURE_NAMES[s])
        st = feature(FEATURE_NAMES[s + 3])
        if t.get_element_type() != ov.Type.f32:
            t, st = ops.convert(t, "f32"), ops.convert(st, "f32")
        dot = ops.reduce_sum(ops.multiply(t, st), axis1, False)
        nt = ops.maximum(ops.sqrt(ops.reduce_sum(ops.multiply(t, t), axis1, False)), eps)
        ns = ops.maximum(ops.sqrt(ops.reduce_sum(ops.multiply(st, st), axis1, False)), eps)
        return ops.subtract(ops.constant(np.float32(1.0)), ops.divide(dot, ops.multiply(nt, ns)))  # (B, h, w)

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
    """``score_batch(x (B,3,H,W) float32 CPU tensor) -> (maps (B,H,W), scores (B,))`` numpy views.

    The returned arrays belong to the calling thread's infer request and are overwritten
    by its next call: copy what must outlive it (Engine.score does).
    """

    name = "openvino"

    def __init__(self, engine_dir: str | os.PathLike, manifest: dict, *, num_threads: int | None = None,
                 performance_hint: str = "LATENCY", static_shapes: bool = True) -> None:
        ov, _ = _ov()
        self.device = torch.device("cpu")
        self.manifest = manifest
        self.static_shapes = bool(static_shapes)
        self.core = ov.Core()
        net = self.core.read_model(str(Path(engine_dir) / "model.xml"))
        self._features_model = net
        self._scored_model = append_anomaly_map(net.clone(), manifest)
        self.config: dict[str, Any] = {"PERFORMANCE_HINT": performance_hint}
        if manifest["precision"] == "fp32":
            # CPUs with bf16/AMX default to bf16 inference; fp32 engines must stay fp32 (DESIGN.md §3)
            self.config["INFERENCE_PRECISION_HINT"] = "f32"
        if num_threads:
            self.config["INFERENCE_NUM_THREADS"] = int(num_threads)
        self._compiled: OrderedDict[tuple[str, int], Any] = OrderedDict()
        self._lock = threading.Lock()
        self._local = threading.local()

    def _compiled_for(self, kind: str, batch: int) -> Any:
        key = (kind, batch if self.static_shapes else -1)
        with self._lock:
            cm = self._compiled.get(key)
            if cm is not None:
                self._compiled.move_to_end(key)
                return cm
            model = (self._scored_model if kind == "score" else self._features_model).clone()
            if self.static_shapes:
                H, W = self.manifest["image_size"]
                model.reshape({model.inputs[0]: [batch, 3, H, W]})
            cm = self.core.compile_model(model, "CPU", self.config)
            self._compiled[key] = cm
            while len(self._compiled) > MAX_COMPILED:
                self._compiled.popitem(last=False)
            return cm

    def _request(self, kind: str, batch: int) -> Any:
        cm = self._compiled_for(kind, batch)
        reqs = getattr(self._local, "requests", None)
        if reqs is None:
            reqs = self._local.requests = {}
        entry = reqs.get((kind, batch))
        if entry is None or entry[0] is not cm:
            entry = reqs[(kind, batch)] = (cm, cm.create_infer_request())
        return entry[1]

    def _run(self, kind: str, x: torch.Tensor) -> Any:
        if x.device.type != "cpu" or x.dtype != torch.float32 or not x.is_contiguous():
            raise ValueError(f"OpenVINO backend needs a contiguous float32 CPU tensor, got {x.dtype} on {x.device}")
        req = self._request(kind, int(x.shape[0]))
        return req.infer({0: x.numpy()}, share_inputs=True, share_outputs=True)

    def score_batch(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        out = self._run("score", x)
        return out[MAP_OUTPUT], out[SCORE_OUTPUT]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The network alone: six (B, C, h, w) float32 tensors (copies), for parity checks."""
        out = self._run("features", x)
        return [torch.from_numpy(np.array(out[name])) for name in FEATURE_NAMES]
