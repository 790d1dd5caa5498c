"""Audio -> motion training: MouthMotion on the cached audio windows and the studio's mouth openness."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from model.conditioning.audio import silence_features
from model.conditioning.motion import MouthMotion
from model.config import load_model_config
from model.errors import InputError
from model.train.cache import CachedClip, build_cache, load_cache
from model.train.config import MotionTrainConfig
from model.train.features import gated_windows
from model.train.log import TrainLog
from model.train.metrics import pearson
from model.train.schedule import lr_at, make_optimizer, step_generator
from model.train.trainer import split_entries

logger = logging.getLogger(__name__)

LOG_FIELDS = ["step", "loss", "heldout_r", "lr", "seconds"]


#################################################################################
#                                    Data                                       #
#################################################################################

def _frames(clips: list[CachedClip], silence: torch.Tensor, past: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All frames with known openness: (raw windows [N, W, K, A], gated windows [N, W, K, A], openness [N])."""
    raw, gated, target = [], [], []
    for clip in clips:
        if clip.audio is None or clip.mouth_open is None:
            continue
        known = torch.isfinite(clip.mouth_open)
        raw.append(clip.audio[known])
        gated.append(gated_windows(clip.audio, clip.voiced, silence, past)[known])
        target.append(clip.mouth_open[known])
    if not raw:
        raise InputError("no cached clip has both audio and mouth openness (studio keypoints)")
    return torch.cat(raw), torch.cat(gated), torch.cat(target)


@torch.no_grad()
def openness_r(model: MouthMotion, windows: torch.Tensor, target: torch.Tensor) -> float:
    """Pearson correlation of predicted and true openness over frames (0 when either is constant)."""
    return pearson(model(windows).numpy(), target.numpy())


#################################################################################
#                                   Training                                    #
#################################################################################

def train_motion(config: MotionTrainConfig) -> dict:
    """Train MouthMotion; writes log.csv, final/ (save_pretrained) and metrics.json under run.output_dir."""
    model_config = load_model_config(config.model)
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    train_entries, heldout_entries = split_entries(config)  # type: ignore[arg-type]
    cache_dir = Path(config.data.cache_dir)
    build_cache(Path(config.data.root), train_entries + heldout_entries, Path(config.vae), model_config, cache_dir)
    silence, past = silence_features(model_config), model_config.audio.past_frames
    raw, gated, target = _frames(load_cache(cache_dir, [e.id for e in train_entries]), silence, past)
    held_raw, held_gated, held_target = _frames(load_cache(cache_dir, [e.id for e in heldout_entries]), silence, past)
    logger.info("motion training on %d frames (%d held out)", len(target), len(held_target))

    torch.manual_seed(config.run.seed)
    model = MouthMotion(window_frames=model_config.audio.window_frames,
                        frames_per_video_frame=model_config.audio_frames_per_video_frame,
                        feature_dim=model_config.audio_feature_dim, hidden_size=config.hidden_size)
    optimizer = make_optimizer(model.parameters(), config.optim)
    out = Path(config.run.output_dir)
    log = TrainLog(out / "log.csv", LOG_FIELDS, config.run.steps, 0, True)
    began = time.monotonic()
    for step in range(config.run.steps):
        g = step_generator(config.run.seed, step, 0)
        pick = torch.randint(len(target), (config.run.batch_size,), generator=g)
        gate = torch.rand(config.run.batch_size, generator=g) < config.vad_gate_prob
        windows = torch.where(gate[:, None, None, None], gated[pick], raw[pick])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config.optim, config.run.steps)
        loss = torch.nn.functional.mse_loss(model(windows), target[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log.advance(loss=loss.item())
        done = step + 1
        if done % config.run.log_every == 0 or done == config.run.steps:
            model.eval()
            log.write({"step": done, "loss": round(loss.item(), 6), "lr": optimizer.param_groups[0]["lr"],
                       "heldout_r": round(openness_r(model, held_gated, held_target), 4),
                       "seconds": round(time.monotonic() - began, 1)})
            model.train()
    log.close()
    model.eval()
    model.save_pretrained(str(out / "final"), safe_serialization=True)
    result = {"steps": config.run.steps, "train_frames": len(target), "heldout_frames": len(held_target),
              "heldout_r": openness_r(model, held_gated, held_target),  # VAD-gated, as a live session
              "heldout_r_ungated": openness_r(model, held_raw, held_target),
              "wall_s": round(time.monotonic() - began, 1)}
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
