"""MDTv2 / DiT behaviour on tiny models: adaLN-Zero init, kernel-backend and attention-backend agreement
(forward and backward), masked-pass invariants, classifier-free guidance."""

import math

import pytest
import torch
from helpers import backend_device_pairs, is_interpreted
from test_mdt_parity import inputs, random_ids, randomize, tiny_mdt

import mdt_kernels as mk
from mdt.models import MODELS, cfg_schedule, xops

N_TOKENS = 16  # tiny models: 8 x 8 latents, patch 2 -> a 4 x 4 grid


def forward_backward(model, x, t, y, **kw):
    """Output and the gradients of every parameter (and of x) for a fixed random cotangent."""
    model.zero_grad()
    x = x.detach().clone().requires_grad_(True)
    out = model(x, t, y, **kw)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(7)))
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads, x.grad


def assert_same_results(a, b, atol=1e-5, rtol=1e-4):
    (out_a, grads_a, dx_a), (out_b, grads_b, dx_b) = a, b
    torch.testing.assert_close(out_a, out_b, atol=atol, rtol=rtol)
    torch.testing.assert_close(dx_a, dx_b, atol=atol, rtol=rtol)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=atol, rtol=rtol, msg=name)


#################################################################################
#                                 Initialisation                                 #
#################################################################################

@pytest.mark.parametrize("name", ["MDTv2-Ti/2", "DiT-Ti/2"])
def test_adaln_zero_init_gives_zero_output(name):
    model = MODELS[name](input_size=8, mask_ratio=0.3) if name.startswith("MDT") else MODELS[name](input_size=8)
    x, t, y = inputs()
    assert torch.equal(model(x, t, y), torch.zeros(3, 8, 8, 8))
    if name.startswith("MDT"):
        assert torch.equal(model(x, t, y, enable_mask=True), torch.zeros(3, 8, 8, 8))


def test_adaln_zero_blocks_start_as_identity():
    model = MODELS["MDTv2-Ti/2"](input_size=8, mask_ratio=0.3)
    x, c = torch.randn(2, N_TOKENS, 64), torch.randn(2, 64)
    for block in [*model.en_inblocks, *model.sideblocks]:
        assert torch.equal(block(x, c), x)
    for block in [*model.en_outblocks, *model.de_blocks]:  # skip fusion is not gated: identity after the linear
        fused = block.skip_linear(torch.cat([x, x], dim=-1))
        assert torch.equal(block(x, c, skip=x), fused)


