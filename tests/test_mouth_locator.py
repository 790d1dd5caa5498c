"""MouthLocator: the shipped weights find the default avatar's mouth, reject non-faces, and training writes loadable weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.conditioning.mouth import MouthBox
from model.conditioning.mouth_locator import MouthLocator, crop_square
from model.errors import InputError
from model.pipeline import DEFAULT_CHECKPOINT, AvatarPipeline
from model.train.config import LocatorAugmentConfig, LocatorTrainConfig, load_train_config
from model.train.distributed import DistContext
from model.train.locator_trainer import LocatorPool, sample_batch, train_locator
from test_train_toyset import make_toy_dataset

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights" / "tiny" / "locator"
AVATAR = ROOT / "avatar_server" / "assets" / "default_avatar.png"
# The default avatar is studio clip s7-000000, frame 0 (docs/server.md); its keypoints give this box
# (mouth_box_from_keypoints; the 256 px frame is square, so the 128 px crop keeps the coordinates).
AVATAR_MOUTH = (0.4551, 0.7053, 0.1786)
SIZE = 128


@pytest.fixture(scope="module")
def locator() -> MouthLocator:
    torch.manual_seed(0)
    return MouthLocator.from_pretrained(WEIGHTS).eval()


def test_shipped_weights_are_small() -> None:
    """weights/tiny/locator is a diffusers folder under 1 MB, with its training log."""
    files = {p.name: p.stat().st_size for p in WEIGHTS.iterdir()}
    assert {"config.json", "diffusion_pytorch_model.safetensors", "training.json"} <= set(files)
    assert files["diffusion_pytorch_model.safetensors"] < 1_000_000


def test_locates_default_avatar_mouth(locator: MouthLocator) -> None:
    """Within 4 px at 128 px of the keypoint truth; width within 25 %."""
    box = locator.locate(Image.open(AVATAR))
    assert isinstance(box, MouthBox)
    error_px = np.hypot(box.x - AVATAR_MOUTH[0], box.y - AVATAR_MOUTH[1]) * SIZE
    assert error_px < 4.0, (box, error_px)
    assert abs(box.width - AVATAR_MOUTH[2]) / AVATAR_MOUTH[2] < 0.25, box
    same = locator.locate(np.asarray(Image.open(AVATAR).convert("RGB")))  # numpy input, same answer
    assert same == box


def test_rejects_flat_and_noise_images(locator: MouthLocator) -> None:
    """No face: a clear InputError, not a made-up box."""
    flat = np.full((200, 300, 3), (90, 120, 200), dtype=np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, size=(128, 128, 3), dtype=np.uint8)
    for image in (flat, noise):
        with pytest.raises(InputError, match="no face mouth"):
            locator.locate(image)


def test_bad_input_is_input_error(locator: MouthLocator) -> None:
    with pytest.raises(InputError):
        locator.locate(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InputError):
        locator.locate(np.zeros((32, 32, 5), np.uint8))


def test_crop_matches_pipeline() -> None:
    """crop_square is the pipeline's reference crop (boxes are on the image the model sees)."""
    from model.media import cover_crop

    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, size=(90, 160, 3), dtype=np.uint8))
    np.testing.assert_array_equal(crop_square(image, SIZE), cover_crop(image, SIZE, SIZE))


def test_augmented_crops_move_the_box_with_the_pixels() -> None:
    """A dot at the box centre stays under the transformed box through zoom, shift and flip."""
    frames = torch.zeros(4, 3, SIZE, SIZE, dtype=torch.uint8)
    boxes = torch.tensor([[0.3, 0.6, 0.1], [0.5, 0.7, 0.15], [0.7, 0.4, 0.2], [0.45, 0.55, 0.12]])
    for i, (x, y, _) in enumerate(boxes.tolist()):
        frames[i, :, int(y * SIZE) - 1:int(y * SIZE) + 1, int(x * SIZE) - 1:int(x * SIZE) + 1] = 255
    pool = LocatorPool(frames, boxes, torch.tensor([[0.2, 0.2, 0.8, 0.8]] * 4), clips=1)
    aug = LocatorAugmentConfig(negative_fraction=0.0, zoom_min=0.8, zoom_max=1.6)
    pixels, moved, positive = sample_batch(pool, 16, SIZE, aug, torch.Generator().manual_seed(0), augment=False)
    assert positive.all()
    for image, (x, y, _) in zip(pixels, moved.tolist()):
        weights = (image[0] + 1).clamp_min(0)  # [S, S]
        ys, xs = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
        found = ((weights * xs).sum() / weights.sum() / SIZE, (weights * ys).sum() / weights.sum() / SIZE)
        assert abs(found[0] - x) * SIZE < 1.5 and abs(found[1] - y) * SIZE < 1.5, (found, x, y)


def test_config_file_loads() -> None:
    config = load_train_config(ROOT / "configs" / "train" / "locator-tiny.yaml")
    assert isinstance(config, LocatorTrainConfig) and config.export_dir == "weights/tiny/locator"


def test_tiny_training_run_writes_loadable_weights(tmp_path: Path) -> None:
    """A few steps on toy studio clips: weights, training.json and held-out figures come out."""
    data = make_toy_dataset(tmp_path / "toy", clips=3, frames=12)
    config = LocatorTrainConfig.model_validate({
        "kind": "locator",
        "data": {"root": str(data), "frames_per_clip": 3},
        "run": {"output_dir": str(tmp_path / "run"), "steps": 3, "batch_size": 4, "log_every": 1, "threads": 1},
        "model": {"channels": [8, 8, 8, 8, 8]},
        "export_dir": str(tmp_path / "locator"),
    })
    result = train_locator(config, DistContext(0, 1, 0, torch.device("cpu")))
    assert result["steps"] == 3 and np.isfinite(result["centre_px"]) and result["heldout_frames"] == 3
    loaded = MouthLocator.from_pretrained(tmp_path / "locator")
    assert list(loaded.config.channels) == [8, 8, 8, 8, 8]
    boxes, confidence = loaded.predict(np.zeros((2, SIZE, SIZE, 3), np.uint8))
    assert boxes.shape == (2, 3) and confidence.shape == (2,)
    logged = json.loads((tmp_path / "locator" / "training.json").read_text())
    assert logged["config"]["kind"] == "locator" and logged["result"]["steps"] == 3


def test_a_given_mouth_on_a_wide_picture_lands_on_the_crop() -> None:
    """encode_reference(mouth=...) takes the mouth on the picture as given: on a 2:1 picture cover-cropped to its
    middle square it moves with the crop; a mouth the crop cuts off is a clear error."""
    pipe = AvatarPipeline.from_pretrained(DEFAULT_CHECKPOINT)
    face = Image.open(AVATAR).convert("RGB").resize((SIZE, SIZE))
    wide = Image.new("RGB", (2 * SIZE, SIZE), (100, 122, 212))
    wide.paste(face, (SIZE // 2, 0))  # the face in the middle half
    box = pipe.encode_reference(wide, mouth=MouthBox(x=0.5 + 0.1 / 2, y=0.7, width=0.08)).mouth_bank.box
    assert (box.x, box.y, box.width) == pytest.approx((0.6, 0.7, 0.16))
    with pytest.raises(InputError, match="outside the centred"):
        pipe.encode_reference(wide, mouth=MouthBox(x=0.1, y=0.7, width=0.08))
