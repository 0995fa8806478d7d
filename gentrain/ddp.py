"""Data-parallel training across processes (torchrun), equal to one process.

`torchrun --standalone --nproc-per-node N -m gentrain fit FAMILY ...` starts
N ranks; each trains on its slice of the batch that (seed, step) already picks
(`--batch-size` stays the global batch, no DistributedSampler), the gradients
are averaged across ranks (one all-reduce per step, gloo on CPU, nccl on
CUDA), and every rank then takes the same clipped optimiser step, so the
weights stay identical on all ranks and equal to one process's.

Three things keep N ranks on one process's path:
- Noise: a family's objective draws its noise (Glow's dequantisation, a VAE's
  reparameterisation) from torch's global RNG, sized by the batch it sees.
  `GlobalBatchNoise` makes every draw whose leading axis is the local batch
  draw the global batch's noise and keep the rank's rows, so every rank's RNG
  advances as one process's does and each image gets the noise it would get
  there (which also keeps `--resume` exact).
- Data-dependent initialisation (ActNorm): every rank runs the init pass on
  the same whole init batch, so the initial weights are one process's bit for
  bit without any exchange.
- Decisions: a skipped non-finite step, Ctrl-C and `--minutes` are agreed on
  by all ranks, so no rank waits forever in an all-reduce the others skipped.

Rank 0 alone evaluates, logs and writes checkpoints; every rank resumes from
the checkpoint it wrote. BatchNorm layers (HVAE cells, RealNVP --norm
batchnorm) see per-rank batch statistics as under DDP, so those runs are
close to, not equal to, one process.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

from genrun.errors import UserError

# The random factories whose draws are widened to the global batch.
_SIZED = {torch.rand, torch.randn}
_LIKE = {torch.rand_like, torch.randn_like}


@dataclass(frozen=True)
class World:
    """This process's place among the ranks; size 1 is plain one-process training."""

    rank: int = 0
    size: int = 1
    device: str = "cpu"  # where small exchanged tensors live (nccl needs cuda)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that evaluates, logs and writes files."""
        return self.rank == 0

    def local_slice(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's rows of the global batch (equal slices)."""
        if self.size == 1:
            return batch
        share = self._share(len(batch))
        return batch[self.rank * share : (self.rank + 1) * share]

    def noise(self, global_batch: int) -> AbstractContextManager:
        """Context in which random draws sized by the local batch give this
        rank's rows of the global batch's draw (nothing to do for one process)."""
        if self.size == 1:
            return nullcontext()
        return GlobalBatchNoise(self.rank, self.size, self._share(global_batch))

    def average_gradients(self, parameters) -> None:
        """Replace every gradient by its mean over the ranks (one flat all-reduce)."""
        if self.size == 1:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.size
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def average_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Per-rank batch means -> the global batch's means (equal slices)."""
        if self.size == 1 or not metrics:
            return metrics
        values = torch.tensor(list(metrics.values()), dtype=torch.float64, device=self.device)
        dist.all_reduce(values)
        return dict(zip(metrics, (values / self.size).tolist(), strict=True))

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any rank."""
        if self.size == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def _share(self, global_batch: int) -> int:
        if global_batch % self.size:
            raise UserError(
                f"--batch-size {global_batch} does not split evenly over {self.size} ranks; "
                f"pick a multiple of {self.size}"
            )
        return global_batch // self.size


class GlobalBatchNoise(TorchFunctionMode):
    """torch.rand/randn(_like) calls whose leading axis is the local batch
    draw the global batch's tensor and return this rank's rows of it."""

    def __init__(self, rank: int, size: int, local: int) -> None:
        super().__init__()
        self.rank, self.size, self.local = rank, size, local

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.size > 1 and func in _SIZED:
            shape = _shape(args, kwargs)
            if shape and shape[0] == self.local:
                kwargs = {k: v for k, v in kwargs.items() if k != "size"}
                return self._rows(func((self.local * self.size, *shape[1:]), **kwargs))
        if (
            self.size > 1
            and func in _LIKE
            and args
            and args[0].dim()
            and len(args[0]) == self.local
        ):
            template = args[0]
            channels_last = template.dim() == 4 and not template.is_contiguous()
            wide = torch.empty(
                (self.local * self.size, *template.shape[1:]),
                dtype=template.dtype,
                device=template.device,
                # *_like keeps the memory order, which decides the values' order.
                memory_format=torch.channels_last if channels_last else torch.contiguous_format,
            )
            return self._rows(func(wide, *args[1:], **kwargs))
        return func(*args, **kwargs)

    def _rows(self, wide: torch.Tensor) -> torch.Tensor:
        return wide[self.rank * self.local : (self.rank + 1) * self.local]


def _shape(args: tuple, kwargs: dict) -> tuple[int, ...] | None:
    size = kwargs.get("size", args[0] if len(args) == 1 else args)
    if isinstance(size, torch.Size | tuple | list) and all(isinstance(s, int) for s in size):
        return tuple(size)
    return None


def setup(device: str = "auto") -> World:
    """Join the ranks torchrun started (WORLD_SIZE > 1 in the environment), or
    return the one-process world. gloo on CPU, nccl on CUDA."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_initialized():
        cuda = device != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return current()


def current() -> World:
    """The world of an already initialised process group, else one process."""
    if dist.is_available() and dist.is_initialized():
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        return World(dist.get_rank(), dist.get_world_size(), device)
    return World()
