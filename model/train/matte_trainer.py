"""Person-matte training: PersonMatte on studio stills against the person's exact coverage."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from model.conditioning.mouth_locator import to_pixels
from model.conditioning.person_matte import PersonMatte
from model.data.studio.config import StudioConfig
from model.data.studio.matte import MatteSet, matte_set
from model.train.checkpoint import export_trained
from model.train.config import MatteAugmentConfig, MatteDataConfig, MatteTrainConfig
from model.train.log import TrainLog
from model.train.schedule import make_optimizer, optimise, step_generator

logger = logging.getLogger(__name__)

LOG_FIELDS = ["step", "loss", "heldout_iou", "heldout_error", "lr", "seconds"]


def studio_stills(data: MatteDataConfig, heldout: bool) -> MatteSet:
    """The training (or held-out) stills, drawn now from their seed."""
    config = StudioConfig(short_side=data.size, framing_weights=data.framing_weights)
    if heldout:
        return matte_set(data.heldout_seed, data.heldout_identities, data.stills_per_identity, config)
    return matte_set(data.seed, data.identities, data.stills_per_identity, config)


def sample_batch(stills: MatteSet, batch: int, aug: MatteAugmentConfig,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Zoomed, flipped, colour-changed stills [B, 3, S, S] in [-1, 1] and their coverage [B, 1, S, S] in [0, 1]."""
    pick = torch.randint(len(stills.frames), (batch,), generator=generator).numpy()
    pixels = to_pixels(stills.frames[pick])  # [B, 3, S, S]
    alpha = torch.from_numpy(stills.alpha[pick]).float().div(255)[:, None]  # [B, 1, S, S]
    zoom = 1 + torch.rand(batch, generator=generator) * (aug.zoom_max - 1)  # [B]
    shift = (torch.rand(batch, 2, generator=generator) * 2 - 1) * (1 - 1 / zoom)[:, None]  # crop stays inside
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / zoom
    theta[:, :, 2] = shift
    flipped = torch.rand(batch, generator=generator) < aug.flip_prob
    theta[flipped, 0, 0] *= -1
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    pixels = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)
    alpha = F.grid_sample(alpha, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = 1 + (torch.rand(batch, 1, 1, 1, generator=generator) * 2 - 1) * aug.contrast
    offset = (torch.rand(batch, 3, 1, 1, generator=generator) * 2 - 1) * aug.colour
    pixels = pixels * contrast + offset
    shuffled = torch.rand(batch, generator=generator) < aug.channel_shuffle_prob
    pixels[shuffled] = pixels[shuffled][:, torch.randperm(3, generator=generator)]
    return pixels, alpha


@torch.no_grad()
def heldout_figures(matte: PersonMatte, stills: MatteSet) -> tuple[float, float]:
    """(intersection over union of the person at 0.5, mean absolute coverage error) on held-out stills."""
    matte.eval()
    predicted = torch.cat([matte(to_pixels(stills.frames[i:i + 64])).sigmoid() for i in range(0, len(stills.frames), 64)])
    truth = torch.from_numpy(stills.alpha).float().div(255)[:, None]  # [N, 1, S, S]
    inside, person = predicted > 0.5, truth > 0.5
    iou = float((inside & person).sum() / (inside | person).sum().clamp(min=1))
    return iou, float((predicted - truth).abs().mean())


def train_matte(config: MatteTrainConfig) -> dict:
    """Train the PersonMatte; log.csv in run.output_dir, the weights (+ training.json) in export_dir
    (default: run.output_dir/final)."""
    began = time.monotonic()
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    torch.manual_seed(config.run.seed)
    stills, heldout = studio_stills(config.data, heldout=False), studio_stills(config.data, heldout=True)
    matte = PersonMatte(**{"image_size": config.data.size, **config.model})
    logger.info("person matte training on %d stills, %d held out (%d parameters)", len(stills.frames),
                len(heldout.frames), sum(p.numel() for p in matte.parameters()))
    optimizer = make_optimizer(matte.parameters(), config.optim)
    out = Path(config.run.output_dir)
    log = TrainLog(out / "log.csv", LOG_FIELDS, config.run.steps, 0, True)
    loop_began = time.monotonic()
    for step in range(config.run.steps):
        matte.train()
        pixels, alpha = sample_batch(stills, config.run.batch_size, config.augment,
                                     step_generator(config.run.seed, step, 0))
        loss = F.binary_cross_entropy_with_logits(matte(pixels), alpha)
        optimise(matte, optimizer, loss, step, config.optim, config.run.steps)
        log.advance(loss=loss.item())
        done = step + 1
        if done % config.run.log_every == 0 or done == config.run.steps:
            iou, error = heldout_figures(matte, heldout)
            log.write({"step": done, "loss": round(loss.item(), 5), "heldout_iou": round(iou, 4),
                       "heldout_error": round(error, 4), "lr": optimizer.param_groups[0]["lr"],
                       "seconds": round(time.monotonic() - loop_began, 1)})
    log.close()
    matte.eval()
    target_dir = Path(config.export_dir) if config.export_dir else out / "final"
    iou, error = heldout_figures(matte, heldout)
    result = export_trained(matte, config, target_dir, {
        "steps": config.run.steps, "train_stills": len(stills.frames), "heldout_stills": len(heldout.frames),
        "heldout_iou": iou, "heldout_error": error}, began, loop_began)
    logger.info("person matte written to %s: held-out IoU %.3f", target_dir, iou)
    return result

