"""Network backends. Each has ``score_batch(x (B,3,H,W) float32) -> (maps (B,H,W), scores (B,))``,
``features(x) -> six feature tensors``, ``device``, and ``fused_preprocess`` (a callable taking
uint8 frames (N,H,W,C) and a pixel format, or None to use the CPU pre-processing)."""
from __future__ import annotations

import os
from typing import Any

from ..options import BackendOptions, as_options


def make_backend(engine_dir: str | os.PathLike, manifest: dict, options: BackendOptions | None = None, *,
                 device: Any = None, num_threads: int | None = None) -> Any:
    """Instantiate the backend named in ``manifest["backend"]`` (imported only when used).

    options: the engine's typed options (runtime/options.py: the backend's class, values already
    checked); the given ones the Python runtime honours become the backend's keyword arguments of
    the same names. ``device`` and ``num_threads`` go to every backend (OpenVINO: the CPU only).
    """
    name = manifest["backend"]
    kwargs = as_options(name, options).python_backend_kwargs()
    if name == "openvino":
        from .openvino_backend import OpenVINOBackend as cls
        if device not in (None, "cpu"):
            raise ValueError(f"the OpenVINO backend runs on the CPU, got device={device!r}")
    elif name == "torch":
        from .torch_backend import TorchBackend as cls
        kwargs["device"] = device
    elif name == "aoti":
        from .aoti_backend import AOTIBackend as cls
        kwargs["device"] = device
    elif name == "tensorrt":
        from .tensorrt_backend import TensorRTBackend as cls
        kwargs["device"] = device
    else:  # read_manifest already refuses unknown names
        raise ValueError(f"unknown backend {name!r}")
    if num_threads is not None:
        kwargs["num_threads"] = num_threads
    return cls(engine_dir, manifest, **{k: v for k, v in kwargs.items() if v is not None})
