"""VAE training: reconstruction losses weighted on mouths, hands and faces; held-out PSNR; latent scaling."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.config import load_model_config
from model.data import format as fmt
from model.data import keypoints as kp
from model.errors import InputError
from model.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from model.train.config import VaeLossConfig, VaeTrainConfig
from model.train.distributed import DistContext
from model.train.ema import EMA
from model.train.frame_pack import read_frame_pack, write_frame_pack
from model.train.frames import bucket_size, region_weights, resize_frames
from model.train.log import TrainLog
from model.train.metrics import mouth_box, psnr, ssim_map
from model.train.schedule import autocast, lr_at, make_optimizer, step_generator
from model.vae import FrameVAE

logger = logging.getLogger(__name__)

FRAMES_PER_CLIP = 48
HELDOUT_FRAMES_PER_CLIP = 8
PACE_STEPS = (20, 120)  # a time budget measures the step pace between these steps (after warm-up)
LOG_FIELDS = ["step", "loss", "l1", "gradient", "ssim", "lr", "grad_norm", "seconds"]


#################################################################################
#                                  Frame pool                                   #
#################################################################################

@dataclass
class FramePool:
    """Frames of several clips at model resolution, each clip in its aspect bucket."""

    frames: list[torch.Tensor]    # per clip: uint8 [N, 3, h, w]
    weights: list[torch.Tensor]   # per clip: float [N, 1, h, w]
    lips: list[np.ndarray]        # per clip: lip keypoints [N, L, 2] (for mouth-region PSNR)
    picks: list[np.ndarray]       # per clip: the N frame indices in the clip

    def __len__(self) -> int:
        return sum(len(f) for f in self.frames)


def select_clips(root: Path, split: str, limit: int | None, framings: list[str] | None = None) -> list[fmt.IndexEntry]:
    """Index entries of one split (only the given framings, when set), in id order, at most `limit`."""
    entries = fmt.read_index(root).split(split, framings)
    if not entries:
        framed = f" {'/'.join(framings)}" if framings else ""
        raise InputError(f"dataset {root} has no{framed} clips in split {split!r}")
    return entries[:limit] if limit else entries


def build_pool(root: Path, entries: list[fmt.IndexEntry], area: int, unit: int, loss: VaeLossConfig, per_clip: int) -> FramePool:
    """Decode the clips, keep `per_clip` evenly spaced frames each, resized to their bucket, with weights."""
    pool = FramePool([], [], [], [])
    region = {"mouth": loss.mouth_weight, "hands": loss.hand_weight, "face": loss.face_weight, "eyes": loss.eye_weight}
    for entry in entries:
        clip = fmt.load_clip(root, entry.id)
        picks = np.unique(np.linspace(0, len(clip.frames) - 1, num=min(per_clip, len(clip.frames))).round().astype(int))
        height, width = bucket_size(entry.width, entry.height, area, unit)
        pool.frames.append(resize_frames(clip.frames[picks], height, width))
        pool.picks.append(picks)
        if clip.keypoints is not None:
            xy, vis = clip.keypoints.xy[picks], clip.keypoints.visibility[picks]
            pool.weights.append(region_weights(xy, vis, height, width, region, loss.region_margin))
            pool.lips.append(xy[:, kp.LIPS])
        else:
            pool.weights.append(torch.ones(len(picks), 1, height, width))
            pool.lips.append(np.zeros((len(picks), 0, 2), dtype=np.float32))
    return pool


def sample_batch(pool: FramePool, batch: int, crop: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crops (crop x crop, horizontal flips) of random frames -> (pixels [-1, 1], weights)."""
    pixels, weights = [], []
    for _ in range(batch):
        c = int(torch.randint(len(pool.frames), (1,), generator=generator))
        i = int(torch.randint(len(pool.frames[c]), (1,), generator=generator))
        frame, weight = pool.frames[c][i], pool.weights[c][i]
        size = min(crop, frame.shape[-2], frame.shape[-1])
        y = int(torch.randint(frame.shape[-2] - size + 1, (1,), generator=generator))
        x = int(torch.randint(frame.shape[-1] - size + 1, (1,), generator=generator))
        frame, weight = frame[:, y:y + size, x:x + size], weight[:, y:y + size, x:x + size]
        if size != crop:
            frame = F.interpolate(frame[None].float(), size=(crop, crop), mode="bilinear")[0]
            weight = F.interpolate(weight[None], size=(crop, crop), mode="nearest")[0]
        if bool(torch.rand((), generator=generator) < 0.5):
            frame, weight = frame.flip(-1), weight.flip(-1)
        pixels.append(frame.float() / 127.5 - 1.0)
        weights.append(weight)
    return torch.stack(pixels), torch.stack(weights)


