import pytest
import torch
from helpers import (
    CPU_BACKENDS,
    DTYPES,
    as_float64,
    assert_close,
    assert_same_for_thread_counts,
    backend_device_pairs,
    compile_frame_count,
    forward_and_grads,
    property_settings,
    strided,
)
from hypothesis import given
from hypothesis import strategies as st

import mdt_kernels as mk
from mdt_kernels.ops.masked_rel_pos_bias import relative_position_index
from mdt_kernels.ops.rel_pos_attention import rel_pos_attention_ref

PAIRS = backend_device_pairs(("cpu", "triton"))  # the op has no CUDA kernel
ALL_DTYPES = {**DTYPES, "f64": torch.float64}


def make(G, H, B, K, Dh, dtype, device, extra_rows=3, layout="contiguous"):
    """qkv (B, K, 3, H, Dh) in the given memory layout, a table with extra rows, distinct ids per sample."""
    if layout == "transposed":  # a permuted view: no stride is the contiguous one
        qkv = torch.randn(B, 3, H, K, Dh, dtype=dtype, device=device).permute(0, 3, 1, 2, 4)
    else:
        qkv = torch.randn(B, K, 3, H, Dh, dtype=dtype, device=device)
        qkv = strided(qkv) if layout == "every-other" else qkv
    table = torch.randn((2 * G - 1) ** 2 + extra_rows, H, dtype=dtype, device=device)
    ids = torch.stack([torch.randperm(G * G)[:K] for _ in range(B)]) if B else torch.empty(0, K, dtype=torch.long)
    return qkv, table, ids.to(device)


def check(backend, qkv, table, G, ids, scale=None):
    """Output and gradients (qkv, table) of `backend` against the reference evaluated in float64."""
    B, K, _, H, Dh = qkv.shape
    go = torch.randn(B, K, H, Dh, dtype=qkv.dtype, device=qkv.device)
    with mk.use_backend(backend):
        out, (g_qkv, g_table) = forward_and_grads(mk.rel_pos_attention, [qkv, table, G, ids, scale], [0, 1], go)
    ref, (g_qkv_ref, g_table_ref) = forward_and_grads(rel_pos_attention_ref, as_float64([qkv, table, G, ids, scale]),
                                                      [0, 1], go.double())
    assert out.shape == (B, K, H, Dh) and out.dtype == qkv.dtype
    assert g_qkv.shape == qkv.shape and g_table.shape == table.shape
    # fp16/bf16 are computed in fp32 and rounded once on store: the low dtype's tolerances hold against fp64.
    assert_close(out, ref, qkv.dtype)
    assert_close(g_qkv, g_qkv_ref, qkv.dtype)
    assert_close(g_table, g_table_ref, table.dtype)


def explicit_attention(qkv, table, G, ids, scale):
    # Written independently of the reference: loops over samples and heads, bias from the index buffer.
    B, K, _, H, Dh = qkv.shape
    index = relative_position_index(G)
    out = torch.empty(B, K, H, Dh, dtype=qkv.dtype)
    for b in range(B):
        pos = ids[b]
        for h in range(H):
            q, k, v = qkv[b, :, 0, h], qkv[b, :, 1, h], qkv[b, :, 2, h]
            bias = table[index[pos][:, pos], h]
            out[b, :, h] = torch.softmax(q @ k.T * scale + bias, dim=-1) @ v
    return out