def test_init_details():
    model = MODELS["MDTv2-Ti/2"](input_size=8, mask_ratio=0.3)
    G, D = 4, 64
    # 2-D sin-cos table (MAE): first half encodes the column, second half the row; [sin, cos] per half.
    pe = model.pos_embed[0]
    omega = 1.0 / 10000 ** (torch.arange(D // 4, dtype=torch.float64) / (D / 4))
    for n in (0, 5, 14):
        r, c = divmod(n, G)
        expected = torch.cat([torch.sin(c * omega), torch.cos(c * omega), torch.sin(r * omega), torch.cos(r * omega)])
        torch.testing.assert_close(pe[n].double(), expected, atol=1e-7, rtol=0)
    assert torch.equal(model.decoder_pos_embed, model.pos_embed)
    table = model.en_inblocks[0].attn.rel_pos_bias.relative_position_bias_table
    assert table.shape == (49 + 3, 4) and 0.01 < table.std() < 0.03 and table.abs().max() <= 2
    assert 0.01 < model.mask_token.std() < 0.03
    assert model.x_embedder.proj.bias.abs().sum() == 0
    assert model.en_inblocks[0].attn.qkv.bias.abs().sum() == 0
    # xavier-uniform bound for the patch embedding viewed as a (D, C*p*p) linear
    bound = math.sqrt(6 / (D + 4 * 2 * 2))
    assert model.x_embedder.proj.weight.abs().max() <= bound


#################################################################################
#                        Kernel backends and attention backends                  #
#################################################################################

@pytest.mark.parametrize("backend,device", backend_device_pairs())
@pytest.mark.parametrize("masked", [False, True], ids=["full", "masked"])
def test_fused_backends_match_reference(backend, device, masked):
    """Reference vs fused kernels on the forward and the backward of a tiny MDTv2 (every parameter's grad)."""
    if is_interpreted(backend, device) and not masked:
        pytest.skip("simulated kernels (interpreted Triton, cuda_sim) are slow: the masked case runs every kernel "
                    "(full-grid bias included)")
    model = tiny_mdt().to(device)
    if backend == "cuda_sim":  # the CUDA kernels on CPU tensors: attention as the model runs it on a GPU
        model.set_attention_backend("sdpa")
    x, t, y = (v.to(device) for v in inputs())
    kw = dict(enable_mask=True, ids_keep=random_ids(3, N_TOKENS, 9).to(device)) if masked else {}
    with mk.use_backend("reference"):
        ref = forward_backward(model, x, t, y, **kw)
    with mk.use_backend(backend):
        fused = forward_backward(model, x, t, y, **kw)
    assert_same_results(fused, ref)


def test_dit_fused_backend_matches_reference():
    model = randomize(MODELS["DiT-Ti/2"](input_size=8, hidden_size=32, num_heads=4))
    x, t, y = inputs()
    with mk.use_backend("reference"):
        ref = forward_backward(model, x, t, y)
    with mk.use_backend("cpu"):
        assert_same_results(forward_backward(model, x, t, y), ref)


@pytest.mark.parametrize("attn_backend", ["sdpa", "auto", "mdt_kernels"])
@pytest.mark.parametrize("masked", [False, True], ids=["full", "masked"])
def test_attention_backends_match_explicit_math(attn_backend, masked):
    model = tiny_mdt()
    x, t, y = inputs()
    kw = dict(enable_mask=True, ids_keep=random_ids(3, N_TOKENS, 11)) if masked else {}
    ref = forward_backward(model.set_attention_backend("math"), x, t, y, **kw)
    assert_same_results(forward_backward(model.set_attention_backend(attn_backend), x, t, y, **kw), ref)


@pytest.mark.skipif(xops is None or not torch.cuda.is_available(), reason="needs xformers and a CUDA device")
def test_xformers_attention_matches_explicit_math():
    model = tiny_mdt().cuda()
    x, t, y = (v.cuda() for v in inputs())
    kw = dict(enable_mask=True, ids_keep=random_ids(3, N_TOKENS, 11).cuda())
    ref = forward_backward(model.set_attention_backend("math"), x, t, y, **kw)
    assert_same_results(forward_backward(model.set_attention_backend("xformers"), x, t, y, **kw), ref, atol=1e-4)


def test_unknown_attention_backend_raises():
    with pytest.raises(ValueError, match="attention backend"):
        tiny_mdt().set_attention_backend("flash")
    if xops is None:
        model = tiny_mdt().set_attention_backend("xformers")
        with pytest.raises(RuntimeError, match="xformers"):
            model(*inputs())


def test_runs_under_bf16_autocast():
    model = tiny_mdt().train()
    x, t, y = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for kw in ({}, {"enable_mask": True}):
            out = model(x, t, y, **kw)
            assert out.shape == (3, 8, 8, 8) and torch.isfinite(out).all()
            out.float().square().mean().backward()


#################################################################################
#                                 Masked pass                                   #
#################################################################################

def test_side_interpolater_touches_only_masked_positions():
    model = tiny_mdt()
    B, K, D = 3, 7, 32
    x_enc, c, ids_keep = torch.randn(B, K, D), torch.randn(B, D), random_ids(B, N_TOKENS, K)
    out = model.forward_side_interpolater(x_enc, c, ids_keep)
    kept = torch.zeros(B, N_TOKENS, dtype=torch.bool).scatter_(1, ids_keep, True)
    pos = model.decoder_pos_embed[0]
    for b in range(B):
        # kept positions: exactly their encoder output plus the decoder position embedding
        assert torch.equal(out[b, ids_keep[b]], x_enc[b] + pos[ids_keep[b]])
        # removed positions: the side block's prediction from the mask token, not the bare mask token
        bare = model.mask_token[0, 0] + pos[~kept[b]]
        assert (out[b, ~kept[b]] - bare).abs().amax(dim=-1).min() > 1e-4
    # a loss on kept positions only gives the side block no gradient
    out[kept].square().sum().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.sideblocks.parameters())


def test_encoder_never_sees_masked_tokens():
    model = tiny_mdt()
    x, t, y = inputs()
    ids_keep = random_ids(3, N_TOKENS, 6)
    seen = {}
    model.en_outblocks[-1].register_forward_hook(lambda m, i, o: seen.__setitem__("enc", o.detach()))
    model.en_inblocks[0].register_forward_hook(lambda m, i, o: seen.__setitem__("tokens", i[0].shape[1]))
    model(x, t, y, enable_mask=True, ids_keep=ids_keep)
    enc = seen["enc"]
    assert seen["tokens"] == 6
    kept = torch.zeros(3, N_TOKENS, dtype=torch.bool).scatter_(1, ids_keep, True)
    removed_patch = (~kept[0]).nonzero()[0].item()
    kept_patch = ids_keep[0, 0].item()

    def perturb(patch):
        x2 = x.clone()
        r, c = divmod(patch, 4)
        x2[0, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2] += 3.0
        return x2

    out = model(x, t, y, enable_mask=True, ids_keep=ids_keep)
    out_removed = model(perturb(removed_patch), t, y, enable_mask=True, ids_keep=ids_keep)
    assert torch.equal(seen["enc"], enc)  # the encoder's output ignores the removed patch entirely
    # ... but the decoder's dense input shortcut does see it (MDTv2 by design)
    assert not torch.equal(out_removed, out)
    model(perturb(kept_patch), t, y, enable_mask=True, ids_keep=ids_keep)
    assert not torch.allclose(seen["enc"][0], enc[0])


def test_masked_pass_with_every_token_kept_equals_full_pass():
    model = tiny_mdt()
    x, t, y = inputs()
    full = model(x, t, y)
    in_order = torch.arange(N_TOKENS).expand(3, N_TOKENS)
    assert torch.equal(model(x, t, y, enable_mask=True, ids_keep=in_order), full)
    shuffled = random_ids(3, N_TOKENS, N_TOKENS)  # attention is permutation-equivariant with a permuted bias
    torch.testing.assert_close(model(x, t, y, enable_mask=True, ids_keep=shuffled), full, atol=1e-5, rtol=1e-5)


def test_random_masking_ratio_range_and_per_sample_sets():
    model = tiny_mdt(input_size=16)  # N = 64; ratio in [0.3, 0.5) -> K = floor(64 (1 - ratio)) in 32..44
    ks = set()
    for _ in range(200):
        ids = model.random_ids_keep(4, 64, torch.device("cpu"))
        ks.add(ids.shape[1])
        assert all(len(set(row.tolist())) == ids.shape[1] for row in ids)  # distinct kept positions per row
        assert len({tuple(sorted(row.tolist())) for row in ids}) == 4  # each sample draws its own set
    assert min(ks) >= 32 and max(ks) <= 44 and min(ks) <= 34 and max(ks) >= 42


def test_enable_mask_semantics():
    x, t, y = inputs()
    no_ratio = tiny_mdt(mask_ratio=None)
    assert torch.equal(no_ratio(x, t, y, enable_mask=True), no_ratio(x, t, y))  # MDT: ignored without a ratio
    with pytest.raises(ValueError, match="enable_mask"):
        no_ratio(x, t, y, ids_keep=random_ids(3, N_TOKENS, 5))
    masked = no_ratio(x, t, y, enable_mask=True, ids_keep=random_ids(3, N_TOKENS, 5))  # ids_keep alone suffices
    assert not torch.allclose(masked, no_ratio(x, t, y))


#################################################################################
#                           Classifier-free guidance                             #
#################################################################################

def test_cfg_schedule_closed_form():
    T, w = 1000, 4.0
    t = torch.tensor([0, 250, 500, 999, 1000])
    torch.testing.assert_close(cfg_schedule(t, w, T, scale_pow=0.0), torch.full((5,), w))  # DiT: constant
    s = cfg_schedule(t, w, T, scale_pow=1.0)
    assert s[0] == w and s[-1] == 1.0
    torch.testing.assert_close(s[2], torch.tensor(1 + (w - 1) * 0.5))  # (1 - cos(pi/2)) / 2 = 1/2
    s4 = cfg_schedule(t, w, T, scale_pow=4.0)
    torch.testing.assert_close(s4[1], torch.tensor(1 + (w - 1) * (1 - math.cos(math.pi * 0.75**4)) / 2))
    assert (s4[:-1] >= s4[1:]).all()  # guidance grows as sampling approaches t = 0


@pytest.mark.parametrize("guided_channels", [3, None], ids=["legacy3", "all"])
def test_forward_with_cfg(guided_channels):
    model = tiny_mdt()
    B = 3
    x_half, t_half, y = inputs(B)
    x = torch.cat([x_half, torch.randn_like(x_half)])  # the second half is ignored: the first is duplicated
    t = torch.cat([t_half, t_half])
    labels = torch.cat([y, torch.full((B,), 1000)])
    w, pow_ = 3.8, 4.0
    out = model.forward_with_cfg(x, t, labels, cfg_scale=w, scale_pow=pow_, guided_channels=guided_channels)
    cond, uncond = model(x_half, t_half, y), model(x_half, t_half, torch.full((B,), 1000))
    n = 4 if guided_channels is None else 3
    scale = (1 + (w - 1) * (1 - torch.cos(math.pi * (1 - t_half / 1000) ** pow_)) / 2).view(-1, 1, 1, 1)
    guided = uncond[:, :n] + scale * (cond[:, :n] - uncond[:, :n])
    torch.testing.assert_close(out[:B, :n], guided, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[B:, :n], guided, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:B, n:], cond[:, n:], atol=1e-5, rtol=1e-5)  # raw output of each half
    torch.testing.assert_close(out[B:, n:], uncond[:, n:], atol=1e-5, rtol=1e-5)
    assert torch.equal(model.forward_with_cfg(x, t, labels), model(x, t, labels))  # no scale: plain forward
    default = model.forward_with_cfg(x, t, labels, cfg_scale=w, guided_channels=guided_channels)
    assert torch.equal(default, out)  # MDTv2 samples with scale_pow 4 unless told otherwise


