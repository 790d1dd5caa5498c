"""Typed training configuration (pydantic) loaded from configs/train/*.yaml."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from model.errors import InputError
from model.yaml_config import read_yaml_config, validate_config

CONDITIONS: tuple[str, ...] = ("reference", "text", "audio", "pose")


class _Strict(BaseModel):
    """Base: unknown keys are errors, so a typo in a YAML file never passes silently."""

    model_config = ConfigDict(extra="forbid")


#################################################################################
#                                  Sections                                     #
#################################################################################

class DataConfig(_Strict):
    """Where clips come from and where their pre-encoded features are cached."""

    root: str
    split: str = "train"
    cache_dir: str
    max_clips: int | None = None
    framings: list[str] | None = Field(None, description="keep only clips of these framings (face, portrait, half_body, full_body)")
    holdout_clips: int = Field(4, ge=0, description="clips of the split kept aside for held-out metrics")
    workers: int = Field(0, ge=0)
    pack: str | None = Field(None, description="VAE training: read frames from this frame pack (scripts/pack_vae_frames.py) "
                             "instead of the dataset")


class OptimConfig(_Strict):
    """AdamW with linear warm-up, gradient clipping and an EMA of the weights."""

    lr: float = 2e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_start: int = 0


class RunConfig(_Strict):
    """Step budget, logging, checkpointing and the numeric switches."""

    output_dir: str
    steps: int = Field(ge=0, description="step budget; 0 (DiT fine-tuning) exports the initial weights untrained")
    batch_size: int = Field(8, ge=1)
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    gradient_checkpointing: bool = False
    threads: int | None = None
    max_seconds: float | None = Field(None, gt=0, description="VAE training: stop after this much wall time, the LR "
                                      "schedule shortened to fit once the step pace is known (a lent machine's budget)")


class VaeLossConfig(_Strict):
    """Perceptual-free reconstruction losses; regions (mouth, hands) get extra weight."""

    l1: float = 1.0
    l2: float = 0.0
    gradient: float = 0.5
    ssim: float = 0.2
    mouth_weight: float = 4.0
    hand_weight: float = 3.0
    face_weight: float = 1.5
    eye_weight: float = Field(1.0, description="the eyes' boxes (small: a few pixels at 128 px, and what a viewer looks at)")
    region_margin: float = 0.35
    latent_l2: float = 1e-4


class VaeTrainConfig(_Strict):
    """`kind: vae`: train the frame VAE of a model config on clip frames."""

    kind: Literal["vae"]
    model: str
    data: DataConfig
    run: RunConfig
    optim: OptimConfig = OptimConfig()
    loss: VaeLossConfig = VaeLossConfig()
    crop: int = Field(128, description="square training crop in pixels (frames are resized to the model size first)")
    init_from: str | None = Field(None, description="start from this trained VAE folder instead of random weights")
    freeze_encoder: bool = Field(False, description="train the decoder only: latents (and caches built on them) stay valid")
    latent_noise_max: float = Field(0.0, ge=0.0, description="decode latents plus N(0, s^2) noise, s ~ U(0, max) per frame "
                                    "in the DiT's scaled latent units: a decoder that also removes the small latent errors a "
                                    "few-step DiT leaves (LTX-Video's VAE decoder likewise does the last denoising step)")


class StageConfig(_Strict):
    """One omni-conditions stage: how many steps, and the probability each condition is kept."""

    name: str
    steps: int = Field(ge=1)
    ratios: dict[str, float]

    @model_validator(mode="after")
    def _check_ratios(self) -> "StageConfig":
        for key, value in self.ratios.items():
            if key not in CONDITIONS:
                raise ValueError(f"stage {self.name!r}: unknown condition {key!r} (known: {', '.join(CONDITIONS)})")
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"stage {self.name!r}: ratio of {key} must lie in [0, 1], got {value}")
        return self

    def ratio(self, condition: str) -> float:
        """Probability that `condition` is present in a training sample of this stage (absent key = 0)."""
        return float(self.ratios.get(condition, 0.0))


class SampleConfig(_Strict):
    """How a training sample mirrors one streaming step: reference | M context | F chunk."""

    context_noise_max: float = Field(0.1, ge=0.0, le=1.0, description="context frames are noised at t ~ U(0, max)")
    context_clean_prob: float = Field(0.25, ge=0.0, le=1.0, description="probability the context is left clean")
    reference_min_gap: int = Field(25, ge=0, description="frames between the reference and the sample window")
    reference_other_clip_prob: float = Field(0.3, ge=0.0, le=1.0, description="take the reference from another clip of the identity")
    vad_gate_prob: float = Field(0.5, ge=0.0, le=1.0, description="gate unvoiced frames to silence, as the server's VAD does")
    mouth_loss_weight: float = Field(1.0, ge=1.0, description="loss weight of latent cells at the lips (from the lips heatmap); 1 = uniform")
    stream_start_prob: float = Field(0.1, ge=0.0, le=1.0, description="context filled with the reference latent, as at stream start")
    schedule_time_prob: float = Field(0.0, ge=0.0, le=1.0, description="probability that the chunk is noised at one of "
                                      "the sampler's own step times (t = 1 first), which logit-normal times almost never reach")
    guide_truth_prob: float = Field(0.2, ge=0.0, le=1.0, description="guide models: the guide's openness from the studio's "
                                    "keypoints instead of the motion model's prediction")
    guide_jitter: float = Field(0.05, ge=0.0, description="guide models: std of noise added to the guide's openness")


class DitTrainConfig(_Strict):
    """`kind: dit`: omni-conditions training of the DiT on cached latents and features."""

    kind: Literal["dit"]
    model: str
    vae: str = Field(description="trained VAE folder (config.json + safetensors) used to cache latents")
    data: DataConfig
    run: RunConfig
    optim: OptimConfig = OptimConfig()
    sample: SampleConfig = SampleConfig()
    stages: list[StageConfig]
    init_from: str | None = Field(None, description="fine-tune: start from the DiT of this pipeline folder instead of random weights")
    export_dir: str | None = Field(None, description="write an AvatarPipeline folder here when training ends")
    export_vae: str | None = Field(None, description="VAE the exported pipeline ships (default: vae); must share "
                                   "vae's encoder, i.e. a decoder retrained with freeze_encoder")
    export_sampler: dict[str, float | int | str] = Field(
        default_factory=dict, description="sampler defaults written into the exported pipeline.json (e.g. context_t)")
    motion: str | None = Field(None, description="guide models: the trained audio->motion folder (kind: motion) that "
                               "builds the training guides and ships with the pipeline")
    locator: str | None = Field(None, description="guide models: the trained mouth-locator folder the pipeline ships")
    matte: str | None = Field(None, description="guide models: the trained person-matte folder the pipeline ships "
                              "(kind: matte; used with guide.hold_backdrop)")
    eval_clips: int = 2

    @model_validator(mode="after")
    def _check_stages(self) -> "DitTrainConfig":
        if not self.stages:
            raise ValueError("at least one stage is needed")
        return self

    @property
    def total_steps(self) -> int:
        """Sum of the stage budgets (run.steps caps it)."""
        return min(self.run.steps, sum(stage.steps for stage in self.stages))

    def stage_at(self, step: int) -> tuple[int, StageConfig]:
        """(index, stage) in effect at global `step` (0-based); the last stage holds past the end."""
        boundary = 0
        for index, stage in enumerate(self.stages):
            boundary += stage.steps
            if step < boundary:
                return index, stage
        return len(self.stages) - 1, self.stages[-1]


class LocatorDataConfig(_Strict):
    """Studio clips with keypoints: frames to learn from and the split that measures held-out error."""

    root: str
    split: str = "train"
    heldout_split: str = "val"
    max_clips: int | None = None
    heldout_clips: int | None = Field(None, description="at most this many held-out clips (None = the whole split)")
    framings: list[str] | None = Field(None, description="keep only clips of these framings (face, portrait, ...)")
    frames_per_clip: int = Field(12, ge=1, description="evenly spaced frames per clip, open and closed mouths alike")


class LocatorAugmentConfig(_Strict):
    """Random zoom/shift crops (box coords follow), flips, colour jitter, and no-mouth negatives."""

    zoom_min: float = Field(0.6, gt=0.0, description="crop side = image side / zoom; < 1 zooms out (border pixels pad)")
    zoom_max: float = Field(2.0, gt=0.0)
    margin: float = Field(0.12, ge=0.0, lt=0.5, description="the mouth centre stays this far inside the crop")
    flip_prob: float = Field(0.5, ge=0.0, le=1.0)
    brightness: float = Field(0.25, ge=0.0, description="pixel offset ~ U(-b, b) in [-1, 1] units")
    contrast: float = Field(0.3, ge=0.0, description="contrast factor ~ 1 + U(-c, c)")
    saturation: float = Field(0.4, ge=0.0, description="saturation factor ~ 1 + U(-s, s)")
    channel_shuffle_prob: float = Field(0.15, ge=0.0, le=1.0, description="permute RGB (other skin/background colours)")
    noise_std: float = Field(0.03, ge=0.0, description="additive Gaussian noise std ~ U(0, n)")
    blur_prob: float = Field(0.2, ge=0.0, le=1.0)
    negative_fraction: float = Field(0.3, ge=0.0, lt=1.0, description="share of each batch that shows no face mouth")


class LocatorLossConfig(_Strict):
    """Centre L1 (image units), log-width L1 and binary cross-entropy of the confidence logit."""

    centre: float = 10.0
    width: float = 1.0
    confidence: float = 0.5
    heatmap_ce: float = 0.05


class _FrameNetTrainConfig(_Strict):
    """What the small CNNs trained on studio frames share (the locator, the mouth reader, the matte): the run, the
    optimiser, their config overrides and where the trained folder goes."""

    run: RunConfig
    optim: OptimConfig = OptimConfig()
    model: dict[str, int | float | list[int]] = Field(default_factory=dict, description="the network's config overrides")
    export_dir: str | None = Field(None, description="write the trained network's folder (+ training.json) here")


class LocatorTrainConfig(_FrameNetTrainConfig):
    """`kind: locator`: train the MouthLocator (model/conditioning/mouth_locator.py) on studio frames + keypoints."""

    kind: Literal["locator"]
    data: LocatorDataConfig
    augment: LocatorAugmentConfig = LocatorAugmentConfig()
    loss: LocatorLossConfig = LocatorLossConfig()

    @model_validator(mode="after")
    def _check_zoom(self) -> "LocatorTrainConfig":
        if self.augment.zoom_min > self.augment.zoom_max:
            raise ValueError(f"augment.zoom_min {self.augment.zoom_min} exceeds zoom_max {self.augment.zoom_max}")
        return self


class MotionTrainConfig(_Strict):
    """`kind: motion`: the audio -> mouth-openness model (model/conditioning/motion.py) on cached audio windows."""

    kind: Literal["motion"]
    model: str
    vae: str = Field(description="the VAE the feature cache is built with (shared with the DiT's cache)")
    data: DataConfig
    run: RunConfig
    optim: OptimConfig = OptimConfig()
    hidden_size: int = Field(128, gt=0)
    vad_gate_prob: float = Field(0.7, ge=0.0, le=1.0, description="gate unvoiced frames to silence, as the server's VAD does")


class ReaderDataConfig(_Strict):
    """Studio clips with keypoint mouth openness: the frames to learn from and the held-out split."""

    root: str
    split: str = "train"
    heldout_split: str = "val"
    framings: list[str] | None = Field(None, description="keep only clips of these framings (face, portrait, ...)")
    frame_step: int = Field(3, ge=1, description="every this-many-th frame of each training clip")
    heldout_frame_step: int = Field(3, ge=1)


class ReaderAugmentConfig(_Strict):
    """Jittered lip boxes, decoded frames, colour changes and flips."""

    shift: float = Field(0.3, ge=0.0, description="box centre moves by up to +-shift/2 of the box width")
    scale: float = Field(0.3, ge=0.0, description="box size x (1 +- scale/2)")
    contrast: float = Field(0.2, ge=0.0, description="contrast factor ~ 1 + U(-c, c)")
    colour: float = Field(0.15, ge=0.0, description="per-channel offset ~ U(-c, c) in [-1, 1] units")
    channel_shuffle_prob: float = Field(0.2, ge=0.0, le=1.0, description="permute RGB (other skin colours)")
    flip_prob: float = Field(0.5, ge=0.0, le=1.0)
    vae_fraction: float = Field(0.5, ge=0.0, le=1.0, description="share of crops taken from the VAE's round trip")


class ReaderTrainConfig(_FrameNetTrainConfig):
    """`kind: reader`: the MouthReader evaluation instrument (model/train/mouth_reader.py) on studio frames."""

    kind: Literal["reader"]
    data: ReaderDataConfig
    augment: ReaderAugmentConfig = ReaderAugmentConfig()
    vae: str | None = Field(None, description="a VAE folder: decoded frames join the training (vae_fraction)")


class MatteDataConfig(_Strict):
    """Studio stills drawn with their person matte at training start (model/data/studio/matte.py); held-out
    identities come from their own seed."""

    seed: int = Field(41, ge=0, description="the identities' seed: another than the evaluation set's (faces-v2: 21)")
    identities: int = Field(400, ge=1)
    heldout_seed: int = Field(43, ge=0)
    heldout_identities: int = Field(40, ge=1)
    stills_per_identity: int = Field(6, ge=1)
    size: int = Field(128, ge=64, description="square stills of this side (the model's image_size)")
    framing_weights: dict[str, float] = Field(default_factory=lambda: {"face": 0.6, "portrait": 0.3, "half_body": 0.1})


class MatteAugmentConfig(_Strict):
    """Zoomed crops (the matte follows), flips and colour changes."""

    zoom_max: float = Field(1.5, ge=1.0, description="crop side = image side / zoom, zoom ~ U(1, zoom_max)")
    flip_prob: float = Field(0.5, ge=0.0, le=1.0)
    contrast: float = Field(0.3, ge=0.0, description="contrast factor ~ 1 + U(-c, c)")
    colour: float = Field(0.2, ge=0.0, description="per-channel offset ~ U(-c, c) in [-1, 1] units")
    channel_shuffle_prob: float = Field(0.3, ge=0.0, le=1.0, description="permute RGB (other skin/backdrop colours)")


class MatteTrainConfig(_FrameNetTrainConfig):
    """`kind: matte`: the PersonMatte (model/conditioning/person_matte.py) on studio stills and their coverage."""

    kind: Literal["matte"]
    data: MatteDataConfig = MatteDataConfig()
    augment: MatteAugmentConfig = MatteAugmentConfig()


TrainConfig = (VaeTrainConfig | DitTrainConfig | MotionTrainConfig | LocatorTrainConfig | ReaderTrainConfig
               | MatteTrainConfig)


#################################################################################
#                                   Loading                                     #
#################################################################################

def load_train_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read a training YAML (with dotted `overrides`) into its typed config; InputError names the file."""
    raw = read_yaml_config(path, "training config", overrides)
    kind = raw.get("kind")
    schema = {"vae": VaeTrainConfig, "dit": DitTrainConfig, "motion": MotionTrainConfig,
              "locator": LocatorTrainConfig, "reader": ReaderTrainConfig, "matte": MatteTrainConfig}.get(kind)
    if schema is None:
        raise InputError(f"training config {path}: 'kind' must be 'vae', 'dit', 'motion', 'locator', 'reader' or 'matte', "
                         f"got {kind!r}")
    return validate_config(schema, raw, path, "training config")
