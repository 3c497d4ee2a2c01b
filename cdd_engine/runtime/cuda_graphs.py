"""The GPU scoring path: uint8 frames in, maps and scores out, one CUDA graph replay per chunk.

NOT RUN HERE: the development and CI machines have no GPU. Written against the documented torch
CUDA API (``torch.cuda.CUDAGraph``, ``torch.cuda.graph``, ``torch.cuda.Stream``/``Event``,
pinned host tensors, ``non_blocking`` copies); the device-independent logic (buckets, padding,
slicing, chunking, the graph cache, the order of the pipeline's steps) is unit-tested on the
CPU through the same code with the synchronous stand-ins of :class:`Device` (tests/test_aoti.py).

Why (issue 13, WRN50 RD on an H200): the engine issued ~420 kernel launches per batch-32 call
and was bound by the CPU launching them; the network alone at batch 1 took 4.5 ms eager and
1.30 ms replayed from a CUDA graph. So per (batch bucket, frame size, pixel format) the whole
chain -- fused Triton pre-processing (uint8 -> normalised NCHW), the network, the fused Triton
anomaly map -- is captured once and replayed:

- batch buckets: 1, 2, 4, ... up to ``max_batch`` (and ``max_batch`` itself); a chunk of n
  frames runs in the smallest bucket >= n, its rows padded with copies of its last frame (real
  pixels: no NaN/inf from uninitialised memory) and the outputs sliced back to n;
- pinned host buffers and ``non_blocking`` copies on the engine's own stream: the next chunk's
  upload (host -> pinned -> device, on a copy stream) overlaps the current chunk's replay when a
  call holds more than ``max_batch`` frames, and the maps come back into pinned memory while the
  next chunk runs;
- at most ``MAX_GRAPHS`` graphs are kept (least recently used dropped): each holds its static
  input/output buffers and the memory pool of its intermediate tensors.
"""
from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from typing import Any, Callable, Sequence

import numpy as np
import torch

# Graphs kept per backend: buckets 1..32 (6) for one frame size and pixel format, plus a few for
# other sizes; each costs its activations' memory (~1 GB for WRN50 at batch 32 fp16).
MAX_GRAPHS = 12
# Replays before capture: lazy initialisation (cuBLAS handles, Triton autotuning, allocator
# growth) must happen outside the captured region (torch.cuda.graph's documented requirement).
WARMUP_RUNS = 2


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """Powers of two below ``max_batch``, then ``max_batch``: (1, 2, 4, 8, 16, 32) for 32, (1, 2, 4, 6) for 6."""
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    out.append(max_batch)
    return tuple(out)


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket holding ``n`` frames (ValueError above the largest)."""
    for b in buckets:
        if n <= b:
            if n < 1:
                break
            return b
    raise ValueError(f"a chunk of {n} frames does not fit the batch buckets {tuple(buckets)}")


def chunk_ranges(n: int, max_batch: int) -> list[tuple[int, int]]:
    """[(start, stop)] chunks of at most ``max_batch`` frames covering 0..n."""
    return [(s, min(n, s + max_batch)) for s in range(0, n, max_batch)]


def pad_rows(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Copy ``src`` (n, ...) into ``dst`` (bucket, ...) rows 0..n-1 and fill the rest with copies of
    row n-1 (real pixels, so padded rows compute finite values and cost nothing to check);
    returns ``dst``. Copies are ``non_blocking`` (pinned host <-> device on the current stream)."""
    n, b = int(src.shape[0]), int(dst.shape[0])
    if not 1 <= n <= b or tuple(src.shape[1:]) != tuple(dst.shape[1:]):
        raise ValueError(f"cannot pad {tuple(src.shape)} into {tuple(dst.shape)}")
    dst[:n].copy_(src, non_blocking=True)
    if n < b:
        dst[n:].copy_(dst[n - 1:n].expand(b - n, *dst.shape[1:]), non_blocking=True)
    return dst


