"""MDTv2 (Masked Diffusion Transformer v2) and the DiT baseline, written in DiT's style.

Every hot path goes through ``mdt_kernels`` (token gather/scatter of the masked pass, relative position
bias, LayerNorm + adaLN modulation, gated residuals), so ``mdt_kernels.use_backend`` changes speed only.
Parameter and buffer names and shapes equal those of the official code, so published checkpoints load
with ``strict=True``.
References:
  MDT / MDTv2: https://github.com/sail-sg/MDT (masked_diffusion/models.py)
  DiT:         https://github.com/facebookresearch/DiT (models.py)
  MAE:         https://github.com/facebookresearch/mae (sin-cos tables, per-sample random masking)
  BEiT:        https://github.com/microsoft/unilm/tree/master/beit (relative position bias)
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

import mdt_kernels as mk

try:  # optional: memory-efficient attention with a learned additive bias on CUDA
    import xformers.ops as xops
except ImportError:
    xops = None

LN_EPS = 1e-6  # LayerNorm (no affine) epsilon of every DiT/MDT block
FREQ_EMBED_SIZE = 256  # sinusoidal timestep features fed to the timestep MLP
MAX_PERIOD = 10000  # lowest frequency of the timestep and position sin-cos features
NUM_EXTRA_REL = 3  # BEiT's cls-token rows of the relative bias table: stored in MDT checkpoints, never read
MASK_RATIO_SPAN = 0.2  # MDTv2 draws the mask ratio from [mask_ratio, mask_ratio + 0.2) per masked forward
CFG_LEGACY_CHANNELS = 3  # DiT/MDT guide only the first 3 of the 4 eps channels ("exact reproducibility")
ATTENTION_BACKENDS = ("auto", "mdt_kernels", "sdpa", "xformers", "math")


#################################################################################
#                         Attention with Relative Position Bias                  #
#################################################################################

def relative_position_index(grid_size: int) -> torch.Tensor:
    """(N, N) row of the bias table for each token pair of a G x G grid: (dr + G - 1) * (2G - 1) + dc + G - 1."""
    r, c = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    r, c = r.flatten(), c.flatten()  # (N,), row-major
    dr = r[:, None] - r[None, :] + grid_size - 1
    dc = c[:, None] - c[None, :] + grid_size - 1
    return dr * (2 * grid_size - 1) + dc


class RelativePositionBias(nn.Module):
    """A learned per-head bias for every relative offset of the token grid (BEiT), read through mdt_kernels."""

    def __init__(self, grid_size, num_heads):
        super().__init__()
        self.grid_size = grid_size
        num_relative_distance = (2 * grid_size - 1) ** 2 + NUM_EXTRA_REL
        self.relative_position_bias_table = nn.Parameter(torch.zeros(num_relative_distance, num_heads))
        # Kept (persistent) only so MDT checkpoints load strictly; the kernel computes the index itself.
        self.register_buffer("relative_position_index", relative_position_index(grid_size))

    def forward(self, ids_keep=None):
        """(H, N, N) for the full grid, or (B, H, K, K) among each sample's kept tokens ids_keep (B, K)."""
        return mk.masked_rel_pos_bias(self.relative_position_bias_table, self.grid_size, ids_keep)


def attention_backend(backend, x, rel_pos):
    """The attention implementation for tokens x: 'auto' takes mdt_kernels' fused attention where the
    dispatcher runs one of its kernels for x (mdt_kernels.runs_fused; a block with a relative-position bias),
    else xformers on CUDA when installed, else SDPA."""
    if backend != "auto":
        if backend == "mdt_kernels" and not rel_pos:
            raise ValueError("attention backend 'mdt_kernels' needs a relative position bias (MDT blocks); "
                             "this block has none")
        return backend
    if rel_pos and mk.runs_fused("rel_pos_attention", x.device):
        return "mdt_kernels"
    return "xformers" if x.is_cuda and xops is not None else "sdpa"


