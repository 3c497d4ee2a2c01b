"""The native runtime of :class:`~cdd_engine.runtime.engine.Engine`: libcdd_engine (C++) through
the pybind11 module ``cdd_engine._native``, used for OpenVINO engines on the CPU and TensorRT engines
on CUDA devices when the module is built.

- :func:`choose_runtime` resolves ``runtime="auto" | "native" | "python"`` for an engine directory;
- :class:`NativeRunner` loads the C++ engine and scores uint8 frames with it;
- :func:`native_arrays` turns validated :class:`~cdd_engine.runtime.frames.Frames` into numpy
  arrays the module reads in place, or None when the frames need the Python runtime (float
  frames, frames on a GPU).

The Python Engine validates every input itself before calling the module (the same checks and
messages on both runtimes), reads engine.json and verifies the file hashes once, and keeps its
own threshold; the C++ engine only runs pre-processing, network and anomaly map.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from .errors import BackendUnavailable, EngineFormatError
from .frames import Frames

RUNTIMES = ("auto", "native", "python")
OPENVINO_MODES = ("auto", "latency", "throughput")
# Options of the Python backends that the C++ engine has no counterpart for: asking for one makes
# "auto" pick the Python runtime (the caller asked for a Python-runtime behaviour).
PYTHON_ONLY_OPTIONS = ("sub_batch", "use_triton")
# openvino_mode -> C++ inference requests. "auto"/"latency": one request on all threads, so a single
# frame uses every core when they are free; "throughput": a call's frames split over two requests
# running at once (what the Python runtime's THROUGHPUT hint chose on 2 cores). On 2 cores under a
# load of 6-7 (benchmarks/RESULTS.md, WRN50 256²) 2 streams ran batch 8 at 1.01x/0.96x the Python
# runtime against 0.86x/0.82x for 1 stream, and batch 1 at 1.17-1.28x against 1.06-1.14x; same CPU
# work. Pass num_streams= for more streams on bigger machines.
STREAMS_FOR_MODE = {"auto": 1, "latency": 1, "throughput": 2}


def native_module() -> Any | None:
    """The compiled module, or None when it is not built."""
    from .. import native
    try:
        return native.load()
    except native.NativeUnavailable:
        return None


def _device_type(device: Any) -> str | None:
    """"cpu" / "cuda" / ... of a device string or torch.device; None when torch does not know it
    (the Python backend then says what it expected)."""
    try:
        return torch.device(device).type
    except (RuntimeError, TypeError, ValueError):
        return None


def _is_cuda(device: Any) -> bool:
    return device is not None and _device_type(device) == "cuda"


def _is_cpu(device: Any) -> bool:
    return device is None or _device_type(device) == "cpu"


def check_openvino_mode(mode: Any) -> str:
    mode = "auto" if mode is None else mode
    if mode not in OPENVINO_MODES:  # the Python backend's message, so both runtimes say the same
        raise ValueError(f"OpenVINO mode must be one of {OPENVINO_MODES}, got {mode!r}")
    return mode


def check_count(value: Any, name: str, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def choose_runtime(runtime: str, manifest: dict, device: Any, options: dict[str, Any]) -> tuple[str, str]:
    """-> ("native" | "python", reason). ``options`` are the Engine's backend options (None = not given).

    "auto" picks native when the module is built and can run this engine here: an OpenVINO
    engine on the CPU, or a TensorRT engine on a CUDA device with a module built with TensorRT,
    and no Python-only option was asked for. "native" raises BackendUnavailable when it cannot.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "python":
        return "python", "asked for"
    backend = manifest["backend"]
    python_only = sorted(k for k in PYTHON_ONLY_OPTIONS if options.get(k) is not None)
    why_not: str | None = None
    if backend == "torch":
        why_not = "a torch engine (PyTorch weights) runs on the Python runtime only"
    elif python_only:
        why_not = f"option(s) {python_only} belong to the Python runtime"
    elif backend == "openvino" and not _is_cpu(device):
        why_not = f"the OpenVINO backend runs on the CPU, got device={device!r}"
    elif backend == "tensorrt" and device is not None and not _is_cuda(device):
        why_not = f"a TensorRT engine runs on CUDA devices, got device={device!r}"
    if why_not is None:
        mod = native_module()
        if mod is None:
            from ..native import _HOW_TO_BUILD
            why_not = f"the native module cdd_engine._native is not built ({_HOW_TO_BUILD})"
        elif backend == "openvino" and not mod.WITH_OPENVINO:
            why_not = "this build of libcdd_engine has no OpenVINO backend"
        elif backend == "tensorrt" and not mod.WITH_TENSORRT:
            why_not = "this build of libcdd_engine has no TensorRT backend (configure with CDD_WITH_TENSORRT=ON)"
    if why_not is None:
        return "native", "auto: libcdd_engine is built and runs this engine" if runtime == "auto" else "asked for"
    if runtime == "native":
        if python_only:
            raise TypeError(f"runtime='native' does not take option(s) {python_only} (Python runtime only)")
        raise BackendUnavailable(f"runtime='native' cannot run {manifest['backend']!r} engine here: {why_not}")
    return "python", f"auto: {why_not}"


