"""StreamingSampler: cached == naive, causality, batching, conditions, constant memory."""

from __future__ import annotations

import pytest
import torch

from model.config import ModelConfig
from model.dit import OmniHumanDiT
from model.flow import Guidance
from model.streaming import ChunkConditions, StreamingSampler

CONFIG = ModelConfig.model_validate({
    "name": "test",
    "dit": {"hidden_size": 32, "depth": 2, "num_heads": 2, "pose_channels": 3, "pose_guider_channels": 8,
            "ref_index": -16, "concat_reference": True, "concat_last_context": True},
    "vae": {},
    "audio": {"n_mels": 8, "past_frames": 1, "lookahead_frames": 1},
    "sampler": {"chunk_frames": 3, "context_frames": 2, "steps": 3, "time_shift": 2.0, "context_t": 0.05,
                "guidance_audio": 3.0, "guidance_text": 2.0},
    "video": {"height": 64, "width": 48},
})
S = CONFIG.sampler
LAT = (CONFIG.vae.latent_channels, CONFIG.latent_height, CONFIG.latent_width)  # non-square 8 x 6


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one intra-op thread is faster and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

@pytest.fixture(scope="module")
def sampler() -> StreamingSampler:
    torch.manual_seed(0)
    dit = OmniHumanDiT(**CONFIG.dit_kwargs()).eval()
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return StreamingSampler(dit, CONFIG)


def reference(seed: int = 3) -> torch.Tensor:
    return torch.randn(1, *LAT, generator=torch.Generator().manual_seed(seed))


def conditions(n: int, seed: int = 5, audio: bool = True, pose: bool = True, text: bool = True) -> list[ChunkConditions]:
    g = torch.Generator().manual_seed(seed)
    text_emb = torch.randn(384, generator=g)
    return [ChunkConditions(
        audio=torch.randn(S.chunk_frames, CONFIG.audio.window_frames, 4, 8, generator=g) if audio else None,
        pose=torch.rand(S.chunk_frames, 3, *LAT[1:], generator=g) if pose else None,
        text=text_emb if text else None) for _ in range(n)]


def test_cached_stream_equals_naive_recomputation(sampler: StreamingSampler) -> None:
    cached, naive = sampler.init_state(reference(), seed=11), sampler.init_state(reference(), seed=11)
    for cond in conditions(6):
        a = sampler.generate([cached], [cond])
        b = sampler.naive_generate([naive], [cond])
        assert a.shape == (1, S.chunk_frames, *LAT)
        assert (a - b).abs().max() <= 1e-4
        assert a.abs().mean() > 0.1
    assert cached.frame_index == naive.frame_index == 6 * S.chunk_frames
    assert (cached.context_latents - naive.context_latents).abs().max() <= 1e-4


@pytest.mark.parametrize("chunk,context", [(2, 4), (2, 0), (1, 1)])
def test_cached_equals_naive_for_other_windows(sampler: StreamingSampler, chunk: int, context: int) -> None:
    """Context windows longer than a chunk (partial roll), no context at all, single frames."""
    data = CONFIG.model_dump()
    data["sampler"].update(chunk_frames=chunk, context_frames=context, steps=2)
    other = StreamingSampler(sampler.dit, ModelConfig.model_validate(data))
    cached, naive = other.init_state(reference(), 5), other.init_state(reference(), 5)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        cond = ChunkConditions(audio=torch.randn(chunk, CONFIG.audio.window_frames, 4, 8, generator=g))
        assert (other.generate([cached], [cond]) - other.naive_generate([naive], [cond])).abs().max() <= 1e-4
    assert cached.context_latents.shape[0] == context


def test_later_audio_never_changes_earlier_chunks(sampler: StreamingSampler) -> None:
    conds = conditions(4)
    changed = conditions(4)[:2] + conditions(2, seed=99)  # audio/pose differ from chunk 2 on
    a, b = sampler.init_state(reference(), 1), sampler.init_state(reference(), 1)
    outs_a = [sampler.generate([a], [c]) for c in conds]
    outs_b = [sampler.generate([b], [c]) for c in changed]
    for k in range(2):
        assert torch.equal(outs_a[k], outs_b[k])
    assert not torch.allclose(outs_a[2], outs_b[2])


def test_batched_sessions_equal_each_alone(sampler: StreamingSampler) -> None:
    conds_a = conditions(3, seed=1)
    conds_b = conditions(3, seed=2, text=False)  # different conditions -> different CFG branches
    conds_b = [ChunkConditions(c.audio, c.pose, c.text, Guidance(audio=5.0, anneal="cosine")) for c in conds_b]
    ref_b = reference(4)
    alone_a, alone_b = sampler.init_state(reference(), 7), sampler.init_state(ref_b, 8)
    pair = [sampler.init_state(reference(), 7), sampler.init_state(ref_b, 8)]
    for ca, cb in zip(conds_a, conds_b):
        together = sampler.generate(pair, [ca, cb])
        assert (together[0] - sampler.generate([alone_a], [ca])[0]).abs().max() <= 1e-5
        assert (together[1] - sampler.generate([alone_b], [cb])[0]).abs().max() <= 1e-5


