"""Rectified flow: noising, loss, training timesteps, Euler steps, CFG on audio/text + annealing.

Convention: x_t = (1 - t) x0 + t noise, t in [0, 1] (1 = pure noise); the model predicts the
velocity v = noise - x0, and sampling integrates from t = 1 down to t = 0.

Guide-relative flow (prediction "guide_residual"): the noise is centred on the frame's guide latent g,
x_t = (1 - t) x0 + t (g + noise), and the model predicts r = x0 - g. A still face then has target 0,
which a zero-initialised output layer already gives: the one-step sample of an untrained model is the
guide itself, sharp, and training spends its capacity on corrections. Sampling steps are exact for
the predicted x0 (x_next = x0 + (t_next / t)(x_t - x0)), so one step is the prediction itself.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Literal

import torch

#################################################################################
#                          Noising, loss, timesteps                             #
#################################################################################


def _expand(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """t [B] or [B, T] -> broadcastable against x [B, T, ...]."""
    return t.reshape(*t.shape, *([1] * (x.ndim - t.ndim))).to(x.dtype)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t noise, with t per sample [B] or per frame [B, T]."""
    tt = _expand(t, x0)
    return (1 - tt) * x0 + tt * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """d x_t / dt = noise - x0."""
    return noise - x0


def flow_loss(pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
              frame_weight: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between predicted and target velocity over [B, T, ...]; frame_weight [B, T] selects or
    weighs frames (e.g. 1 for chunk frames, 0 for reference)."""
    err = (pred.float() - velocity_target(x0, noise).float()).pow(2).flatten(2).mean(-1)  # [B, T]
    if frame_weight is None:
        return err.mean()
    w = frame_weight.to(err.dtype)
    return (err * w).sum() / w.sum().clamp_min(1e-8)


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Time shift t' = s t / (1 + (s - 1) t); s > 1 spends more time at high noise."""
    return shift * t / (1 + (shift - 1) * t)


def sample_timesteps(shape: tuple[int, ...], mode: Literal["logit_normal", "uniform"] = "logit_normal",
                     mean: float = 0.0, std: float = 1.0, shift: float = 1.0,
                     generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Training times in (0, 1): logit-normal (sigmoid of N(mean, std)) or uniform, then shifted."""
    if mode == "logit_normal":
        t = torch.sigmoid(mean + std * torch.randn(shape, generator=generator, device=device))
    elif mode == "uniform":
        t = torch.rand(shape, generator=generator, device=device)
    else:
        raise ValueError(f"unknown timestep mode {mode!r}")
    return shift_time(t, shift)


#################################################################################
#                              Euler sampling                                   #
#################################################################################


def timestep_schedule(steps: int, shift: float = 1.0, device: torch.device | str = "cpu") -> torch.Tensor:
    """Times [steps + 1] from 1 down to 0, shifted."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    return shift_time(torch.linspace(1.0, 0.0, steps + 1, device=device), shift)


def euler_step(x: torch.Tensor, velocity: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """One Euler step of dx/dt = v from t to t_next."""
    return x + (t_next - t) * velocity


def add_guided_noise(x0: torch.Tensor, guide: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t (guide + noise), with t per sample [B] or per frame [B, T]."""
    return add_noise(x0, guide + noise, t)


def x0_step(x: torch.Tensor, x0: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """From x_t to x_{t_next} on the straight path through the predicted clean latent x0 (x0 at t_next = 0)."""
    return x0 + (t_next / t) * (x - x0)


#################################################################################
#                     Classifier-free guidance and annealing                    #
#################################################################################


class Branch(enum.Enum):
    """CFG branches: which conditions are kept (pose is never guided; it is kept in all)."""

    FULL = "full"  # audio + text
    NO_AUDIO = "no_audio"  # text only
    NO_AUDIO_NO_TEXT = "no_audio_no_text"  # neither

    @property
    def drop_audio(self) -> bool:
        return self is not Branch.FULL

    @property
    def drop_text(self) -> bool:
        return self is Branch.NO_AUDIO_NO_TEXT


@dataclass(frozen=True)
class Guidance:
    """CFG scales on audio and text, annealed from their value at step 0 to `min_scale` at the last."""

    audio: float = 1.0
    text: float = 1.0
    anneal: Literal["none", "linear", "cosine"] = "linear"
    min_scale: float = 1.0

    @classmethod
    def from_config(cls, sampler: object) -> "Guidance":
        """From a SamplerSection (guidance_audio, guidance_text, guidance_anneal, guidance_min)."""
        return cls(audio=sampler.guidance_audio, text=sampler.guidance_text,  # type: ignore[attr-defined]
                   anneal=sampler.guidance_anneal, min_scale=sampler.guidance_min)  # type: ignore[attr-defined]

    def decay(self, step: int, steps: int) -> float:
        """Annealing weight: 1 at step 0, falling to 0 at the last step (1 throughout for 'none')."""
        if self.anneal == "none" or steps <= 1:
            return 1.0
        frac = step / (steps - 1)
        if self.anneal == "linear":
            return 1.0 - frac
        if self.anneal == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * frac))
        raise ValueError(f"unknown guidance annealing {self.anneal!r}")

    def scales(self, step: int, steps: int) -> tuple[float, float]:
        """(audio, text) scales at this step."""
        w = self.decay(step, steps)
        return (self.min_scale + (self.audio - self.min_scale) * w,
                self.min_scale + (self.text - self.min_scale) * w)


def branch_weights(audio_scale: float, text_scale: float) -> dict[Branch, float]:
    """Weights of the branches whose sum is the guided velocity; zero-weight branches are left out.

    v = v_none + s_text (v_text - v_none) + s_audio (v_full - v_text)
      = s_audio v_full + (s_text - s_audio) v_text + (1 - s_text) v_none.
    With both scales 1 only the full branch runs; with s_text = 1 the no-audio-no-text branch drops.
    """
    weights = {Branch.FULL: audio_scale, Branch.NO_AUDIO: text_scale - audio_scale,
               Branch.NO_AUDIO_NO_TEXT: 1.0 - text_scale}
    return {b: w for b, w in weights.items() if w != 0.0}


def combine_branches(velocities: dict[Branch, torch.Tensor], weights: dict[Branch, float]) -> torch.Tensor:
    """Guided velocity = sum of weight * branch velocity."""
    out = None
    for branch, w in weights.items():
        term = velocities[branch] * w
        out = term if out is None else out + term
    if out is None:
        raise ValueError("no CFG branch to combine")
    return out
