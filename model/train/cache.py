"""Pre-encoded training features, computed once per clip: VAE latents, log-mel frames, pose heatmaps, text.

cache_dir/manifest.json records what the cache was built from (VAE weights hash, feature settings);
a mismatch rebuilds it. Each clip becomes cache_dir/clips/<id>.safetensors with
  latents [T, C, h, w] float32, audio [T, W, K, A] float32 (each frame's audio window, as the stream builds it) + voiced [T],
  pose [T, G, h, w] float16 (heatmaps at latent resolution, if keypoints), text [text_dim] float32,
  and with keypoints: mouth_open [T] float32 and the mouth guide of the clip's most closed-mouth frame
  (guide_frame [1] int64, guide_bank [K, C, h, w] float32, guide_cells [h, w] uint8, guide_box [3] float32:
  the MouthBox x, y, width; model/guide.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from model.conditioning.mouth import MouthBox, mouth_box_from_keypoints
from model.conditioning.text import TextEncoder
from model.conditioning.vad import voiced_frames
from model.config import ModelConfig
from model.data import format as fmt
from model.errors import InputError
from model.guide import MouthBank, build_mouth_bank
from model.train.features import clip_audio_features, clip_heatmaps
from model.train.frames import bucket_size, resize_frames
from model.vae import FrameVAE

logger = logging.getLogger(__name__)

ENCODE_BATCH = 32
FEATURES_VERSION = "mouth-guide-1"  # bump when what encode_clip writes changes


@dataclass
class CachedClip:
    """One clip's pre-encoded features and what it may train."""

    id: str
    identity: str
    caption: str
    latents: torch.Tensor          # [T, C, h, w]
    audio: torch.Tensor | None     # [T, W, K, A]
    voiced: torch.Tensor | None    # [T] bool, silero-vad speech flags
    pose: torch.Tensor | None      # [T, G, h, w]
    text: torch.Tensor             # [text_dim]
    conditions: frozenset[str]
    mouth_open: torch.Tensor | None = None  # [T] studio mouth openness in [0, 1] (NaN where unknown)
    guide_frame: int | None = None          # the frame the mouth bank was drawn from (the guide's reference)
    guide_bank: MouthBank | None = None

    @property
    def frames(self) -> int:
        return int(self.latents.shape[0])

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.latents.shape[-2]), int(self.latents.shape[-1])


def _fingerprint(vae_dir: Path, model_config: ModelConfig) -> str:
    """Hash of the VAE weights and the feature settings: what the cached tensors depend on."""
    digest = hashlib.sha256()
    for path in sorted(vae_dir.glob("*")):
        if path.suffix in {".safetensors", ".json"}:
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    digest.update(FEATURES_VERSION.encode())
    digest.update(model_config.guide.model_dump_json().encode())
    digest.update(model_config.audio.model_dump_json().encode())
    digest.update(json.dumps([model_config.dit.pose_channels, model_config.video.height, model_config.video.width]).encode())
    return digest.hexdigest()[:16]


