"""Reference detail (model/detail.py): a frame that shows its decoded guide becomes the drawn picture, what
the DiT drew of its own stays; and the default avatar, silent or speaking, is its picture, not the VAE's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.detail import ReferenceDetail
from model.guide import blend_openings, draw_openings
from model.media import load_audio, load_image
from model.pipeline import DEFAULT_CHECKPOINT, AvatarPipeline
from model.train.metrics import psnr, uint8_to_float
from tests.pipeline_helpers import with_guide

AVATAR = "avatar_server/assets/default_avatar.png"
HUMAN_VOICE = "/usr/share/sounds/alsa/Front_Center.wav"


def _striped_detail(size: int = 32) -> ReferenceDetail:
    """Two openings: decoded flat greys (120, 140), pictures with stripes one pixel wide around them."""
    decoded = torch.stack([torch.full((size, size, 3), 120.0), torch.full((size, size, 3), 140.0)])
    stripes = torch.zeros(size, size, 3)
    stripes[:, ::2], stripes[:, 1::2] = 60.0, -60.0
    return ReferenceDetail(details=stripes.expand(2, -1, -1, -1).clone(), decoded=decoded,
                           openings=torch.tensor([0.0, 1.0]), fade=24.0)


def test_a_frame_showing_its_decoded_guide_becomes_the_drawn_picture() -> None:
    detail = _striped_detail()
    frames = np.full((2, 32, 32, 3), 130, np.uint8)  # the decoded guide half-way open
    out = detail.apply(frames, openness=np.array([0.5, 0.5]))
    np.testing.assert_array_equal(out[:, :, ::2], 190)
    np.testing.assert_array_equal(out[:, :, 1::2], 70)


def test_where_a_frame_moved_the_decoder_s_pixels_stay() -> None:
    """A dark patch the DiT drew keeps its own pixels; far from it the stripes come back."""
    frame = np.full((1, 32, 32, 3), 120, np.uint8)
    frame[0, 12:20, 12:20] = 20  # 100 levels from the decoded guide: far beyond the fade
    out = _striped_detail().apply(frame)[0]
    np.testing.assert_array_equal(out[14:18, 14:18], frame[0, 14:18, 14:18])
    np.testing.assert_array_equal(out[:, :6:2], 180)


def test_frames_of_another_size_are_refused() -> None:
    with pytest.raises(ValueError, match="do not match"):
        _striped_detail().apply(np.zeros((1, 16, 16, 3), np.uint8))


def test_the_default_avatar_is_its_drawn_picture_silent_and_speaking() -> None:
    """weights/tiny (detail_fade on; sway and blinks off): each frame is the picture with its mouth drawn at the
    frame's openness, to the decoder's rounding, where the VAE alone gives the picture back blurred."""
    torch.set_num_threads(1)
    pipe = with_guide(AvatarPipeline.from_pretrained(DEFAULT_CHECKPOINT), head_motion=False, blinks=False)
    assert pipe.model_config.guide.detail_fade > 0
    reference = pipe.encode_reference(load_image(AVATAR))
    bank = reference.mouth_bank
    stream = pipe.open_stream(reference)
    spf = pipe.config.samples_per_frame
    voice = load_audio(HUMAN_VOICE, pipe.config.sample_rate)[: pipe.config.sample_rate]
    audio = np.concatenate([np.zeros(4 * spf, np.float32), voice, np.zeros(4 * spf, np.float32)])
    for start in range(0, len(audio), spf):
        stream.push_audio(audio[start:start + spf], voiced=start >= 4 * spf)
    chunks = []
    while stream.ready():
        chunks.extend(pipe.generate([stream]))
    stream.close()
    frames = np.concatenate([c.frames for c in chunks])
    openness = np.concatenate([c.mouth_open for c in chunks])
    pictures = draw_openings(reference.image, bank.box, bank.openings.cpu()).permute(0, 2, 3, 1).float()
    drawn = blend_openings(pictures, bank.openings.cpu(), torch.from_numpy(openness)).round().to(torch.uint8)
    assert openness.max() > 0.3  # it spoke
    assert psnr(uint8_to_float(frames), uint8_to_float(drawn)) > 38
    picture = uint8_to_float(reference.image[None])
    assert psnr(uint8_to_float(reference.still[None]), picture) > 45  # the idle image is the picture too
    vae_only = pipe.vae.decode_uint8(bank.latents[:1]).numpy()
    assert psnr(uint8_to_float(vae_only), picture) < 30  # the VAE alone loses detail worth keeping
