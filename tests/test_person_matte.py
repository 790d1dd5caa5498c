"""The person matte: the studio's coverage is exact, the warp holds the backdrop still behind a moving head,
training writes loadable weights, and the committed matte finds the people of studio identities it never saw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.conditioning.mouth import MouthBox
from model.conditioning.person_matte import PersonMatte
from model.data.studio.config import StudioConfig
from model.data.studio.matte import matte_set
from model.guide import draw_openings
from model.media import load_image
from model.pipeline import DEFAULT_CHECKPOINT, AvatarPipeline
from model.pose_warp import BORDER, tps_grid, warp_frames
from model.train.config import MatteTrainConfig, load_train_config
from model.train.evaluate import DEFAULT_REFERENCE
from model.train.matte_trainer import heldout_figures, train_matte

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64


def _striped_frame_with_person() -> tuple[np.ndarray, np.ndarray]:
    """uint8 [1, S, S, 3]: diagonal stripes with a flat square 'person' in the middle; its matte [S, S]."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    frame = np.where((((xx + yy) // 3) % 2 == 0)[..., None], 220, 40).astype(np.uint8).repeat(3, -1)
    person = np.zeros((SIZE, SIZE), np.float32)
    person[20:44, 22:42] = 1.0
    frame[person > 0] = (200, 120, 90)
    return frame[None], person


def _head_shift_grid(dx: float) -> torch.Tensor:
    """A spline that moves the square's centre right by dx (in [0, 1] units), the border held: [1, S, S, 2]."""
    centre = np.array([[0.5, 0.5], [0.4, 0.4], [0.6, 0.4], [0.4, 0.6], [0.6, 0.6]])
    return tps_grid(np.r_[centre + [dx, 0], BORDER], np.r_[centre, BORDER], SIZE, SIZE)[None]


def test_studio_coverage_is_exact() -> None:
    """The person's coverage is 1 on the face, 0 in the top corners, and the drawn frame differs from its
    backdrop only where the coverage says the person is."""
    stills = matte_set(seed=5, identities=2, stills_per_identity=2, config=StudioConfig(short_side=64,
                       framing_weights={"face": 1.0}))
    assert stills.frames.shape == (4, 64, 64, 3) and stills.alpha.shape == (4, 64, 64)
    assert (stills.alpha[:, 28:36, 28:36] == 255).all()  # the face's middle
    assert (stills.alpha[:, :3, :3] == 0).all() and (stills.alpha[:, :3, -3:] == 0).all()


def test_the_backdrop_stays_still_behind_a_moving_head() -> None:
    """Without the matte the spline bends the stripes beside the head; with it they stay exactly, while the
    person moves as before."""
    frame, person = _striped_frame_with_person()
    grid = _head_shift_grid(4 / SIZE)
    bent, held = warp_frames(frame, grid)[0], warp_frames(frame, grid, person)[0]
    backdrop = np.ones((SIZE, SIZE), bool)
    backdrop[14:50, 16:52] = False  # away from the person and where it moves to
    assert np.abs(bent.astype(int) - frame[0])[backdrop].mean() > 20
    assert np.abs(held.astype(int) - frame[0])[backdrop].max() == 0
    inside = (slice(24, 40), slice(30, 44))  # the person's middle after the move
    np.testing.assert_array_equal(held[inside], bent[inside])


def test_config_file_loads() -> None:
    config = load_train_config(ROOT / "configs" / "train" / "person-matte.yaml")
    assert isinstance(config, MatteTrainConfig) and config.export_dir == "weights/tiny/matte"


def test_tiny_training_run_writes_loadable_weights(tmp_path: Path) -> None:
    """A few steps on a few studio people: weights, training.json and the held-out figures."""
    config = MatteTrainConfig.model_validate({
        "kind": "matte",
        "data": {"identities": 3, "heldout_identities": 1, "stills_per_identity": 2, "size": 64},
        "run": {"output_dir": str(tmp_path / "run"), "steps": 3, "batch_size": 4, "log_every": 1, "threads": 1},
        "model": {"channels": [4, 4, 4, 4], "groups": 4},
        "export_dir": str(tmp_path / "matte"),
    })
    result = train_matte(config)
    assert result["steps"] == 3 and 0.0 <= result["heldout_iou"] <= 1.0
    loaded = PersonMatte.from_pretrained(str(tmp_path / "matte"))
    assert loaded.config.image_size == 64
    assert loaded.coverage(np.zeros((40, 30, 3), np.uint8)).shape == (40, 30)
    assert (tmp_path / "matte" / "training.json").is_file() and (tmp_path / "run" / "log.csv").is_file()


@pytest.fixture(scope="module")
def tiny() -> AvatarPipeline:
    torch.set_num_threads(1)
    return AvatarPipeline.from_pretrained(DEFAULT_CHECKPOINT)


def test_committed_matte_finds_unseen_studio_people(tiny: AvatarPipeline) -> None:
    """On studio people of a seed no training used, the matte agrees with their exact coverage."""
    assert tiny.matte is not None
    stills = matte_set(seed=77, identities=8, stills_per_identity=1,
                       config=StudioConfig(short_side=128, framing_weights={"face": 0.6, "portrait": 0.4}))
    iou, error = heldout_figures(tiny.matte, stills)
    assert iou > 0.95 and error < 0.04


def test_the_default_avatar_holds_its_backdrop(tiny: AvatarPipeline) -> None:
    """The default avatar's matte covers its face and not the picture's top corners; a matte that misses the
    mouth is not used."""
    reference = tiny.encode_reference(load_image(DEFAULT_REFERENCE))
    assert reference.person is not None
    box = reference.mouth_bank.box
    height, width = reference.person.shape
    assert reference.person[int(box.y * height), int(box.x * width)] > 0.9
    assert reference.person[:4, :4].max() < 0.25 and reference.person[:4, -4:].max() < 0.25  # held (mostly)
    assert tiny.person_matte(reference.image, MouthBox(x=0.03, y=0.03, width=0.1)) is None


def test_an_opened_jaw_moves_with_the_head(tiny: AvatarPipeline) -> None:
    """The mouth pulls the jaw below the closed picture's chin; when the head tilts, that part moves with the
    rest of the head instead of staying behind as held backdrop (a notch torn out of the chin)."""
    reference = tiny.encode_reference(load_image(DEFAULT_REFERENCE))
    box = reference.mouth_bank.box
    drawn = draw_openings(reference.image, box, torch.tensor([0.0, 1.0])).permute(0, 2, 3, 1).numpy()  # [2, H, W, 3]
    jaw = np.abs(drawn[1].astype(int) - drawn[0].astype(int)).sum(-1) > 30  # what opening the mouth changed
    grid = reference.head.grids(np.array([[0.3, 0.2, 0.1]]))  # a head nodded, moved aside and rolled ~6 degrees
    moved = warp_frames(drawn[1:], grid)[0].astype(int)  # the whole picture tilted: what the head should show
    held = warp_frames(drawn[1:], grid, reference.person)[0].astype(int)
    jaw_moved = warp_frames(jaw[None, ..., None].repeat(3, -1).astype(np.uint8) * 255, grid)[0, ..., 0] > 127
    off = np.abs(held - moved).sum(-1)[jaw_moved] > 30
    assert jaw_moved.sum() > 500 and off.mean() < 0.01  # measured 0 (the closed picture's matte alone: 8.5 %)
