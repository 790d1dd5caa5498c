"""Real-video preparation: PyAV decoding, 25 fps / 16 kHz, aspect buckets, quality flags, failure report."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from model.data import format as fmt
from model.data import keypoints as kp
from model.data.prep import PrepConfig, aspect_bucket, load_pose_extractor, prepare
from model.data.studio.speech import resample
from model.errors import InputError
from omnilive_cli.main import main

HUMAN_SPEECH = Path("/usr/share/sounds/alsa/Front_Center.wav")   # Debian alsa-utils, a real voice


def _write_video(path: Path, seconds: float, fps: int, size: tuple[int, int], audio: np.ndarray | None) -> None:
    """A small moving test pattern (H.264), with AAC audio at 16 kHz when given."""
    width, height = size
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=16000)
            sound.layout = "mono"
        yy, xx = np.mgrid[0:height, 0:width]
        for i in range(int(seconds * fps)):
            frame = np.stack([(xx * 2 + i * 6) % 256, (yy * 3) % 256, np.full_like(xx, 90 + i % 50)], -1)
            for packet in video.encode(av.VideoFrame.from_ndarray(frame.astype(np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if sound is not None:
            for start in range(0, len(audio), 1024):
                chunk = audio[start:start + 1024].astype(np.float32)
                frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = 16000, start, Fraction(1, 16000)
                for packet in sound.encode(frame):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """good.mp4 (30 fps, speech), silent_film.mp4 (no audio), truncated.mp4, notes.md."""
    folder = tmp_path_factory.mktemp("videos")
    pcm, rate = fmt.read_audio(HUMAN_SPEECH)
    speech = np.pad(resample(pcm, rate, 16000), (4000, 0))[:32000] * 0.8
    _write_video(folder / "good.mp4", 2.0, 30, (192, 108), speech)
    (folder / "good.txt").write_text("a test pattern that talks")
    _write_video(folder / "silent_film.mp4", 1.6, 25, (96, 128), None)
    good = (folder / "good.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (folder / "notes.md").write_text("# not a video\n")
    return folder


@pytest.fixture(scope="module")
def prepared(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("prepared")
    return out, prepare(inputs, out, PrepConfig(short_side=64))


def test_two_usable_clips_and_two_reported_failures(prepared: tuple[Path, dict]) -> None:
    out, report = prepared
    assert report["inputs"] == 4 and report["usable"] == 2 and report["failed"] == 2
    assert sorted(f["file"] for f in report["failures"]) == ["notes.md", "truncated.mp4"]
    assert all(f["reason"] for f in report["failures"])
    assert json.loads((out / "prep-report.json").read_text())["failed"] == 2
    index = fmt.read_index(out)
    assert sorted(c.id for c in index.clips) == ["good-000", "silent_film-000"]
    assert len({c.identity for c in index.clips}) == 2


def test_good_video_is_resampled_and_flagged_for_audio(prepared: tuple[Path, dict]) -> None:
    out, _ = prepared
    clip = fmt.load_clip(out, "good-000")
    assert abs(clip.frames.shape[0] - 50) <= 1                                  # 2 s at 30 fps -> 25 fps
    assert clip.meta.aspect == "16:9" and clip.frames.shape[1:] == (64, 112, 3)
    assert len(clip.audio) == clip.frames.shape[0] * fmt.SAMPLES_PER_FRAME
    flags = clip.meta.flags
    assert flags.audio_present and flags.has_speech and flags.speech_ratio > 0.3 and flags.motion > 0.01
    assert flags.conditions == ["text", "reference", "audio"] and not flags.has_pose
    assert clip.keypoints is None and clip.meta.caption == "a test pattern that talks"


def test_video_without_audio_is_usable_but_flagged(prepared: tuple[Path, dict]) -> None:
    out, report = prepared
    clip = fmt.load_clip(out, "silent_film-000")
    assert clip.audio is None and not (fmt.clip_dir(out, "silent_film-000") / fmt.AUDIO_FILE).exists()
    assert not clip.meta.flags.audio_present and not clip.meta.flags.has_speech
    assert clip.meta.flags.conditions == ["text", "reference"]
    assert clip.meta.aspect == "3:4" and clip.frames.shape[0] == 40
    entry = next(c for c in report["clips"] if c["id"] == "silent_film-000")
    assert entry["audio_present"] is False


def test_pose_extractor_plugs_in(inputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = tmp_path / "my_pose.py"
    module.write_text(
        "import numpy as np\n"
        "from model.data.format import Keypoints\n"
        "def extract(frames):\n"
        "    t = len(frames)\n"
        f"    return Keypoints(np.full((t, {kp.NUM_KEYPOINTS}, 2), 0.5, np.float32),"
        f" np.ones((t, {kp.NUM_KEYPOINTS}), np.float32), np.full(t, np.nan, np.float32))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    extractor = load_pose_extractor("my_pose:extract")
    report = prepare(inputs, tmp_path / "out", PrepConfig(short_side=64), extractor)
    clip = fmt.load_clip(tmp_path / "out", "silent_film-000")
    assert clip.meta.flags.has_pose and "pose" in clip.meta.flags.conditions
    assert clip.keypoints.xy.shape == (40, kp.NUM_KEYPOINTS, 2)
    assert report["usable"] == 2
    with pytest.raises(InputError):
        load_pose_extractor("no_such_module:thing")


def test_cli_prep_json_and_bad_input(inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["prep", "--in", str(inputs), "--out", str(tmp_path / "ds"), "--size", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["usable"] == 2 and report["failed"] == 2
    assert main(["prep", "--in", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_aspect_buckets() -> None:
    assert aspect_bucket(1920, 1080) == "16:9" and aspect_bucket(1080, 1920) == "9:16"
    assert aspect_bucket(640, 640) == "1:1" and aspect_bucket(720, 960) == "3:4"


def test_long_video_is_cut_into_segments_with_matching_audio(inputs: Path, prepared: tuple[Path, dict],
                                                             tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "talk.mp4").write_bytes((inputs / "good.mp4").read_bytes())
    report = prepare(folder, tmp_path / "out", PrepConfig(short_side=64, segment_seconds=1.0))
    assert [c["id"] for c in report["clips"]] == ["talk-000", "talk-001"]
    whole = fmt.load_clip(prepared[0], "good-000")
    first, second = (fmt.load_clip(tmp_path / "out", f"talk-00{i}") for i in (0, 1))
    assert first.frames.shape[0] == second.frames.shape[0] == 25
    assert np.array_equal(np.concatenate([first.audio, second.audio]), whole.audio[:32000])
    assert second.meta.extra["start_s"] == 1.0 and first.meta.identity == second.meta.identity
