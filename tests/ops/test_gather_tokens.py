import pytest
import torch
from helpers import (
    CPU_BACKENDS,
    DTYPES,
    assert_close,
    backend_device_pairs,
    compiled_backends,
    device_check_error,
    is_interpreted,
    op_namespace,
    property_settings,
    strided,
)
from hypothesis import given
from hypothesis import strategies as st

import mdt_kernels as mk
from mdt_kernels.ops.gather_tokens import gather_tokens_ref

PAIRS = backend_device_pairs()


def run(backend, x, ids, gy):
    """Forward and dx on `backend`."""
    x = x.detach().requires_grad_(True)
    with mk.use_backend(backend):
        y = mk.gather_tokens(x, ids)
    (dx,) = torch.autograd.grad(y, x, gy) if y.numel() else (torch.zeros_like(x),)
    return y, dx


def expected(x, ids, gy):
    """Reference forward in x's dtype, dx computed in float64."""
    x64 = x.detach().double().requires_grad_(True)
    y = gather_tokens_ref(x64, ids)
    (dx,) = torch.autograd.grad(y, x64, gy.double()) if y.numel() else (torch.zeros_like(x64),)
    return gather_tokens_ref(x.detach(), ids), dx


def make(B, N, D, K, dtype, device, unique=False):
    x = torch.randn(B, N, D, dtype=dtype, device=device)
    if unique:
        ids = torch.stack([torch.randperm(N, device=device)[:K] for _ in range(B)]) if B else torch.empty(0, K)
    else:
        ids = torch.randint(0, N, (B, K), device=device)
    gy = torch.randn(B, K, D, dtype=dtype, device=device)
    return x, ids.long().to(device), gy


SHAPES = [(2, 5, 1, 3), (2, 7, 3, 7), (3, 9, 97, 4), (2, 6, 1152, 2), (2, 4, 8, 0), (0, 4, 8, 2), (1, 1, 5, 1)]


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("B,N,D,K", SHAPES)
def test_matches_reference(backend, device, dtype, B, N, D, K):
    x, ids, gy = make(B, N, D, K, dtype, device)
    y, dx = run(backend, x, ids, gy)
    y_ref, dx_ref = expected(x, ids, gy)
    torch.testing.assert_close(y, y_ref, atol=0, rtol=0)  # a gather is a copy
    assert_close(dx, dx_ref, dtype)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_duplicates_accumulate(backend, device):
    x = torch.randn(1, 4, 3, device=device)
    ids = torch.tensor([[2, 2, 2, 0]], device=device)
    gy = torch.ones(1, 4, 3, device=device)
    _, dx = run(backend, x, ids, gy)
    assert dx[0, :, 0].tolist() == [1.0, 0.0, 3.0, 0.0]


@pytest.mark.parametrize("backend,device", PAIRS)
def test_property(backend, device):
    @property_settings(backend, device)
    @given(
        B=st.integers(0, 3), N=st.integers(1, 12), D=st.sampled_from([1, 3, 16, 97, 130]), data=st.data(),
        dtype=st.sampled_from(list(DTYPES.values())), contiguous=st.booleans(), unique=st.booleans(),
    )
    def prop(B, N, D, data, dtype, contiguous, unique):
        K = data.draw(st.integers(0, N))
        x, ids, gy = make(B, N, D, K, dtype, device, unique)
        if not contiguous:
            x, ids, gy = strided(x), ids.t().contiguous().t() if B else ids, strided(gy)
        y, dx = run(backend, x, ids, gy)
        y_ref, dx_ref = expected(x, ids, gy)
        torch.testing.assert_close(y, y_ref, atol=0, rtol=0)
        assert_close(dx, dx_ref, dtype)

    prop()


@pytest.mark.parametrize("backend,device", backend_device_pairs(("reference",) + ("cpu", "cuda", "triton")))
def test_gradcheck(backend, device):
    x = torch.randn(2, 5, 3, dtype=torch.float64, device=device, requires_grad=True)
    ids = torch.tensor([[4, 0, 4], [1, 2, 3]], device=device)
    with mk.use_backend(backend):
        assert torch.autograd.gradcheck(lambda t: mk.gather_tokens(t, ids), (x,))


