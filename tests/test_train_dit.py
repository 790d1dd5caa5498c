"""DiT training: streaming-shaped samples, the loss falls, resume is exact, 2-process DDP stays in sync."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model.config import load_model_config
from model.flow import timestep_schedule
from model.train.cache import load_cache
from model.train.config import load_train_config
from model.train.schedule import step_generator
from model.train.trainer import make_builder
from model.vae import FrameVAE
from omnilive_cli.main import main
from test_train_toyset import make_toy_dataset

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "train" / "tiny.yaml"
SMALL_MODEL = """
dit: {hidden_size: 32, depth: 2, num_heads: 2, patch_size: 2, mlp_ratio: 2.0, pose_channels: 0}
vae: {latent_channels: 4, encoder_block_out_channels: [8, 8, 8, 8], decoder_block_out_channels: [8, 8, 8, 8]}
sampler: {chunk_frames: 2, context_frames: 2}
video: {height: 64, width: 64}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Toy clips, a small model config and a (random) VAE folder."""
    base = tmp_path_factory.mktemp("dit")
    model = base / "model.yaml"
    model.write_text(SMALL_MODEL)
    torch.manual_seed(0)
    FrameVAE.from_config(load_model_config(model).vae).save_pretrained(base / "vae")
    return {"data": make_toy_dataset(base / "toy", clips=4, frames=30), "model": model, "vae": base / "vae",
            "cache": base / "cache"}


def _args(setup: dict[str, Path], out: Path, steps: int, *extra: str) -> list[str]:
    torch.set_num_threads(1)
    sets = {"model": setup["model"], "vae": setup["vae"], "data.root": setup["data"], "data.cache_dir": setup["cache"],
            "run.output_dir": out, "run.steps": steps, "run.batch_size": 4, "run.log_every": 1,
            "run.checkpoint_every": 5, "run.keep_checkpoints": 10, "run.threads": 1,
            "optim.warmup_steps": 2, "optim.lr": 3e-3,
            "export_dir": "null", "export_vae": "null", "stages": "[{name: s1, steps: 4, ratios: {reference: 1, text: 0.9}}, "
                                            "{name: s2, steps: 1000, ratios: {reference: 0.9, text: 0.9, audio: 0.5}}]"}
    return ["train", "--config", str(CONFIG), *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")], *extra]


def test_samples_mirror_streaming_and_respect_stage_ratios(setup: dict[str, Path]) -> None:
    """[reference | M context | F chunk]: reference clean at t=0, context lightly noised, loss only on chunk."""
    assert main(_args(setup, setup["cache"].parent / "warm", 1)) == 0  # builds the cache
    config = load_train_config(CONFIG, {"model": str(setup["model"])})
    model_config = load_model_config(setup["model"])
    builder = make_builder(load_cache(setup["cache"], ["toy000", "toy001", "toy002"]), config, model_config)
    stage = config.stages[0].model_copy(update={"ratios": {"reference": 1.0, "text": 1.0, "audio": 0.5}})
    batch = builder.build(64, stage, step_generator(0, 0, 0))
    r, m, f = 1, model_config.sampler.context_frames, model_config.sampler.chunk_frames
    assert batch.latents.shape[:2] == (64, r + m + f)
    assert torch.all(batch.timesteps[:, :r] == 0)
    assert torch.all(batch.timesteps[:, r:r + m] <= config.sample.context_noise_max)
    assert torch.all(batch.timesteps[:, r + m:] == batch.timesteps[:, -1:])  # one t for the chunk
    assert torch.equal(batch.loss_weight, torch.cat([torch.zeros(64, r + m), torch.ones(64, f)], 1))
    assert torch.equal(batch.latents[:, :r], batch.clean[:, :r])  # the reference is not noised
    assert 0.3 < batch.drop_audio.float().mean() < 0.7 and not batch.drop_text.any()
    assert batch.audio.shape[:3] == (64, f, model_config.audio.window_frames)


def test_schedule_time_prob_trains_the_samplers_own_step_times(setup: dict[str, Path]) -> None:
    """With schedule_time_prob the chunk times include the sampler's first step (t = 1), which
    logit-normal times never reach; without it, none is exactly a step time."""
    assert main(_args(setup, setup["cache"].parent / "warm", 1)) == 0
    model_config = load_model_config(setup["model"])
    steps = set(float(t) for t in timestep_schedule(model_config.sampler.steps, model_config.sampler.time_shift)[:-1])
    clips = load_cache(setup["cache"], ["toy000", "toy001"])
    for prob in (0.0, 0.5):
        config = load_train_config(CONFIG, {"model": str(setup["model"]), "sample.schedule_time_prob": str(prob)})
        batch = make_builder(clips, config, model_config).build(256, config.stages[0], step_generator(0, 0, 0))
        chunk_t = batch.timesteps[:, -1].tolist()
        at_steps = sum(t in steps for t in chunk_t) / len(chunk_t)
        if prob == 0.0:
            assert at_steps == 0.0 and max(chunk_t) < 1.0
        else:
            assert 0.35 < at_steps < 0.65 and 1.0 in chunk_t


def test_dit_loss_falls(setup: dict[str, Path], tmp_path: Path) -> None:
    """A few dozen steps on toy clips lower the flow-matching loss; the log names the stages."""
    assert main(_args(setup, tmp_path / "run", 50)) == 0
    with (tmp_path / "run" / "log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    losses = [float(r["loss"]) for r in rows]
    assert {r["stage"] for r in rows} == {"s1", "s2"}
    assert sum(losses[-10:]) / 10 < 0.85 * sum(losses[:10]) / 10


def test_dit_resume_is_exact(setup: dict[str, Path], tmp_path: Path) -> None:
    """10 steps straight == 5 steps, stop, resume to 10 (bit-identical weights and EMA)."""
    assert main(_args(setup, tmp_path / "a", 10)) == 0
    assert main(_args(setup, tmp_path / "b", 10, "--until", "5")) == 0
    assert main(_args(setup, tmp_path / "b", 10)) == 0
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(str(tmp_path / "a" / "checkpoints" / "step-0000010" / name))
        b = load_file(str(tmp_path / "b" / "checkpoints" / "step-0000010" / name))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_process_ddp_replicas_stay_identical(setup: dict[str, Path], tmp_path: Path) -> None:
    """2 CPU processes (gloo) train on different samples; gradients are averaged so weights stay equal."""
    assert main(_args(setup, tmp_path / "ddp", 4, "--nproc", "2", "--json")) == 0
    result = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert result["world_size"] == 2 and result["replicas_in_sync"] is True
    state = json.loads((tmp_path / "ddp" / "checkpoints" / "step-0000004" / "state.json").read_text())
    assert state["replicas_in_sync"] is True
    single = tmp_path / "single"
    assert main(_args(setup, single, 4)) == 0
    a = load_file(str(tmp_path / "ddp" / "checkpoints" / "step-0000004" / "model.safetensors"))
    b = load_file(str(single / "checkpoints" / "step-0000004" / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the second process's samples mattered


def test_export_writes_a_pipeline_that_renders(setup: dict[str, Path], tmp_path: Path) -> None:
    """`train --export` turns a run's newest checkpoint (EMA weights) into a folder AvatarPipeline loads."""
    from model.pipeline import AvatarPipeline

    assert main(_args(setup, tmp_path / "run", 5, "--until", "3")) == 0
    assert main(_args(setup, tmp_path / "run", 5, "--export", str(tmp_path / "pipe"))) == 0
    record = json.loads((tmp_path / "pipe" / "training.json").read_text())
    assert record["steps_trained"] == 3 and record["weights"] == "ema"
    pipe = AvatarPipeline.from_pretrained(tmp_path / "pipe")
    frames = pipe.render(np.full((64, 64, 3), 128, np.uint8), np.zeros(8000, np.float32), seed=0)
    assert frames.shape == (13, 64, 64, 3)
    assert main(_args(setup, tmp_path / "empty", 5, "--export")) == 2  # nothing trained yet: a clear error


