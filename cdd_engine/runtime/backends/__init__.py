"""Network backends. Each has ``score_batch(x (B,3,H,W) float32) -> (maps (B,H,W), scores (B,))``,
``features(x) -> six feature tensors``, ``device``, and ``fused_preprocess`` (a callable taking
uint8 frames (N,H,W,C) and a pixel format, or None to use the CPU pre-processing)."""
from __future__ import annotations

import os
from typing import Any


def make_backend(engine_dir: str | os.PathLike, manifest: dict, **options: Any) -> Any:
    """Instantiate the backend named in ``manifest["backend"]`` (imported only when used).

    options: ``device``, ``num_threads``, ``use_triton`` (torch/tensorrt/aoti), ``cuda_graphs`` (aoti, torch),
    ``mode``, ``sub_batch`` and ``static_shapes`` (openvino); options a backend does not take are
    ignored when None.
    """
    name = manifest["backend"]
    if name == "openvino":
        from .openvino_backend import OpenVINOBackend as cls
        allowed = {"num_threads", "mode", "sub_batch", "static_shapes"}
        device = options.get("device")
        if device not in (None, "cpu"):
            raise ValueError(f"the OpenVINO backend runs on the CPU, got device={device!r}")
    elif name == "torch":
        from .torch_backend import TorchBackend as cls
        allowed = {"device", "use_triton", "num_threads", "cuda_graphs"}
    elif name == "aoti":
        from .aoti_backend import AOTIBackend as cls
        allowed = {"device", "use_triton", "num_threads", "cuda_graphs"}
    elif name == "tensorrt":
        from .tensorrt_backend import TensorRTBackend as cls
        allowed = {"device", "use_triton", "num_threads"}
    else:  # read_manifest already refuses unknown names
        raise ValueError(f"unknown backend {name!r}")
    unknown = {k for k, v in options.items() if k not in allowed and v is not None and k != "device"}
    if unknown:
        raise TypeError(f"backend {name!r} does not take option(s) {sorted(unknown)}")
    return cls(engine_dir, manifest, **{k: v for k, v in options.items() if k in allowed and v is not None})