class NativeRunner:
    """The C++ engine on one engine directory (thread-safe; the GIL is released while it scores).

    Args:
        engine_dir: an engine directory already read and hash-checked by the caller.
        manifest: its engine.json.
        device: None / "cpu" for OpenVINO (C++ device "CPU"); None / "cuda[:i]" for TensorRT.
        num_threads: CPU threads; None or 0 = all cores.
        num_streams: inference requests that run at once (None: from ``openvino_mode``).
        openvino_mode: "auto" | "latency" -> 1 request, "throughput" -> 2 (STREAMS_FOR_MODE).
        static_shapes: OpenVINO static-shape networks per batch size (None = True).

    TensorRT engines (device "cuda[:i]", a module built with CDD_WITH_TENSORRT) are NOT RUN on the
    development and CI machines (no GPU, DESIGN.md §6): that path passes the module's documented
    ``device`` option; the choice logic is tested with a stand-in module.

    Raises:
        EngineFormatError: the C++ reader refuses the directory (ValueError / FileNotFoundError).
        BackendUnavailable: the C++ engine could not load the model here (RuntimeError).
    """

    def __init__(self, engine_dir: str | os.PathLike, manifest: dict, *, device: Any = None,
                 num_threads: int | None = None, num_streams: int | None = None, openvino_mode: str | None = None,
                 static_shapes: bool | None = None) -> None:
        mod = native_module()
        if mod is None:  # choose_runtime checked; the module could only vanish in between
            raise BackendUnavailable("the native module cdd_engine._native is not built")
        if manifest["backend"] != "openvino":  # the Python backends' rule and message
            given = sorted(k for k, v in (("mode", openvino_mode), ("static_shapes", static_shapes)) if v is not None)
            if given:
                raise TypeError(f"backend {manifest['backend']!r} does not take option(s) {given}")
        mode = check_openvino_mode(openvino_mode)
        streams = check_count(num_streams, "num_streams", 1) or STREAMS_FOR_MODE[mode]
        threads = check_count(num_threads, "num_threads", 0) or 0
        if manifest["backend"] == "tensorrt":
            cpp_device = "cuda" if device is None else str(torch.device(device))
        else:
            cpp_device = "CPU"
        try:
            # verify_hashes=False: the Python Engine already verified every file's SHA-256 while
            # reading engine.json (one hashing pass, Python's error messages); the C++ reader still
            # checks the format, the sizes and the model's shapes.
            self.engine = mod.Engine(str(engine_dir), num_threads=threads, num_streams=streams, device=cpp_device,
                                     verify_hashes=False, static_shapes=True if static_shapes is None
                                     else bool(static_shapes))
        except (ValueError, FileNotFoundError) as e:
            raise EngineFormatError(f"libcdd_engine refuses {engine_dir}: {e}") from e
        except RuntimeError as e:
            raise BackendUnavailable(f"libcdd_engine could not load {engine_dir} on {cpp_device}: {e}") from e
        self.version = str(mod.__version__)
        self.label = f"native C++ (libcdd_engine {self.version})"

    def score(self, arrays: np.ndarray | list[np.ndarray], pixel_format: str, return_maps: bool,
              map_size: str) -> tuple[np.ndarray, np.ndarray | list[np.ndarray] | None]:
        """-> (scores (N,) float32, maps: None / (N, H, W) float32 / list of (h_i, w_i) float32)."""
        scores, maps, _, _ = self.engine.score(arrays, pixel_format, return_maps, map_size)
        return scores, maps


def _readable(a: np.ndarray) -> bool:
    """True when the module reads a (..., H, W, C) uint8 frame in place: pixels packed inside a row
    (C bytes apart, channels 1 byte apart) and a positive row stride (the module's own rule)."""
    c = a.shape[-1]
    return (a.strides[-1] == 1 or c == 1) and a.strides[-2] == c and a.strides[-3] > 0


def _as_numpy(t: torch.Tensor) -> np.ndarray | None:
    if t.dtype != torch.uint8 or t.device.type != "cpu":
        return None
    a = t.numpy()  # shares memory with the caller's array or tensor
    return a if _readable(a) else np.ascontiguousarray(a)  # e.g. every other column: one copy


def native_arrays(frames: Frames) -> np.ndarray | list[np.ndarray] | None:
    """Validated frames -> the (N, H, W, C) array or list of (H, W, C) arrays the module reads in place
    (a layout it cannot read is copied once), or None when some frame is not a CPU uint8 frame."""
    if frames.batch is not None:
        return _as_numpy(frames.batch)
    out = []
    for t in frames.items:
        a = _as_numpy(t)
        if a is None:
            return None
        out.append(a)
    return out