def attention(q, k, v, bias=None, backend="sdpa"):
    """softmax(q k^T / sqrt(Dh) + bias) v for q, k, v (B, H, N, Dh); bias broadcasts to (B, H, N, N)."""
    if bias is not None:
        bias = bias.to(q.dtype)
    if backend == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        # SDPA gives no gradient to the bias of an empty output; DDP needs one (zeros) from every rank.
        return out + 0 * bias.sum() if bias is not None and out.numel() == 0 else out
    if backend == "math":  # the official implementation's explicit form
        attn = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, N, N)
        if bias is not None:
            attn = attn + bias
        return attn.softmax(dim=-1) @ v
    if backend == "xformers":
        if xops is None:
            raise RuntimeError("attention backend 'xformers' requested but xformers is not installed")
        if bias is not None:  # xformers wants a dense bias whose rows start 8-element aligned
            B, H, N = q.shape[0], q.shape[1], q.shape[2]
            bias = F.pad(bias.expand(B, H, N, N), (0, -N % 8))[..., :N]
        out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias)
        return out.transpose(1, 2)
    raise ValueError(f"unknown attention backend {backend!r}; choose one of {ATTENTION_BACKENDS}")


class Linear(nn.Linear):
    """nn.Linear (same parameters and state-dict keys) run as mdt_kernels.linear: where the dispatcher runs
    its CPU kernel, the GEMMs run on the engine mdt_kernels.cpu_gemm_engine(dtype) names; elsewhere (the
    reference, GPUs) it is F.linear. For the per-token projections; the per-sample ones (adaLN, timestep MLP:
    a batch of rows) keep nn.Linear, where the op's call overhead would outweigh the GEMM."""

    def forward(self, x):
        return mk.linear(x, self.weight, self.bias)


class Attention(nn.Module):
    """Multi-head self-attention, with MDT's relative position bias when given a grid size."""

    def __init__(self, dim, num_heads, grid_size=None):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = Linear(dim, 3 * dim)
        self.proj = Linear(dim, dim)
        self.rel_pos_bias = RelativePositionBias(grid_size, num_heads) if grid_size else None
        self.backend = "auto"

    def forward(self, x, ids_keep=None):
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads)  # (B, N, 3, H, Dh)
        rel = self.rel_pos_bias
        backend = attention_backend(self.backend, x, rel is not None)
        if backend == "mdt_kernels":  # bias, attention and both transposes in one op
            x = mk.rel_pos_attention(qkv, rel.relative_position_bias_table, rel.grid_size, ids_keep)  # (B, N, H, Dh)
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, H, N, Dh)
            x = attention(q, k, v, rel(ids_keep) if rel is not None else None, backend).transpose(1, 2)  # (B, N, H, Dh)
        return self.proj(x.reshape(B, N, D))


#################################################################################
#               Embedding Layers for Patches, Timesteps and Class Labels         #
#################################################################################

class PatchEmbed(nn.Module):
    """Image to patch tokens with a strided convolution (timm's PatchEmbed without its optional norm)."""

    def __init__(self, img_size, patch_size, in_chans, embed_dim):
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D), row-major over the grid


class Mlp(nn.Module):
    """Linear -> GELU (tanh approximation) -> Linear; fc1 and the GELU run as one mdt_kernels op."""

    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)  # its parameters only: linear_gelu runs it
        self.fc2 = Linear(hidden_dim, dim)

    def forward(self, x):
        return self.fc2(mk.linear_gelu(x, self.fc1.weight, self.fc1.bias))


