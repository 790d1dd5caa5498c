"""AvatarPipeline: checkpoint round trip, live streams (push_audio/ready/generate), batching, render."""

import math

import numpy as np
import pytest
import torch

from model.data.keypoints import NUM_KEYPOINTS
from model.errors import InputError
from model.pipeline import AvatarPipeline, StreamOptions
from pipeline_helpers import micro_config, reference_image, speech_like

SR = 16000


@pytest.fixture(scope="module")
def pipe() -> AvatarPipeline:
    torch.manual_seed(0)
    return AvatarPipeline.from_config(micro_config(), seed=0)


def _stream_frames(pipe, reference, audio, seed=0, chunks=2, text=None, piece=320):
    """Push audio in 20 ms pieces and collect `chunks` chunks of one stream."""
    stream = pipe.open_stream(reference, StreamOptions(seed=seed, text=text))
    out = []
    for start in range(0, len(audio), piece):
        stream.push_audio(audio[start : start + piece])
        while stream.ready() and len(out) < chunks:
            out.append(pipe.generate([stream])[0])
    stream.close()
    return out


def test_save_load_gives_identical_frames(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} >= {"pipeline.json", "dit", "vae"}
    loaded = AvatarPipeline.from_pretrained(tmp_path / "ckpt")
    audio = speech_like(0.5)
    image = reference_image()
    a = _stream_frames(pipe, pipe.encode_reference(image), audio)
    b = _stream_frames(loaded, loaded.encode_reference(image), audio)
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.frames, y.frames)


def test_from_pretrained_rejects_a_folder_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(InputError, match="not an omnilive checkpoint"):
        AvatarPipeline.from_pretrained(tmp_path)


def test_stream_chunks_have_frame_shapes_and_audio_times(pipe):
    cfg = pipe.config
    reference = pipe.encode_reference(reference_image())
    stream = pipe.open_stream(reference, StreamOptions(seed=3))
    # one chunk needs F frames + look-ahead of audio; one sample short is not ready
    need = (cfg.chunk_frames + cfg.lookahead_frames) * cfg.samples_per_frame
    stream.push_audio(speech_like(need / SR)[:-1])
    assert not stream.ready()
    assert pipe.generate([stream]) == []
    stream.push_audio(np.zeros(1, np.float32))
    assert stream.ready()
    first = pipe.generate([stream])[0]
    assert first.frames.shape == (cfg.chunk_frames, cfg.height, cfg.width, 3)
    assert first.frames.dtype == np.uint8
    np.testing.assert_allclose(first.audio_time_s, np.arange(cfg.chunk_frames) / cfg.fps)
    assert not stream.ready()
    stream.push_audio(speech_like(cfg.chunk_frames * cfg.samples_per_frame / SR, seed=1))
    second = pipe.generate([stream])[0]
    np.testing.assert_allclose(second.audio_time_s, (cfg.chunk_frames + np.arange(cfg.chunk_frames)) / cfg.fps)
    assert stream.frame_index == 2 * cfg.chunk_frames
    stream.close()


def test_two_streams_batched_equal_each_alone(pipe):
    ref_a = pipe.encode_reference(reference_image(seed=1))
    ref_b = pipe.encode_reference(reference_image(seed=2))
    audio_a, audio_b = speech_like(0.5, seed=1), speech_like(0.5, seed=2)
    alone_a = _stream_frames(pipe, ref_a, audio_a, seed=11)
    alone_b = _stream_frames(pipe, ref_b, audio_b, seed=22)
    a = pipe.open_stream(ref_a, StreamOptions(seed=11))
    b = pipe.open_stream(ref_b, StreamOptions(seed=22))
    a.push_audio(audio_a)
    b.push_audio(audio_b)
    for k in range(2):
        chunks = pipe.generate([a, b])
        assert [c.stream for c in chunks] == [a, b]
        # batching changes float summation order only
        np.testing.assert_allclose(chunks[0].frames, alone_a[k].frames, atol=1)
        np.testing.assert_allclose(chunks[1].frames, alone_b[k].frames, atol=1)
    assert not np.array_equal(alone_a[0].frames, alone_b[0].frames)


def test_generate_batches_different_grids_and_skips_streams_not_ready(pipe):
    square = pipe.open_stream(pipe.encode_reference(reference_image()))
    wide = pipe.open_stream(pipe.encode_reference(reference_image(), height=32, width=96))
    idle = pipe.open_stream(pipe.encode_reference(reference_image()))
    for s in (square, wide):
        s.push_audio(speech_like(0.3))
    chunks = pipe.generate([square, idle, wide])
    assert [c.stream for c in chunks] == [square, wide]
    assert chunks[1].frames.shape[1:] == (32, 96, 3)


def test_unvoiced_audio_renders_like_silence(pipe):
    reference = pipe.encode_reference(reference_image())
    audio = speech_like(0.5)
    gated = pipe.open_stream(reference, StreamOptions(seed=5))
    gated.push_audio(audio, voiced=False)
    silent = pipe.open_stream(reference, StreamOptions(seed=5))
    silent.push_audio(np.zeros_like(audio))
    voiced = pipe.open_stream(reference, StreamOptions(seed=5))
    voiced.push_audio(audio)
    g, s, v = (pipe.generate([x])[0].frames for x in (gated, silent, voiced))
    np.testing.assert_array_equal(g, s)
    assert not np.array_equal(g, v)


