"""The evaluation hooks of `mdt train`: the EMA model's sample quality every --eval-every steps on the built-in
sets (class accuracy and Frechet distance in a classifier's feature space, mdt.metrics), and what a finished
run leaves in its folder (loss.png, samples.png, eval.json)."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

from .data import TrainData
from .metrics import JUDGES, sample_quality
from .sample import generate, save_grid
from .train_log import MetricsLog, plot_losses
from .train_step import TrainConfig
from .utils import Dist

GRID_PER_CLASS = 10  # samples.png: 10 classes x 10 samples (an unconditional model: 100 samples)


def guidance(cfg: TrainConfig, ema) -> float | None:
    """The guidance scale of evaluation samples: none for an unconditional model."""
    return cfg.cfg_scale if ema.y_embedder is not None else None


def evaluate(ema, data: TrainData, cfg: TrainConfig, d: Dist, step: int, log: MetricsLog | None,
             train_seconds: float) -> dict | None:
    """Built-in sets (digits, mnist): class accuracy and Frechet distance of EMA samples (rank 0; others wait)."""
    result = None
    if d.main and cfg.data in JUDGES:
        labels = torch.arange(cfg.eval_samples) % max(data.num_classes, 1)
        samples = generate(ema, labels, sampler=cfg.sampler, steps=cfg.sample_steps, cfg_scale=guidance(cfg, ema),
                           clip_denoised=True, seed=cfg.seed + 12345)
        result = sample_quality(cfg.data, samples, labels if ema.y_embedder is not None else None)
        result.update(cfg_scale=guidance(cfg, ema), sampler=cfg.sampler, sample_steps=cfg.sample_steps)
        log.write({"step": step, "train_seconds": train_seconds, "eval": result})
    if d.world > 1:
        dist.barrier()
    return result


def finish(cfg: TrainConfig, ema, data: TrainData, d: Dist, step: int, log: MetricsLog | None,
           train_seconds: float) -> dict | None:
    """Loss curve, sample grid and (built-in sets) the quality of the final EMA model, in the run folder."""
    result = evaluate(ema, data, cfg, d, step, log, train_seconds)
    if not d.main:
        return result
    plot_losses(log.read(), os.path.join(cfg.out, "loss.png"))
    conditional = ema.y_embedder is not None
    classes = min(data.num_classes, 10) if conditional else 1
    per_row = GRID_PER_CLASS if conditional else 10
    labels = torch.arange(classes).repeat_interleave(GRID_PER_CLASS * (1 if conditional else 10))
    pictures = generate(ema, labels, sampler=cfg.sampler, steps=cfg.sample_steps, cfg_scale=guidance(cfg, ema),
                        clip_denoised=getattr(data, "vae_name", None) is None, seed=cfg.seed + 777)  # pixels: clip
    save_grid(data.decode(pictures), os.path.join(cfg.out, "samples.png"), nrow=per_row)
    if result is not None:
        with open(os.path.join(cfg.out, "eval.json"), "w") as f:
            json.dump({"step": step, **result}, f, indent=2)
        acc = "" if result["accuracy"] is None else \
            f"EMA samples classified as their class {100 * result['accuracy']:.1f}% of the time, "
        print(f"step {step}: {acc}Frechet distance {result['frechet']:.2f} ({result['n']} samples, "
              f"{cfg.sampler} {cfg.sample_steps} steps, cfg {guidance(cfg, ema)}); grid: "
              f"{os.path.join(cfg.out, 'samples.png')}", file=sys.stderr)
    return result
