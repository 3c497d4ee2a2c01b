"""Method-independent training machinery: seeding and determinism, the frozen teacher's
features served in seeded mini-batches, and one epoch of fitting a student toward a target.

RD fits its student toward the teacher's features; CDD (next issue) fits K domain students
the same way on their domains and a global student toward aggregated features of the other
domains' students. Both use :class:`TeacherFeatures` and :func:`fit_epoch`.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from .loss import rd_loss

Features = list[torch.Tensor]
# target_fn(indices (B,) int64 into the training set, teacher features) -> target features.
TargetFn = Callable[[torch.Tensor, Features], Features]
LossFn = Callable[[Features, Features], torch.Tensor]


# ----------------------------------------------------------------------------- seeding
def seed_everything(seed: int) -> torch.Generator:
    """Seed torch, numpy and python ``random``; return the generator that orders mini-batches."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    return torch.Generator().manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: derive numpy/random seeds from the worker's torch seed."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


@contextlib.contextmanager
def deterministic(enabled: bool = True, device: str = "cpu") -> Iterator[None]:
    """Run the body with deterministic algorithms (warn-only where an op has none), restoring
    the global settings afterwards so a library call does not change its caller's torch."""
    if not enabled:
        yield
        return
    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    if str(device).startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = prev[2], prev[3]


# ----------------------------------------------------------------------------- teacher features
def batch_indices(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    """Shuffled (or, without a generator, ordered) index batches covering 0..n-1 once.

    A trailing batch of one image is merged into the previous batch: BatchNorm in training
    mode cannot normalise a single image whose bottleneck is 1x1 (inputs below 64²).
    """
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        tail = batches.pop()
        batches[-1] = torch.cat([batches[-1], tail])
    return batches


class TeacherFeatures:
    """The frozen teacher's features of a fixed image set, in seeded mini-batches.

    RD uses no augmentation and the teacher never changes, so an image's features are the
    same in every epoch: with ``cache=True`` they are computed once (the teacher is ~85 % of
    an epoch's CPU time at 256² for efficientnet_lite0) and kept on the CPU as float32,
    n · Σ C_s·h_s·w_s · 4 bytes. Without the cache each batch is read through a DataLoader
    and passed through the teacher under ``no_grad``.

    Args:
        teacher_fn: (B,3,H,W) normalised images -> list of (B, C_s, h_s, w_s) features, no grad.
        dataset: items are dicts with "image" (3,H,W) float32 (cdd_engine.data.ImageDataset).
    """

    def __init__(self, teacher_fn: Callable[[torch.Tensor], Features], dataset: Dataset, batch_size: int,
                 device: str | torch.device = "cpu", cache: bool = True, num_workers: int = 0,
                 progress: bool = False, desc: str = "teacher features") -> None:
        self.teacher_fn = teacher_fn
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.num_workers = num_workers
        self.cached: Features | None = None
        self.cache_seconds = 0.0
        if cache:
            t0 = time.perf_counter()
            parts: list[Features] = []
            for _, feats in self._compute(batch_indices(len(dataset), batch_size, None), progress, desc):
                parts.append([f.cpu() for f in feats])
            self.cached = [torch.cat([p[s] for p in parts]) for s in range(len(parts[0]))]
            self.cache_seconds = time.perf_counter() - t0

    def __len__(self) -> int:
        return len(self.dataset)

    @staticmethod
    def bytes_per_image(teacher_fn: Callable[[torch.Tensor], Features], image_size: tuple[int, int],
                        device: str | torch.device = "cpu") -> int:
        """float32 bytes of one image's features (measured on a probe image of the model size)."""
        with torch.no_grad():
            feats = teacher_fn(torch.zeros(1, 3, *image_size, device=device))
        return sum(f[0].numel() * 4 for f in feats)

    def _compute(self, batches: Sequence[torch.Tensor], progress: bool, desc: str
                 ) -> Iterator[tuple[torch.Tensor, Features]]:
        from tqdm.auto import tqdm
        loader = DataLoader(self.dataset, batch_sampler=[b.tolist() for b in batches],
                            num_workers=self.num_workers, worker_init_fn=seed_worker,
                            generator=torch.Generator().manual_seed(0))  # workers draw nothing random
        bar = tqdm(total=len(self.dataset), desc=desc, unit="img", disable=not progress, leave=False)
        try:
            for idx, item in zip(batches, loader):
                with torch.no_grad():
                    feats = self.teacher_fn(item["image"].to(self.device))
                bar.update(len(idx))
                yield idx, feats
        finally:
            bar.close()

    def batches(self, generator: torch.Generator | None, batch_size: int | None = None
                ) -> Iterator[tuple[torch.Tensor, Features]]:
        """One pass in an order drawn from ``generator`` (None: dataset order) ->
        (indices (B,), [(B, C_s, h_s, w_s) on self.device])."""
        return self.batches_of(batch_indices(len(self), batch_size or self.batch_size, generator))

    def batches_of(self, order: Sequence[torch.Tensor]) -> Iterator[tuple[torch.Tensor, Features]]:
        """The features of given index batches, in the given order (any subset of the images,
        e.g. one CDD domain) -> (indices (B,), [(B, C_s, h_s, w_s) on self.device]) per batch.

        ``order``: int64 index tensors into the data set, each non-empty; served from the cache
        when there is one, else read and passed through the teacher batch by batch.
        """
        order = list(order)
        n = len(self)
        for b in order:
            if not isinstance(b, torch.Tensor) or b.dtype != torch.int64 or b.dim() != 1 or b.numel() == 0:
                raise TypeError(f"batches_of expects non-empty 1-D int64 index tensors, got "
                                f"{type(b).__name__} {getattr(b, 'dtype', '')} {tuple(getattr(b, 'shape', ()))}")
            if int(b.min()) < 0 or int(b.max()) >= n:
                raise ValueError(f"batches_of: indices must be in [0, {n}), got {int(b.min())}..{int(b.max())}")
        return self._serve(order)

    def _serve(self, order: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, Features]]:
        if self.cached is None:
            yield from self._compute(order, False, "")
            return
        for idx in order:
            yield idx, [f[idx].to(self.device) for f in self.cached]


