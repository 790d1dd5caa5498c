"""Training checkpoints: weights, EMA, optimizer and step, written atomically; exact resume."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import torch
from diffusers.models.modeling_utils import ModelMixin
from pydantic import BaseModel
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

STEP_PREFIX = "step-"


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors needs contiguous, non-shared tensors."""
    return {name: tensor.detach().contiguous().clone() for name, tensor in state.items()}


def save_checkpoint(
    root: Path, step: int, model: torch.nn.Module, ema, optimizer: torch.optim.Optimizer, extra: dict, keep: int
) -> Path:
    """Write root/step-NNNNNNN/{model,ema}.safetensors + optimizer.pt + state.json; prune old ones."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{STEP_PREFIX}{step:07d}"
    staging = root / f".{final.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    save_file(_contiguous(model.state_dict()), str(staging / "model.safetensors"))
    if ema is not None:
        save_file(_contiguous(ema.state_dict()), str(staging / "ema.safetensors"))
    torch.save(optimizer.state_dict(), staging / "optimizer.pt")
    (staging / "state.json").write_text(json.dumps({"step": step, **extra}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("checkpoint written: %s", final)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX) and (p / "state.json").is_file())


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(path: Path, model: torch.nn.Module, ema, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model, EMA and optimizer from `path`; returns the state.json dict (with 'step')."""
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    if ema is not None and (path / "ema.safetensors").is_file():
        ema.load_state_dict(load_file(str(path / "ema.safetensors")))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    state = json.loads((path / "state.json").read_text())
    logger.info("resumed from %s (step %d)", path, state["step"])
    return state


def export_trained(net: ModelMixin, config: BaseModel, target: Path, figures: dict, began: float,
                   loop_began: float) -> dict:
    """Write a trained small network's folder (safetensors) and its training.json: the config as run and the
    result, which is `figures` plus the size, wall times, threads and folder every such run reports."""
    net.save_pretrained(str(target), safe_serialization=True)
    now = time.monotonic()
    result = {**figures, "parameters": sum(p.numel() for p in net.parameters()),
              "train_wall_s": round(now - loop_began, 1), "wall_s": round(now - began, 1),
              "threads": torch.get_num_threads(), "output": str(target)}
    (target / "training.json").write_text(json.dumps(
        {"config": config.model_dump(mode="json"), "result": result}, indent=2) + "\n")
    return result
