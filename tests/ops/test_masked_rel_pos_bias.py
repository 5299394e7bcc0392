import pytest
import torch
from helpers import (
    CPU_BACKENDS,
    DTYPES,
    as_float64,
    assert_close,
    assert_same_for_thread_counts,
    backend_device_pairs,
    compiled_backends,
    device_check_error,
    forward_and_grads,
    is_interpreted,
    op_namespace,
    property_settings,
    strided,
)
from hypothesis import given
from hypothesis import strategies as st

import mdt_kernels as mk
from mdt_kernels.ops.masked_rel_pos_bias import masked_rel_pos_bias_ref

PAIRS = backend_device_pairs()


def make(G, H, B, K, dtype, device, extra_rows=3, unique=True):
    table = torch.randn((2 * G - 1) ** 2 + extra_rows, H, dtype=dtype, device=device)
    N = G * G
    if unique:
        ids = torch.stack([torch.randperm(N)[:K] for _ in range(B)]) if B else torch.empty(0, K, dtype=torch.long)
    else:
        ids = torch.randint(0, N, (B, K))
    return table, ids.to(device)


def check(backend, table, G, ids):
    H = table.shape[1]
    shape = (H, G * G, G * G) if ids is None else (ids.shape[0], H, ids.shape[1], ids.shape[1])
    gy = torch.randn(shape, dtype=table.dtype, device=table.device)
    with mk.use_backend(backend):
        y, (g,) = forward_and_grads(mk.masked_rel_pos_bias, [table, G, ids], [0], gy)
    y_ref, (g_ref,) = forward_and_grads(masked_rel_pos_bias_ref, as_float64([table, G, ids]), [0], gy.double())
    assert y.shape == shape
    torch.testing.assert_close(y, y_ref.to(y.dtype), atol=0, rtol=0)  # every element is one table read
    assert_close(g, g_ref, table.dtype)