class TimestepEmbedder(nn.Module):
    """Embeds scalar timesteps into vectors: sinusoidal features, then a two-layer MLP."""

    def __init__(self, hidden_size, frequency_embedding_size=FREQ_EMBED_SIZE):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t, dim, max_period=MAX_PERIOD):
        """(B,) timesteps (may be fractional) -> (B, dim) features [cos(t f_i), sin(t f_i)] (GLIDE/ADM)."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
        args = t[:, None].float() * freqs[None]  # (B, half)
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t):
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size)  # (B, 256), float32
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))  # (B, D)


class LabelEmbedder(nn.Module):
    """Embeds class labels; during training drops labels to the null class (num_classes) for CFG."""

    def __init__(self, num_classes, hidden_size, dropout_prob):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels, force_drop_ids=None):
        if force_drop_ids is None:  # drawn on the CPU generator, like DiT and MDT
            drop_ids = torch.rand(labels.shape[0]) < self.dropout_prob
        else:
            drop_ids = force_drop_ids == 1
        return torch.where(drop_ids.to(labels.device), self.num_classes, labels)

    def forward(self, labels, train, force_drop_ids=None):
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)  # (B, D)


#################################################################################
#                                 Core Blocks                                    #
#################################################################################

class MDTBlock(nn.Module):
    """adaLN-Zero transformer block (DiT) with optional relative position bias and long-skip fusion (MDTv2)."""

    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, grid_size=None, skip=False):
        super().__init__()
        self.attn = Attention(hidden_size, num_heads, grid_size)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.skip_linear = Linear(2 * hidden_size, hidden_size) if skip else None

    def forward(self, x, c, skip=None, ids_keep=None):
        if self.skip_linear is not None:  # fuse the long shortcut: Linear(concat(x, skip)), not gated
            x = self.skip_linear(torch.cat([x, skip], dim=-1))  # (B, N, D)
        # (B, D) views each, passed to the kernels as they are; the cast is a no-op outside autocast.
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.adaLN_modulation(c).to(x.dtype).chunk(6, dim=1))
        y = self.attn(mk.adaln_modulate(x, shift_msa, scale_msa, LN_EPS), ids_keep)  # (B, N, D)
        x, h = mk.residual_adaln_modulate(x, gate_msa, y.to(x.dtype), shift_mlp, scale_mlp, LN_EPS)  # (B, N, D) x2
        return mk.gated_residual(x, gate_mlp, self.mlp(h).to(x.dtype))  # (B, N, D)


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm, then a linear map of each token to its patch of output channels."""

    def __init__(self, hidden_size, patch_size, out_channels):
        super().__init__()
        self.linear = Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).to(x.dtype).chunk(2, dim=1)
        return self.linear(mk.adaln_modulate(x, shift, scale, LN_EPS))  # (B, N, p * p * C_out)


#################################################################################
#                                 Core Models                                    #
#################################################################################

