"""``method="cdd"`` for the shared training driver (cdd_engine.training.runner): data, checkpoints
every epoch, resume, evaluation, training scores and threshold are the driver's; this class
owns the K domain students, the global student and their optimisers.

``TrainConfig.method_options`` holds the :class:`~cdd_engine.cdd.trainer.CDDOptions` (domains,
partition, aggregate, teacher_gate, teacher_share, schedule, ...). The deployed ``"student"`` is the global
student, so a CDD run directory loads, exports and scores exactly like an RD one; the domain
students and the partition (module ``cdd_state``: buffers ``domains`` (N,), domain generator
states, updates done) go to ``domain_students.safetensors`` for analysis and resume, never
into an engine.

Under ``torchrun`` (an initialised torch.distributed process group) the domain students are
spread over the ranks and the global student trains data-parallel (:mod:`.distributed`).
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any

import torch
import torch.nn as nn

from ..training.methods import TrainingMethod, register_method
from .trainer import CDDOptions, CDDTrainer


@register_method
class CDDMethod(TrainingMethod):
    """Cross-Domain Distillation: DST (domain students) + CDKA (global student)."""

    name = "cdd"

    def __init__(self, config, model, features) -> None:
        super().__init__(config, model, features)
        self.options = CDDOptions.from_json(config.method_options)
        ctx = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            from .distributed import DistContext
            ctx = DistContext()
        log = None
        if config.progress:
            from tqdm.auto import tqdm
            log = tqdm.write
        self.trainer = CDDTrainer(features, config.backbone, model.teacher.stage_channels, self.options,
                                  config.epochs, config.batch_size, config.lr, tuple(config.betas), config.seed,
                                  global_student=model.student, dist=ctx, log=log)

    def modules(self) -> dict[str, nn.Module]:
        return self.trainer.modules()

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.trainer.optimizers()

    def train_epoch(self, epoch: int, generator: torch.Generator, progress: bool) -> dict[str, float]:
        return self.trainer.train_epoch(epoch, generator, progress)

    @classmethod
    def resumed_options(cls, requested: dict[str, Any], recorded: dict[str, Any]) -> dict[str, Any]:
        """Every CDD option as the run recorded it; an option the run predates takes the value
        it was trained with (:attr:`CDDOptions.PREDATED`), not today's default."""
        if not recorded:
            return requested
        known = {f.name for f in fields(CDDOptions)}
        return {**CDDOptions.PREDATED, **{k: v for k, v in recorded.items() if k in known}}

    def method_config(self) -> dict[str, Any]:
        sizes = torch.bincount(self.trainer.domains, minlength=self.options.domains).tolist()
        return {**self.options.to_json(), "domain_sizes": sizes,
                "domain_updates": self.trainer.total_steps,
                "note": "inference uses the teacher and the global student ('student') only"}
