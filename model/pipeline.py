"""AvatarPipeline: checkpoint folder -> live streams (open_stream/generate) and offline render()."""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model.blinks import BlinkBank, BlinkSchedule, build_blink_bank, locate_eyes
from model.conditioning.audio import AudioFeatureBuffer, LocalAudioEncoder
from model.conditioning.face_mouth import mouth_from_face
from model.conditioning.heatmaps import NUM_HEATMAP_CHANNELS, render_heatmaps
from model.conditioning.motion import MouthMotion
from model.conditioning.mouth import MouthBox
from model.conditioning.mouth_locator import MouthLocator
from model.conditioning.person_matte import PersonMatte
from model.conditioning.text import TextEncoder
from model.conditioning.vad import voiced_frames
from model.config import ModelConfig, load_model_config
from model.data.keypoints import NUM_KEYPOINTS
from model.detail import ReferenceDetail
from model.dit import OmniHumanDiT
from model.errors import InputError
from model.flow import Guidance
from model.guide import MouthBank, build_mouth_bank, draw_openings
from model.head_motion import HeadRig, HeadSway
from model.media import cover_crop, cover_crop_place
from model.pose_warp import PoseWarp, warp_frames
from model.streaming import ChunkConditions, StreamingSampler, StreamState
from model.vae import FrameVAE

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "weights" / "tiny"
PIPELINE_FILE = "pipeline.json"
PIPELINE_FORMAT = "omnilive-pipeline"
PIPELINE_VERSION = 1
RANDOM_INIT_STD = 0.02  # fills zero-initialised weights of a random-init model (see from_config)
# Where a checkpoint without a mouth locator draws the mouth of a guide model's avatar: the lip line of a
# centred face close-up (the studio's framing), in [0, 1] coordinates of the cropped reference.
FALLBACK_MOUTH = MouthBox(x=0.5, y=0.72, width=0.16)
# A person matte is taken as a misreading (the backdrop then moves with the head, as without a matte) when it
# covers less or more of the picture than MATTE_SHARE (the studio's people: 0.2-0.8 of their face and portrait
# crops) or not the mouth. Coverage is scaled by 1 / MATTE_SURE_BACKDROP (capped at 1): a pixel the matte gives
# even odds or more of being the person moves with it. On 12 val clips SSIM 0.760 / 0.762 / 0.762 at 0.1 / 0.5 / 1;
# 0.5 keeps the small haze a U-Net leaves at the picture's corners (0.05-0.08) mostly held.
MATTE_SHARE = (0.05, 0.95)
MATTE_SURE_BACKDROP = 0.5


#################################################################################
#                               Public data types                               #
#################################################################################

@dataclass(frozen=True)
class PipelineConfig:
    """The figures a caller of the pipeline needs (derived from the ModelConfig)."""

    name: str
    fps: int
    chunk_frames: int
    context_frames: int
    reference_frames: int
    steps: int
    min_steps: int
    lookahead_frames: int
    sample_rate: int
    height: int
    width: int

    @classmethod
    def from_model(cls, config: ModelConfig) -> "PipelineConfig":
        s = config.sampler
        return cls(name=config.name, fps=s.fps, chunk_frames=s.chunk_frames, context_frames=s.context_frames,
                   reference_frames=s.reference_frames, steps=s.steps, min_steps=min(s.min_steps, s.steps),
                   lookahead_frames=config.audio.lookahead_frames,
                   sample_rate=config.audio.sample_rate, height=config.video.height, width=config.video.width)

    @property
    def samples_per_frame(self) -> int:
        """Audio samples per video frame (640 at 16 kHz / 25 fps)."""
        return self.sample_rate // self.fps


@dataclass(frozen=True)
class StreamOptions:
    """Per-stream options; None falls back to the model config. guidance: Guidance or {"audio", "text"}."""

    text: str | None = None
    seed: int = 0
    steps: int | None = None
    guidance: Guidance | Mapping[str, float] | None = None


