"""The Makefile's `build` target: pip (a rebuild of the whole extension, minutes) runs only when an input of
the build changed. Each test runs make on a copy of the Makefile and the build inputs, with a stand-in venv
(its python exits 0, so every import check passes) and PIP replaced by a script that prints a line and
writes the build's outputs (stand-ins)."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _tree(tmp_path):
    """A copy of what `make build` reads, and the outputs of a finished build (stand-ins)."""
    shutil.copy(ROOT / "Makefile", tmp_path)
    shutil.copy(ROOT / "setup.py", tmp_path)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(ROOT / "csrc", tmp_path / "csrc")
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(shutil.which("true"))
    (venv / "bin" / "mdt").touch()
    (venv / "pyvenv.cfg").touch()
    torch_dir = venv / "lib" / "python3" / "site-packages" / "torch"
    torch_dir.mkdir(parents=True)
    (torch_dir / "version.py").touch()
    (tmp_path / "mdt_kernels").mkdir()
    (tmp_path / "mdt_kernels" / "_C.abi3.so").touch()
    # The venv target's `$(PY) -m venv .venv`: a venv made long ago (so only its absence can start a build).
    (tmp_path / "venv.sh").write_text(f"mkdir -p .venv/bin && ln -s {shutil.which('true')} .venv/bin/python && "
                                      "touch -d @0 .venv/pyvenv.cfg\n")
    outputs = "mdt_kernels/_C.abi3.so .venv/bin/mdt"
    (tmp_path / "pip.sh").write_text(f"echo PIP-RAN; touch {outputs}\n")
    # Everything written long ago: an edit in a test is newer than any build's stamp.
    old = time.time() - 100
    for path in [tmp_path, *tmp_path.rglob("*")]:
        os.utime(path, (old, old), follow_symlinks=False)
    return tmp_path


def _built(tree, *args, env=None):
    """Runs `make build` in tree; True if it ran pip."""
    # Without the flags of a make that runs these tests (`make test -n` would make this one a dry run too).
    outer = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    out = subprocess.run(["make", "-C", str(tree), "build", "PY=sh venv.sh", "PIP=sh pip.sh", *args],
                         capture_output=True, text=True, env={**outer, **(env or {})}, check=True).stdout
    return "PIP-RAN" in out


def _edit(path):
    os.utime(path)


def test_build_only_when_an_input_changed(tmp_path):
    tree = _tree(tmp_path)
    assert _built(tree)  # no stamp: a fresh checkout
    assert not _built(tree)  # nothing changed since: `make test` then `make train` builds once
    for edited in ("csrc/cpu/rel_pos_attention.cpp", "csrc/include/ops/rel_pos_attention.h", "setup.py",
                   "pyproject.toml", ".venv/pyvenv.cfg", ".venv/lib/python3/site-packages/torch/version.py"):
        _edit(tree / edited)
        assert _built(tree), edited
        assert not _built(tree), edited


def test_simulator_sources_are_not_build_inputs(tmp_path):
    # csrc/simt is the test suite's CUDA simulator (built by `make sim`), not part of the extension.
    tree = _tree(tmp_path)
    assert _built(tree)
    _edit(tree / "csrc" / "simt" / "simt.cpp")
    (tree / "csrc" / "simt" / "new.cpp").write_text("")
    assert not _built(tree)


def test_build_when_a_source_is_added_or_removed(tmp_path):
    tree = _tree(tmp_path)
    assert _built(tree)
    (tree / "csrc" / "cpu" / "new_op.cpp").write_text("")
    assert _built(tree)
    (tree / "csrc" / "cpu" / "new_op.cpp").unlink()
    assert _built(tree)
    assert not _built(tree)


def test_build_when_a_build_switch_changes(tmp_path):
    tree = _tree(tmp_path)
    assert _built(tree)
    assert _built(tree, env={"MDT_KERNELS_CPU_ARCH": "native"})
    assert not _built(tree, env={"MDT_KERNELS_CPU_ARCH": "native"})
    assert _built(tree, "DEBUG=1", env={"MDT_KERNELS_CPU_ARCH": "native"})
    assert _built(tree)  # back to the defaults: the extension on disk is the DEBUG one
    assert not _built(tree)


@pytest.mark.parametrize("missing", [".venv", ".venv/bin/mdt", "mdt_kernels/_C.abi3.so", "build/.built"])
def test_build_when_an_output_is_missing(tmp_path, missing):
    tree = _tree(tmp_path)
    assert _built(tree)
    path = tree / missing
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert _built(tree)
    assert not _built(tree)


def test_clean_removes_the_stamp(tmp_path):
    tree = _tree(tmp_path)
    assert _built(tree)
    subprocess.run(["make", "-C", str(tree), "clean"], capture_output=True, check=True)
    assert not (tree / "build").exists()
    (tree / "mdt_kernels" / "_C.abi3.so").touch()  # even with the extension back in place, the build runs again
    assert _built(tree)
