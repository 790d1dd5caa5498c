"""The mouth reader: crops follow the lip box, training writes loadable weights, the committed reader reads
the default avatar's mouth opening, and `omnilive eval` names a missing reader clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.media import load_image
from model.pipeline import DEFAULT_CHECKPOINT, AvatarPipeline
from model.train.config import ReaderTrainConfig, load_train_config
from model.train.evaluate import DEFAULT_READER, DEFAULT_REFERENCE
from model.train.metrics import mouth_box_at, pearson
from model.train.mouth_reader import MouthReader, mouth_crops
from model.train.reader_trainer import train_reader
from omnilive_cli.main import main
from test_train_toyset import make_toy_dataset

ROOT = Path(__file__).resolve().parents[1]


def test_crops_follow_the_box() -> None:
    """A dark square at the box centre lands at the crop's centre, whatever the box's size."""
    frame = np.full((1, 64, 64, 3), 200, np.uint8)
    frame[0, 38:42, 18:22] = 0  # around (20, 40)
    for half in (6, 10):
        crop = mouth_crops(frame, [(20 - half, 40 - half, 20 + half, 40 + half)], 12, 16)[0].mean(0)  # [12, 16]
        row, col = np.unravel_index(int(crop.argmin()), crop.shape)
        assert abs(row - 5.5) <= 1.5 and abs(col - 7.5) <= 1.5


def test_config_file_loads() -> None:
    config = load_train_config(ROOT / "configs" / "train" / "mouth-reader.yaml")
    assert isinstance(config, ReaderTrainConfig) and config.export_dir == "weights/mouth-reader"


def test_tiny_training_run_writes_loadable_weights(tmp_path: Path) -> None:
    """A few steps on toy clips (decoded through a VAE for half the crops): weights, training.json, figures."""
    torch.set_num_threads(1)
    data = make_toy_dataset(tmp_path / "toy", clips=3, frames=12)
    config = ReaderTrainConfig.model_validate({
        "kind": "reader", "vae": str(DEFAULT_CHECKPOINT / "vae"),
        "data": {"root": str(data), "frame_step": 2, "heldout_frame_step": 2},
        "run": {"output_dir": str(tmp_path / "run"), "steps": 3, "batch_size": 8, "log_every": 1, "threads": 1},
        "model": {"channels": [4, 4, 4, 4]},
        "export_dir": str(tmp_path / "reader"),
    })
    result = train_reader(config)
    assert result["steps"] == 3 and result["train_frames"] == 12 and result["heldout_frames"] == 6
    assert result["heldout_r_decoded"] is not None
    reader = MouthReader.from_pretrained(str(tmp_path / "reader"))
    assert list(reader.config.channels) == [4, 4, 4, 4]
    assert reader.read(np.zeros((3, 32, 32, 3), np.uint8), [(8, 8, 24, 20)] * 3).shape == (3,)
    logged = json.loads((tmp_path / "reader" / "training.json").read_text())
    assert logged["config"]["kind"] == "reader" and logged["result"]["steps"] == 3


def test_committed_reader_reads_the_default_avatar_opening_its_mouth() -> None:
    """weights/mouth-reader on weights/tiny's default avatar at five mouth openings: the reading rises with them."""
    reader = MouthReader.from_pretrained(str(DEFAULT_READER)).eval()
    pipe = AvatarPipeline.from_pretrained(DEFAULT_CHECKPOINT)
    features = pipe.encode_reference(load_image(DEFAULT_REFERENCE))
    bank = features.mouth_bank
    assert bank is not None
    openings = torch.linspace(0, 1, 5)
    frames = pipe.vae.decode_uint8(bank.blend(openings)).numpy()  # [5, H, W, 3]
    box = mouth_box_at(bank.box.x, bank.box.y, bank.box.width, features.width, features.height)
    read = reader.read(frames, [box] * len(frames))
    assert pearson(read, openings.numpy()) > 0.9 and read[-1] - read[0] > 0.3


def test_eval_names_a_missing_reader(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`omnilive eval --reader DIR` without a reader there: exit 2 and a one-line message."""
    data = make_toy_dataset(tmp_path / "toy", clips=2, frames=12)
    code = main(["eval", "--checkpoint", str(DEFAULT_CHECKPOINT), "--data", str(data), "--split", "val",
                 "--reader", str(tmp_path / "nowhere"), "--no-human-voice", "--drift-minutes", "0"])
    assert code == 2 and "mouth reader folder not found" in capsys.readouterr().err