@dataclass(frozen=True)
class ReferenceFeatures:
    """An avatar image prepared once (cropped to the output size, VAE-encoded); shared by its streams."""

    latents: torch.Tensor  # [R, C, h, w] on the pipeline's device
    image: np.ndarray  # uint8 [H, W, 3], the cropped reference
    mouth_bank: MouthBank | None = None  # guide models: the avatar at several mouth openings
    still: np.ndarray | None = None  # guide models: uint8 [H, W, 3], the frame the model shows with the mouth shut
    blink: BlinkBank | None = None  # guide models with blinks, when the avatar's eyes were found: its eyes shut
    head: HeadRig | None = None  # guide models with head motion: the control points that sway its head
    detail: ReferenceDetail | None = None  # guide models with detail_fade: the picture's detail the VAE loses
    person: np.ndarray | None = None  # float32 [H, W] in [0, 1], hold_backdrop: the person, grown by matte_margin

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclass
class LatentChunk:
    """A sampled chunk before VAE decoding."""

    stream: "AvatarStream"
    latents: torch.Tensor  # [F, C, h, w]
    first_frame: int
    mouth_open: np.ndarray | None = None  # float32 [F] openness that drove the mouth guide
    eyes_shut: np.ndarray | None = None  # float32 [F] eye closure of the guide (blinks)
    head: torch.Tensor | None = None  # [F or 1, H, W, 2] pose-warp grids for the decoded frames (model/pose_warp.py)


@dataclass
class Chunk:
    """F decoded frames of one stream and the stream audio time each was generated from."""

    stream: "AvatarStream"
    frames: np.ndarray  # uint8 [F, H, W, 3]
    audio_time_s: np.ndarray  # float64 [F]
    first_frame: int
    mouth_open: np.ndarray | None = None  # float32 [F] predicted mouth openness (guide models), for clients' rigs


#################################################################################
#                                  AvatarStream                                 #
#################################################################################

class AvatarStream:
    """One live session: audio features buffer, text/pose conditions and the sampler's StreamState.

    Thread-safe: audio may be pushed from one thread while another runs `AvatarPipeline.generate`.
    """

    def __init__(self, pipeline: "AvatarPipeline", reference: ReferenceFeatures, options: StreamOptions,
                 state: StreamState, audio: AudioFeatureBuffer):
        self.pipeline = pipeline
        self.reference = reference
        self.options = options
        self.state = state
        self._audio = audio
        self._lock = threading.Lock()
        self._text: torch.Tensor | None = None
        self._pose: torch.Tensor | None = None  # [G, h, w] heatmaps held until changed
        self._warp: PoseWarp | None = None  # anchored at the first pose after none
        self._head: torch.Tensor | None = None  # [1, H, W, 2] the held pose's warp grid
        self._guidance = _guidance(options.guidance, pipeline.model_config)
        self._blinks = BlinkSchedule(options.seed, pipeline.config.fps) if reference.blink is not None else None
        self._sway = HeadSway(options.seed, pipeline.config.fps) if reference.head is not None else None
        self.closed = False
        self.set_text(options.text)

    # ---------------------------------------------------------------- inputs

    def push_audio(self, pcm: np.ndarray | torch.Tensor, voiced: bool = True) -> None:
        """Append float32 mono 16 kHz samples (any length); voiced=False conditions them as silence."""
        samples = torch.as_tensor(np.asarray(pcm, dtype=np.float32)).reshape(-1)
        if not bool(torch.isfinite(samples).all()):
            raise InputError("audio samples must be finite")
        with self._lock:
            self._check_open()
            self._audio.push(samples, voiced=voiced)

    def clear_buffer(self) -> None:
        """Barge-in: drop audio not yet turned into frames; audio pushed next drives the next frame."""
        with self._lock:
            self._check_open()
            self._audio.reset(self.state.frame_index)

    def set_text(self, text: str | None) -> None:
        """Text condition for the following chunks (None or empty: the model's learned null text)."""
        embedding = self.pipeline.text_encoder.encode(text)
        with self._lock:
            self._text = embedding

    def set_pose(self, keypoints: np.ndarray | Sequence[Sequence[float]] | None) -> None:
        """Pose for the following chunks: [K, 3] (x, y in [0, 1], visibility) or None (free motion). The
        head follows the pose relative to the first one set after None (model/pose_warp.py)."""
        if keypoints is None:
            with self._lock:
                self._pose, self._warp, self._head = None, None, None
            return
        points = _pose_points(keypoints)  # [K, 3]
        heatmaps = self.pipeline.heatmaps(points[None, :, :2], points[None, :, 2], self.reference)[0]  # [G, h, w]
        warp = self._warp or self.pipeline.pose_warp(points, self.reference)
        grid = warp.grid(points)
        with self._lock:
            self._pose, self._warp, self._head = heatmaps, warp, None if grid is None else grid[None]

    # ---------------------------------------------------------------- state

    @property
    def frame_index(self) -> int:
        """Index of the next frame this stream will generate."""
        return self.state.frame_index

    @property
    def grid(self) -> tuple[int, int]:
        """Latent grid (h, w); streams batch together only when it matches."""
        return self.state.grid

    def audio_time(self, frame: int) -> float:
        """Stream audio time (s) a frame is generated from and should be shown with."""
        return frame / self.pipeline.config.fps

    def ready(self) -> bool:
        """Whether enough audio arrived for one more chunk (F frames + look-ahead)."""
        with self._lock:
            return not self.closed and self._audio.ready(self.state.frame_index, self.pipeline.config.chunk_frames)

    def next_conditions(self, pose: torch.Tensor | None = None,
                        head: torch.Tensor | None = None) -> ChunkConditions | None:
        """Consume the audio of the next chunk (None when closed or short of audio); `pose`
        [F, G, h, w] and its warp grids `head` [F, H, W, 2] override the held pose."""
        f = self.pipeline.config.chunk_frames
        with self._lock:
            if self.closed or not self._audio.ready(self.state.frame_index, f):
                return None
            windows = self._audio.windows(self.state.frame_index, f)  # [F, W, K, A]
            if pose is None and self._pose is not None:
                pose = self._pose[None].expand(f, *self._pose.shape)  # [F, G, h, w]
                head = self._head
            openness, guide = self.pipeline.mouth_guide(windows, self.reference)
            shut = None
            if guide is not None and self.reference.blink is not None and self._blinks is not None:
                shut = self._blinks.closedness(self.state.frame_index, f)  # [F]
                guide = self.reference.blink.apply(guide, shut)
            if pose is None and openness is not None and self.reference.head is not None and self._sway is not None:
                poses = self._sway.poses(self.state.frame_index, openness.float().cpu().numpy())  # [F, 3]
                head = self.reference.head.grids(poses)
            return ChunkConditions(audio=windows, pose=pose, text=self._text, guidance=self._guidance, guide=guide,
                                   mouth_open=openness, eyes_shut=shut, head=head)

    def close(self) -> None:
        """Free the caches; the stream cannot be used afterwards (call it between generate calls)."""
        with self._lock:
            self.closed = True
            self.state.close()

    def _check_open(self) -> None:
        if self.closed:
            raise InputError("the stream is closed")


