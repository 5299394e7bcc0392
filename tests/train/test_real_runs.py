"""The trainer under the conditions of real runs: stop signals then --resume (one process and a 2-rank torchrun),
non-finite steps, gradient accumulation over 2 ranks, two torchrun nodes, unconditional training, image folders
in pixel space, TensorBoard scalars."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from train_helpers import IMAGE_SIZE

from mdt import checkpoint as ckpt
from mdt.errors import NonFiniteError
from mdt.preempt import EXIT_PREEMPTED
from mdt.train import TrainConfig, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--model", "MDTv2-Ti/2", "--batch-size", "16", "--lr", "1e-3", "--ema-decay", "0.9", "--log-every", "2",
        "--eval-samples", "20", "--sample-steps", "3", "--no-progress", "--threads", "1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def mdt_cmd(*args):
    return [sys.executable, "-m", "mdt.cli", *map(str, args)]


def run(cmd, **kw):
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900, **kw)


def state(out, step):
    return ckpt.load_checkpoint(ckpt.checkpoint_path(str(out), step))


def assert_same_state(a, b):
    assert a["step"] == b["step"]
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    for pid, s in a["opt"]["state"].items():
        for name, v in s.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["opt"]["state"][pid][name])), f"opt {pid}.{name}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def signal_when(proc, path, sig, times=1, deadline=300):
    """Sends `sig` (`times` times) to proc once `path` exists; returns proc's exit code and stderr."""
    end = time.time() + deadline
    while not os.path.exists(path) and time.time() < end:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before the signal"
    for _ in range(times):
        proc.send_signal(sig)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