@torch.no_grad()
def encode_clip(clip: fmt.Clip, vae: FrameVAE, model_config: ModelConfig, text_encoder: TextEncoder) -> dict[str, torch.Tensor]:
    """Features of one loaded clip at its aspect bucket (model area, multiples of VAE x patch)."""
    unit = vae.downsample * model_config.dit.patch_size
    height, width = bucket_size(clip.meta.width, clip.meta.height, model_config.video.height * model_config.video.width, unit)
    frames = resize_frames(clip.frames, height, width)
    latents = torch.cat([vae.encode(part).float().cpu() for part in frames.split(ENCODE_BATCH)])
    tensors = {"latents": latents.contiguous()}
    if clip.audio is not None and "audio" in clip.meta.flags.conditions:
        tensors["audio"] = clip_audio_features(clip.audio, len(frames), model_config).float().contiguous()
        spf = model_config.audio.sample_rate // model_config.sampler.fps
        tensors["voiced"] = voiced_frames(clip.audio, len(frames), spf).to(torch.uint8)
    if clip.keypoints is not None and model_config.dit.pose_channels:
        pose = clip_heatmaps(clip.keypoints.xy, clip.keypoints.visibility, height // vae.downsample, width // vae.downsample)
        tensors["pose"] = pose.to(torch.float16).contiguous()
    if clip.keypoints is not None:
        tensors.update(_guide_features(clip, frames, vae, model_config))
    text = text_encoder.encode(clip.meta.caption)
    tensors["text"] = (text if text is not None else torch.zeros(text_encoder.dim)).float().cpu().contiguous()
    return tensors


def _guide_features(clip: fmt.Clip, frames: torch.Tensor, vae: FrameVAE,
                    model_config: ModelConfig) -> dict[str, torch.Tensor]:
    """Mouth openness [T] and the mouth bank of the most closed-mouth frame whose lips are visible."""
    keypoints = clip.keypoints
    opening = np.nan_to_num(keypoints.mouth_open.astype(np.float32), nan=np.inf)
    out = {"mouth_open": torch.from_numpy(keypoints.mouth_open.astype(np.float32)).contiguous()}
    for index in np.argsort(opening, kind="stable"):
        box = mouth_box_from_keypoints(keypoints.xy[index], keypoints.visibility[index])
        if box is not None:
            bank = build_mouth_bank(frames[index].permute(1, 2, 0).numpy(), box, vae.encode,
                                    model_config.guide.openings, model_config.guide.cell_threshold)
            out.update(guide_frame=torch.tensor([int(index)]), guide_bank=bank.latents.contiguous(),
                       guide_cells=bank.mouth_cells.to(torch.uint8), guide_box=torch.tensor(box.as_list()))
            break
    return out


def _cached_bank(tensors: dict[str, torch.Tensor]) -> MouthBank | None:
    """The MouthBank stored by _guide_features, if any."""
    if "guide_bank" not in tensors:
        return None
    latents = tensors["guide_bank"]
    return MouthBank(latents=latents, openings=torch.linspace(0.0, 1.0, latents.shape[0]),
                     mouth_cells=tensors["guide_cells"].bool(), box=MouthBox(*tensors["guide_box"].tolist()))


def build_cache(root: Path, entries: list[fmt.IndexEntry], vae_dir: Path, model_config: ModelConfig, cache_dir: Path) -> None:
    """Encode every clip not yet cached (resumable: each clip is written on its own)."""
    fingerprint = _fingerprint(vae_dir, model_config)
    manifest_path = cache_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if manifest.get("fingerprint") != fingerprint:
        if manifest:
            logger.info("cache %s was built from other weights/settings: rebuilding", cache_dir)
        manifest = {"fingerprint": fingerprint, "clips": {}}
        for stale in (cache_dir / "clips").glob("*.safetensors") if (cache_dir / "clips").is_dir() else []:
            stale.unlink()
    (cache_dir / "clips").mkdir(parents=True, exist_ok=True)
    todo = [e for e in entries if e.id not in manifest["clips"]]
    if not todo:
        return
    vae = FrameVAE.from_pretrained(vae_dir)
    text_encoder = TextEncoder()
    for entry in tqdm(todo, desc="caching features", unit="clip", dynamic_ncols=True):
        clip = fmt.load_clip(root, entry.id)
        tensors = encode_clip(clip, vae, model_config, text_encoder)
        save_file(tensors, str(cache_dir / "clips" / f"{entry.id}.safetensors"))
        manifest["clips"][entry.id] = {
            "identity": entry.identity, "caption": entry.caption, "conditions": sorted(clip.meta.flags.conditions),
        }
        manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    logger.info("cached %d clips into %s", len(todo), cache_dir)


def load_cache(cache_dir: Path, ids: list[str]) -> list[CachedClip]:
    """Load the cached clips `ids` into memory."""
    manifest_path = cache_dir / "manifest.json"
    if not manifest_path.is_file():
        raise InputError(f"no feature cache in {cache_dir}")
    manifest = json.loads(manifest_path.read_text())["clips"]
    clips = []
    for clip_id in ids:
        if clip_id not in manifest:
            raise InputError(f"clip {clip_id} is not in the cache {cache_dir}")
        tensors = load_file(str(cache_dir / "clips" / f"{clip_id}.safetensors"))
        info = manifest[clip_id]
        clips.append(CachedClip(
            id=clip_id, identity=info["identity"], caption=info["caption"], latents=tensors["latents"],
            audio=tensors.get("audio"), voiced=tensors["voiced"].bool() if "voiced" in tensors else None, pose=tensors["pose"].float() if "pose" in tensors else None,
            text=tensors["text"], conditions=frozenset(info["conditions"]), mouth_open=tensors.get("mouth_open"),
            guide_frame=int(tensors["guide_frame"]) if "guide_frame" in tensors else None, guide_bank=_cached_bank(tensors),
        ))
    return clips
