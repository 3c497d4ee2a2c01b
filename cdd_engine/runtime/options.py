"""An engine's load-time options for its backend, as typed objects (issue 12, docs/architecture.md).

One frozen dataclass per backend named in engine.json:

- :class:`OpenVINOOptions` (mode, sub_batch, static_shapes, num_streams)
- :class:`TorchOptions` (use_triton, cuda_graphs, num_streams)
- :class:`AotiOptions` (use_triton, cuda_graphs, num_streams)
- :class:`TensorRTOptions` (use_triton, num_streams)

Every field defaults to None, "not given": the backend's own default. Each field's metadata says
which runtime honours it (``runtime``: "python", "native" or "both"), so the runtime choice
(``native_runtime.choose_runtime``) and the Engine ask the object instead of keeping lists of
names. Values are checked once, when the object is made, with the messages the backends gave
before these objects existed. ``device`` and ``num_threads`` are not here: every backend and
both runtimes take them, so they stay arguments of :class:`~cdd_engine.runtime.engine.Engine`.

``Engine(..., openvino_mode=..., sub_batch=..., ...)`` keeps taking the options as keywords;
:func:`backend_options` maps them onto the class of the engine's backend.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Mapping

import numpy as np

PYTHON, NATIVE, BOTH = "python", "native", "both"
OPENVINO_MODES = ("auto", "latency", "throughput")
# Engine's keyword -> field name, where they differ (the keyword names the backend: Engine
# takes options of every backend side by side)
KEYWORD_FIELD = {"openvino_mode": "mode"}
LEGACY_KEYWORDS = ("use_triton", "openvino_mode", "sub_batch", "static_shapes", "num_streams", "cuda_graphs")


def check_count(value: Any, name: str, minimum: int) -> int | None:
    """None, or an integer >= ``minimum`` as an int (numpy integers too); else a ValueError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_mode(mode: Any) -> str:
    if mode not in OPENVINO_MODES:
        raise ValueError(f"OpenVINO mode must be one of {OPENVINO_MODES}, got {mode!r}")
    return mode


# The most frames per inference request when a batch is split over streams, when ``sub_batch`` is
# not given: 4 for INT8 engines (the C++ library's kInt8FramesPerRequest), 1 otherwise. Measured on
# the 2-core machine, batch 8 on 2 streams (benchmarks/RESULTS.md, "Frames per request"): INT8
# efficientnet_lite0 ran 1.23-1.30x faster at 4 than at 1 under the AVX2 cap (1.37-1.52x natively)
# and INT8 WRN50 within 1.1 %, while fp32 engines gained nothing from grouping frames.
INT8_SUB_BATCH = 4


def default_sub_batch(precision: str, max_batch: int) -> int:
    """Frames per request of an engine of ``precision`` when ``sub_batch`` is not given."""
    return min(INT8_SUB_BATCH, max_batch) if precision == "int8" else 1


def _check_sub_batch(sub_batch: Any) -> int:
    # a plain int, as the Python OpenVINO backend always required (a numpy integer is refused)
    if isinstance(sub_batch, bool) or not isinstance(sub_batch, int) or sub_batch < 1:
        raise ValueError(f"sub_batch must be a positive integer, got {sub_batch!r}")
    return sub_batch


def _option(runtime: str, check: Callable[[Any], Any] | None = None) -> Any:
    """A field defaulting to None ("not given"); ``runtime``: which runtime honours it; ``check``:
    validates and normalises a given value (None: taken as it is, as before these objects)."""
    return field(default=None, metadata={"runtime": runtime, "check": check})


def _num_streams() -> Any:
    return _option(NATIVE, lambda v: check_count(v, "num_streams", 1))


@dataclass(frozen=True)
class BackendOptions:
    """Base of the per-backend option classes: the checks and the questions the runtimes ask."""

    backend: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in fields(self):
            value, check = getattr(self, f.name), f.metadata["check"]
            if value is not None and check is not None:
                object.__setattr__(self, f.name, check(value))

    def given(self) -> dict[str, Any]:
        """{field: value} of the options given (not None)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def only_for(self, runtime: str) -> list[str]:
        """Sorted names of the given options that only ``runtime`` ("python" or "native") honours."""
        return sorted(f.name for f in fields(self) if f.metadata["runtime"] == runtime
                      and getattr(self, f.name) is not None)

    def python_backend_kwargs(self) -> dict[str, Any]:
        """The given options the Python backend takes, as its keyword arguments (same names)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.metadata["runtime"] != NATIVE and getattr(self, f.name) is not None}