class _DiffusionTransformer(nn.Module):
    """What DiT and MDTv2 share: input embeddings, weight init of the shared parts, unpatchify, guidance."""

    def _build_embedders(self, input_size, patch_size, in_channels, hidden_size, num_heads, class_dropout_prob,
                         num_classes, learn_sigma, pos_embed_trainable):
        self.grad_checkpoint = False  # recompute each block in the backward instead of keeping its activations
        self.learn_sigma = learn_sigma
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        # num_classes 0: an unconditional model, conditioned on the timestep only (no label table).
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob) if num_classes else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.x_embedder.num_patches, hidden_size),
                                      requires_grad=pos_embed_trainable)

    def _init_shared(self, blocks):
        # Xavier-uniform for every Linear, zero biases:
        def _basic_init(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        self.apply(_basic_init)
        # Absolute position embedding from the 2-D sin-cos table:
        self.pos_embed.data.copy_(get_2d_sincos_pos_embed(self.pos_embed.shape[-1], self.x_embedder.grid_size))
        # Patch embedding like a Linear (instead of a Conv2d):
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.zeros_(self.x_embedder.proj.bias)
        # Label table and timestep MLP:
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # adaLN-Zero: every block starts as the identity ...
        for block in blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        # ... and the model's output starts at exactly zero:
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def _embed(self, x, t, y, force_drop_ids=None):
        x = self.x_embedder(x) + self.pos_embed  # (B, N, D), N = H * W / patch_size ** 2
        c = self.t_embedder(t)  # (B, D)
        if self.y_embedder is not None:
            c = c + self.y_embedder(y, self.training, force_drop_ids)
        return x, c

    def _block(self, block, *args, **kwargs):
        """block(*args, **kwargs), recomputed in the backward under grad_checkpoint (non-reentrant)."""
        if self.grad_checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False, **kwargs)
        return block(*args, **kwargs)

    def unpatchify(self, x):
        """(B, N, p * p * C) tokens -> (B, C, H, W) image."""
        c, p = self.out_channels, self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        assert h * w == x.shape[1]
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def set_attention_backend(self, backend):
        """'auto' (CUDA: xformers when installed, else SDPA; other devices: mdt_kernels.rel_pos_attention in
        blocks with a relative position bias, else SDPA), 'mdt_kernels', 'sdpa', 'xformers' or 'math'."""
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose one of {ATTENTION_BACKENDS}")
        for module in self.modules():
            if isinstance(module, Attention):
                module.backend = backend
        return self

    def forward_with_cfg(self, x, t, y, cfg_scale=None, diffusion_steps=1000, scale_pow=None, guided_channels="auto"):
        """Classifier-free guidance on a batch [cond half; uncond half] with the same noise in both halves.

        y holds the class labels of the first half and the null class (num_classes) in the second. The guidance
        scale follows MDT's power-cosine schedule (``cfg_schedule``); scale_pow defaults to the model's
        ``cfg_scale_pow`` (MDTv2: 4, as MDT samples; DiT: 0, a constant scale).
        Guidance applies to the first ``guided_channels`` eps channels: 3 reproduces DiT/MDT exactly (their legacy
        quirk), None guides all of them, "auto" is 3 for a 4-channel (SD latent) model and all channels otherwise;
        the other channels (and the learned variance) are each half's raw output.
        """
        if cfg_scale is None:
            return self.forward(x, t, y)
        if self.y_embedder is None:
            raise ValueError("classifier-free guidance needs a class-conditional model; this one is unconditional")
        half = x[: len(x) // 2]
        model_out = self.forward(torch.cat([half, half], dim=0), t, y)  # (2B, C_out, H, W)
        if guided_channels == "auto":
            guided_channels = CFG_LEGACY_CHANNELS if self.in_channels == 4 else None
        n = self.in_channels if guided_channels is None else guided_channels
        eps, rest = model_out[:, :n], model_out[:, n:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        scale_pow = self.cfg_scale_pow if scale_pow is None else scale_pow
        scale = cfg_schedule(t, cfg_scale, diffusion_steps, scale_pow)[: len(x) // 2].view(-1, 1, 1, 1)
        half_eps = uncond_eps + scale * (cond_eps - uncond_eps)
        return torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=1)


class MDTv2(_DiffusionTransformer):
    """Masked Diffusion Transformer v2: U-Net-skip encoder, side-interpolater, decoder with dense input skips."""

    cfg_scale_pow = 4.0  # MDT's default guidance schedule (scripts/image_sample.py)

    def __init__(self, input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16,
                 mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, learn_sigma=True, mask_ratio=None,
                 decode_layer=4):
        super().__init__()
        self._build_embedders(input_size, patch_size, in_channels, hidden_size, num_heads, class_dropout_prob,
                              num_classes, learn_sigma, pos_embed_trainable=True)  # learnable, sin-cos init
        grid = self.x_embedder.grid_size
        block = functools.partial(MDTBlock, hidden_size, num_heads, mlp_ratio, grid)
        self.decode_layer = int(decode_layer)
        self.half_depth = (depth - self.decode_layer) // 2  # as in MDT: an odd remainder is dropped
        self.en_inblocks = nn.ModuleList([block() for _ in range(self.half_depth)])
        self.en_outblocks = nn.ModuleList([block(skip=True) for _ in range(self.half_depth)])
        self.de_blocks = nn.ModuleList([block(skip=True) for _ in range(self.decode_layer)])
        self.sideblocks = nn.ModuleList([block()])  # the side-interpolater, run only in the masked pass
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, self.x_embedder.num_patches, hidden_size))
        self.mask_ratio = None if mask_ratio is None else float(mask_ratio)
        # Without masking (sampling) the mask token stays, frozen, so training checkpoints load strictly.
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden_size), requires_grad=mask_ratio is not None)
        self.initialize_weights()

    def initialize_weights(self):
        self._init_shared([*self.en_inblocks, *self.en_outblocks, *self.de_blocks, *self.sideblocks])
        self.decoder_pos_embed.data.copy_(get_2d_sincos_pos_embed(self.decoder_pos_embed.shape[-1],
                                                                  self.x_embedder.grid_size))
        for module in self.modules():  # the xavier pass above touches Linears only
            if isinstance(module, RelativePositionBias):
                nn.init.trunc_normal_(module.relative_position_bias_table, std=0.02)
        if self.mask_ratio is not None:
            nn.init.normal_(self.mask_token, std=0.02)

    def random_ids_keep(self, batch_size, num_tokens, device):
        """(B, K) per-sample random kept positions (MAE); one mask ratio per call, K = floor(N * (1 - ratio))."""
        ratio = torch.rand(1, device=device) * MASK_RATIO_SPAN + self.mask_ratio
        len_keep = int(num_tokens * (1 - ratio))  # a host sync, as in MDT
        noise = torch.rand(batch_size, num_tokens, device=device)
        return torch.argsort(noise, dim=1)[:, :len_keep]  # the smallest noise values are kept

    def forward_side_interpolater(self, x, c, ids_keep):
        """Encoder output of the kept tokens (B, K, D) -> full grid (B, N, D), predicting only removed tokens."""
        N = self.x_embedder.num_patches
        x_before = mk.unmask_tokens(x, ids_keep, self.mask_token.to(x.dtype), N,
                                    self.decoder_pos_embed.to(x.dtype))  # (B, N, D): mask tokens at removed spots
        x = x_before
        for block in self.sideblocks:
            x = self._block(block, x, c)
        kept = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device).scatter_(1, ids_keep, True)
        return torch.where(kept[..., None], x_before, x)  # masked shortcut: kept tokens bypass the block

    def forward(self, x, t, y, enable_mask=False, ids_keep=None, force_drop_ids=None):
        """x (B, C, H, W) latents, t (B,) timesteps, y (B,) labels -> (B, C_out, H, W).

        enable_mask=True runs the masked pass (when the model has a mask_ratio, or ids_keep is given): the encoder
        sees only the kept tokens, ids_keep (B, K) or a fresh random draw. Without a mask_ratio and ids_keep,
        enable_mask is ignored, as in MDT (sampling models). force_drop_ids (B,): the labels to drop to the null
        class (else, in training, a fresh draw).
        """
        if ids_keep is not None and not enable_mask:
            raise ValueError("ids_keep selects the tokens of the masked pass: pass enable_mask=True with it")
        x, c = self._embed(x, t, y, force_drop_ids)  # (B, N, D), (B, D)
        input_skip = x  # the decoder's dense shortcut: every token, also in the masked pass
        masked = enable_mask and (ids_keep is not None or self.mask_ratio is not None)
        if masked:
            if ids_keep is None:
                ids_keep = self.random_ids_keep(x.shape[0], x.shape[1], x.device)
            x = mk.gather_tokens(x, ids_keep)  # (B, K, D)
        else:
            ids_keep = None
        skips = []
        for block in self.en_inblocks:
            x = self._block(block, x, c, ids_keep=ids_keep)
            skips.append(x)
        for block in self.en_outblocks:  # U-Net pairing: the last en_in output meets the first en_out block
            x = self._block(block, x, c, skip=skips.pop(), ids_keep=ids_keep)
        if masked:
            x = self.forward_side_interpolater(x, c, ids_keep)  # (B, N, D)
        else:
            x = x + self.decoder_pos_embed
        for block in self.de_blocks:
            x = self._block(block, x, c, skip=input_skip)  # (B, N, D)
        x = self.final_layer(x, c)  # (B, N, p * p * C_out)
        return self.unpatchify(x)  # (B, C_out, H, W)