STEPS = 30


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    r = run(mdt_cmd("train", *TINY, "--steps", STEPS, "--ckpt-every", 3, "--out", out))
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR1", "SIGINT"])
def test_stop_signal_checkpoints_and_resume_is_exact(uninterrupted, tmp_path, sig):
    args = ["train", *TINY, "--steps", STEPS, "--ckpt-every", 3, "--out", tmp_path]
    proc = subprocess.Popen(mdt_cmd(*args), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    code, err = signal_when(proc, ckpt.checkpoint_path(str(tmp_path), 3), getattr(signal, sig))
    assert code == EXIT_PREEMPTED, err
    stopped = int(err.split(f"stopped by {sig} after step ")[1].split(";")[0])
    assert 3 <= stopped < STEPS and os.path.exists(ckpt.checkpoint_path(str(tmp_path), stopped))
    assert "Traceback" not in err
    r = run(mdt_cmd(*args, "--resume", "auto"))
    assert r.returncode == 0, r.stderr
    assert f"resuming from {ckpt.checkpoint_path(str(tmp_path), stopped)}" in r.stderr
    assert_same_state(state(tmp_path, STEPS), state(uninterrupted, STEPS))


def test_second_sigint_aborts(tmp_path):
    proc = subprocess.Popen(mdt_cmd("train", *TINY, "--steps", 400, "--ckpt-every", 3, "--out", tmp_path),
                            cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    code, err = signal_when(proc, ckpt.checkpoint_path(str(tmp_path), 3), signal.SIGINT, times=2)
    assert code == 130 and "interrupted" in err, err


WORKER_FLAGS = ["--model", "MDTv2-Ti/2", "--batch-size", "16", "--lr", "1e-3", "--ema-decay", "0.9", "--log-every", "1",
                "--eval-samples", "10", "--sample-steps", "2", "--no-progress", "--threads", "1"]


def torchrun(out, *extra, nodes=None, steps=4):
    """`torchrun ... -m mdt.cli train` with 2 ranks: one node of 2 processes, or (nodes=port) two nodes of one
    process each, two agents on this machine meeting through a c10d rendezvous."""
    train_args = ["-m", "mdt.cli", "train", *WORKER_FLAGS, "--steps", str(steps), "--ckpt-every", "2", "--out",
                  str(out), *map(str, extra)]
    if nodes is None:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *train_args]
    return [[sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
             "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{nodes}", "--rdzv_id=mdt-test", *train_args]
            for _ in range(2)]


def losses(out):
    return [r["loss"] for r in map(json.loads, open(os.path.join(out, "metrics.jsonl"))) if "loss" in r]


@pytest.fixture(scope="module")
def one_node(tmp_path_factory):
    out = tmp_path_factory.mktemp("one_node")
    r = run(torchrun(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_two_nodes_equal_one_node(one_node, tmp_path):
    port = free_port()
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for cmd in torchrun(tmp_path, nodes=port)]
    errs = [p.communicate(timeout=900)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(e[-2000:] for e in errs)
    assert losses(tmp_path) == losses(one_node)
    assert_same_state(state(tmp_path, 4), state(one_node, 4))
    assert state(tmp_path, 4)["config"]["world_size"] == 2


def test_two_ranks_with_accumulation_equal_the_whole_batch(one_node, tmp_path):
    r = run(torchrun(tmp_path, "--grad-accum", 2))
    assert r.returncode == 0, r.stderr[-3000:]
    np.testing.assert_allclose(losses(tmp_path), losses(one_node), rtol=1e-5)
    a, b = state(tmp_path, 4), state(one_node, 4)
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], rtol=0, atol=1e-5, msg=name)


def test_torchrun_sigterm_then_resume_is_exact(one_node, tmp_path):
    proc = subprocess.Popen(torchrun(tmp_path, steps=400), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _, err = signal_when(proc, ckpt.checkpoint_path(str(tmp_path), 2), signal.SIGTERM)
    stopped = max(int(os.path.basename(p)[5:13]) for p in ckpt.list_checkpoints(str(tmp_path)))
    assert 2 <= stopped < 400 and "stopped by SIGTERM" in err, err[-3000:]
    # Resume the same 2-rank run to step 4 + stopped, and compare with an uninterrupted run of that length.
    target = stopped + 2
    r = run(torchrun(tmp_path, "--resume", "auto", steps=target))
    assert r.returncode == 0, r.stderr[-3000:]
    ref = tmp_path / "ref"
    r = run(torchrun(ref, steps=target))
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_state(state(tmp_path, target), state(ref, target))


class NanAt:
    """The digits, with every pixel of the batches of the given steps (1-based) set to NaN."""

    def __init__(self, data, steps):
        self.data, self.steps, self.calls = data, set(steps), 0

    def __getattr__(self, name):
        return getattr(self.data, name)

    def __len__(self):
        return len(self.data)

    def to_model_input(self, batch, device):
        self.calls += 1
        x, y = self.data.to_model_input(batch, device)
        return (torch.full_like(x, float("nan")) if self.calls in self.steps else x), y


def tiny_cfg(out, **kw):
    base = dict(model="MDTv2-Ti/2", batch_size=16, lr=1e-3, ema_decay=0.9, log_every=2, ckpt_every=2, eval_samples=10,
                sample_steps=2, progress=False, threads=1, out=str(out))
    return TrainConfig(**{**base, **kw})


def nan_data(monkeypatch, steps):
    import mdt.train

    real = mdt.train.open_dataset
    monkeypatch.setattr(mdt.train, "open_dataset", lambda *a, **kw: NanAt(real(*a, **kw), steps))


def test_injected_nan_is_skipped_and_counted(tmp_path, monkeypatch):
    nan_data(monkeypatch, {3})
    train(tiny_cfg(tmp_path, steps=6))
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    logs = {r["step"]: r for r in records if "loss" in r}
    assert [logs[s]["skipped_steps"] for s in (2, 4, 6)] == [0, 1, 0] and logs[6]["skipped_total"] == 1
    assert all(np.isfinite(r["loss"]) for r in logs.values())  # the mean over the good steps
    a, b = state(tmp_path, 2), ckpt.load_checkpoint(ckpt.checkpoint_path(str(tmp_path), 4))
    assert not torch.equal(a["model"]["final_layer.linear.bias"], b["model"]["final_layer.linear.bias"])  # step 4 ran


def test_bad_steps_in_a_row_stop_the_run(tmp_path, monkeypatch):
    nan_data(monkeypatch, set(range(3, 100)))
    with pytest.raises(NonFiniteError, match=r"^3 steps in a row had a non-finite loss or gradient .* at step 5;"):
        train(tiny_cfg(tmp_path, steps=20, max_bad_steps=3, log_every=1))
    kept = ckpt.list_checkpoints(str(tmp_path))
    assert kept and all(np.isfinite(v.float().numpy()).all() for v in state(tmp_path, 2)["model"].values())


def test_unconditional_training_and_sampling(tmp_path):
    out = tmp_path / "run"
    r = run(mdt_cmd("train", *TINY, "--num-classes", 0, "--steps", 2, "--out", out))
    assert r.returncode == 0, r.stderr
    s = state(out, 2)
    assert s["config"]["num_classes"] == 0 and not any(k.startswith("y_embedder") for k in s["model"])
    r = run(mdt_cmd("sample", "--checkpoint", out, "--num-per-class", 6, "--steps", 2, "--out", tmp_path / "s"))
    assert r.returncode == 0, r.stderr
    with np.load(next(tmp_path.glob("s*.npz")) if not (tmp_path / "s").is_dir() else
                 next((tmp_path / "s").glob("*.npz"))) as f:
        assert f.files == ["arr_0"] and f["arr_0"].shape == (6, 8, 8, 1)
    r = run(mdt_cmd("sample", "--checkpoint", out, "--cfg-scale", 2, "--num-per-class", 2, "--steps", 2))
    assert r.returncode == 2 and "unconditional" in r.stderr and "Traceback" not in r.stderr


def test_pixel_space_image_folder(image_folder, tmp_path):
    folder, _ = image_folder
    out = tmp_path / "run"
    r = run(mdt_cmd("train", *TINY, "--data", folder, "--vae", "none", "--image-size", IMAGE_SIZE, "--batch-size", 4,
                    "--steps", 2, "--out", out))
    assert r.returncode == 0, r.stderr
    s = state(out, 2)
    assert (s["config"]["in_channels"], s["config"]["input_size"], s["config"]["num_classes"]) == (3, IMAGE_SIZE, 2)
    assert s["config"]["vae"] is None and (out / "samples.png").exists()


def test_tensorboard_scalars_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    r = run(mdt_cmd("train", *TINY, "--steps", 4, "--eval-every", 2, "--tensorboard", "--out", out))
    assert r.returncode == 0, r.stderr
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/grad_norm", "train/lr", "train/steps_per_s", "train/skipped_steps",
            "eval/frechet", "eval/accuracy"} <= tags
    logged = {r["step"]: r["loss"] for r in map(json.loads, open(out / "metrics.jsonl")) if "loss" in r}
    assert {e.step: pytest.approx(e.value) for e in acc.Scalars("train/loss")} == logged
    assert [e.step for e in acc.Scalars("eval/frechet")] == [2, 4]


def test_tensorboard_missing_is_one_line(tmp_path):
    code = ("import builtins, sys; real = builtins.__import__\n"
            "def fake(name, *a, **k):\n"
            "    if name.startswith('torch.utils.tensorboard'): raise ImportError(name)\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = fake\n"
            "from mdt.cli import main; sys.exit(main(sys.argv[1:]))")
    r = run([sys.executable, "-c", code, "train", *TINY, "--steps", "1", "--tensorboard", "--out", str(tmp_path)])
    assert r.returncode == 2 and "pip install tensorboard" in r.stderr and "Traceback" not in r.stderr