# ----------------------------------------------------------------------------- one epoch
@dataclass
class EpochStats:
    loss: float            # mean loss per image
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else math.inf


def fit_epoch(student: nn.Module, batches: Iterator[tuple[torch.Tensor, Features]],
              optimizer: torch.optim.Optimizer, target_fn: TargetFn | None = None, loss_fn: LossFn = rd_loss,
              progress: bool = False, desc: str = "train", total: int | None = None) -> EpochStats:
    """One pass of ``student`` (teacher features -> features of the same shapes) toward
    ``target_fn(indices, teacher_feats)`` (default: the teacher features themselves = RD).

    Raises RuntimeError when the loss stops being finite (say which batch; lower the lr).
    """
    from tqdm.auto import tqdm
    student.train()
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False)
    t0, seen, loss_sum = time.perf_counter(), 0, 0.0
    try:
        for step, (idx, feats) in enumerate(batches):
            target = feats if target_fn is None else target_fn(idx, feats)
            loss = loss_fn(target, student(feats))
            if not torch.isfinite(loss):
                raise RuntimeError(f"{desc}: the loss became {loss.item()} at batch {step}; "
                                   f"training diverged (try a lower learning rate)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = len(idx)
            seen += n
            loss_sum += loss.item() * n
            bar.update(n)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}")  # the bar's own rate is the one images/s figure
    finally:
        bar.close()
    if seen == 0:
        raise ValueError(f"{desc}: no training images")
    return EpochStats(loss_sum / seen, seen, time.perf_counter() - t0)


def make_adam(params, lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """RD4AD's optimiser: Adam(lr 0.005, betas (0.5, 0.999)) by default. ``foreach=False`` keeps
    the update the same single-tensor code path on every machine (bit-identical resume)."""
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), foreach=False)
