"""Multi-process training: torchrun's environment, process groups, and the few collectives we need.

Without torchrun (no ``WORLD_SIZE`` in the environment) everything here is a no-op for one process.
"""

from __future__ import annotations

import datetime
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["Distributed", "init_distributed", "peer_failed"]

DEFAULT_TIMEOUT_S = 300


@dataclass(frozen=True)
class Distributed:
    """This process's place: ``rank`` of ``world_size``, and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        if self.enabled:
            tensor = tensor.clone()
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def from_main(self, value: float, device: str | torch.device | None = None) -> float:
        """The main process's ``value`` on every process: how processes agree on one decision or number
        (the precision, the paced schedule). ``value`` is ignored on the other processes."""
        if not self.enabled:
            return value
        mine = torch.tensor([float(value) if self.is_main else 0.0], dtype=torch.float64, device=device or self.device)
        return float(self.all_reduce_sum(mine).item())

    def any_each(self, *flags: bool, device: str | torch.device | None = None) -> tuple[bool, ...]:
        """For each flag, whether it is true on any process (a stop request or a used-up time budget seen by
        one process stops all at the same step): several decisions agreed in one all-reduce."""
        if not self.enabled:
            return tuple(bool(flag) for flag in flags)
        mine = torch.tensor([1.0 if flag else 0.0 for flag in flags], device=device or self.device)
        return tuple(bool(v > 0) for v in self.all_reduce_sum(mine).tolist())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device: str = "cpu", timeout_s: float | None = None) -> Distributed:
    """Joins the process group that torchrun describes in the environment (gloo on CPU, nccl on GPUs).

    A collective that waits longer than ``timeout_s`` (default ``$GLOWTORCH_DIST_TIMEOUT`` or 300 s),
    for example because another rank died, raises instead of hanging forever.
    """
    world_size = environment_int("WORLD_SIZE", 1, minimum=1)
    if world_size <= 1:
        return Distributed(device=device)
    if "RANK" not in os.environ:
        raise ValueError("WORLD_SIZE is set but RANK is not: start multi-process training with torchrun")
    rank = environment_int("RANK", 0, minimum=0)
    local_rank = environment_int("LOCAL_RANK", 0, minimum=0)
    if rank >= world_size:
        raise ValueError(f"RANK={rank} is not below WORLD_SIZE={world_size}: start the job with torchrun")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but no GPU is available; use --device cpu")
        torch.cuda.set_device(local_rank)
        device, backend = f"cuda:{local_rank}", "nccl"
    else:
        backend = "gloo"
    seconds = timeout_s or environment_seconds("GLOWTORCH_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=seconds))
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def environment_int(name: str, default: int, minimum: int) -> int:
    """The integer environment variable ``name`` (``default`` when unset); ``ValueError`` naming it otherwise."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"the environment variable {name}={text[:40]!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"the environment variable {name}={value} must be at least {minimum}")
    return value


def environment_seconds(name: str, default: float) -> float:
    """A positive, finite number of seconds from the environment variable ``name`` (at most 30 days)."""
    text = os.environ.get(name)
    if text is None:
        return float(default)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 30 * 86400:
        raise ValueError(f"the environment variable {name}={text[:40]!r} must be seconds between 0 and 2592000")
    return value


# What gloo and NCCL put in the RuntimeError of a collective whose peer died or whose network failed.
PEER_FAILURE_SIGNS = ("gloo/transport", "Connection reset by peer", "Connection closed by peer", "Broken pipe",
                      "NCCL communicator", "NCCL error", "ProcessGroup", "Socket Timeout", "timed out")  # fmt: skip


def peer_failed(error: BaseException) -> bool:
    """Whether ``error``, raised in a multi-process run, means another process of the job failed: a
    ``DistError``, or the ``RuntimeError`` that gloo or NCCL raise from a collective (in an all-reduce of
    ours or in DistributedDataParallel's gradient hooks inside ``backward``)."""
    if isinstance(error, dist.DistError):
        return True
    return isinstance(error, RuntimeError) and any(sign in str(error) for sign in PEER_FAILURE_SIGNS)


def shutdown() -> None:
    """Leaves the process group; after a peer failed this may itself fail, which changes nothing then."""
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - the job is ending either way
            pass
