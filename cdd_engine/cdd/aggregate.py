"""Cross-Domain Knowledge Aggregation: the global student's targets.

For a training image x in domain k, the target at each scale is an aggregate of the features
that the students of the *other* domains (j != k) produce for x, computed without gradient.
Those students never saw x, so where x is defective they output normal-looking features.

Our choices (CDD fixes only "aggregate of the other domains' students"), all options:

- ``reduce``: "mean" (default) or "median" (element-wise; robust when one of the other
  students happens to reproduce a defect it saw in its own domain; with K-1 = 2 it equals the
  mean).
- ``normalize``: each student's features are L2-normalised over channels at every pixel
  before aggregating (default True). The RD loss and the anomaly map are cosine-based, so a
  student's feature norm carries no meaning; without this a student with larger norms would
  dominate the mean.
- ``teacher_share`` (alpha): target = (1 - alpha) * aggregate + alpha * teacher (normalised the
  same way). alpha = 0 is pure CDD, alpha = 1 is plain RD.
- ``teacher_gate`` (q): per image and scale, the fraction q of pixels where the aggregate is
  closest (cosine) to the teacher take the teacher's feature as target; the rest keep the
  aggregate. Why: a clean pixel's aggregate differs from the teacher only by the other
  students' reconstruction error, which the global student would otherwise learn (CDD's
  accuracy gap to RD on clean data), while a pixel of a defect the other domains never
  learned is far from the teacher and keeps its pseudo-normal target. q = 0 is pure CDD,
  q = 1 is plain RD. Per image (not per batch), so the targets do not depend on batching
  or on how the batch is sharded over ranks.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

REDUCTIONS = ("mean", "median")


def _check_domains(domains: torch.Tensor, batch: int, k: int) -> torch.Tensor:
    if not isinstance(domains, torch.Tensor) or domains.dim() != 1 or domains.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"domains must be a 1-D integer tensor, got {getattr(domains, 'dtype', type(domains))} "
                        f"of shape {tuple(getattr(domains, 'shape', ()))}")
    if domains.numel() != batch:
        raise ValueError(f"got {domains.numel()} domain ids for a batch of {batch} images")
    if batch and (int(domains.min()) < 0 or int(domains.max()) >= k):
        raise ValueError(f"domain ids must lie in [0, {k}), got [{int(domains.min())}, {int(domains.max())}]")
    return domains.long()


def aggregate_other_domains(outputs: Sequence[Sequence[torch.Tensor]], domains: torch.Tensor,
                            reduce: str = "mean", normalize: bool = True) -> list[torch.Tensor]:
    """Aggregate per-student features, leaving out each image's own domain.

    Args:
        outputs: ``outputs[j][s]`` = features of domain student j at scale s for the whole
            batch, (B, C_s, h_s, w_s); K >= 2 students.
        domains: (B,) domain id of every image of the batch.
        reduce: "mean" or "median" over the K-1 other students.
        normalize: L2-normalise each student's features over channels first.

    Returns:
        one (B, C_s, h_s, w_s) target per scale; image b's target never uses outputs[domains[b]].
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    k = len(outputs)
    if k < 2:
        raise ValueError(f"need the outputs of at least 2 domain students, got {k}")
    n_scales = len(outputs[0])
    if any(len(o) != n_scales for o in outputs):
        raise ValueError("every domain student must give the same number of scales")
    batch = outputs[0][0].shape[0]
    domains = _check_domains(domains, batch, k).to(outputs[0][0].device)
    # others[j, b] is True when student j may supply the target of image b
    others = torch.arange(k, device=domains.device)[:, None] != domains[None, :]  # (K, B)
    targets = []
    for s in range(n_scales):
        stack = torch.stack([o[s].detach() for o in outputs])  # (K, B, C, h, w)
        if normalize:
            stack = F.normalize(stack, dim=2, eps=1e-8)
        mask = others[:, :, None, None, None].to(stack.dtype)
        if reduce == "mean":
            agg = (stack * mask).sum(0) / (k - 1)
        else:
            # own domain -> +inf so it sorts last; the K-1 others fill the first K-1 slots
            filled = stack.masked_fill(~others[:, :, None, None, None], float("inf"))
            ordered = filled.sort(dim=0).values
            n = k - 1
            agg = 0.5 * (ordered[(n - 1) // 2] + ordered[n // 2])
        targets.append(agg)
    return targets


def _fraction(name: str, value: float) -> float:
    """A teacher fraction, checked to be in [0, 1] (0: the targets stay as they are)."""
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


def _teacher_like(teacher_feats: Sequence[torch.Tensor], normalize: bool) -> list[torch.Tensor]:
    """The teacher's features as a target: detached, L2-normalised over channels like the students'."""
    return [F.normalize(f.detach(), dim=1, eps=1e-8) if normalize else f.detach() for f in teacher_feats]


def mix_teacher(targets: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor], share: float,
                normalize: bool = True) -> list[torch.Tensor]:
    """(1 - share) * targets + share * teacher per scale (teacher normalised like the targets)."""
    if _fraction("teacher_share", share) == 0.0:
        return list(targets)
    return _mix(targets, _teacher_like(teacher_feats, normalize), share)


def _mix(targets: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], share: float) -> list[torch.Tensor]:
    return [(1.0 - share) * t + share * f for t, f in zip(targets, teacher)]


