"""Rectified flow: noising/loss, Euler recovery, CFG branch weights and their annealing."""

from __future__ import annotations

import pytest
import torch

from model.flow import (
    Branch,
    Guidance,
    add_noise,
    branch_weights,
    combine_branches,
    euler_step,
    flow_loss,
    sample_timesteps,
    shift_time,
    timestep_schedule,
    velocity_target,
)


def test_noising_endpoints_and_zero_loss_for_true_velocity() -> None:
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, 4, 5, 5, generator=g), torch.randn(2, 3, 4, 5, 5, generator=g)
    assert torch.equal(add_noise(x0, noise, torch.zeros(2, 3)), x0)
    assert torch.equal(add_noise(x0, noise, torch.ones(2)), noise)
    assert flow_loss(velocity_target(x0, noise), x0, noise) == 0
    weight = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    pred = velocity_target(x0, noise)
    pred[:, :2] += 5.0  # errors only on frames with zero weight
    assert flow_loss(pred, x0, noise, weight) == 0
    assert flow_loss(pred, x0, noise) > 0


@pytest.mark.parametrize("steps,shift", [(1, 1.0), (2, 1.0), (4, 3.0), (8, 5.0)])
def test_euler_with_exact_velocity_recovers_x0(steps: int, shift: float) -> None:
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 8, generator=g)
    x = torch.randn(4, 8, generator=g)  # x at t = 1 is the noise
    times = timestep_schedule(steps, shift)
    assert times[0] == 1 and times[-1] == 0 and torch.all(times[1:] < times[:-1])
    for t, t_next in zip(times[:-1].tolist(), times[1:].tolist()):
        x = euler_step(x, (x - x0) / t, t, t_next)  # exact velocity of the straight path to x0
    assert (x - x0).abs().max() < 1e-5


def test_time_shift_moves_time_towards_noise() -> None:
    t = torch.linspace(0.05, 0.95, 10)
    assert torch.all(shift_time(t, 3.0) > t) and torch.equal(shift_time(t, 1.0), t)
    for mode in ("logit_normal", "uniform"):
        s = sample_timesteps((1000,), mode, generator=torch.Generator().manual_seed(0))
        assert s.min() > 0 and s.max() < 1
    shifted = sample_timesteps((1000,), shift=3.0, generator=torch.Generator().manual_seed(0))
    assert shifted.mean() > s.mean()
    with pytest.raises(ValueError):
        sample_timesteps((3,), "bogus")  # type: ignore[arg-type]


def test_cfg_scale_one_is_the_conditional_branch() -> None:
    assert branch_weights(1.0, 1.0) == {Branch.FULL: 1.0}
    g = torch.Generator().manual_seed(2)
    v = {b: torch.randn(3, generator=g) for b in Branch}
    assert torch.equal(combine_branches(v, branch_weights(1.0, 1.0)), v[Branch.FULL])
    # text scale 1: the no-audio-no-text branch is not needed
    assert set(branch_weights(4.0, 1.0)) == {Branch.FULL, Branch.NO_AUDIO}
    guided = combine_branches(v, branch_weights(4.0, 2.0))
    expected = v[Branch.NO_AUDIO_NO_TEXT] + 2.0 * (v[Branch.NO_AUDIO] - v[Branch.NO_AUDIO_NO_TEXT]) \
        + 4.0 * (v[Branch.FULL] - v[Branch.NO_AUDIO])
    assert torch.allclose(guided, expected, atol=1e-6)
    assert Branch.NO_AUDIO.drop_audio and not Branch.NO_AUDIO.drop_text and Branch.NO_AUDIO_NO_TEXT.drop_text


@pytest.mark.parametrize("anneal", ["linear", "cosine"])
def test_annealed_scales_decay_to_min(anneal: str) -> None:
    g = Guidance(audio=6.5, text=3.0, anneal=anneal, min_scale=1.0)  # type: ignore[arg-type]
    scales = [g.scales(i, 6) for i in range(6)]
    assert scales[0] == (6.5, 3.0) and scales[-1] == (1.0, 1.0)
    audio = [a for a, _ in scales]
    assert all(a > b for a, b in zip(audio, audio[1:]))
    assert Guidance(audio=6.5, anneal="none").scales(5, 6) == (6.5, 1.0)
