"""CDD training: Domain-Specific Training (DST) then Cross-Domain Knowledge Aggregation (CDKA).

DST: the training set is split once into K domains (:mod:`.partition`); domain student k
(bottleneck + decoder, like RD's) is trained with the RD loss on domain k only. Each domain
student gets as many optimizer updates as an RD run of the same config (``epochs`` passes
over the *whole* set): a student that sees 1/K of the images at RD's batch size for RD's
number of epochs gets 1/K of the updates and ends up undertrained (measured in a first probe).

CDKA: the global student is trained on all images with the RD loss toward, for an image of
domain k, the aggregate of the other domains' students' features (:mod:`.aggregate`).

Inference uses the teacher + global student only (exactly RD's cost).

Our choices, all in :class:`CDDOptions` (docs/method.md: named options, justified by the
ablations in ``benchmarks/cdd_accuracy.py``):

- ``schedule="sequential"`` (default): the domain students are trained to the end first,
  then frozen; their targets for the whole training set are computed once (cheap: K
  forward passes) and the global student trains on them. ``"alternate"``: each epoch, every
  domain student does one epoch's worth of updates, then (after ``warmup_epochs``) the global
  student does one epoch toward targets from the *current* domain students.
- ``partition`` random | cluster, ``domains`` K, ``aggregate`` mean | median,
  ``normalize_targets``, ``teacher_share``, ``teacher_gate``, ``domain_update_ratio`` (1.0 = RD's
  updates).
- ``teacher_gate=0.9`` (default): per image and scale, the 90 % of pixels where the other
  domains' aggregate is closest to the teacher take the teacher's feature as target, the 10 %
  farthest keep the aggregate (:func:`.aggregate.gate_teacher`). Measured on the CPU, 3 seeds
  each, against pure CDD (0.0) and RD on the same device (benchmarks/RESULTS.md): contaminated
  gravel (noise 0.4) image AUROC 0.746 vs pure CDD 0.705 and RD 0.678 (RD clean: 0.729); clean
  brick 0.932 vs 0.937 and RD 0.939 (brick's seed spread is +-0.02); on concrete, a category
  added after the choice, neutral on image AUROC at noise 0.4 (0.950 vs 0.948, RD 0.902) and
  0.017 lower on pixel AUROC (0.943 vs 0.960).
- ``teacher_share=0.0`` (default). 0.3 (30 % of the target from the teacher's
  normalised features) was measured on 6 CPU runs (benchmarks/RESULTS.md, "Our choices and the
  ablations"): on clean brick it narrowed the gap to RD from -0.023 to -0.008 (3 seeds), but on
  contaminated gravel (noise 0.4, 3 seeds) it gave up most of CDD's gain over RD (0.709 vs pure
  CDD 0.729, RD 0.689), and resisting contamination is what CDD is for; so it stays an option.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, ClassVar, Iterator, Sequence

import torch
import torch.nn as nn

from ..models.rd import build_student
from ..training.loop import Features, TeacherFeatures, batch_indices, fit_epoch, make_adam
from .aggregate import REDUCTIONS, cross_domain_targets
from .partition import POOLINGS, STRATEGIES, make_partition, pooled_features

SCHEDULES = ("sequential", "alternate")
SEED_STRIDE = 1000  # domain student k is seeded with seed + SEED_STRIDE * (k + 1): disjoint streams


@dataclass
class CDDOptions:
    """The CDD-specific options (``TrainConfig.method_options`` for ``method="cdd"``).

    domains: K >= 2. partition: "random" | "cluster" (k-means of pooled teacher features,
    ``cluster_pooling`` mean|max|meanmax, ``balanced`` equal-size domains). aggregate: "mean" |
    "median" over the K-1 other students. normalize_targets: L2-normalise student features over
    channels before aggregating. teacher_share: weight of the teacher's (normalised) features
    in the target (default 0; 0.3 measured, see the module doc). teacher_gate: share of each
    image's pixels (per scale) whose target is the teacher's feature, those where the other
    domains' aggregate is closest to it (:func:`.aggregate.gate_teacher`; default 0.9, 0 = pure
    CDD). schedule: "sequential" | "alternate"; warmup_epochs: epochs the
    domain students train alone first ("alternate" only). domain_update_ratio: optimizer
    updates of each domain student relative to an RD run of the same config (1.0).
    """

    # Options added after runs were recorded without them -> the value those runs were trained
    # with (a resume rebuilds them so; see CDDMethod.resumed_options).
    PREDATED: ClassVar[dict[str, Any]] = {"teacher_gate": 0.0}

    domains: int = 3
    partition: str = "random"
    cluster_pooling: str = "meanmax"
    balanced: bool = True
    aggregate: str = "mean"
    normalize_targets: bool = True
    teacher_share: float = 0.0  # pure CDD; 0.3 helped clean brick but cost the gain on contaminated gravel (module doc)
    teacher_gate: float = 0.9  # measured against pure CDD (0.0) and RD, see the module doc
    schedule: str = "sequential"
    warmup_epochs: int = 0
    domain_update_ratio: float = 1.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if isinstance(self.domains, bool) or not isinstance(self.domains, int) or self.domains < 2:
            raise ValueError(f"domains must be an int >= 2 (targets come from the other domains), got {self.domains!r}")
        for name, choices in (("partition", STRATEGIES), ("cluster_pooling", POOLINGS),
                              ("aggregate", REDUCTIONS), ("schedule", SCHEDULES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        for name in ("teacher_share", "teacher_gate"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1], got {v!r}")
        if isinstance(self.warmup_epochs, bool) or not isinstance(self.warmup_epochs, int) or self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an int >= 0, got {self.warmup_epochs!r}")
        if not isinstance(self.domain_update_ratio, (int, float)) or not self.domain_update_ratio > 0:
            raise ValueError(f"domain_update_ratio must be a number > 0, got {self.domain_update_ratio!r}")
        for name in ("balanced", "normalize_targets"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be true/false, got {getattr(self, name)!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> "CDDOptions":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown CDD option(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


@dataclass
class CDDResult:
    """What :func:`train_cdd` returns. ``domains``: (N,) int64 domain of every training image."""

    global_student: nn.Module
    domain_students: list[nn.Module]
    domains: torch.Tensor
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def subset_batches(features: TeacherFeatures, subset: torch.Tensor, generator: torch.Generator | None,
                   batch_size: int) -> Iterator[tuple[torch.Tensor, Features]]:
    """One seeded pass over ``subset`` (global indices (n,)) of a :class:`TeacherFeatures` ->
    (global indices (B,), [(B, C_s, h_s, w_s)])."""
    order = [subset[b] for b in batch_indices(len(subset), batch_size, generator)]
    yield from features.batches_of(order)


def domain_steps(n_total: int, batch_size: int, epochs: int, ratio: float) -> int:
    """Optimizer updates for one domain student: ratio x the updates of an RD run of ``epochs``."""
    return max(1, int(round(ratio * epochs * len(batch_indices(n_total, batch_size, None)))))


def _steps_iter(features: TeacherFeatures, subset: torch.Tensor, generator: torch.Generator,
                batch_size: int, steps: int) -> Iterator[tuple[torch.Tensor, Features]]:
    """Exactly ``steps`` batches: as many seeded passes over ``subset`` as that takes."""
    def endless():
        while True:
            yield from subset_batches(features, subset, generator, batch_size)
    return itertools.islice(endless(), steps)


def compute_partition(features: TeacherFeatures, options: CDDOptions, seed: int) -> torch.Tensor:
    """The run's fixed partition -> (N,) int64 domain ids."""
    n = len(features)
    descriptors = None
    if options.partition == "cluster":
        parts = [pooled_features(feats, options.cluster_pooling).cpu()
                 for _, feats in (features.batches(None) if features.cached is None
                                  else [(None, features.cached)])]
        descriptors = torch.cat(parts)
    return make_partition(options.partition, n, options.domains, seed, descriptors, options.balanced)


