"""Reverse Distillation (RD4AD): one student fitted toward the frozen teacher's features."""
from __future__ import annotations

import torch
import torch.nn as nn

from .loop import fit_epoch, make_adam
from .methods import TrainingMethod, register_method


@register_method
class RDMethod(TrainingMethod):
    """RD baseline: Adam(lr, betas) on the student's parameters, RD loss toward the teacher."""

    name = "rd"

    def __init__(self, config, model, features) -> None:
        super().__init__(config, model, features)
        self.student = model.student
        self.optimizer = make_adam(self.student.parameters(), config.lr, config.betas)

    def modules(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"student": self.optimizer}

    def train_epoch(self, epoch: int, generator: torch.Generator, progress: bool) -> dict[str, float]:
        stats = fit_epoch(self.student, self.features.batches(generator), self.optimizer,
                          progress=progress, desc=f"epoch {epoch + 1}/{self.config.epochs}",
                          total=len(self.features))
        return {"loss": stats.loss, "images": stats.images, "seconds": stats.seconds,
                "images_per_s": stats.images_per_s}
