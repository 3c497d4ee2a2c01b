"""Serving an engine directory with NVIDIA Triton Inference Server (docs/serving.md).

- :func:`export_triton`: engine directory -> Triton model repository (Python backend running
  cdd-engine's own :class:`~cdd_engine.Engine`, dynamic batching, a version directory per engine)
- :class:`LocalTritonServer`: start/stop the ``tritonserver`` binary that the ``nvidia-pytriton``
  wheel ships, on localhost (tests, benchmarks, a single inspection PC)
"""
from __future__ import annotations

from .local_server import LocalTritonServer, ServerUnavailable, find_tritonserver
from .triton_repo import export_triton

__all__ = ["export_triton", "LocalTritonServer", "ServerUnavailable", "find_tritonserver"]