def test_clear_buffer_drops_pending_audio(pipe):
    stream = pipe.open_stream(pipe.encode_reference(reference_image()))
    stream.push_audio(speech_like(1.0))
    pipe.generate([stream])
    stream.clear_buffer()
    assert not stream.ready()
    stream.push_audio(speech_like(0.3, seed=4))
    chunk = pipe.generate([stream])[0]
    assert chunk.first_frame == pipe.config.chunk_frames


def test_text_changes_the_output(pipe):
    reference = pipe.encode_reference(reference_image())
    audio = speech_like(0.3)
    plain = _stream_frames(pipe, reference, audio, chunks=1)[0].frames
    texted = _stream_frames(pipe, reference, audio, chunks=1, text="a person waving both hands")[0].frames
    assert not np.array_equal(plain, texted)


def test_closed_stream_rejects_audio_and_is_skipped(pipe):
    stream = pipe.open_stream(pipe.encode_reference(reference_image()))
    stream.push_audio(speech_like(0.3))
    stream.close()
    assert not stream.ready()
    assert pipe.generate([stream]) == []
    with pytest.raises(InputError):
        stream.push_audio(speech_like(0.1))


def test_encode_reference_crops_any_aspect_and_rejects_bad_arrays(pipe):
    tall = pipe.encode_reference(reference_image(height=300, width=100))
    assert tall.image.shape == (pipe.config.height, pipe.config.width, 3)
    assert tall.latents.shape[-2:] == (pipe.config.height // 8, pipe.config.width // 8)
    with pytest.raises(InputError):
        pipe.encode_reference(np.zeros((10, 10), np.float32))
    with pytest.raises(InputError):
        pipe.encode_reference(reference_image(), height=30, width=64)


def test_render_covers_the_audio_and_matches_streaming(pipe):
    audio = speech_like(0.5)
    audio = np.concatenate([audio, audio[:1]])  # 0.5 s + 1 sample -> 13 frames at 25 fps
    frames = pipe.render(reference_image(), audio, seed=7, vad=False)
    expected = math.ceil(len(audio) / SR * pipe.config.fps)
    assert frames.shape == (expected, pipe.config.height, pipe.config.width, 3)
    assert frames.dtype == np.uint8
    streamed = _stream_frames(pipe, pipe.encode_reference(reference_image()), audio, seed=7, chunks=2)
    np.testing.assert_array_equal(frames[: 2 * pipe.config.chunk_frames],
                                  np.concatenate([c.frames for c in streamed]))


def test_render_rejects_empty_audio(pipe):
    with pytest.raises(InputError, match="empty"):
        pipe.render(reference_image(), np.zeros(0, np.float32))


def _pose(frames: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0.2, 0.8, (frames, NUM_KEYPOINTS, 2)).astype(np.float32)
    return xy, np.ones((frames, NUM_KEYPOINTS), np.float32)


def test_set_pose_drives_the_output_and_none_releases_it(pipe):
    reference = pipe.encode_reference(reference_image())
    audio = speech_like(0.3)
    xy, vis = _pose(1)

    def first_chunk(pose):
        stream = pipe.open_stream(reference, StreamOptions(seed=2))
        stream.set_pose(pose)
        stream.push_audio(audio)
        return pipe.generate([stream])[0].frames

    free = first_chunk(None)
    posed = first_chunk(np.concatenate([xy[0], vis[0, :, None]], axis=1))  # [K, 3]
    assert not np.array_equal(free, posed)
    stream = pipe.open_stream(reference, StreamOptions(seed=2))
    stream.set_pose(np.concatenate([xy[0], vis[0, :, None]], axis=1))
    stream.set_pose(None)
    stream.push_audio(audio)
    np.testing.assert_array_equal(pipe.generate([stream])[0].frames, free)
    with pytest.raises(InputError, match="pose must be"):
        stream.set_pose(np.zeros((3, 3)))


def test_render_with_a_short_pose_holds_its_last_frame(pipe):
    audio = speech_like(0.24)  # 6 frames: 2 chunks
    xy, vis = _pose(3, seed=1)
    held = pipe.render(reference_image(), audio, pose=(xy, vis), vad=False)
    padded = (np.concatenate([xy, np.repeat(xy[-1:], 5, axis=0)]), np.ones((8, NUM_KEYPOINTS), np.float32))
    np.testing.assert_array_equal(held, pipe.render(reference_image(), audio, pose=padded, vad=False))
    assert not np.array_equal(held, pipe.render(reference_image(), audio, vad=False))
    with pytest.raises(InputError, match="pose must be"):
        pipe.render(reference_image(), audio, pose=(xy[:, :5], vis[:, :5]))


def test_render_gates_non_speech_noise_to_silence(pipe):
    noise = (0.1 * np.random.default_rng(0).standard_normal(SR // 2)).astype(np.float32)
    silence = np.zeros_like(noise)
    gated = pipe.render(reference_image(), noise, vad=True)
    np.testing.assert_array_equal(gated, pipe.render(reference_image(), silence, vad=True))
    assert not np.array_equal(gated, pipe.render(reference_image(), noise, vad=False))
