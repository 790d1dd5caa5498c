"""Synthetic studio: determinism, identities, ground-truth consistency, captions that change motion, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from model.data import format as fmt
from model.data import keypoints as kp
from model.data.checks import mouth_envelope_correlation
from model.data.studio.camera import frame_camera
from model.data.studio.captions import Style
from model.data.studio.config import StudioConfig
from model.data.studio.drawing import Painter
from model.data.studio.identity import sample_identity
from model.data.studio.motion import frame_rms, motion_from_audio
from model.data.studio.render import ClipJob, render_clip, synthesize
from model.data.studio.rig import Rig
from model.data.studio.speech import resample
from omnilive_cli.main import main

# short clips at a small size keep the whole file fast
SMALL = StudioConfig(short_side=96, min_seconds=1.6, max_seconds=2.4, mostly_silent_probability=0.0,
                     clips_per_identity=1)
HUMAN_SPEECH = Path("/usr/share/sounds/alsa/Front_Center.wav")   # Debian alsa-utils, a real voice


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two clips of seed 11 (two identities)."""
    root = tmp_path_factory.mktemp("studio")
    summary = synthesize(root, clips=2, seed=11, workers=1, config=SMALL)
    assert summary["clips"] == 2
    return root


# ------------------------------------------------------------------------------------------------
# Determinism and identities
# ------------------------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_clips(dataset: Path, tmp_path: Path) -> None:
    render_clip(ClipJob(str(tmp_path), 11, 1, SMALL))
    again = _hashes(tmp_path / "clips")
    first = {k: v for k, v in _hashes(dataset / "clips").items() if k.startswith("s11-000001/")}
    assert again == first and len(first) == 4


def test_different_seeds_give_different_identities(dataset: Path, tmp_path: Path) -> None:
    other = render_clip(ClipJob(str(tmp_path), 12, 0, SMALL))
    mine = fmt.read_meta(fmt.clip_dir(dataset, "s11-000000"))
    a, b = dict(mine.extra["identity"]), dict(other.extra["identity"])
    a.pop("id"), b.pop("id")
    assert a != b and mine.identity != other.identity
    appearance = ("skin", "hair", "top_colour", "background_colour", "face_half_width", "shoulder_width")
    looks = [tuple(map(str, (sample_identity(np.random.default_rng([s, 2, 0]), "x").__dict__[f]
                             for f in appearance))) for s in range(20)]
    assert len(set(looks)) == 20
    assert fmt.read_video(fmt.clip_dir(dataset, "s11-000000") / fmt.VIDEO_FILE).shape[1:] != (0, 0, 3)


# ------------------------------------------------------------------------------------------------
# Ground truth
# ------------------------------------------------------------------------------------------------


def test_clip_files_and_frame_count_match_audio(dataset: Path) -> None:
    index = fmt.read_index(dataset)
    assert [c.id for c in index.clips] == ["s11-000000", "s11-000001"]
    for entry in index.clips:
        clip = fmt.load_clip(dataset, entry.id)
        t = clip.frames.shape[0]
        assert abs(len(clip.audio) / fmt.SAMPLE_RATE * clip.meta.fps - t) <= 1
        assert clip.frames.shape[1:] == (clip.meta.height, clip.meta.width, 3) == (entry.height, entry.width, 3)
        assert clip.keypoints.xy.shape == (t, kp.NUM_KEYPOINTS, 2) and clip.meta.frames == t
        assert clip.meta.fps == 25 and clip.meta.caption and clip.meta.flags.has_pose
        assert set(entry.conditions) == set(fmt.CONDITIONS)


def test_mouth_follows_speech_envelope_in_clips(dataset: Path) -> None:
    checks = mouth_envelope_correlation(dataset)
    assert checks["clips"] == checks["clips_with_speech"] == 2
    assert checks["per_clip_min_r"] > 0.6 and checks["max_frame_count_error"] <= 1


