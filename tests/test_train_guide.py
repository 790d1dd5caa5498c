"""The tiny v2 recipe on toy clips: audio->motion training, guide-model DiT training, export, render."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.config import load_model_config
from model.pipeline import AvatarPipeline
from model.train.cache import load_cache
from model.train.config import load_train_config
from model.train.schedule import step_generator
from model.train.trainer import load_motion, make_builder
from model.vae import FrameVAE
from omnilive_cli.main import main
from test_train_toyset import make_toy_dataset

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "train"
SMALL_GUIDE_MODEL = """
dit: {hidden_size: 32, depth: 2, num_heads: 2, patch_size: 2, mlp_ratio: 2.0, pose_channels: 0,
      concat_guide: true, prediction: guide_residual}
vae: {latent_channels: 4, encoder_block_out_channels: [8, 8, 8, 8], decoder_block_out_channels: [8, 8, 8, 8]}
sampler: {chunk_frames: 2, context_frames: 2, steps: 2}
guide: {openings: 3, cell_threshold: 0.001}  # the random toy VAE barely moves its latents
video: {height: 64, width: 64}
"""


def _sets(**values: object) -> list[str]:
    return [a for k, v in values.items() for a in ("--set", f"{k}={v}")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Toy clips, a small guide model config, a random VAE, a trained motion model."""
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("guide")
    model = base / "model.yaml"
    model.write_text(SMALL_GUIDE_MODEL)
    torch.manual_seed(0)
    FrameVAE.from_config(load_model_config(model).vae).save_pretrained(base / "vae")
    paths = {"data": make_toy_dataset(base / "toy", clips=4, frames=30), "model": model, "vae": base / "vae",
             "cache": base / "cache", "motion": base / "motion"}
    common = {"model": model, "vae": paths["vae"], "data.root": paths["data"], "data.cache_dir": paths["cache"],
              "data.framings": "null", "data.holdout_clips": 1}
    assert main(["train", "--config", str(CONFIGS / "motion-tiny.yaml"), *_sets(
        **common, **{"run.output_dir": paths["motion"], "run.steps": 300, "run.batch_size": 64, "run.log_every": 50, "vad_gate_prob": 0,
                     "optim.warmup_steps": 5})]) == 0
    paths["common"] = common  # type: ignore[assignment]
    return paths


def test_motion_model_learns_openness_from_audio(trained: dict) -> None:
    """On toy clips whose mouth follows the audio envelope, held-out openness is predicted (r > 0.6; the toy
    tones are no speech to silero-vad, so the ungated figure)."""
    metrics = json.loads((trained["motion"] / "metrics.json").read_text())
    assert metrics["heldout_r_ungated"] > 0.6
    with (trained["motion"] / "log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])


def test_guide_samples_hide_the_mouth_and_target_the_residual(trained: dict) -> None:
    """Guide-model batches: the reference is the bank's frame with its mouth cells zeroed, the context too,
    and each chunk frame carries a guide from the motion model's openness."""
    config = load_train_config(CONFIGS / "tiny-guide.yaml", {**{k: str(v) for k, v in trained["common"].items()},
                                                             "motion": str(trained["motion"] / "final"),
                                                             "data.framings": None})
    model_config = load_model_config(trained["model"])
    clip = load_cache(trained["cache"], ["toy000"])[0]
    builder = make_builder([clip], config, model_config, load_motion(config, model_config))
    batch = builder.build(16, config.stages[0], step_generator(0, 0, 0))
    r, m, f = 1, model_config.sampler.context_frames, model_config.sampler.chunk_frames
    assert batch.guide is not None and batch.guide.shape == (16, f, *batch.clean.shape[2:])
    cells = clip.guide_bank.mouth_cells
    assert cells.any() and not cells.all()
    assert batch.clean[:, : r + m][..., cells].eq(0).all()  # reference and context: mouth hidden
    assert batch.clean[:, r + m:][..., cells].ne(0).any()  # the chunk target keeps its mouth
    assert torch.equal(batch.clean[:, 0], clip.guide_bank.hide_mouth(clip.latents[clip.guide_frame]).expand_as(batch.clean[:, 0]))
    assert torch.all(batch.latents[:, r + m:][batch.timesteps[:, -1] == 1.0]  # at t = 1 the input is guide + noise
                     == (batch.guide + batch.noise[:, r + m:])[batch.timesteps[:, -1] == 1.0])


def test_guide_recipe_trains_exports_and_renders(trained: dict, tmp_path: Path) -> None:
    """configs/train/tiny-guide.yaml end to end on toy clips: the loss falls from the guide's own error, the
    export carries dit/, vae/ and motion/, and the pipeline renders with an opening mouth guide."""
    out, export = tmp_path / "run", tmp_path / "export"
    assert main(["train", "--config", str(CONFIGS / "tiny-guide.yaml"), *_sets(
        **trained["common"], **{"init_from": "null", "motion": trained["motion"] / "final", "locator": "null",
                                "export_vae": "null", "export_dir": export, "run.output_dir": out, "run.steps": 30,
                                "run.batch_size": 4, "run.log_every": 1, "run.checkpoint_every": 15,
                                "run.threads": 1, "optim.warmup_steps": 2, "optim.lr": 3e-3,
                                "stages": "[{name: guide, steps: 30, ratios: {reference: 1, text: 0.9, audio: 0.8}}]"})]) == 0
    with (out / "log.csv").open() as handle:
        losses = [float(r["loss"]) for r in csv.DictReader(handle)]
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8
    assert {p.name for p in export.iterdir()} >= {"dit", "vae", "motion", "pipeline.json", "training.json"}
    pipe = AvatarPipeline.from_pretrained(export)
    assert pipe.guided and pipe.motion is not None
    frames = pipe.render(np.full((64, 64, 3), 160, np.uint8), np.zeros(8000, np.float32), seed=0, steps=1)
    assert frames.shape == (13, 64, 64, 3)
