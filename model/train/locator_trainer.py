"""MouthLocator training: studio frames + their keypoints' MouthBox, augmented crops, no-mouth negatives."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.conditioning.mouth import mouth_box_from_keypoints
from model.conditioning.mouth_locator import MouthLocator, crop_square, to_pixels
from model.data import format as fmt
from model.data import keypoints as kp
from model.errors import InputError
from model.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from model.train.config import LocatorAugmentConfig, LocatorLossConfig, LocatorTrainConfig
from model.train.distributed import DistContext
from model.train.ema import EMA
from model.train.log import TrainLog
from model.train.schedule import lr_at, make_optimizer, step_generator

logger = logging.getLogger(__name__)

LOG_FIELDS = ["step", "loss", "centre", "width", "confidence", "lr", "grad_norm", "seconds"]
NEGATIVE_KINDS = ("background", "noise", "flat", "blank_face", "blank_mouth")
EVAL_SEED = 12345


#################################################################################
#                                   Frame pool                                  #
#################################################################################

@dataclass
class LocatorPool:
    """Frames at the model size with the MouthBox and face box of each (image units)."""

    frames: torch.Tensor  # uint8 [N, 3, S, S]
    boxes: torch.Tensor   # float [N, 3] (x, y, width) of the lip line
    faces: torch.Tensor   # float [N, 4] (x0, y0, x1, y1) of the face keypoints
    clips: int

    def __len__(self) -> int:
        return len(self.frames)


def _square_coords(xy: np.ndarray, height: int, width: int, size: int) -> np.ndarray:
    """Keypoints [..., 2] of a height x width frame -> coords on its crop_square(size) square."""
    scale = max(size / height, size / width)
    rw, rh = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (rw - size) // 2, (rh - size) // 2
    out = np.empty_like(xy)
    out[..., 0] = (xy[..., 0] * rw - left) / size
    out[..., 1] = (xy[..., 1] * rh - top) / size
    return out


def select_entries(root: Path, split: str, limit: int | None, framings: list[str] | None) -> list[fmt.IndexEntry]:
    """Index entries of one split that have pose (keypoints), in id order, at most `limit`."""
    entries = [e for e in fmt.read_index(root).split(split, framings) if "pose" in e.conditions]
    if not entries:
        raise InputError(f"dataset {root} has no clips with keypoints in split {split!r}")
    return entries[:limit] if limit else entries


def build_pool(root: Path, entries: list[fmt.IndexEntry], size: int, per_clip: int) -> LocatorPool:
    """Decode the clips; keep `per_clip` evenly spaced frames whose lips are visible, squared to `size`."""
    frames, boxes, faces = [], [], []
    for entry in entries:
        clip = fmt.load_clip(root, entry.id)
        if clip.keypoints is None:
            continue
        total, height, width = clip.frames.shape[:3]
        picks = np.unique(np.linspace(0, total - 1, num=min(per_clip, total)).round().astype(int))
        for t in picks:
            xy = _square_coords(clip.keypoints.xy[t], height, width, size)  # [K, 2]
            box = mouth_box_from_keypoints(xy, clip.keypoints.visibility[t])
            if box is None:
                continue
            face = xy[kp.FACE][clip.keypoints.visibility[t][kp.FACE] > 0.5]
            if not len(face):
                continue
            square = clip.frames[t] if (height, width) == (size, size) else crop_square(clip.frames[t], size)
            frames.append(torch.from_numpy(square).permute(2, 0, 1))
            boxes.append(box.as_list())
            faces.append([*face.min(axis=0).tolist(), *face.max(axis=0).tolist()])
    if not frames:
        raise InputError(f"no frames with visible lips in {len(entries)} clips of {root}")
    return LocatorPool(torch.stack(frames), torch.tensor(boxes, dtype=torch.float32),
                       torch.tensor(faces, dtype=torch.float32), len(entries))


#################################################################################
#                                  Augmentation                                 #
#################################################################################

def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _crop_thetas(left: torch.Tensor, top: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """Crops (left, top, side in image units) [B] -> affine_grid thetas [B, 2, 3]."""
    theta = torch.zeros(len(side), 2, 3)
    theta[:, 0, 0] = side
    theta[:, 1, 1] = side
    theta[:, 0, 2] = 2 * left + side - 1
    theta[:, 1, 2] = 2 * top + side - 1
    return theta


def positive_crops(boxes: torch.Tensor, aug: LocatorAugmentConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random zoom/shift crops that keep the mouth inside -> (thetas [B, 2, 3], transformed boxes [B, 3])."""
    n = len(boxes)
    zoom = torch.exp(_uniform(n, math.log(aug.zoom_min), math.log(aug.zoom_max), generator))
    side = 1.0 / zoom  # [B] crop side in image units
    target_x = _uniform(n, aug.margin, 1 - aug.margin, generator)  # where the mouth lands in the crop
    target_y = _uniform(n, aug.margin, 1 - aug.margin, generator)
    keep = torch.rand(n, generator=generator) < 0.25  # a quarter keep the natural framing
    side = torch.where(keep, torch.ones_like(side), side)
    left = torch.where(keep, torch.zeros_like(side), boxes[:, 0] - target_x * side)
    top = torch.where(keep, torch.zeros_like(side), boxes[:, 1] - target_y * side)
    moved = torch.stack([(boxes[:, 0] - left) / side, (boxes[:, 1] - top) / side, boxes[:, 2] / side], dim=-1)
    return _crop_thetas(left, top, side), moved


