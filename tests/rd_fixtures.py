"""Tiny data sets and runs shared by the training, checkpoint and CLI tests (random pixels,
random teacher, 64² images: seconds on 2 cores)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

TINY = dict(backbone="efficientnet_lite0", teacher_weights="random", image_size=64, batch_size=4,
            progress=False)


def write_tiny_mvtec(root: Path, category: str = "widget", n_train: int = 9, n_good: int = 3,
                     n_bad: int = 4, size: int = 48, seed: int = 0) -> Path:
    """MVTec layout with random RGB images; defects are a bright square with its mask."""
    rng = np.random.default_rng(seed)
    cat = root / category
    for d in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        (cat / d).mkdir(parents=True, exist_ok=True)

    def img() -> np.ndarray:
        return rng.integers(40, 200, size=(size, size, 3), dtype=np.uint8)

    for i in range(n_train):
        Image.fromarray(img()).save(cat / "train/good" / f"{i:03d}.png")
    for i in range(n_good):
        Image.fromarray(img()).save(cat / "test/good" / f"{i:03d}.png")
    for i in range(n_bad):
        a = img()
        y, x = rng.integers(4, size - 16, size=2)
        a[y:y + 12, x:x + 12] = 255
        m = np.zeros((size, size), np.uint8)
        m[y:y + 12, x:x + 12] = 255
        Image.fromarray(a).save(cat / "test/spot" / f"{i:03d}.png")
        Image.fromarray(m).save(cat / "ground_truth/spot" / f"{i:03d}_mask.png")
    return root


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors gain nothing from a second thread, and on shared cores OpenMP threads
    waiting for each other made these tests ~3x slower; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def one_step_then_crash(real_fit, student, batches, *args, **kwargs):
    """``real_fit`` on the first batch of ``batches`` only, then a KeyboardInterrupt: a run killed
    in the middle of an epoch, after one optimizer step (for the resume tests)."""
    def first_then_crash():
        it = iter(batches)
        yield next(it)
        raise KeyboardInterrupt
    return real_fit(student, first_then_crash(), *args, **kwargs)
