"""The training progress bar shows one images/s figure (issue 11 item 11): tqdm's own rate, not a
second hand-computed one beside it."""
from __future__ import annotations

import re

import torch

from cdd_engine.training.loop import fit_epoch


class _Student(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 1)

    def forward(self, feats):
        return [self.conv(f) for f in feats]


def test_one_images_per_second_figure(capsys):
    g = torch.Generator().manual_seed(0)
    batches = [(torch.arange(i, i + 2), [torch.randn(2, 4, 6, 6, generator=g)]) for i in range(0, 8, 2)]
    student = _Student()
    opt = torch.optim.SGD(student.parameters(), lr=0.01)
    stats = fit_epoch(student, iter(batches), opt, progress=True, total=8)
    assert stats.images == 8
    err = capsys.readouterr().err
    bars = [ln for ln in re.split(r"[\r\n]", err) if "loss=" in ln]
    assert bars, err
    assert all(len(re.findall(r"img/s|img_s|images/s", ln)) <= 1 for ln in bars), bars
    assert any("img/s" in ln for ln in bars), bars