#################################################################################
#                                 AvatarPipeline                                #
#################################################################################

class AvatarPipeline:
    """DiT + VAE + conditioning; the only door from the server and the CLI into the model."""

    def __init__(self, model_config: ModelConfig, dit: OmniHumanDiT, vae: FrameVAE,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 motion: MouthMotion | None = None, locator: MouthLocator | None = None,
                 matte: PersonMatte | None = None):
        self.model_config = model_config
        self.config = PipelineConfig.from_model(model_config)
        self.device = torch.device(device)
        # diffusers wraps ModelMixin.to in functools.wraps, whose type does not bind `self`: hence the ignores
        self.dit = (dit.to(self.device) if dtype == dit.dtype else dit.to(self.device, dtype)).eval()  # type: ignore[arg-type]
        self.vae = vae.to(self.device, dtype).eval()
        self.motion = None if motion is None else motion.to(self.device).eval()  # type: ignore[arg-type]
        self.locator = None if locator is None else locator.eval()  # runs on the CPU, once per avatar
        self.matte = None if matte is None else matte.eval()  # runs on the CPU, once per avatar
        self.sampler = StreamingSampler(self.dit, model_config)
        self.text_encoder = TextEncoder(self.device)
        self._local_audio = LocalAudioEncoder(model_config) if model_config.audio.encoder == "local" else None
        if self.vae.latent_channels != self.dit.config.latent_channels:
            raise InputError(f"VAE latents have {self.vae.latent_channels} channels, "
                             f"the DiT expects {self.dit.config.latent_channels}")

    def set_decode_precision(self, precision: str) -> None:
        """The VAE decode's arithmetic: "float32" (the default), "bfloat16" or "auto" (model/vae.py)."""
        self.vae.set_decode_precision(precision)

    @property
    def guided(self) -> bool:
        """Whether the DiT takes a mouth guide (model/guide.py)."""
        return bool(self.dit.config.concat_guide)

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_config(cls, config: str | Path | ModelConfig, seed: int = 0, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32, zero_init: bool = False) -> "AvatarPipeline":
        """Untrained pipeline (speed measurement, tests). zero_init=False also fills the DiT's
        zero-initialised output layers with small noise, so every condition changes the output, and
        spreads the random decoder's output over the pixel range (instead of near-black frames)."""
        model_config = config if isinstance(config, ModelConfig) else load_model_config(config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            dit = OmniHumanDiT(**model_config.dit_kwargs())
            vae = FrameVAE.from_config(model_config.vae)
            if not zero_init:
                with torch.no_grad():
                    for parameter in dit.parameters():
                        if not parameter.any():
                            parameter.normal_(std=RANDOM_INIT_STD)
                vae.spread_random_output(seed)
        return cls(model_config, dit, vae, device=device, dtype=dtype)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> "AvatarPipeline":
        """Load DIR/{pipeline.json, dit/, vae/[, audio/]} written by save_pretrained; never downloads."""
        path = Path(path)
        meta_path = path / PIPELINE_FILE
        if not meta_path.is_file():
            raise InputError(f"{path} is not an omnilive checkpoint folder ({PIPELINE_FILE} missing)")
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != PIPELINE_FORMAT or meta.get("version") != PIPELINE_VERSION:
                raise InputError(f"{meta_path}: unsupported format {meta.get('format')!r} "
                                 f"version {meta.get('version')!r}")
            model_config = ModelConfig.model_validate(meta["model"])
        except (json.JSONDecodeError, KeyError, ValueError) as error:
            raise InputError(f"{meta_path} is not a valid pipeline description: {error}") from error
        if model_config.audio.encoder == "local":
            local = Path(model_config.audio.local_encoder_path or "")
            audio = model_config.audio.model_copy(update={"local_encoder_path": str(path / local)})
            model_config = model_config.model_copy(update={"audio": audio})
        for part in ("dit", "vae"):
            if not (path / part / "config.json").is_file():
                raise InputError(f"checkpoint {path} has no {part}/ weights")
        dit = OmniHumanDiT.from_pretrained(str(path / "dit"), local_files_only=True)
        vae = FrameVAE.from_pretrained(path / "vae")
        motion = MouthMotion.from_pretrained(str(path / "motion")) if (path / "motion" / "config.json").is_file() else None
        locator = MouthLocator.from_pretrained(str(path / "locator")) if (path / "locator" / "config.json").is_file() else None
        matte = PersonMatte.from_pretrained(str(path / "matte")) if (path / "matte" / "config.json").is_file() else None
        logger.info("loaded %s pipeline from %s", model_config.name, path)
        return cls(model_config, dit, vae, device=device, dtype=dtype, motion=motion, locator=locator, matte=matte)

    def save_pretrained(self, path: str | Path) -> None:
        """Write DIR/pipeline.json (model config), dit/ and vae/ (safetensors), audio/ for a local encoder."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        model_config = self.model_config
        if model_config.audio.encoder == "local":
            (path / "audio").mkdir(exist_ok=True)
            shutil.copy2(Path(model_config.audio.local_encoder_path or "") / "encoder.pt", path / "audio" / "encoder.pt")
            audio = model_config.audio.model_copy(update={"local_encoder_path": "audio"})
            model_config = model_config.model_copy(update={"audio": audio})
        self.dit.save_pretrained(str(path / "dit"), safe_serialization=True)
        self.vae.save_pretrained(path / "vae")
        for name, part in self._parts():
            if part is not None:
                part.save_pretrained(str(path / name), safe_serialization=True)
        meta = {"format": PIPELINE_FORMAT, "version": PIPELINE_VERSION, "model": model_config.model_dump(mode="json")}
        (path / PIPELINE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        logger.info("saved pipeline to %s", path)

    @property
    def num_parameters(self) -> dict[str, int]:
        """Parameter counts of the DiT and the VAE."""
        counts = {"dit": sum(p.numel() for p in self.dit.parameters()),
                  "vae": sum(p.numel() for p in self.vae.parameters())}
        for name, part in self._parts():
            if part is not None:
                counts[name] = sum(p.numel() for p in part.parameters())
        return counts

    def _parts(self) -> list[tuple[str, MouthMotion | MouthLocator | PersonMatte | None]]:
        """The small networks a checkpoint may ship beside the DiT and the VAE, by folder name."""
        return [("motion", self.motion), ("locator", self.locator), ("matte", self.matte)]

    # ---------------------------------------------------------------- references and streams

    @torch.inference_mode()
    def encode_reference(self, image: Image.Image | np.ndarray, height: int | None = None,
                         width: int | None = None, mouth: MouthBox | None = None) -> ReferenceFeatures:
        """Resize (cover) + center-crop to height x width (default: the config's), VAE-encode once. A guide
        model also draws the avatar's mouth bank here, at `mouth` (its closed mouth on `image` as given, in
        [0, 1] fractions of that image) or where the checkpoint's mouth locator finds it (InputError when it
        finds none)."""
        height = height or self.config.height
        width = width or self.config.width
        self.model_config.check_size(height, width)
        picture = _as_pil(image)
        pixels = cover_crop(picture, height, width)  # uint8 [H, W, 3]
        if mouth is not None:
            mouth = _cropped_mouth(mouth, picture.size, height, width)
        bank = still = blink = head = detail = person = None
        if self.guided:
            guide = self.model_config.guide
            box = mouth or self._find_mouth(picture, pixels)
            bank = build_mouth_bank(pixels, box, self.vae.encode, guide.openings,
                                    guide.cell_threshold).to(self.device, self.dit.dtype)
            latents = bank.latents[:1]  # opening 0 is the reference itself
            eyes = locate_eyes(pixels, box) if guide.blinks else None
            if eyes is not None:
                blink = build_blink_bank(pixels, eyes, latents[0], self.vae.encode,
                                         guide.cell_threshold).to(self.device, self.dit.dtype)
            elif guide.blinks:
                logger.info("no eyes found above the mouth at %s: this avatar does not blink", box.as_list())
            head = HeadRig(box, height, width) if guide.head_motion else None
            if guide.hold_backdrop:
                person = self.person_matte(pixels, box)
            if guide.detail_fade > 0:
                detail = ReferenceDetail.build(pixels, bank, self.vae.decode_uint8, guide.detail_fade, blink)
                still = detail.still
            else:
                still = self.vae.decode_uint8(latents).numpy()[0]
        else:
            latents = self.vae.encode(torch.from_numpy(pixels).permute(2, 0, 1)[None])  # [1, C, h, w]
        latents = latents.expand(self.config.reference_frames, *latents.shape[1:]).contiguous()  # [R, C, h, w]
        return ReferenceFeatures(latents=latents, image=pixels, mouth_bank=bank, still=still, blink=blink, head=head,
                                 detail=detail, person=person)

    def person_matte(self, image: np.ndarray, mouth: MouthBox) -> np.ndarray | None:
        """Where the person is on a cropped reference uint8 [H, W, 3], its jaw at any opening of the mouth at
        `mouth`: float32 [H, W] in [0, 1], grown by guide.matte_margin px, where anything but sure backdrop counts
        as person; None (the head warp moves the backdrop with it) without a matte or when the matte misses the
        mouth or covers next to nothing or nearly everything."""
        if self.matte is None:
            logger.warning("the %s checkpoint has no person matte: the backdrop moves with the head",
                           self.model_config.name)
            return None
        coverage = self.matte.coverage(image)  # [H, W]
        height, width = coverage.shape
        at_mouth = coverage[min(int(mouth.y * height), height - 1), min(int(mouth.x * width), width - 1)]
        share = float(coverage.mean())
        if at_mouth < 0.5 or not MATTE_SHARE[0] <= share <= MATTE_SHARE[1]:
            logger.info("person matte not used (%.2f at the mouth, %.2f of the picture): the backdrop moves with "
                        "the head", at_mouth, share)
            return None
        # an open mouth pulls the jaw below the closed picture's chin: the person is the union of both pictures
        # (the jaw moves monotonically with the opening), else the head warp leaves the jaw's new part behind
        widest = draw_openings(image, mouth, torch.ones(1))[0].permute(1, 2, 0).numpy()  # uint8 [H, W, 3]
        coverage = np.maximum(coverage, self.matte.coverage(widest))
        margin = self.model_config.guide.matte_margin
        grown = torch.from_numpy(np.minimum(coverage / MATTE_SURE_BACKDROP, 1.0))[None, None]  # [1, 1, H, W]
        if margin > 0:
            grown = torch.nn.functional.max_pool2d(grown, 2 * margin + 1, stride=1, padding=margin)
        return grown[0, 0].numpy()

    def _find_mouth(self, picture: Image.Image, pixels: np.ndarray) -> MouthBox:
        """The closed mouth on the cropped reference `pixels`: the locator's, else (it found none: a photo) the
        lip line of the largest frontal face on `picture` as uploaded, moved onto the crop; the locator's
        InputError when neither finds one."""
        try:
            return self.locate_mouth(pixels)
        except InputError as not_found:
            found = mouth_from_face(np.asarray(picture))  # _as_pil made it RGB
            if found is None:
                raise not_found from None
            logger.info("the mouth locator found no mouth (%s); a frontal face puts it at %s of the picture",
                        not_found, [round(v, 3) for v in found.as_list()])
            return _cropped_mouth(found, picture.size, *pixels.shape[:2])

    def locate_mouth(self, image: np.ndarray) -> MouthBox:
        """The closed mouth on a cropped reference uint8 [H, W, 3]: the checkpoint's locator (InputError when
        it finds no mouth), or FALLBACK_MOUTH for a checkpoint without one."""
        if self.locator is None:
            logger.warning("the %s checkpoint has no mouth locator: the mouth is drawn at the centred face "
                           "close-up's lip line %s", self.config.name, FALLBACK_MOUTH.as_list())
            return FALLBACK_MOUTH
        return self.locator.locate(image)

    @torch.inference_mode()
    def mouth_guide(self, windows: torch.Tensor, reference: ReferenceFeatures) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Audio windows [F, W, K, A] -> (openness [F], guide latents [F, C, h, w]); (None, None) without a
        guide model, motion model or bank."""
        if self.motion is None or reference.mouth_bank is None:
            return None, None
        openness = self.motion(windows.to(self.device))  # [F]
        return openness, reference.mouth_bank.blend(openness)

    def open_stream(self, reference: ReferenceFeatures, options: StreamOptions | None = None) -> AvatarStream:
        """A new live stream on a prepared reference (reference K/V computed here, once)."""
        options = options or StreamOptions()
        if options.steps is not None and options.steps < 1:
            raise InputError(f"steps must be >= 1, got {options.steps}")
        cells = None if reference.mouth_bank is None else reference.mouth_bank.mouth_cells
        state = self.sampler.init_state(reference.latents, seed=options.seed, mouth_cells=cells)
        audio = AudioFeatureBuffer(self.model_config, encoder=self._local_audio)
        return AvatarStream(self, reference, options, state, audio)

    # ---------------------------------------------------------------- pose

    def pose_warp(self, anchor: np.ndarray, reference: ReferenceFeatures) -> PoseWarp:
        """The head motion of a stream anchored at pose `anchor` [K, 3], aligned to the avatar's mouth."""
        mouth = reference.mouth_bank.box if reference.mouth_bank is not None else None
        return PoseWarp(anchor, reference.height, reference.width, mouth)

    def heatmaps(self, xy: np.ndarray, visibility: np.ndarray, reference: ReferenceFeatures) -> torch.Tensor:
        """Keypoints [T, K, 2] + visibility [T, K] -> heatmaps [T, G, h, w] on the device."""
        expected = self.dit.config.pose_channels
        if expected == 0:
            raise InputError(f"the {self.config.name} model was built without a pose guider: it cannot take a pose")
        if expected != NUM_HEATMAP_CHANNELS:
            raise ValueError(f"the DiT's pose guider takes {expected} channels, heatmaps have {NUM_HEATMAP_CHANNELS}")
        h, w = reference.latents.shape[-2:]
        return render_heatmaps(xy, visibility, h, w).to(self.device, self.dit.dtype)

    # ---------------------------------------------------------------- generation

    def sample(self, streams: Sequence[AvatarStream], steps: int | None = None,
               naive: bool = False) -> list[LatentChunk]:
        """Next chunk's latents for every ready stream: one batched sampler call per (grid, steps).

        naive=True runs the cache-free reference path (the streams can then only continue naively).
        """
        groups: dict[tuple[tuple[int, int], int], list[tuple[AvatarStream, ChunkConditions]]] = {}
        for stream in streams:
            conditions = stream.next_conditions()
            if conditions is not None:
                key = (stream.grid, steps or stream.options.steps or self.config.steps)
                groups.setdefault(key, []).append((stream, conditions))
        run = self.sampler.naive_generate if naive else self.sampler.generate
        out: dict[int, LatentChunk] = {}
        for (_, group_steps), group in groups.items():
            first = [stream.frame_index for stream, _ in group]
            latents = run([stream.state for stream, _ in group], [c for _, c in group],
                          steps=group_steps)  # [B, F, C, h, w]
            for (stream, conditions), start, chunk in zip(group, first, latents):
                out[id(stream)] = LatentChunk(stream=stream, latents=chunk, first_frame=start,
                                              mouth_open=_numpy(conditions.mouth_open),
                                              eyes_shut=_numpy(conditions.eyes_shut), head=conditions.head)
        return [out[id(s)] for s in streams if id(s) in out]

    @torch.inference_mode()
    def decode(self, chunks: Sequence[LatentChunk]) -> list[Chunk]:
        """VAE-decode sampled chunks (one batch per frame size) into uint8 frames + audio times."""
        decoded: dict[int, np.ndarray] = {}
        by_grid: dict[tuple[int, ...], list[int]] = {}
        for i, chunk in enumerate(chunks):
            by_grid.setdefault(tuple(chunk.latents.shape), []).append(i)
        for members in by_grid.values():
            latents = torch.cat([chunks[i].latents for i in members])  # [B*F, C, h, w]
            frames = self.vae.decode_uint8(latents).numpy()  # [B*F, H, W, 3]
            for member, part in zip(members, np.array_split(frames, len(members))):
                decoded[member] = part
        for i, chunk in enumerate(chunks):
            detail = chunk.stream.reference.detail
            if detail is not None:
                decoded[i] = detail.apply(decoded[i], chunk.mouth_open, chunk.eyes_shut)
            if chunk.head is not None:
                decoded[i] = warp_frames(decoded[i], chunk.head, chunk.stream.reference.person)
        return [Chunk(stream=c.stream, frames=decoded[i],
                      audio_time_s=np.array([c.stream.audio_time(c.first_frame + k) for k in range(len(decoded[i]))]),
                      first_frame=c.first_frame, mouth_open=c.mouth_open) for i, c in enumerate(chunks)]

    def generate(self, streams: Sequence[AvatarStream], steps: int | None = None) -> list[Chunk]:
        """One chunk for every ready stream (input order; streams that are not ready are skipped)."""
        return self.decode(self.sample(streams, steps))

    # ---------------------------------------------------------------- offline render

    def render(self, image: Image.Image | np.ndarray, audio: np.ndarray, pose: tuple[np.ndarray, np.ndarray] | None = None,
               text: str | None = None, seed: int = 0, steps: int | None = None, vad: bool = True) -> np.ndarray:
        """Offline video for a whole clip: uint8 [T, H, W, 3], T = ceil(duration * fps) (see iter_render)."""
        return np.concatenate(list(self.iter_render(image, audio, pose=pose, text=text, seed=seed, steps=steps, vad=vad)))

    def iter_render(self, image: Image.Image | np.ndarray, audio: np.ndarray,
                    pose: tuple[np.ndarray, np.ndarray] | None = None, text: str | None = None, seed: int = 0,
                    steps: int | None = None, vad: bool = True) -> Iterator[np.ndarray]:
        """render() chunk by chunk: uint8 [n, H, W, 3] per chunk (the last one cut to T frames in all), made
        by the streaming sampler with the tail padded with silence; memory does not grow with the length.
        pose = (xy [T', K, 2], visibility [T', K]), its last pose held; vad=True gates non-speech frames
        to silence like a live session (silero-vad)."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size == 0:
            raise InputError("audio is empty (0 samples)")
        if not np.isfinite(audio).all():
            raise InputError("audio samples must be finite")
        cfg = self.config
        spf = cfg.samples_per_frame
        total = math.ceil(audio.size / spf)  # = ceil(duration * fps)
        chunks = math.ceil(total / cfg.chunk_frames)
        padded_frames = chunks * cfg.chunk_frames + cfg.lookahead_frames
        padded = np.zeros(padded_frames * spf, np.float32)
        padded[: audio.size] = audio
        reference = self.encode_reference(image)
        poses = _clip_poses(pose, chunks * cfg.chunk_frames) if pose is not None else None  # [T, K, 3]
        heatmaps = self.heatmaps(poses[..., :2], poses[..., 2], reference) if poses is not None else None
        voiced = np.zeros(padded_frames, dtype=bool)
        voiced[:total] = voiced_frames(audio, total, spf).numpy() if vad else True
        return self._render_chunks(reference, padded, voiced, heatmaps, poses, total, text, seed, steps)

    def _render_chunks(self, reference: ReferenceFeatures, padded: np.ndarray, voiced: np.ndarray,
                       heatmaps: torch.Tensor | None, poses: np.ndarray | None, total: int, text: str | None,
                       seed: int, steps: int | None) -> Iterator[np.ndarray]:
        """The generator behind iter_render (inputs already checked, so errors surface before the first chunk)."""
        cfg = self.config
        spf = cfg.samples_per_frame
        stream = self.open_stream(reference, StreamOptions(text=text, seed=seed, steps=steps))
        warp = None if poses is None else self.pose_warp(poses[0], reference)
        try:
            for frame, flag in enumerate(voiced):
                stream.push_audio(padded[frame * spf : (frame + 1) * spf], voiced=bool(flag))
            for f0 in range(0, total, cfg.chunk_frames):
                chunk_pose = None if heatmaps is None else heatmaps[f0 : f0 + cfg.chunk_frames]
                head = None if warp is None or poses is None else warp.grids(poses[f0 : f0 + cfg.chunk_frames])
                frames = self.decode([self._sample_one(stream, chunk_pose, head, steps)])[0].frames
                yield frames[: total - f0]
        finally:
            stream.close()

    @torch.inference_mode()
    def _sample_one(self, stream: AvatarStream, pose: torch.Tensor | None, head: torch.Tensor | None,
                    steps: int | None) -> LatentChunk:
        """One chunk of one stream with an explicit per-frame pose and its warp grids (offline rendering)."""
        start = stream.frame_index
        conditions = stream.next_conditions(pose=pose, head=head)
        if conditions is None:
            raise RuntimeError("render padded the audio, yet the stream is short of it")
        latents = self.sampler.generate([stream.state], [conditions], steps=steps or stream.options.steps)
        return LatentChunk(stream=stream, latents=latents[0], first_frame=start, mouth_open=_numpy(conditions.mouth_open),
                           eyes_shut=_numpy(conditions.eyes_shut), head=conditions.head)


#################################################################################
#                                    Helpers                                    #
#################################################################################

def _cropped_mouth(mouth: MouthBox, source: tuple[int, int], height: int, width: int) -> MouthBox:
    """A mouth box on a source image (width, height) -> the same mouth on its cover crop; InputError when the
    crop cuts it off."""
    x, y, length = cover_crop_place(mouth.x, mouth.y, mouth.width, source, height, width)
    if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        raise InputError(f"the mouth at {mouth.as_list()} lies outside the centred {width}x{height} crop the avatar "
                         "shows: crop the picture around the face")
    return MouthBox(x=x, y=y, width=length)


def _as_pil(image: Image.Image | np.ndarray) -> Image.Image:
    """PIL image or uint8 [H, W, 3] array -> RGB PIL image; InputError otherwise."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
        raise InputError(f"reference image must be uint8 [H, W, 3], got {array.dtype} {list(array.shape)}")
    return Image.fromarray(array, "RGB")


