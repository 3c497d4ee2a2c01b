"""Shared by the engine tests: a tiny random-teacher RD model, a run directory written through
``cdd_engine.checkpoint``, engines built once per test process, frames and the reference pipeline.

The model is ``resnet18`` at 64² (features (64,16,16), (128,8,8), (256,4,4)): an OpenVINO engine
builds in ~15 s on 2 cores (dynamo ONNX export + onnxruntime check + IR conversion), a torch
engine in ~1 s. Engines are cached per process in one temporary directory removed at exit.
"""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cdd_engine.anomaly_map import anomaly_map
from cdd_engine.models import RDModel, build_rd_model
from cdd_engine.preprocess import resize_normalize

BACKBONE = "resnet18"
IMAGE_SIZE = 64
THRESHOLD = 0.75
MAX_BATCH = 4
RTOL = 1e-5  # docs/anomaly_map.md: fp32 paths vs the float64 reference

_ROOT = Path(tempfile.mkdtemp(prefix="cdd_engine_tests_"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


def tiny_model(seed: int = 0) -> RDModel:
    """Random-teacher RD model in eval mode with non-trivial BatchNorm statistics."""
    model = build_rd_model(BACKBONE, pretrained=False, image_size=IMAGE_SIZE, seed=seed).eval()
    # BatchNorm running statistics of a fresh model are (0, 1); give them non-trivial values so
    # the exported graph's folded BN is exercised.
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def write_run_dir(run_dir: Path, model: RDModel, threshold: float = THRESHOLD, mode: str = "add",
                  sigma: float = 4.0) -> Path:
    """A run directory as training writes it (config.json, student/teacher safetensors, train_scores.json)."""
    from cdd_engine import checkpoint as ckpt
    from cdd_engine.models.teachers import teacher_spec

    run_dir.mkdir(parents=True, exist_ok=True)
    spec = teacher_spec(model.backbone)
    student_cfg = {"class": "Student", "channels": list(model.teacher.stage_channels), "width_mult": spec.width_mult,
                   "bottleneck_blocks": len(model.student.bottleneck.embed),
                   "decoder_blocks": [len(s) for s in model.student.decoder.stages]}
    config = {"model": ckpt.model_config(model, None, mode, sigma, student_cfg), "method": "rd",
              "data": {}, "training": {}, "epoch": 1}
    ckpt.save_checkpoint(run_dir, config, {"student": model.student}, {}, torch.Generator(), teacher=model.teacher)
    ckpt.write_json(run_dir / ckpt.SCORES_FILE, {"epoch": 1, "threshold": threshold,
                                                 "rule": {"name": "median_mad", "k": 3.0},
                                                 "scores": [{"path": f"{i}.png", "score": 0.5 + 0.01 * i}
                                                            for i in range(5)]})
    return run_dir


@functools.lru_cache(maxsize=None)
def model_and_run_dir() -> tuple[RDModel, Path]:
    model = tiny_model()
    return model, write_run_dir(_ROOT / "run", model)


@functools.lru_cache(maxsize=None)
def engine_dir(backend: str) -> Path:
    """Engine directory for ``backend`` built from the cached run directory (once per process)."""
    import cdd_engine

    _, run = model_and_run_dir()
    out = _ROOT / f"engine_{backend}"
    cdd_engine.build(run, backend=backend, max_batch=MAX_BATCH, output_dir=out)
    return out


def copy_engine(backend: str, dest: Path) -> Path:
    """A private copy of a cached engine directory (for tests that damage it)."""
    return Path(shutil.copytree(engine_dir(backend), dest))


def frames(n: int, h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    """(n, h, w, c) uint8: smooth structure plus noise and a bright blob (never constant)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.empty((n, h, w, c), dtype=np.uint8)
    for i in range(n):
        base = 128 + 60 * np.sin(xx / (3 + i) + rng.uniform(0, 6)) * np.cos(yy / 5 + rng.uniform(0, 6))
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        blob = 90 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.1 * min(h, w) + 1) ** 2))
        img = base[..., None] + blob[..., None] + rng.normal(0, 20, size=(h, w, c))
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def reference(model: RDModel, frame_list, pixel_format: str = "RGB", mode: str = "add",
              sigma: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """The reference pipeline frame by frame: resize_normalize -> model (fp32) -> anomaly_map in
    float64. Returns maps (N, H, W) and scores (N,) as float64 numpy."""
    maps, scores = [], []
    mean, std = model.normalization
    with torch.no_grad():
        for f in frame_list:
            f = np.asarray(f)
            arr = f[None, ..., None] if f.ndim == 2 else f[None]
            x = resize_normalize(arr, model.image_size, mean, std, pixel_format)
            t, s = model(x)
            m, sc = anomaly_map([a.double() for a in t], [b.double() for b in s], model.image_size, mode, sigma)
            maps.append(m[0].numpy())
            scores.append(float(sc[0]))
    return np.stack(maps), np.array(scores)


def rel_err(got, want) -> float:
    """max |got - want| / max |want| (the relative measure of the tolerances of docs/anomaly_map.md)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


class MicroRD(torch.nn.Module):
    """Three strided convolutions (teacher) + three 1x1 convolutions (student) with RD's output
    contract (``forward(x) -> (teacher list, student list)``, ``image_size``, ``normalization``):
    for tests of export mechanics, where a real RD graph would only add tracing time."""

    backbone = "micro"

    def __init__(self, image_size: int = 32, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.image_size = (image_size, image_size)
        self.normalization = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        self.t = torch.nn.ModuleList([torch.nn.Conv2d(3, 8, 3, stride=4, padding=1),
                                      torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
                                      torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)])
        self.s = torch.nn.ModuleList([torch.nn.Conv2d(c, c, 1) for c in (8, 16, 32)])

    def forward(self, x: torch.Tensor):
        feats, h = [], x
        for conv in self.t:
            h = torch.tanh(conv(h))
            feats.append(h)
        return feats, [s(f) for s, f in zip(self.s, feats)]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors gain nothing from a second intra-op thread, and on shared cores OpenMP threads
    waiting for each other make small ops several times slower; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
