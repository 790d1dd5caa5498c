"""Omni-conditions DiT training: streaming-shaped samples from cached features, staged condition ratios,
AdamW + EMA + clipping, optional mixed precision and gradient checkpointing, DDP, exact resume."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from model.conditioning.audio import silence_features
from model.conditioning.motion import MouthMotion
from model.config import load_model_config
from model.data import format as fmt
from model.dit import OmniHumanDiT
from model.errors import InputError
from model.flow import flow_loss, timestep_schedule, velocity_target
from model.train.cache import CachedClip, build_cache, load_cache
from model.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from model.train.config import DitTrainConfig
from model.train.distributed import DistContext
from model.train.ema import EMA
from model.train.export import export_pipeline, shipped_vae
from model.train.features import gated_windows
from model.train.log import TrainLog
from model.train.sampling import Batch, StreamingSampleBuilder
from model.train.schedule import autocast, lr_at, make_optimizer, step_generator

logger = logging.getLogger(__name__)

LOG_FIELDS = ["step", "stage", "loss", "heldout_loss", "lr", "grad_norm", "keep_audio", "keep_pose", "keep_text",
              "seconds"]
HELDOUT_BATCHES = 4
HELDOUT_SEED = 12345


def split_entries(config: DitTrainConfig) -> tuple[list[fmt.IndexEntry], list[fmt.IndexEntry]]:
    """(training clips, held-out clips for the validation loss): val split, else the tail of train."""
    root = Path(config.data.root)
    index = fmt.read_index(root)
    framings = config.data.framings
    train, heldout = index.split(config.data.split, framings), index.split("val", framings)
    if not train:
        raise InputError(f"dataset {root} has no clips in split {config.data.split!r}"
                         + (f" with framing {', '.join(framings)}" if framings else ""))
    train = train[: config.data.max_clips] if config.data.max_clips else train
    heldout = heldout[: config.data.holdout_clips]
    if not heldout and len(train) > 1:
        heldout, train = train[-1:], train[:-1]
    return train, heldout


def initial_dit(config: DitTrainConfig, model_config) -> OmniHumanDiT:
    """Random weights, or the DiT of the pipeline folder `init_from` (fine-tuning): shapes must match the
    config, except that the config may add reference / last-context input channels (they start at zero)."""
    if config.init_from is None:
        return OmniHumanDiT(**model_config.dit_kwargs())
    source = Path(config.init_from) / "dit"
    if not (source / "config.json").is_file():
        raise InputError(f"init_from: no DiT at {source} (expected a pipeline folder such as weights/tiny)")
    dit = OmniHumanDiT(**model_config.dit_kwargs())  # the model config's settings, the source's weights
    source_dit = OmniHumanDiT.from_pretrained(source)
    try:
        dit.load_state_dict_widening_input(source_dit.state_dict())
    except RuntimeError as error:
        raise InputError(f"init_from: the DiT at {source} does not match the model config {config.model!r}") from error
    if source_dit.config.prediction != dit.config.prediction:  # a new output meaning: start from output 0
        torch.nn.init.zeros_(dit.final_layer.linear.weight)
        torch.nn.init.zeros_(dit.final_layer.linear.bias)
        logger.info("prediction %s -> %s: output layer zeroed", source_dit.config.prediction, dit.config.prediction)
    logger.info("fine-tuning from %s", source)
    return dit


def load_motion(config: DitTrainConfig, model_config) -> MouthMotion | None:
    """The trained audio->motion model a guide model needs (None for other models)."""
    if not model_config.dit.concat_guide:
        return None
    folder = Path(config.motion or "")
    if config.motion is None or not (folder / "config.json").is_file():
        raise InputError(f"a guide model needs `motion`: a trained audio->motion folder (kind: motion), got {config.motion!r}")
    return MouthMotion.from_pretrained(str(folder)).eval()


@torch.no_grad()
def guide_openness(clips: list[CachedClip], motion: MouthMotion, model_config) -> dict[str, torch.Tensor]:
    """Clip id -> [T] openness the motion model predicts from the clip's VAD-gated audio (as a live session)."""
    silence, past = silence_features(model_config), model_config.audio.past_frames
    return {c.id: motion(gated_windows(c.audio, c.voiced, silence, past)) for c in clips if c.audio is not None}


def make_builder(clips, config: DitTrainConfig, model_config, motion: MouthMotion | None = None) -> StreamingSampleBuilder:
    """Sample builder with the streaming structure of the model config."""
    s = model_config.sampler
    return StreamingSampleBuilder(clips, s.context_frames, s.chunk_frames, s.reference_frames, config.sample,
                                  past_frames=model_config.audio.past_frames, silence=silence_features(model_config),
                                  timestep_shift=s.time_shift,
                                  schedule_times=timestep_schedule(s.steps, s.time_shift)[:-1],
                                  guide_openness=None if motion is None else guide_openness(clips, motion, model_config))


