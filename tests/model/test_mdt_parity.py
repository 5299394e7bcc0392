"""Parity with the official sail-sg/MDT MDTv2 and facebookresearch/DiT forward passes.

The official code cannot be imported here (it needs timm), so ``official_forward`` re-states it literally and
minimally with plain torch ops, in the official order of operations: explicit attention math, the bias built
as table[index] then repeated over the batch and gathered twice with ids_keep, random masking that completes
the shuffle and un-shuffles with ids_restore (concat mask tokens + gather), the masked shortcut as
x * mask + (1 - mask) * x_before. It reads only a state dict, so the comparison is: same weights, inputs and
kept ids -> same outputs.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import mdt_kernels as mk
from mdt.models import MODELS


def official_forward(sd, x, t, y, ids_keep=None, num_heads=None):
    """MDTv2.forward (or DiT.forward, when sd has "blocks.*") of the official code in eval mode, from a state dict;
    ids_keep (B, K) stands for the kept set that the official random_masking would have drawn."""
    D = sd["pos_embed"].shape[-1]
    p = sd["x_embedder.proj.weight"].shape[-1]

    def linear(name, v):
        return F.linear(v, sd[name + ".weight"], sd[name + ".bias"])

    def modulate(v, shift, scale):
        return v * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

    def norm(v):
        return F.layer_norm(v, (D,), eps=1e-6)

    def rel_pos_bias(prefix):
        table = sd[prefix + ".attn.rel_pos_bias.relative_position_bias_table"]
        index = sd[prefix + ".attn.rel_pos_bias.relative_position_index"]
        N = index.shape[0]
        return table[index.view(-1)].view(N, N, -1).permute(2, 0, 1).contiguous()

    def masked_rel_bias(prefix, B, ids):
        bias = rel_pos_bias(prefix).unsqueeze(0).repeat(B, 1, 1, 1)
        bias = torch.gather(bias, 2, ids.unsqueeze(1).unsqueeze(-1).repeat(1, bias.shape[1], 1, bias.shape[-1]))
        return torch.gather(bias, 3, ids.unsqueeze(1).unsqueeze(2).repeat(1, bias.shape[1], ids.shape[1], 1))

    def attn(prefix, v, ids):
        B, N, C = v.shape
        H = num_heads
        qkv = linear(prefix + ".attn.qkv", v).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
        q, k, vv = qkv[0], qkv[1], qkv[2]
        a = (q @ k.transpose(-2, -1)) * (C // H) ** -0.5
        if prefix + ".attn.rel_pos_bias.relative_position_bias_table" in sd:
            a = a + (masked_rel_bias(prefix, B, ids) if ids is not None else rel_pos_bias(prefix))
        a = a.softmax(dim=-1)
        return linear(prefix + ".attn.proj", (a @ vv).transpose(1, 2).reshape(B, N, C))

    def block(prefix, v, c, skip=None, ids=None):
        if skip is not None:
            v = linear(prefix + ".skip_linear", torch.cat([v, skip], dim=-1))
        mod = linear(prefix + ".adaLN_modulation.1", F.silu(c)).chunk(6, dim=1)
        v = v + mod[2].unsqueeze(1) * attn(prefix, modulate(norm(v), mod[0], mod[1]), ids)
        h = linear(prefix + ".mlp.fc1", modulate(norm(v), mod[3], mod[4]))
        return v + mod[5].unsqueeze(1) * linear(prefix + ".mlp.fc2", F.gelu(h, approximate="tanh"))

    def count(family):
        return len({k.split(".")[1] for k in sd if k.startswith(family + ".")})

    # Embeddings.
    v = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=p)
    v = v.flatten(2).transpose(1, 2) + sd["pos_embed"]
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(start=0, end=half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    t_freq = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(v.dtype)
    t_emb = linear("t_embedder.mlp.2", F.silu(linear("t_embedder.mlp.0", t_freq)))
    c = t_emb + sd["y_embedder.embedding_table.weight"][y]
    if "blocks.0.attn.qkv.weight" in sd:  # DiT
        for i in range(count("blocks")):
            v = block(f"blocks.{i}", v, c)
    else:
        B, N, _ = v.shape
        input_skip = v
        if ids_keep is not None:
            K = ids_keep.shape[1]
            removed = torch.ones(B, N, dtype=torch.bool).scatter_(1, ids_keep, False)
            ids_removed = torch.stack([row.nonzero().flatten() for row in removed])
            ids_restore = torch.argsort(torch.cat([ids_keep, ids_removed], dim=1), dim=1)
            v = torch.gather(v, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
            mask = torch.ones([B, N], dtype=v.dtype)
            mask[:, :K] = 0
            mask = torch.gather(mask, dim=1, index=ids_restore)
        skips = []
        for i in range(count("en_inblocks")):
            v = block(f"en_inblocks.{i}", v, c, ids=ids_keep)
            skips.append(v)
        for i in range(count("en_outblocks")):
            v = block(f"en_outblocks.{i}", v, c, skip=skips.pop(), ids=ids_keep)
        if ids_keep is not None:
            v_ = torch.cat([v, sd["mask_token"].repeat(B, N - K, 1)], dim=1)
            v = torch.gather(v_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, D)) + sd["decoder_pos_embed"]
            before = v
            v = block("sideblocks.0", v, c)
            m = mask.unsqueeze(-1)
            v = v * m + (1 - m) * before
        else:
            v = v + sd["decoder_pos_embed"]
        for i in range(count("de_blocks")):
            v = block(f"de_blocks.{i}", v, c, skip=input_skip)
    shift, scale = linear("final_layer.adaLN_modulation.1", F.silu(c)).chunk(2, dim=1)
    v = linear("final_layer.linear", modulate(norm(v), shift, scale))
    cout = v.shape[-1] // (p * p)
    h = int(v.shape[1] ** 0.5)
    v = torch.einsum("nhwpqc->nchpwq", v.reshape(v.shape[0], h, h, p, p, cout))
    return v.reshape(v.shape[0], cout, h * p, h * p)


def official_random_ids_keep(B, N, mask_ratio):
    """The official random_masking's draws: one ratio in [r, r + 0.2), then per-sample argsort of uniform noise."""
    ratio = torch.rand(1) * 0.2 + mask_ratio
    len_keep = int(N * (1 - ratio))
    return torch.argsort(torch.rand(B, N), dim=1)[:, :len_keep]