def new_student(backbone: str, channels: Sequence[int], seed: int, device: str | torch.device,
                dtype: torch.dtype = torch.float32) -> nn.Module:
    """A freshly initialised student, its weights drawn from ``seed`` alone (in float32, then cast)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = build_student(backbone, channels)
    return student.to(device=device, dtype=dtype)


class TargetBank:
    """Targets of every training image from frozen domain students, computed once ((N, ...) per
    scale, on the CPU like the feature cache; used only when the teacher features are cached)."""

    def __init__(self, students: Sequence[nn.Module], features: TeacherFeatures, domains: torch.Tensor,
                 options: CDDOptions, batch_size: int) -> None:
        parts: list[Features] = []
        for idx, feats in features.batches(None, batch_size):
            t = cross_domain_targets(students, feats, domains[idx], options.aggregate,
                                     options.normalize_targets, options.teacher_share, options.teacher_gate)
            parts.append([x.cpu() for x in t])
        self.targets = [torch.cat([p[s] for p in parts]) for s in range(len(parts[0]))]
        self.device = features.device

    def __call__(self, idx: torch.Tensor, feats: Features) -> Features:
        return [t[idx].to(self.device) for t in self.targets]


def make_target_fn(students: Sequence[nn.Module], domains: torch.Tensor, options: CDDOptions
                   ) -> Callable[[torch.Tensor, Features], Features]:
    """On-the-fly targets from the current domain students (used by the "alternate" schedule)."""
    def target_fn(idx: torch.Tensor, feats: Features) -> Features:
        for s in students:
            s.eval()
        return cross_domain_targets(students, feats, domains[idx], options.aggregate,
                                    options.normalize_targets, options.teacher_share, options.teacher_gate)
    return target_fn


class CDDTrainer:
    """DST + CDKA, one global-student epoch at a time (the unit of checkpoints and resume).

    ``train_epoch(e)`` for e = 0..epochs-1 runs, with the "sequential" schedule, all of DST
    first (inside epoch 0) and then one epoch of the global student; with "alternate", one
    round of every domain student (plus ``warmup_epochs`` rounds before epoch 0) and then one
    epoch of the global student toward the current domain students.

    The state that resume needs beyond modules and optimisers (each domain student's batch
    generator and its updates done) lives in the buffers of :attr:`state`, a module saved with
    the domain students. ``dist`` (a :class:`cdd_engine.cdd.distributed.DistContext`) spreads
    the domain students over ranks and trains the global student data-parallel.
    """

    def __init__(self, features: TeacherFeatures, backbone: str, channels: Sequence[int], options: CDDOptions,
                 epochs: int, batch_size: int = 16, lr: float = 0.005, betas: tuple[float, float] = (0.5, 0.999),
                 seed: int = 0, global_student: nn.Module | None = None,
                 make_optimizer: Callable[..., torch.optim.Optimizer] = make_adam, dist=None,
                 log: Callable[[str], None] | None = None) -> None:
        dtype = features.cached[0].dtype if features.cached is not None else torch.float32
        options.validate()
        self.features, self.options, self.epochs, self.batch_size = features, options, epochs, batch_size
        self.dist = dist
        self.log = log or (lambda msg: None)
        device = features.device
        n, k = len(features), options.domains
        self.domains = compute_partition(features, options, seed)
        self.log(f"CDD: {n} images in {k} domains of {torch.bincount(self.domains, minlength=k).tolist()} "
                 f"({options.partition} partition)")
        self.students = [new_student(backbone, channels, seed + SEED_STRIDE * (j + 1), device, dtype)
                         for j in range(k)]
        self.optims = [make_optimizer(s.parameters(), lr, betas) for s in self.students]
        self.subsets = [(self.domains == j).nonzero().squeeze(1) for j in range(k)]
        self.global_student = global_student if global_student is not None else new_student(
            backbone, channels, seed, device, dtype)
        self.g_opt = make_optimizer(self.global_student.parameters(), lr, betas)
        self.total_steps = domain_steps(n, batch_size, epochs, options.domain_update_ratio)
        gens = [torch.Generator().manual_seed(seed + SEED_STRIDE * (j + 1)) for j in range(k)]
        self.state = nn.Module()
        self.state.register_buffer("domains", self.domains.clone())
        self.state.register_buffer("rng", torch.stack([g.get_state() for g in gens]))
        self.state.register_buffer("steps_done", torch.zeros(k, dtype=torch.int64))
        self._bank: TargetBank | None = None
        self.history: list[dict[str, Any]] = []

    # -- names used by checkpoints: "student" is deployed, the rest go to domain_students.safetensors
    def modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"student": self.global_student}
        mods.update({f"domain{j}": s for j, s in enumerate(self.students)})
        mods["cdd_state"] = self.state
        return mods

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts = {"student": self.g_opt}
        opts.update({f"domain{j}": o for j, o in enumerate(self.optims)})
        return opts

    def _owned(self, j: int) -> bool:
        return self.dist is None or self.dist.owns(j)

    def _run_domain(self, j: int, steps: int, stage: str, progress: bool) -> None:
        if steps <= 0:
            return
        if self._owned(j):
            g = torch.Generator()
            g.set_state(self.state.rng[j].clone())
            stats = fit_epoch(self.students[j], _steps_iter(self.features, self.subsets[j], g, self.batch_size, steps),
                              self.optims[j], progress=progress, desc=f"{stage} domain student {j + 1}/{len(self.students)}",
                              total=steps * self.batch_size)
            self.state.rng[j] = g.get_state()
            self.history.append({"stage": stage, "student": f"domain{j}", "loss": stats.loss,
                                 "images": stats.images, "seconds": stats.seconds})
        self.state.steps_done[j] += steps

    def _sync_domain_students(self) -> None:
        if self.dist is not None:
            self.dist.sync_domain_students(self.students, self.state)

    def train_epoch(self, epoch: int, generator: torch.Generator, progress: bool = False) -> dict[str, float]:
        """DST (as the schedule says) then one epoch of the global student; returns loss/images/seconds."""
        o, k = self.options, len(self.students)
        t0 = time.perf_counter()
        if o.schedule == "sequential":
            if int(self.state.steps_done.min()) < self.total_steps:
                for j in range(k):
                    self._run_domain(j, self.total_steps - int(self.state.steps_done[j]), "DST", progress)
                self._sync_domain_students()
                self._bank = None
            for s in self.students:
                s.eval()
            if self.features.cached is None:  # no feature cache: no target cache either (same memory)
                target_fn = make_target_fn(self.students, self.domains, o)
            else:
                if self._bank is None:  # frozen domain students: their targets never change
                    self._bank = TargetBank(self.students, self.features, self.domains, o, self.batch_size)
                target_fn = self._bank
        else:
            rounds = o.warmup_epochs + self.epochs
            per_round = [self.total_steps * (r + 1) // rounds - self.total_steps * r // rounds for r in range(rounds)]
            todo = range(0, o.warmup_epochs + 1) if epoch == 0 else [o.warmup_epochs + epoch]
            for r in todo:
                for j in range(k):
                    self._run_domain(j, per_round[r], f"DST round {r + 1}/{rounds}", progress)
                self._sync_domain_students()
            target_fn = make_target_fn(self.students, self.domains, o)
        desc = f"CDKA global student epoch {epoch + 1}/{self.epochs}"
        if self.dist is None:
            stats = fit_epoch(self.global_student, self.features.batches(generator, self.batch_size), self.g_opt,
                              target_fn=target_fn, progress=progress, desc=desc, total=len(self.features))
        else:
            stats = self.dist.fit_epoch(self.global_student, self.features.batches(generator, self.batch_size),
                                        self.g_opt, target_fn, progress=progress, desc=desc)
        self.history.append({"stage": "CDKA", "student": "global", "epoch": epoch, "loss": stats.loss,
                             "images": stats.images, "seconds": stats.seconds})
        return {"loss": stats.loss, "images": stats.images, "seconds": time.perf_counter() - t0,
                "images_per_s": stats.images_per_s}


def train_cdd(features: TeacherFeatures, backbone: str, channels: Sequence[int], options: CDDOptions,
              epochs: int, batch_size: int = 16, lr: float = 0.005, betas: tuple[float, float] = (0.5, 0.999),
              seed: int = 0, progress: bool = True, log: Callable[[str], None] | None = None,
              global_student: nn.Module | None = None,
              make_optimizer: Callable[..., torch.optim.Optimizer] = make_adam, dist=None) -> CDDResult:
    """Train K domain students and the global student on the teacher features of the training set.

    Args:
        features: the frozen teacher's features of the N training images (cached or streamed).
        backbone, channels: to build students like RD's (``teacher.stage_channels``).
        options: :class:`CDDOptions`. epochs: passes of the global student over all N images
            (domain students get the same number of updates each, see module doc).
        global_student: a pre-built global student (RD's initialisation), else one seeded by ``seed``.
        make_optimizer: (params, lr, betas) -> optimizer; RD's Adam by default.
        dist: a DistContext for multi-process training (None: this process does everything).

    Returns: :class:`CDDResult`; all students are left in eval mode. The global student's batch
    order is drawn from ``torch.Generator().manual_seed(seed)``, as RD's runner does.
    """
    t_start = time.perf_counter()
    trainer = CDDTrainer(features, backbone, channels, options, epochs, batch_size, lr, betas, seed,
                         global_student, make_optimizer, dist, log)
    generator = torch.Generator().manual_seed(seed)
    for e in range(epochs):
        trainer.train_epoch(e, generator, progress)
    for s in trainer.students:
        s.eval()
    trainer.global_student.eval()
    return CDDResult(trainer.global_student, trainer.students, trainer.domains, trainer.history,
                     time.perf_counter() - t_start)