def compute_loss(model: torch.nn.Module, batch: Batch, device: torch.device, precision: str) -> torch.Tensor:
    """Flow-matching loss on the chunk frames only (reference and context carry weight 0); for a guide
    model the target is the clean chunk minus its guide (model/flow.py)."""
    with autocast(device, precision):
        output = model(**batch.model_inputs())
    start = batch.num_reference + batch.num_context
    if batch.guide is not None:
        target = batch.clean[:, start:] - batch.guide
    elif batch.cell_weight is None:
        return flow_loss(output.float(), batch.clean, batch.noise, batch.loss_weight)
    else:
        target = velocity_target(batch.clean, batch.noise)[:, start:]
    err = (output.float()[:, start:] - target).pow(2).mean(2, keepdim=True)  # [B, F, 1, h, w]
    if batch.cell_weight is None:
        return err.mean()
    return (err * batch.cell_weight).sum() / batch.cell_weight.sum()  # chunk frames only, mouths up-weighted


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, builder: StreamingSampleBuilder | None, config: DitTrainConfig,
                 ctx: DistContext) -> float:
    """Mean loss of fixed held-out batches with every condition kept (a curve comparable across steps)."""
    if builder is None:
        return float("nan")
    final = config.stages[-1].model_copy(update={"ratios": {c: 1.0 for c in ("reference", "text", "audio", "pose")}})
    losses = [compute_loss(model, builder.build(config.run.batch_size, final, step_generator(HELDOUT_SEED, i, 0)).to(ctx.device),
                           ctx.device, config.run.mixed_precision).item() for i in range(HELDOUT_BATCHES)]
    return float(sum(losses) / len(losses))


def train_dit(config: DitTrainConfig, ctx: DistContext, resume: bool = True, until: int | None = None) -> dict:
    """Train the DiT; writes checkpoints and log.csv under run.output_dir, and the pipeline folder at the end."""
    model_config = load_model_config(config.model)
    out = Path(config.run.output_dir)
    vae_dir = Path(config.vae)
    if not (vae_dir / "config.json").is_file():
        raise InputError(f"trained VAE not found at {vae_dir}: run the VAE config first (omnilive train --config configs/train/vae-tiny.yaml)")
    shipped_vae(config)  # a mismatched export_vae fails now, not after training
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    train_entries, heldout_entries = split_entries(config)
    cache_dir = Path(config.data.cache_dir)
    if ctx.is_main:
        build_cache(Path(config.data.root), train_entries + heldout_entries, vae_dir, model_config, cache_dir)
    ctx.barrier()
    motion = load_motion(config, model_config)
    builder = make_builder(load_cache(cache_dir, [e.id for e in train_entries]), config, model_config, motion)
    heldout_builder = (make_builder(load_cache(cache_dir, [e.id for e in heldout_entries]), config, model_config, motion)
                       if heldout_entries else None)
    logger.info("DiT training on %d clips (%d held out), stages: %s", len(train_entries), len(heldout_entries),
                ", ".join(f"{s.name}={s.steps}" for s in config.stages))

    torch.manual_seed(config.run.seed)
    dit = initial_dit(config, model_config).to(ctx.device)
    if config.run.gradient_checkpointing:
        dit.enable_gradient_checkpointing()
    dit.train()
    model = DistributedDataParallel(dit) if ctx.enabled else dit
    optimizer = make_optimizer(dit.parameters(), config.optim)
    ema = EMA(dit, config.optim.ema_decay)
    total = config.total_steps
    start = 0
    found = latest_checkpoint(out / "checkpoints") if resume else None
    if found is not None:
        start = load_checkpoint(found, dit, ema, optimizer)["step"]
    stop = min(total, until) if until is not None else total

    log = TrainLog(out / "log.csv", LOG_FIELDS, total, start, ctx.is_main)
    began = time.monotonic()
    for step in range(start, stop):
        stage_index, stage = config.stage_at(step)
        batch = builder.build(config.run.batch_size, stage, step_generator(config.run.seed, step, ctx.rank)).to(ctx.device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config.optim, total)
        loss = compute_loss(model, batch, ctx.device, config.run.mixed_precision)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(dit.parameters(), config.optim.grad_clip))
        optimizer.step()
        if step >= config.optim.ema_start:
            ema.update(dit, step - config.optim.ema_start)
        done = step + 1
        loss_value = ctx.mean(loss.item())
        log.advance(stage=stage.name, loss=loss_value)
        checkpointing = done % config.run.checkpoint_every == 0 or done == stop
        if done % config.run.log_every == 0 or checkpointing:
            row = {"step": done, "stage": stage.name, "loss": round(loss_value, 6), "lr": optimizer.param_groups[0]["lr"],
                   "grad_norm": round(grad_norm, 4), "seconds": round(time.monotonic() - began, 2),
                   "keep_audio": float((~batch.drop_audio).float().mean()), "keep_pose": float((~batch.drop_pose).float().mean()),
                   "keep_text": float((~batch.drop_text).float().mean())}
            if checkpointing and ctx.is_main:
                dit.eval()
                row["heldout_loss"] = round(heldout_loss(dit, heldout_builder, config, ctx), 6)
                dit.train()
            log.write(row)
        if checkpointing:
            in_sync = ctx.replicas_agree(dit)
            if not in_sync:
                raise RuntimeError(f"step {done}: the {ctx.world_size} training processes hold different weights")
            if ctx.is_main:
                save_checkpoint(out / "checkpoints", done, dit, ema, optimizer,
                                {"kind": "dit", "stage": stage_index, "world_size": ctx.world_size, "replicas_in_sync": in_sync},
                                config.run.keep_checkpoints)
        ctx.barrier()
    log.close()

    result: dict = {"stopped_at": stop} if stop < total else {}
    if ctx.is_main and not result:
        ema.copy_to(dit)
        dit.eval()
        result = {"steps": total, "train_clips": len(train_entries), "heldout_clips": len(heldout_entries),
                  "world_size": ctx.world_size, "replicas_in_sync": True,
                  "heldout_loss_ema": heldout_loss(dit, heldout_builder, config, ctx),
                  "wall_s_this_run": round(time.monotonic() - began, 1)}
        if config.export_dir:
            export_pipeline(dit, model_config, Path(config.export_dir), config,
                            {"steps_trained": total, "weights": "ema", **result})
            result["export_dir"] = config.export_dir
    return result