def test_mouth_follows_real_speech_and_closes_in_silence() -> None:
    pcm, rate = fmt.read_audio(HUMAN_SPEECH)
    audio = np.pad(resample(pcm, rate, 16000), (12800, 12800))        # 0.8 s of silence each side
    audio = audio[: len(audio) // 640 * 640]
    style = Style("moderate", "sometimes", "both", False, False, False)
    motion = motion_from_audio(np.random.default_rng(0), audio, 16000, 25, style)
    envelope = frame_rms(audio, 640, len(motion.mouth_open))
    assert np.corrcoef(motion.mouth_open, envelope)[0, 1] > 0.7
    assert motion.mouth_open[:15].max() == 0.0 and motion.mouth_open[-8:].max() < 0.05
    assert motion.mouth_open.max() > 0.5


def test_keypoints_land_on_the_drawn_body() -> None:
    style = Style("energetic", "often", "both", False, False, False)
    audio = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    names = ("body.nose", "body.right_wrist", "body.left_wrist", "body.neck", "body.right_elbow",
             "left_hand.index_4", "right_hand.middle_2", "face.outer_lip_3")
    for seed in range(4):
        rng = np.random.default_rng(seed)
        identity = sample_identity(rng, f"p{seed}")
        rig = Rig(identity)
        motion = motion_from_audio(rng, audio, 16000, 25, style)
        width, height = fmt.frame_size("3:4", 256)
        camera = frame_camera(rig, "full_body", width, height, rng)
        painter = Painter(identity, camera, 2, rng)
        backdrop = np.asarray(painter.backdrop.reduce(2)).astype(int)
        for t in (0, 12, 24):
            pose = rig.pose(motion, t)
            frame = painter.draw(pose).astype(int)
            xy = camera.to_normalized(pose.keypoints)
            inside = np.all((xy > 0.01) & (xy < 0.99), axis=1)
            px = np.minimum((xy * [width, height]).astype(int), [width - 1, height - 1])
            on_body = [np.abs(frame[y, x] - backdrop[y, x]).max() > 10 for (x, y), v in zip(px, inside) if v]
            assert np.mean(on_body) > 0.95
            for name in names:
                x, y = px[kp.index(name)]
                assert inside[kp.index(name)], name
                assert np.abs(frame[y, x] - backdrop[y, x]).max() > 10, (seed, t, name)


# ------------------------------------------------------------------------------------------------
# Captions change the motion
# ------------------------------------------------------------------------------------------------


def _speechy_audio() -> np.ndarray:
    pcm, rate = fmt.read_audio(HUMAN_SPEECH)
    one = resample(pcm, rate, 16000)
    audio = np.concatenate([one, np.zeros(4000, np.float32), one, np.zeros(4000, np.float32), one])
    return audio[: len(audio) // 640 * 640]


def _wrist_travel(style: Style) -> float:
    audio = _speechy_audio()
    rig = Rig(sample_identity(np.random.default_rng(0), "p"))
    motion = motion_from_audio(np.random.default_rng(1), audio, 16000, 25, style)
    wrists = np.array([rig.pose(motion, t).keypoints[[kp.index("body.right_wrist"), kp.index("body.left_wrist")]]
                       for t in range(len(motion.mouth_open))])
    return float(np.abs(np.diff(wrists, axis=0)).sum())


def test_energetic_caption_moves_hands_more_than_calm() -> None:
    calm = _wrist_travel(Style("calm", "sometimes", "both", False, False, False))
    energetic = _wrist_travel(Style("energetic", "sometimes", "both", False, False, False))
    assert energetic > 1.8 * calm


def test_nodding_and_waving_captions_show_in_motion() -> None:
    audio = _speechy_audio()
    pitch = {}
    for nods in ("often", "rarely"):
        style = Style("moderate", nods, "both", False, False, False)
        pitch[nods] = motion_from_audio(np.random.default_rng(1), audio, 16000, 25, style).head[:, 1].std()
    assert pitch["often"] > 2 * pitch["rarely"]
    rig = Rig(sample_identity(np.random.default_rng(0), "p"))
    waving = motion_from_audio(np.random.default_rng(1), audio, 16000, 25,
                               Style("calm", "sometimes", "right", True, False, False))
    pose = rig.pose(waving, 5)
    assert pose.keypoints[kp.index("body.right_wrist"), 1] < pose.keypoints[kp.index("body.right_shoulder"), 1]


# ------------------------------------------------------------------------------------------------
# Splits and CLI
# ------------------------------------------------------------------------------------------------


def test_splits_never_share_an_identity() -> None:
    splits: dict[str, set[str]] = {}
    for i in range(300):
        identity = f"s1-p{i:05d}"
        splits.setdefault(fmt.split_for_identity(identity, 1), set()).add(identity)
        assert fmt.split_for_identity(identity, 1) == fmt.split_for_identity(identity, 1)
    assert set(splits) == set(fmt.SPLITS)
    assert 0.05 < len(splits["val"]) / 300 < 0.16 and 0.05 < len(splits["test"]) / 300 < 0.16


def test_cli_synth_prints_one_json_object(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "small.yaml"
    config.write_text("min_seconds: 1.0\nmax_seconds: 1.5\n")
    code = main(["synth", "--out", str(tmp_path / "ds"), "--clips", "1", "--seed", "4", "--size", "64",
                 "--config", str(config), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["clips"] == 1 and summary["seconds"] > 0.9 and summary["clips_per_minute"] > 0
    assert (tmp_path / "ds" / "index.json").is_file()


def test_cli_synth_rejects_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["synth", "--out", str(tmp_path), "--clips", "0"]) == 2
    assert "--clips" in capsys.readouterr().err
    assert main(["synth", "--out", str(tmp_path), "--clips", "1", "--size", "8"]) == 2
