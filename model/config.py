"""Typed model configs (pydantic) loaded from configs/model/<name>.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from model.errors import InputError
from model.yaml_config import load_yaml_config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "model"
VAE_DOWNSAMPLE = 8  # AutoencoderTiny with 4 stages: 8x spatial downsampling


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#################################################################################
#                                   Sections                                    #
#################################################################################


class DiTSection(_Section):
    """Backbone sizes; latent and audio dims are filled in from the other sections."""

    hidden_size: int = Field(gt=0)
    depth: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    patch_size: int = Field(default=2, gt=0)
    mlp_ratio: float = Field(default=4.0, gt=0)
    pose_channels: int = Field(default=0, ge=0, description="heatmap channels G (0: no pose guider)")
    pose_neighbor_frames: int = Field(default=1, ge=0, description="pose frames stacked each side")
    pose_guider_channels: int = Field(default=16, gt=0)
    pose_latent_channels: int = Field(default=4, gt=0, description="guider output channels")
    text_dim: int = Field(default=384, gt=0)
    ref_index: int = Field(default=-32, description="temporal RoPE index of reference frames")
    concat_reference: bool = Field(False, description="also concatenate the reference latent to every context/chunk frame's channels (SVD-style)")
    concat_last_context: bool = Field(False, description="concatenate the newest context frame's latent to every chunk frame's channels")
    concat_guide: bool = Field(False, description="concatenate each chunk frame's mouth-guide latent (model/guide.py) to its channels")
    prediction: Literal["velocity", "guide_residual"] = Field(
        "velocity", description="what the DiT predicts: the flow velocity, or the clean latent minus the guide")
    rope_theta: float = Field(default=10000.0, gt=0)
    frequency_embedding_size: int = Field(default=256, gt=0)

    @model_validator(mode="after")
    def _check(self) -> "DiTSection":
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be divisible by num_heads")
        if (self.hidden_size // self.num_heads) % 8:
            raise ValueError("head dim (hidden_size / num_heads) must be a multiple of 8 for 3D RoPE")
        return self


class VAESection(_Section):
    """diffusers AutoencoderTiny arguments (4 stages: 8x down)."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = Field(default=4, gt=0)
    encoder_block_out_channels: tuple[int, ...] = (16, 16, 16, 16)
    decoder_block_out_channels: tuple[int, ...] = (16, 16, 16, 16)
    num_encoder_blocks: tuple[int, ...] = (1, 1, 1, 1)
    num_decoder_blocks: tuple[int, ...] = (1, 1, 1, 1)
    latent_magnitude: float = 3.0
    latent_shift: float = 0.5
    scaling_factor: float = 1.0
    shift_factor: float = 0.0

    @model_validator(mode="after")
    def _check(self) -> "VAESection":
        n = {len(self.encoder_block_out_channels), len(self.decoder_block_out_channels),
             len(self.num_encoder_blocks), len(self.num_decoder_blocks)}
        if n != {4}:
            raise ValueError("vae needs exactly 4 encoder and 4 decoder stages (8x downsampling)")
        return self


class AudioSection(_Section):
    """Streaming log-mel features and the per-video-frame audio window."""

    sample_rate: Literal[16000] = 16000
    n_fft: int = Field(default=400, gt=0)
    hop_length: int = Field(default=160, gt=0)
    n_mels: int = Field(default=40, gt=0)
    f_min: float = Field(default=0.0, ge=0)
    f_max: float = Field(default=8000.0, gt=0)
    log_floor: float = Field(default=1e-5, gt=0, description="power floor; digital silence maps here")
    past_frames: int = Field(default=2, ge=0, description="past video frames in each frame's window")
    lookahead_frames: int = Field(default=1, ge=0, le=2, description="future video frames (0-2)")
    encoder: Literal["logmel", "local"] = "logmel"
    local_encoder_path: str | None = Field(default=None, description="folder of user-supplied weights")
    local_feature_dim: int | None = Field(default=None, gt=0)
    local_frames_per_video_frame: int | None = Field(default=None, gt=0)

    @property
    def window_frames(self) -> int:
        """Video frames in one frame's audio window: past + itself + look-ahead."""
        return self.past_frames + 1 + self.lookahead_frames

    @model_validator(mode="after")
    def _check(self) -> "AudioSection":
        if self.encoder == "local" and (
            self.local_encoder_path is None or self.local_feature_dim is None
            or self.local_frames_per_video_frame is None
        ):
            raise ValueError("encoder 'local' needs local_encoder_path, local_feature_dim and "
                             "local_frames_per_video_frame")
        if self.f_max > self.sample_rate / 2:
            raise ValueError("f_max must be <= sample_rate / 2")
        return self


class SamplerSection(_Section):
    """Streaming structure, Euler steps and guidance."""

    fps: int = Field(default=25, gt=0)
    chunk_frames: int = Field(default=4, gt=0)
    context_frames: int = Field(default=2, ge=0)
    reference_frames: int = Field(default=1, gt=0)
    steps: int = Field(default=2, gt=0)
    time_shift: float = Field(default=1.0, gt=0)
    context_t: float = Field(default=0.0, ge=0, lt=1, description="noise level of context frames")
    start_t: float = Field(default=1.0, gt=0, le=1, description="each chunk starts from the previous frame "
                           "noised to this level instead of pure noise (1 = pure noise)")
    context_source: Literal["generated", "guide"] = Field(
        default="generated", description="what enters the context window: the generated frames, or (guide models) "
        "their guides, which cannot drift")
    min_steps: int = Field(default=1, gt=0, description="fewest steps the checkpoint's evaluation validated: "
                           "a server under load never steps below it")
    guidance_audio: float = Field(default=1.0, ge=0)
    guidance_text: float = Field(default=1.0, ge=0)
    guidance_anneal: Literal["none", "linear", "cosine"] = "linear"
    guidance_min: float = Field(default=1.0, ge=0, description="scale reached at the last step")