#################################################################################
#                                    Losses                                     #
#################################################################################

def reconstruction_loss(
    recon: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, latents: torch.Tensor, loss: VaeLossConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted L1 (+L2) + weighted image-gradient L1 (edges: lips, fingers) + (1 - SSIM) + latent L2."""
    norm = weights.mean()
    l1 = ((recon - target).abs() * weights).mean() / norm
    l2 = (((recon - target) ** 2) * weights).mean() / norm

    def grads(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]

    (rx, ry), (tx, ty) = grads(recon), grads(target)
    gradient = (((rx - tx).abs() * weights[..., :, 1:]).mean() + ((ry - ty).abs() * weights[..., 1:, :]).mean()) / (2 * norm)
    structural = ((1.0 - ssim_map(recon, target)) * weights).mean() / norm
    latent = latents.pow(2).mean()
    total = loss.l1 * l1 + loss.l2 * l2 + loss.gradient * gradient + loss.ssim * structural + loss.latent_l2 * latent
    parts = {"l1": l1.item(), "gradient": gradient.item(), "ssim": structural.item()}
    return total, parts


#################################################################################
#                                   Evaluation                                  #
#################################################################################

@torch.no_grad()
def heldout_psnr(vae: FrameVAE, pool: FramePool) -> dict[str, float]:
    """PSNR (dB) of full held-out frames and of their mouth boxes, through encode -> decode."""
    full, mouth = [], []
    device = next(vae.parameters()).device
    for frames, lips in zip(pool.frames, pool.lips):
        target = frames.to(device).float() / 127.5 - 1.0
        recon = vae.decode(vae.encode(target))
        full.append(psnr(recon, target))
        if lips.shape[1]:
            height, width = frames.shape[-2:]
            for index in range(len(frames)):
                x0, y0, x1, y1 = mouth_box(lips[index], width, height, margin=0.3)
                if x1 > x0 and y1 > y0:
                    mouth.append(psnr(recon[index, :, y0:y1, x0:x1], target[index, :, y0:y1, x0:x1]))
    return {"psnr": float(np.mean(full)), "mouth_psnr": float(np.mean(mouth)) if mouth else float("nan")}


@torch.no_grad()
def noised_latents(latents: torch.Tensor, max_std: float, generator: torch.Generator) -> torch.Tensor:
    """Raw latents [N, C, h, w] plus Gaussian noise of a std ~ U(0, max_std) per frame (unchanged when max_std is 0)."""
    if max_std == 0.0:
        return latents
    std = torch.rand(latents.shape[0], 1, 1, 1, generator=generator) * max_std
    return latents + (std * torch.randn(latents.shape, generator=generator)).to(latents)


@torch.no_grad()
def fit_latent_scaling(vae: FrameVAE, pool: FramePool) -> tuple[float, float]:
    """(shift, scale) that bring raw latents of the pool to zero mean and unit variance."""
    device = next(vae.parameters()).device
    raw = torch.cat([vae.autoencoder.encode(frames.to(device).float() / 127.5 - 1.0).latents.flatten() for frames in pool.frames])
    return float(raw.mean()), float(1.0 / raw.std().clamp_min(1e-6))


def frame_pools(config: VaeTrainConfig) -> tuple[FramePool, FramePool]:
    """(training pool, held-out pool) from the config's frame pack, or built from its dataset."""
    if config.data.pack:
        return (FramePool(*read_frame_pack(Path(config.data.pack), "train"), picks=[]),
                FramePool(*read_frame_pack(Path(config.data.pack), "heldout"), picks=[]))
    return built_pools(config, clip_splits(config))


def built_pools(config: VaeTrainConfig, splits: dict[str, list[fmt.IndexEntry]]) -> tuple[FramePool, FramePool]:
    """(training pool, held-out pool) decoded from the dataset's clips of `splits` (clip_splits)."""
    model_config = load_model_config(config.model)
    unit = 2 ** (len(model_config.vae.encoder_block_out_channels) - 1) * model_config.dit.patch_size
    area = model_config.video.height * model_config.video.width
    root = Path(config.data.root)
    return (build_pool(root, splits["train"], area, unit, config.loss, FRAMES_PER_CLIP),
            build_pool(root, splits["heldout"], area, unit, config.loss, HELDOUT_FRAMES_PER_CLIP))


def clip_splits(config: VaeTrainConfig) -> dict[str, list[fmt.IndexEntry]]:
    """{"train": entries, "heldout": entries} of the config's dataset (held out: val, else test, else one train clip)."""
    root = Path(config.data.root)
    framings = config.data.framings
    train_entries = select_clips(root, config.data.split, config.data.max_clips, framings)
    index = fmt.read_index(root)
    heldout_split = next((s for s in ("val", "test") if index.split(s, framings)), config.data.split)
    heldout_entries = [e for e in index.split(heldout_split, framings) if e not in train_entries][: config.data.holdout_clips]
    if not heldout_entries:
        heldout_entries, train_entries = train_entries[-1:], train_entries[:-1] or train_entries
    return {"train": train_entries, "heldout": heldout_entries}


def pack_frames(config: VaeTrainConfig, out: Path) -> None:
    """Write the config's training and held-out frames as a frame pack (model/train/frame_pack.py)."""
    splits = clip_splits(config)
    pool, heldout = built_pools(config, splits)
    write_frame_pack(Path(config.data.root), splits, {"train": pool, "heldout": heldout}, out)


def budgeted_steps(max_seconds: float, elapsed: float, pace_began: float, done: int, horizon: int) -> int:
    """The step at which a run that has spent `elapsed` s for `done` steps must stop to keep its time budget."""
    per_step = (elapsed - pace_began) / (PACE_STEPS[1] - PACE_STEPS[0])
    return max(done, min(horizon, done + int((max_seconds - elapsed) / max(per_step, 1e-6))))


#################################################################################
#                                  Training loop                                #
#################################################################################

def train_vae(config: VaeTrainConfig, ctx: DistContext, resume: bool = True, until: int | None = None) -> dict:
    """Train the frame VAE; writes checkpoints, log.csv and OUTPUT/final (FrameVAE folder) + metrics.json.

    `until` stops early at that global step (with a checkpoint); the final folder is written at the end.
    """
    model_config = load_model_config(config.model)
    out = Path(config.run.output_dir)
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    torch.manual_seed(config.run.seed)
    if config.init_from:
        vae = FrameVAE.from_pretrained(config.init_from, device=ctx.device)
    else:
        vae = FrameVAE.from_config(model_config.vae).to(ctx.device)
    vae.train()
    if config.freeze_encoder:
        vae.autoencoder.encoder.requires_grad_(False)
        vae.autoencoder.encoder.eval()
    pool, heldout = frame_pools(config)
    logger.info("VAE training on %d frames of %d clips; %d held-out clips", len(pool), len(pool.frames), len(heldout.frames))

    net = vae.autoencoder
    optimizer = make_optimizer(vae.autoencoder.parameters(), config.optim)
    ema = EMA(vae.autoencoder, config.optim.ema_decay)
    start = 0
    found = latest_checkpoint(out / "checkpoints") if resume else None
    if found is not None:
        start = load_checkpoint(found, vae.autoencoder, ema, optimizer)["step"]

    log = TrainLog(out / "log.csv", LOG_FIELDS, config.run.steps, start, ctx.is_main)
    began = time.monotonic()
    pace_began = 0.0
    horizon = config.run.steps  # the LR schedule's length; a time budget shortens it once the pace is known
    stop = min(config.run.steps, until) if until is not None else config.run.steps
    step = start
    while step < stop:
        generator = step_generator(config.run.seed, step, ctx.rank)
        pixels, weights = sample_batch(pool, config.run.batch_size, config.crop, generator)
        pixels, weights = pixels.to(ctx.device), weights.to(ctx.device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config.optim, horizon)
        with autocast(ctx.device, config.run.mixed_precision):
            with torch.set_grad_enabled(not config.freeze_encoder):
                latents = net.encoder(pixels)
            recon = net.decoder(noised_latents(latents, config.latent_noise_max / vae.scaling_factor, generator)).float()
        loss, parts = reconstruction_loss(recon, pixels, weights, latents.float(), config.loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if ctx.enabled:
            _all_reduce_grads(vae.autoencoder, ctx)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(vae.autoencoder.parameters(), config.optim.grad_clip))
        optimizer.step()
        ema.update(vae.autoencoder, step)
        done = step + 1
        log.advance(loss=loss.item(), l1=parts["l1"])
        if done % config.run.log_every == 0 or done == config.run.steps:
            log.write({"step": done, "loss": loss.item(), **parts, "lr": optimizer.param_groups[0]["lr"],
                       "grad_norm": grad_norm, "seconds": round(time.monotonic() - began, 2)})
        if config.run.max_seconds and done == start + PACE_STEPS[1]:
            horizon = budgeted_steps(config.run.max_seconds, time.monotonic() - began, pace_began, done, horizon)
            stop = min(stop, horizon)
            logger.info("time budget %.0f s: training stops at step %d", config.run.max_seconds, horizon)
        elif done == start + PACE_STEPS[0]:
            pace_began = time.monotonic() - began
        if ctx.is_main and (done % config.run.checkpoint_every == 0 or done == stop):
            save_checkpoint(out / "checkpoints", done, vae.autoencoder, ema, optimizer, {"kind": "vae"}, config.run.keep_checkpoints)
        ctx.barrier()
        step = done
    log.close()

    result: dict = {"stopped_at": stop} if stop < horizon else {}
    if ctx.is_main and not result:
        ema.copy_to(vae.autoencoder)
        vae.eval()
        if config.freeze_encoder:  # latents unchanged: keep the scaling the encoder was trained with
            shift, scale = vae.shift_factor, vae.scaling_factor
        else:
            shift, scale = fit_latent_scaling(vae, pool)
            vae.autoencoder.register_to_config(shift_factor=shift, scaling_factor=scale)
        result = {"steps": stop, "train_clips": len(pool.frames), "heldout_clips": len(heldout.frames),
                  "train_frames": len(pool), "shift_factor": shift, "scaling_factor": scale,
                  "wall_s": round(time.monotonic() - began, 1), **heldout_psnr(vae, heldout)}
        vae.save_pretrained(out / "final")
        (out / "final" / "metrics.json").write_text(json.dumps(result, indent=2))
        logger.info("VAE written to %s: held-out PSNR %.2f dB (mouth %.2f dB)", out / "final", result["psnr"], result["mouth_psnr"])
    return result


def _all_reduce_grads(module: torch.nn.Module, ctx: DistContext) -> None:
    """Average gradients over processes (the VAE is small: one all-reduce per tensor is enough)."""
    for param in module.parameters():
        if param.grad is not None:
            torch.distributed.all_reduce(param.grad)
            param.grad.div_(ctx.world_size)
