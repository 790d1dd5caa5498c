"""The mouth guide: drawing an opened mouth, the per-avatar bank, guide-relative sampling, hidden mouths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.conditioning.motion import MouthMotion
from model.conditioning.mouth import MouthBox, mouth_box_from_keypoints
from model.data import keypoints as kp
from model.errors import InputError
from model.flow import add_guided_noise, x0_step
from model.guide import MouthBank, build_mouth_bank, mouth_cells, open_mouth
from model.pipeline import AvatarPipeline
from pipeline_helpers import micro_guide_config, reference_image, speech_like

BOX = MouthBox(x=0.5, y=0.6, width=0.3)


def _face(size: int = 64) -> torch.Tensor:
    """A skin-coloured square image [3, H, W] in [0, 1] with a thin lip line at BOX."""
    image = torch.tensor([0.9, 0.75, 0.6])[:, None, None].expand(3, size, size).clone()
    y, x0, x1 = int(BOX.y * size), int((BOX.x - BOX.width / 2) * size), int((BOX.x + BOX.width / 2) * size)
    image[:, y - 1:y + 1, x0:x1] = torch.tensor([0.7, 0.3, 0.3])[:, None, None]
    return image


# ------------------------------------------------------------------------------------------------ drawing

def test_open_mouth_darkens_the_mouth_and_leaves_the_rest() -> None:
    """Opening draws a dark gap below the lip line that grows with the amount; the forehead is untouched."""
    face = _face()
    assert torch.equal(open_mouth(face, BOX, 0.0), face)
    box_rows, box_cols = slice(36, 46), slice(26, 38)  # under the lip line, inside the mouth width
    darkness = [float(1 - open_mouth(face, BOX, a)[:, box_rows, box_cols].mean()) for a in (0.0, 0.5, 1.0)]
    assert darkness[0] < darkness[1] < darkness[2]
    assert darkness[2] - darkness[0] > 0.2
    assert torch.allclose(open_mouth(face, BOX, 1.0)[:, :20], face[:, :20])


def test_mouth_box_from_keypoints_and_bad_boxes() -> None:
    """The box sits at the inner lips, as wide as the lip corners; impossible boxes are InputErrors."""
    xy = np.full((kp.NUM_KEYPOINTS, 2), 0.5, np.float32)
    xy[kp.LIPS, 1] = 0.7
    xy[kp.face_part("outer_lip").start, 0], xy[kp.face_part("outer_lip").start + 6, 0] = 0.42, 0.58
    box = mouth_box_from_keypoints(xy)
    assert box is not None and box.y == pytest.approx(0.7) and box.width == pytest.approx(0.16)
    assert mouth_box_from_keypoints(xy, np.zeros(kp.NUM_KEYPOINTS)) is None  # lips not visible
    for bad in ((1.5, 0.5, 0.2), (0.5, 0.5, 0.0), (float("nan"), 0.5, 0.2)):
        with pytest.raises(InputError):
            MouthBox(*bad)


# ------------------------------------------------------------------------------------------------ bank

def _bank() -> MouthBank:
    latents = torch.stack([torch.full((2, 4, 4), float(k)) for k in range(5)])  # [K=5, C, h, w]
    latents[:, :, 0, 0] = 0.0  # one cell that never changes
    return MouthBank(latents=latents, openings=torch.linspace(0, 1, 5), mouth_cells=mouth_cells(latents, 0.1, grow=0),
                     box=BOX)


def test_bank_blends_between_openings_and_marks_the_mouth_cells() -> None:
    bank = _bank()
    guide = bank.blend(torch.tensor([0.0, 0.125, 1.0, 2.0, -1.0]))
    assert guide[:, 0, 1, 1].tolist() == pytest.approx([0.0, 0.5, 4.0, 4.0, 0.0])  # linear, clamped to [0, 1]
    assert not bank.mouth_cells[0, 0] and bank.mouth_cells.sum() == 15
    hidden = bank.hide_mouth(torch.ones(3, 2, 4, 4))
    assert hidden[:, :, 0, 0].eq(1).all() and hidden.sum() == 3 * 2


def test_build_mouth_bank_encodes_each_opening_once() -> None:
    calls = []

    def encode(frames: torch.Tensor) -> torch.Tensor:  # a stand-in VAE: mean colour of 8x8 blocks
        calls.append(frames.shape)
        return torch.nn.functional.avg_pool2d(frames.float() / 255, 8)

    image = (_face().permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    bank = build_mouth_bank(image, BOX, encode, openings=4)
    assert calls == [(4, 3, 64, 64)]
    assert bank.latents.shape == (4, 3, 8, 8) and torch.allclose(bank.latents[0], encode(torch.from_numpy(image).permute(2, 0, 1)[None])[0])
    rows = bank.mouth_cells.nonzero()[:, 0]
    assert rows.numel() and rows.min() >= 3  # the mouth cells sit at and below the lip line (row 4.8)


# ------------------------------------------------------------------------------------------------ flow

def test_guide_relative_flow_lands_on_the_predicted_clean_latent() -> None:
    x0, guide, noise = torch.randn(3, 2, 4), torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    assert torch.allclose(add_guided_noise(x0, guide, noise, torch.ones(3)), guide + noise)
    x_half = add_guided_noise(x0, guide, noise, torch.full((3,), 0.5))
    assert torch.allclose(x0_step(x_half, x0, 0.5, 0.25), add_guided_noise(x0, guide, noise, torch.full((3,), 0.25)), atol=1e-6)
    assert torch.equal(x0_step(x_half, x0, 0.5, 0.0), x0)


# ------------------------------------------------------------------------------------------------ pipeline

@pytest.fixture(scope="module")
def pipe() -> AvatarPipeline:
    config = micro_guide_config()
    pipe = AvatarPipeline.from_config(config, seed=0)
    pipe.motion = MouthMotion(window_frames=config.audio.window_frames,
                              frames_per_video_frame=config.audio_frames_per_video_frame,
                              feature_dim=config.audio_feature_dim).eval()
    return pipe


def test_guide_model_streams_cached_equal_to_naive(pipe: AvatarPipeline) -> None:
    reference = pipe.encode_reference(reference_image(), mouth=BOX)
    assert reference.mouth_bank is not None and torch.equal(reference.latents[0], reference.mouth_bank.closed)
    decoded = pipe.vae.decode_uint8(reference.latents[:1]).numpy()
    assert reference.detail is not None  # the tiny config's detail_fade
    assert np.array_equal(reference.still, reference.detail.apply(decoded)[0])  # the idle image
    cached, naive = pipe.open_stream(reference), pipe.open_stream(reference)
    for stream in (cached, naive):
        stream.push_audio(speech_like(0.6))
    for _ in range(3):
        a, b = pipe.sample([cached])[0], pipe.sample([naive], naive=True)[0]
        assert torch.allclose(a.latents, b.latents, atol=1e-5)
        assert a.mouth_open is not None and a.mouth_open.shape == (pipe.config.chunk_frames,)


def test_zero_output_guide_model_draws_exactly_the_guide_at_any_step_count(pipe: AvatarPipeline) -> None:
    """A still face costs nothing: with output 0 every sample is the guide, at 1 step as at 3."""
    original = {k: v.clone() for k, v in pipe.dit.final_layer.state_dict().items()}
    try:
        with torch.no_grad():
            pipe.dit.final_layer.linear.weight.zero_()
            pipe.dit.final_layer.linear.bias.zero_()
        reference = pipe.encode_reference(reference_image(), mouth=BOX)
        for steps in (1, 3):
            stream = pipe.open_stream(reference)
            stream.push_audio(speech_like(0.3))
            conditions = stream.next_conditions()
            latents = pipe.sampler.generate([stream.state], [conditions], steps=steps)[0]
            assert torch.allclose(latents, conditions.guide, atol=1e-5)
    finally:
        pipe.dit.final_layer.load_state_dict(original)


def test_the_mouth_of_reference_and_context_is_hidden(pipe: AvatarPipeline) -> None:
    """Reference and context hold zeros in the mouth cells, so only the guide can show the mouth."""
    reference = pipe.encode_reference(reference_image(), mouth=BOX)
    bank = reference.mouth_bank
    bank.mouth_cells = torch.zeros_like(bank.mouth_cells)
    bank.mouth_cells[5:7, 2:6] = True  # the micro VAE is random: mark the cells by hand
    stream = pipe.open_stream(reference)
    stream.push_audio(speech_like(0.3))
    pipe.sample([stream])
    state = stream.state
    assert state.reference_latents[:, :, 5:7, 2:6].eq(0).all() and state.reference_latents[:, :, :5].ne(0).any()
    assert state.context_latents[-2:, :, 5:7, 2:6].eq(0).all()
    assert not torch.equal(state.last_frame[:, 5:7, 2:6], torch.zeros_like(state.last_frame[:, 5:7, 2:6]))


def test_context_from_guides_cannot_drift(pipe: AvatarPipeline) -> None:
    """sampler.context_source 'guide': the context window holds the chunks' guides (mouth hidden), not the
    generated frames, so what the model sees of the past never drifts."""
    reference = pipe.encode_reference(reference_image(), mouth=BOX)
    original = pipe.sampler.config
    pipe.sampler.config = original.model_copy(update={"context_source": "guide"})
    try:
        stream = pipe.open_stream(reference)
        stream.push_audio(speech_like(0.3))
        conditions = stream.next_conditions()
        generated = pipe.sampler.generate([stream.state], [conditions])[0]
        f = pipe.config.chunk_frames
        shown = stream.state.context_latents[-f:]
        assert torch.allclose(shown, reference.mouth_bank.hide_mouth(conditions.guide), atol=1e-6)
        assert not torch.allclose(shown, reference.mouth_bank.hide_mouth(generated), atol=1e-3)
        assert torch.equal(stream.state.last_frame, generated[-1])
    finally:
        pipe.sampler.config = original
