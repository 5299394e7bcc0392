"""Parameter/buffer names and shapes of the published sizes against the layout in MDT_SPEC.md (state-dict key
families, sections 1.1-1.8), and the official parameter counts. Big models are built on the meta device."""

import pytest
import torch

from mdt.models import MODELS

# (hidden D, heads H, depth, decode_layer) of the published MDTv2 sizes (MDT_SPEC.md 1.1).
PUBLISHED = {"MDTv2-S/2": (384, 6, 12, 6), "MDTv2-B/2": (768, 12, 12, 6), "MDTv2-L/2": (1024, 16, 24, 4),
             "MDTv2-XL/2": (1152, 16, 28, 4)}
# Parameter counts of the official sail-sg/MDT models (training layout, side-interpolater included).
OFFICIAL_COUNTS = {"MDTv2-S/2": 38_454_872, "MDTv2-XL/2": 742_263_904}
# MDT_SPEC.md 1.1, rounded to 0.1M: B/2 (decode_layer 6) and L/2 (decode_layer 4).
SPEC_COUNTS_M = {"MDTv2-B/2": 152.1, "MDTv2-L/2": 507.0}
DIT_XL_2_COUNT = 675_129_632  # "DiT Parameters" printed by facebookresearch/DiT train.py for DiT-XL/2


def block_layout(prefix, D, H, N, R, skip):
    out = {
        f"{prefix}.attn.qkv.weight": (3 * D, D), f"{prefix}.attn.qkv.bias": (3 * D,),
        f"{prefix}.attn.proj.weight": (D, D), f"{prefix}.attn.proj.bias": (D,),
        f"{prefix}.mlp.fc1.weight": (4 * D, D), f"{prefix}.mlp.fc1.bias": (4 * D,),
        f"{prefix}.mlp.fc2.weight": (D, 4 * D), f"{prefix}.mlp.fc2.bias": (D,),
        f"{prefix}.adaLN_modulation.1.weight": (6 * D, D), f"{prefix}.adaLN_modulation.1.bias": (6 * D,),
    }
    if R is not None:
        out[f"{prefix}.attn.rel_pos_bias.relative_position_bias_table"] = (R, H)
        out[f"{prefix}.attn.rel_pos_bias.relative_position_index"] = (N, N)
    if skip:
        out[f"{prefix}.skip_linear.weight"] = (D, 2 * D)
        out[f"{prefix}.skip_linear.bias"] = (D,)
    return out


def embed_layout(D, N, p=2, C=4, num_classes=1000):
    return {
        "pos_embed": (1, N, D),
        "x_embedder.proj.weight": (D, C, p, p), "x_embedder.proj.bias": (D,),
        "t_embedder.mlp.0.weight": (D, 256), "t_embedder.mlp.0.bias": (D,),
        "t_embedder.mlp.2.weight": (D, D), "t_embedder.mlp.2.bias": (D,),
        "y_embedder.embedding_table.weight": (num_classes + 1, D),
        "final_layer.linear.weight": (p * p * 2 * C, D), "final_layer.linear.bias": (p * p * 2 * C,),
        "final_layer.adaLN_modulation.1.weight": (2 * D, D), "final_layer.adaLN_modulation.1.bias": (2 * D,),
    }


def mdt_layout(D, H, depth, dec, input_size=32, p=2):
    """name -> shape of an MDTv2 state dict, written from MDT_SPEC.md."""
    G = input_size // p
    N, R = G * G, (2 * G - 1) ** 2 + 3
    half = (depth - dec) // 2
    out = embed_layout(D, N, p)
    out.update({"decoder_pos_embed": (1, N, D), "mask_token": (1, 1, D)})
    for family, count, skip in (("en_inblocks", half, False), ("en_outblocks", half, True),
                                ("de_blocks", dec, True), ("sideblocks", 1, False)):
        for i in range(count):
            out.update(block_layout(f"{family}.{i}", D, H, N, R, skip))
    return out


def build_meta(name, **kwargs):
    with torch.device("meta"):
        return MODELS[name](**kwargs)


def shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def count(layout):
    return sum(torch.Size(s).numel() for k, s in layout.items() if not k.endswith("relative_position_index"))


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_mdt_state_dict_layout(name):
    D, H, depth, dec = PUBLISHED[name]
    model = build_meta(name)
    expected = mdt_layout(D, H, depth, dec)
    got = shapes(model)
    assert sorted(set(got) - set(expected)) == [] and sorted(set(expected) - set(got)) == []
    assert got == expected
    # The only buffers are the (persistent) relative position indices, int64; everything else is a parameter.
    buffers = {k for k, _ in model.named_buffers()}
    assert buffers == {k for k in expected if k.endswith("relative_position_index")}
    assert all(b.dtype == torch.int64 for b in model.buffers())
    params = dict(model.named_parameters())
    assert set(params) == set(expected) - buffers
    assert sum(p.numel() for p in params.values()) == count(expected)
    # Learnable position embeddings; the mask token is frozen in a model built without a mask ratio.
    assert params["pos_embed"].requires_grad and params["decoder_pos_embed"].requires_grad
    assert not params["mask_token"].requires_grad
    assert build_meta(name, mask_ratio=0.3).mask_token.requires_grad


@pytest.mark.parametrize("name", list(OFFICIAL_COUNTS))
def test_official_parameter_counts(name):
    model = build_meta(name)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_COUNTS[name]


@pytest.mark.parametrize("name", list(SPEC_COUNTS_M))
def test_spec_parameter_counts(name):
    model = build_meta(name)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == SPEC_COUNTS_M[name]


def test_xl_block_counts():
    """XL/2: 12 encoder-in + 12 encoder-out + 4 decoder + 1 side block; 16 skip linears of 2304 -> 1152."""
    model = build_meta("MDTv2-XL/2")
    assert (len(model.en_inblocks), len(model.en_outblocks), len(model.de_blocks), len(model.sideblocks)) == (
        12, 12, 4, 1)
    skips = [k for k in model.state_dict() if k.endswith("skip_linear.weight")]
    assert len(skips) == 16 and all(model.state_dict()[k].shape == (1152, 2304) for k in skips)


def test_state_dict_order_follows_official_module_order():
    """Same key order as the official module tree (matters for optimizer states saved by parameter index)."""
    keys = list(build_meta("MDTv2-S/2").state_dict())
    assert keys[:3] == ["pos_embed", "decoder_pos_embed", "mask_token"]
    families = [k.split(".")[0] for k in keys[3:]]
    order = ["x_embedder", "t_embedder", "y_embedder", "en_inblocks", "en_outblocks", "de_blocks", "sideblocks",
             "final_layer"]
    assert [f for i, f in enumerate(families) if i == 0 or families[i - 1] != f] == order
    block = [k.split(".", 2)[2] for k in keys if k.startswith("en_outblocks.0.")]
    assert block == ["attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
                     "attn.rel_pos_bias.relative_position_bias_table", "attn.rel_pos_bias.relative_position_index",
                     "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
                     "adaLN_modulation.1.weight", "adaLN_modulation.1.bias", "skip_linear.weight", "skip_linear.bias"]


@pytest.mark.parametrize("size,dims", [("S", (384, 6, 12)), ("XL", (1152, 16, 28))])
def test_dit_state_dict_layout(size, dims):
    D, H, depth = dims
    model = build_meta(f"DiT-{size}/2")
    expected = embed_layout(D, 256)
    for i in range(depth):
        expected.update(block_layout(f"blocks.{i}", D, H, 256, None, False))
    assert shapes(model) == expected
    assert list(model.buffers()) == []
    assert not model.pos_embed.requires_grad  # DiT's sin-cos table is frozen


def test_dit_xl_parameter_count():
    assert sum(p.numel() for p in build_meta("DiT-XL/2").parameters()) == DIT_XL_2_COUNT


def test_registry():
    published = {f"{m}-{s}/2" for m in ("MDTv2", "DiT") for s in ("S", "B", "L", "XL")}
    assert published <= set(MODELS)
    assert {"MDTv2-Ti/2", "DiT-Ti/2"} <= set(MODELS)
    for name, (_, _, _, dec) in PUBLISHED.items():
        assert build_meta(name).decode_layer == dec
    assert build_meta("MDTv2-S/2", decode_layer=4).decode_layer == 4  # registry defaults can be overridden
