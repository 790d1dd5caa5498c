"""Mouth-reader training: MouthReader on studio frames against their keypoint mouth openness."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.data import format as fmt
from model.data import keypoints as kp
from model.errors import InputError
from model.train.checkpoint import export_trained
from model.train.config import ReaderAugmentConfig, ReaderTrainConfig
from model.train.log import TrainLog
from model.train.metrics import mouth_box, pearson
from model.train.mouth_reader import MouthReader, mouth_crops
from model.train.schedule import make_optimizer, optimise, step_generator
from model.vae import FrameVAE

logger = logging.getLogger(__name__)

LOG_FIELDS = ["step", "loss", "heldout_r", "lr", "seconds"]
VAE_BATCH = 128


#################################################################################
#                                   Frame pool                                  #
#################################################################################

@dataclass
class ReaderPool:
    """Frames with their lip box and openness; `decoded` holds the same frames through a VAE (or is None)."""

    frames: np.ndarray            # uint8 [N, H, W, 3]
    boxes: np.ndarray             # float32 [N, 4] pixel boxes (metrics.mouth_box)
    openness: np.ndarray          # float32 [N]
    decoded: np.ndarray | None = None  # uint8 [N, H, W, 3]


def build_pool(root: Path, split: str, framings: list[str] | None, step: int) -> ReaderPool:
    """Every `step`-th frame of the split's clips with a known openness and visible lips."""
    frames, boxes, openness = [], [], []
    for entry in fmt.read_index(root).split(split, framings):
        clip = fmt.load_clip(root, entry.id)
        if clip.keypoints is None or clip.keypoints.mouth_open is None:
            continue
        height, width = clip.frames.shape[1:3]
        keypoints = clip.keypoints
        for t in range(0, len(clip.frames), step):
            lips_visible = keypoints.visibility[t, kp.LIPS].min() > 0
            if not (np.isfinite(keypoints.mouth_open[t]) and lips_visible):
                continue
            frames.append(clip.frames[t])
            boxes.append(mouth_box(keypoints.xy[t, kp.LIPS], width, height))
            openness.append(keypoints.mouth_open[t])
    if not frames:
        raise InputError(f"no frames with keypoint mouth openness in split {split!r} of {root}")
    return ReaderPool(np.stack(frames), np.asarray(boxes, np.float32), np.asarray(openness, np.float32))


@torch.no_grad()
def vae_roundtrip(vae: FrameVAE, frames: np.ndarray) -> np.ndarray:
    """uint8 frames [N, H, W, 3] encoded and decoded by the VAE, in batches."""
    out = []
    for start in range(0, len(frames), VAE_BATCH):
        pixels = torch.from_numpy(frames[start:start + VAE_BATCH]).permute(0, 3, 1, 2)  # [B, 3, H, W]
        out.append(vae.decode_uint8(vae.encode(pixels)).numpy())
    return np.concatenate(out)


#################################################################################
#                                  Augmentation                                 #
#################################################################################

def sample_batch(pool: ReaderPool, batch: int, reader: MouthReader, aug: ReaderAugmentConfig,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops [B, 3, h, w] around jittered lip boxes (decoded frames for a share), colour-jittered and flipped,
    with their openness [B]."""
    pick = torch.randint(len(pool.frames), (batch,), generator=generator).numpy()
    frames = pool.frames[pick]
    if pool.decoded is not None:
        decoded = (torch.rand(batch, generator=generator) < aug.vae_fraction).numpy()
        frames = np.where(decoded[:, None, None, None], pool.decoded[pick], frames)
    box = torch.from_numpy(pool.boxes[pick])
    size = (box[:, 2] - box[:, 0])[:, None]  # [B, 1] box width
    centre = (box[:, :2] + box[:, 2:]) / 2 + (torch.rand(batch, 2, generator=generator) - 0.5) * aug.shift * size
    half = (box[:, 2:] - box[:, :2]) / 2 * (1 + (torch.rand(batch, 1, generator=generator) - 0.5) * aug.scale)
    crops = mouth_crops(frames, torch.cat([centre - half, centre + half], dim=1), reader.config.crop_height,
                        reader.config.crop_width)
    contrast = 1 + (torch.rand(batch, 1, 1, 1, generator=generator) - 0.5) * 2 * aug.contrast
    offset = (torch.rand(batch, 3, 1, 1, generator=generator) - 0.5) * 2 * aug.colour
    crops = crops * contrast + offset
    shuffled = torch.rand(batch, generator=generator) < aug.channel_shuffle_prob
    crops[shuffled] = crops[shuffled][:, torch.randperm(3, generator=generator)]
    flipped = torch.rand(batch, generator=generator) < aug.flip_prob
    crops[flipped] = crops[flipped].flip(-1)
    return crops, torch.from_numpy(pool.openness[pick])


def heldout_r(reader: MouthReader, pool: ReaderPool, frames: np.ndarray | None = None) -> float:
    """Correlation of the reader's openness with the keypoints' on held-out frames (or their decoded copies)."""
    return pearson(reader.read(pool.frames if frames is None else frames, pool.boxes), pool.openness)


#################################################################################
#                                    Training                                   #
#################################################################################

def train_reader(config: ReaderTrainConfig) -> dict:
    """Train the MouthReader; log.csv in run.output_dir, the weights (+ training.json) in export_dir
    (default: run.output_dir/final)."""
    began = time.monotonic()
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    torch.manual_seed(config.run.seed)
    root = Path(config.data.root)
    pool = build_pool(root, config.data.split, config.data.framings, config.data.frame_step)
    heldout = build_pool(root, config.data.heldout_split, config.data.framings, config.data.heldout_frame_step)
    if config.vae is not None:
        vae = FrameVAE.from_pretrained(config.vae).eval()
        pool.decoded, heldout.decoded = vae_roundtrip(vae, pool.frames), vae_roundtrip(vae, heldout.frames)
    reader = MouthReader(**config.model)
    logger.info("mouth reader training on %d frames, %d held out (%d parameters)", len(pool.frames),
                len(heldout.frames), sum(p.numel() for p in reader.parameters()))
    optimizer = make_optimizer(reader.parameters(), config.optim)
    out = Path(config.run.output_dir)
    log = TrainLog(out / "log.csv", LOG_FIELDS, config.run.steps, 0, True)
    loop_began = time.monotonic()
    for step in range(config.run.steps):
        reader.train()
        crops, target = sample_batch(pool, config.run.batch_size, reader, config.augment,
                                     step_generator(config.run.seed, step, 0))
        loss = torch.nn.functional.mse_loss(reader(crops), target)
        optimise(reader, optimizer, loss, step, config.optim, config.run.steps)
        log.advance(loss=loss.item())
        done = step + 1
        if done % config.run.log_every == 0 or done == config.run.steps:
            reader.eval()
            log.write({"step": done, "loss": round(loss.item(), 6), "heldout_r": round(heldout_r(reader, heldout), 4),
                       "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.monotonic() - loop_began, 1)})
    log.close()
    reader.eval()
    target_dir = Path(config.export_dir) if config.export_dir else out / "final"
    result = export_trained(reader, config, target_dir, {
        "steps": config.run.steps, "train_frames": len(pool.frames), "heldout_split": config.data.heldout_split,
        "heldout_frames": len(heldout.frames), "heldout_r": heldout_r(reader, heldout),
        "heldout_r_decoded": heldout_r(reader, heldout, heldout.decoded) if heldout.decoded is not None else None},
        began, loop_began)
    logger.info("mouth reader written to %s: held-out r %.3f", target_dir, result["heldout_r"])
    return result
