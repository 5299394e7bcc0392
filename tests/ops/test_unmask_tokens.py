import pytest
import torch
from helpers import (
    CPU_BACKENDS,
    DTYPES,
    as_float64,
    assert_close,
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
from mdt_kernels.ops.unmask_tokens import unmask_tokens_ref

PAIRS = backend_device_pairs()


def make(B, N, D, K, dtype, device, pos=True):
    xk = torch.randn(B, K, D, dtype=dtype, device=device)
    ids = torch.stack([torch.randperm(N)[:K] for _ in range(B)]) if B else torch.empty(0, K, dtype=torch.long)
    mt = torch.randn(D, dtype=dtype, device=device)
    pe = torch.randn(N, D, dtype=dtype, device=device) if pos else None
    gy = torch.randn(B, N, D, dtype=dtype, device=device)
    return xk, ids.to(device), mt, pe, gy


def check(backend, xk, ids, mt, N, pe, gy):
    inputs, wrt = [xk, ids, mt, N, pe], [0, 2] + ([4] if pe is not None else [])
    with mk.use_backend(backend):
        y, grads = forward_and_grads(mk.unmask_tokens, inputs, wrt, gy)
    y_ref, grads_ref = forward_and_grads(unmask_tokens_ref, as_float64(inputs), wrt, gy.double())
    assert_close(y, y_ref, xk.dtype)
    for g, g_ref in zip(grads, grads_ref):
        assert_close(g, g_ref, xk.dtype)


def mdt_style(xk, ids, mt, N, pe):
    # sail-sg/MDT: append N-K mask tokens, un-shuffle with ids_restore, add decoder_pos_embed.
    B, K, D = xk.shape
    shuffle = torch.cat([ids, torch.stack([torch.tensor([n for n in range(N) if n not in set(r.tolist())],
                                                        dtype=torch.long) for r in ids]).reshape(B, N - K)], 1)
    restore = shuffle.argsort(dim=1)
    full = torch.cat([xk, mt.reshape(1, 1, D).repeat(B, N - K, 1)], dim=1)
    return torch.gather(full, 1, restore.unsqueeze(-1).repeat(1, 1, D)) + pe


def test_reference_matches_mdt_formulation():
    xk, ids, mt, pe, _ = make(3, 10, 6, 4, torch.float64, "cpu")
    torch.testing.assert_close(unmask_tokens_ref(xk, ids, mt, 10, pe), mdt_style(xk, ids, mt, 10, pe))


SHAPES = [(2, 5, 1, 3), (2, 7, 3, 7), (3, 9, 97, 4), (2, 6, 1152, 2), (2, 4, 8, 0), (0, 4, 8, 2), (1, 1, 5, 1)]


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("pos", [True, False], ids=["pos", "nopos"])
@pytest.mark.parametrize("B,N,D,K", SHAPES)
def test_matches_reference(backend, device, dtype, pos, B, N, D, K):
    xk, ids, mt, pe, gy = make(B, N, D, K, dtype, device, pos)
    check(backend, xk, ids, mt, N, pe, gy)


@pytest.mark.parametrize("backend,device", backend_device_pairs(("cpu", "cuda")))  # (interpreted Triton: too slow)
def test_more_tokens_than_a_grid_dimension_holds(backend, device):
    """N > 65535 (CUDA's grid.y limit): the backward's blocks stride over the tokens."""
    xk, ids, mt, pe, gy = make(1, 65536 + 3, 1, 3, torch.float32, device)
    ids[0, -1] = 65536 + 2  # a kept token beyond the first grid's worth
    check(backend, xk, ids, mt, 65536 + 3, pe, gy)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_mdt_parameter_shapes(backend, device):
    # MDT stores mask_token as (1, 1, D) and decoder_pos_embed as (1, N, D); gradients keep those shapes.
    xk, ids, mt, pe, gy = make(2, 8, 4, 5, torch.float32, device)
    mt3, pe3 = mt.reshape(1, 1, 4).requires_grad_(), pe.reshape(1, 8, 4).requires_grad_()
    with mk.use_backend(backend):
        y = mk.unmask_tokens(xk, ids, mt3, 8, pe3)
    y.backward(gy)
    assert mt3.grad.shape == (1, 1, 4) and pe3.grad.shape == (1, 8, 4)
    assert_close(y, unmask_tokens_ref(xk, ids, mt, 8, pe))


@pytest.mark.parametrize("backend,device", PAIRS)
def test_property(backend, device):
    @property_settings(backend, device)
    @given(B=st.integers(0, 3), N=st.integers(1, 12), D=st.sampled_from([1, 3, 16, 97, 130]), data=st.data(),
           dtype=st.sampled_from(list(DTYPES.values())), contiguous=st.booleans(), pos=st.booleans())
    def prop(B, N, D, data, dtype, contiguous, pos):
        K = data.draw(st.integers(0, N))
        xk, ids, mt, pe, gy = make(B, N, D, K, dtype, device, pos)
        if not contiguous:
            xk, mt, gy = strided(xk), strided(mt), strided(gy)
            pe = strided(pe) if pe is not None else None
        check(backend, xk, ids, mt, N, pe, gy)

    prop()


@pytest.mark.parametrize("backend,device", backend_device_pairs(("reference", "cpu", "cuda", "triton")))
def test_gradcheck(backend, device):
    xk, ids, mt, pe, _ = make(2, 6, 3, 4, torch.float64, device)
    with mk.use_backend(backend):
        assert torch.autograd.gradcheck(lambda a, b, c: mk.unmask_tokens(a, ids, b, 6, c),
                                        (xk.requires_grad_(), mt.requires_grad_(), pe.requires_grad_()))


@pytest.mark.parametrize("backend,device", PAIRS)
def test_opcheck(backend, device):
    suffix = "_triton" if backend == "triton" else ""
    fwd = getattr(op_namespace(backend), "unmask_tokens" + suffix)
    bwd = getattr(op_namespace(backend), "unmask_tokens_backward" + suffix)
    for dtype in (torch.float32, torch.bfloat16):
        xk, ids, mt, pe, gy = make(2, 6, 5, 4, dtype, device)
        torch.library.opcheck(fwd, (xk.requires_grad_(), ids, mt.requires_grad_(), 6, pe.requires_grad_()))
        torch.library.opcheck(fwd, (xk.detach(), ids, mt.detach(), 6, None))
        torch.library.opcheck(bwd, (gy, ids, True))
        torch.library.opcheck(bwd, (gy, ids, False))


@pytest.mark.parametrize("backend,device", PAIRS)
def test_torch_compile_fullgraph(backend, device):
    xk, ids, mt, pe, gy = make(2, 6, 5, 4, torch.float32, device)

    def f(unmask, xk, mt, pe):
        return unmask(xk * 2, ids, mt, 6, pe).tanh()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager" if is_interpreted(backend, device) else "inductor")
    with mk.use_backend(backend):
        y, grads = forward_and_grads(lambda *a: compiled(mk.unmask_tokens, *a), [xk, mt, pe], [0, 1, 2], gy)
    y_ref, grads_ref = forward_and_grads(lambda *a: f(unmask_tokens_ref, *a), [xk, mt, pe], [0, 1, 2], gy)
    assert_close(y, y_ref)
    for g, g_ref in zip(grads, grads_ref):
        assert_close(g, g_ref)


def _dup(ids):
    ids = ids.clone()
    ids[1, 2] = ids[1, 0]
    return ids


BAD = [
    ("x rank", lambda a: dict(a, xk=a["xk"][0]), ValueError, "x_kept must be 3-D"),
    ("ids rank", lambda a: dict(a, ids=a["ids"][0]), ValueError, "ids_keep must be 2-D"),
    ("batch mismatch", lambda a: dict(a, ids=a["ids"][:1]), ValueError, "batch size 1, expected 2"),
    ("float ids", lambda a: dict(a, ids=a["ids"].double()), TypeError, "integer tensor"),
    ("ids too large", lambda a: dict(a, ids=a["ids"] + 8), IndexError, r"outside \[0, 8\)"),
    ("negative ids", lambda a: dict(a, ids=a["ids"] - 8), IndexError, r"outside \[0, 8\)"),
    ("duplicate ids", lambda a: dict(a, ids=_dup(a["ids"])), ValueError, "twice"),
    ("integer x", lambda a: dict(a, xk=a["xk"].int()), TypeError, "x_kept must be float32"),
    ("mask size", lambda a: dict(a, mt=a["mt"][:3]), ValueError, "mask_token must hold D=5"),
    ("pos shape", lambda a: dict(a, pe=a["pe"][:7]), ValueError, r"pos_embed must have shape \(N, D\)"),
    ("dtype mix", lambda a: dict(a, mt=a["mt"].double()), TypeError, "one dtype"),
    ("devices", lambda a: dict(a, ids=a["ids"].to("meta")), ValueError, "one device"),
    ("num_tokens < K", lambda a: dict(a, N=3), ValueError, "smaller than the 4 kept"),
    ("num_tokens type", lambda a: dict(a, N=8.0), TypeError, "num_tokens must be an int"),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case,mutate,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises(backend, case, mutate, exc, match):
    xk, ids, mt, pe, _ = make(2, 8, 5, 4, torch.float32, "cpu")
    a = mutate(dict(xk=xk, ids=ids, mt=mt, pe=pe, N=8))
    with mk.use_backend(backend), pytest.raises(exc, match=match):
        mk.unmask_tokens(a["xk"], a["ids"], a["mt"], a["N"], a["pe"])


@pytest.mark.parametrize("backend", compiled_backends())
def test_cpp_op_checks_ids_itself(backend):
    xk, mt, ops = torch.randn(1, 2, 3), torch.randn(3), op_namespace(backend)
    exc, match = device_check_error(backend)
    with pytest.raises(exc, match=match):
        ops.unmask_tokens(xk, torch.tensor([[0, 6]]), mt, 6, None)
    with pytest.raises(ValueError if backend == "cpu" else RuntimeError, match="twice|previous == -1"):
        ops.unmask_tokens(xk, torch.tensor([[1, 1]]), mt, 6, None)
    with pytest.raises(exc, match=match):
        ops.unmask_tokens_backward(torch.randn(1, 6, 3), torch.tensor([[0, 6]]), False)


def test_reference_gradients_with_nothing_kept():
    """K = 0 (the empty cases of test_empty.py): every position is the mask token plus pos_embed, so the mask
    token's gradient sums every row of the cotangent and pos_embed's sums it over the batch."""
    xk, ids, mt, pe, g = make(2, 5, 4, 0, torch.float64, "cpu")
    _, (d_xk, d_mt, d_pe) = forward_and_grads(unmask_tokens_ref, [xk, ids, mt, 5, pe], [0, 2, 4], g)
    assert d_xk.shape == (2, 0, 4)
    torch.testing.assert_close(d_mt, g.sum((0, 1)))
    torch.testing.assert_close(d_pe, g.sum(0))
