"""OmniHumanDiT: cached path == full masked path, block-causal mask, conditions, grids, save/load."""

from __future__ import annotations

import pytest
import torch

from model.conditioning.heatmaps import NUM_HEATMAP_CHANNELS
from model.config import ModelConfig, load_model_config
from model.dit import OmniHumanDiT, block_causal_mask
from model.errors import InputError

R, M, F = 1, 2, 3
C, H, W = 4, 8, 6  # non-square latent grid


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one intra-op thread is faster and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

def make_dit(seed: int = 0, pose_channels: int = 3, concat: bool = False) -> OmniHumanDiT:
    """A very small DiT whose zero-initialised outputs are perturbed so every path matters."""
    torch.manual_seed(seed)
    dit = OmniHumanDiT(latent_channels=C, hidden_size=32, depth=2, num_heads=2, audio_feature_dim=8,
                       audio_frames_per_video_frame=4, audio_window_frames=3, pose_channels=pose_channels,
                       pose_guider_channels=8, pose_latent_channels=4, ref_index=-16,
                       concat_reference=concat, concat_last_context=concat).eval()
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return dit


def inputs(b: int = 2, seed: int = 1, h: int = H, w: int = W) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = torch.cat([torch.zeros(b, R), torch.full((b, M), 0.05), torch.rand(b, F, generator=g)], dim=1)
    return dict(latents=torch.randn(b, R + M + F, C, h, w, generator=g), timesteps=t,
                audio=torch.randn(b, F, 3, 4, 8, generator=g), pose=torch.rand(b, F, 3, h, w, generator=g),
                text=torch.randn(b, 384, generator=g))


def full(dit: OmniHumanDiT, x: dict[str, torch.Tensor], **kw: object) -> torch.Tensor:
    return dit(x["latents"], x["timesteps"], R, M, audio=x["audio"], pose=x["pose"], text=x["text"], **kw)


@pytest.mark.parametrize("concat", [False, True])
@torch.no_grad()
def test_cached_chunk_forward_equals_full_masked_forward(concat: bool) -> None:
    dit, x = make_dit(concat=concat), inputs()
    drops = dict(drop_audio=torch.tensor([False, True]), drop_text=torch.tensor([True, False]))
    ref = full(dit, x, **drops)[:, R + M:]
    lat, t = x["latents"], x["timesteps"]
    ref_kv = dit.encode_kv(lat[:, :R], t[:, :R], frame_local=False)
    ctx_kv = dit.encode_kv(lat[:, R:R + M], t[:, R:R + M], frame_local=True, reference=lat[:, 0])
    prefix = dit.prefix_kv(ref_kv, ctx_kv, (H, W), F)
    out = dit.forward_chunk(lat[:, R + M:], t[:, R + M:], prefix, x["audio"], x["pose"], x["text"], **drops,
                            reference=lat[:, 0], last_context=lat[:, R + M - 1])
    assert out.shape == (2, F, C, H, W)
    assert (out - ref).abs().max() < 1e-5
    assert ref.abs().mean() > 1e-2


@torch.no_grad()
def test_concatenated_reference_and_last_context_reach_the_chunk() -> None:
    """concat_*: chunk tokens see the reference and the newest context latent at their own position."""
    dit, x = make_dit(concat=True), inputs()
    assert dit.x_embedder.in_features == (C + 4 + C + C) * 2 * 2  # latent, pose guider, reference, last context
    base = full(dit, x)
    for frame in (0, R + M - 1):  # the reference, the newest context frame
        y = dict(x, latents=x["latents"].clone())
        y["latents"][:, frame, :, 0, 0] += 1.0  # one cell
        other = full(dit, y)
        assert not torch.allclose(base[:, R + M:], other[:, R + M:])

    context, times = x["latents"][:, R:R + M], x["timesteps"][:, R:R + M]
    ctx_a = dit.encode_kv(context, times, True, reference=x["latents"][:, 0])
    ctx_b = dit.encode_kv(context, times, True, reference=x["latents"][:, 0] + 1.0)
    assert not torch.allclose(ctx_a[0][0], ctx_b[0][0])  # context K/V depend on the session's reference


@torch.no_grad()
def test_widening_a_trained_dit_to_concat_channels_starts_where_it_was() -> None:
    """Fine-tuning into concat_* from a DiT without them: the added input channels start at zero, so the
    widened model computes what the source did; a source with another layout is refused."""
    source, x = make_dit(concat=False), inputs()
    widened = make_dit(seed=5, concat=True)
    widened.load_state_dict_widening_input(source.state_dict())
    assert torch.allclose(full(widened, x), full(source, x), atol=1e-6)
    with pytest.raises(RuntimeError):
        make_dit(concat=True).load_state_dict_widening_input(make_dit(pose_channels=0).state_dict())


@torch.no_grad()
def test_reference_and_context_ignore_chunk_and_conditions() -> None:
    dit, x = make_dit(), inputs()
    base = full(dit, x)
    y = dict(x, latents=x["latents"].clone(), audio=x["audio"] + 1, text=-x["text"])
    y["latents"][:, R + M:] += 1.0
    other = full(dit, y)
    assert torch.equal(base[:, : R + M], other[:, : R + M])
    assert not torch.allclose(base[:, R + M:], other[:, R + M:])


