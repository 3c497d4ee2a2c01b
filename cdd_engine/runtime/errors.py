"""The engine's errors under their first import path (README, the compiled module): the classes
live in cdd_engine/errors.py, which export/ and runtime/ both import."""
from __future__ import annotations

from ..errors import BackendUnavailable, EngineError, EngineFormatError, NonFiniteOutputError

__all__ = ["EngineError", "EngineFormatError", "BackendUnavailable", "NonFiniteOutputError"]