def gate_teacher(targets: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor], keep: float,
                 normalize: bool = True) -> list[torch.Tensor]:
    """Per image and scale, the ``keep`` fraction of pixels where ``targets`` is closest (cosine
    distance) to the teacher take the teacher's feature (normalised like the targets).

    targets[s], teacher_feats[s]: (B, C_s, h_s, w_s). keep in [0, 1]: 0 returns the targets,
    1 the teacher's features. The cut is each image's ``keep``-quantile of its pixel distances
    (lower interpolation, so it is one of the distances: ties at the cut all go to the teacher).
    """
    if _fraction("teacher_gate", keep) == 0.0:
        return list(targets)
    return _gate(targets, _teacher_like(teacher_feats, normalize), keep)


def _gate(targets: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], keep: float) -> list[torch.Tensor]:
    out = []
    for t, f in zip(targets, teacher):
        dist = (1.0 - F.cosine_similarity(t, f, dim=1, eps=1e-8)).flatten(1)  # (B, h*w)
        if dist.dtype not in (torch.float32, torch.float64):  # quantile's dtypes; compare in the same one
            dist = dist.float()
        cut = torch.quantile(dist, float(keep), dim=1, keepdim=True, interpolation="lower")
        use_teacher = (dist <= cut).view(t.shape[0], 1, *t.shape[2:])
        out.append(torch.where(use_teacher, f, t))
    return out


@torch.no_grad()
def cross_domain_targets(students: Sequence[Callable[[list[torch.Tensor]], list[torch.Tensor]]],
                         teacher_feats: Sequence[torch.Tensor], domains: torch.Tensor,
                         reduce: str = "mean", normalize: bool = True,
                         teacher_share: float = 0.0, teacher_gate: float = 0.0) -> list[torch.Tensor]:
    """Targets for the global student on a batch: run every domain student (no gradient; the
    caller puts them in eval mode) on the teacher features and aggregate the other domains'
    (then the teacher gate, then the teacher share)."""
    outputs = [student(list(teacher_feats)) for student in students]
    targets = aggregate_other_domains(outputs, domains, reduce, normalize)
    gate, share = _fraction("teacher_gate", teacher_gate), _fraction("teacher_share", teacher_share)
    if gate or share:
        teacher = _teacher_like(teacher_feats, normalize)  # once, for both
        if gate:
            targets = _gate(targets, teacher, gate)
        if share:
            targets = _mix(targets, teacher, share)
    return list(targets)
