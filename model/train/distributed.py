"""Multi-process training on torch.distributed (DDP): gloo on CPU, NCCL on GPUs; torchrun-compatible."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Who this process is: rank, world size and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on the process that logs, checkpoints and exports."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait for every process (no-op alone)."""
        if self.enabled:
            dist.barrier()

    def mean(self, value: float) -> float:
        """Mean of a scalar over processes."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(tensor)
        return float(tensor.item() / self.world_size)


    def replicas_agree(self, module: torch.nn.Module) -> bool:
        """True when every process holds bit-identical weights (checked via an exact checksum)."""
        if not self.enabled:
            return True
        flat = torch.cat([p.detach().double().flatten().cpu() for p in module.parameters()])
        checksum = torch.stack([flat.sum(), (flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64)).sum()])
        gathered = [torch.zeros_like(checksum) for _ in range(self.world_size)]
        dist.all_gather(gathered, checksum)
        return all(torch.equal(g, gathered[0]) for g in gathered)


def init_distributed(device: str | None = None) -> DistContext:
    """Join the process group described by torchrun-style env vars (RANK, WORLD_SIZE, ...) if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    torch_device = torch.device(device)
    if torch_device.type == "cuda" and torch_device.index is None:  # "cuda" means this process's GPU
        torch_device = torch.device("cuda", local_rank)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        logger.info("joined process group: rank %d of %d (%s)", rank, world_size, backend)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=torch_device)


def shutdown_distributed() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def free_port() -> int:
    """An unused TCP port on localhost for the rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(rank: int, world_size: int, port: int, fn: Callable, args: tuple) -> None:
    """Entry of one spawned process: set the torchrun env vars, then run `fn(*args)`."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank)
    )
    fn(*args)


def launch(fn: Callable, args: tuple, nproc: int) -> None:
    """Run `fn(*args)` in `nproc` processes on this machine (what torchrun does, without the CLI)."""
    if nproc <= 1:
        fn(*args)
        return
    mp.spawn(_worker, args=(nproc, free_port(), fn, args), nprocs=nproc, join=True)
