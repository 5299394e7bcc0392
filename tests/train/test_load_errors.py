"""Files that are not what the user says they are (a text file given as samples, random bytes or a file of
Python objects given as a checkpoint): one line in mdt's words, never torch's or numpy's advice to load the
file unsafely (weights_only=False, allow_pickle=True, an allowlist of its classes), which would run whatever
code it holds."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mdt import checkpoint, fid
from mdt.data import latents
from mdt.errors import InputError
from mdt.sample import read_samples

ROOT = Path(__file__).resolve().parents[2]
UNSAFE = ("weights_only", "allow_pickle", "pickle", "safe_globals", "trust")


class _Custom:
    """An object that torch.save writes and only an unsafe torch.load reads back."""


def _mdt(*args):
    env = {k: v for k, v in os.environ.items() if k != "MDT_DEBUG"}
    return subprocess.run([sys.executable, "-m", "mdt.cli", *map(str, args)], capture_output=True, text=True,
                          env={**env, "OMP_NUM_THREADS": "1"}, cwd=ROOT, timeout=300)


def _one_safe_line(r, *words):
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    for w in UNSAFE:
        assert w not in lines[0].lower(), lines[0]
    return lines[0]


def test_eval_of_a_text_file_is_one_line(tmp_path):
    path = tmp_path / "notes.npz"
    path.write_text("these are not samples\n")
    _one_safe_line(_mdt("eval", path), str(path), "not an .npz")


@pytest.mark.parametrize("content", ["random-bytes", "custom-object"])
def test_sample_from_a_file_that_is_no_checkpoint_is_one_line(tmp_path, content):
    path = tmp_path / "ckpt.pt"
    if content == "random-bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
        _one_safe_line(_mdt("sample", "--checkpoint", path), str(path), "truncated or corrupt")
    else:  # torch's refusal of the class advises weights_only=False, or allowlisting it "if you trust" it
        torch.save({"model": {"w": torch.zeros(2)}, "extra": _Custom()}, path)
        _one_safe_line(_mdt("sample", "--checkpoint", path), str(path), "_Custom", "can run any code")


@pytest.mark.parametrize("make", ["text", "npy", "object-array", "truncated"])
def test_samples_that_are_no_npz(tmp_path, make):
    path = tmp_path / "s.npz"
    if make == "text":
        path.write_text("hello\n")
    elif make == "npy":
        with open(path, "wb") as f:
            np.save(f, np.zeros((2, 8, 8, 1), np.uint8))
    elif make == "object-array":  # numpy reads an object array as pickled data
        np.savez(path, np.array([{"a": 1}], dtype=object))
    else:
        np.savez(tmp_path / "good.npz", np.zeros((64, 8, 8, 1), np.uint8))
        path.write_bytes((tmp_path / "good.npz").read_bytes()[:300])
    with pytest.raises(InputError) as e:
        read_samples(str(path))
    assert str(path) in str(e.value) and not any(w in str(e.value).lower() for w in UNSAFE), str(e.value)
    with pytest.raises(InputError) as e:  # as an FID reference
        fid.reference_features(str(path), features_of=None)
    assert not any(w in str(e.value).lower() for w in UNSAFE), str(e.value)


def test_unreadable_checkpoint_messages(tmp_path):
    torch.save({"x": _Custom()}, tmp_path / "custom.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save({"w": torch.zeros(1000)}, tmp_path / "good.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:1000])
    want = {"custom.pt": "names the Python class or function", "empty.pt": "the file is empty",
            "cut.pt": "zip archive"}
    for name, words in want.items():
        with pytest.raises(checkpoint.CheckpointError) as e:
            checkpoint.load_file(str(tmp_path / name))
        message = str(e.value)
        assert "truncated or corrupt" in message and words in message, message
        assert not any(w in message.lower() for w in UNSAFE), message


def test_inception_weights_of_python_objects(tmp_path):
    if importlib.util.find_spec("torch_fidelity") is None:
        pytest.skip("torch-fidelity is not installed")
    torch.save({"fc.weight": _Custom()}, tmp_path / "w.pth")
    with pytest.raises(InputError) as e:
        fid.load_inception(str(tmp_path / "w.pth"))
    assert "not a plain state dict" in str(e.value)
    assert not any(w in str(e.value).lower() for w in UNSAFE), str(e.value)


@pytest.mark.parametrize("make", ["text", "object-array", "missing"])
def test_latent_folder_with_a_damaged_array(tmp_path, make):
    from test_latents import _synthetic_folder

    _synthetic_folder(tmp_path / "lat", np.zeros((2, 2, 4, 3, 3)), np.ones((2, 2, 4, 3, 3)), [0, 1], ["a", "b"])
    path = tmp_path / "lat" / "mean.npy"
    if make == "text":
        path.write_text("hello\n")
    elif make == "object-array":
        np.save(path, np.array([{"a": 1}], dtype=object))
    else:
        path.unlink()
    with pytest.raises((InputError, FileNotFoundError)) as e:
        latents.LatentFolder(str(tmp_path / "lat"))
    assert "mean.npy" in str(e.value) and not any(w in str(e.value).lower() for w in UNSAFE), str(e.value)
