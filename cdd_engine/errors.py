"""Errors raised by the engine: each says what was expected and what was found."""
from __future__ import annotations


class EngineError(RuntimeError):
    """Base class of engine errors that are not plain bad-argument errors."""


class EngineFormatError(EngineError, ValueError):
    """An engine directory is missing, truncated, corrupt or of an unknown format version.

    Also a ValueError, so callers that treat any bad input alike can catch that."""


class BackendUnavailable(EngineError, ImportError):
    """A backend's runtime (TensorRT, OpenVINO, a GPU) is not installed or not usable here."""


class NonFiniteOutputError(EngineError):
    """The model produced a NaN or infinite score (diverged training, bad weights, an engine.json
    whose numbers overflow): the frames get no verdict, never a silent "normal"."""


class AccuracyGuardError(EngineError, ValueError):
    """An INT8 build's accuracy guard failed: the quantized engine disagrees with the fp32
    reference more than the thresholds allow (runtime/int8_guard.py). Nothing was written;
    ``int8_fallback=True`` (``--int8-fallback``) builds fp32 instead."""