class Device:
    """Streams, events and pinned memory of one device, with synchronous stand-ins on the CPU so
    the pipeline's logic runs (and is tested) without a GPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            self.compute = torch.cuda.Stream(self.device)  # the engine's own streams: never the caller's
            self.copy = torch.cuda.Stream(self.device)

    def empty_host(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(tuple(shape), dtype=dtype, pin_memory=self.cuda)

    def event(self) -> Any:
        return torch.cuda.Event() if self.cuda else _DoneEvent()

    def stream(self, which: str) -> Any:
        return torch.cuda.stream(getattr(self, which)) if self.cuda else _NullContext()

    def wait(self, which: str, event: Any) -> None:
        if self.cuda:
            getattr(self, which).wait_event(event)

    def record(self, which: str) -> Any:
        ev = self.event()
        if self.cuda:
            ev.record(getattr(self, which))
        return ev

    def synchronize(self, which: str) -> None:
        if self.cuda:
            getattr(self, which).synchronize()


class _DoneEvent:
    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True


class _NullContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


class CapturedScorer:
    """``fn(static_frames (b, h, w, c) uint8) -> (maps (b, H, W), scores (b,))`` captured as one
    CUDA graph per (bucket, h, w, c, pixel format), replayed on ``dev.compute``.

    ``fn`` must only launch device work on tensors it allocates or is given (no host sync, no
    ``.item()``, no CPU tensors), as CUDA graph capture requires; the fused Triton kernels and an
    AOTInductor package satisfy that. On the CPU (tests) ``capture`` is off and ``fn`` runs
    directly each time, through the same bucket, padding and slicing code.
    """

    def __init__(self, fn: Callable[[torch.Tensor, str], tuple[torch.Tensor, torch.Tensor]], dev: Device,
                 max_batch: int, capture: bool | None = None, max_graphs: int = MAX_GRAPHS,
                 context: Callable[[], Any] | None = None) -> None:
        self.fn = fn
        self.dev = dev
        self.buckets = batch_buckets(max_batch)
        self.capture = dev.cuda if capture is None else bool(capture)
        if self.capture and not dev.cuda:
            raise ValueError("CUDA graph capture needs a CUDA device")
        self.max_graphs = int(max_graphs)
        self.context = context or _NullContext  # e.g. the engine's TF32 setting, around capture and replay
        self._graphs: OrderedDict[tuple, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()  # one replay at a time: a graph's static buffers are shared

    def _entry(self, key: tuple) -> dict[str, Any]:
        entry = self._graphs.get(key)
        if entry is not None:
            self._graphs.move_to_end(key)
            return entry
        bucket, h, w, c, fmt = key
        static_in = torch.empty((bucket, h, w, c), dtype=torch.uint8, device=self.dev.device)
        entry = {"input": static_in}
        if self.capture:
            static_in.random_(0, 256)  # real pixel values for the warm-up runs, never uninitialised memory
            with self.dev.stream("compute"), self.context():
                for _ in range(WARMUP_RUNS):
                    self.fn(static_in, fmt)
                self.dev.synchronize("compute")
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self.dev.compute):
                    maps, scores = self.fn(static_in, fmt)
            entry.update(graph=graph, maps=maps, scores=scores)
        self._graphs[key] = entry
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        return entry

    def run_device(self, frames: torch.Tensor, pixel_format: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One chunk already on the device (n <= max_batch) -> (maps (n,H,W), scores (n,)) views of
        the graph's static outputs, valid until the next replay of that bucket (copy them first),
        enqueued on ``dev.compute``."""
        n, h, w, c = (int(v) for v in frames.shape)
        key = (bucket_for(n, self.buckets), h, w, c, pixel_format)
        entry = self._entry(key)
        with self.dev.stream("compute"):
            pad_rows(frames, entry["input"])
            if self.capture:
                entry["graph"].replay()
                maps, scores = entry["maps"], entry["scores"]
            else:
                with self.context():
                    maps, scores = self.fn(entry["input"], pixel_format)
        return maps[:n], scores[:n]

    def score(self, frames: torch.Tensor | np.ndarray, pixel_format: str, max_batch: int,
              want_maps: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """All of ``frames`` (N, h, w, c) uint8 on the host -> (scores (N,), maps (N, H, W) or None)
        as numpy arrays, chunk by chunk with the next upload overlapping the current replay.

        Per chunk k: host frames -> pinned[k % 2] (CPU memcpy, after the upload that last read
        that buffer finished) -> device staging[k % 2] on the copy stream -> (compute stream waits
        for it) padded into the graph's input, replay, outputs -> pinned output[k % 2]; the host
        copies chunk k's outputs out only after queueing chunk k + 1.
        """
        src = torch.from_numpy(frames) if isinstance(frames, np.ndarray) else frames
        n = int(src.shape[0])
        ranges = chunk_ranges(n, max_batch)
        scores_out = np.empty(n, dtype=np.float32)
        maps_out: np.ndarray | None = None
        with self._lock:
            pinned: list[torch.Tensor | None] = [None, None]
            staged: list[torch.Tensor | None] = [None, None]
            uploaded: list[Any] = [None, None]
            consumed: list[Any] = [None, None]  # compute-stream events after the chunk that read staged[j]
            pending: list[tuple[Any, tuple[int, int], torch.Tensor, torch.Tensor | None]] = []
            host_out: list[tuple[torch.Tensor, torch.Tensor | None] | None] = [None, None]

            def drain(item) -> None:
                nonlocal maps_out
                done, (s, e), sc, mp = item
                done.synchronize()
                scores_out[s:e] = sc[:e - s].numpy()
                if mp is not None:
                    if maps_out is None:
                        maps_out = np.empty((n, *mp.shape[1:]), dtype=np.float32)
                    maps_out[s:e] = mp[:e - s].numpy()

            for k, (s, e) in enumerate(ranges):
                j = k % 2
                chunk = src[s:e]
                if uploaded[j] is not None:
                    uploaded[j].synchronize()  # the copy that last read pinned[j] is finished
                if pinned[j] is None or pinned[j].shape[0] < e - s or pinned[j].shape[1:] != chunk.shape[1:]:
                    pinned[j] = self.dev.empty_host((max_batch, *chunk.shape[1:]), torch.uint8)
                    staged[j] = torch.empty((max_batch, *chunk.shape[1:]), dtype=torch.uint8, device=self.dev.device)
                pinned[j][:e - s].copy_(chunk)
                if consumed[j] is not None:
                    self.dev.wait("copy", consumed[j])  # chunk k - 2 has read staged[j] into its graph input
                with self.dev.stream("copy"):
                    staged[j][:e - s].copy_(pinned[j][:e - s], non_blocking=True)
                uploaded[j] = self.dev.record("copy")
                self.dev.wait("compute", uploaded[j])
                maps, scores = self.run_device(staged[j][:e - s], pixel_format)
                with self.dev.stream("compute"):
                    if host_out[j] is None or host_out[j][0].shape[0] < max_batch:
                        host_out[j] = (self.dev.empty_host((max_batch,), torch.float32),
                                       self.dev.empty_host((max_batch, *maps.shape[1:]), torch.float32)
                                       if want_maps else None)
                    # host_out[j] was last read by chunk k - 2's drain, done in the previous iteration
                    sc_host, mp_host = host_out[j]
                    sc_host[:e - s].copy_(scores, non_blocking=True)
                    if mp_host is not None:
                        mp_host[:e - s].copy_(maps, non_blocking=True)
                done = consumed[j] = self.dev.record("compute")
                if pending:
                    drain(pending.pop(0))  # chunk k - 1, while chunk k runs on the device
                pending.append((done, (s, e), sc_host, mp_host))
            while pending:
                drain(pending.pop(0))
        return scores_out, maps_out


def precision_context(device: torch.device, precision: str) -> Any:
    """The numerics of one engine call: on CUDA TF32 off (fp32/fp16 engines, the 1e-5 contract) or
    on (tf32), set and restored around the call; on the CPU nothing."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from ..export.aoti import tf32_mode
    return tf32_mode(precision == "tf32")


def scorer_for(fn: Callable, device: torch.device, max_batch: int, kernels: Any, cuda_graphs: Any,
               context: Callable[[], Any]) -> CapturedScorer | None:
    """The CUDA-graph scorer of a backend that runs ``fn`` (uint8 frames -> scores, maps) on CUDA
    with the Triton kernels, unless ``cuda_graphs is False``; None otherwise (CPU, no Triton)."""
    if device.type != "cuda" or kernels is None or cuda_graphs is False:
        return None
    return CapturedScorer(fn, Device(device), max_batch, context=context)
