"""`omnilive render`: a real mp4 (H.264 + AAC in sync) and one clear message for every kind of bad input."""

import math
import wave
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from model.data.keypoints import NUM_KEYPOINTS
from model.pipeline import AvatarPipeline
from omnilive_cli import render as render_command
from omnilive_cli.main import main
from pipeline_helpers import micro_config, reference_image, speech_like

SR = 16000


def _write_wav(path: Path, samples: np.ndarray, rate: int = SR) -> Path:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("render")
    AvatarPipeline.from_config(micro_config(), seed=0).save_pretrained(root / "ckpt")
    Image.fromarray(reference_image(120, 90)).save(root / "ref.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    (root / "notes.txt").write_text("this is not audio\n" * 20)
    rng = np.random.default_rng(0)
    np.savez(root / "pose.npz", xy=rng.uniform(0.2, 0.8, (5, NUM_KEYPOINTS, 2)).astype(np.float32),
             visibility=np.ones((5, NUM_KEYPOINTS), np.float32))
    np.savez(root / "bad_pose.npz", xy=np.zeros((5, 17, 2), np.float32))
    return {
        "ckpt": root / "ckpt",
        "pose": root / "pose.npz",
        "bad_pose": root / "bad_pose.npz",
        "image": root / "ref.png",
        "broken_image": root / "broken.png",
        "text": root / "notes.txt",
        "audio": _write_wav(root / "speech.wav", speech_like(0.61)),
        "audio_44k": _write_wav(root / "speech44k.wav", speech_like(0.3, sample_rate=44100), rate=44100),
        "empty_audio": _write_wav(root / "empty.wav", np.zeros(0, np.float32)),
    }


def _render(files, out, **overrides) -> list[str]:
    args = {"--image": files["image"], "--audio": files["audio"], "--checkpoint": files["ckpt"], "--out": out}
    args.update(overrides)
    argv = ["render"]
    for key, value in args.items():
        if value is not None:
            argv += [key, str(value)]
    return argv


def test_render_writes_h264_aac_mp4_covering_the_audio(files, tmp_path):
    out = tmp_path / "out.mp4"
    assert main(_render(files, out, **{"--seed": 3})) == 0
    with av.open(str(out)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264" and audio.codec_context.name == "aac"
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video)]
        video_s = float(video.duration * video.time_base)
        audio_s = float(audio.duration * audio.time_base)
    assert len(frames) == math.ceil(0.61 * 25)
    assert frames[0].shape == (64, 64, 3)
    assert abs(video_s - audio_s) <= 1 / 25
    assert abs(video_s - len(frames) / 25) < 1e-6


def test_render_with_pose_and_text(files, tmp_path):
    plain, posed = tmp_path / "plain.mp4", tmp_path / "posed.mp4"
    assert main(_render(files, plain, **{"--text": "a person talking"})) == 0
    assert main(_render(files, posed, **{"--text": "a person talking", "--pose": files["pose"]})) == 0

    def frames(path):
        with av.open(str(path)) as container:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])

    a, b = frames(plain), frames(posed)
    assert a.shape == b.shape
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 0.5


def test_render_resamples_other_audio_rates(files, tmp_path):
    out = tmp_path / "out44k.mp4"
    assert main(_render(files, out, **{"--audio": files["audio_44k"]})) == 0
    with av.open(str(out)) as container:
        assert container.streams.video[0].frames == math.ceil(0.3 * 25)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"--image": "missing.png"}, "image file not found"),
        ({"--audio": "missing.wav"}, "audio file not found"),
        ({"--audio": "text"}, "cannot read audio"),
        ({"--image": "broken_image"}, "cannot decode image"),
        ({"--audio": "empty_audio"}, "empty"),
        ({"--out": "/nonexistent-folder/out.mp4"}, "output folder does not exist"),
        ({"--steps": "0"}, "--steps must be >= 1"),
        ({"--pose": "text"}, "cannot read pose file"),
        ({"--pose": "bad_pose"}, f"must be [T, {NUM_KEYPOINTS}, 2]"),
        ({"--checkpoint": "image"}, "not an omnilive checkpoint"),
    ],
)
def test_bad_input_gives_one_clear_message(files, tmp_path, capsys, override, message):
    resolved = {k: (files[v] if v in files else (tmp_path / v if v.startswith("missing") else v))
                for k, v in override.items()}
    if resolved.get("--checkpoint") == files["image"]:
        resolved["--checkpoint"] = tmp_path
    out = tmp_path / "out.mp4"
    assert main(_render(files, out, **resolved)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("omnilive render: error:")
    assert message in err[0]
    assert "Traceback" not in err[0]
    assert not out.exists()


def test_output_that_is_a_folder_is_rejected(files, tmp_path, capsys):
    assert main(_render(files, tmp_path)) == 2
    assert "output path is a folder" in capsys.readouterr().err


def test_missing_default_checkpoint_says_how_to_get_one(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(render_command, "DEFAULT_CHECKPOINT", tmp_path / "weights" / "tiny")
    assert main(_render(files, tmp_path / "out.mp4", **{"--checkpoint": None})) == 2
    err = capsys.readouterr().err
    assert "omnilive train" in err and "--random-init" in err and "--checkpoint" in err


def test_random_init_renders_and_says_it_is_a_smoke_test(files, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(render_command, "DEFAULT_CHECKPOINT", tmp_path / "absent")
    config = tmp_path / "micro.yaml"
    from pipeline_helpers import write_micro_yaml

    write_micro_yaml(config)
    out = tmp_path / "smoke.mp4"
    argv = _render(files, out, **{"--checkpoint": None, "--random-init": None})
    argv += ["--random-init", "--config", str(config)]
    with caplog.at_level("WARNING"):
        assert main(argv) == 0
    assert out.is_file()
    assert any("smoke test" in r.message for r in caplog.records)


def test_mp4_writer_pads_short_audio_and_removes_a_failed_file(tmp_path):
    from model.media import Mp4Writer

    out = tmp_path / "short.mp4"
    with Mp4Writer(out, 25, np.zeros(100, np.float32), SR) as writer:
        for _ in range(3):
            writer.write(np.zeros((4, 32, 32, 3), np.uint8))
    with av.open(str(out)) as container:
        assert container.streams.video[0].frames == 12
        assert abs(float(container.streams.audio[0].duration * container.streams.audio[0].time_base) - 0.48) < 1e-3
    failed = tmp_path / "failed.mp4"
    with pytest.raises(RuntimeError):
        with Mp4Writer(failed, 25, np.zeros(100, np.float32), SR) as writer:
            writer.write(np.zeros((2, 32, 32, 3), np.uint8))
            raise RuntimeError("generation failed")
    assert not failed.exists()
