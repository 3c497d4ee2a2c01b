"""RDModel -> AOTInductor package ``model.pt2`` (backend "aoti", docs/engine_format.md).

The network is captured with ``torch.export`` (batch dimension dynamic in [1, max_batch]) and
compiled ahead of time by Inductor (``torch._inductor.aoti_compile_and_package``): C++/OpenMP
kernels for a CPU package, Triton kernels plus cuBLAS/cuDNN calls for a CUDA package. The
package holds its weights; the Python backend (runtime/backends/aoti_backend.py) and the C++
library load it without the checkpoint.

Graph contract (shared with the C++ loader): ONE input, float32 (B, 3, H, W) contiguous NCHW,
already normalised; SIX float32 outputs teacher_0..2, student_0..2. Reduced precisions cast
inside the graph (input to fp16/bf16 on entry, features to float32 on exit), so every consumer
reads float32.

Before export:

- BatchNorm is folded into the convolution before it (``torch.nn.utils.fusion.fuse_conv_bn_eval``,
  transposed convolutions included): the pairs are found by running the model once with hooks
  (a BatchNorm whose input is exactly a convolution's output), and the folded model is checked
  against the original on a random batch. Folding in the module tree rather than relying on
  Inductor's freezing passes keeps the package's graph the same on CPU and CUDA and makes
  ``batchnorm_folded`` in engine.json a fact, not a hope.
- channels-last: the weights are stored NHWC and the graph converts its NCHW input once on
  entry, so every convolution runs NHWC (cuDNN's and oneDNN's fast layout; issue 13 measured
  the WRN50 network at batch 32 fp16 at 8.6 ms channels-last).

CUDA packages (device="cuda") are NOT RUN HERE: the development and CI machines have no GPU.
The code follows the documented torch 2.x API (``torch.export.export``,
``torch._inductor.aoti_compile_and_package``) and is the same call as the CPU build, which the
tests run.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn

from ..errors import BackendUnavailable

log = logging.getLogger("cdd_engine.build")

PACKAGE_FILE = "model.pt2"
PRECISIONS = ("fp32", "fp16", "bf16", "tf32")
DEVICES = ("cpu", "cuda")
# what each precision runs the network in (tf32 = float32 storage, TF32 tensor-core matmuls/convs)
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Parity tolerance of each precision: max relative error of maps and scores against the float64
# reference (docs/engine_format.md). fp32: the 1e-5 contract (TF32 off on CUDA). tf32: issue 13
# measured cuDNN's TF32 convolutions at 1.1e-4 on the WRN50 map, so 1e-3 leaves ~10x margin.
# fp16/bf16: the reduced-precision bound of the other backends; bf16 measured 5.6e-4 on the tiny
# CPU test engine (tests/test_aoti.py).
PARITY_RTOL = {"fp32": 1e-5, "tf32": 1e-3, "fp16": 2e-3, "bf16": 2e-3}
# Largest relative error (max |folded - eager| / max |eager|) the BatchNorm folding may introduce
# before it is refused: measured 2e-7..6e-7 on the tiny efficientnet_lite0/resnet18 RD models.
FOLD_RTOL = 1e-5


def check_options(precision: str, device: str, max_batch: int) -> None:
    """Refuse, before any work, a precision/device pair the package cannot run."""
    if precision not in PRECISIONS:
        raise ValueError(f"backend 'aoti' supports precision {PRECISIONS}, got {precision!r}")
    if device not in DEVICES:
        raise ValueError(f"backend 'aoti' builds for device 'cpu' or 'cuda', got {device!r}")
    if precision in ("fp16", "tf32") and device != "cuda":
        raise ValueError(f"precision {precision!r} runs on CUDA only (Inductor's CPU code has no fast "
                         f"{'float16' if precision == 'fp16' else 'TF32'} path); build with device='cuda', "
                         f"or use 'fp32' or 'bf16' on the CPU")
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable("an aoti package for device 'cuda' is compiled on the GPU it will run on, but "
                                 "torch.cuda.is_available() is False here")


@contextlib.contextmanager
def tf32_mode(enabled: bool) -> Iterator[None]:
    """TF32 for CUDA matmuls and cuDNN convolutions on (``tf32``) or off (``fp32``: the 1e-5
    contract; issue 13 measured cuDNN's TF32 default at 1.1e-4 on WRN50) for the calls inside,
    restoring the process-wide flags afterwards (they belong to the caller)."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled,
                                        benchmark=torch.backends.cudnn.benchmark,
                                        deterministic=torch.backends.cudnn.deterministic,
                                        allow_tf32=enabled):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


_CONVS = (nn.Conv2d, nn.ConvTranspose2d)


