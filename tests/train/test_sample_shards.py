"""`mdt sample --num-samples`: sharded, resumable sampling (mdt.sample_shards), alone and under a 2-process gloo
torchrun that is killed midway and restarted."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_sample_eval_cli import DIGITS_CONFIG, _perturbed, mdt

from mdt.checkpoint import save_checkpoint
from mdt.models import MODELS
from mdt.sample_shards import EXIT_AFTER_ENV, shard_path, write_npz

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# 11 samples in shards of 3: 4 shards, the last one short; DDPM draws fresh noise at every step
ARGS = ["--num-samples", 11, "--batch-size", 3, "--steps", 3, "--sampler", "ddpm", "--cfg-scale", 2, "--seed", 4]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    kwargs = {k: DIGITS_CONFIG[k] for k in ("in_channels", "input_size", "num_classes", "class_dropout_prob",
                                            "mask_ratio")}
    model = MODELS["MDTv2-Ti/2"](**kwargs)
    return save_checkpoint(str(tmp_path_factory.mktemp("ckpt")), 3, {
        "model": _perturbed(model, 1), "ema": _perturbed(model, 2), "opt": {}, "rng": {}, "config": DIGITS_CONFIG})


def torchrun(checkpoint, out, env=None, args=ARGS):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mdt.cli",
           "sample", "--checkpoint", checkpoint, "--out", out, "--device", "cpu", *map(str, args)]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1",
           **(env or {})}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_single_process_run_resumes_and_matches_a_fresh_one(tmp_path, capsys, checkpoint):
    code, out, err = mdt(["sample", "--checkpoint", checkpoint, "--out", tmp_path / "a" / "run", *ARGS], capsys)
    assert code == 0, err
    with np.load(tmp_path / "a" / "run.npz") as f:
        pictures, labels = f["arr_0"], f["arr_1"]
    assert pictures.shape == (11, 8, 8, 1) and pictures.dtype == np.uint8 and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < 10 and len(set(labels.tolist())) > 3  # random classes
    assert len(np.unique(pictures.reshape(11, -1), axis=0)) == 11  # every sample has its own noise
    # shard 2 lost: a second run samples it alone and merges the same bytes
    first = (tmp_path / "a" / "run.npz").read_bytes()
    folder = str(tmp_path / "a" / "run.shards")
    os.remove(shard_path(folder, 2))
    kept = os.stat(shard_path(folder, 1)).st_mtime_ns
    code, out, err = mdt(["sample", "--checkpoint", checkpoint, "--out", tmp_path / "a" / "run", *ARGS], capsys)
    assert code == 0, err
    assert "3 done, 1 to sample" in err
    assert os.stat(shard_path(folder, 1)).st_mtime_ns == kept
    assert (tmp_path / "a" / "run.npz").read_bytes() == first
    # other settings on the same shards: a one-line error, nothing overwritten
    code, out, err = mdt(["sample", "--checkpoint", checkpoint, "--out", tmp_path / "a" / "run", *ARGS[:-1], 5],
                         capsys)
    assert code == 2 and "other settings (seed: 4 there, 5 now)" in err and len(err.strip().splitlines()) == 1


def test_torchrun_killed_midway_and_restarted_equals_an_uninterrupted_run(tmp_path, capsys, checkpoint):
    done = torchrun(checkpoint, str(tmp_path / "whole" / "run"))
    assert done.returncode == 0, done.stderr[-3000:]
    whole = (tmp_path / "whole" / "run.npz").read_bytes()

    killed = torchrun(checkpoint, str(tmp_path / "cut" / "run"), env={EXIT_AFTER_ENV: "1"})
    assert killed.returncode != 0
    folder = str(tmp_path / "cut" / "run.shards")
    left = sorted(f for f in os.listdir(folder) if f.startswith("shard_"))
    # each rank dies after its first shard; torchrun may stop the other rank before it has written its own
    assert left in (["shard_000000.npz"], ["shard_000001.npz"], ["shard_000000.npz", "shard_000001.npz"]), left
    assert not (tmp_path / "cut" / "run.npz").exists()
    stamps = {f: os.stat(os.path.join(folder, f)).st_mtime_ns for f in left}

    resumed = torchrun(checkpoint, str(tmp_path / "cut" / "run"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{len(left)} done, {4 - len(left)} to sample on 2 process(es)" in resumed.stderr
    assert {f: os.stat(os.path.join(folder, f)).st_mtime_ns for f in left} == stamps  # not redone
    assert (tmp_path / "cut" / "run.npz").read_bytes() == whole
    # other settings on these shards: every rank stops with the one-line error (none waits for the others)
    other = torchrun(checkpoint, str(tmp_path / "cut" / "run"), args=[*ARGS[:-1], 5])
    assert other.returncode != 0 and other.stderr.count("other settings (seed: 4 there, 5 now)") == 2
    # and one process makes the same samples as two
    code, out, err = mdt(["sample", "--checkpoint", checkpoint, "--out", tmp_path / "one" / "run", "--device", "cpu",
                          *ARGS], capsys)
    assert code == 0, err
    assert (tmp_path / "one" / "run.npz").read_bytes() == whole


def test_write_npz_is_deterministic_and_loads_as_numpy_arrays(tmp_path):
    parts = [np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3), np.full((1, 2, 2, 3), 7, np.uint8)]
    labels = np.array([3, 1, 2])
    write_npz(str(tmp_path / "a.npz"), parts, labels)
    os.utime(tmp_path / "a.npz", (0, 0))
    write_npz(str(tmp_path / "b.npz"), [lambda p=p: p for p in parts], labels)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz") as f:
        np.testing.assert_array_equal(f["arr_0"], np.concatenate(parts))
        np.testing.assert_array_equal(f["arr_1"], labels)
        assert f["arr_1"].dtype == np.int64
    with pytest.raises(ValueError, match="expected 4"):
        write_npz(str(tmp_path / "c.npz"), parts, np.arange(4))
    assert not (tmp_path / "c.npz").exists()
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "a.npz")["arr_0"]), torch.from_numpy(np.concatenate(parts)))
