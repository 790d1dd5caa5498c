"""Optimizer, learning-rate schedule, mixed precision and per-step random generators."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

import torch

from model.train.config import OptimConfig

# Per-step generators are seeded from (seed, step, rank), so a resumed run draws exactly the
# samples and noise the uninterrupted run would have drawn, with no RNG state to save.
_SEED_STRIDE = 1_000_003


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """A CPU generator for one optimisation step of one process."""
    return torch.Generator().manual_seed((seed * _SEED_STRIDE + step) * 64 + rank)


def make_optimizer(params: Iterable[torch.nn.Parameter], optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters."""
    trainable = [p for p in params if p.requires_grad]
    return torch.optim.AdamW(trainable, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)


def lr_at(step: int, optim: OptimConfig, total: int) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak at `total`."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    progress = min(1.0, (step - optim.warmup_steps) / max(1, total - optim.warmup_steps))
    return optim.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def optimise(net: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, step: int,
             optim: OptimConfig, total: int) -> None:
    """One step of a small network's plain training loop: the step's LR, backward, gradient clipping, update."""
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, optim, total)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), optim.grad_clip)
    optimizer.step()


def autocast(device: torch.device, precision: str):
    """bf16/fp16 autocast where the device supports it; a no-op context for "no"."""
    if precision == "no":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cpu" and dtype is torch.float16:
        raise ValueError("fp16 autocast is not supported on CPU; use bf16 or no")
    return torch.autocast(device_type=device.type, dtype=dtype)
