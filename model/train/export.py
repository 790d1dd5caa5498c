"""Write a trained DiT (EMA weights) + the trained VAE as an AvatarPipeline folder (what from_pretrained reads)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from safetensors.torch import load_file

from model.conditioning.motion import MouthMotion
from model.conditioning.mouth_locator import MouthLocator
from model.conditioning.person_matte import PersonMatte
from model.config import ModelConfig, SamplerSection, load_model_config
from model.dit import OmniHumanDiT
from model.errors import InputError
from model.pipeline import AvatarPipeline
from model.train.checkpoint import latest_checkpoint
from model.train.config import DitTrainConfig
from model.vae import FrameVAE

logger = logging.getLogger(__name__)

TRAINING_FILE = "training.json"


def shipped_vae(config: DitTrainConfig) -> Path:
    """The VAE folder the pipeline ships: `export_vae`, else the caching `vae`. An export_vae must have the
    caching VAE's encoder and latent scaling (a decoder retrained with freeze_encoder), or the DiT's
    latents would mean something else to it."""
    cached = Path(config.vae)
    if config.export_vae is None:
        return cached
    shipped = Path(config.export_vae)
    if not (shipped / "config.json").is_file():
        raise InputError(f"export_vae: no trained VAE at {shipped}")
    a, b = FrameVAE.from_pretrained(cached), FrameVAE.from_pretrained(shipped)
    a_enc, b_enc = a.autoencoder.encoder.state_dict(), b.autoencoder.encoder.state_dict()
    same = (a.scaling_factor, a.shift_factor) == (b.scaling_factor, b.shift_factor) and a_enc.keys() == b_enc.keys() \
        and all(a_enc[k].equal(b_enc[k]) for k in a_enc)
    if not same:
        raise InputError(f"export_vae {shipped} does not share the encoder of vae {cached} "
                         "(train it with freeze_encoder: true and init_from the caching VAE)")
    return shipped


def export_pipeline(dit: OmniHumanDiT, model_config: ModelConfig, export_dir: Path,
                    config: DitTrainConfig, info: dict | None = None) -> Path:
    """Save dit + the shipped vae + pipeline.json into export_dir, plus training.json (recipe and run figures).

    `config.export_sampler` overrides sampler defaults in the written model config (e.g. the context
    noise level `context_t` that matches the context-noise augmentation the model was trained with).
    """
    if config.export_sampler:
        sampler = SamplerSection.model_validate({**model_config.sampler.model_dump(), **config.export_sampler})
        model_config = ModelConfig.model_validate({**model_config.model_dump(), "sampler": sampler.model_dump()})
    vae_dir = shipped_vae(config)
    pipe = AvatarPipeline(model_config, dit.eval(), FrameVAE.from_pretrained(vae_dir),
                          motion=_part(MouthMotion, config.motion, "motion"),
                          locator=_part(MouthLocator, config.locator, "locator"),
                          matte=_part(PersonMatte, config.matte, "matte"))
    pipe.save_pretrained(export_dir)
    vae_metrics = vae_dir / "metrics.json"
    motion_metrics = Path(config.motion).parent / "metrics.json" if config.motion else None
    record = {"train_config": config.model_dump(mode="json"), **(info or {}),
              "vae": json.loads(vae_metrics.read_text()) if vae_metrics.is_file() else None,
              "motion": json.loads(motion_metrics.read_text()) if motion_metrics and motion_metrics.is_file() else None}
    (export_dir / TRAINING_FILE).write_text(json.dumps(record, indent=2) + "\n")
    logger.info("exported pipeline to %s", export_dir)
    return export_dir


def _part(kind, folder: str | None, what: str):
    """A trained part (motion model, mouth locator) the pipeline ships, or None when the config names none."""
    if folder is None:
        return None
    if not (Path(folder) / "config.json").is_file():
        raise InputError(f"{what}: no trained {what} model at {folder}")
    return kind.from_pretrained(folder)


def export_latest(config: DitTrainConfig, export_dir: Path | None = None, checkpoint: Path | None = None) -> dict:
    """Export the EMA weights of `checkpoint`, by default the newest of the run (stopped early, or a stage end)."""
    found = checkpoint or latest_checkpoint(Path(config.run.output_dir) / "checkpoints")
    if found is None or not (found / "state.json").is_file():
        raise FileNotFoundError(f"no checkpoint {'at ' + str(checkpoint) if checkpoint else 'under ' + config.run.output_dir + '/checkpoints'}")
    model_config = load_model_config(config.model)
    dit = OmniHumanDiT(**model_config.dit_kwargs())
    weights = found / "ema.safetensors"
    dit.load_state_dict(load_file(str(weights if weights.is_file() else found / "model.safetensors")))
    state = json.loads((found / "state.json").read_text())
    target = Path(export_dir or config.export_dir or Path(config.run.output_dir) / "pipeline")
    export_pipeline(dit, model_config, target, config,
                    {"checkpoint": str(found), "steps_trained": state["step"], "weights": "ema"})
    return {"export_dir": str(target), "steps_trained": state["step"]}
