"""VAE training: the reconstruction loss falls, held-out PSNR is reported, resume is exact."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model.vae import FrameVAE
from omnilive_cli.main import main
from test_train_toyset import make_toy_dataset

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "train" / "vae-tiny.yaml"


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_dataset(tmp_path_factory.mktemp("toy"), clips=3, frames=24)


def _train(toy: Path, out: Path, steps: int, extra: tuple[str, ...] = ()) -> int:
    torch.set_num_threads(1)
    args = ["train", "--config", str(CONFIG), "--set", f"data.root={toy}", "--set", f"run.output_dir={out}",
            "--set", f"run.steps={steps}", "--set", "run.batch_size=4", "--set", "crop=48",
            "--set", "run.log_every=1", "--set", "run.checkpoint_every=5", "--set", "optim.warmup_steps=2",
            "--set", "run.keep_checkpoints=10", *extra]
    return main(args)


def test_vae_loss_falls_and_heldout_psnr_is_reported(toy: Path, tmp_path: Path) -> None:
    """Training lowers the loss; the final folder loads as a FrameVAE with fitted latent scaling."""
    assert _train(toy, tmp_path / "run", 40) == 0
    with (tmp_path / "run" / "log.csv").open() as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle)]
    assert len(losses) == 40
    assert sum(losses[-8:]) / 8 < 0.8 * sum(losses[:8]) / 8
    metrics = json.loads((tmp_path / "run" / "final" / "metrics.json").read_text())
    assert metrics["psnr"] > 10.0 and metrics["heldout_clips"] == 1
    vae = FrameVAE.from_pretrained(tmp_path / "run" / "final")
    assert abs(vae.scaling_factor - metrics["scaling_factor"]) < 1e-6
    frames = torch.randint(0, 256, (2, 3, 32, 48), dtype=torch.uint8)
    assert vae.decode(vae.encode(frames)).shape == (2, 3, 32, 48)


def test_vae_resume_is_exact(toy: Path, tmp_path: Path) -> None:
    """10 steps in one go == 5 steps, stop, resume to 10 (weights bit-identical)."""
    assert _train(toy, tmp_path / "straight", 10) == 0
    assert _train(toy, tmp_path / "split", 10, ("--until", "5")) == 0
    assert not (tmp_path / "split" / "final").exists()
    assert _train(toy, tmp_path / "split", 10) == 0
    a = load_file(str(tmp_path / "straight" / "checkpoints" / "step-0000010" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "checkpoints" / "step-0000010" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_decoder_only_training_keeps_the_encoder_bit_identical(toy: Path, tmp_path: Path) -> None:
    """freeze_encoder (+ latent noise): the decoder changes, the encoder and the latent scaling do not, so
    caches and DiTs built on the first VAE stay valid and a pipeline may ship the new decoder."""
    assert _train(toy, tmp_path / "first", 5) == 0
    assert _train(toy, tmp_path / "decoder", 8, ("--set", f"init_from={tmp_path / 'first' / 'final'}",
                                                 "--set", "freeze_encoder=true", "--set", "latent_noise_max=0.2")) == 0
    before, after = (FrameVAE.from_pretrained(tmp_path / d / "final") for d in ("first", "decoder"))
    enc_a, enc_b = before.autoencoder.encoder.state_dict(), after.autoencoder.encoder.state_dict()
    assert all(torch.equal(enc_a[k], enc_b[k]) for k in enc_a)
    assert (before.scaling_factor, before.shift_factor) == (after.scaling_factor, after.shift_factor)
    dec_a, dec_b = before.autoencoder.decoder.state_dict(), after.autoencoder.decoder.state_dict()
    assert any(not torch.equal(dec_a[k], dec_b[k]) for k in dec_a)


def test_vae_framings_select_the_training_clips(toy: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`data.framings` (a face close-up decoder, say) keeps only those clips; none left is a clear error."""
    assert _train(toy, tmp_path / "face", 2, ("--set", "data.framings=[face]")) == 0
    assert _train(toy, tmp_path / "none", 2, ("--set", "data.framings=[full_body]")) == 2
    assert "full_body" in capsys.readouterr().err


def test_bad_training_config_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A typo in the config -> exit 2 with the key named, no traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.read_text().replace("crop: 64", "crpo: 64"))
    assert main(["train", "--config", str(bad)]) == 2
    assert "crpo" in capsys.readouterr().err


def test_frame_pack_carries_the_same_frames_and_trains(toy: Path, tmp_path: Path) -> None:
    """A frame pack (videos + picks + weights) reads back to the pool built from the dataset, and trains."""
    from model.train.config import load_train_config
    from model.train.vae_trainer import frame_pools, pack_frames

    config = load_train_config(CONFIG, {"data.root": str(toy), "run.output_dir": str(tmp_path / "unused")})
    pack_frames(config, tmp_path / "pack")
    built = frame_pools(config)
    packed = frame_pools(config.model_copy(update={"data": config.data.model_copy(update={"pack": str(tmp_path / "pack")})}))
    for a, b in zip(built, packed):
        assert len(a.frames) == len(b.frames) > 0
        assert all(torch.equal(x, y) for x, y in zip(a.frames, b.frames))
        assert all(torch.equal(x, y) for x, y in zip(a.weights, b.weights))
    assert _train(toy, tmp_path / "run", 3, ("--set", f"data.pack={tmp_path / 'pack'}")) == 0
    assert json.loads((tmp_path / "run" / "final" / "metrics.json").read_text())["steps"] == 3


def test_time_budget_ends_training_early_with_a_final_folder(toy: Path, tmp_path: Path) -> None:
    """run.max_seconds: the run stops once the budget (paced after 120 steps) is spent and still exports."""
    assert _train(toy, tmp_path / "run", 100000, ("--set", "run.max_seconds=0.5", "--set", "run.checkpoint_every=100000")) == 0
    steps = json.loads((tmp_path / "run" / "final" / "metrics.json").read_text())["steps"]
    assert 120 <= steps < 100000
