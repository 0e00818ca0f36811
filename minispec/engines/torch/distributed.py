"""Several devices for the torch engine: process group, FSDP2/DDP wrapping, full state dicts.

A stage with ``resources.devices > 1`` runs as ``torchrun --standalone --nproc-per-node N -m
minispec stage ...``; every process runs the same stage code and this module tells it who it is.
Without torchrun (``WORLD_SIZE`` unset) everything here degrades to one process and no
communication, so the single-device path carries no distributed overhead.

Data parallelism: each global batch is split into ``world_size`` equal, disjoint slices (same
global sample order as one device, see ``train.py``); gradients are averaged across ranks by
DDP's all-reduce or FSDP2's reduce-scatter. Only rank 0 logs and writes files.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from minispec.errors import StageError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from torch import nn


@dataclass
class DistContext:
    """Who this process is; ``world_size == 1`` means no process group."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks in place (a no-op on one process)."""
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast_object(self, value):
        """Rank 0's ``value`` on every rank (small, trusted in-process data only)."""
        if not self.enabled:
            return value
        import torch.distributed as dist

        box = [value if self.is_main else None]
        dist.broadcast_object_list(
            box, src=0, device=self.device if self.device.type == "cuda" else None
        )
        return box[0]

    def shutdown(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def setup(accelerator: str = "auto", expected_devices: int = 1) -> DistContext:
    """Initialise the process group when launched by torchrun; pick this rank's device.

    NCCL on CUDA, gloo on CPU (so the multi-process path is testable on CPU).
    """
    from minispec.engines.torch.modeling import resolve_device

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(accelerator)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise StageError(
                f"process {rank} wants GPU {local_rank} but only {torch.cuda.device_count()} are visible",
                hint="set resources.devices to at most the number of GPUs (or CUDA_VISIBLE_DEVICES)",
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world_size == 1:
        if expected_devices > 1:
            warnings.warn(
                f"resources.devices is {expected_devices} but this process was not started by torchrun; training on one device",
                stacklevel=2,
            )
        return DistContext(device=device)
    import torch.distributed as dist

    if not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return DistContext(world_size=world_size, rank=rank, local_rank=local_rank, device=device)


# --------------------------------------------------------------------------------------------
# wrapping


def wrap_trainable(
    module: nn.Module,
    layers: Iterable[nn.Module],
    strategy: str,
    ctx: DistContext,
) -> nn.Module:
    """The trained module, ready for data parallelism.

    ``fsdp``: FSDP2 ``fully_shard`` on every decoder layer, then on the root (embeddings, final
    norm, LM head and any projections); fp32 parameters sharded, gathered per layer for compute,
    gradients reduce-scattered in fp32. Compute precision comes from autocast as on one device
    (gathering bf16 copies would halve the traffic but keep the residual stream in bf16, so the
    curve would no longer match a one-device run).
    ``ddp``: a full replica per rank, gradients all-reduced (bucketed, overlapped).
    """
    if not ctx.enabled:
        return module
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)
    if strategy != "fsdp":
        raise StageError(f"unknown resources.strategy '{strategy}'", hint="use fsdp or ddp")
    from torch.distributed.fsdp import fully_shard

    for layer in layers:
        fully_shard(layer)
    fully_shard(module)
    return module


def shard_frozen(
    model: nn.Module, layers: Iterable[nn.Module], strategy: str, ctx: DistContext
) -> nn.Module:
    """The teacher: sharded like the student under ``fsdp`` (no gradients), replicated under ``ddp``."""
    if not ctx.enabled or strategy == "ddp":
        return model
    from torch.distributed.fsdp import fully_shard

    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def unwrap(module: nn.Module) -> nn.Module:
    """The module under a DDP wrapper (FSDP2 shards in place and has no wrapper)."""
    from torch.nn.parallel import DistributedDataParallel

    return module.module if isinstance(module, DistributedDataParallel) else module


# --------------------------------------------------------------------------------------------
# state dicts


def full_state(
    module: nn.Module, optimizer: torch.optim.Optimizer | None, ctx: DistContext
) -> tuple[dict, dict]:
    """Full (unsharded) model and optimizer state dicts, on CPU, keyed by parameter name.

    Under FSDP2 the shards are gathered to rank 0 (other ranks get empty dicts); on one process
    or under DDP this is the local state.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    module = unwrap(module)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    if optimizer is None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(module, options=options), {}
    return get_state_dict(module, optimizer, options=options)


def load_full_state(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    model_state: dict,
    optimizer_state: dict,
    *,
    broadcast: bool,
) -> None:
    """Load full state dicts into a possibly sharded module.

    ``broadcast``: only rank 0 passes the states (other ranks pass empty dicts) and they are
    broadcast and sharded (FSDP2), so one host copy is read instead of one per rank.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    module = unwrap(module)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=broadcast, strict=True)
    # Two calls, not set_state_dict: that one treats an empty model dict (every rank but 0
    # under broadcast) as "optimizer only", so ranks would disagree on the collectives.
    set_model_state_dict(module, model_state, options=options)
    set_optimizer_state_dict(module, optimizer, optimizer_state, options=options)
