"""FrameVAE: a per-frame autoencoder (diffusers AutoencoderTiny) between RGB frames and DiT latents."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import AutoencoderTiny
from safetensors.torch import load_file
from torch import nn

from model.config import VAESection
from model.errors import InputError

logger = logging.getLogger(__name__)

SAFETENSORS_NAME = "diffusion_pytorch_model.safetensors"  # what save_pretrained writes
# the decoder's arithmetic: "auto" is bfloat16 where the device runs it natively (see native_bfloat16), else float32
DECODE_PRECISIONS = ("auto", "float32", "bfloat16")
RANDOM_OUTPUT_STD = 0.25  # pixel spread ([0, 1] units) of a random-init decoder after spread_random_output


#################################################################################
#                                   FrameVAE                                    #
#################################################################################

class FrameVAE(nn.Module):
    """AutoencoderTiny with latent scaling: frames in [-1, 1] <-> scaled latents for the DiT."""

    def __init__(self, autoencoder: AutoencoderTiny):
        super().__init__()
        # channels-last convolutions: ~30% less CPU per decoded frame, same results to float rounding
        self.autoencoder = autoencoder.to(memory_format=torch.channels_last)
        self.decode_bfloat16 = False  # decode's convolutions under bfloat16 autocast (set_decode_precision)

    def set_decode_precision(self, precision: str) -> None:
        """"float32", "bfloat16" (the decoder's convolutions under autocast, weights and output stay float32;
        frames differ from float32 by a few uint8 levels at most) or "auto" (bfloat16 where native_bfloat16)."""
        if precision not in DECODE_PRECISIONS:
            raise InputError(f"decode precision must be one of {DECODE_PRECISIONS}, got {precision!r}")
        self.decode_bfloat16 = precision == "bfloat16" or (precision == "auto" and native_bfloat16(self.device))

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_config(cls, section: VAESection) -> "FrameVAE":
        """A randomly initialised VAE sized by the model config's `vae` section."""
        return cls(AutoencoderTiny(**section.model_dump()))

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> "FrameVAE":
        """Load a folder written by `save_pretrained` (config.json + safetensors); never downloads."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise InputError(f"no VAE checkpoint in {path} (config.json missing)")
        config = AutoencoderTiny.load_config(str(path), local_files_only=True)
        config.pop("block_out_channels", None)  # AutoencoderTiny writes it itself and warns when it reads it back
        autoencoder = AutoencoderTiny.from_config(config)
        autoencoder.load_state_dict(load_file(path / SAFETENSORS_NAME), strict=True)
        autoencoder.register_to_config(_name_or_path=str(path))
        return cls(autoencoder).to(device).eval()

    def save_pretrained(self, path: str | Path) -> None:
        """Write config.json + diffusion_pytorch_model.safetensors into `path`."""
        self.autoencoder.save_pretrained(str(path), safe_serialization=True)

    @torch.no_grad()
    def spread_random_output(self, seed: int = 0, target_std: float = RANDOM_OUTPUT_STD) -> None:
        """Untrained decoders emit near-black frames; rescale the last conv so unit-normal latents decode
        to mid-grey frames with a visible spread (random-init models for speed tests only)."""
        generator = torch.Generator().manual_seed(seed)
        probe = torch.randn(4, self.latent_channels, 8, 8, generator=generator).to(self.device, self.dtype)
        unit = (self.autoencoder.decode(probe).sample + 1.0) / 2.0  # decoder layers' output, [0, 1] space
        last = self.autoencoder.decoder.layers[-1]
        mean = unit.mean(dim=(0, 2, 3))  # [3]
        scale = target_std / unit.std(dim=(0, 2, 3)).clamp_min(1e-6)  # [3]
        last.weight.mul_(scale[:, None, None, None])
        last.bias.copy_((last.bias - mean) * scale + 0.5)

    # ---------------------------------------------------------------- properties

    @property
    def latent_channels(self) -> int:
        """Channels of one latent frame."""
        return int(self.autoencoder.config.latent_channels)

    @property
    def downsample(self) -> int:
        """Spatial down-sampling factor (pixels per latent cell along one side)."""
        return 2 ** (len(self.autoencoder.config.encoder_block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        """Multiplier that brings raw latents to roughly unit variance."""
        return float(self.autoencoder.config.scaling_factor)

    @property
    def shift_factor(self) -> float:
        """Offset subtracted from raw latents before scaling."""
        return float(self.autoencoder.config.shift_factor or 0.0)

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the weights."""
        return next(self.parameters()).dtype

    # ---------------------------------------------------------------- encode / decode

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """Latent grid (h, w) of a frame of `height` x `width` pixels."""
        if height % self.downsample or width % self.downsample:
            raise ValueError(f"frame size {height}x{width} is not a multiple of {self.downsample}")
        return height // self.downsample, width // self.downsample

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames [N, 3, H, W] (uint8 0..255, or float in [-1, 1]) -> scaled latents [N, C, H/d, W/d]."""
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"expected frames [N, 3, H, W], got {tuple(frames.shape)}")
        self.latent_size(frames.shape[-2], frames.shape[-1])
        pixels = to_signed_unit(frames).to(device=self.device, dtype=self.dtype, memory_format=torch.channels_last)
        raw = self.autoencoder.encode(pixels).latents.contiguous()
        return (raw - self.shift_factor) * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents [N, C, h, w] -> frames float [N, 3, h*d, w*d] in [-1, 1]."""
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"expected latents [N, {self.latent_channels}, h, w], got {tuple(latents.shape)}")
        raw = latents.to(device=self.device, dtype=self.dtype) / self.scaling_factor + self.shift_factor
        raw = raw.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.decode_bfloat16):
            frames = self.autoencoder.decode(raw).sample
        return frames.float().clamp(-1.0, 1.0)

    def decode_uint8(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents [N, C, h, w] -> uint8 frames [N, H, W, 3] on the CPU (ready for video)."""
        return to_uint8_hwc(self.decode(latents))


def native_bfloat16(device: torch.device) -> bool:
    """Whether `device` runs bfloat16 convolutions natively: a CUDA GPU that supports it, a CPU with oneDNN's
    bfloat16 kernels (AVX-512 BF16 / AMX). Elsewhere bfloat16 is emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


#################################################################################
#                              Pixel conversions                                #
#################################################################################

def to_signed_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float [-1, 1]; float input is passed through as float32."""
    if frames.dtype == torch.uint8:
        return frames.float().div(127.5).sub(1.0)
    return frames.float()


def to_uint8_hwc(frames: torch.Tensor) -> torch.Tensor:
    """Float frames [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3] on the CPU."""
    pixels = frames.detach().float().clamp(-1.0, 1.0).add(1.0).mul(127.5).round()
    return pixels.to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu()
