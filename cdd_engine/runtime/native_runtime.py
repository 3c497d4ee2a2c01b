"""The native runtime of :class:`~cdd_engine.runtime.engine.Engine`: libcdd_engine (C++) through
the pybind11 module ``cdd_engine._native``, used for OpenVINO engines on the CPU, TensorRT engines
on CUDA devices and aoti engines (AOTInductor packages, on the device they were compiled for) when
the module is built with that backend.

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
import threading
from typing import Any

import numpy as np
import torch

from ..errors import BackendUnavailable, EngineError, EngineFormatError, NonFiniteOutputError
from .frames import Frames
from .options import PYTHON, BackendOptions, OpenVINOOptions, as_options, check_count

RUNTIMES = ("auto", "native", "python")
# openvino_mode -> C++ inference requests (streams), as the Python OpenVINO backend runs its modes:
# "latency": one request on all threads; "throughput": a call's frames split over two requests
# running at once (what the Python runtime's THROUGHPUT hint chose on 2 cores); "auto": single
# frames on a 1-stream engine, calls of 2+ frames on a 2-stream engine created on the first such
# call (a second compiled network, as the Python runtime's latency + throughput models).
# Measured (benchmarks/RESULTS.md, WRN50 256², 2 cores): a single frame on all threads took 442 ms
# in a quiet window (Python path) while one frame costs ~0.8 s of CPU, so a 1-thread stream would
# need ~0.8 s; batch 8 under load ran at 0.96-1.01x the Python runtime on 2 streams and
# 0.82-0.86x on 1 (same CPU work). Pass num_streams= for a fixed count (bigger machines).
STREAMS_FOR_MODE = {"latency": 1, "throughput": 2}
AUTO_SINGLE_STREAMS, AUTO_BATCH_STREAMS = 1, 2


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


def choose_runtime(runtime: str, manifest: dict, device: Any,
                   options: BackendOptions | dict[str, Any] | None = None) -> tuple[str, str]:
    """-> ("native" | "python", reason). ``options``: the engine's typed options (runtime/options.py;
    a dict of the Engine's keywords is made into one).

    "auto" picks native when the module is built and can run this engine here: an OpenVINO
    engine on the CPU, a TensorRT engine on a CUDA device with a module built with TensorRT, or
    an aoti engine with a module built with CDD_WITH_AOTI against this process's torch (and
    CDD_WITH_CUDA for a CUDA package), and no option only the Python runtime honours (a field
    whose metadata says runtime "python") was given. "native" raises BackendUnavailable when it
    cannot, and a TypeError for such an option (a BackendUnavailable for an aoti engine's
    ``cuda_graphs``, as before the options objects).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "python":
        return "python", "asked for"
    backend = manifest["backend"]
    options = as_options(backend, options)
    if backend == "aoti":
        why_not = _aoti_module_why_not(options)
        if why_not is not None:
            if runtime == "native":
                raise BackendUnavailable(f"runtime='native' cannot run 'aoti' engine here: {why_not}")
            return "python", f"auto: {why_not}"
    python_only = options.only_for(PYTHON)
    why_not = None
    if backend == "torch":
        why_not = "a torch engine (PyTorch weights) runs on the Python runtime only"
    elif python_only:
        why_not = f"option(s) {python_only} belong to the Python runtime"
    elif backend == "openvino" and not _is_cpu(device):
        why_not = f"the OpenVINO backend runs on the CPU, got device={device!r}"
    elif backend == "tensorrt" and device is not None and not _is_cuda(device):
        why_not = f"a TensorRT engine runs on CUDA devices, got device={device!r}"
    # aoti: a device other than the package's is refused by the C++ reader itself (EngineFormatError,
    # as on the Python runtime), not routed elsewhere
    if why_not is None:
        mod = native_module()
        if mod is None:
            from ..native import HOW_TO_BUILD
            why_not = f"the native module cdd_engine._native is not built ({HOW_TO_BUILD})"
        elif backend == "openvino" and not mod.WITH_OPENVINO:
            why_not = "this build of libcdd_engine has no OpenVINO backend"
        elif backend == "tensorrt" and not mod.WITH_TENSORRT:
            why_not = "this build of libcdd_engine has no TensorRT backend (configure with CDD_WITH_TENSORRT=ON)"
        elif backend == "aoti":
            why_not = _aoti_why_not(mod, manifest, device)
    if why_not is None:
        return "native", "auto: libcdd_engine is built and runs this engine" if runtime == "auto" else "asked for"
    if runtime == "native":
        if python_only:
            raise TypeError(f"runtime='native' does not take option(s) {python_only} (Python runtime only)")
        raise BackendUnavailable(f"runtime='native' cannot run {manifest['backend']!r} engine here: {why_not}")
    return "python", f"auto: {why_not}"