@pytest.mark.parametrize("use", [(a, p, t) for a in (0, 1) for p in (0, 1) for t in (0, 1)])
def test_every_subset_of_conditions_streams(sampler: StreamingSampler, use: tuple[int, int, int]) -> None:
    state = sampler.init_state(reference(), 0)
    for cond in conditions(2, audio=bool(use[0]), pose=bool(use[1]), text=bool(use[2])):
        out = sampler.generate([state], [cond], steps=2)
        assert out.shape == (1, S.chunk_frames, *LAT) and torch.isfinite(out).all()


def test_same_seed_same_stream_and_constant_memory(sampler: StreamingSampler) -> None:
    a, b = sampler.init_state(reference(), 21), sampler.init_state(reference(), 21)
    other = sampler.init_state(reference(), 22)
    kv_shapes = [k.shape for k, _ in a.context_kv]
    conds = conditions(5)
    for cond in conds:
        out = sampler.generate([a], [cond])
        assert torch.equal(out, sampler.generate([b], [cond]))
    assert not torch.equal(out, sampler.generate([other], [conds[-1]]))
    assert [k.shape for k, _ in a.context_kv] == kv_shapes
    assert a.context_latents.shape == (S.context_frames, *LAT)


def test_misuse_is_reported(sampler: StreamingSampler) -> None:
    with pytest.raises(ValueError, match="reference"):
        sampler.init_state(torch.randn(*LAT), 0)
    state = sampler.init_state(reference(), 0)
    with pytest.raises(ValueError, match="one ChunkConditions"):
        sampler.generate([state], [])
    small = sampler.init_state(torch.randn(1, LAT[0], 4, 4), 0)
    with pytest.raises(ValueError, match="grid"):
        sampler.generate([state, small], conditions(2))
    state.close()
    with pytest.raises(ValueError, match="no caches"):
        sampler.generate([state], conditions(1))


def test_warm_start_from_the_previous_frame(sampler: StreamingSampler) -> None:
    """start_t < 1: a chunk starts from the previous frame noised to start_t; still cached == naive,
    and a low start_t keeps the first chunk near the reference (the previous frame at stream start)."""
    data = CONFIG.model_dump()
    data["sampler"].update(start_t=0.05)
    warm = StreamingSampler(sampler.dit, ModelConfig.model_validate(data))
    cached, naive = warm.init_state(reference(), 9), warm.init_state(reference(), 9)
    for cond in conditions(4):
        assert (warm.generate([cached], [cond]) - warm.naive_generate([naive], [cond])).abs().max() <= 1e-4
    first = warm.generate([warm.init_state(reference(), 9)], conditions(1))[0, 0]
    cold = sampler.generate([sampler.init_state(reference(), 9)], conditions(1))[0, 0]
    assert (first - reference()[0]).abs().mean() < 0.5 * (cold - reference()[0]).abs().mean()


def _starting_guide_sampler() -> StreamingSampler:
    """A guide model (guide channels, x0 - guide prediction) whose output layer is still zero, the rest random."""
    config = CONFIG.model_copy(update={"dit": CONFIG.dit.model_copy(update={"concat_guide": True,
                                                                           "prediction": "guide_residual"})})
    torch.manual_seed(0)
    dit = OmniHumanDiT(**config.dit_kwargs()).eval()
    with torch.no_grad():
        for p in dit.parameters():
            if p.any():
                p.add_(torch.randn_like(p) * 0.1)
    return StreamingSampler(dit, config)


def _guided_conditions(n: int) -> list[ChunkConditions]:
    g = torch.Generator().manual_seed(9)
    return [ChunkConditions(audio=c.audio, pose=c.pose, text=c.text, guide=torch.randn(S.chunk_frames, *LAT, generator=g))
            for c in conditions(n)]


def test_a_dit_at_its_starting_point_returns_the_guide_without_running(monkeypatch: pytest.MonkeyPatch) -> None:
    """The DiT's output layer is zero: each chunk is exactly its guide and no chunk runs the DiT; once the layer
    is trained (not zero) the stream runs it again, its context K/V caught up, and equals the naive path."""
    sampler = _starting_guide_sampler()
    assert sampler.returns_guide
    cached, naive = sampler.init_state(reference(), seed=11), sampler.init_state(reference(), seed=11)
    calls = []
    monkeypatch.setattr(sampler.dit, "forward_chunk", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(sampler.dit, "encode_kv", lambda *a, **k: calls.append(1))
    for cond in _guided_conditions(3):
        assert torch.equal(sampler.generate([cached], [cond])[0], cond.guide)
        assert torch.equal(sampler.naive_generate([naive], [cond])[0], cond.guide)
    assert not calls and cached.context_kv_stale
    monkeypatch.undo()
    with torch.no_grad():
        sampler.dit.final_layer.linear.weight.add_(0.1)
    assert not sampler.returns_guide
    for cond in _guided_conditions(2):
        a, b = sampler.generate([cached], [cond]), sampler.naive_generate([naive], [cond])
        assert (a - b).abs().max() <= 1e-4 and not torch.equal(a[0], cond.guide)
    assert not cached.context_kv_stale
