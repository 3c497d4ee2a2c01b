"""Registry of training methods. A method owns its trainable students and optimisers and
trains one epoch at a time; the driver (:mod:`cdd_engine.training.runner`) owns data,
checkpoints, resume, evaluation and reports, identically for every method."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
import torch.nn as nn

from ..models import RDModel
from .config import TrainConfig
from .loop import TeacherFeatures

# Methods that live in another module: name -> module whose import registers them (imported
# on first use, so ``import cdd_engine.training`` stays light).
LAZY_METHODS = {"cdd": "cdd_engine.cdd.method"}
# Methods that are announced but not in this version: name -> what to tell the user.
PLANNED_METHODS: dict[str, str] = {}

class TrainingMethod(ABC):
    """One way of training the student that is deployed beside the frozen teacher.

    Subclasses set ``name``, build their students/optimisers in ``__init__`` and implement
    :meth:`train_epoch`. ``modules()["student"]`` is the deployed student (saved in
    ``student.safetensors``); other modules (CDD's domain students) go to
    ``domain_students.safetensors`` under their names.
    """

    name: ClassVar[str]

    def __init__(self, config: TrainConfig, model: RDModel, features: TeacherFeatures) -> None:
        self.config = config
        self.model = model
        self.features = features

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """Every trainable module by name; "student" is the one deployed."""

    @abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Every optimiser by name (their state is saved for resume)."""

    @abstractmethod
    def train_epoch(self, epoch: int, generator: torch.Generator, progress: bool) -> dict[str, float]:
        """Train one epoch; draw every random choice from ``generator`` (saved for resume).
        Returns numbers to log, at least ``loss``, ``images`` and ``seconds``."""

    def method_config(self) -> dict[str, Any]:
        """Method-specific settings recorded in config.json (e.g. CDD's K and partition)."""
        return {}

    @classmethod
    def resumed_options(cls, requested: dict[str, Any], recorded: dict[str, Any]) -> dict[str, Any]:
        """The ``method_options`` a resumed run is rebuilt with, from the request (already checked
        equal to the run's) and the run's recorded :meth:`method_config`. A method whose defaults
        may change between versions returns the recorded settings, so a resume continues the
        run that was started."""
        return requested


METHODS: dict[str, type[TrainingMethod]] = {}


def register_method(cls: type[TrainingMethod]) -> type[TrainingMethod]:
    """Class decorator: make a method available to ``train(method=...)`` and the CLI."""
    METHODS[cls.name] = cls
    PLANNED_METHODS.pop(cls.name, None)
    return cls


def method_names() -> list[str]:
    """Methods the CLI accepts (available or importable ones, then announced ones that explain themselves)."""
    return sorted(set(METHODS) | set(LAZY_METHODS)) + sorted(set(PLANNED_METHODS) - set(METHODS) - set(LAZY_METHODS))


def get_method(name: str) -> type[TrainingMethod]:
    """The method class for ``name``; NotImplementedError for announced ones, ValueError otherwise."""
    if name not in METHODS and name in LAZY_METHODS:
        import importlib
        importlib.import_module(LAZY_METHODS[name])
    if name in METHODS:
        return METHODS[name]
    if name in PLANNED_METHODS:
        raise NotImplementedError(PLANNED_METHODS[name])
    raise ValueError(f"unknown training method {name!r}; choose one of {method_names()}")