@dataclass(frozen=True)
class OpenVINOOptions(BackendOptions):
    """OpenVINO engines (backends/openvino_backend.py on the Python runtime, libcdd_engine natively).

    mode ("both"; the Engine keyword ``openvino_mode``): "auto" (default), "latency" or
        "throughput": how a batch runs. Natively it sets the C++ inference requests
        (native_runtime.STREAMS_FOR_MODE).
    sub_batch ("both"): the most frames per inference request when a batch is split over
        streams (never fewer requests than streams), at most the engine's max_batch (default:
        ``default_sub_batch``, 4 for INT8 engines and 1 otherwise). Natively: the C++ library's
        ``frames_per_request``.
    static_shapes ("both"): a static-shape network per batch size (default True).
    num_streams ("native"): inference requests running at once (default from ``mode``).
    """

    backend: ClassVar[str] = "openvino"
    mode: str | None = _option(BOTH, _check_mode)
    sub_batch: int | None = _option(BOTH, _check_sub_batch)
    static_shapes: bool | None = _option(BOTH, bool)
    num_streams: int | None = _num_streams()


@dataclass(frozen=True)
class TorchOptions(BackendOptions):
    """torch engines (backends/torch_backend.py; the Python runtime only).

    use_triton ("python"): the Triton kernels (default: on CUDA when they import).
    cuda_graphs ("python"): on CUDA with the Triton kernels, uint8 batches through CUDA graphs
        (default on; runtime/cuda_graphs.py).
    num_streams ("native"): never used, as a torch engine always runs on the Python runtime; kept
        so that passing it behaves as for any engine the Python runtime runs (ignored with a
        warning under runtime="auto", a TypeError with runtime="python").
    """

    backend: ClassVar[str] = "torch"
    use_triton: bool | None = _option(PYTHON)
    cuda_graphs: bool | None = _option(PYTHON)
    num_streams: int | None = _num_streams()


@dataclass(frozen=True)
class AotiOptions(BackendOptions):
    """aoti engines (backends/aoti_backend.py; natively with a module built with CDD_WITH_AOTI).

    use_triton ("python"): the Triton kernels (default: on CUDA when they import).
    cuda_graphs ("python"): on CUDA, uint8 batches through CUDA graphs (default on). Asking for
        it makes "auto" pick the Python runtime and is a BackendUnavailable with runtime="native".
    num_streams ("native"): model instances running at once.
    """

    backend: ClassVar[str] = "aoti"
    use_triton: bool | None = _option(PYTHON)
    cuda_graphs: bool | None = _option(PYTHON)
    num_streams: int | None = _num_streams()


@dataclass(frozen=True)
class TensorRTOptions(BackendOptions):
    """TensorRT engines (backends/tensorrt_backend.py; natively with a module built with TensorRT).

    use_triton ("python"): the Triton kernels around the plan (default: when they import).
    num_streams ("native"): execution contexts running at once (default 1).
    """

    backend: ClassVar[str] = "tensorrt"
    use_triton: bool | None = _option(PYTHON)
    num_streams: int | None = _num_streams()


OPTIONS_CLASSES: dict[str, type[BackendOptions]] = {
    cls.backend: cls for cls in (OpenVINOOptions, TorchOptions, AotiOptions, TensorRTOptions)}


def backend_options(backend: str, options: Any = None, **keywords: Any) -> BackendOptions:
    """The typed options of an engine whose engine.json names ``backend``: ``options`` itself
    (an object of that backend's class), or the object the Engine's keywords (``LEGACY_KEYWORDS``,
    None = not given) make.

    Raises:
        TypeError: ``options`` is not the backend's class, both ``options`` and a keyword are
            given, or a keyword is an option of another backend (as the backends said before:
            "backend 'torch' does not take option(s) ['mode']").
        ValueError: a bad value (the field's check).
    """
    unexpected = sorted(set(keywords) - set(LEGACY_KEYWORDS))
    if unexpected:
        raise TypeError(f"unexpected engine option keyword(s) {unexpected}")
    cls = OPTIONS_CLASSES[backend]  # read_manifest already refuses unknown backends
    given = {k: v for k, v in keywords.items() if v is not None}
    if options is not None:
        if not isinstance(options, BackendOptions):
            names = ", ".join(c.__name__ for c in OPTIONS_CLASSES.values())
            raise TypeError(f"options must be one of {names} (cdd_engine) or None, got {type(options).__name__}")
        if given:
            raise TypeError(f"options={options!r} and the keyword(s) {sorted(given)} both set engine "
                            f"options: give each option once, in the options object")
        if type(options) is not cls:
            raise TypeError(f"a {backend!r} engine takes {cls.__name__}, got {type(options).__name__}")
        return options
    names = {f.name for f in fields(cls)}
    by_field = {KEYWORD_FIELD.get(k, k): v for k, v in given.items()}
    # another backend's option: a TypeError, whichever runtime would run the engine
    foreign = sorted(k for k in by_field if k not in names)
    if foreign:
        raise TypeError(f"backend {backend!r} does not take option(s) {foreign}")
    return cls(**by_field)


def as_options(backend: str, options: BackendOptions | Mapping[str, Any] | None) -> BackendOptions:
    """An options object, or a mapping of the Engine's keywords made into one (callers of
    ``choose_runtime`` written before the objects pass ``{}``)."""
    if isinstance(options, BackendOptions):
        return backend_options(backend, options)
    return backend_options(backend, **dict(options or {}))
