"""StreamState and StreamingSampler: chunked causal generation with cached reference/context K/V,
batched across sessions; naive_generate recomputes everything (the reference for tests)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from model.config import ModelConfig, SamplerSection
from model.dit import KV, OmniHumanDiT
from model.flow import (
    Branch,
    Guidance,
    add_noise,
    branch_weights,
    combine_branches,
    euler_step,
    timestep_schedule,
    x0_step,
)


@dataclass
class ChunkConditions:
    """Conditions of one session's next chunk (None = that condition is absent)."""

    audio: torch.Tensor | None = None  # [F, W, K, A] per-frame audio windows
    pose: torch.Tensor | None = None  # [F, G, h, w] heatmaps at latent resolution
    text: torch.Tensor | None = None  # [text_dim] sentence embedding
    guidance: Guidance | None = None  # None = the config's guidance
    guide: torch.Tensor | None = None  # [F, C, h, w] mouth-guide latents (None: the closed-mouth reference)
    mouth_open: torch.Tensor | None = None  # [F] the openness the guide was blended at (reported, not sampled on)
    eyes_shut: torch.Tensor | None = None  # [F] how far the guide's eyes are shut (reported, not sampled on)
    head: torch.Tensor | None = None  # [F or 1, H, W, 2] pose-warp grids the decoded frames go through (not sampled on)


@dataclass
class StreamState:
    """One session: reference K/V (cached once), rolling context of the last M frames, rng, counter.

    context_latents are the context frames as the model sees them (noised to context_t); the K/V
    lists hold per-layer pre-RoPE (k, v) [n, N, H, Dh] and are absent for naive-only use.
    last_frame is the newest generated latent, clean (the reference before the first chunk).
    With mouth_cells [h, w] (a guide model) the reference and context latents have those cells zeroed,
    so the chunk's guide is the only mouth the model sees; closed_guide is the unhidden reference.
    """

    reference_latents: torch.Tensor  # [R, C, h, w]
    context_latents: torch.Tensor  # [M, C, h, w]
    last_frame: torch.Tensor  # [C, h, w]
    generator: torch.Generator
    seed: int
    closed_guide: torch.Tensor  # [C, h, w] the unhidden reference: the guide of a chunk that brings none
    frame_index: int = 0
    reference_kv: list[KV] | None = field(default=None, repr=False)
    context_kv: list[KV] | None = field(default=None, repr=False)
    context_kv_stale: bool = False  # the context rolled on without its K/V (chunks of a DiT that returns its guide)
    mouth_cells: torch.Tensor | None = None  # [h, w] bool

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.reference_latents.shape[-2:])  # type: ignore[return-value]

    def close(self) -> None:
        """Drop the caches (frees their memory)."""
        self.reference_kv = None
        self.context_kv = None