def test_dit_forward_with_cfg_is_constant_scale():
    model = randomize(MODELS["DiT-Ti/2"](input_size=8, hidden_size=32, num_heads=4)).eval()
    x_half, t_half, y = inputs(2)
    out = model.forward_with_cfg(torch.cat([x_half, x_half]), torch.cat([t_half, t_half]),
                                 torch.cat([y, torch.full((2,), 1000)]), cfg_scale=4.0, guided_channels=None)
    cond, uncond = model(x_half, t_half, y), model(x_half, t_half, torch.full((2,), 1000))
    torch.testing.assert_close(out[:2, :4], uncond[:, :4] + 4.0 * (cond[:, :4] - uncond[:, :4]), atol=1e-5,
                               rtol=1e-5)


def test_forward_with_cfg_guides_every_channel_of_a_non_latent_model():
    """"auto": DiT/MDT's 3-of-4 quirk for 4-channel latent models only; a 1-channel model is guided in full
    (its one eps channel), not left unguided nor its variance channel guided."""
    model = randomize(MODELS["MDTv2-Ti/2"](input_size=8, in_channels=1, num_classes=10)).eval()
    B = 2
    x_half, t_half = torch.randn(B, 1, 8, 8), torch.tensor([500, 900])
    y, null = torch.tensor([1, 2]), torch.full((B,), 10)
    out = model.forward_with_cfg(torch.cat([x_half, x_half]), torch.cat([t_half, t_half]), torch.cat([y, null]),
                                 cfg_scale=3.0, scale_pow=0.0)
    cond, uncond = model(x_half, t_half, y), model(x_half, t_half, null)
    torch.testing.assert_close(out[:B, :1], uncond[:, :1] + 3.0 * (cond[:, :1] - uncond[:, :1]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:B, 1:], cond[:, 1:], atol=1e-6, rtol=1e-6)  # the variance channel: raw
    latent = tiny_mdt()  # 4 channels: the legacy 3
    x_half, t_half, y = inputs(B)
    batch = torch.cat([x_half, x_half]), torch.cat([t_half, t_half]), torch.cat([y, torch.full((B,), 1000)])
    assert torch.equal(latent.forward_with_cfg(*batch, cfg_scale=3.0),
                       latent.forward_with_cfg(*batch, cfg_scale=3.0, guided_channels=3))
