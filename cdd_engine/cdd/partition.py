"""Fixed partition of the training set into K domains (CDD's Domain-Specific Training).

The partition is drawn once per run and never changes. CDD fixes only that the training set
is split into K domains; *how* is our choice, so both strategies are options:

- ``random``: a seeded permutation cut into K near-equal parts. Every domain gets about 1/K of
  every defect kind present in the training set.
- ``cluster``: seeded k-means (k-means++ start, Lloyd iterations, written in torch) on pooled,
  standardised teacher features. Images that look alike (e.g. the same recurring defect kind,
  or the same texture variant) tend to land in the same domain, so the *other* domains'
  students never saw them. By default the assignment is **balanced** (every domain holds
  floor(n/K) or ceil(n/K) images): each domain student then gets the same amount of data, and
  an unbalanced k-means on textures can make a domain of a handful of images whose student
  is a poor target provider for everyone else. ``balanced=False`` gives plain k-means.

Domain ids are returned as an int64 tensor ``(n,)`` with values in ``[0, K)``; every domain is
non-empty.
"""
from __future__ import annotations

from typing import Sequence

import torch

STRATEGIES = ("random", "cluster")
POOLINGS = ("mean", "max", "meanmax")
KMEANS_ITERS = 50     # Lloyd iterations; on a few hundred images k-means settles in < 20
KMEANS_RESTARTS = 4   # k-means++ starts; the lowest inertia wins (cheap: n*K*d per iteration)


def _check_nk(n: int, k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"number of domains must be an int, got {type(k).__name__}")
    if k < 2:
        raise ValueError(f"CDD needs at least 2 domains (a target comes from the *other* domains), got {k}")
    if n < k:
        raise ValueError(f"cannot split {n} training images into {k} non-empty domains")


def random_partition(n: int, k: int, seed: int) -> torch.Tensor:
    """Seeded random split of n images into k domains of size floor(n/k) or ceil(n/k) -> (n,) int64."""
    _check_nk(n, k)
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=g)
    domains = torch.empty(n, dtype=torch.int64)
    domains[perm] = torch.arange(n) % k
    return domains


def pooled_features(teacher_feats: Sequence[torch.Tensor], pooling: str = "meanmax") -> torch.Tensor:
    """Teacher features [(B,C_s,h_s,w_s)] -> (B, D) image descriptors for clustering.

    "mean" = global average per channel and scale, "max" = global max (a small defect moves the
    max far more than the mean), "meanmax" = both concatenated (default).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    parts = []
    for f in teacher_feats:
        if f.dim() != 4:
            raise ValueError(f"teacher features must be (B,C,h,w), got {tuple(f.shape)}")
        f = f.float()
        if pooling in ("mean", "meanmax"):
            parts.append(f.mean(dim=(2, 3)))
        if pooling in ("max", "meanmax"):
            parts.append(f.amax(dim=(2, 3)))
    return torch.cat(parts, dim=1)


def _standardise(x: torch.Tensor) -> torch.Tensor:
    # z-score per dimension so that no scale/channel dominates the Euclidean distance
    return (x - x.mean(0)) / x.std(0, unbiased=False).clamp_min(1e-6)


def _kmeanspp(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    centers = [x[torch.randint(n, (1,), generator=g)].squeeze(0)]
    d2 = ((x - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / n)
        i = torch.multinomial(p, 1, generator=g)
        centers.append(x[i].squeeze(0))
        d2 = torch.minimum(d2, ((x - centers[-1]) ** 2).sum(1))
    return torch.stack(centers)


def _balanced_assign(dist: torch.Tensor) -> torch.Tensor:
    """Greedy size-constrained assignment: pairs (image, cluster) in increasing distance, each
    image to the nearest cluster that still has room; capacities floor/ceil(n/K)."""
    n, k = dist.shape
    cap = torch.full((k,), n // k, dtype=torch.int64)
    cap[: n % k] += 1
    order = torch.argsort(dist.flatten(), stable=True)
    assign = torch.full((n,), -1, dtype=torch.int64)
    left = n
    for flat in order.tolist():
        i, c = divmod(flat, k)
        if assign[i] >= 0 or cap[c] == 0:
            continue
        assign[i] = c
        cap[c] -= 1
        left -= 1
        if left == 0:
            break
    return assign


def kmeans(x: torch.Tensor, k: int, seed: int, balanced: bool = True, iters: int = KMEANS_ITERS,
           restarts: int = KMEANS_RESTARTS) -> torch.Tensor:
    """Seeded k-means of (n, D) points -> (n,) int64 cluster ids in [0, k), every cluster non-empty.

    float64 on the CPU so that the result does not depend on the device or thread count.
    """
    if x.dim() != 2:
        raise ValueError(f"k-means needs (n, D) points, got shape {tuple(x.shape)}")
    _check_nk(x.shape[0], k)
    x = x.detach().to("cpu", torch.float64)
    g = torch.Generator().manual_seed(int(seed))
    best, best_inertia = None, float("inf")
    for _ in range(restarts):
        centers = _kmeanspp(x, k, g)
        assign = None
        for _ in range(iters):
            dist = torch.cdist(x, centers) ** 2
            new = _balanced_assign(dist) if balanced else dist.argmin(1)
            if assign is not None and torch.equal(new, assign):
                break
            assign = new
            for c in range(k):
                members = x[assign == c]
                # an emptied cluster (unbalanced only) restarts at the point farthest from its centre
                centers[c] = members.mean(0) if len(members) else x[dist.min(1).values.argmax()]
        if not balanced:
            for c in range(k):  # guarantee non-empty domains: steal the farthest point of the largest
                if (assign == c).sum() == 0:
                    big = torch.bincount(assign, minlength=k).argmax()
                    idx = (assign == big).nonzero().squeeze(1)
                    far = idx[(torch.cdist(x[idx], centers[big][None]) ** 2).squeeze(1).argmax()]
                    assign[far] = c
        inertia = sum(float(((x[assign == c] - centers[c]) ** 2).sum()) for c in range(k))
        if inertia < best_inertia:
            best, best_inertia = assign.clone(), inertia
    return best


def cluster_partition(descriptors: torch.Tensor, k: int, seed: int, balanced: bool = True) -> torch.Tensor:
    """k-means on standardised (n, D) image descriptors (see :func:`pooled_features`) -> (n,) ids."""
    if descriptors.dim() != 2:
        raise ValueError(f"descriptors must be (n, D), got {tuple(descriptors.shape)}")
    return kmeans(_standardise(descriptors.double()), k, seed, balanced)


def make_partition(strategy: str, n: int, k: int, seed: int,
                   descriptors: torch.Tensor | None = None, balanced: bool = True) -> torch.Tensor:
    """Dispatch on ``strategy`` ("random" | "cluster"); "cluster" needs (n, D) ``descriptors``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"partition must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "random":
        return random_partition(n, k, seed)
    if descriptors is None:
        raise ValueError("partition='cluster' needs image descriptors (pooled teacher features)")
    if descriptors.shape[0] != n:
        raise ValueError(f"got descriptors for {descriptors.shape[0]} images but the training set has {n}")
    return cluster_partition(descriptors, k, seed, balanced)
