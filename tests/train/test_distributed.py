"""DDP: `torchrun --nproc_per_node=2` on CPU (gloo) trains one model: every rank ends with the same weights."""

import os
import subprocess
import sys

import torch

from mdt import checkpoint as ckpt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = """
import os, sys, torch
from mdt.train import TrainConfig, train
out = sys.argv[1]
cfg = TrainConfig(model="MDTv2-Ti/2", out=out, batch_size=16, steps=4, lr=1e-3, ema_decay=0.9, log_every=2,
                  ckpt_every=2, eval_samples=10, sample_steps=2, progress=False, threads=1)
result = train(cfg)
torch.save({"model": result.model.state_dict(), "ema": result.ema.state_dict()},
           os.path.join(out, f"rank{os.environ['RANK']}.pt"))
"""


def test_two_cpu_processes_with_gloo_hold_identical_weights(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(script), str(tmp_path / "run")], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [torch.load(tmp_path / "run" / f"rank{i}.pt", weights_only=True) for i in range(2)]
    state = ckpt.load_checkpoint(ckpt.checkpoint_path(str(tmp_path / "run"), 4))
    assert state["config"]["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["cpu"], state["rng"][1]["cpu"])  # each rank draws its own noise
    init = ckpt.load_checkpoint(ckpt.checkpoint_path(str(tmp_path / "run"), 2))
    moved = 0
    for key in ("model", "ema"):
        for name, w0 in ranks[0][key].items():
            assert torch.equal(w0, ranks[1][key][name]), f"{key}.{name} differs between ranks"
            assert torch.equal(w0, state[key][name])  # and the checkpoint holds them
            moved += int(not torch.equal(w0, init[key][name]))
    assert moved > 0  # training did change the weights between the two checkpoints