def randomize(model, std=0.05):
    """Non-trivial weights everywhere (the zero-initialised adaLN/output layers and the mask token included)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN_modulation" in name or "final_layer" in name or name == "mask_token":
                p.normal_(0, std)
    return model


def tiny_mdt(dtype=torch.float32, **kwargs):
    kw = dict(input_size=8, in_channels=4, hidden_size=32, depth=6, num_heads=4, decode_layer=2, mask_ratio=0.3)
    kw.update(kwargs)
    return randomize(MODELS["MDTv2-Ti/2"](**kw)).to(dtype).eval()


def inputs(B=3, dtype=torch.float32, size=8):
    x = torch.randn(B, 4, size, size, dtype=dtype)
    return x, torch.randint(0, 1000, (B,)), torch.randint(0, 1000, (B,))


def random_ids(B, N, K):
    return torch.stack([torch.randperm(N)[:K] for _ in range(B)])


TOL = {torch.float64: dict(atol=1e-12, rtol=1e-10), torch.float32: dict(atol=2e-5, rtol=1e-4)}


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("masked", [False, True], ids=["full", "masked"])
def test_mdt_matches_official_forward(backend, dtype, masked):
    model = tiny_mdt(dtype)
    x, t, y = inputs(dtype=dtype)
    ids_keep = random_ids(3, 16, 9) if masked else None
    with mk.use_backend(backend):
        out = model(x, t, y, enable_mask=masked, ids_keep=ids_keep)
    ref = official_forward(model.state_dict(), x, t, y, ids_keep, num_heads=4)
    assert out.shape == (3, 8, 8, 8)
    torch.testing.assert_close(out, ref, **TOL[dtype])


def test_mdt_matches_official_with_random_masking_and_label_dropout():
    """Train mode end to end: same seed -> same label dropout, same mask ratio and kept sets, same output."""
    model = tiny_mdt(input_size=16, class_dropout_prob=0.5).train()
    x, t, y = inputs(B=6, size=16)
    torch.manual_seed(123)
    out = model(x, t, y, enable_mask=True)
    torch.manual_seed(123)
    ref_y = torch.where(torch.rand(6) < 0.5, 1000, y)  # consumes the label-dropout draw first, as the model does
    ids_keep = official_random_ids_keep(6, 64, 0.3)
    ref = official_forward(model.state_dict(), x, t, ref_y, ids_keep, num_heads=4)
    torch.testing.assert_close(out, ref, **TOL[torch.float32])


def test_random_ids_keep_draws_like_official():
    model = tiny_mdt(input_size=16)
    for seed in range(5):
        torch.manual_seed(seed)
        ours = model.random_ids_keep(4, 64, torch.device("cpu"))
        torch.manual_seed(seed)
        assert torch.equal(ours, official_random_ids_keep(4, 64, 0.3))


def test_relative_position_index_matches_beit_construction():
    """The buffer stored in checkpoints equals the official (BEiT) construction, and the kernel's own index."""
    G = 5
    coords = torch.stack(torch.meshgrid([torch.arange(G), torch.arange(G)], indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += G - 1
    rel[:, :, 1] += G - 1
    rel[:, :, 0] *= 2 * G - 1
    expected = rel.sum(-1)
    model = tiny_mdt(input_size=2 * G)
    for name, buf in model.named_buffers():
        assert torch.equal(buf, expected), name
    table = torch.randn((2 * G - 1) ** 2 + 3, 4)
    full = mk.masked_rel_pos_bias(table, G)
    assert torch.equal(full, table[expected.view(-1)].view(G * G, G * G, -1).permute(2, 0, 1))


def test_dit_matches_official_forward():
    model = randomize(MODELS["DiT-Ti/2"](input_size=8, hidden_size=32, num_heads=4)).eval()
    x, t, y = inputs()
    torch.testing.assert_close(model(x, t, y), official_forward(model.state_dict(), x, t, y, num_heads=4),
                               **TOL[torch.float32])


def test_strict_load_into_sampling_model():
    """A training model's state dict (mask_ratio set) loads strictly into a sampling model (mask_ratio None) and
    gives the same full-pass output, as the published checkpoint does."""
    trained = tiny_mdt()
    sampler = MODELS["MDTv2-Ti/2"](input_size=8, hidden_size=32, num_heads=4, decode_layer=2).eval()
    sampler.load_state_dict(trained.state_dict(), strict=True)
    x, t, y = inputs()
    assert torch.equal(sampler(x, t, y), trained(x, t, y))
    assert torch.equal(sampler.mask_token, trained.mask_token) and not sampler.mask_token.requires_grad


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_mdt_gradients_match_official(backend):
    """float64: every parameter's gradient through the kernels' autograd equals autograd of the official form."""
    model = tiny_mdt(torch.float64)
    x, t, y = inputs(dtype=torch.float64)
    ids_keep = random_ids(3, 16, 10)
    cotangent = torch.randn(3, 8, 8, 8, dtype=torch.float64)
    with mk.use_backend(backend):
        model(x, t, y, enable_mask=True, ids_keep=ids_keep).backward(cotangent)
    sd = {k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in model.state_dict().items()}
    official_forward(sd, x, t, y, ids_keep, num_heads=4).backward(cotangent)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, sd[name].grad, atol=1e-12, rtol=1e-9, msg=name)
