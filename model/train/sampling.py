"""Training samples shaped like one streaming step: [reference | M context | F chunk] + conditions.

What the sampler sees at inference is what the model trains on: the reference is a frame from
elsewhere in the clip (or another clip of the same identity), the M context frames are the frames
just before the chunk, lightly noised with their own per-frame times (context-noise augmentation
against drift; sometimes clean, sometimes the reference repeated as at stream start), and the F
chunk frames are noised at one flow time t. Conditions are kept with the stage's ratios, and only
where the clip's quality flags allow them.

For a guide model (model/guide.py) the reference is the frame the clip's mouth bank was drawn from,
the mouth cells of reference and context are hidden, and each chunk frame gets the bank blended at the
openness the motion model predicts from that frame's (VAD-gated) audio, as inference builds it; the
chunk noise is centred on that guide (model/flow.py).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.conditioning.heatmaps import HEATMAP_CHANNEL_NAMES
from model.flow import add_noise, sample_timesteps
from model.train.cache import CachedClip
from model.train.config import SampleConfig, StageConfig
from model.train.features import gated_windows


@dataclass
class Batch:
    """Model inputs and targets of one optimisation step (B samples, T = R + M + F frames)."""

    latents: torch.Tensor       # [B, T, C, h, w] noised inputs
    timesteps: torch.Tensor     # [B, T] per-frame flow times (reference 0)
    clean: torch.Tensor         # [B, T, C, h, w] x0
    noise: torch.Tensor         # [B, T, C, h, w]
    loss_weight: torch.Tensor   # [B, T] 1 on chunk frames, 0 elsewhere
    audio: torch.Tensor | None  # [B, F, W, K, A] per-frame audio windows
    pose: torch.Tensor | None   # [B, F, G, h, w]
    text: torch.Tensor          # [B, text_dim]
    drop_audio: torch.Tensor    # [B] bool
    drop_pose: torch.Tensor     # [B] bool
    drop_text: torch.Tensor     # [B] bool
    num_reference: int
    num_context: int
    cell_weight: torch.Tensor | None = None  # [B, F, 1, h, w] loss weight of chunk latent cells (mouths up-weighted)
    guide: torch.Tensor | None = None  # [B, F, C, h, w] chunk frames' guide latents (guide models)

    def to(self, device: torch.device) -> "Batch":
        """The same batch on `device`."""
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return Batch(**moved)

    def model_inputs(self) -> dict:
        """Keyword arguments of OmniHumanDiT.forward."""
        return dict(latents=self.latents, timesteps=self.timesteps, num_reference=self.num_reference,
                    num_context=self.num_context, audio=self.audio, pose=self.pose, text=self.text,
                    drop_audio=self.drop_audio, drop_text=self.drop_text, drop_pose=self.drop_pose, guide=self.guide)


class StreamingSampleBuilder:
    """Draws streaming-shaped batches from cached clips; clips in a batch share their latent grid."""

    def __init__(self, clips: list[CachedClip], context_frames: int, chunk_frames: int, reference_frames: int,
                 sample: SampleConfig, past_frames: int = 0, silence: torch.Tensor | None = None,
                 timestep_shift: float = 1.0, schedule_times: torch.Tensor | None = None,
                 guide_openness: dict[str, torch.Tensor] | None = None):
        self.m, self.f, self.r = context_frames, chunk_frames, reference_frames
        self.guide_openness = guide_openness  # clip id -> [T] motion-model openness; None: not a guide model
        self.schedule_times = schedule_times  # [S] the sampler's step start times (1 first), drawn with schedule_time_prob
        self.past = past_frames
        self.silence = silence  # [K, A] features of a silent frame (what gated frames become)
        self.sample = sample
        self.timestep_shift = timestep_shift
        usable = [c for c in clips if c.frames >= self.m + self.f + 1
                  and (guide_openness is None or (c.guide_bank is not None and c.id in guide_openness))]
        if not usable:
            raise ValueError(f"no clip has the {self.m + self.f + 1} frames a sample needs")
        self.buckets: dict[tuple[int, int], list[CachedClip]] = defaultdict(list)
        for clip in usable:
            self.buckets[clip.grid].append(clip)
        self.bucket_keys = sorted(self.buckets)
        self.bucket_weights = torch.tensor([float(len(self.buckets[k])) for k in self.bucket_keys])
        self.by_identity: dict[tuple[tuple[int, int], str], list[CachedClip]] = defaultdict(list)
        for clip in usable:
            self.by_identity[(clip.grid, clip.identity)].append(clip)
        first = usable[0]
        self.audio_shape = (first.audio.shape[1:] if first.audio is not None else
                            next((c.audio.shape[1:] for c in usable if c.audio is not None), None))
        self.pose_channels = next((c.pose.shape[1] for c in usable if c.pose is not None), 0)
        self.text_dim = first.text.shape[0]
        self.lips_channel = HEATMAP_CHANNEL_NAMES.index("lips")

    # ---------------------------------------------------------------- pieces

    def _reference(self, clip: CachedClip, start: int, g: torch.Generator) -> torch.Tensor:
        """R reference latents from another clip of the identity, or far from the window in this clip."""
        others = [c for c in self.by_identity[(clip.grid, clip.identity)] if c.id != clip.id]
        if others and float(torch.rand((), generator=g)) < self.sample.reference_other_clip_prob:
            source = others[int(torch.randint(len(others), (1,), generator=g))]
            picks = torch.randint(source.frames, (self.r,), generator=g)
            return source.latents[picks]
        end = start + self.m + self.f
        gap = self.sample.reference_min_gap
        candidates = [i for i in range(clip.frames) if i <= start - gap or i >= end + gap]
        if not candidates:
            candidates = [i for i in range(clip.frames) if i < start or i >= end] or list(range(clip.frames))
        picks = torch.randint(len(candidates), (self.r,), generator=g)
        return clip.latents[[candidates[int(p)] for p in picks]]

    def _context_times(self, g: torch.Generator) -> torch.Tensor:
        """Per-frame flow times [M] of the context: 0 (clean) or U(0, max) each."""
        if float(torch.rand((), generator=g)) < self.sample.context_clean_prob:
            return torch.zeros(self.m)
        return torch.rand(self.m, generator=g) * self.sample.context_noise_max

    def _audio(self, clip: CachedClip, chunk_index: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Audio windows [F, W, K, A] of the chunk; sometimes unvoiced frames gated to silence (server VAD)."""
        if clip.audio is None:
            return torch.zeros(self.f, *self.audio_shape)
        gate = float(torch.rand((), generator=g)) < self.sample.vad_gate_prob
        if self.silence is None or not gate:
            return clip.audio[chunk_index]
        return gated_windows(clip.audio, clip.voiced, self.silence, self.past, chunk_index)

    def _cell_weight(self, clip: CachedClip, chunk_index: torch.Tensor) -> torch.Tensor:
        """[F, 1, h, w]: 1, rising to mouth_loss_weight on the latent cells around the lips (3x3 grown)."""
        if clip.pose is None:
            return torch.ones(self.f, 1, *clip.grid)
        lips = clip.pose[chunk_index, self.lips_channel][:, None]  # [F, 1, h, w] heatmap in 0..1
        lips = F.max_pool2d(lips, kernel_size=3, stride=1, padding=1)
        return 1.0 + (self.sample.mouth_loss_weight - 1.0) * lips

    def _chunk_times(self, b: int, g: torch.Generator) -> torch.Tensor:
        """Flow times [B] of the chunks: logit-normal, or with schedule_time_prob one of the sampler's step times.

        A 2-step sampler asks the model at t = 1 and t = 0.5 only; logit-normal draws t > 0.9 about 1 % of
        the time, so without this the first step, where the mouth shape is decided, is barely trained.
        """
        t = sample_timesteps((b,), shift=self.timestep_shift, generator=g)
        if self.schedule_times is None or self.sample.schedule_time_prob == 0.0:
            return t
        use = torch.rand(b, generator=g) < self.sample.schedule_time_prob
        picks = self.schedule_times[torch.randint(len(self.schedule_times), (b,), generator=g)]
        return torch.where(use, picks, t)

    def _guide(self, clip: CachedClip, chunk_index: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Guide latents [F, C, h, w]: the clip's bank at the motion model's openness (or, with
        guide_truth_prob, the studio's own), jittered by guide_jitter."""
        predicted = self.guide_openness[clip.id][chunk_index]  # type: ignore[index]
        if clip.mouth_open is not None and float(torch.rand((), generator=g)) < self.sample.guide_truth_prob:
            truth = clip.mouth_open[chunk_index]
            predicted = torch.where(torch.isfinite(truth), truth, predicted)
        jitter = torch.randn(self.f, generator=g) * self.sample.guide_jitter
        return clip.guide_bank.blend((predicted + jitter).clamp(0.0, 1.0))  # type: ignore[union-attr]

    # ---------------------------------------------------------------- batch

    def build(self, batch_size: int, stage: StageConfig, g: torch.Generator) -> Batch:
        """One batch for `stage` (its ratios decide which conditions each sample keeps)."""
        key = self.bucket_keys[int(torch.multinomial(self.bucket_weights, 1, generator=g))]
        pool = self.buckets[key]
        rows = defaultdict(list)
        for _ in range(batch_size):
            clip = pool[int(torch.randint(len(pool), (1,), generator=g))]
            start = int(torch.randint(clip.frames - self.m - self.f + 1, (1,), generator=g))
            bank = clip.guide_bank if self.guide_openness is not None else None
            reference = (self._reference(clip, start, g) if bank is None else
                         bank.hide_mouth(clip.latents[[clip.guide_frame] * self.r]))
            window = clip.latents[start:start + self.m + self.f]
            context, chunk = window[: self.m], window[self.m:]
            if bank is not None:
                context = bank.hide_mouth(context)
            if self.m and float(torch.rand((), generator=g)) < self.sample.stream_start_prob:
                context = reference[-1:].expand(self.m, *reference.shape[1:])
            keep = {c: c in clip.conditions and float(torch.rand((), generator=g)) < stage.ratio(c)
                    for c in ("reference", "text", "audio", "pose")}
            keep["audio"] &= clip.audio is not None
            keep["pose"] &= clip.pose is not None
            if not keep["reference"]:
                reference = torch.zeros_like(reference)
            chunk_index = torch.arange(start + self.m, start + self.m + self.f)
            if self.audio_shape is not None:
                rows["audio"].append(self._audio(clip, chunk_index, g))
            if self.pose_channels:
                rows["pose"].append(clip.pose[chunk_index] if clip.pose is not None else
                                    torch.zeros(self.f, self.pose_channels, *clip.grid))
            if self.sample.mouth_loss_weight > 1.0:
                rows["cell_weight"].append(self._cell_weight(clip, chunk_index))
            if bank is not None:
                rows["guide"].append(self._guide(clip, chunk_index, g))
            rows["clean"].append(torch.cat([reference, context, chunk]))
            rows["context_t"].append(self._context_times(g))
            rows["text"].append(clip.text)
            for name in ("audio", "pose", "text"):
                rows[f"drop_{name}"].append(not keep[name])
        clean = torch.stack(rows["clean"])
        b = clean.shape[0]
        noise = torch.randn(clean.shape, generator=g)
        chunk_t = self._chunk_times(b, g)
        timesteps = torch.cat([torch.zeros(b, self.r), torch.stack(rows["context_t"]), chunk_t[:, None].expand(b, self.f)], 1)
        loss_weight = torch.cat([torch.zeros(b, self.r + self.m), torch.ones(b, self.f)], 1)
        guide = torch.stack(rows["guide"]) if rows["guide"] else None
        centre = noise if guide is None else torch.cat([noise[:, : self.r + self.m], noise[:, self.r + self.m:] + guide], 1)
        return Batch(
            latents=add_noise(clean, centre, timesteps), timesteps=timesteps, clean=clean, noise=noise,
            loss_weight=loss_weight, audio=torch.stack(rows["audio"]) if self.audio_shape is not None else None,
            pose=torch.stack(rows["pose"]) if self.pose_channels else None, text=torch.stack(rows["text"]),
            drop_audio=torch.tensor(rows["drop_audio"]), drop_pose=torch.tensor(rows["drop_pose"]),
            drop_text=torch.tensor(rows["drop_text"]), num_reference=self.r, num_context=self.m,
            cell_weight=torch.stack(rows["cell_weight"]) if rows["cell_weight"] else None, guide=guide,
        )
