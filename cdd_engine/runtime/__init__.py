"""Scoring runtime: build an engine directory from a checkpoint, load it, score camera frames.

- :func:`build` (checkpoint -> engine directory -> :class:`Engine`), :func:`load` (engine directory -> Engine)
- :class:`Engine` with :meth:`Engine.score` -> :class:`ScoreResult`
- errors: :class:`EngineFormatError` (bad engine directory), :class:`BackendUnavailable`
"""
from __future__ import annotations

from .build import build, choose_backend
from .engine import Engine, ScoreResult, load
from ..errors import BackendUnavailable, EngineError, EngineFormatError, NonFiniteOutputError

__all__ = ["build", "load", "Engine", "ScoreResult", "choose_backend", "BackendUnavailable", "EngineError",
           "EngineFormatError", "NonFiniteOutputError"]
