"""RD student: one-class bottleneck embedding (OCBE) + mirrored decoder, built from the
teacher's three stage widths (c1, c2, c3) at strides 4, 8 and 16.

For wide_resnet50_2 (256, 512, 1024) at 256x256 this gives exactly docs/method.md:
layer1 -> two 3x3 s2 convs -> 1024@16², layer2 -> one 3x3 s2 conv -> 1024@16², concat
with layer3 -> 3072@16², three bottlenecks (first stride 2) -> 2048@8², then decoder stages
of [3, 4, 6] bottlenecks with 2x2 transposed convs -> 1024@16², 512@32², 256@64².
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride 1 or 2) -> 1x1 residual block with an explicit inner width."""

    def __init__(self, cin: int, cout: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = _bn(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = _bn(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = _bn(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), _bn(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class UpBottleneck(nn.Module):
    """Decoder block: like :class:`Bottleneck` but the middle conv is a 2x2 stride-2
    transposed conv when ``upsample`` (RD's de-bottleneck), and so is the shortcut."""

    def __init__(self, cin: int, cout: int, width: int, upsample: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = _bn(width)
        self.conv2 = (nn.ConvTranspose2d(width, width, 2, stride=2, bias=False) if upsample
                      else nn.Conv2d(width, width, 3, padding=1, bias=False))
        self.bn2 = _bn(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = _bn(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None
        if upsample:
            self.shortcut = nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False), _bn(cout))
        elif cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), _bn(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), _bn(cout), nn.ReLU(inplace=True))


class OCBE(nn.Module):
    """Multi-scale feature fusion + one-class embedding: teacher stages -> (B, 2*c3, h/32, w/32)."""

    def __init__(self, channels: Sequence[int], width_mult: int = 1, blocks: int = 3) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.fuse1 = nn.Sequential(_conv_bn_relu(c1, c2), _conv_bn_relu(c2, c3))  # stride 4 -> 16
        self.fuse2 = _conv_bn_relu(c2, c3)                                          # stride 8 -> 16
        out = 2 * c3
        width = max(1, out // 4 * width_mult)
        layers = [Bottleneck(3 * c3, out, width, stride=2)]
        layers += [Bottleneck(out, out, width) for _ in range(blocks - 1)]
        self.embed = nn.Sequential(*layers)
        self.out_channels = out

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        fused = torch.cat([self.fuse1(feats[0]), self.fuse2(feats[1]), feats[2]], dim=1)
        return self.embed(fused)


class Decoder(nn.Module):
    """Mirror of the teacher: embedding -> [c3 @ /16, c2 @ /8, c1 @ /4], returned in teacher order."""

    def __init__(self, channels: Sequence[int], in_channels: int, width_mult: int = 1,
                 blocks: Sequence[int] = (3, 4, 6)) -> None:
        super().__init__()
        stages, cin = [], in_channels
        for cout, n in zip(reversed(tuple(channels)), blocks):
            width = max(1, cout // 4 * width_mult)
            layers = [UpBottleneck(cin, cout, width, upsample=True)]
            layers += [UpBottleneck(cout, cout, width) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs[::-1]


class Student(nn.Module):
    """OCBE + decoder: the trainable part of RD (one per domain student in CDD, plus the global one)."""

    def __init__(self, channels: Sequence[int], width_mult: int = 1, bottleneck_blocks: int = 3,
                 decoder_blocks: Sequence[int] = (3, 4, 6)) -> None:
        super().__init__()
        if len(channels) != 3:
            raise ValueError(f"need the widths of three teacher stages, got {tuple(channels)}")
        self.bottleneck = OCBE(channels, width_mult, bottleneck_blocks)
        self.decoder = Decoder(channels, self.bottleneck.out_channels, width_mult, decoder_blocks)

    def forward(self, teacher_feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """teacher_feats: [(B,c1,H/4,W/4), (B,c2,H/8,W/8), (B,c3,H/16,W/16)] -> the same shapes."""
        return self.decoder(self.bottleneck(teacher_feats))
