"""The Reverse Distillation loss (RD4AD's code): per scale, 1 - cosine similarity of each
image's *flattened* C·H·W feature vectors, summed over scales, averaged over the batch."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def rd_loss_per_image(teacher_feats: Sequence[torch.Tensor], student_feats: Sequence[torch.Tensor]
                      ) -> torch.Tensor:
    """Lists of (B, C_s, h_s, w_s) tensors -> (B,) loss of each image, summed over scales.

    The student side may be any target of the same shapes (CDD trains its global student
    toward aggregated features of other students with this same loss).
    """
    if len(teacher_feats) == 0 or len(teacher_feats) != len(student_feats):
        raise ValueError(f"need the same non-zero number of scales, got {len(teacher_feats)} "
                         f"and {len(student_feats)}")
    total = None
    for s, (t, st) in enumerate(zip(teacher_feats, student_feats)):
        if t.shape != st.shape or t.dim() != 4:
            raise ValueError(f"scale {s}: expected two equal (B,C,h,w) shapes, got "
                             f"{tuple(t.shape)} and {tuple(st.shape)}")
        d = 1.0 - F.cosine_similarity(t.flatten(1), st.flatten(1), dim=1)
        total = d if total is None else total + d
    return total


def rd_loss(teacher_feats: Sequence[torch.Tensor], student_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Scalar RD loss: mean over the batch of :func:`rd_loss_per_image`."""
    return rd_loss_per_image(teacher_feats, student_feats).mean()
