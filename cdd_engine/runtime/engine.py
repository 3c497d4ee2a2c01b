"""``Engine``: an engine directory loaded for scoring uint8 camera frames.

    engine = cdd_engine.load("engines/bottle")            # or cdd_engine.build(run_dir)
    result = engine.score(frames, pixel_format="BGR")      # (N,H,W,3) uint8, or a list of frames
    result.scores, result.is_anomalous, result.maps, result.threshold

Frames of any size are resized to the model resolution (antialiased, as in training), run in
chunks of at most ``max_batch`` through the backend's network with the anomaly map of
docs/anomaly_map.md, and returned as numpy arrays. Thread-safe: buffers and inference requests are
per thread.

Two runtimes run the same engine directory (``Engine(..., runtime=...)``, ``engine.runtime`` says which):

- "native": the C++ library libcdd_engine through ``cdd_engine._native`` (native_runtime.py), for
  OpenVINO engines on the CPU and TensorRT engines on CUDA devices, when the module is built. It
  scores CPU uint8 frames (numpy arrays, CPU torch tensors, lists of them); other frames (float,
  on a GPU) go to the Python runtime, created on first need;
- "python": the backends of ``runtime/backends`` (every backend, every frame type).

"auto" (default) picks native where it can and logs the choice on the ``cdd_engine`` logger.
"""
from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .backends import make_backend
from ..engine_format import read_manifest
from ..errors import BackendUnavailable, EngineError, NonFiniteOutputError
from ..threshold import is_anomalous
from .frames import Frames, to_frames
from .native_runtime import NativeRunner, choose_runtime, native_arrays
from .options import NATIVE, BackendOptions, backend_options
from .resize_normalize import Preprocessor

log = logging.getLogger("cdd_engine")
MAP_SIZES = ("model", "input")
PYTHON_RUNTIME = "python"
# what Engine.score does with a frame whose score or map holds NaN/inf (a diverged model, bad weights)
ON_NON_FINITE = ("raise", "anomalous")


@dataclass
class ScoreResult:
    """Per-image results of :meth:`Engine.score` for N frames.

    scores: (N,) float32 raw image scores (max of the anomaly map).
    maps: (N, H, W) float32 at model resolution; with ``map_size="input"`` a list of N
        (h_i, w_i) float32 maps, one per frame at its own size; None with ``return_maps=False``.
    is_anomalous: (N,) bool, ``scores > threshold`` (or a non-finite output, see below).
    threshold: the threshold used.
    non_finite: (N,) bool, True where the model produced NaN/inf (only with
        ``on_non_finite="anomalous"``: such frames get score NaN and ``is_anomalous`` True;
        by default a call with such a frame raises NonFiniteOutputError instead).
    """

    scores: np.ndarray
    maps: np.ndarray | list[np.ndarray] | None
    is_anomalous: np.ndarray
    threshold: float
    non_finite: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.non_finite is None:
            self.non_finite = np.zeros(self.scores.shape, dtype=bool)

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def check_threshold(value: Any) -> float:
    """A threshold as a float; anything but a finite number is a ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not math.isfinite(float(value)):
        raise ValueError(f"threshold must be a finite number, got {value!r}")
    return float(value)


def to_numpy(x: Any) -> np.ndarray:
    """A backend's output as a numpy array (a tensor on any device: float32 on the CPU)."""
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _non_finite(maps: Any, scores: np.ndarray) -> np.ndarray:
    """(B,) bool: a frame whose score or any map pixel is NaN/inf. The map is checked too because a
    max that skips NaN (OpenVINO's ReduceMax) turns an all-NaN map into a finite -3.4e38 score."""
    bad = ~np.isfinite(scores)
    if isinstance(maps, torch.Tensor):
        bad |= ~torch.isfinite(maps.flatten(1)).all(dim=1).cpu().numpy()
    else:
        bad |= ~np.isfinite(np.asarray(maps).reshape(len(scores), -1)).all(axis=1)
    return bad


def _check_on_non_finite(value: Any) -> str:
    if value not in ON_NON_FINITE:
        raise ValueError(f"on_non_finite must be one of {ON_NON_FINITE}, got {value!r}")
    return value


