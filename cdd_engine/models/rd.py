"""Reverse Distillation model: frozen teacher + trainable student (OCBE + decoder)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .student import Student
from .teachers import build_teacher, teacher_spec


class RDModel(nn.Module):
    """``forward(x)`` on normalised (B,3,H,W) images -> (teacher_feats, student_feats), each a
    list of three (B, c_s, H/4·2^-s, W/4·2^-s) tensors. The teacher is frozen, stays in eval
    mode whatever ``train()`` is called with, and runs without autograd.

    Attributes:
        image_size: (H, W) the model was trained at.
        normalization: ((mean r,g,b), (std r,g,b)) applied to [0,1] RGB pixels.
    """

    def __init__(self, teacher: nn.Module, student: Student, backbone: str,
                 image_size: tuple[int, int], normalization: tuple[Sequence[float], Sequence[float]]) -> None:
        super().__init__()
        self.teacher = teacher
        self.student = student
        self.backbone = backbone
        self.image_size = tuple(image_size)
        self.normalization = (tuple(normalization[0]), tuple(normalization[1]))

    def train(self, mode: bool = True) -> "RDModel":
        super().train(mode)
        self.teacher.eval()
        return self

    def teacher_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return [f.detach() for f in self.teacher(x)]

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        t = self.teacher_features(x)
        return t, self.student(t)


def build_student(backbone: str, channels: Sequence[int]) -> Student:
    spec = teacher_spec(backbone)
    return Student(channels, width_mult=spec.width_mult, decoder_blocks=spec.decoder_blocks)


def build_rd_model(backbone: str = "efficientnet_lite0", teacher_weights: str | None = None,
                   image_size: int | tuple[int, int] = 256, pretrained: bool = True,
                   seed: int | None = None) -> RDModel:
    """Build teacher + fresh student.

    ``pretrained=False`` (or ``teacher_weights="random"``) gives a random teacher, for tests.
    ``seed`` seeds the student's (and a random teacher's) initialisation.
    """
    if seed is not None:
        torch.manual_seed(seed)
    weights = teacher_weights if pretrained else "random"
    teacher, weights_id = build_teacher(backbone, weights)
    spec = teacher_spec(backbone)
    student = build_student(backbone, teacher.stage_channels)
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    model = RDModel(teacher, student, backbone, size, (spec.mean, spec.std))
    model.teacher_weights_id = weights_id
    return model
