"""Data-parallel set-up for ``torchrun`` (PyTorch DDP: NCCL on GPU, gloo on CPU).

Launch with e.g. ``torchrun --nproc-per-node 2 -m localdisc pretrain ...``; on several machines
add ``--nnodes N --node-rank R --rdzv-backend c10d --rdzv-endpoint HOST:PORT``. Without those
environment variables everything runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


#: What ``--device`` takes (``cuda:N`` too), as error messages list it.
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N, mps"


def resolve_device(
    device: str = "auto", local_rank: int = 0, *, other: bool = False
) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` under torchrun takes the local rank's GPU.
    ``other``: any other device torch knows is taken too (``xpu``, ``meta``: a model loaded
    from Python), not only :data:`DEVICE_CHOICES`.

    Raises:
        LocaldiscError: ``device`` is not one of :data:`DEVICE_CHOICES` (torch would raise a
            RuntimeError deep in a traceback for a typo such as ``gpu``).
    """
    from localdisc.errors import LocaldiscError

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise LocaldiscError("--device cuda was asked for but no CUDA GPU is available")
        count = torch.cuda.device_count()
        if local_rank >= count:  # torchrun started more processes per node than GPUs
            raise LocaldiscError(
                f"process {local_rank} of this machine has no GPU of its own ({count} visible): "
                f"give torchrun --nproc-per-node {count} at most"
            )
        return torch.device("cuda", local_rank)
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        resolved = None
    if resolved is None or (resolved.type not in ("cpu", "cuda", "mps") and not other):
        raise LocaldiscError(f"unknown device {device!r} ({DEVICE_CHOICES})")
    if resolved.type == "cuda" and resolved.index is not None:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if resolved.index >= count:
            raise LocaldiscError(f"--device {device} was asked for but {count} CUDA GPU(s) exist")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise LocaldiscError("--device mps was asked for but MPS is not available")
    return resolved


def setup(device: str = "auto") -> DistContext:
    """Initialise the process group when launched by torchrun, else a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and dev.type == "cuda" and device not in ("auto", "cuda"):
        # Every process would take the same GPU, which NCCL refuses (or share it, slowly).
        from localdisc.errors import LocaldiscError

        raise LocaldiscError(
            f"--device {device} under torchrun: each process takes its local rank's GPU; give "
            "--device cuda (choose the GPUs with CUDA_VISIBLE_DEVICES)"
        )
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank, world_size, local_rank, dev)


def is_main_process() -> bool:
    """Rank 0 under torchrun, or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``values`` averaged over the ranks under torchrun (one all_reduce), as they are alone.

    Every rank must call it at the same point with the same keys in the same order (same
    shapes): a collective that one rank skips hangs the others.
    """
    if not values or not (dist.is_available() and dist.is_initialized()):
        return values
    stacked = torch.stack([v.detach().float().reshape(()) for v in values.values()])
    dist.all_reduce(stacked)
    stacked /= dist.get_world_size()
    return dict(zip(values, stacked.unbind(), strict=True))