class GuideSection(_Section):
    """The mouth guide (model/guide.py): bank openings drawn per avatar and the hidden mouth cells; blinks; head motion."""

    openings: int = Field(default=5, ge=2, description="mouth openings in each avatar's bank (0 to 1)")
    cell_threshold: float = Field(default=0.15, gt=0, description="latent change that marks a cell as mouth")
    blinks: bool = Field(default=False, description="shut the avatar's eyes every few seconds (model/blinks.py); "
                         "avatars whose eyes are not found above the mouth do not blink")
    head_motion: bool = Field(default=False, description="sway the head and nod while speaking when no pose is "
                              "given (model/head_motion.py)")
    detail_fade: float = Field(default=0.0, ge=0, description="lay the picture's fine detail, which the VAE loses, "
                               "back onto decoded frames where they still show the picture (model/detail.py): the "
                               "blurred change (0-255 levels) at which it fades out; 0 lays none")
    hold_backdrop: bool = Field(default=False, description="hold the backdrop still behind the head the warp moves: "
                                "the checkpoint's person matte (model/conditioning/person_matte.py) tells it apart")
    matte_margin: int = Field(default=2, ge=0, description="pixels the person's matte grows by (its antialiased edge "
                              "moves with the person)")


class VideoSection(_Section):
    height: int = Field(gt=0)
    width: int = Field(gt=0)


#################################################################################
#                                 Model config                                  #
#################################################################################


class ModelConfig(_Section):
    """A whole model: DiT, VAE, audio features, sampler and output size."""

    name: str = "custom"
    dit: DiTSection
    vae: VAESection
    audio: AudioSection = AudioSection()
    sampler: SamplerSection = SamplerSection()
    guide: GuideSection = GuideSection()
    video: VideoSection

    @property
    def audio_frames_per_video_frame(self) -> int:
        """Feature frames per video frame (log-mel: sample_rate / hop / fps)."""
        if self.audio.encoder == "local":
            return int(self.audio.local_frames_per_video_frame)  # type: ignore[arg-type]
        return self.audio.sample_rate // (self.audio.hop_length * self.sampler.fps)

    @property
    def audio_feature_dim(self) -> int:
        """Per-feature-frame dimension fed to the DiT."""
        if self.audio.encoder == "local":
            return int(self.audio.local_feature_dim)  # type: ignore[arg-type]
        return self.audio.n_mels

    @property
    def latent_height(self) -> int:
        return self.video.height // VAE_DOWNSAMPLE

    @property
    def latent_width(self) -> int:
        return self.video.width // VAE_DOWNSAMPLE

    def check_size(self, height: int, width: int) -> None:
        """Raise InputError unless (height, width) is a usable output size."""
        unit = VAE_DOWNSAMPLE * self.dit.patch_size
        if height <= 0 or width <= 0 or height % unit or width % unit:
            raise InputError(f"height and width must be positive multiples of {unit}, got {height}x{width}")

    def dit_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of OmniHumanDiT (JSON-able)."""
        d = self.dit
        return dict(
            latent_channels=self.vae.latent_channels, hidden_size=d.hidden_size, depth=d.depth,
            num_heads=d.num_heads, patch_size=d.patch_size, mlp_ratio=d.mlp_ratio,
            audio_feature_dim=self.audio_feature_dim,
            audio_frames_per_video_frame=self.audio_frames_per_video_frame,
            audio_window_frames=self.audio.window_frames, pose_channels=d.pose_channels,
            pose_neighbor_frames=d.pose_neighbor_frames, pose_guider_channels=d.pose_guider_channels,
            pose_latent_channels=d.pose_latent_channels, text_dim=d.text_dim, ref_index=d.ref_index,
            concat_reference=d.concat_reference, concat_last_context=d.concat_last_context,
            concat_guide=d.concat_guide, prediction=d.prediction,
            rope_theta=d.rope_theta, frequency_embedding_size=d.frequency_embedding_size,
        )

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        a, s = self.audio, self.sampler
        if a.encoder == "logmel" and a.sample_rate % (a.hop_length * s.fps):
            raise ValueError("sample_rate must be a multiple of hop_length * fps")
        if -s.context_frames <= self.dit.ref_index < s.chunk_frames:
            raise ValueError("dit.ref_index must lie outside the context/chunk positions "
                             f"[{-s.context_frames}, {s.chunk_frames - 1}]")
        unit = VAE_DOWNSAMPLE * self.dit.patch_size
        if self.video.height % unit or self.video.width % unit:
            raise ValueError(f"video height and width must be multiples of {unit}")
        return self


def load_model_config(name_or_path: str | Path) -> ModelConfig:
    """Load "tiny"/"base"/"large" (from configs/model/) or a YAML file path; InputError if bad."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise InputError(f"model config {str(name_or_path)!r} not found (known: {known}, or a .yaml path)")
    return load_yaml_config(ModelConfig, path, "model config", defaults={"name": path.stem})
