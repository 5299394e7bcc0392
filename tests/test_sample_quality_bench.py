"""benchmarks.sample_quality end to end on an untrained digits checkpoint (the digits metric faked)."""

import json

import torch

from benchmarks import sample_quality
from mdt.checkpoint import save_checkpoint
from mdt.models import MODELS

CONFIG = {"model": "MDTv2-Ti/2", "data": "digits", "in_channels": 1, "input_size": 8, "num_classes": 10,
          "class_dropout_prob": 0.1, "mask_ratio": 0.3, "vae": None, "latent_scale": None}


def test_writes_a_table_json_and_plot(tmp_path, monkeypatch):
    model = MODELS["MDTv2-Ti/2"](**{k: CONFIG[k] for k in ("in_channels", "input_size", "num_classes",
                                                            "class_dropout_prob", "mask_ratio")})
    state = model.state_dict()
    ckpt = save_checkpoint(str(tmp_path / "run"), 1, {"model": state, "ema": state, "opt": {}, "rng": {},
                                                      "config": CONFIG})
    seen = []

    def fake_quality(x, labels):
        seen.append(tuple(x.shape))
        return {"frechet": float(x.abs().mean()) + 1, "accuracy": 0.5, "n": len(x)}
    monkeypatch.setattr(sample_quality, "digits_quality", fake_quality)
    out = str(tmp_path / "sq")
    sample_quality.main(["--checkpoint", ckpt, "--steps", "2", "4", "--samples", "10", "--skip", "ddim:4",
                         "--out", out])
    rows = json.load(open(out + ".json"))["rows"]
    assert [(r["sampler"], r["steps"]) for r in rows] == [("ddpm", 2), ("ddpm", 4), ("ddim", 2), ("dpm++", 2),
                                                           ("dpm++", 4)]
    assert seen == [(10, 1, 8, 8)] * 5
    table = open(out + ".md").read()
    assert "not run" in table and "Against 4-step DDPM" in table
    assert (tmp_path / "sq.png").stat().st_size > 0
    assert torch.isfinite(torch.tensor([r["frechet"] for r in rows])).all()