def _aoti_module_why_not(options: BackendOptions) -> str | None:
    """The aoti rules checked before the others (their messages and error type predate the options
    objects, and tests pin them): ``cuda_graphs`` belongs to the Python runtime, and the module
    must have the AOTInductor backend."""
    if getattr(options, "cuda_graphs", None) is not None:
        return "option cuda_graphs belongs to the Python runtime"
    mod = native_module()
    if mod is None or not getattr(mod, "WITH_AOTI", False):
        return "this build of libcdd_engine has no AOTInductor backend"
    return None


def _aoti_why_not(mod: Any, manifest: dict, device: Any) -> str | None:
    """Why the module cannot run this aoti engine in this process, or None. The module's AOTI code
    links the libtorch it was built against, and this process has already loaded a torch: the two
    must be the same build (the shared libraries have the same names, so the one loaded first is
    the one both use)."""
    if not getattr(mod, "WITH_AOTI", False):
        return ("this build of libcdd_engine was built without AOTInductor support (CDD_WITH_AOTI): "
                "reconfigure csrc/ with -DCDD_WITH_AOTI=ON (csrc/README.md)")
    built = str(getattr(mod, "AOTI_TORCH_VERSION", ""))
    if built != torch.__version__:
        return (f"libcdd_engine's AOTInductor backend was built against torch {built}, this process runs torch "
                f"{torch.__version__}: rebuild the native module against this torch")
    on_cuda = _is_cuda(device) if device is not None else manifest.get("aoti", {}).get("device") == "cuda"
    if on_cuda and not mod.WITH_CUDA:
        return ("a CUDA aoti engine needs libcdd_engine built with CDD_WITH_CUDA=ON as well as CDD_WITH_AOTI "
                "(GPU pre/post-processing around the package)")
    return None


def _native_device(manifest: dict, device: Any) -> str:
    """The C++ engine's device string: "CPU" for OpenVINO; "cuda[:i]" for TensorRT; for aoti the
    package's device kind ("CPU" or "cuda[:i]") unless the caller named one."""
    backend = manifest["backend"]
    if backend == "openvino":
        return "CPU"
    if backend == "aoti":
        if device is None:
            return "cuda" if manifest["aoti"]["device"] == "cuda" else "CPU"
        kind = _device_type(device)
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"an aoti engine runs on 'cpu' or 'cuda[:i]', got device={device!r}")
        d = torch.device(device)
        return "CPU" if kind == "cpu" else str(d)
    return "cuda" if device is None else str(torch.device(device))