class DiT(_DiffusionTransformer):
    """Diffusion Transformer baseline: adaLN-Zero blocks, frozen sin-cos position embedding, no masking."""

    cfg_scale_pow = 0.0  # DiT guides with a constant scale

    def __init__(self, input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16,
                 mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, learn_sigma=True):
        super().__init__()
        self._build_embedders(input_size, patch_size, in_channels, hidden_size, num_heads, class_dropout_prob,
                              num_classes, learn_sigma, pos_embed_trainable=False)  # fixed sin-cos
        self.blocks = nn.ModuleList([MDTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self):
        self._init_shared(self.blocks)

    def forward(self, x, t, y, force_drop_ids=None):
        """x (B, C, H, W) latents, t (B,) timesteps, y (B,) labels -> (B, C_out, H, W); force_drop_ids (B,):
        the labels to drop to the null class (else, in training, a fresh draw)."""
        x, c = self._embed(x, t, y, force_drop_ids)  # (B, N, D), (B, D)
        for block in self.blocks:
            x = self._block(block, x, c)  # (B, N, D)
        x = self.final_layer(x, c)  # (B, N, p * p * C_out)
        return self.unpatchify(x)  # (B, C_out, H, W)


def cfg_schedule(t, cfg_scale, diffusion_steps=1000, scale_pow=4.0):
    """MDT's power-cosine guidance scale: s = (1 - cos(pi (1 - t/T)^scale_pow)) / 2, w(t) = 1 + (w - 1) s.

    t are original-scale steps; the scale is ~1 at t = T and cfg_scale at t = 0 (constant for scale_pow = 0).
    """
    scale_step = (1 - torch.cos(((1 - t / diffusion_steps) ** scale_pow) * math.pi)) / 2
    return (cfg_scale - 1) * scale_step + 1


#################################################################################
#                   Sine/Cosine Positional Embedding Functions                  #
#################################################################################

def get_1d_sincos_pos_embed(embed_dim, pos):
    """(M,) positions -> (M, embed_dim) features [sin(pos w_k)] ++ [cos(pos w_k)], w_k = 10000^(-2k/embed_dim)."""
    omega = 1.0 / MAX_PERIOD ** (torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2))
    out = pos.double().reshape(-1, 1) * omega  # (M, D/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def get_2d_sincos_pos_embed(embed_dim, grid_size):
    """(N, embed_dim) table of a G x G grid (MAE): the first half encodes the column, the second half the row."""
    assert embed_dim % 4 == 0
    r, c = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    emb = torch.cat([get_1d_sincos_pos_embed(embed_dim // 2, c), get_1d_sincos_pos_embed(embed_dim // 2, r)], dim=1)
    return emb.float()  # (N, D)


#################################################################################
#                                 Model Registry                                #
#################################################################################
# (depth, hidden_size, num_heads) of the published sizes; MDTv2 also fixes decode_layer (S/2 and B/2: 6 as in
# sail-sg/MDT run.sh and issue #39; L/2 and XL/2: 4, the constructor default and the XL/2 release).
SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
MDT_DECODE_LAYERS = {"S": 6, "B": 6, "L": 4, "XL": 4}
TINY = dict(depth=6, hidden_size=64, num_heads=4)  # for CPU work and tests; MDTv2: 2 + 2 encoder, 2 decoder

MODELS = {}
for _name, (_depth, _hidden, _heads) in SIZES.items():
    MODELS[f"MDTv2-{_name}/2"] = functools.partial(MDTv2, depth=_depth, hidden_size=_hidden, num_heads=_heads,
                                                   patch_size=2, decode_layer=MDT_DECODE_LAYERS[_name])
    for _p in (2, 4, 8):
        MODELS[f"DiT-{_name}/{_p}"] = functools.partial(DiT, depth=_depth, hidden_size=_hidden, num_heads=_heads,
                                                        patch_size=_p)
for _p in (2, 4):  # /4: 64 tokens on a 32x32 input, a quarter of the /2 models' 256
    MODELS[f"MDTv2-Ti/{_p}"] = functools.partial(MDTv2, patch_size=_p, decode_layer=2, **TINY)
    MODELS[f"DiT-Ti/{_p}"] = functools.partial(DiT, patch_size=_p, **TINY)


def build_model(config: dict) -> nn.Module:
    """The model a config describes: a checkpoint's "config" (the run's TrainConfig plus what the data set
    fixed: input_size, in_channels, num_classes, class_dropout_prob, learn_sigma), or such keys read off a
    published state dict (mdt.checkpoint.config_from_weights)."""
    name = config["model"]
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    kwargs = {k: config[k] for k in ("input_size", "in_channels", "num_classes", "class_dropout_prob", "learn_sigma")
              if config.get(k) is not None}
    if name.startswith("MDT"):
        kwargs.update({k: config[k] for k in ("mask_ratio", "decode_layer") if config.get(k) is not None})
    return MODELS[name](**kwargs)