def background_crops(faces: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops that miss the (expanded) face box -> (thetas [B, 2, 3], found [B] bool)."""
    n = len(faces)
    pad = 0.05
    best_left, best_top, best_side = torch.zeros(n), torch.zeros(n), torch.ones(n)
    found = torch.zeros(n, dtype=torch.bool)
    for _ in range(12):
        side = torch.exp(_uniform(n, math.log(0.12), math.log(0.5), generator))
        left = torch.rand(n, generator=generator) * (1 - side)
        top = torch.rand(n, generator=generator) * (1 - side)
        apart = ((left + side < faces[:, 0] - pad) | (left > faces[:, 2] + pad)
                 | (top + side < faces[:, 1] - pad) | (top > faces[:, 3] + pad))
        new = apart & ~found
        best_left, best_top, best_side = (torch.where(new, left, best_left), torch.where(new, top, best_top),
                                          torch.where(new, side, best_side))
        found |= apart
    return _crop_thetas(best_left, best_top, best_side), found


def blank_regions(pixels: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Fill an ellipse per image (regions [B, 4] x0, y0, x1, y1) with the median colour inside it."""
    b, _, h, w = pixels.shape
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    cx, cy = (regions[:, 0] + regions[:, 2]) / 2, (regions[:, 1] + regions[:, 3]) / 2
    rx = ((regions[:, 2] - regions[:, 0]) / 2).clamp_min(1.0 / w)
    ry = ((regions[:, 3] - regions[:, 1]) / 2).clamp_min(1.0 / h)
    mask = (((xs[None, None, :] - cx[:, None, None]) / rx[:, None, None]) ** 2
            + ((ys[None, :, None] - cy[:, None, None]) / ry[:, None, None]) ** 2) <= 1.0  # [B, H, W]
    out = pixels.clone()
    for i in range(b):
        inside = pixels[i][:, mask[i]]  # [3, M]
        if inside.shape[1]:
            colour = inside.median(dim=1).values
            out[i][:, mask[i]] = colour[:, None]
    return out


def synthetic_negatives(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Noise (pixel, blobby) and flat colours with a gentle gradient -> float [n, 3, S, S] in [-1, 1]."""
    out = torch.empty(n, 3, size, size)
    kind = torch.randint(3, (n,), generator=generator)
    for i in range(n):
        if kind[i] == 0:
            out[i] = torch.rand(3, size, size, generator=generator) * 2 - 1
        elif kind[i] == 1:
            cells = int(torch.randint(2, 33, (1,), generator=generator))
            coarse = torch.rand(1, 3, cells, cells, generator=generator) * 2 - 1
            out[i] = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[0]
        else:
            colour = torch.rand(3, 1, 1, generator=generator) * 2 - 1
            slope = (torch.rand(3, 1, 1, generator=generator) - 0.5) * 0.6
            ramp = torch.linspace(-1, 1, size)
            axis = ramp[None, None, :] if bool(torch.rand((), generator=generator) < 0.5) else ramp[None, :, None]
            out[i] = (colour + slope * axis).clamp(-1, 1).expand(3, size, size)
    return out


def jitter(pixels: torch.Tensor, aug: LocatorAugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation, RGB shuffles, blur and noise on [B, 3, S, S] in [-1, 1]."""
    b = len(pixels)
    grey = pixels.mean(dim=1, keepdim=True)  # [B, 1, S, S]
    saturation = 1 + _uniform(b, -aug.saturation, aug.saturation, generator)
    x = grey + (pixels - grey) * saturation[:, None, None, None]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = 1 + _uniform(b, -aug.contrast, aug.contrast, generator)
    x = mean + (x - mean) * contrast[:, None, None, None]
    x = x + _uniform(b, -aug.brightness, aug.brightness, generator)[:, None, None, None]
    shuffle = torch.rand(b, generator=generator) < aug.channel_shuffle_prob
    for i in torch.nonzero(shuffle).flatten().tolist():
        x[i] = x[i][torch.randperm(3, generator=generator)]
    blur = torch.rand(b, generator=generator) < aug.blur_prob
    if blur.any():
        kernel = torch.tensor([1.0, 2.0, 1.0])
        kernel = (kernel[:, None] * kernel[None, :] / 16).expand(3, 1, 3, 3)
        x[blur] = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    std = torch.rand(b, generator=generator) * aug.noise_std
    x = x + std[:, None, None, None] * torch.randn(x.shape, generator=generator)
    return x.clamp(-1, 1)


def sample_batch(pool: LocatorPool, batch: int, size: int, aug: LocatorAugmentConfig, generator: torch.Generator,
                 augment: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (pixels [B, 3, S, S] in [-1, 1], boxes [B, 3] (zeros for negatives), positive [B] bool)."""
    index = torch.randint(len(pool), (batch,), generator=generator)
    source = to_pixels(pool.frames[index])  # [B, 3, S, S]
    boxes, faces = pool.boxes[index], pool.faces[index]
    positive = torch.rand(batch, generator=generator) >= aug.negative_fraction
    kind = torch.randint(len(NEGATIVE_KINDS), (batch,), generator=generator)
    thetas, moved = positive_crops(boxes, aug, generator)

    background = ~positive & (kind == NEGATIVE_KINDS.index("background"))
    back_thetas, found = background_crops(faces, generator)
    thetas = torch.where(background[:, None, None], back_thetas, thetas)
    synthetic = ~positive & ((kind == NEGATIVE_KINDS.index("noise")) | (kind == NEGATIVE_KINDS.index("flat"))
                             | (background & ~found))
    blank_face = ~positive & (kind == NEGATIVE_KINDS.index("blank_face"))
    blank_mouth = ~positive & (kind == NEGATIVE_KINDS.index("blank_mouth"))
    if blank_face.any():
        grown = faces[blank_face] + torch.tensor([-0.04, -0.08, 0.04, 0.04])
        source[blank_face] = blank_regions(source[blank_face], grown)
    if blank_mouth.any():
        b = boxes[blank_mouth]
        half_w, half_h = 0.7 * b[:, 2], 0.45 * b[:, 2]
        source[blank_mouth] = blank_regions(source[blank_mouth], torch.stack(
            [b[:, 0] - half_w, b[:, 1] - half_h, b[:, 0] + half_w, b[:, 1] + half_h], dim=-1))

    grid = F.affine_grid(thetas, [batch, 3, size, size], align_corners=False)
    pixels = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if synthetic.any():
        pixels[synthetic] = synthetic_negatives(int(synthetic.sum()), size, generator)
    flip = torch.rand(batch, generator=generator) < aug.flip_prob
    pixels[flip] = pixels[flip].flip(-1)
    moved[:, 0] = torch.where(flip, 1 - moved[:, 0], moved[:, 0])
    if augment:
        pixels = jitter(pixels, aug, generator)
    return pixels, torch.where(positive[:, None], moved, torch.zeros_like(moved)), positive


#################################################################################
#                                     Losses                                    #
#################################################################################

def locator_loss(out: dict[str, torch.Tensor], boxes: torch.Tensor, positive: torch.Tensor,
                 loss: LocatorLossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Centre L1 + log-width L1 on positives, confidence BCE on all, heatmap cell CE on positives."""
    target = positive.float()
    confidence = F.binary_cross_entropy_with_logits(out["logit"], target)
    total = loss.confidence * confidence
    parts = {"confidence": confidence.item(), "centre": 0.0, "width": 0.0}
    if positive.any():
        pred, true = out["box"][positive], boxes[positive]
        centre = (pred[:, :2] - true[:, :2]).abs().sum(-1).mean()
        width = (pred[:, 2].clamp_min(1e-4).log() - true[:, 2].log()).abs().mean()
        heatmap = out["heatmap"][positive]  # [P, h, w]
        h, w = heatmap.shape[-2:]
        cell = (true[:, 1] * h).long().clamp(0, h - 1) * w + (true[:, 0] * w).long().clamp(0, w - 1)
        ce = F.cross_entropy(heatmap.flatten(1), cell)
        total = total + loss.centre * centre + loss.width * width + loss.heatmap_ce * ce
        parts.update(centre=centre.item(), width=width.item())
    return total, parts


#################################################################################
#                                   Evaluation                                  #
#################################################################################

@torch.no_grad()
def heldout_errors(locator: MouthLocator, pool: LocatorPool, aug: LocatorAugmentConfig) -> dict[str, float]:
    """Held-out figures: centre error (px at the model size), relative width error, confidence rates."""
    size = locator.config.image_size
    threshold = locator.config.min_confidence
    figures: dict[str, float] = {"heldout_frames": len(pool)}
    pred, confidence = [], []
    for start in range(0, len(pool), 64):
        out = locator(to_pixels(pool.frames[start:start + 64]))
        pred.append(out["box"])
        confidence.append(out["logit"].sigmoid())
    pred, confidence = torch.cat(pred), torch.cat(confidence)
    figures.update(_box_figures(pred, pool.boxes, size, ""))
    figures["positive_rate"] = float((confidence >= threshold).float().mean())

    generator = torch.Generator().manual_seed(EVAL_SEED)
    batch = 128
    moved_pred, moved_true, negative_conf = [], [], []
    for _ in range(max(1, math.ceil(len(pool) / batch))):
        pixels, boxes, positive = sample_batch(pool, batch, size, aug, generator, augment=False)
        out = locator(pixels)
        moved_pred.append(out["box"][positive])
        moved_true.append(boxes[positive])
        negative_conf.append(out["logit"][~positive].sigmoid())
    figures.update(_box_figures(torch.cat(moved_pred), torch.cat(moved_true), size, "augmented_"))
    negatives = torch.cat(negative_conf)
    figures["negatives"] = len(negatives)
    figures["false_positive_rate"] = float((negatives >= threshold).float().mean()) if len(negatives) else float("nan")
    return figures


def _box_figures(pred: torch.Tensor, true: torch.Tensor, size: int, prefix: str) -> dict[str, float]:
    """Mean / median / p95 centre error in pixels and mean relative width error."""
    centre = ((pred[:, :2] - true[:, :2]) * size).norm(dim=-1)
    width = ((pred[:, 2] - true[:, 2]).abs() / true[:, 2])
    return {f"{prefix}centre_px": float(centre.mean()), f"{prefix}centre_px_median": float(centre.median()),
            f"{prefix}centre_px_p95": float(centre.quantile(0.95)), f"{prefix}width_rel": float(width.mean())}


#################################################################################
#                                  Training loop                                #
#################################################################################

def train_locator(config: LocatorTrainConfig, ctx: DistContext, resume: bool = True, until: int | None = None) -> dict:
    """Train the MouthLocator; checkpoints + log.csv in run.output_dir, the EMA weights (+ training.json)
    in export_dir (default: run.output_dir/final) at the end. `until` stops early with a checkpoint."""
    began = time.monotonic()
    out = Path(config.run.output_dir)
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    torch.manual_seed(config.run.seed)
    locator = MouthLocator(**config.model).to(ctx.device)
    locator.train()
    size = locator.config.image_size
    root = Path(config.data.root)
    train_entries = select_entries(root, config.data.split, config.data.max_clips, config.data.framings)
    heldout_entries = select_entries(root, config.data.heldout_split, config.data.heldout_clips, config.data.framings)
    pool = build_pool(root, train_entries, size, config.data.frames_per_clip)
    heldout = build_pool(root, heldout_entries, size, config.data.frames_per_clip)
    logger.info("locator training on %d frames of %d clips; %d held-out frames of %d clips (%d parameters)",
                len(pool), len(train_entries), len(heldout), len(heldout_entries),
                sum(p.numel() for p in locator.parameters()))

    optimizer = make_optimizer(locator.parameters(), config.optim)
    ema = EMA(locator, config.optim.ema_decay)
    start = 0
    found = latest_checkpoint(out / "checkpoints") if resume else None
    if found is not None:
        start = load_checkpoint(found, locator, ema, optimizer)["step"]

    log = TrainLog(out / "log.csv", LOG_FIELDS, config.run.steps, start, ctx.is_main)
    loop_began = time.monotonic()
    stop = min(config.run.steps, until) if until is not None else config.run.steps
    for step in range(start, stop):
        generator = step_generator(config.run.seed, step, ctx.rank)
        pixels, boxes, positive = sample_batch(pool, config.run.batch_size, size, config.augment, generator)
        pixels, boxes, positive = pixels.to(ctx.device), boxes.to(ctx.device), positive.to(ctx.device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config.optim, config.run.steps)
        loss, parts = locator_loss(locator(pixels), boxes, positive, config.loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if ctx.enabled:
            for param in locator.parameters():
                if param.grad is not None:
                    torch.distributed.all_reduce(param.grad)
                    param.grad.div_(ctx.world_size)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(locator.parameters(), config.optim.grad_clip))
        optimizer.step()
        ema.update(locator, step)
        done = step + 1
        log.advance(loss=loss.item(), centre=parts["centre"])
        if done % config.run.log_every == 0 or done == config.run.steps:
            log.write({"step": done, "loss": loss.item(), **parts, "lr": optimizer.param_groups[0]["lr"],
                       "grad_norm": grad_norm, "seconds": round(time.monotonic() - loop_began, 2)})
        if ctx.is_main and (done % config.run.checkpoint_every == 0 or done == stop):
            save_checkpoint(out / "checkpoints", done, locator, ema, optimizer, {"kind": "locator"}, config.run.keep_checkpoints)
        ctx.barrier()
    log.close()

    result: dict = {"stopped_at": stop} if stop < config.run.steps else {}
    if ctx.is_main and not result:
        ema.copy_to(locator)
        locator.eval()
        figures = heldout_errors(locator.cpu(), heldout, config.augment)
        target = Path(config.export_dir) if config.export_dir else out / "final"
        locator.save_pretrained(target)
        result = {"steps": config.run.steps, "train_clips": len(train_entries), "train_frames": len(pool),
                  "heldout_split": config.data.heldout_split, "heldout_clips": len(heldout_entries), **figures,
                  "parameters": sum(p.numel() for p in locator.parameters()),
                  "train_wall_s": round(time.monotonic() - loop_began, 1), "wall_s": round(time.monotonic() - began, 1),
                  "threads": torch.get_num_threads(), "output": str(target)}
        (target / "training.json").write_text(json.dumps(
            {"config": config.model_dump(mode="json"), "result": result}, indent=2) + "\n")
        logger.info("locator written to %s: held-out centre error %.2f px, width error %.1f %%, false positives %.1f %%",
                    target, figures["centre_px"], 100 * figures["width_rel"], 100 * figures["false_positive_rate"])
    return result