def beit_style(table, G, ids):
    # BEiT/MDT: full (H,N,N) bias from the relative_position_index buffer, repeated over the batch,
    # then rows and columns gathered with repeated indices. Written independently of the reference.
    coords = torch.stack(torch.meshgrid(torch.arange(G), torch.arange(G), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (G - 1)
    index = rel[..., 0] * (2 * G - 1) + rel[..., 1]
    full = table[index.reshape(-1)].reshape(G * G, G * G, -1).permute(2, 0, 1)
    if ids is None:
        return full
    B, K, H = ids.shape[0], ids.shape[1], table.shape[1]
    full = full.unsqueeze(0).repeat(B, 1, 1, 1)
    rows = torch.gather(full, 2, ids[:, None, :, None].repeat(1, H, 1, G * G))
    return torch.gather(rows, 3, ids[:, None, None, :].repeat(1, H, K, 1))


@pytest.mark.parametrize("ids", [False, True])
def test_reference_matches_beit_formulation(ids):
    table, idx = make(5, 3, 4, 11, torch.float64, "cpu")
    idx = idx if ids else None
    torch.testing.assert_close(masked_rel_pos_bias_ref(table, 5, idx), beit_style(table, 5, idx), atol=0, rtol=0)


CASES = [(1, 1, 2, 1), (2, 3, 2, 4), (3, 2, 3, 5), (4, 6, 2, 16), (4, 2, 2, 0), (3, 2, 0, 4), (5, 4, 1, 13)]


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("G,H,B,K", CASES)
def test_matches_reference(backend, device, dtype, G, H, B, K):
    table, ids = make(G, H, B, K, dtype, device)
    check(backend, table, G, ids)


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("G", [1, 3, 4])
def test_full_grid(backend, device, G):
    table, _ = make(G, 3, 0, 0, torch.float32, device)
    check(backend, table, G, None)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_property(backend, device):
    @property_settings(backend, device)
    @given(G=st.integers(1, 5), H=st.integers(1, 4), B=st.integers(0, 3), data=st.data(), extra=st.integers(0, 4),
           dtype=st.sampled_from(list(DTYPES.values())), contiguous=st.booleans(), unique=st.booleans())
    def prop(G, H, B, data, extra, dtype, contiguous, unique):
        K = data.draw(st.integers(0, G * G))
        table, ids = make(G, H, B, K, dtype, device, extra, unique)
        if not contiguous:
            table = strided(table)
            ids = ids.t().contiguous().t() if B and K else ids
        check(backend, table, G, ids)

    prop()


@pytest.mark.parametrize("backend,device", backend_device_pairs(("reference", "cpu", "cuda", "triton")))
def test_gradcheck(backend, device):
    table, ids = make(3, 2, 2, 5, torch.float64, device, unique=False)
    with mk.use_backend(backend):
        assert torch.autograd.gradcheck(lambda t: mk.masked_rel_pos_bias(t, 3, ids), (table.requires_grad_(),))
        assert torch.autograd.gradcheck(lambda t: mk.masked_rel_pos_bias(t, 3), (table,))


@pytest.mark.parametrize("backend,device", PAIRS)
def test_opcheck(backend, device):
    suffix = "_triton" if backend == "triton" else ""
    fwd = getattr(op_namespace(backend), "masked_rel_pos_bias" + suffix)
    bwd = getattr(op_namespace(backend), "masked_rel_pos_bias_backward" + suffix)
    for dtype in (torch.float32, torch.float16):
        table, ids = make(3, 2, 2, 5, dtype, device)
        torch.library.opcheck(fwd, (table.requires_grad_(), 3, ids))
        torch.library.opcheck(fwd, (table.detach(), 3, ids))
        torch.library.opcheck(bwd, (torch.randn(2, 2, 5, 5, dtype=dtype, device=device), ids, 3, table.shape[0]))


def test_cpu_backward_is_deterministic():
    if mk._dispatch.unavailable_reason("cpu", "cpu"):
        pytest.skip("C++ extension not built")
    table, ids = make(16, 6, 9, 153, torch.float32, "cpu", unique=False)
    gy = torch.randn(9, 6, 153, 153)
    assert_same_for_thread_counts(
        lambda: torch.ops.mdt_kernels.masked_rel_pos_bias_backward(gy, ids, 16, table.shape[0]), counts=(1, 2, 1)
    )


@pytest.mark.parametrize("backend,device", PAIRS)
def test_torch_compile_fullgraph(backend, device):
    table, ids = make(3, 2, 2, 5, torch.float32, device)

    def f(op, t):
        return (op(t * 3, 3, ids).exp() * 2).sum(1)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager" if is_interpreted(backend, device) else "inductor")
    gy = torch.randn(2, 5, 5, device=device)
    with mk.use_backend(backend):
        y, (g,) = forward_and_grads(lambda t: compiled(mk.masked_rel_pos_bias, t), [table], [0], gy)
    y_ref, (g_ref,) = forward_and_grads(lambda t: f(masked_rel_pos_bias_ref, t), [table], [0], gy)
    assert_close(y, y_ref)
    assert_close(g, g_ref)


BAD = [
    ("table rank", lambda a: dict(a, table=a["table"][0]), ValueError, "table must be 2-D"),
    ("ids rank", lambda a: dict(a, ids=a["ids"][0]), ValueError, "ids_keep must be 2-D"),
    ("float ids", lambda a: dict(a, ids=a["ids"].float()), TypeError, "integer tensor"),
    ("ids too large", lambda a: dict(a, ids=a["ids"] + 16), IndexError, r"outside \[0, 16\)"),
    ("negative ids", lambda a: dict(a, ids=a["ids"] - 16), IndexError, r"outside \[0, 16\)"),
    ("table too small", lambda a: dict(a, table=a["table"][:48]), ValueError, r"fewer than \(2\*grid_size-1\)\^2 = 49"),
    ("integer table", lambda a: dict(a, table=a["table"].long()), TypeError, "table must be float32"),
    ("grid_size type", lambda a: dict(a, G=4.0), TypeError, "grid_size must be an int"),
    ("grid_size zero", lambda a: dict(a, G=0), ValueError, "grid_size must be >= 1"),
    ("devices", lambda a: dict(a, ids=a["ids"].to("meta")), ValueError, "one device"),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case,mutate,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises(backend, case, mutate, exc, match):
    table, ids = make(4, 3, 2, 5, torch.float32, "cpu")
    a = mutate(dict(table=table, ids=ids, G=4))
    with mk.use_backend(backend), pytest.raises(exc, match=match):
        mk.masked_rel_pos_bias(a["table"], a["G"], a["ids"])


@pytest.mark.parametrize("backend", compiled_backends())
def test_cpp_op_checks_itself(backend):
    table, ops = torch.randn(49, 2), op_namespace(backend)
    exc, match = device_check_error(backend)
    with pytest.raises(exc, match=match):
        ops.masked_rel_pos_bias(table, 4, torch.tensor([[0, 16]]))
    with pytest.raises(ValueError, match="fewer than"):
        ops.masked_rel_pos_bias(table[:40], 4, torch.tensor([[0, 1]]))
    grad, bad = torch.randn(1, 2, 2, 2), torch.tensor([[0, -1]])
    if backend == "cpu":
        with pytest.raises(IndexError, match="outside"):
            ops.masked_rel_pos_bias_backward(grad, bad, 4, 49)
    else:  # the CUDA backward skips ids its forward rejected: nothing out of bounds, only the valid pairs
        d_table = ops.masked_rel_pos_bias_backward(grad, bad, 4, 49)
        assert d_table.abs().sum(0).tolist() == grad[0, :, 0, 0].abs().tolist() and d_table.count_nonzero() == 2