class NativeRunner:
    """The C++ engine on one engine directory (thread-safe; the GIL is released while it scores).

    Args:
        engine_dir: an engine directory already read and hash-checked by the caller.
        manifest: its engine.json.
        device: None / "cpu" for OpenVINO (C++ device "CPU"); None / "cuda[:i]" for TensorRT; for aoti
            None (the package's device) or the device it was compiled for (another is refused).
        options: the engine's typed options (runtime/options.py), already checked; the native
            runtime reads ``num_streams`` (requests that run at once; None: 1, or from ``mode``)
            and, for OpenVINO, ``mode`` ("latency" -> 1 stream, "throughput" -> 2, "auto"
            (default) -> 1 for single frames and 2 for calls of several frames, a second C++
            engine loaded on first need), ``static_shapes`` (None = True) and ``sub_batch`` (the
            library's ``frames_per_request``; None = by precision).
        num_threads: CPU threads; None or 0 = all cores.

    TensorRT engines (device "cuda[:i]", a module built with CDD_WITH_TENSORRT) are NOT RUN on the
    development and CI machines (no GPU, docs/where_it_runs.md): that path passes the module's documented
    ``device`` option (one engine, ``num_streams`` or 1 execution context); the choice logic is
    tested with a stand-in module.

    Raises:
        EngineFormatError: the C++ reader refuses the directory (ValueError / FileNotFoundError).
        BackendUnavailable: the C++ engine could not load the model here (RuntimeError).
    """

    def __init__(self, engine_dir: str | os.PathLike, manifest: dict, options: BackendOptions | None = None,
                 *, device: Any = None, num_threads: int | None = None) -> None:
        mod = native_module()
        if mod is None:  # choose_runtime checked; the module could only vanish in between
            raise BackendUnavailable("the native module cdd_engine._native is not built")
        options = as_options(manifest["backend"], options)  # the backend's class, values checked when made
        openvino = isinstance(options, OpenVINOOptions)
        mode = (options.mode or "auto") if openvino else "auto"
        static_shapes = options.static_shapes if openvino else None
        streams = options.num_streams
        self._adaptive = openvino and streams is None and mode == "auto"
        if streams is None:
            streams = AUTO_SINGLE_STREAMS if self._adaptive or not openvino else STREAMS_FOR_MODE[mode]
        self._engine_dir = str(engine_dir)
        self._device = _native_device(manifest, device)
        # verify_hashes=False: the Python Engine already verified every file's SHA-256 while reading
        # engine.json (one hashing pass, Python's error messages); the C++ reader still checks the
        # format, the sizes and the model's shapes.
        self._options = dict(num_threads=check_count(num_threads, "num_threads", 0) or 0, device=self._device,
                             verify_hashes=False,
                             static_shapes=True if static_shapes is None else static_shapes)
        if openvino:  # None: the library's rule by precision, the same as options.default_sub_batch
            self._options["frames_per_request"] = options.sub_batch or 0
        self._mod = mod
        self.engine = self._load(streams)
        self._batch_engine: Any = None
        self._lock = threading.Lock()
        self.version = str(mod.__version__)
        self.label = f"native C++ (libcdd_engine {self.version})"

    def _load(self, streams: int) -> Any:
        try:
            return self._mod.Engine(self._engine_dir, num_streams=streams, **self._options)
        except (ValueError, FileNotFoundError) as e:
            raise EngineFormatError(f"libcdd_engine refuses {self._engine_dir}: {e}") from e
        except RuntimeError as e:
            raise BackendUnavailable(f"libcdd_engine could not load {self._engine_dir} on {self._device}: {e}") from e

    def engine_for(self, n: int) -> Any:
        """The C++ engine that scores a call of ``n`` frames (see ``openvino_mode="auto"``)."""
        if not self._adaptive or n < 2:
            return self.engine
        if self._batch_engine is None:
            with self._lock:
                if self._batch_engine is None:
                    self._batch_engine = self._load(AUTO_BATCH_STREAMS)
        return self._batch_engine

    def score(self, arrays: np.ndarray | list[np.ndarray], pixel_format: str, return_maps: bool,
              map_size: str) -> tuple[np.ndarray, np.ndarray | list[np.ndarray] | None]:
        """-> (scores (N,) float32, maps: None / (N, H, W) float32 / list of (h_i, w_i) float32).

        Raises NonFiniteOutputError when the C++ engine reports NaN/inf output (its NonFinite error
        code, whichever Python class the module maps it to), EngineError for its other failures."""
        engine = self.engine_for(len(arrays))
        try:
            # The library's verdict and threshold are not used: Engine._result gives the verdict on
            # both runtimes, with the threshold the caller may set after load (the library's is
            # fixed when it is created) and the on_non_finite rule. The comparison is the library's:
            # float32 score > the threshold rounded to float32 (tests/test_engine_options.py).
            scores, maps, _, _ = engine.score(arrays, pixel_format, return_maps, map_size)
        except (NonFiniteOutputError, EngineError):
            raise
        except RuntimeError as e:
            if "non-finite" in str(e).lower():
                raise NonFiniteOutputError(str(e)) from e
            raise EngineError(f"libcdd_engine failed scoring with {self._engine_dir}: {e}") from e
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
