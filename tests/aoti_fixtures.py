"""The tiny aoti engine shared by the AOTInductor tests (Python: tests/test_aoti.py; C++ loader:
tests/test_native_aoti.py): a random-teacher efficientnet_lite0 RD at 64² (the tiny model of
tests/rd_fixtures.py) with non-trivial BatchNorm statistics, written as a run directory and
built with ``cdd_engine.build(run, backend="aoti", device="cpu")``. The package compiles in
~30-45 s on 2 cores, so it is built once per test process (``tiny_aoti_engine_dir``) and the
session-scoped fixture ``tiny_aoti_engine`` hands out that directory (read-only: copy it with
``shutil.copytree`` before damaging it).

    from aoti_fixtures import tiny_aoti_engine, tiny_aoti_model  # noqa: F401 (fixtures)
"""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from cdd_engine.models import RDModel, build_rd_model

BACKBONE = "efficientnet_lite0"  # tests/rd_fixtures.py TINY
IMAGE_SIZE = 64
MAX_BATCH = 4
THRESHOLD = 0.75
SEED = 0

_ROOT = Path(tempfile.mkdtemp(prefix="cdd_engine_aoti_"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def tiny_model(seed: int = SEED) -> RDModel:
    """The random-teacher RD model (eval mode) the tiny engine is built from; its BatchNorm running
    statistics are non-trivial so that folding them into the convolutions is exercised."""
    model = build_rd_model(BACKBONE, pretrained=False, image_size=IMAGE_SIZE, seed=seed).eval()
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(1.0 + 0.2 * torch.randn(m.weight.shape, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model


@functools.lru_cache(maxsize=None)
def tiny_run_dir() -> Path:
    """A run directory (config.json, weights, train_scores.json) holding :func:`tiny_model`."""
    from engine_helpers import write_run_dir

    return write_run_dir(_ROOT / "run", tiny_model(), threshold=THRESHOLD)


def build_tiny_aoti_engine(tmp_dir: str | Path, precision: str = "fp32", max_batch: int = MAX_BATCH) -> Path:
    """Build the tiny aoti engine (CPU package) into ``tmp_dir`` (created or replaced); returns it."""
    import cdd_engine

    out = Path(tmp_dir)
    cdd_engine.build(tiny_run_dir(), backend="aoti", precision=precision, max_batch=max_batch, output_dir=out,
                     device="cpu", overwrite=True)
    return out


@functools.lru_cache(maxsize=None)
def tiny_aoti_engine_dir(precision: str = "fp32") -> Path:
    """The tiny aoti engine of ``precision``, built once per test process (do not modify it)."""
    return build_tiny_aoti_engine(_ROOT / f"engine_aoti_{precision}", precision)


@pytest.fixture(scope="session")
def tiny_aoti_engine() -> Path:
    """Directory of the tiny fp32 aoti engine (CPU), built once per session."""
    return tiny_aoti_engine_dir("fp32")


@pytest.fixture(scope="session")
def tiny_aoti_model() -> RDModel:
    """The RDModel the tiny aoti engine was built from (the reference)."""
    return tiny_model()