def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, int]:
    """A copy of ``model`` (eval mode) with every BatchNorm2d that directly follows a convolution
    folded into it (the BatchNorm replaced by Identity) -> (folded model, number folded).

    A pair is a BatchNorm2d whose input, on one forward pass over ``example``, is exactly the
    output tensor of a Conv2d/ConvTranspose2d called once; a module used twice, or a convolution
    output read by anything else than its BatchNorm (checked by reference count of users below),
    is left alone.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    produced: dict[int, tuple[nn.Module, torch.Tensor]] = {}
    calls: dict[nn.Module, int] = {}
    pairs: dict[nn.Module, nn.Module] = {}
    uses: dict[int, int] = {}  # conv output -> how many hooked modules read it

    def after_conv(mod, _inp, out):
        calls[mod] = calls.get(mod, 0) + 1
        produced[id(out)] = (mod, out)  # the tensor itself is kept so its id is not reused

    def before_any(mod, inp):
        for t in inp:
            if isinstance(t, torch.Tensor) and id(t) in produced:
                uses[id(t)] = uses.get(id(t), 0) + 1
        if isinstance(mod, nn.BatchNorm2d):
            calls[mod] = calls.get(mod, 0) + 1
            if inp and id(inp[0]) in produced:
                pairs[mod] = produced[id(inp[0])][0]

    handles = []
    for m in model.modules():
        if isinstance(m, _CONVS):
            handles.append(m.register_forward_hook(after_conv))
        if not list(m.children()):  # leaf modules: the only readers hooks can see
            handles.append(m.register_forward_pre_hook(before_any))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    conv_out = {mod: tid for tid, (mod, _) in produced.items()}
    folded: dict[nn.Module, nn.Module] = {}
    for bn, conv in pairs.items():
        # a convolution read by anything but this BatchNorm (on the hooked path) keeps its BN
        if calls.get(bn) != 1 or calls.get(conv) != 1 or uses.get(conv_out[conv], 0) != 1:
            continue
        if not bn.track_running_stats or bn.running_mean is None:
            continue
        folded[conv] = fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose2d))
        folded[bn] = nn.Identity()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if child in folded:
                setattr(parent, name, folded[child])
    return model, sum(isinstance(v, nn.Identity) for v in folded.values())


def fold_and_check(model: nn.Module, probe: torch.Tensor) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`fold_batchnorm`, kept only if the features on ``probe`` stay within FOLD_RTOL of the
    original (a convolution output also read by a functional op, which the hooks cannot see, would
    change them): -> (model to export, {batchnorm_folded, folded_batchnorms, fold_max_rel_error})."""
    folded, n = fold_batchnorm(model, probe[:1])
    with torch.no_grad():
        t, s = model(probe)
        tf, sf = folded(probe)
    err = _rel_err([*tf, *sf], [*t, *s])
    if not err <= FOLD_RTOL:  # NaN-safe: keep the BatchNorms rather than change the model
        log.warning("BatchNorm folding changed the features by %.2e (> %.0e): exporting unfolded", err, FOLD_RTOL)
        return model, {"batchnorm_folded": False, "folded_batchnorms": 0,
                       "fold_max_rel_error": err if math.isfinite(err) else None}
    return folded, {"batchnorm_folded": n > 0, "folded_batchnorms": n, "fold_max_rel_error": err}


class _Packaged(nn.Module):
    """The graph contract: float32 NCHW in -> six float32 features out, the network in ``dtype``
    and channels-last in between."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, channels_last: bool) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t, s = self.model(x.to(self.dtype))
        # contiguous NCHW float32 out: the C++ loader and the CPU map read plain (B, C, h, w) buffers
        return tuple(f.float().contiguous() for f in (*t, *s))


def _rel_err(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    return max(float((g.double() - w.double()).abs().max() / w.double().abs().max().clamp_min(1e-30))
               for g, w in zip(got, want))


def export_aoti(model: nn.Module, out_path: str | Path, *, image_size: tuple[int, int], max_batch: int,
                precision: str = "fp32", device: str = "cpu", channels_last: bool = True,
                fold_bn: bool = True, seed: int = 0) -> dict[str, Any]:
    """Compile ``model`` (an RDModel or anything with its forward contract) into ``out_path``.

    Returns the facts engine.json's ``aoti`` and ``build`` sections record: ``batchnorm_folded``,
    ``channels_last``, ``folded_batchnorms``, ``fold_max_rel_error``, ``export_seconds``,
    ``compile_seconds``.
    """
    check_options(precision, device, max_batch)
    t0 = time.perf_counter()
    H, W = image_size
    gen = torch.Generator().manual_seed(seed)
    probe = torch.randn(2, 3, H, W, generator=gen)
    model = copy.deepcopy(model).cpu().float().eval()
    info: dict[str, Any] = {"channels_last": bool(channels_last), "batchnorm_folded": False,
                            "folded_batchnorms": 0}
    if fold_bn:
        model, fold_info = fold_and_check(model, probe)
        info.update(fold_info)
    dtype = DTYPES[precision]
    dev = torch.device(device)
    wrapped = _Packaged(model, dtype, channels_last).to(dev, dtype).eval()
    if channels_last:
        wrapped = wrapped.to(memory_format=torch.channels_last)
    # batch 2 in the example: torch.export specialises a dimension whose example size is 0 or 1
    example = (probe.to(dev),)
    dynamic = None
    if max_batch > 1:
        dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=int(max_batch))}}
    else:
        example = (probe[:1].to(dev),)
    with torch.no_grad(), tf32_mode(precision == "tf32"):
        exported = torch.export.export(wrapped, example, dynamic_shapes=dynamic, strict=False)
        t1 = time.perf_counter()
        from torch._inductor import aoti_compile_and_package

        path = aoti_compile_and_package(exported, package_path=str(out_path))
    t2 = time.perf_counter()
    info.update(export_seconds=round(t1 - t0, 2), compile_seconds=round(t2 - t1, 2))
    log.info("aoti package %s: export %.1f s, compile %.1f s (%s, %s, %d BatchNorms folded)", path,
             t1 - t0, t2 - t1, precision, device, info["folded_batchnorms"])
    return info
