import subprocess
import sys
import warnings

import pytest
import torch

import mdt_kernels as mk
from mdt_kernels import _dispatch


def test_available_backends_lists_reference_first():
    assert mk.available_backends()[0] == "reference"
    # cuda_sim is the test suite's (tests/cuda_sim, attached by conftest.py): never built in, never auto's choice
    assert set(mk.available_backends()) <= set(mk.BACKENDS) | {"cuda_sim"}
    assert "cuda_sim" not in mk.BACKENDS and "cuda_sim" not in mk._dispatch.AUTO_ORDER["cpu"]
    assert mk.available_backends("meta") == ["reference"]


def test_every_op_is_declared_once_and_exported():
    from mdt_kernels import _registry

    ops = _registry.all_ops()
    assert tuple(sorted(ops)) == mk.OPS and set(mk.OPS) <= set(mk.__all__)
    for name, op in ops.items():
        assert getattr(mk, name) is op.function and "reference" in op.impls, name
        assert set(op.impls) <= set(mk.BACKENDS) | set(_dispatch._ADDED), name


def test_use_backend_global_and_context():
    start = mk.get_backend()
    with mk.use_backend("reference"):
        assert mk.get_backend() == "reference"
        with mk.use_backend("auto"):
            assert mk.get_backend() == "auto"
        assert mk.get_backend() == "reference"
    assert mk.get_backend() == start
    try:
        mk.set_backend("reference")  # the global setter: stays set
        assert mk.get_backend() == "reference"
    finally:
        mk.set_backend(start)


def test_use_backend_acts_only_inside_its_block_and_can_be_entered_again():
    """Constructing use_backend changes nothing; one object entered twice (as mdt train does: the loop, then
    the final sampling) selects its backend both times, also nested in itself."""
    start = mk.get_backend()
    ref = mk.use_backend("reference")
    assert mk.get_backend() == start
    for _ in range(2):
        with ref:
            assert mk.get_backend() == "reference"
            with mk.use_backend("auto"), ref:
                assert mk.get_backend() == "reference"
            assert mk.get_backend() == "reference"
        assert mk.get_backend() == start


def test_context_restores_after_exception():
    start = mk.get_backend()
    with pytest.raises(ZeroDivisionError), mk.use_backend("reference"):
        raise ZeroDivisionError
    assert mk.get_backend() == start


@pytest.mark.parametrize("select", [mk.use_backend, mk.set_backend])
def test_unknown_backend_raises(select):
    with pytest.raises(ValueError, match="unknown backend 'cudnn'"):
        select("cudnn")
    with pytest.raises(ValueError, match="'cpu' is built in"):
        _dispatch.add_backend("cpu", "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_explicit_backend_that_cannot_run_raises_with_reason():
    x, ids = torch.randn(1, 4, 2), torch.tensor([[0, 1]])
    with mk.use_backend("cuda"), pytest.raises(mk.BackendError, match="backend 'cuda' cannot run: .*cuda tensors"):
        mk.gather_tokens(x, ids)


def test_auto_picks_cpu_kernel_on_cpu_when_built():
    with mk.use_backend("auto"):
        expected = "cpu" if _dispatch.unavailable_reason("cpu", "cpu") is None else "reference"
        assert _dispatch.resolve("gather_tokens", torch.device("cpu")) == expected
        assert _dispatch.resolve("gather_tokens", torch.device("meta")) == "reference"


def test_auto_never_picks_interpreted_triton():
    assert "triton" not in _dispatch.AUTO_ORDER["cpu"]


def _run(code: str, **env) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_environment_variable_sets_default():
    r = _run("import mdt_kernels as mk; print(mk.get_backend())", MDT_KERNELS_BACKEND="reference")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "reference"


def test_bad_environment_variable_is_a_clear_error():
    r = _run("import mdt_kernels", MDT_KERNELS_BACKEND="fastest")
    assert r.returncode != 0 and "unknown backend 'fastest'" in r.stderr


def test_triton_needs_interpreter_for_cpu_tensors():
    code = ("import torch, mdt_kernels as mk\n"
            "mk.set_backend('triton')\n"
            "try:\n    mk.gather_tokens(torch.randn(1, 3, 2), torch.tensor([[0]]))\n"
            "except mk.BackendError as e:\n    print(e)\n")
    r = _run(code, TRITON_INTERPRET="0")
    assert r.returncode == 0, r.stderr
    assert "TRITON_INTERPRET=1" in r.stdout or "triton is not installed" in r.stdout


def test_auto_without_extension_warns_once_and_uses_reference(monkeypatch):
    monkeypatch.setattr(_dispatch, "_EXT_ERROR", "the compiled extension could not be loaded (test)")
    monkeypatch.setattr(_dispatch, "_warned", set())
    x, ids = torch.randn(1, 4, 2), torch.tensor([[0, 1]])
    with mk.use_backend("auto"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mk.gather_tokens(x, ids)
        mk.gather_tokens(x, ids)
    msgs = [str(w.message) for w in caught if "no fused backend" in str(w.message)]
    assert len(msgs) == 1 and "could not be loaded (test)" in msgs[0]
    with mk.use_backend("cpu"), pytest.raises(mk.BackendError, match="could not be loaded"):
        mk.gather_tokens(x, ids)


def test_reference_by_declaration_is_quiet(monkeypatch):
    """linear has no GPU or Triton kernel and declares F.linear (cuBLAS) its implementation there; on CUDA,
    auto runs rel_pos_attention's reference (SDPA) by declaration: no error, no warning."""
    monkeypatch.setattr(_dispatch, "_warned", set())
    x, w = torch.randn(2, 4), torch.randn(3, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with mk.use_backend("auto"):
            assert _dispatch.resolve("linear", torch.device("cuda")) == "reference"
            assert _dispatch.resolve("rel_pos_attention", torch.device("cuda")) == "reference"
            assert not mk.runs_fused("rel_pos_attention", "cuda")
        if _dispatch.unavailable_reason("triton", "cpu") is None:
            with mk.use_backend("triton"):
                torch.testing.assert_close(mk.linear(x, w), x @ w.t())
                assert not mk.runs_fused("linear", "cpu")
    assert not [w for w in caught if "no fused backend" in str(w.message)]


@pytest.mark.skipif(_dispatch.unavailable_reason("cpu", "cpu") is not None, reason="C++ extension not built")
def test_implementation_takes_the_inference_form_when_no_backward_follows():
    from mdt_kernels import _registry

    x, linear_gelu = torch.randn(2, 3, 4), _registry.get("linear_gelu")
    with mk.use_backend("cpu"):
        assert _dispatch.implementation("linear_gelu", x.device, x) == ("cpu", linear_gelu.inference)
        x.requires_grad_()
        assert _dispatch.implementation("linear_gelu", x.device, x) == ("cpu", linear_gelu.impls["cpu"])
        with torch.no_grad():
            assert _dispatch.implementation("linear_gelu", x.device, x) == ("cpu", linear_gelu.inference)
        gather = _registry.get("gather_tokens").impls["cpu"]
        assert _dispatch.implementation("gather_tokens", x.device) == ("cpu", gather)  # one form only
