"""Head motion without a pose: the rig moves the head and holds the border; the sway is seeded, grows with
speech and nods; a stream of weights/tiny with head motion moves its head, one without keeps it still."""

from __future__ import annotations

import numpy as np
import pytest

from model import head_motion
from model.conditioning.mouth import MouthBox
from model.head_motion import HeadRig, HeadSway
from model.media import load_image
from model.pipeline import DEFAULT_CHECKPOINT, AvatarPipeline
from model.pose_warp import warp_frames
from model.train.evaluate import DEFAULT_REFERENCE
from pipeline_helpers import dot_centre, dot_image, with_guide

SIZE = 64
MOUTH = MouthBox(x=0.5, y=0.7, width=0.15)  # one mouth width = 9.6 px


def _dot_image() -> np.ndarray:
    """The dot between the eyes (0.9 mouth widths above the mouth)."""
    return dot_image(SIZE, 30, 35)  # around (32, 36.5)


def test_rest_pose_warps_nothing_and_a_shift_moves_the_head() -> None:
    """Pose 0 leaves the frame as it is; half a mouth width sideways moves the face ~4.8 px, not the corner."""
    rig = HeadRig(MOUTH, SIZE, SIZE)
    grids = rig.grids(np.array([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.1]]))
    frames = warp_frames(np.repeat(_dot_image(), 3, axis=0), grids)
    assert np.abs(frames[0].astype(int) - _dot_image()[0]).max() <= 1
    assert dot_centre(frames[1]) - dot_centre(frames[0]) == pytest.approx([0.5 * MOUTH.width * SIZE, 0.0], abs=1.0)
    assert frames[1][:2, :2].max() < 40
    turned = dot_centre(frames[2]) - dot_centre(frames[0])  # a turn about the neck, below: the face swings sideways
    assert abs(turned[0]) > 1.5 and abs(turned[1]) < 1.0


def test_sway_is_seeded_whatever_the_chunking() -> None:
    """The same seed and openness give the same poses in chunks of 2 and of 5; another seed differs."""
    openness = np.clip(np.sin(np.arange(100) / 4), 0, 1)

    def run(seed: int, chunk: int) -> np.ndarray:
        sway = HeadSway(seed, 25)
        return np.concatenate([sway.poses(start, openness[start:start + chunk]) for start in range(0, 100, chunk)])

    assert np.allclose(run(3, 2), run(3, 5))
    assert not np.allclose(run(3, 2), run(4, 2))


def test_sway_grows_while_speaking_and_nods_on_a_jump(monkeypatch: pytest.MonkeyPatch) -> None:
    """Speech doubles the sway of silence; an openness jump bends the head down at once (a nod), a slow rise
    to the same openness does not."""
    frames = 25 * 40
    silent = HeadSway(0, 25).poses(0, np.zeros(frames))
    speaking = HeadSway(0, 25).poses(0, np.full(frames, 0.6))
    assert speaking[200:].std(axis=0)[0] > 1.7 * silent[200:].std(axis=0)[0]
    monkeypatch.setattr(head_motion, "SWAY_STD", (0.0, 0.0, 0.0))  # nods alone
    jump, ramp = np.zeros(60), np.clip(np.arange(60) / 50, 0, 0.8)
    jump[30:] = 0.8
    nods = HeadSway(1, 25).poses(0, jump)[:, 1]
    assert nods[:30].max() == 0 and nods[31:40].max() > 0.05
    assert HeadSway(1, 25).poses(0, ramp)[:, 1].max() == 0


@pytest.mark.parametrize("head_motion", [True, False])
def test_a_silent_stream_sways_only_with_head_motion(head_motion: bool) -> None:
    """weights/tiny streaming silence: with head motion the frames move a little, without they stay identical."""
    pipe = with_guide(AvatarPipeline.from_pretrained(DEFAULT_CHECKPOINT), head_motion=head_motion, blinks=False)
    stream = pipe.open_stream(pipe.encode_reference(load_image(DEFAULT_REFERENCE)))
    stream.push_audio(np.zeros(pipe.config.samples_per_frame * 42, np.float32), voiced=False)
    frames = np.concatenate([pipe.generate([stream])[0].frames for _ in range(20)]).astype(np.float32)  # 2 s
    stream.close()
    change = np.abs(frames[-1] - frames[0]).mean()
    if head_motion:
        assert 0.3 < change < 20
    else:
        assert change == 0