def _numpy(values: torch.Tensor | None) -> np.ndarray | None:
    """A small tensor as a float32 NumPy array on the CPU (None stays None)."""
    return None if values is None else values.detach().float().cpu().numpy()


def _as_float_array(value: object, what: str) -> np.ndarray:
    """float32 array (NaN marks a missing keypoint); InputError when not a regular array of numbers."""
    try:
        return np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise InputError(f"{what} must be a regular array of numbers: {error}") from error


def _pose_points(keypoints: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """One pose [K, 3] (x, y in [0, 1], visibility) or [K, 2] as [K, 3] (visibility 1 where not given);
    InputError when it is not one."""
    points = _as_float_array(keypoints, "pose keypoints")
    if points.ndim != 2 or points.shape[0] != NUM_KEYPOINTS or points.shape[1] not in (2, 3):
        raise InputError(f"pose must be [{NUM_KEYPOINTS}, 3] (x, y, visibility), got {list(points.shape)}")
    return points if points.shape[1] == 3 else np.c_[points, np.ones(len(points), np.float32)]


def _clip_poses(pose: tuple[np.ndarray, np.ndarray], num_frames: int) -> np.ndarray:
    """A clip's pose (xy [T', K, 2], visibility [T', K]) as [num_frames, K, 3]: the last pose held when the clip
    is shorter than the video, extra poses dropped; InputError when it is not one."""
    xy, visibility = (_as_float_array(a, "pose keypoints") for a in pose)
    if xy.ndim != 3 or xy.shape[0] == 0 or xy.shape[1:] != (NUM_KEYPOINTS, 2) or visibility.shape != xy.shape[:2]:
        raise InputError(f"pose must be xy [T, {NUM_KEYPOINTS}, 2] and visibility [T, {NUM_KEYPOINTS}], "
                         f"got {list(xy.shape)} and {list(visibility.shape)}")
    index = np.minimum(np.arange(num_frames), xy.shape[0] - 1)
    return np.concatenate([xy[index], visibility[index, :, None]], axis=-1)


def _guidance(option: Guidance | Mapping[str, float] | None, config: ModelConfig) -> Guidance | None:
    """Stream guidance: None (the config's), a Guidance, or {"audio", "text"} scales on the config's annealing."""
    if option is None or isinstance(option, Guidance):
        return option
    unknown = set(option) - {"audio", "text"}
    if unknown:
        raise InputError(f"unknown guidance keys: {sorted(unknown)} (expected 'audio', 'text')")
    base = Guidance.from_config(config.sampler)
    scales = {key: float(value) for key, value in option.items()}
    if any(not math.isfinite(v) or v < 0 for v in scales.values()):
        raise InputError(f"guidance scales must be finite and >= 0, got {scales}")
    return Guidance(audio=scales.get("audio", base.audio), text=scales.get("text", base.text),
                    anneal=base.anneal, min_scale=base.min_scale)
