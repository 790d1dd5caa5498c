"""Audio features: streaming log-mel == offline, per-frame windows, silence gating, local-encoder hook."""

from __future__ import annotations

import math

import pytest
import torch

from model.conditioning.audio import (
    AudioFeatureBuffer,
    LocalAudioEncoder,
    LogMel,
    StreamingLogMel,
    clip_audio_windows,
    silence_features,
)
from model.config import ModelConfig, load_model_config
from model.errors import InputError

CFG = load_model_config("tiny")
SPF = CFG.audio.sample_rate // CFG.sampler.fps  # 640 samples per video frame


def speech_like(seconds: float, seed: int = 0) -> torch.Tensor:
    """A voiced-sounding signal: harmonics of a gliding pitch, amplitude-modulated, plus noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * 16000)) / 16000
    f0 = 120 + 30 * torch.sin(2 * math.pi * 0.5 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / 16000
    x = sum(torch.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * torch.sin(2 * math.pi * 3 * t))
    return (0.2 * x + 0.01 * torch.randn(t.shape[0], generator=g)).float()


def test_streaming_mel_fed_20ms_equals_whole_clip() -> None:
    pcm = speech_like(2.03)
    offline = LogMel(CFG)(pcm)
    assert offline.shape == (pcm.shape[0] // CFG.audio.hop_length, CFG.audio.n_mels)
    stream = StreamingLogMel(CFG)
    online = torch.cat([stream.push(pcm[i:i + 320]) for i in range(0, pcm.shape[0], 320)])
    assert torch.equal(online, offline)
    # ragged pushes (1 sample, 7 ms, 101 ms...) give the same frames too
    stream, parts, i = StreamingLogMel(CFG), [], 0
    for n in [1, 112, 1616, 3, 5000, 159, 160, 161] * 10:
        parts.append(stream.push(pcm[i:i + n]))
        i += n
    parts.append(stream.push(pcm[i:]))
    assert torch.equal(torch.cat(parts), offline)


def test_mel_responds_to_sound_and_silence_sits_at_the_floor() -> None:
    mel = LogMel(CFG)(torch.cat([torch.zeros(8000), speech_like(0.5)]))
    floor = math.log(CFG.audio.log_floor)
    assert torch.allclose(mel[:40], torch.full_like(mel[:40], floor))
    assert mel[60:].mean() > floor + 3


def test_windows_hold_past_self_and_lookahead_frames() -> None:
    pcm = speech_like(1.0)
    windows = clip_audio_windows(pcm, CFG)
    a = CFG.audio
    k = CFG.audio_frames_per_video_frame
    assert windows.shape == (25, a.window_frames, k, a.n_mels)
    mel = LogMel(CFG)(pcm).reshape(25, k, a.n_mels)
    i = 10
    for j, frame in enumerate(range(i - a.past_frames, i + a.lookahead_frames + 1)):
        assert torch.equal(windows[i, j], mel[frame])
    # before the first frame and after the last one: silence
    assert torch.equal(windows[0, 0], silence_features(CFG))
    assert torch.equal(windows[-1, -1], silence_features(CFG))


def test_buffer_streams_the_same_windows_and_gates_unvoiced_frames() -> None:
    pcm = speech_like(1.2)
    voiced = torch.ones(30, dtype=torch.bool)
    voiced[10:15] = False
    offline = clip_audio_windows(pcm, CFG, voiced=voiced)
    buf = AudioFeatureBuffer(CFG)
    f, start, got = CFG.sampler.chunk_frames, 0, []
    for i in range(0, pcm.shape[0], 320):  # 20 ms pushes, each labelled by the VAD decision of its frame
        buf.push(pcm[i:i + 320], voiced=bool(voiced[i // SPF]))
        while buf.ready(start, f):
            got.append(buf.windows(start, f))
            start += f
    streamed = torch.cat(got)
    assert torch.equal(streamed, offline[: streamed.shape[0]])
    assert torch.equal(streamed[12, CFG.audio.past_frames], silence_features(CFG))
    assert not torch.equal(streamed[5, CFG.audio.past_frames], silence_features(CFG))
    assert buf._frames.shape[0] <= f + CFG.audio.past_frames + CFG.audio.lookahead_frames  # bounded memory
    with pytest.raises(ValueError, match="not yet received"):
        buf.windows(start, f)


def test_reset_drops_pending_audio() -> None:
    buf = AudioFeatureBuffer(CFG)
    buf.push(speech_like(0.4))
    buf.reset(next_frame=8)
    assert buf.frames_available == 8 and not buf.ready(8, 1)
    buf.push(torch.zeros(SPF * 4))
    assert buf.ready(8, 2)
    assert torch.equal(buf.windows(8, 2)[:, -1], silence_features(CFG).expand(2, -1, -1))


def _local_config(path: str) -> ModelConfig:
    data = CFG.model_dump()
    data["audio"].update(encoder="local", local_encoder_path=path, local_feature_dim=6,
                         local_frames_per_video_frame=2)
    return ModelConfig.model_validate(data)


class _Frames(torch.nn.Module):
    """Stands in for an exported wav2vec2: 50 feature frames per second, 6 features each."""

    def forward(self, pcm: torch.Tensor) -> torch.Tensor:
        frames = pcm.reshape(1, -1, 320)
        return torch.stack([frames.mean(-1), frames.std(-1), frames.abs().amax(-1), frames.amin(-1),
                            frames.amax(-1), frames.pow(2).mean(-1)], -1)


def test_local_encoder_hook_loads_user_weights(tmp_path) -> None:
    example = (torch.randn(1, SPF * 10),)
    dims = {"pcm": {1: SPF * torch.export.Dim("frames", min=1, max=100_000)}}
    torch.export.save(torch.export.export(_Frames(), example, dynamic_shapes=dims), str(tmp_path / "encoder.pt2"))
    cfg = _local_config(str(tmp_path))
    assert cfg.dit_kwargs()["audio_feature_dim"] == 6
    pcm = speech_like(1.0)
    windows = clip_audio_windows(pcm, cfg)
    assert windows.shape == (25, CFG.audio.window_frames, 2, 6)
    # frame 5's own features: the encoder's two 20 ms frames of video frame 5
    own = _Frames()(pcm[5 * SPF:6 * SPF][None])[0]
    assert torch.allclose(windows[5, CFG.audio.past_frames], own, atol=1e-5)
    buf = AudioFeatureBuffer(cfg)
    buf.push(pcm[:8000])
    assert buf.ready(0, 4) and buf.windows(0, 4).shape == (4, CFG.audio.window_frames, 2, 6)


def test_local_encoder_missing_is_an_input_error(tmp_path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        LocalAudioEncoder(_local_config(str(tmp_path / "nope")))
    with pytest.raises(InputError, match="neither"):
        LocalAudioEncoder(_local_config(str(tmp_path)))