class Engine:
    """A loaded engine directory (docs/engine_format.md).

    Args:
        engine_dir: directory written by :func:`cdd_engine.build`.
        threshold: overrides the threshold stored in engine.json (also settable later:
            ``engine.threshold = t``).
        device: "cpu" or "cuda[:i]" for the torch backend; the tensorrt backend needs CUDA,
            openvino runs on the CPU; an aoti engine runs on the device kind it was compiled for
            (default: that one; another is an EngineFormatError saying to rebuild).
        num_threads: inference threads (OpenVINO ``INFERENCE_NUM_THREADS``; torch intra-op threads).
        options: the backend's options as one typed object (runtime/options.py, exported by
            ``cdd_engine``): :class:`OpenVINOOptions` (mode, sub_batch, static_shapes,
            num_streams), :class:`TorchOptions` (use_triton, cuda_graphs, num_streams),
            :class:`AotiOptions` (use_triton, cuda_graphs, num_streams) or
            :class:`TensorRTOptions` (use_triton, num_streams), the class of the backend in
            engine.json (another is a TypeError). Each field's metadata says which runtime honours
            it; values are checked when the object is made. The keywords below are the same
            options, kept: they make the object (``engine.options``). Giving ``options`` and one of
            them is a TypeError, and so is a keyword of another backend ("backend 'torch' does not
            take option(s) ['mode']"), whatever the runtime.
        use_triton: torch/tensorrt/aoti backends: use the Triton kernels (default: on CUDA when present).
        cuda_graphs: torch and aoti backends on CUDA: score uint8 frame batches through CUDA graphs
            captured per batch bucket (default on; runtime/cuda_graphs.py; not run on a GPU here).
        openvino_mode, sub_batch, static_shapes: how OpenVINO runs a batch: "auto" (default:
            one latency request for a single image, batches split into requests of ``sub_batch``
            images at most on the plugin's streams; default 4 for INT8 engines, 1 otherwise, at
            most max_batch), "latency" or "throughput"; static shapes per batch size (default). See
            backends/openvino_backend.py. On the native runtime ``openvino_mode`` sets the C++
            inference requests ("latency": 1, "throughput": 2, "auto": 1 for single frames and 2
            for several, as the Python modes; see native_runtime.STREAMS_FOR_MODE) and
            ``sub_batch`` is the library's ``frames_per_request``.
        verify_hashes: check every file's SHA-256 against engine.json (sizes are always checked).
            Done once, here, for both runtimes (the C++ reader is told not to hash again).
        runtime: "auto" (default: native when ``cdd_engine.native.available()`` and the engine is
            OpenVINO on the CPU or TensorRT on CUDA with a TensorRT build of the library, else
            python), "native" (BackendUnavailable when it cannot run here) or "python".
        num_streams: native runtime: inference requests running at once (default from
            ``openvino_mode``). A TypeError with runtime="python"; ignored with a warning when
            "auto" ends on the Python runtime.

    Raises:
        EngineFormatError: missing, corrupt, truncated or mismatched engine directory.
        BackendUnavailable: the backend's runtime or device is not present.
    """

    def __init__(self, engine_dir: str | os.PathLike, *, threshold: float | None = None,
                 device: str | torch.device | None = None, num_threads: int | None = None,
                 use_triton: bool | None = None, openvino_mode: str | None = None,
                 sub_batch: int | None = None, static_shapes: bool | None = None,
                 verify_hashes: bool = True, runtime: str = "auto", num_streams: int | None = None,
                 cuda_graphs: bool | None = None, options: BackendOptions | None = None) -> None:
        self.engine_dir = Path(engine_dir)
        self.manifest = read_manifest(self.engine_dir, verify_hashes=verify_hashes)
        self._threshold = check_threshold(self.manifest["threshold"]["value"] if threshold is None else threshold)
        self.image_size: tuple[int, int] = tuple(self.manifest["image_size"])
        self.max_batch: int = int(self.manifest["max_batch"])
        inp = self.manifest["input"]
        self._pre = Preprocessor(self.image_size, inp["mean"], inp["std"])
        self._local = threading.local()
        # one typed object from options= or the keywords, checked once (runtime/options.py)
        self.options = backend_options(self.manifest["backend"], options, use_triton=use_triton,
                                       openvino_mode=openvino_mode, sub_batch=sub_batch,
                                       static_shapes=static_shapes, num_streams=num_streams,
                                       cuda_graphs=cuda_graphs)
        sub_batch = getattr(self.options, "sub_batch", None)
        if sub_batch is not None and sub_batch > self.max_batch:  # both runtimes: the C++ library's rule
            raise ValueError(f"sub_batch must be at most the engine's max_batch={self.max_batch}, got {sub_batch}")
        self._device, self._num_threads = device, num_threads
        self._backend: Any = None
        self._backend_lock = threading.Lock()
        self._native: NativeRunner | None = None
        name, reason = choose_runtime(runtime, self.manifest, device, self.options)
        if name == "native":
            try:
                self._native = NativeRunner(self.engine_dir, self.manifest, self.options, device=device,
                                            num_threads=num_threads)
            except BackendUnavailable as e:
                if runtime == "native":
                    raise
                name, reason = PYTHON_RUNTIME, f"auto: the C++ engine could not load it ({e})"
                log.warning("engine %s: %s", self.engine_dir, reason)
        if name != "native":
            for option in self.options.only_for(NATIVE):  # num_streams
                if runtime == "python":
                    raise TypeError(f"{option} is an option of the native runtime; runtime='python' "
                                    "does not take it")
                log.warning("%s=%s ignored: the Python runtime runs this engine (%s)", option,
                            getattr(self.options, option), reason)
            # the Python runtime builds its backend now, so option and device errors surface at load
            self._backend = self._make_backend()
        log.info("engine %s (%s backend): runtime %s (%s)", self.engine_dir, self.backend_name, self.runtime, reason)

    # ------------------------------------------------------------------ properties
    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._threshold = check_threshold(value)

    @property
    def backend_name(self) -> str:
        return self.manifest["backend"]

    @property
    def runtime(self) -> str:
        """What scores uint8 CPU frames: "native C++ (libcdd_engine x.y.z)" or "python"."""
        return self._native.label if self._native is not None else PYTHON_RUNTIME

    @property
    def backend(self) -> Any:
        """The Python backend (runtime/backends). On the native runtime it is created on first use
        (float or GPU frames, :meth:`features`, :meth:`prepare`), so that the common case compiles
        the network once, in C++."""
        if self._backend is None:
            with self._backend_lock:
                if self._backend is None:
                    log.info("engine %s: creating the Python %s backend (frames or a call the native "
                             "runtime does not take)", self.engine_dir, self.backend_name)
                    self._backend = self._make_backend()
        return self._backend

    def _make_backend(self) -> Any:
        return make_backend(self.engine_dir, self.manifest, self.options, device=self._device,
                            num_threads=self._num_threads)

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    def __repr__(self) -> str:
        src = self.manifest.get("source_checkpoint")
        src = src if isinstance(src, dict) else {}  # informative only: readers do not require it
        return (f"Engine({str(self.engine_dir)!r}, backend={self.backend_name}, precision={self.precision}, "
                f"backbone={src.get('backbone')}, image_size={self.image_size}, max_batch={self.max_batch}, "
                f"threshold={self.threshold:.6g}, runtime={self.runtime!r})")

    # ------------------------------------------------------------------ scoring
    def _input_buffer(self, n: int) -> torch.Tensor:
        buf = getattr(self._local, "buffer", None)
        if buf is None or buf.shape[0] < n:
            fmt = getattr(self.backend, "input_memory_format", torch.contiguous_format)
            buf = torch.empty(max(n, 1), 3, *self.image_size, dtype=torch.float32, device=self.backend.device,
                              memory_format=fmt)
            self._local.buffer = buf
        return buf[:n]  # a leading-dimension slice keeps the memory format

    def prepare(self, frames: Frames, start: int, stop: int) -> torch.Tensor:
        """frames[start:stop] -> normalised (n, 3, H, W) float32 on the backend's device.

        The returned tensor may be a per-thread buffer reused by the next call.
        """
        fused = getattr(self.backend, "fused_preprocess", None)
        if fused is not None:
            group = frames.batch[start:stop] if frames.batch is not None else None
            if group is not None and group.dtype == torch.uint8:
                return fused(group, frames.pixel_format)
            if group is None and all(frames.items[i].dtype == torch.uint8 for i in range(start, stop)):
                return torch.cat([fused(frames.items[i].unsqueeze(0), frames.pixel_format)
                                  for i in range(start, stop)])
        return self._pre.fill(frames, start, stop, self._input_buffer(stop - start))

    def score(self, images: Any, pixel_format: str = "RGB", return_maps: bool = True,
              map_size: str = "model", *, float_range: tuple[float, float] | None = None,
              on_non_finite: str = "raise") -> ScoreResult:
        """Score camera frames.

        Args:
            images: uint8 (N, H, W, C) numpy array or torch tensor, or a list of (H, W, C) frames of
                any sizes (C = 3 for RGB/BGR, 1 or absent for MONO). Float frames need
                ``float_range``. Any N: chunks of at most ``max_batch`` go to the backend.
                On the native runtime CPU uint8 frames are read in place by the C++ engine; float
                frames and frames on a GPU are scored by the Python runtime.
            pixel_format: "RGB", "BGR" or "MONO".
            return_maps: False skips copying maps out (the score still comes from the full map).
            map_size: "model" -> (N, H, W) at the model resolution; "input" -> a list of maps,
                each resized (bilinear, antialiased) to its frame's size.
            float_range: for float frames, ``(black, white)`` such as ``(0, 1)`` or ``(0, 255)``;
                values outside it are refused. Float frames without it raise a TypeError (a 0..1
                frame read as 0..255 would silently get another score). Ignored for uint8 frames.
            on_non_finite: what a frame whose score or map is NaN/inf (a diverged model, bad
                weights) gets: "raise" (default) -> NonFiniteOutputError for the call;
                "anomalous" -> score NaN, ``is_anomalous`` True and ``non_finite`` True for that
                frame. Never a "normal" verdict.

        Returns:
            :class:`ScoreResult`.

        Raises:
            TypeError, ValueError: bad frames or arguments (nothing is scored).
            NonFiniteOutputError: the model produced NaN/inf (with on_non_finite="raise").
            EngineError: the backend failed (its error chained).
        """
        if map_size not in MAP_SIZES:
            raise ValueError(f"map_size must be one of {MAP_SIZES}, got {map_size!r}")
        _check_on_non_finite(on_non_finite)
        # both runtimes: the same checks and messages
        frames = to_frames(images, pixel_format, float_range=float_range)
        threshold = self._threshold  # one value for the whole call, even if another thread sets it
        if self._native is not None:
            arrays = native_arrays(frames)
            if arrays is not None:
                try:
                    scores, maps = self._native.score(arrays, frames.pixel_format, return_maps, map_size)
                except NonFiniteOutputError:
                    if on_non_finite == "raise":
                        raise
                    # the C++ engine raises for the whole call; the Python runtime says which frames
                    log.warning("engine %s: non-finite output on the native runtime; scoring the call again on "
                                "the Python runtime to flag the frames", self.engine_dir)
                else:
                    # no second pass over the maps: the C++ engine raises for any non-finite score,
                    # and its map max propagates NaN, so a finite score means a finite map
                    return self._result(scores, maps, ~np.isfinite(scores), threshold, on_non_finite)
        try:
            with torch.no_grad():
                scores, maps, bad = self._score_python(frames, return_maps, map_size)
        except BaseException:
            self._local.buffer = None  # never reuse a buffer a failed call may have left half-written
            raise
        return self._result(scores, maps, bad, threshold, on_non_finite)

    def _score_python(self, frames: Frames, return_maps: bool, map_size: str) -> tuple:
        n = len(frames)
        H, W = self.image_size
        scores = np.empty(n, dtype=np.float32)
        bad = np.zeros(n, dtype=bool)
        model_maps = np.empty((n, H, W), dtype=np.float32) if return_maps and map_size == "model" else None
        input_maps: list[np.ndarray] | None = [] if return_maps and map_size == "input" else None
        fast = self._score_uint8(frames, return_maps)
        if fast is not None:  # the GPU path: every chunk through a CUDA graph, uploads overlapped
            scores, maps_np = fast
            bad = ~np.isfinite(scores)
            if maps_np is not None:
                bad |= ~np.isfinite(maps_np.reshape(n, -1)).all(axis=1)
                if input_maps is not None:
                    maps_t = torch.from_numpy(maps_np)
                    input_maps = [_resize_map(maps_t[i], frames.size(i)) for i in range(n)]
            return scores, input_maps if input_maps is not None else maps_np, bad
        for start in range(0, n, self.max_batch):
            stop = min(n, start + self.max_batch)
            maps, s = self._backend_call("score_batch", self.prepare(frames, start, stop))
            scores[start:stop] = to_numpy(s)
            bad[start:stop] = _non_finite(maps, scores[start:stop])
            if model_maps is not None:
                model_maps[start:stop] = to_numpy(maps)
            elif input_maps is not None:
                maps_t = maps if isinstance(maps, torch.Tensor) else torch.from_numpy(np.asarray(maps))
                for i in range(start, stop):
                    input_maps.append(_resize_map(maps_t[i - start], frames.size(i)))
        return scores, model_maps if model_maps is not None else input_maps, bad

    def _score_uint8(self, frames: Frames, return_maps: bool) -> tuple[np.ndarray, np.ndarray | None] | None:
        """A backend's whole-call uint8 path (aoti on CUDA: CUDA graphs, runtime/cuda_graphs.py), for
        a batch of equal-size uint8 host frames; None when it does not apply."""
        fn = getattr(self.backend, "score_uint8", None)
        batch = frames.batch
        if fn is None or batch is None or batch.dtype != torch.uint8 or batch.device.type != "cpu":
            return None
        try:
            return fn(batch, frames.pixel_format, return_maps)
        except (EngineError, ValueError, TypeError, MemoryError):
            raise
        except Exception as e:  # noqa: BLE001 - re-raised as the engine's own type, cause chained
            raise EngineError(f"engine {self.engine_dir}: the {self.backend_name} backend failed: "
                              f"{type(e).__name__}: {e}") from e

    def _backend_call(self, method: str, x: torch.Tensor) -> Any:
        """A Python backend's method; its own failures (torch, OpenVINO, TensorRT) become EngineError."""
        try:
            return getattr(self.backend, method)(x)
        except (EngineError, ValueError, TypeError, MemoryError):
            raise
        except Exception as e:  # noqa: BLE001 - re-raised as the engine's own type, cause chained
            raise EngineError(f"engine {self.engine_dir}: the {self.backend_name} backend failed: "
                              f"{type(e).__name__}: {e}") from e

    def _result(self, scores: np.ndarray, maps: Any, bad: np.ndarray, threshold: float,
                on_non_finite: str) -> ScoreResult:
        if bad.any():
            idx = np.flatnonzero(bad)
            if on_non_finite == "raise":
                shown = ", ".join(str(i) for i in idx[:10]) + (", ..." if len(idx) > 10 else "")
                raise NonFiniteOutputError(
                    f"engine {self.engine_dir}: the model produced non-finite output (NaN/inf) for "
                    f"{len(idx)} of {len(scores)} frame(s) (frame {shown}): a diverged model or bad weights; "
                    f"no verdict given. Pass on_non_finite='anomalous' to get such frames flagged as anomalous")
            log.warning("engine %s: non-finite output for %d frame(s), reported as anomalous", self.engine_dir, len(idx))
            scores = scores.copy()
            scores[idx] = np.nan
        # the verdict of both runtimes, here only (the native path does not use the library's: see
        # NativeRunner.score), by the package's one rule (threshold.is_anomalous: float32 comparison,
        # as the library's, and non-finite is anomalous); ``bad`` adds frames with a non-finite map
        return ScoreResult(scores=scores, maps=maps, is_anomalous=is_anomalous(scores, threshold) | bad,
                           threshold=threshold,
                           non_finite=bad)

    def features(self, images: Any, pixel_format: str = "RGB", *,
                 float_range: tuple[float, float] | None = None) -> list[torch.Tensor]:
        """The network's six feature maps for frames (at most ``max_batch``), for parity checks
        (always the Python backend: the C++ engine does not return features)."""
        frames = to_frames(images, pixel_format, float_range=float_range)
        if len(frames) > self.max_batch:
            raise ValueError(f"features() takes at most max_batch={self.max_batch} frames, got {len(frames)}")
        try:
            with torch.no_grad():
                feats = self._backend_call("features", self.prepare(frames, 0, len(frames)))
        except BaseException:
            self._local.buffer = None
            raise
        return [f.detach().float().cpu() for f in feats]


def _resize_map(m: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(H, W) map -> (h, w) float32 numpy, bilinear with antialiasing (a no-op at equal size)."""
    m = m.float()
    if tuple(m.shape) == tuple(size):
        return m.cpu().numpy().copy()  # the backend's buffer is reused by its next call
    return F.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False, antialias=True)[0, 0].cpu().numpy()


def load(engine_dir: str | os.PathLike, **kwargs: Any) -> Engine:
    """Load an engine directory: ``Engine(engine_dir, **kwargs)`` (see :class:`Engine`)."""
    return Engine(engine_dir, **kwargs)