def test_export_ships_a_retrained_decoder_only_if_it_shares_the_encoder(setup: dict[str, Path], tmp_path: Path) -> None:
    """`export_vae`: a decoder retrained on the caching VAE's encoder is what the pipeline ships; a VAE with
    another encoder is refused before training starts (its latents would not be the DiT's)."""
    from model.pipeline import AvatarPipeline

    decoder_only = FrameVAE.from_pretrained(setup["vae"])
    with torch.no_grad():
        for p in decoder_only.autoencoder.decoder.parameters():
            p.add_(0.01)
    decoder_only.save_pretrained(tmp_path / "decoder")
    torch.manual_seed(1)
    FrameVAE.from_config(load_model_config(setup["model"]).vae).save_pretrained(tmp_path / "other")

    assert main(_args(setup, tmp_path / "run", 2, "--set", f"export_vae={tmp_path / 'decoder'}",
                      "--set", f"export_dir={tmp_path / 'pipe'}")) == 0
    shipped = AvatarPipeline.from_pretrained(tmp_path / "pipe").vae.autoencoder.decoder.state_dict()
    assert all(torch.equal(shipped[k], v) for k, v in decoder_only.autoencoder.decoder.state_dict().items())
    assert main(_args(setup, tmp_path / "bad", 2, "--set", f"export_vae={tmp_path / 'other'}")) == 2


def test_fine_tuning_starts_from_the_given_pipeline(setup: dict[str, Path], tmp_path: Path) -> None:
    """`init_from: PIPELINE` starts from that DiT; a folder without one is a clear error (exit 2)."""
    from model.pipeline import AvatarPipeline
    from model.train.trainer import initial_dit

    assert main(_args(setup, tmp_path / "base", 3)) == 0
    assert main(_args(setup, tmp_path / "base", 3, "--export", str(tmp_path / "pipe"))) == 0
    config = load_train_config(CONFIG, {"model": str(setup["model"]), "init_from": str(tmp_path / "pipe")})
    start = initial_dit(config, load_model_config(setup["model"])).state_dict()
    exported = AvatarPipeline.from_pretrained(tmp_path / "pipe").dit.state_dict()
    assert all(torch.equal(start[k], exported[k]) for k in exported)
    assert main(_args(setup, tmp_path / "tuned", 2, "--set", f"init_from={tmp_path / 'pipe'}")) == 0
    assert main(_args(setup, tmp_path / "bad", 2, "--set", f"init_from={tmp_path / 'nowhere'}")) == 2


def test_framings_select_the_training_clips(setup: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """`data.framings` keeps only clips of those framings; none left is a clear error, not an empty run."""
    from model.train.trainer import split_entries

    config = load_train_config(CONFIG, {"data.root": str(setup["data"]), "data.framings": ["face"]})
    train, heldout = split_entries(config)
    assert train and all(e.framing == "face" for e in train + heldout)
    assert main(_args(setup, tmp_path / "none", 2, "--set", "data.framings=[full_body]")) == 2
    assert "with framing full_body" in capsys.readouterr().err