@pytest.mark.parametrize("backend,device", PAIRS)
def test_opcheck(backend, device):
    fwd = torch.ops.mdt_kernels.gather_tokens_triton if backend == "triton" else op_namespace(backend).gather_tokens
    bwd = (torch.ops.mdt_kernels.gather_tokens_backward_triton if backend == "triton"
           else op_namespace(backend).gather_tokens_backward)
    for dtype in (torch.float32, torch.float16):
        x, ids, gy = make(2, 6, 5, 4, dtype, device)
        torch.library.opcheck(fwd, (x.requires_grad_(), ids))
        torch.library.opcheck(fwd, (x.detach(), ids))
        torch.library.opcheck(bwd, (gy, ids, 6))


@pytest.mark.parametrize("backend,device", PAIRS)
def test_torch_compile_fullgraph(backend, device):
    x, ids, gy = make(2, 6, 5, 4, torch.float32, device)
    x.requires_grad_(True)

    @torch.compile(fullgraph=True, backend="aot_eager" if is_interpreted(backend, device) else "inductor")
    def f(x, ids):
        return mk.gather_tokens(x * 2, ids).sin()

    with mk.use_backend(backend):
        y = f(x, ids)
        y.backward(gy)
    x_ref = x.detach().requires_grad_(True)
    gather_tokens_ref(x_ref * 2, ids).sin().backward(gy)
    assert_close(y, gather_tokens_ref(x.detach() * 2, ids).sin())
    assert_close(x.grad, x_ref.grad)


BAD = [
    ("x rank", lambda x, ids: (x[0], ids), ValueError, "x must be 3-D"),
    ("ids rank", lambda x, ids: (x, ids[0]), ValueError, "ids must be 2-D"),
    ("batch mismatch", lambda x, ids: (x, ids[:1]), ValueError, "batch size 1, expected 2"),
    ("float ids", lambda x, ids: (x, ids.float()), TypeError, "integer tensor"),
    ("bool ids", lambda x, ids: (x, ids > 0), TypeError, "integer tensor"),
    ("ids too large", lambda x, ids: (x, ids + 6), IndexError, r"outside \[0, 6\)"),
    ("negative ids", lambda x, ids: (x, ids - 6), IndexError, r"outside \[0, 6\)"),
    ("integer x", lambda x, ids: (x.long(), ids), TypeError, "x must be float32"),
    ("devices", lambda x, ids: (x, ids.to("meta")), ValueError, "same device|one device"),
    ("not a tensor", lambda x, ids: (x.tolist(), ids), TypeError, "must be a torch.Tensor"),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case,mutate,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises(backend, case, mutate, exc, match):
    x, ids, _ = make(2, 6, 5, 4, torch.float32, "cpu")
    with mk.use_backend(backend), pytest.raises(exc, match=match):
        mk.gather_tokens(*mutate(x, ids))


@pytest.mark.parametrize("backend", compiled_backends())
@pytest.mark.parametrize("bad_ids", [[[0, 6]], [[-1, 0]]])
def test_cpp_op_checks_ids_itself(backend, bad_ids):
    # The registered op is callable directly (and from compiled graphs): it must not read out of bounds.
    exc, match = device_check_error(backend)
    with pytest.raises(exc, match=match):
        op_namespace(backend).gather_tokens(torch.randn(1, 6, 3), torch.tensor(bad_ids))
    with pytest.raises(exc, match=match):
        op_namespace(backend).gather_tokens_backward(torch.randn(1, 2, 3), torch.tensor(bad_ids), 6)


def test_int32_ids_accepted():
    x, ids, _ = make(2, 6, 5, 4, torch.float32, "cpu")
    torch.testing.assert_close(mk.gather_tokens(x, ids.int()), gather_tokens_ref(x, ids))