class StreamingSampler:
    """Generates chunk after chunk for a batch of sessions; one DiT forward per Euler step."""

    def __init__(self, dit: OmniHumanDiT, config: ModelConfig | SamplerSection):
        self.dit = dit
        self.config = config.sampler if isinstance(config, ModelConfig) else config

    @property
    def _device(self) -> torch.device:
        # the first parameter, not ModelMixin.device: that walks every module (~1 ms a call on CPU)
        return next(self.dit.parameters()).device

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.dit.parameters()).dtype

    # ------------------------------------------------------------------ state

    @property
    def _guided_model(self) -> bool:
        return self.dit.config["prediction"] == "guide_residual"

    @property
    def returns_guide(self) -> bool:
        """A guide model whose DiT outputs zero (its starting point, tiny v3): it predicts x0 - guide = 0, so
        every Euler step lands on the guide and a chunk is its guide exactly; the DiT need not run."""
        return self._guided_model and self.dit.final_layer.outputs_zero

    @torch.inference_mode()
    def init_state(self, reference_latents: torch.Tensor, seed: int, with_cache: bool = True,
                   mouth_cells: torch.Tensor | None = None) -> StreamState:
        """New session from reference latents [R, C, h, w]; the context window starts as the last
        reference frame repeated M times; reference and context K/V are computed here, once.
        mouth_cells [h, w] bool: cells hidden from reference and context (a guide model's avatar)."""
        if reference_latents.ndim != 4:
            raise ValueError(f"reference latents must be [R, C, h, w], got {list(reference_latents.shape)}")
        cfg = self.config
        if reference_latents.shape[0] != cfg.reference_frames:
            raise ValueError(f"expected {cfg.reference_frames} reference frames, got {reference_latents.shape[0]}")
        clean = reference_latents.to(self._device, self._dtype)
        cells = None if mouth_cells is None else mouth_cells.to(self._device, torch.bool)
        ref = clean if cells is None else clean.masked_fill(cells, 0.0)
        generator = torch.Generator(device=self._device).manual_seed(seed)
        start = ref[-1:].expand(cfg.context_frames, *ref.shape[1:])
        state = StreamState(reference_latents=ref, context_latents=self._noise_context(start, generator),
                            last_frame=clean[-1].clone(), generator=generator, seed=seed, mouth_cells=cells,
                            closed_guide=clean[-1].clone())
        if with_cache:
            r = ref.shape[0]
            state.reference_kv = [(k[0], v[0]) for k, v in
                                  self.dit.encode_kv(ref[None], ref.new_zeros(1, r), frame_local=False)]
            state.context_kv = self._context_kv(state.context_latents, ref) if cfg.context_frames else None
        return state

    def _noise_context(self, latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Clean frames [n, C, h, w] -> context inputs noised to context_t (one draw from the rng)."""
        ct = self.config.context_t
        if ct == 0.0 or latents.shape[0] == 0:
            return latents.clone()
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        return add_noise(latents, noise, torch.tensor(ct, device=latents.device))

    def _context_kv(self, context_latents: torch.Tensor, reference_latents: torch.Tensor) -> list[KV]:
        """Frame-local K/V of context inputs [n, C, h, w] of a session with reference latents
        [R, C, h, w] -> per layer [n, N, H, Dh]."""
        n = context_latents.shape[0]
        times = context_latents.new_full((1, n), self.config.context_t)
        return [(k[0], v[0]) for k, v in self.dit.encode_kv(context_latents[None], times, frame_local=True,
                                                             reference=reference_latents[:1])]

    def _advance(self, state: StreamState, frames: torch.Tensor, with_cache: bool,
                 context: torch.Tensor | None = None, encode: bool = True) -> None:
        """Roll the context window by a finished chunk [F, C, h, w] (or by `context` [F, C, h, w], what the
        context shows of it); K/V only for entering frames, none without `encode` (marked stale instead)."""
        m = self.config.context_frames
        state.frame_index += frames.shape[0]
        state.last_frame = frames[-1]
        if m == 0:
            return
        shown = frames if context is None else context
        newest = shown[-m:] if state.mouth_cells is None else shown[-m:].masked_fill(state.mouth_cells, 0.0)
        entering = self._noise_context(newest, state.generator)
        n = entering.shape[0]
        state.context_latents = torch.cat([state.context_latents[n:], entering], dim=0)
        if not with_cache:
            state.context_kv = None  # stale now: this state continues on the naive path only
        elif not encode or state.context_kv_stale:
            state.context_kv_stale = True
        else:
            new_kv = self._context_kv(entering, state.reference_latents)
            state.context_kv = [(torch.cat([k[n:], nk], dim=0), torch.cat([v[n:], nv], dim=0))
                                for (k, v), (nk, nv) in zip(state.context_kv, new_kv)]  # type: ignore[arg-type]

    # ------------------------------------------------------------------ generation

    def _check(self, states: list[StreamState], conditions: list[ChunkConditions]) -> None:
        if not states or len(states) != len(conditions):
            raise ValueError("need one ChunkConditions per state, and at least one state")
        if len({s.grid for s in states}) != 1:
            raise ValueError("sessions batched together must share the latent grid")

    def _rows(self, states: list[StreamState], conditions: list[ChunkConditions], step: int,
              steps: int) -> tuple[list[tuple[int, Branch]], list[dict[Branch, float]]]:
        """The (session, branch) rows of this step's forward and each session's branch weights."""
        rows: list[tuple[int, Branch]] = []
        weights: list[dict[Branch, float]] = []
        default = Guidance.from_config(self.config)
        for i, cond in enumerate(conditions):
            s_audio, s_text = (cond.guidance or default).scales(step, steps)
            # an absent condition makes its branches identical: guide nothing on it
            s_audio = 1.0 if cond.audio is None else s_audio
            s_text = 1.0 if cond.text is None else s_text
            w = branch_weights(s_audio, s_text)
            weights.append(w)
            rows.extend((i, b) for b in w)
        return rows, weights

    def _row_inputs(self, rows: list[tuple[int, Branch]], conditions: list[ChunkConditions],
                    frames: int) -> dict[str, torch.Tensor | None]:
        """Batch the raw conditions of each row: audio/pose/text stacked, drop masks per branch."""
        dev, dt = self._device, self._dtype

        def stack(name: str) -> torch.Tensor | None:
            items = [getattr(conditions[i], name) for i, _ in rows]
            if all(x is None for x in items):
                return None
            like = next(x for x in items if x is not None)
            return torch.stack([(x if x is not None else torch.zeros_like(like)).to(dev, dt) for x in items])

        audio, pose, text = stack("audio"), stack("pose"), stack("text")
        drop_audio = torch.tensor([b.drop_audio or conditions[i].audio is None for i, b in rows], device=dev)
        drop_text = torch.tensor([b.drop_text or conditions[i].text is None for i, b in rows], device=dev)
        drop_pose = torch.tensor([conditions[i].pose is None for i, _ in rows], device=dev)
        if audio is not None and audio.shape[1] != frames:
            raise ValueError(f"audio windows cover {audio.shape[1]} frames, the chunk has {frames}")
        return dict(audio=audio, pose=pose, text=text, drop_audio=drop_audio, drop_text=drop_text,
                    drop_pose=drop_pose)

    def _prefix(self, states: list[StreamState]) -> list[KV]:
        """Reference + context K/V of every session rotated to this chunk's positions, in buffers with room
        for the chunk's own: per layer (k, v) [S, (R+M+F)*N, H, Dh]; once per chunk, shared by all steps and
        CFG branches."""
        def stack(per_session: list[torch.Tensor]) -> torch.Tensor:  # S x [n, N, H, Dh] -> [S, n, N, H, Dh]
            return per_session[0][None] if len(per_session) == 1 else torch.stack(per_session)

        def batched(caches: list[list[KV]]) -> list[KV]:
            return [(stack([c[layer][0] for c in caches]), stack([c[layer][1] for c in caches]))
                    for layer in range(len(caches[0]))]

        context = batched([s.context_kv for s in states]) if self.config.context_frames else None  # type: ignore[misc]
        return self.dit.prefix_kv(batched([s.reference_kv for s in states]), context,  # type: ignore[misc]
                                  states[0].grid, self.config.chunk_frames)

    def _guides(self, states: list[StreamState], conditions: list[ChunkConditions]) -> torch.Tensor:
        """Each session's chunk guide [S, F, C, h, w]: the conditions' guide, else the closed-mouth reference."""
        f = self.config.chunk_frames
        out = []
        for state, cond in zip(states, conditions):
            if cond.guide is not None:
                if cond.guide.shape[0] != f:
                    raise ValueError(f"the guide covers {cond.guide.shape[0]} frames, the chunk has {f}")
                out.append(cond.guide.to(self._device, self._dtype))
            else:
                out.append(state.closed_guide[None].expand(f, *state.closed_guide.shape))
        return torch.stack(out)

    @staticmethod
    def _guided(v_rows: torch.Tensor, rows: list[tuple[int, Branch]],
                weights: list[dict[Branch, float]]) -> torch.Tensor:
        """Row velocities [rows, F, C, h, w] -> each session's guided velocity [S, F, C, h, w]."""
        velocity = []
        for i, w in enumerate(weights):
            branches = {b: v_rows[j] for j, (si, b) in enumerate(rows) if si == i}
            velocity.append(combine_branches(branches, w))
        return torch.stack(velocity)

    def _sample(self, states: list[StreamState], conditions: list[ChunkConditions], steps: int | None,
                cached: bool) -> torch.Tensor:
        self._check(states, conditions)
        cfg = self.config
        steps = steps or cfg.steps
        f = cfg.chunk_frames
        shape = (f, *states[0].reference_latents.shape[1:])
        x = torch.stack([torch.randn(shape, generator=s.generator, device=self._device, dtype=self._dtype)
                         for s in states])  # [S, F, C, h, w]
        guides = self._guides(states, conditions) if self._guided_model else None  # [S, F, C, h, w]
        if guides is not None and self.returns_guide:
            return self._finish(states, guides.clone(), guides, cached, encode=False)
        if guides is not None:
            x = x + guides  # noise centred on the guide
        if cached:
            for s in states:
                if s.context_kv_stale:  # the DiT returned its guide before: its context K/V were not kept up
                    s.context_kv, s.context_kv_stale = self._context_kv(s.context_latents, s.reference_latents), False
            # conditions embedded once per chunk, one row per session (only absent conditions dropped)
            embedded = self.dit.embed_conditions(len(states), f, **self._row_inputs(
                [(i, Branch.FULL) for i in range(len(states))], conditions, f))
            prefix = self._prefix(states)
            references = torch.stack([s.reference_latents[0] for s in states])  # [S, C, h, w]
            lasts = torch.stack([s.context_latents[-1] for s in states]) if cfg.context_frames else None
        else:
            r, m = states[0].reference_latents.shape[0], states[0].context_latents.shape[0]
            free = torch.stack([torch.cat([s.reference_latents, s.context_latents]) for s in states])
            free_t = torch.cat([torch.zeros(len(states), r), torch.full((len(states), m), cfg.context_t)], 1)
            free_t = free_t.to(self._device, self._dtype)
        if cfg.start_t < 1.0:  # warm start: the previous frame noised to start_t, a schedule from there
            x = add_noise(torch.stack([s.last_frame for s in states])[:, None], x, torch.tensor(cfg.start_t))
        times = timestep_schedule(steps, cfg.time_shift) * cfg.start_t
        for step in range(steps):
            t, t_next = float(times[step]), float(times[step + 1])
            rows, weights = self._rows(states, conditions, step, steps)
            index = torch.tensor([i for i, _ in rows], device=self._device)
            chunk_t = x.new_full((len(rows), f), t)
            if cached:
                one_row_each = len(rows) == len(states)  # no CFG branches: rows are the sessions in order
                kv = prefix if one_row_each else [(k[index], v[index]) for k, v in prefix]
                drop_audio = torch.tensor([b.drop_audio for _, b in rows], device=self._device)
                drop_text = torch.tensor([b.drop_text for _, b in rows], device=self._device)
                rows_cond = self.dit.select_conditions(embedded, index, drop_audio, drop_text)
                v_rows = self.dit.forward_chunk(x if one_row_each else x[index], chunk_t, kv, conditioning=rows_cond,
                                                reference=references if one_row_each else references[index],
                                                last_context=lasts if one_row_each or lasts is None else lasts[index],
                                                guide=None if guides is None else guides[index])
            else:
                inputs = self._row_inputs(rows, conditions, f)
                latents = torch.cat([free[index], x[index]], dim=1)
                timesteps = torch.cat([free_t[index], chunk_t], dim=1)
                v_rows = self.dit(latents, timesteps, num_reference=r, num_context=m, **inputs,
                                  guide=None if guides is None else guides[index])[:, r + m:]
            out = self._guided(v_rows, rows, weights)
            x = euler_step(x, out, t, t_next) if guides is None else x0_step(x, guides + out, t, t_next)
        return self._finish(states, x, guides, cached)

    def _finish(self, states: list[StreamState], x: torch.Tensor, guides: torch.Tensor | None, cached: bool,
                encode: bool = True) -> torch.Tensor:
        """Advance each session by its chunk of x [S, F, C, h, w] (its context shows the guide with
        context_source "guide"); returns x."""
        contexts = guides if self.config.context_source == "guide" else None
        for i, (s, frames) in enumerate(zip(states, x)):
            self._advance(s, frames, with_cache=cached, context=None if contexts is None else contexts[i], encode=encode)
        return x

    @torch.inference_mode()
    def generate(self, states: list[StreamState], conditions: list[ChunkConditions],
                 steps: int | None = None) -> torch.Tensor:
        """Clean latents [B, F, C, h, w] of the next chunk of every session (cached K/V); each state's
        context window and its K/V advance by the new frames."""
        for s in states:
            if s.reference_kv is None or (self.config.context_frames and s.context_kv is None):
                raise ValueError("stream state has no caches (closed, made with with_cache=False, or "
                                 "advanced by naive_generate)")
        return self._sample(states, conditions, steps, cached=True)

    @torch.inference_mode()
    def naive_generate(self, states: list[StreamState], conditions: list[ChunkConditions],
                       steps: int | None = None) -> torch.Tensor:
        """The same as generate(), recomputing the full masked DiT over [reference | context | chunk]
        for every step without caches; the same noise draws from each state's rng."""
        return self._sample(states, conditions, steps, cached=False)
