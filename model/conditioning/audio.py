"""Audio conditioning: streaming log-mel, per-video-frame windows (past + look-ahead), silence
gating, the trainable AudioEncoder, and a hook for a user-supplied local encoder."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig
from model.errors import InputError

logger = logging.getLogger(__name__)

#################################################################################
#                                   Log-mel                                     #
#################################################################################


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    """Triangular HTK-mel filters with Slaney area normalisation: [n_fft // 2 + 1, n_mels]."""

    def hz_to_mel(f: torch.Tensor) -> torch.Tensor:
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_to_hz(torch.linspace(hz_to_mel(torch.tensor(f_min, dtype=torch.float64)),
                                     hz_to_mel(torch.tensor(f_max, dtype=torch.float64)), n_mels + 2,
                                     dtype=torch.float64))
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    up = (freqs[:, None] - lo[None]) / (mid - lo)[None]
    down = (hi[None] - freqs[:, None]) / (hi - mid)[None]
    fb = torch.clamp(torch.minimum(up, down), min=0.0) * (2.0 / (hi - lo))[None]
    return fb.float()


class LogMel:
    """PCM windows -> log-mel frames. Frame k of a stream covers samples [(k+1) hop - n_fft, (k+1) hop)
    (the stream is zero-padded on the left), so it is complete as soon as its last sample arrives."""

    def __init__(self, config: ModelConfig):
        a = config.audio
        self.n_fft, self.hop = a.n_fft, a.hop_length
        self.log_floor = a.log_floor
        self.window = torch.hann_window(a.n_fft, periodic=True)
        self.filters = mel_filterbank(a.n_mels, a.n_fft, a.sample_rate, a.f_min, a.f_max)

    @property
    def left_pad(self) -> int:
        return self.n_fft - self.hop

    def frames(self, padded: torch.Tensor) -> torch.Tensor:
        """Every complete frame of an already padded buffer [S] -> [n, n_mels]."""
        spec = torch.stft(padded, self.n_fft, self.hop, window=self.window, center=False, return_complex=True)
        power = spec.abs().pow(2).T  # [n, n_fft/2+1]
        # a per-frame reduction (not a matmul, whose blocking depends on n): streaming == whole clip, bit for bit
        mel = (power[:, :, None] * self.filters[None]).sum(dim=1)  # [n, n_mels]
        return torch.log(torch.clamp(mel, min=self.log_floor))

    def __call__(self, pcm: torch.Tensor) -> torch.Tensor:
        """A whole clip [S] -> [S // hop, n_mels]."""
        padded = torch.cat([pcm.new_zeros(self.left_pad), pcm.float()])
        if padded.shape[0] < self.n_fft:
            return torch.empty(0, self.filters.shape[1])
        return self.frames(padded)


class StreamingLogMel:
    """Log-mel fed any number of samples at a time; the frames equal LogMel on the whole clip."""

    def __init__(self, config: ModelConfig):
        self.logmel = LogMel(config)
        self._buffer = torch.zeros(self.logmel.left_pad)

    def push(self, pcm: torch.Tensor) -> torch.Tensor:
        """Append samples [S]; return the frames completed by them [n, n_mels] (n may be 0)."""
        buf = torch.cat([self._buffer, pcm.float().reshape(-1)])
        n_fft, hop = self.logmel.n_fft, self.logmel.hop
        n = (buf.shape[0] - n_fft) // hop + 1 if buf.shape[0] >= n_fft else 0
        if n == 0:
            self._buffer = buf
            return torch.empty(0, self.logmel.filters.shape[1])
        out = self.logmel.frames(buf[: (n - 1) * hop + n_fft])
        self._buffer = buf[n * hop:]
        return out


#################################################################################
#                        User-supplied local encoder (hook)                     #
#################################################################################


class LocalAudioEncoder:
    """Hook for a user-supplied audio encoder (e.g. wav2vec2) loaded from a local folder.

    Set `audio.encoder: local`, `audio.local_encoder_path: DIR`, `audio.local_feature_dim: A` and
    `audio.local_frames_per_video_frame: K` in the model config. DIR holds the module, exported by the
    user: `encoder.pt2` (torch.export, with the sample axis dynamic in multiples of 640) or
    `encoder.pt` (TorchScript). It maps float32 PCM [1, S] at 16 kHz, S a whole number of video
    frames, to features [1, n, A]; they are resampled to exactly K per video frame. Nothing
    downloads. Streaming re-runs it on new frames with `context_s` seconds of past audio, since such
    encoders are not causal.
    """

    def __init__(self, config: ModelConfig, context_s: float = 1.0):
        a = config.audio
        path = Path(a.local_encoder_path or "")
        if not path.is_dir():
            raise InputError(f"local audio encoder folder {str(path)!r} does not exist")
        self.module = self._load(path)
        self.feature_dim = config.audio_feature_dim
        self.frames_per_video_frame = config.audio_frames_per_video_frame
        self.samples_per_video_frame = a.sample_rate // config.sampler.fps
        self.context_samples = int(context_s * a.sample_rate)

    @staticmethod
    def _load(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
        exported, scripted = path / "encoder.pt2", path / "encoder.pt"
        try:
            if exported.is_file():
                module = torch.export.load(str(exported)).module()
            elif scripted.is_file():
                module = torch.jit.load(str(scripted), map_location="cpu").eval()
            else:
                raise InputError(f"local audio encoder folder {path} has neither encoder.pt2 nor encoder.pt")
        except (RuntimeError, ValueError) as exc:
            raise InputError(f"cannot load the local audio encoder in {path}: {exc}") from exc
        logger.info("local audio encoder loaded from %s", path)
        return module

    @torch.inference_mode()
    def __call__(self, pcm: torch.Tensor, num_video_frames: int | None = None) -> torch.Tensor:
        """PCM [S] -> features [T * K, A] for T video frames (default S // samples per frame)."""
        spf = self.samples_per_video_frame
        t = num_video_frames if num_video_frames is not None else pcm.shape[0] // spf
        pcm = F.pad(pcm.float().reshape(-1)[: t * spf], (0, max(0, t * spf - pcm.shape[0])))
        feats = self.module(pcm[None])[0]  # [n, A]
        if feats.ndim != 2 or feats.shape[1] != self.feature_dim:
            raise InputError(f"local audio encoder returned {list(feats.shape)}, expected [n, {self.feature_dim}]")
        feats = F.interpolate(feats.T[None], size=t * self.frames_per_video_frame, mode="linear",
                              align_corners=False)  # [1, A, T*K]
        return feats[0].T

    def stream(self) -> "LocalEncoderStream":
        return LocalEncoderStream(self)


class LocalEncoderStream:
    """Streaming use of a LocalAudioEncoder: features of each completed video frame."""

    def __init__(self, encoder: LocalAudioEncoder):
        self.encoder = encoder
        self._pcm = torch.zeros(0)
        self._context = 0  # samples of _pcm that are context (already turned into features)

    def push(self, pcm: torch.Tensor) -> torch.Tensor:
        """Append samples [S]; return features [n * K, A] of the video frames they completed."""
        spf = self.encoder.samples_per_video_frame
        self._pcm = torch.cat([self._pcm, pcm.float().reshape(-1)])
        new_frames = (self._pcm.shape[0] - self._context) // spf
        if new_frames == 0:
            return torch.empty(0, self.encoder.feature_dim)
        end = self._context + new_frames * spf
        start_frames = self._context // spf  # whole video frames of context
        feats = self.encoder(self._pcm[:end], start_frames + new_frames)[start_frames * self.encoder.frames_per_video_frame:]
        keep = min(end, (self.encoder.context_samples // spf) * spf)
        self._pcm = self._pcm[end - keep:]
        self._context = keep
        return feats


#################################################################################
#                      Per-video-frame windows and gating                       #
#################################################################################


def silence_features(config: ModelConfig) -> torch.Tensor:
    """Features of one silent video frame [K, A] (log-mel: the log floor everywhere)."""
    k, a = config.audio_frames_per_video_frame, config.audio_feature_dim
    value = math.log(config.audio.log_floor) if config.audio.encoder == "logmel" else 0.0
    return torch.full((k, a), value)


def frame_windows(frames: torch.Tensor, start: int, count: int, past: int, lookahead: int,
                  silence: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Windows of video frames start..start+count-1 from per-frame features [T, K, A] holding frames
    offset..offset+T-1 -> [count, past + 1 + lookahead, K, A]; frames outside are silence."""
    idx = torch.arange(start, start + count)[:, None] + torch.arange(-past, lookahead + 1)[None]  # [count, W]
    local = idx - offset
    valid = (local >= 0) & (local < frames.shape[0])
    padded = torch.cat([frames, silence[None].to(frames.dtype)], dim=0)  # the last row is silence
    return padded[torch.where(valid, local, frames.shape[0])]


def clip_audio_windows(pcm: torch.Tensor, config: ModelConfig, num_frames: int | None = None,
                       voiced: torch.Tensor | None = None, encoder: LocalAudioEncoder | None = None) -> torch.Tensor:
    """A whole clip's PCM [S] (16 kHz) -> audio windows [T, W, K, A] for every video frame
    (T = S // samples per frame unless given); voiced [T] bool gates unvoiced frames to silence."""
    k = config.audio_frames_per_video_frame
    spf = config.audio.sample_rate // config.sampler.fps
    t = num_frames if num_frames is not None else pcm.shape[0] // spf
    if config.audio.encoder == "local":
        feats = (encoder or LocalAudioEncoder(config))(pcm, t)
    else:
        feats = LogMel(config)(pcm)
    silence = silence_features(config)
    have = min(t, feats.shape[0] // k)
    frames = torch.cat([feats[: have * k].reshape(have, k, -1), silence[None].expand(t - have, -1, -1)])  # [T, K, A]
    if voiced is not None:
        frames = torch.where(voiced[:t, None, None], frames, silence[None])
    a = config.audio
    return frame_windows(frames, 0, t, a.past_frames, a.lookahead_frames, silence)


class AudioFeatureBuffer:
    """Per-session streaming audio features: push PCM (voiced or not), read chunk windows.

    Keeps only the frames later windows still need (constant memory). A chunk of frames
    start..start+F-1 is ready once frame start+F-1+lookahead is complete.
    """

    def __init__(self, config: ModelConfig, encoder: LocalAudioEncoder | None = None):
        self.config = config
        self.k = config.audio_frames_per_video_frame
        self.samples_per_frame = config.audio.sample_rate // config.sampler.fps
        self._encoder = encoder or (LocalAudioEncoder(config) if config.audio.encoder == "local" else None)
        self._silence = silence_features(config)
        self.reset(0)

    def reset(self, next_frame: int) -> None:
        """Drop all audio (barge-in); audio pushed next belongs to video frame `next_frame` onwards."""
        self._stream = self._encoder.stream() if self._encoder is not None else StreamingLogMel(self.config)
        self._pending = torch.empty(0, self.config.audio_feature_dim)  # feature frames short of a video frame
        self._frames = torch.empty(0, self.k, self.config.audio_feature_dim)  # [T, K, A]
        self._voiced: list[bool] = []
        self._offset = next_frame  # video frame index of _frames[0]
        self._samples = next_frame * self.samples_per_frame

    @property
    def frames_available(self) -> int:
        """Complete video frames of audio received so far."""
        return self._offset + self._frames.shape[0]

    def push(self, pcm: torch.Tensor, voiced: bool = True) -> None:
        """Append float32 mono 16 kHz samples [S]; voiced=False marks their frames as silence."""
        pcm = torch.as_tensor(pcm, dtype=torch.float32).reshape(-1)
        if pcm.numel() == 0:
            return
        first, last = self._samples // self.samples_per_frame, (self._samples + pcm.numel() - 1) // self.samples_per_frame
        need = last + 1 - self._offset - len(self._voiced)
        self._voiced.extend([False] * max(0, need))
        for f in range(first, last + 1):
            self._voiced[f - self._offset] |= voiced
        self._samples += pcm.numel()
        feats = torch.cat([self._pending, self._stream.push(pcm)])
        n = feats.shape[0] // self.k
        self._frames = torch.cat([self._frames, feats[: n * self.k].reshape(n, self.k, feats.shape[-1])])
        self._pending = feats[n * self.k:]

    def ready(self, start: int, count: int) -> bool:
        """Whether windows for frames start..start+count-1 (look-ahead included) can be built."""
        return self.frames_available >= start + count + self.config.audio.lookahead_frames

    def windows(self, start: int, count: int) -> torch.Tensor:
        """Windows [count, W, K, A] of frames start..start+count-1; frees frames no longer needed."""
        if not self.ready(start, count):
            raise ValueError(f"audio for frames {start}..{start + count - 1} (+ look-ahead) not yet received")
        a = self.config.audio
        n = self._frames.shape[0]
        gate = torch.tensor(self._voiced[:n], dtype=torch.bool)
        frames = torch.where(gate[:, None, None], self._frames, self._silence[None])
        out = frame_windows(frames, start, count, a.past_frames, a.lookahead_frames, self._silence, self._offset)
        drop = max(0, min(n, start + count - a.past_frames - self._offset))
        self._frames, self._voiced, self._offset = self._frames[drop:], self._voiced[drop:], self._offset + drop
        return out


#################################################################################
#                        Trainable encoder (inside the DiT)                     #
#################################################################################


class AudioEncoder(nn.Module):
    """Per-video-frame features -> MLP -> hidden tokens, one per neighbour frame of the window.

    Each chunk frame gets its own window (past, itself, look-ahead); every window frame becomes one
    token tagged with a learned offset embedding, and the DiT cross-attends to those tokens.
    """

    def __init__(self, feature_dim: int, frames_per_video_frame: int, window_frames: int, hidden_size: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(feature_dim * frames_per_video_frame, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )
        self.offset_embedding = nn.Parameter(torch.zeros(window_frames, hidden_size))
        nn.init.normal_(self.offset_embedding, std=0.02)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """windows [B, F, W, K, A] (K feature frames of dim A per video frame) -> [B, F, W, D]."""
        b, f, w, k, a = windows.shape
        tokens = self.mlp(windows.reshape(b, f, w, k * a))
        return tokens + self.offset_embedding
