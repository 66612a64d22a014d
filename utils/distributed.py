"""Process-group helpers for DistributedDataParallel training launched by torchrun.

torchrun starts one process per device and tells each its place through the environment:
``RANK`` (0 .. WORLD_SIZE-1 over all nodes), ``LOCAL_RANK`` (the index on its node, which picks
the GPU) and ``WORLD_SIZE``. :func:`setup` reads them; without them (``python train.py``) the run
is a single process and every helper here is a no-op, so the training code calls them
unconditionally. NCCL is used when the processes train on CUDA devices, gloo on the CPU.

Nothing happens at import time: the process group exists only after :func:`setup`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from utils.errors import ConfigError

# A collective that waits longer than this for another process fails instead of hanging the job
# (rank 0 alone validates and writes checkpoints while the others wait at a barrier: long enough
# for a full validation of a large dataset).
COLLECTIVE_TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints, writes the run folder and validates."""
        return self.rank == 0


def env_info(environ: dict[str, str] | None = None) -> DistInfo:
    """RANK / LOCAL_RANK / WORLD_SIZE from the environment (torchrun's); a single process without them."""
    env = os.environ if environ is None else environ
    try:
        return DistInfo(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))
    except ValueError:
        raise ConfigError("RANK, LOCAL_RANK and WORLD_SIZE must be integers (they are set by torchrun)") from None


def setup(device: str) -> tuple[DistInfo, str]:
    """Join the process group torchrun prepared; returns (DistInfo, the device string to train on).

    Args:
        device: the --device flag: '' (auto), 'cpu', or a CUDA index. Under torchrun with CUDA each
            process takes GPU LOCAL_RANK, so a single index cannot be given; 'cpu' forces gloo.
    """
    info = env_info()
    if not info.enabled:
        return info, device
    if dist.is_initialized():
        return info, _device_for(info, device)
    device = _device_for(info, device)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
    return info, device


def _device_for(info: DistInfo, device: str) -> str:
    """The device of this process: cuda:LOCAL_RANK when CUDA is used, else 'cpu'."""
    d = str(device).strip().lower()
    if d == "cpu" or (d in ("", "auto") and not torch.cuda.is_available()):
        return "cpu"
    if d not in ("", "auto"):
        raise ConfigError(f"--device {device} cannot be combined with torchrun: each process uses GPU LOCAL_RANK "
                          "(choose the GPUs with CUDA_VISIBLE_DEVICES, or pass --device cpu)")
    if info.local_rank >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK {info.local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
                          "use --nproc_per_node <= the GPU count")
    return f"cuda:{info.local_rank}"


def cleanup() -> None:
    """Leave the process group (a no-op when there is none)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def per_process_batch(global_batch: int, world_size: int) -> int:
    """--batch-size is the batch of the whole job (as in YOLOv5): each process gets an equal share."""
    if global_batch % world_size:
        raise ConfigError(f"--batch-size {global_batch} is not a multiple of WORLD_SIZE {world_size}: "
                          "it is the global batch, split equally across the processes")
    return global_batch // world_size


def barrier() -> None:
    """Wait for every process (a no-op in a single process)."""
    if dist.is_initialized():
        dist.barrier()


@contextmanager
def main_first(info: DistInfo) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. it writes the label cache); the others run it afterwards."""
    if info.enabled and not info.is_main:
        barrier()
    yield
    if info.enabled and info.is_main:
        barrier()


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every process (a picklable value such as a run folder path)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce of ``t`` over the job ('sum', 'max' or 'mean'); returns ``t``.

    The tensor must be on this process's device (a CUDA tensor under NCCL). No host read-back.
    """
    if not dist.is_initialized():
        return t
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "mean": dist.ReduceOp.SUM}
    dist.all_reduce(t, op=ops[op])
    if op == "mean":
        t /= dist.get_world_size()
    return t


# What gloo and NCCL say when the process at the other end of a collective is gone.
_PEER_LOST = ("connection reset", "connection closed", "broken pipe", "timed out", "timeout", "nccl", "gloo")


def is_peer_failure(e: BaseException) -> bool:
    """Whether ``e`` is a collective that failed because another process of the job died or hung.

    torch raises DistError for some backends and a plain RuntimeError naming the transport for
    gloo, so the message is read too.
    """
    if isinstance(e, dist.DistError):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(k in text for k in _PEER_LOST)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def elastic_restart_count(environ: dict[str, str] | None = None) -> int:
    """How often torchrun has restarted this job's workers after a failure (0 on the first attempt)."""
    env = os.environ if environ is None else environ
    value = env.get("TORCHELASTIC_RESTART_COUNT", "0")
    return int(value) if value.isdigit() else 0
