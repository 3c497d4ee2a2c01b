"""CDD on several processes with ``torch.distributed`` (``torchrun``): the domain students are
spread over the ranks (student j trains on rank j mod world size), then broadcast from their
owner to every rank; the global student is trained data-parallel (each rank takes a slice of
every mini-batch, gradients are summed, BatchNorm statistics are computed over the whole
mini-batch), so the result equals the single-process run up to float rounding.

Backends: gloo on CPU (tested here with 2 processes), nccl on GPUs (written against the
documented API; not run on this machine).

Launch (every rank runs the same command; rank 0 writes the run directory, the others write
to a temporary directory that is removed)::

    torchrun --nproc-per-node 2 -m cdd_engine.cdd.distributed --data DIR --category NAME --out RUN_DIR \\
        [--domains K] [--partition random|cluster] [any `cdd-engine train` option as --name value]
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Callable, Iterator, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..training.loop import EpochStats, Features
from ..training.loss import rd_loss_per_image


class _AllReduceSum(torch.autograd.Function):
    """y = sum over ranks of x. Every rank's loss depends on the same y, and the total loss is
    the sum of the ranks' losses, so d(total)/dx on a rank = sum over ranks of dL_r/dy: the
    backward is again a sum-all-reduce (of the incoming gradient). Written here on
    ``dist.all_reduce`` because ``torch.distributed.nn.functional.all_reduce`` is deprecated."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()  # all_reduce works in place; the input must stay as autograd saw it
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        g = grad.clone()  # the incoming gradient may be shared with other consumers
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        return g


def _all_reduce_autograd(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks whose backward is again a sum over ranks (the gradient of a global sum)."""
    return _AllReduceSum.apply(x)


def _sync_bn_forward(bn: nn.BatchNorm2d) -> Callable[[torch.Tensor], torch.Tensor]:
    """A forward for ``bn`` that, in training mode, normalises with the statistics of the whole
    distributed mini-batch (what nn.BatchNorm2d computes on one process), and updates the running
    statistics exactly like it (unbiased variance, momentum). Eval mode is unchanged."""
    original = bn.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not bn.training:
            return original(x)
        c = x.shape[1]
        count = torch.tensor([float(x.numel() // c)], dtype=x.dtype, device=x.device)
        packed = torch.cat([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)), count])
        packed = _all_reduce_autograd(packed)
        n = packed[2 * c]
        mean = packed[:c] / n
        var = (packed[c:2 * c] / n - mean * mean).clamp_min(0.0)  # biased, as BN normalises with
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            bn.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)).clamp_min(0), alpha=m)
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var + bn.eps)[None, :, None, None]
        return y * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]

    return forward


@contextlib.contextmanager
def synced_batchnorm(module: nn.Module) -> Iterator[None]:
    """Within the block every BatchNorm2d of ``module`` uses whole-batch (all-rank) statistics."""
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.forward = _sync_bn_forward(bn)  # instance attribute shadows the class method
    try:
        yield
    finally:
        for bn in bns:
            del bn.forward


class DistContext:
    """Rank/world of an initialised process group and the CDD collectives built on it."""

    def __init__(self, rank: int | None = None, world_size: int | None = None) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: launch with torchrun (or call "
                               "torch.distributed.init_process_group) before creating a DistContext")
        self.rank = dist.get_rank() if rank is None else rank
        self.world_size = dist.get_world_size() if world_size is None else world_size

    def owns(self, domain: int) -> bool:
        """Domain student ``domain`` trains on rank domain mod world size."""
        return domain % self.world_size == self.rank

    def sync_domain_students(self, students: Sequence[nn.Module], state: nn.Module) -> None:
        """Broadcast every domain student (parameters and BN buffers) and its generator state from
        its owner rank, so every rank holds all K trained students."""
        for j, s in enumerate(students):
            src = j % self.world_size
            for t in list(s.parameters()) + list(s.buffers()):
                dist.broadcast(t.data, src=src)
            rng = state.rng[j].clone()
            dist.broadcast(rng, src=src)
            state.rng[j] = rng

    def fit_epoch(self, student: nn.Module, batches: Iterator[tuple[torch.Tensor, Features]],
                  optimizer: torch.optim.Optimizer, target_fn, progress: bool = False,
                  desc: str = "train") -> EpochStats:
        """One data-parallel epoch: every rank draws the same batches (same generator), takes its
        contiguous slice, and the summed gradients of sum(loss of own images) / batch size equal
        the single-process gradient of the batch mean."""
        student.train()
        t0, seen, loss_sum = time.perf_counter(), 0, 0.0
        with synced_batchnorm(student):
            for step, (idx, feats) in enumerate(batches):
                b = len(idx)
                part = torch.arange(b).tensor_split(self.world_size)[self.rank]
                f = [x[part] for x in feats]
                target = target_fn(idx[part], f)
                per_image = rd_loss_per_image(target, student(f))
                loss = per_image.sum() / b
                optimizer.zero_grad(set_to_none=False)
                loss.backward()
                for p in student.parameters():
                    if p.grad is not None:
                        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                total = loss.detach().clone()
                dist.all_reduce(total, op=dist.ReduceOp.SUM)
                if not torch.isfinite(total):
                    raise RuntimeError(f"{desc}: the loss became {total.item()} at batch {step}; training diverged")
                optimizer.step()
                seen += b
                loss_sum += total.item() * b
        if seen == 0:
            raise ValueError(f"{desc}: no training images")
        return EpochStats(loss_sum / seen, seen, time.perf_counter() - t0)


def init_from_env(backend: str | None = None) -> DistContext:
    """Initialise the process group from torchrun's environment (gloo on CPU, nccl with CUDA)."""
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return DistContext()


def main(argv: Sequence[str] | None = None) -> int:
    """torchrun entry: ``cdd-engine train --method cdd`` on every rank, rank 0 keeping the run."""
    import argparse
    import shutil
    import tempfile

    p = argparse.ArgumentParser(description="CDD training on several processes (launch with torchrun)")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--domains", type=int, default=3)
    p.add_argument("--partition", default="random", choices=("random", "cluster"))
    p.add_argument("--backend", default=None, help="gloo (CPU) or nccl (GPU); default by device")
    args, rest = p.parse_known_args(argv)
    ctx = init_from_env(args.backend)
    from ..training import train
    kwargs: dict = {}
    it = iter(rest)
    for key in it:  # --name value pairs forwarded to train()
        if not key.startswith("--"):
            raise ValueError(f"expected --name value pairs after the known options, got {key!r}")
        val = next(it)
        for conv in (int, float):
            try:
                val = conv(val)
                break
            except ValueError:
                continue
        kwargs[key[2:].replace("-", "_")] = val
    out = args.out if ctx.rank == 0 else tempfile.mkdtemp(prefix=f"cdd_rank{ctx.rank}_")
    try:
        train(args.data, out, method="cdd", progress=ctx.rank == 0,
              method_options={"domains": args.domains, "partition": args.partition}, **kwargs)
    finally:
        if ctx.rank != 0:
            shutil.rmtree(out, ignore_errors=True)
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