def test_reference_matches_explicit_attention():
    qkv, table, ids = make(5, 3, 2, 11, 4, torch.float64, "cpu")
    expected = explicit_attention(qkv, table, 5, ids, 4**-0.5)
    torch.testing.assert_close(rel_pos_attention_ref(qkv, table, 5, ids), expected)
    full = torch.arange(25).expand(2, 25)
    qkv = torch.randn(2, 25, 3, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(rel_pos_attention_ref(qkv, table, 5, None, 0.7),
                               explicit_attention(qkv, table, 5, full, 0.7))


# (G, H, B, K, Dh): a single token, empty batch, no tokens, every token permuted, K past one block of keys.
CASES = [(1, 1, 2, 1, 3), (2, 3, 2, 3, 8), (3, 2, 3, 5, 16), (4, 2, 2, 16, 1), (4, 2, 2, 0, 8), (3, 2, 0, 4, 8),
         (5, 4, 1, 13, 3), (9, 2, 1, 70, 8)]


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", ALL_DTYPES.values(), ids=ALL_DTYPES.keys())
@pytest.mark.parametrize("G,H,B,K,Dh", CASES)
def test_matches_reference(backend, device, dtype, G, H, B, K, Dh):
    qkv, table, ids = make(G, H, B, K, Dh, dtype, device)
    check(backend, qkv, table, G, ids)


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("G,B", [(1, 2), (3, 2), (3, 0), (9, 1)])
def test_full_grid(backend, device, G, B):
    qkv, table, _ = make(G, 3, B, G * G, 8, torch.float32, device)
    check(backend, qkv, table, G, None)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_explicit_scale_and_large_logits(backend, device):
    # Scores around +-60: softmax must subtract the row max (exp would overflow in fp32 otherwise).
    qkv, table, ids = make(4, 2, 2, 9, 8, torch.float32, device)
    check(backend, qkv, 20 * table, 4, ids, scale=3.0)


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("B,K", [(0, 4), (2, 0)])
def test_empty_input_has_zero_gradients(backend, device, B, K):
    qkv, table, ids = make(3, 2, B, K, 8, torch.float32, device)
    qkv.requires_grad_()
    table.requires_grad_()
    with mk.use_backend(backend):
        out = mk.rel_pos_attention(qkv, table, 3, ids)
    assert out.shape == (B, K, 2, 8)
    g_qkv, g_table = torch.autograd.grad(out, [qkv, table], torch.ones_like(out))  # runs the backward op
    assert g_qkv.shape == qkv.shape and torch.equal(g_table, torch.zeros_like(table))


@pytest.mark.parametrize("backend,device", PAIRS)
def test_property(backend, device):
    @property_settings(backend, device)
    @given(G=st.integers(1, 4), H=st.integers(1, 3), Dh=st.sampled_from([1, 3, 8, 16]), B=st.integers(0, 3),
           data=st.data(), full=st.booleans(), extra=st.integers(0, 3), dtype=st.sampled_from(list(DTYPES.values())),
           layout=st.sampled_from(["contiguous", "every-other", "transposed"]),
           scale=st.one_of(st.none(), st.floats(0.05, 2.0)))
    def prop(G, H, Dh, B, data, full, extra, dtype, layout, scale):
        K = G * G if full else data.draw(st.integers(0, G * G))
        qkv, table, ids = make(G, H, B, K, Dh, dtype, device, extra, layout)
        check(backend, qkv, strided(table) if layout != "contiguous" else table, G, None if full else ids, scale)

    prop()


@pytest.mark.parametrize("backend,device", backend_device_pairs(("reference", "cpu", "triton")))
def test_gradcheck(backend, device):
    qkv, table, ids = make(3, 2, 1, 4, 2, torch.float64, device)
    full_qkv, full_table, _ = make(2, 1, 1, 4, 2, torch.float64, device, extra_rows=0)
    inputs = [t.requires_grad_() for t in (qkv, table, full_qkv, full_table)]
    with mk.use_backend(backend):
        assert torch.autograd.gradcheck(lambda x, t: mk.rel_pos_attention(x, t, 3, ids), inputs[:2])
        assert torch.autograd.gradcheck(lambda x, t: mk.rel_pos_attention(x, t, 2, scale=0.8), inputs[2:])


@pytest.mark.parametrize("backend,device", PAIRS)
def test_opcheck(backend, device):
    suffix = "_triton" if backend == "triton" else ""
    fwd = getattr(torch.ops.mdt_kernels, "rel_pos_attention" + suffix)
    bwd = getattr(torch.ops.mdt_kernels, "rel_pos_attention_backward" + suffix)
    for dtype in (torch.float32, torch.float16):
        qkv, table, ids = make(3, 2, 2, 5, 4, dtype, device)
        torch.library.opcheck(fwd, (qkv.requires_grad_(), table.requires_grad_(), 3, ids, 0.5))
        torch.library.opcheck(fwd, (qkv.detach(), table.detach(), 3, ids, 0.5))
        _, stats = fwd(qkv.detach(), table.detach(), 3, ids, 0.5)
        go = torch.randn(2, 5, 2, 4, dtype=dtype, device=device)
        torch.library.opcheck(bwd, (go, qkv.detach(), table.detach(), stats, ids, 3, 0.5))


def test_cpu_backward_is_deterministic():
    if mk._dispatch.unavailable_reason("cpu", "cpu"):
        pytest.skip("C++ extension not built")
    qkv, table, ids = make(12, 6, 5, 100, 16, torch.float32, "cpu")
    _, stats = torch.ops.mdt_kernels.rel_pos_attention(qkv, table, 12, ids, 0.25)
    go = torch.randn(5, 100, 6, 16)
    assert_same_for_thread_counts(
        lambda: torch.ops.mdt_kernels.rel_pos_attention_backward(go, qkv, table, stats, ids, 12, 0.25),
        counts=(1, 2, 1),
    )


BAD = [
    ("qkv rank", lambda a: dict(a, qkv=a["qkv"][0]), ValueError, "qkv must be 5-D"),
    ("not 3 in qkv", lambda a: dict(a, qkv=a["qkv"][:, :, :2]), ValueError, r"qkv must have shape \(B, K, 3, H, Dh\)"),
    ("table rank", lambda a: dict(a, table=a["table"][0]), ValueError, "table must be 2-D"),
    ("head count", lambda a: dict(a, table=a["table"][:, :2]), ValueError, "table has 2 heads but qkv has 3"),
    ("table too small", lambda a: dict(a, table=a["table"][:48]), ValueError, r"fewer than \(2\*grid_size-1\)\^2 = 49"),
    ("ids too large", lambda a: dict(a, ids=a["ids"] + 16), IndexError, r"outside \[0, 16\)"),
    ("negative ids", lambda a: dict(a, ids=a["ids"] - 16), IndexError, r"outside \[0, 16\)"),
    ("ids length", lambda a: dict(a, ids=a["ids"][:, :4]), ValueError, "has 4 tokens per sample but qkv has K = 5"),
    ("ids batch", lambda a: dict(a, ids=a["ids"][:1]), ValueError, "ids_keep has batch size 1, expected 2"),
    ("ids rank", lambda a: dict(a, ids=a["ids"][0]), ValueError, "ids_keep must be 2-D"),
    ("float ids", lambda a: dict(a, ids=a["ids"].float()), TypeError, "integer tensor"),
    ("K without ids", lambda a: dict(a, ids=None), ValueError, r"without ids_keep qkv must hold all grid_size\^2 = 16"),
    ("integer qkv", lambda a: dict(a, qkv=a["qkv"].long()), TypeError, "qkv must be float32"),
    ("integer table", lambda a: dict(a, table=a["table"].int()), TypeError, "table must be float32"),
    ("grid_size type", lambda a: dict(a, G=4.0), TypeError, "grid_size must be an int"),
    ("grid_size zero", lambda a: dict(a, G=0), ValueError, "grid_size must be >= 1"),
    ("scale type", lambda a: dict(a, scale="0.5"), TypeError, "scale must be a float"),
    ("devices", lambda a: dict(a, ids=a["ids"].to("meta")), ValueError, "one device"),
    ("table device", lambda a: dict(a, table=a["table"].to("meta")), ValueError, "one device"),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case,mutate,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises(backend, case, mutate, exc, match):
    qkv, table, ids = make(4, 3, 2, 5, 8, torch.float32, "cpu")
    a = mutate(dict(qkv=qkv, table=table, ids=ids, G=4, scale=None))
    with mk.use_backend(backend), pytest.raises(exc, match=match):
        mk.rel_pos_attention(a["qkv"], a["table"], a["G"], a["ids"], a["scale"])


@pytest.mark.skipif(mk._dispatch.unavailable_reason("cpu", "cpu") is not None, reason="C++ extension not built")
def test_cpp_op_checks_itself():
    qkv, table = torch.randn(1, 2, 3, 2, 4), torch.randn(49, 2)
    with pytest.raises(IndexError, match="outside"):
        torch.ops.mdt_kernels.rel_pos_attention(qkv, table, 4, torch.tensor([[0, 16]]), 0.5)
    with pytest.raises(ValueError, match="fewer than"):
        torch.ops.mdt_kernels.rel_pos_attention(qkv, table[:40], 4, torch.tensor([[0, 1]]), 0.5)
    stats = torch.zeros(1, 2, 2, 2)
    with pytest.raises(IndexError, match="outside"):
        torch.ops.mdt_kernels.rel_pos_attention_backward(torch.randn(1, 2, 2, 4), qkv, table, stats,
                                                         torch.tensor([[0, -1]]), 4, 0.5)
    with pytest.raises(ValueError, match="stats shape"):
        torch.ops.mdt_kernels.rel_pos_attention_backward(torch.randn(1, 2, 2, 4), qkv, table, torch.zeros(1, 2, 2),
                                                         torch.tensor([[0, 1]]), 4, 0.5)


@pytest.mark.skipif(mk._dispatch.unavailable_reason("triton", "cpu") is not None, reason="needs interpreted Triton")
def test_dispatcher_uses_the_ops_kernel_set():
    cpu = torch.device("cpu")
    assert mk.op_kernels("rel_pos_attention", "cpu") == ("cpu", "triton", "reference")
    assert mk.op_kernels("rel_pos_attention", "cuda") == ("triton", "reference")  # no CUDA kernel
    assert mk.op_kernels("linear", "cuda") == ("reference",)
    with mk.use_backend("triton"):
        assert mk._dispatch.resolve("rel_pos_attention", cpu) == "triton"
        assert not mk.runs_fused("linear", cpu)  # linear declares F.linear its implementation there
    with mk.use_backend("auto"):  # on CUDA, auto runs the reference (SDPA): mdt's attention takes xformers or SDPA
        assert mk._dispatch.resolve("rel_pos_attention", torch.device("cuda")) == "reference"


@pytest.mark.skipif(mk._dispatch.unavailable_reason("cpu", "cpu") is not None, reason="C++ extension not built")
def test_inference_form_at_mdt_sizes_on_every_thread_count():
    """The per-thread buffers of the inference form at sampling sizes (several (b, h) blocks per thread)."""
    qkv, table, ids = make(8, 6, 4, 64, 16, torch.float32, "cpu")
    expected = torch.ops.mdt_kernels.rel_pos_attention(qkv, table, 8, ids, 0.25)[0]
    assert_same_for_thread_counts(
        lambda: torch.ops.mdt_kernels.rel_pos_attention_inference(qkv, table, 8, ids, 0.25), counts=(1, 2, 3))
    torch.testing.assert_close(torch.ops.mdt_kernels.rel_pos_attention_inference(qkv, table, 8, ids, 0.25), expected,
                               rtol=0, atol=0)


@pytest.mark.skipif(mk._dispatch.unavailable_reason("cpu", "cpu") is not None, reason="C++ extension not built")
def test_inference_form_checks_its_input():
    qkv, table, ids = make(4, 2, 2, 5, 4, torch.float32, "cpu")
    ids[0, 0] = 16  # out of the grid
    with pytest.raises(IndexError, match="ids_keep"):
        torch.ops.mdt_kernels.rel_pos_attention_inference(qkv, table, 4, ids, 0.5)


@pytest.mark.skipif(mk._dispatch.unavailable_reason("cpu", "cpu") is not None, reason="C++ extension not built")
def test_compile_does_not_specialise_the_kept_count():
    # MDT's masked pass keeps a different number of tokens every step: one recompile, then a dynamic graph.
    calls = [make(4, 2, 2, k, 8, torch.float32, "cpu") for k in (9, 8, 7, 6)]
    assert compile_frame_count(lambda qkv, table, ids: mk.rel_pos_attention(qkv, table, 4, ids), calls) <= 2