def test_block_causal_mask_layout() -> None:
    mask = block_causal_mask(1, 2, 2, 1)[0, 0]
    expected = torch.tensor([
        [1, 0, 0, 0, 0],
        [0, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(mask, expected)


@torch.no_grad()
@pytest.mark.parametrize("use", [(a, p, t) for a in (0, 1) for p in (0, 1) for t in (0, 1)])
def test_every_subset_of_conditions_runs_and_matters(use: tuple[int, int, int]) -> None:
    dit, x = make_dit(), inputs()
    a, p, t = use
    out = dit(x["latents"], x["timesteps"], R, M, audio=x["audio"] if a else None,
              pose=x["pose"] if p else None, text=x["text"] if t else None)
    assert out.shape == x["latents"].shape and torch.isfinite(out).all()
    bare = dit(x["latents"], x["timesteps"], R, M)
    assert torch.allclose(out, bare) == (use == (0, 0, 0))


@torch.no_grad()
def test_drop_mask_equals_missing_condition() -> None:
    dit, x = make_dit(), inputs()
    drop = torch.tensor([True, True])
    dropped = full(dit, x, drop_audio=drop, drop_text=drop, drop_pose=drop)
    missing = dit(x["latents"], x["timesteps"], R, M)
    assert (dropped - missing).abs().max() < 1e-6
    # a per-sample mask only affects its own sample
    half = full(dit, x, drop_audio=torch.tensor([True, False]))
    assert torch.equal(half[1], full(dit, x)[1])
    assert not torch.allclose(half[0], full(dit, x)[0])


@torch.no_grad()
@pytest.mark.parametrize("hw", [(4, 10), (12, 4), (2, 2)])
def test_any_grid_runs(hw: tuple[int, int]) -> None:
    dit, x = make_dit(), inputs(h=hw[0], w=hw[1])
    assert full(dit, x).shape == (2, R + M + F, C, *hw)


def test_bad_inputs_raise() -> None:
    dit, x = make_dit(), inputs()
    with pytest.raises(ValueError, match="patch"):
        dit(torch.randn(1, 3, C, 5, 6), torch.zeros(1, 3), 1, 1)
    with pytest.raises(ValueError, match="no chunk frames"):
        dit(x["latents"], x["timesteps"], 3, 3)
    with pytest.raises(ValueError, match="audio windows"):
        dit(x["latents"], x["timesteps"], R, M, audio=x["audio"][:, :2])
    with pytest.raises(ValueError, match="pose guider"):
        make_dit(pose_channels=0)(x["latents"], x["timesteps"], R, M, pose=x["pose"])


@torch.no_grad()
def test_save_and_load_give_identical_outputs(tmp_path) -> None:
    dit, x = make_dit(), inputs()
    dit.save_pretrained(tmp_path / "dit")
    assert (tmp_path / "dit" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = OmniHumanDiT.from_pretrained(tmp_path / "dit").eval()
    assert torch.equal(full(dit, x), full(loaded, x))


def test_gradients_reach_every_condition_path() -> None:
    dit, x = make_dit(), inputs()
    dit.train()
    dit.enable_gradient_checkpointing()
    full(dit, x).pow(2).mean().backward()
    for name in ("audio_encoder.mlp.0.weight", "pose_guider.net.0.weight", "text_embedder.0.weight",
                 "blocks.0.qkv.weight", "final_layer.linear.weight"):
        grad = dict(dit.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("name", ["tiny", "base", "large"])
def test_shipped_configs_build_a_dit(name: str) -> None:
    cfg = load_model_config(name)
    assert cfg.audio.sample_rate == 16000 and cfg.sampler.fps == 25
    assert cfg.video.height % (8 * cfg.dit.patch_size) == 0
    assert cfg.dit.pose_channels == NUM_HEATMAP_CHANNELS
    kwargs = cfg.dit_kwargs()
    assert kwargs["audio_window_frames"] == cfg.audio.past_frames + 1 + cfg.audio.lookahead_frames
    if name == "tiny":
        assert OmniHumanDiT(**kwargs).config.hidden_size == cfg.dit.hidden_size


def test_bad_config_is_an_input_error(tmp_path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_model_config("no-such-config")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dit: {hidden_size: 30, depth: 2, num_heads: 4}\nvae: {}\nvideo: {height: 64, width: 64}\n")
    with pytest.raises(InputError, match="divisible"):
        load_model_config(bad)
    bad.write_text("dit: [unclosed\n")
    with pytest.raises(InputError, match="YAML"):
        load_model_config(bad)
    cfg = load_model_config("tiny")
    with pytest.raises(InputError, match="multiples"):
        cfg.check_size(100, 128)
    assert isinstance(cfg, ModelConfig)


def test_rope_tables_made_while_sampling_serve_training_too() -> None:
    """The DiT keeps its RoPE tables; one first made under inference_mode (a preview during training) must
    still work in a step that is differentiated afterwards."""
    dit, x = make_dit(concat=True), inputs()
    with torch.inference_mode():
        before = full(dit, x)
    out = full(dit, x)
    out.abs().mean().backward()
    assert torch.allclose(out.detach(), before) and dit.x_embedder.weight.grad is not None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@torch.no_grad()
def test_cached_chunk_forward_runs_in_half_precision(dtype: torch.dtype) -> None:
    """A DiT loaded in bfloat16 / float16 (a GPU deployment) streams too: its K/V buffers take the rotated keys."""
    dit, x = make_dit(concat=True).to(dtype), inputs()
    x = {k: v.to(dtype) for k, v in x.items()}
    lat, t = x["latents"], x["timesteps"]
    ref = full(dit, x)[:, R + M:].float()
    ref_kv = dit.encode_kv(lat[:, :R], t[:, :R], frame_local=False)
    ctx_kv = dit.encode_kv(lat[:, R:R + M], t[:, R:R + M], frame_local=True, reference=lat[:, 0])
    out = dit.forward_chunk(lat[:, R + M:], t[:, R + M:], dit.prefix_kv(ref_kv, ctx_kv, (H, W), F), x["audio"],
                            x["pose"], x["text"], reference=lat[:, 0], last_context=lat[:, R + M - 1])
    assert out.dtype == dtype and (out.float() - ref).abs().max() < 0.05 * ref.abs().mean()
