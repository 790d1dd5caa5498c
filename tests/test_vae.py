"""FrameVAE: shapes of a round trip, uint8/float inputs, save -> load gives identical outputs."""

import pytest
import torch

from model.config import VAESection, load_model_config
from model.errors import InputError
from model.vae import FrameVAE, native_bfloat16, to_uint8_hwc


def _tiny_vae() -> FrameVAE:
    torch.manual_seed(0)
    section = VAESection(
        latent_channels=4, encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        scaling_factor=1.5,
    )
    return FrameVAE.from_config(section).eval()


def test_round_trip_shapes_non_square():
    vae = _tiny_vae()
    frames = torch.randint(0, 256, (3, 3, 64, 96), dtype=torch.uint8)
    with torch.inference_mode():
        latents = vae.encode(frames)
        decoded = vae.decode(latents)
    assert vae.downsample == 8
    assert latents.shape == (3, 4, 8, 12)
    assert decoded.shape == (3, 3, 64, 96)
    assert decoded.min() >= -1 and decoded.max() <= 1
    assert vae.decode_uint8(latents).shape == (3, 64, 96, 3)


def test_uint8_and_float_inputs_agree():
    vae = _tiny_vae()
    frames = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        from_uint8 = vae.encode(frames)
        from_float = vae.encode(frames.float() / 127.5 - 1)
    torch.testing.assert_close(from_uint8, from_float)


def test_scaling_factor_applies_to_latents():
    vae = _tiny_vae()
    frames = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        raw = vae.autoencoder.encode(frames.float() / 127.5 - 1).latents
        torch.testing.assert_close(vae.encode(frames), raw * 1.5)


def test_bad_sizes_are_rejected():
    vae = _tiny_vae()
    with pytest.raises(ValueError):
        vae.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError):
        vae.decode(torch.zeros(1, 5, 4, 4))


def test_save_load_identical(tmp_path):
    vae = _tiny_vae()
    vae.save_pretrained(tmp_path / "vae")
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = FrameVAE.from_pretrained(tmp_path / "vae")
    frames = torch.randint(0, 256, (2, 3, 32, 48), dtype=torch.uint8)
    with torch.inference_mode():
        assert torch.equal(vae.encode(frames), loaded.encode(frames))
        latents = torch.randn(2, 4, 4, 6)
        assert torch.equal(vae.decode(latents), loaded.decode(latents))
    assert loaded.scaling_factor == 1.5


def test_missing_checkpoint_is_input_error(tmp_path):
    with pytest.raises(InputError):
        FrameVAE.from_pretrained(tmp_path / "nothing")


def test_to_uint8_hwc_maps_range():
    frames = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1)
    assert to_uint8_hwc(frames).flatten().tolist() == [0, 128, 255]


def test_tiny_config_vae_matches_video_size():
    config = load_model_config("tiny")
    vae = FrameVAE.from_config(config.vae).eval()
    frames = torch.zeros(1, 3, config.video.height, config.video.width, dtype=torch.uint8)
    with torch.inference_mode():
        latents = vae.encode(frames)
    assert latents.shape == (1, config.vae.latent_channels, config.latent_height, config.latent_width)


def test_spread_random_output_gives_visible_mid_grey_frames():
    vae = _tiny_vae()
    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        before = vae.decode_uint8(latents).float()
        vae.spread_random_output(seed=0)
        after = vae.decode_uint8(latents).float()
    assert after.std() > max(30.0, 2 * before.std())
    assert 90 < after.mean() < 165


def test_decode_precision_is_honoured():
    """float32 decodes exactly as before; bfloat16 runs the decoder under autocast (float32 frames, close to the
    float32 ones); auto follows the device; anything else is refused."""
    vae = _tiny_vae()
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        exact = vae.decode(latents)
        vae.set_decode_precision("bfloat16")
        assert vae.decode_bfloat16
        low = vae.decode(latents)
        vae.set_decode_precision("float32")
        assert not vae.decode_bfloat16
        torch.testing.assert_close(vae.decode(latents), exact, rtol=0, atol=0)
    assert low.dtype == torch.float32 and low.shape == exact.shape
    assert 0 < (low - exact).abs().max() < 0.1
    vae.set_decode_precision("auto")
    assert vae.decode_bfloat16 == native_bfloat16(vae.device)
    with pytest.raises(InputError, match="decode precision"):
        vae.set_decode_precision("float16")
