"""Evaluation: frame-level metrics behave as a person would judge, and `omnilive eval --json` runs end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar_server.cli import main
from model.data import format as fmt
from model.data import keypoints as kp
from model.pipeline import AvatarPipeline
from model.train.metrics import appearance_similarity, mouth_box, mouth_openness, pearson, seam_ratio, silence_ratio
from test_train_toyset import make_toy_dataset

SMALL_MODEL = """
dit: {hidden_size: 32, depth: 2, num_heads: 2, patch_size: 2, mlp_ratio: 2.0, pose_channels: 5}
vae: {latent_channels: 4, encoder_block_out_channels: [8, 8, 8, 8], decoder_block_out_channels: [8, 8, 8, 8]}
sampler: {chunk_frames: 2, context_frames: 2, steps: 1}
video: {height: 64, width: 64}
"""


def test_mouth_openness_follows_the_drawn_mouth(tmp_path: Path) -> None:
    """Dark-pixel openness in the lip box correlates with the ground-truth openness of the toy faces."""
    root = make_toy_dataset(tmp_path / "toy", clips=1, frames=40)
    clip = fmt.load_clip(root, "toy000")
    boxes = [mouth_box(clip.keypoints.xy[t, kp.LIPS], 64, 64) for t in range(40)]
    measured = mouth_openness(clip.frames, boxes)
    assert pearson(clip.keypoints.mouth_open, measured) > 0.8
    shuffled = measured[np.random.default_rng(1).permutation(40)]
    assert pearson(clip.keypoints.mouth_open, shuffled) < 0.5  # a mouth out of sync does not pass


def test_seam_silence_and_similarity_figures() -> None:
    """Jumps at chunk boundaries raise the seam ratio; an open mouth in silence raises the silence ratio."""
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.normal(0, 1, (24, 8, 8, 3)), axis=0) + 128
    assert seam_ratio(smooth, 4) == pytest.approx(1.0, abs=0.3)
    jumpy = smooth.copy()
    for start in range(4, 24, 4):
        jumpy[start:] += 20
    assert seam_ratio(jumpy, 4) > 3
    speaking = np.array([True] * 10 + [False] * 10)
    assert silence_ratio(np.r_[np.full(10, 0.3), np.full(10, 0.01)], speaking) < 0.1
    assert silence_ratio(np.full(20, 0.3), speaking) == pytest.approx(1.0)
    image = rng.integers(0, 255, (16, 16, 3)).astype(np.uint8)
    assert appearance_similarity(np.stack([image] * 3), image) > 0.95
    assert appearance_similarity(np.stack([255 - image] * 3), image) < appearance_similarity(np.stack([image] * 3), image)


def test_eval_command_reports_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`omnilive eval --json` on held-out toy clips: one JSON object with the issue's figures."""
    torch.set_num_threads(1)
    root = make_toy_dataset(tmp_path / "toy", clips=2, frames=24)
    model = tmp_path / "small.yaml"
    model.write_text(SMALL_MODEL)
    AvatarPipeline.from_config(model).save_pretrained(tmp_path / "ckpt")
    code = main(["eval", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(root), "--split", "val", "--clips", "1",
                 "--framing", "face", "--sweep-steps", "1", "--sweep-cfg", "1,2", "--drift-minutes", "0.02", "--no-vad", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("lipsync_corr", "metric_validity", "lipsync_vae_ceiling", "silence_ratio", "psnr", "ssim", "seam_ratio", "motion_ratio"):
        assert key in result
    assert result["metric_validity"] > 0.8 and result["psnr"] > 0
    assert [(r["steps"], r["audio_cfg"]) for r in result["sweep"]] == [(1, 1.0), (1, 2.0)]
    assert result["drift"]["similarity_start"] > 0 and "ratio" in result["drift"]
    assert main(["eval", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(root), "--split", "val",
                 "--framing", "full_body"]) == 2  # no such clips: a clear error
    assert "full_body" in capsys.readouterr().err


def test_eval_bad_paths_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A missing checkpoint folder -> exit 2 and a one-line message."""
    assert main(["eval", "--checkpoint", str(tmp_path / "nope"), "--data", str(tmp_path)]) == 2
    assert "checkpoint folder not found" in capsys.readouterr().err
