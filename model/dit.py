"""OmniHumanDiT: one token sequence [reference | context | chunk] with 3D RoPE, block-causal
self-attention, frame-wise audio cross-attention, a pose guider on the input and text adaLN."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from model.conditioning.audio import AudioEncoder
from model.conditioning.pose import PoseGuider

KV = tuple[torch.Tensor, torch.Tensor]
PREDICTIONS = ("velocity", "guide_residual")  # what the output means (model/flow.py)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


#################################################################################
#                         Embedding layers and 3D RoPE                          #
#################################################################################


class TimestepEmbedder(nn.Module):
    """Flow time t in [0, 1] -> vector (sinusoidal features of 1000 t, then an MLP)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        """t [...] -> sinusoidal features [..., dim]."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[..., None].float() * freqs
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = self.timestep_embedding(t * 1000.0, self.frequency_embedding_size)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class RotaryEmbedding3D:
    """3D RoPE tables: the head dim is split into (t, h, w) parts; positions may be negative.

    A table depends only on the frames' temporal positions and the grid, and streaming asks for the same few
    every chunk (reference, context, chunk), so each is made once per device and kept (at most MAX_TABLES).
    """

    MAX_TABLES = 64  # distinct (positions, grid, device): a handful in streaming, a few more in training

    def __init__(self, head_dim: int, theta: float):
        hw = (3 * head_dim // 8) // 2 * 2
        self.axes_dim = (head_dim - 2 * hw, hw, hw)
        self.theta = theta
        self._tables: dict[tuple[tuple[float, ...], int, int, torch.device], torch.Tensor] = {}

    def _angles(self, pos: torch.Tensor, dim: int) -> torch.Tensor:
        inv = 1.0 / self.theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=pos.device) / dim)
        return pos[..., None].float() * inv

    def __call__(self, t_positions: tuple[float, ...], grid_h: int, grid_w: int, device: torch.device) -> torch.Tensor:
        """Temporal positions (T) -> complex rotations [T * grid_h * grid_w, head_dim / 2] on `device`."""
        key = (t_positions, grid_h, grid_w, torch.device(device))
        table = self._tables.get(key)
        if table is None:
            if len(self._tables) >= self.MAX_TABLES:
                self._tables.clear()
            with torch.inference_mode(False):  # a normal tensor: a table made while sampling serves training too
                table = self._table(torch.tensor(t_positions, dtype=torch.float32, device=device), grid_h, grid_w)
            self._tables[key] = table
        return table

    def _table(self, t_positions: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        device = t_positions.device
        n_t, n = t_positions.shape[0], grid_h * grid_w
        hh, ww = torch.meshgrid(torch.arange(grid_h, device=device), torch.arange(grid_w, device=device), indexing="ij")
        t = t_positions[:, None].expand(n_t, n)
        h = hh.reshape(1, n).expand(n_t, n)
        w = ww.reshape(1, n).expand(n_t, n)
        dt, dh, dw = self.axes_dim
        angles = torch.cat([self._angles(t, dt), self._angles(h, dh), self._angles(w, dw)], dim=-1)  # [T, N, D/2]
        angles = angles.reshape(n_t * n, -1)
        return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, rope: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate channel pairs of x [B, L, H, D] by token l's complex rotations rope [L, D/2]; written into
    `out` [B, L, H, D] (a float32 view, e.g. a slice of a K buffer) when given."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # [B, L, H, D/2]
    if out is not None and out.dtype == torch.float32:  # straight into the buffer
        torch.mul(pairs, rope[None, :, None], out=torch.view_as_complex(out.unflatten(-1, (-1, 2))))
        return out
    rotated = torch.view_as_real(pairs * rope[None, :, None]).flatten(-2).to(x.dtype)
    return rotated if out is None else out.copy_(rotated)


def block_causal_mask(num_reference: int, num_context: int, num_chunk: int, tokens_per_frame: int,
                      device: torch.device | None = None) -> torch.Tensor:
    """Boolean attention mask [1, 1, L, L] (True = attend) for [reference | context | chunk] tokens.

    reference -> reference; context frame j -> itself only; chunk -> everything.
    """
    r, m, f = num_reference, num_context, num_chunk
    frames = torch.zeros(r + m + f, r + m + f, dtype=torch.bool, device=device)
    frames[:r, :r] = True
    ctx = torch.arange(r, r + m, device=device)
    frames[ctx, ctx] = True
    frames[r + m:, :] = True
    tokens = frames.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)
    return tokens[None, None]


@dataclass
class ChunkConditioning:
    """Embedded chunk conditions, reusable across denoising steps (they do not depend on t)."""

    text: torch.Tensor  # [B, D] text embedding (or the null text)
    audio: torch.Tensor  # [B, F, W, D] audio window tokens (or the null audio)
    pose: torch.Tensor | None  # [B, F, P, h, w] pose guider channels, None = zeros


#################################################################################
#                                 Core DiT Model                                #
#################################################################################


class DiTBlock(nn.Module):
    """adaLN-Zero block: self-attention (3D RoPE), frame-wise audio cross-attention, MLP."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.num_heads = num_heads
        head_dim = hidden_size // num_heads
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.q_norm = nn.RMSNorm(head_dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(head_dim, eps=1e-6)
        self.attn_out = nn.Linear(hidden_size, hidden_size)
        self.norm_cross = nn.LayerNorm(hidden_size, eps=1e-6)
        self.cross_q = nn.Linear(hidden_size, hidden_size)
        self.cross_kv = nn.Linear(hidden_size, 2 * hidden_size)
        self.cross_out = nn.Linear(hidden_size, hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, mlp_hidden), nn.GELU(),
                                 nn.Linear(mlp_hidden, hidden_size))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def modulation(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-frame c [B, T, D] -> 6 modulation tensors [B, T, 1, D] (broadcast over tokens)."""
        return self.adaLN_modulation(c).unsqueeze(2).chunk(6, dim=-1)

    def qkv_pre_rope(self, x: torch.Tensor, shift: torch.Tensor,
                     scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, N, D] -> q, k, v [B, T*N, H, Dh] before RoPE."""
        b, t, n, d = x.shape
        h = modulate(self.norm1(x), shift, scale).reshape(b, t * n, d)
        q, k, v = self.qkv(h).reshape(b, t * n, 3, self.num_heads, d // self.num_heads).unbind(2)
        return self.q_norm(q), self.k_norm(k), v

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: torch.Tensor, prefix: KV | None = None,
                mask: torch.Tensor | None = None, audio: torch.Tensor | None = None) -> tuple[torch.Tensor, KV]:
        """x [B, T, N, D]; c [B, T, D]; prefix: (k, v) buffers [B, Lp + T*N, H, Dh] holding the cached rotated
        prefix K/V, attended first, whose last T*N rows take x's own (written in place, no copy of the prefix);
        audio [B, Fa, W, D] tokens for the last Fa frames. Returns (x, pre-RoPE (k, v) of x)."""
        b, t, n, d = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(c)
        q, k, v = self.qkv_pre_rope(x, shift_msa, scale_msa)
        kv = (k, v)
        q = apply_rope(q, rope)
        if prefix is None:
            k = apply_rope(k, rope)
        else:
            own = t * n
            apply_rope(k, rope, out=prefix[0][:, -own:])
            prefix[1][:, -own:] = v
            k, v = prefix
        o = dispatch_attention_fn(q, k, v, attn_mask=mask).reshape(b, t, n, d)
        x = x + gate_msa * self.attn_out(o)
        if audio is not None:
            x = self._cross_attend(x, audio)
        x = x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x, kv

    def _cross_attend(self, x: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Each of the last Fa frames' tokens attends to its own audio window tokens only."""
        b, t, n, d = x.shape
        fa, w = audio.shape[1], audio.shape[2]
        xa = x[:, t - fa:].reshape(b * fa, n, d)
        q = self.cross_q(self.norm_cross(xa)).reshape(b * fa, n, self.num_heads, -1)
        k, v = self.cross_kv(audio.reshape(b * fa, w, d)).reshape(b * fa, w, 2, self.num_heads, -1).unbind(2)
        o = dispatch_attention_fn(q, k, v).reshape(b, fa, n, d)
        if fa == t:  # a chunk pass: every frame has audio
            return x + self.cross_out(o)
        return torch.cat([x[:, : t - fa], x[:, t - fa:] + self.cross_out(o)], dim=1)


class FinalLayer(nn.Module):
    """adaLN + linear back to patches."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).unsqueeze(2).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))

    @property
    def outputs_zero(self) -> bool:
        """Whether the output is zero whatever the input: the linear's weight and bias are all zero (the DiT's
        starting point)."""
        return not (bool(self.linear.weight.any()) or bool(self.linear.bias.any()))


class OmniHumanDiT(ModelMixin, ConfigMixin):
    """Multi-condition video DiT over [reference R | context M | chunk F] frame latents.

    Reference and context frames are condition-free (timestep embedding only), so their per-layer
    K/V are shared by every CFG branch and can be cached. Text enters through adaLN: it is a global,
    per-clip condition, and adaLN is the cheapest way in that leaves the sequence length alone.
    Audio enters by frame-wise cross-attention, pose by channels concatenated to the chunk latents.
    With concat_reference the reference latent is also concatenated to every context and chunk
    frame's channels (as Stable Video Diffusion does with its conditioning frame): each token then
    sees the reference at its own position, so keeping the appearance is a per-token map a small
    model learns in few steps, while the packed reference tokens still serve attention.
    With concat_last_context the newest context frame's latent is concatenated to every chunk
    frame's channels the same way: continuing the motion starts from a per-token copy.
    With concat_guide each chunk frame also gets its own guide latent (model/guide.py: the avatar with
    the mouth opened as the motion model predicts) on its channels; with prediction "guide_residual"
    the output is the clean latent minus that guide (see model/flow.py), so a still face costs nothing.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        hidden_size: int = 128,
        depth: int = 6,
        num_heads: int = 4,
        patch_size: int = 2,
        mlp_ratio: float = 4.0,
        audio_feature_dim: int = 40,
        audio_frames_per_video_frame: int = 4,
        audio_window_frames: int = 4,
        pose_channels: int = 0,
        pose_neighbor_frames: int = 1,
        pose_guider_channels: int = 16,
        pose_latent_channels: int = 4,
        text_dim: int = 384,
        ref_index: int = -32,
        concat_reference: bool = False,
        concat_last_context: bool = False,
        concat_guide: bool = False,
        prediction: str = "velocity",
        rope_theta: float = 10000.0,
        frequency_embedding_size: int = 256,
    ):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if prediction == "guide_residual" and not concat_guide:
            raise ValueError("prediction 'guide_residual' needs concat_guide")
        self.gradient_checkpointing = False
        if pose_channels > 0:
            self.pose_guider = PoseGuider(pose_channels, pose_neighbor_frames, pose_guider_channels,
                                          pose_latent_channels)
            in_channels = latent_channels + pose_latent_channels
        else:
            self.pose_guider = None
            in_channels = latent_channels
        in_channels += latent_channels * (int(concat_reference) + int(concat_last_context) + int(concat_guide))
        self.x_embedder = nn.Linear(in_channels * patch_size * patch_size, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size, frequency_embedding_size)
        self.text_embedder = nn.Sequential(nn.Linear(text_dim, hidden_size), nn.SiLU(),
                                           nn.Linear(hidden_size, hidden_size))
        self.null_text = nn.Parameter(torch.zeros(hidden_size))
        self.audio_encoder = AudioEncoder(audio_feature_dim, audio_frames_per_video_frame, audio_window_frames,
                                          hidden_size)
        self.null_audio = nn.Parameter(torch.zeros(audio_window_frames, hidden_size))
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, latent_channels)
        self.rope = RotaryEmbedding3D(hidden_size // num_heads, rope_theta)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT-style init: xavier linears, zero adaLN modulation, zero final and cross-attn outputs."""

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        for name, module in self.named_modules():
            if not name.startswith("pose_guider"):
                _basic_init(module)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.normal_(self.null_audio, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
            nn.init.zeros_(block.cross_out.weight)
            nn.init.zeros_(block.cross_out.bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def load_state_dict_widening_input(self, state: dict[str, torch.Tensor]) -> None:
        """Load the weights of a DiT whose input had fewer channels (no reference / last-context channels):
        its x_embedder columns come first and the added channels start at zero, so this model starts out
        computing exactly what the source did (as inpainting models are initialised from text-to-image ones)."""
        source = state["x_embedder.weight"]  # [D, C_source * p * p]; patch vectors are channel-major
        own = self.x_embedder.weight
        if source.shape[0] == own.shape[0] and source.shape[1] < own.shape[1]:
            widened = own.new_zeros(own.shape)
            widened[:, : source.shape[1]] = source
            state = {**state, "x_embedder.weight": widened}
        self.load_state_dict(state)

    # ------------------------------------------------------------------ helpers

    def _patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, C, h, w] -> [B, T, N, C*p*p]."""
        b, t, c, h, w = x.shape
        p = self.config.patch_size
        x = x.reshape(b, t, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4, 6)  # [B, T, h/p, w/p, C, p, p]
        return x.reshape(b, t, (h // p) * (w // p), c * p * p)

    def _unpatchify(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """[B, T, N, C*p*p] -> [B, T, C, h, w]."""
        b, t = x.shape[:2]
        p, c = self.config.patch_size, self.config.latent_channels
        x = x.reshape(b, t, h // p, w // p, c, p, p).permute(0, 1, 4, 2, 5, 3, 6)  # [B, T, C, h/p, p, w/p, p]
        return x.reshape(b, t, c, h, w)

    def _grid(self, latents: torch.Tensor) -> tuple[int, int]:
        h, w = latents.shape[-2:]
        p = self.config.patch_size
        if h % p or w % p:
            raise ValueError(f"latent grid {h}x{w} is not a multiple of the patch size {p}")
        if latents.shape[-3] != self.config.latent_channels:
            raise ValueError(f"expected {self.config.latent_channels} latent channels, got {latents.shape[-3]}")
        return h // p, w // p

    def _embed(self, latents: torch.Tensor, pose_features: torch.Tensor | None,
               reference: torch.Tensor | None = None, last_context: torch.Tensor | None = None,
               guide: torch.Tensor | None = None) -> torch.Tensor:
        """latents [B, T, C, h, w] (+ pose channels [B, T, P, h, w], + reference / last-context / guide channels
        [B, T, C, h, w] when the config concatenates them; zeros where None) -> [B, T, N, D]."""
        b, t, c, h, w = latents.shape
        parts = [latents]
        if self.pose_guider is not None:
            parts.append(pose_features.to(latents.dtype) if pose_features is not None else
                         latents.new_zeros(b, t, self.config.pose_latent_channels, h, w))
        for enabled, channels in ((self.config.concat_reference, reference),
                                  (self.config.concat_last_context, last_context),
                                  (self.config.concat_guide, guide)):
            if enabled:
                parts.append(channels.to(latents.dtype) if channels is not None else latents.new_zeros(b, t, c, h, w))
        return self.x_embedder(self._patchify(torch.cat(parts, dim=2) if len(parts) > 1 else latents))

    @staticmethod
    def _repeat_frames(latent: torch.Tensor | None, frames: int) -> torch.Tensor | None:
        """latent [B, C, h, w] -> [B, frames, C, h, w] (None stays None)."""
        return None if latent is None else latent[:, None].expand(-1, frames, -1, -1, -1)

    def _text_embedding(self, text: torch.Tensor | None, drop: torch.Tensor | None, batch: int) -> torch.Tensor:
        """text [B, text_dim] or None -> [B, D]; dropped/missing rows get the learned null text."""
        null = self.null_text.expand(batch, -1)
        if text is None:
            return null
        emb = self.text_embedder(text.to(null.dtype))
        return emb if drop is None else torch.where(drop[:, None], null, emb)

    def _audio_tokens(self, audio: torch.Tensor | None, drop: torch.Tensor | None, batch: int,
                      frames: int) -> torch.Tensor:
        """audio [B, F, W, K, A] or None -> tokens [B, F, W, D]; dropped/missing get the null audio."""
        null = self.null_audio.expand(batch, frames, -1, -1)
        if audio is None:
            return null
        if audio.shape[:2] != (batch, frames) or audio.shape[2] != self.config.audio_window_frames:
            raise ValueError(f"audio windows must be [B={batch}, F={frames}, W={self.config.audio_window_frames}, "
                             f"K, A], got {list(audio.shape)}")
        tokens = self.audio_encoder(audio.to(null.dtype))
        return tokens if drop is None else torch.where(drop[:, None, None, None], null, tokens)

    def _pose_features(self, pose: torch.Tensor | None, drop: torch.Tensor | None) -> torch.Tensor | None:
        """heatmaps [B, F, G, h, w] or None -> guider channels [B, F, P, h, w] (None = zeros)."""
        if pose is None:
            return None
        if self.pose_guider is None:
            raise ValueError("this model has no pose guider (pose_channels = 0)")
        features = self.pose_guider(pose.to(self.x_embedder.weight.dtype))
        if drop is not None:
            features = features * (~drop).to(features.dtype)[:, None, None, None, None]
        return features

    def embed_conditions(self, batch: int, frames: int, audio: torch.Tensor | None = None,
                         pose: torch.Tensor | None = None, text: torch.Tensor | None = None,
                         drop_audio: torch.Tensor | None = None, drop_text: torch.Tensor | None = None,
                         drop_pose: torch.Tensor | None = None) -> ChunkConditioning:
        """Embed a chunk's conditions once (audio encoder, pose guider, text MLP) for all its steps."""
        return ChunkConditioning(text=self._text_embedding(text, drop_text, batch),
                                 audio=self._audio_tokens(audio, drop_audio, batch, frames),
                                 pose=self._pose_features(pose, drop_pose))

    def select_conditions(self, conditioning: ChunkConditioning, index: torch.Tensor, drop_audio: torch.Tensor,
                          drop_text: torch.Tensor) -> ChunkConditioning:
        """Rows index [B'] of embedded conditions, with audio/text replaced by their nulls where
        drop_* [B'] is set (the CFG branches of a batch)."""
        audio = conditioning.audio[index]
        text = conditioning.text[index]
        return ChunkConditioning(
            text=torch.where(drop_text[:, None], self.null_text.expand_as(text), text),
            audio=torch.where(drop_audio[:, None, None, None], self.null_audio.expand_as(audio), audio),
            pose=None if conditioning.pose is None else conditioning.pose[index])

    def _run_block(self, block: DiTBlock, *args: object) -> tuple[torch.Tensor, KV]:
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(block, *args)
        return block(*args)

    def _positions(self, num_reference: int, num_context: int, num_chunk: int) -> tuple[float, ...]:
        """Temporal RoPE index per frame: reference at ref_index, context -M..-1, chunk 0..F-1."""
        return (float(self.config.ref_index),) * num_reference + tuple(map(float, range(-num_context, num_chunk)))

    # ------------------------------------------------------------------ full (masked) path

    def forward(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        num_reference: int = 1,
        num_context: int = 0,
        audio: torch.Tensor | None = None,
        pose: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        drop_audio: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
        drop_pose: torch.Tensor | None = None,
        guide: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Output [B, T, C, h, w] (velocity, or clean latent minus guide) for latents [B, T, C, h, w] =
        [reference R | context M | chunk F].

        timesteps [B, T] flow times per frame; audio [B, F, W, K, A]; pose heatmaps [B, F, G, h, w];
        text [B, text_dim]; drop_* [B] bool: condition replaced by its null for that sample;
        guide [B, F, C, h, w] the chunk frames' guide latents (concat_guide).
        """
        b, t = latents.shape[:2]
        r, m = num_reference, num_context
        f = t - r - m
        if f <= 0:
            raise ValueError(f"{t} frames leave no chunk frames after {r} reference + {m} context")
        gh, gw = self._grid(latents)
        h, w = latents.shape[-2:]
        conditioning = self.embed_conditions(b, f, audio, pose, text, drop_audio, drop_text, drop_pose)
        pose_features = conditioning.pose
        if pose_features is not None:  # reference and context frames get no pose: zeros
            free = pose_features.new_zeros(b, r + m, *pose_features.shape[2:])
            pose_features = torch.cat([free, pose_features], dim=1)
        reference = last = None  # [B, T, C, h, w] channels: reference frames get zeros, chunk frames everything
        if self.config.concat_reference and r:
            reference = torch.cat([torch.zeros_like(latents[:, :r]), self._repeat_frames(latents[:, 0], m + f)], dim=1)
        if self.config.concat_last_context and m:
            last = torch.cat([torch.zeros_like(latents[:, :r + m]), self._repeat_frames(latents[:, r + m - 1], f)], dim=1)
        if guide is not None:  # reference and context frames get no guide: zeros
            guide = torch.cat([torch.zeros_like(latents[:, : r + m]), guide.to(latents.dtype)], dim=1)
        x = self._embed(latents, pose_features, reference, last, guide)  # [B, T, N, D]
        temb = self.t_embedder(timesteps)  # [B, T, D]
        cond = torch.cat([temb[:, : r + m], temb[:, r + m:] + conditioning.text[:, None]], dim=1)
        rope = self.rope(self._positions(r, m, f), gh, gw, latents.device)
        mask = block_causal_mask(r, m, f, gh * gw, latents.device)
        for block in self.blocks:
            x, _ = self._run_block(block, x, cond, rope, None, mask, conditioning.audio)
        return self._unpatchify(self.final_layer(x, cond), h, w)

    # ------------------------------------------------------------------ cached path

    def encode_kv(self, latents: torch.Tensor, timesteps: torch.Tensor, frame_local: bool,
                  reference: torch.Tensor | None = None) -> list[KV]:
        """Per-layer pre-RoPE (k, v), each [B, n, N, H, Dh], of condition-free frames [B, n, C, h, w].

        frame_local=False: the frames attend to each other (reference); True: each frame only to
        itself (context), with the session's reference latent [B, C, h, w] for concat_reference.
        RoPE of a frame's own temporal index cancels inside such attention, so the result does not
        depend on where the frames sit later.
        """
        b, n = latents.shape[:2]
        gh, gw = self._grid(latents)
        channels = self._repeat_frames(reference, n) if frame_local else None  # [B, n, C, h, w]
        if frame_local:
            channels = None if channels is None else channels.reshape(b * n, 1, *channels.shape[2:])
            latents = latents.reshape(b * n, 1, *latents.shape[2:])
            timesteps = timesteps.reshape(b * n, 1)
            positions: tuple[float, ...] = (0.0,)
        else:
            positions = (float(self.config.ref_index),) * n
        x = self._embed(latents, None, channels)
        cond = self.t_embedder(timesteps)
        rope = self.rope(positions, gh, gw, latents.device)
        kvs: list[KV] = []
        for block in self.blocks[:-1]:
            x, kv = block(x, cond, rope)
            kvs.append(kv)
        last = self.blocks[-1]
        _, k, v = last.qkv_pre_rope(x, *last.modulation(cond)[:2])
        kvs.append((k, v))
        heads, head_dim = k.shape[-2:]
        return [(k.reshape(b, n, gh * gw, heads, head_dim), v.reshape(b, n, gh * gw, heads, head_dim))
                for k, v in kvs]

    def prefix_kv(self, reference_kv: list[KV], context_kv: list[KV] | None, latent_hw: tuple[int, int],
                  chunk_frames: int) -> list[KV]:
        """Cached [B, n, N, H, Dh] K/V of reference + context (latent grid h x w) -> per-layer (k, v) buffers
        [B, (R+M+F)*N, H, Dh] for forward_chunk: the first (R+M)*N rows the prefix, keys rotated to their
        positions relative to the current chunk; the last F*N rows room for the chunk's own K/V."""
        rk0 = reference_kv[0][0]
        b, r, n, heads, head_dim = rk0.shape
        m = 0 if context_kv is None else context_kv[0][0].shape[1]
        p = self.config.patch_size
        rope = self.rope(self._positions(r, m, 0), latent_hw[0] // p, latent_hw[1] // p, rk0.device)
        split = r * n  # reference rows | context rows
        out: list[KV] = []
        for i, (rk, rv) in enumerate(reference_kv):
            k = rk.new_empty(b, (r + m + chunk_frames) * n, heads, head_dim)
            v = torch.empty_like(k)
            apply_rope(rk.flatten(1, 2), rope[:split], out=k[:, :split])
            v[:, :split] = rv.flatten(1, 2)
            if m:
                ck, cv = context_kv[i]  # type: ignore[index]
                apply_rope(ck.flatten(1, 2), rope[split:], out=k[:, split:split + m * n])
                v[:, split:split + m * n] = cv.flatten(1, 2)
            out.append((k, v))
        return out

    def forward_chunk(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        prefix: list[KV],
        audio: torch.Tensor | None = None,
        pose: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        drop_audio: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
        drop_pose: torch.Tensor | None = None,
        conditioning: ChunkConditioning | None = None,
        reference: torch.Tensor | None = None,
        last_context: torch.Tensor | None = None,
        guide: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Output [B, F, C, h, w] of chunk latents attending to cached prefix K/V buffers (from prefix_kv, whose
        room for the chunk's own K/V this call overwrites);
        equals the chunk part of forward() on [reference | context | chunk]. No mask is needed.
        `conditioning` (from embed_conditions) replaces audio/pose/text/drop_*; `reference` and
        `last_context` [B, C, h, w] are the first reference latent and the newest context input;
        `guide` [B, F, C, h, w] the chunk frames' guide latents."""
        b, f = latents.shape[:2]
        gh, gw = self._grid(latents)
        h, w = latents.shape[-2:]
        if conditioning is None:
            conditioning = self.embed_conditions(b, f, audio, pose, text, drop_audio, drop_text, drop_pose)
        x = self._embed(latents, conditioning.pose, self._repeat_frames(reference, f),
                        self._repeat_frames(last_context, f), guide)  # [B, F, N, D]
        cond = self.t_embedder(timesteps) + conditioning.text[:, None]  # [B, F, D]
        rope = self.rope(tuple(map(float, range(f))), gh, gw, latents.device)
        for block, kv in zip(self.blocks, prefix):
            x, _ = block(x, cond, rope, kv, None, conditioning.audio)
        return self._unpatchify(self.final_layer(x, cond), h, w)
