"""PyTorch DDP under ``torchrun``: process-group setup, example sharding, gathering evaluation ranks.

``torchrun --nproc_per_node=N -m t2diff.cli train ...`` sets WORLD_SIZE / RANK / LOCAL_RANK; without them
everything here is a no-op and training is single-process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from t2diff.batch import Batch


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on any: ranks must take the same decision (e.g. to stop)."""
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


def init_from_env(device: str) -> tuple[DistContext, str]:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); returns the context and the
    device this rank uses."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(rank, world, local), device


def shard(n: int, ctx: DistContext) -> np.ndarray:
    """Indices 0..n-1 this rank takes: every world-th one, padded by wrapping so every rank runs the same
    number of steps (DDP needs that). Batch k of all ranks together is batch k of a single process."""
    if not ctx.enabled:
        return np.arange(n)
    per = -(-n // ctx.world)
    idx = np.arange(per * ctx.world) % max(n, 1)
    return idx[ctx.rank:: ctx.world]


class LossModule(nn.Module):
    """DDP synchronises gradients through ``forward``; this routes ``model.loss`` through it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch):  # -> (loss, parts)
        return self.model.loss(batch)


def wrap(model: nn.Module, ctx: DistContext, device: str) -> nn.Module:
    mod = LossModule(model)
    if not ctx.enabled:
        return mod
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [torch.device(device).index] if device.startswith("cuda") else None
    # some models leave parameters unused in a step (e.g. ablation switches): tolerate that
    return DDP(mod, device_ids=ids, find_unused_parameters=True)


def gather_ranks(local: np.ndarray, index: np.ndarray, n: int, ctx: DistContext) -> np.ndarray:
    """Reassemble per-example results computed on shards (``index`` = this rank's example indices)."""
    if not ctx.enabled:
        return local
    parts: list = [None] * ctx.world
    dist.all_gather_object(parts, (index, local))
    out = np.empty((n, *local.shape[1:]), dtype=local.dtype)
    for idx, vals in parts:
        out[idx] = vals
    return out


def cleanup(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
