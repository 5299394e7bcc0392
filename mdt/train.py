"""Train MDTv2 (or DiT) with the fused kernels (`mdt train`), on one CPU, one GPU or many (torchrun).

Defaults follow MDT: Adan (lr 5e-4, betas 0.98/0.92/0.99, grad clip 1.0, no weight decay), EMA 0.9999,
class dropout 0.1, mask ratio 0.3, and MDTv2's loss (a full and a masked pass, min-SNR-5 weighted MSE + VB,
one backward). DiT models train with DiT's single pass and no loss weighting.

One step: batch -> model input on the device -> t ~ U{0..999} -> loss (both passes) -> backward -> Adan ->
EMA. Every checkpoint holds model, EMA, optimizer, step, the RNG states of every rank and the config;
batches are a pure function of (seed, step); so `--resume` after a crash continues exactly where an
uninterrupted run would be.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

import mdt_kernels as mk

from . import checkpoint as ckpt
from .data import TrainData, open_dataset
from .errors import NonFiniteError, UsageError
from .metrics import JUDGES, sample_quality
from .models import MODELS
from .train_step import OPTIMIZERS, PRECISIONS, TrainConfig, build_train_step, model_config, rng_state
from .utils import Dist, all_gather_objects, init_distributed

#################################################################################
#                                      Data                                     #
#################################################################################

def batch_indices(step: int, n: int, global_batch: int, seed: int) -> torch.Tensor:
    """The global batch of `step`: epochs are seeded permutations of the n examples (the last partial
    batch of each epoch is dropped), so a batch depends only on (seed, step)."""
    per_epoch = n // global_batch
    epoch, j = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[j * global_batch:(j + 1) * global_batch]


#################################################################################
#                                     Output                                    #
#################################################################################

class MetricsLog:
    """metrics.jsonl in the run folder: one JSON object per line, each with "step"."""

    def __init__(self, out_dir: str, resume_step: int | None):
        self.path = os.path.join(out_dir, "metrics.jsonl")
        if resume_step is not None and os.path.exists(self.path):
            # Lines of steps after the checkpoint were written by the interrupted run and are redone now.
            with open(self.path) as f:
                kept = [line for line in f if line.strip() and _json_step(line) <= resume_step]
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(kept)
            os.replace(tmp, self.path)
        elif resume_step is None and os.path.exists(self.path):
            os.remove(self.path)

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]


def _json_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # an unreadable (half-written) line is dropped


def plot_losses(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in records if "loss" in r]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [r["step"] for r in rows]
    for key, label in (("loss", "total"), ("loss_full", "full pass"), ("loss_masked", "masked pass")):
        if key in rows[0]:
            ax.plot(steps, [r[key] for r in rows], label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean over log interval)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


#################################################################################
#                                  Training loop                                #
#################################################################################

@dataclass
class TrainResult:
    model: nn.Module
    ema: nn.Module
    step: int
    config: TrainConfig
    eval: dict | None = None


def validate(cfg: TrainConfig, world: int) -> None:
    if cfg.model not in MODELS:
        raise UsageError(f"unknown model {cfg.model!r}; choose one of {', '.join(MODELS)}")
    if cfg.precision not in PRECISIONS:
        raise UsageError(f"unknown precision {cfg.precision!r}; choose one of {', '.join(PRECISIONS)}")
    if cfg.optimizer not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {cfg.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if cfg.batch_size < 1 or cfg.batch_size % world:
        raise UsageError(f"batch size {cfg.batch_size} must be a positive multiple of the world size {world}")
    for name in ("steps", "log_every", "ckpt_every", "eval_samples", "sample_steps"):
        if getattr(cfg, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise UsageError(f"EMA decay must be in [0, 1), got {cfg.ema_decay}")
    if not 0.0 <= cfg.mask_ratio < 1.0:
        raise UsageError(f"mask ratio must be in [0, 1), got {cfg.mask_ratio}")
    if not cfg.lr > 0:
        raise UsageError(f"learning rate must be > 0, got {cfg.lr}")
    if not all(0.0 <= b < 1.0 for b in cfg.betas):
        raise UsageError(f"--betas must be in [0, 1), got {' '.join(map(str, cfg.betas))}")
    if not cfg.weight_decay >= 0 or not cfg.max_grad_norm >= 0:
        raise UsageError(f"--weight-decay and --max-grad-norm must be >= 0, got {cfg.weight_decay} and "
                         f"{cfg.max_grad_norm}")


def train(cfg: TrainConfig, resume: str | None = None) -> TrainResult:
    """Runs (or, with resume = "latest" / a path, continues) a training run; see the module docstring."""
    validate(cfg, int(os.environ.get("WORLD_SIZE", "1")))  # before any process group exists
    d, device = init_distributed(cfg.device)
    try:
        return _train(cfg, resume, d, device)
    finally:
        if d.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, resume: str | None, d: Dist, device: torch.device) -> TrainResult:
    state = None
    if resume is not None:
        path, state = ckpt.resolve_resume(resume, cfg.out)
        saved = dict(state["config"])
        cfg = dataclasses.replace(cfg, **{k: v for k, v in saved.items() if k in _IDENTITY_FIELDS})
        if d.main:
            print(f"resuming from {path} (step {state['step']})", file=sys.stderr)
    validate(cfg, d.world)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    data = open_dataset(cfg.data, vae=cfg.vae, image_size=cfg.image_size, device=device)
    if len(data) < cfg.batch_size:
        raise UsageError(f"batch size {cfg.batch_size} is larger than the data set ({len(data)} examples)")
    # The saved config: the run's options plus what the data set fixes (enough to rebuild the model and decode).
    config = {**model_config(cfg, data.input_size, data.in_channels, data.num_classes),
              "vae": getattr(data, "vae_name", cfg.vae), "latent_scale": getattr(data, "scale", None),
              "data_description": data.description, "world_size": d.world}

    step, train_seconds = 0, 0.0  # train_seconds: time spent in training steps (no evaluation, no saving)
    if state is not None:
        step = int(state["step"])
        train_seconds = float(state.get("train_seconds", 0.0))
    ts = build_train_step(cfg, config, device, d, state)
    del state
    model, ema, opt = ts.model, ts.ema, ts.opt
    backend = mk.use_backend("auto" if cfg.fused else "reference")
    log = MetricsLog(cfg.out, step if resume is not None else None) if d.main else None
    if d.main:
        os.makedirs(cfg.out, exist_ok=True)
        with open(os.path.join(cfg.out, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
    n_params = sum(p.numel() for p in model.parameters())
    if d.main:
        print(f"{cfg.model} ({n_params / 1e6:.2f}M parameters) on {data.description}; {d.world} x {device.type}, "
              f"global batch {cfg.batch_size}, {'fused' if cfg.fused else 'reference'} ops, {cfg.precision}"
              f"{', compiled' if cfg.compile else ''}; steps {step} -> {cfg.steps}; output {cfg.out}", file=sys.stderr)

    local_batch = cfg.batch_size // d.world
    sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss, loss_full, loss_masked since the last log
    n_sum, t_log, eval_result = 0, time.perf_counter(), None
    bar = _progress(cfg, step, d)
    with backend:
        while step < cfg.steps:
            idx = batch_indices(step, len(data), cfg.batch_size, cfg.seed)[d.rank * local_batch:][:local_batch]
            x, y = data.to_model_input(data.batch(idx), device)
            terms, loss = ts(x, y)
            step += 1
            with torch.no_grad():
                full = (terms["loss"] - terms["m_loss"] if "m_loss" in terms else terms["loss"]).float().mean()
                sums += torch.stack([loss.detach(), full, loss.detach() - full]).double()
            n_sum += 1

            if step % cfg.log_every == 0 or step == cfg.steps:
                if d.world > 1:
                    dist.all_reduce(sums)
                    sums /= d.world
                mean = (sums / n_sum).tolist()  # the one host sync per log interval
                now = time.perf_counter()
                train_seconds += now - t_log
                record = {"step": step, "loss": mean[0], "steps_per_s": n_sum / (now - t_log),
                          "lr": opt.param_groups[0]["lr"], "train_seconds": train_seconds, "time": time.time()}
                if cfg.is_mdt():
                    record.update(loss_full=mean[1], loss_masked=mean[2])
                if not math.isfinite(mean[0]):
                    raise NonFiniteError(f"the training loss is {mean[0]} at step {step}; the last checkpoint "
                                             f"in {ckpt.checkpoint_dir(cfg.out)} is intact (resume from it with a "
                                             "lower --lr)")
                if d.main:
                    log.write(record)
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean[0]:.4f}", it_s=f"{record['steps_per_s']:.1f}")
                sums.zero_()
                n_sum, t_log = 0, now
            if bar is not None:
                bar.update(1)

            t_aside = time.perf_counter()  # evaluation and checkpoint time is left out of steps/s
            elapsed = train_seconds + (t_aside - t_log)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                eval_result = _evaluate(ema, data, cfg, d, step, log, elapsed)
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                _save(cfg, config, step, model, ema, opt, d, device, elapsed)
            t_log += time.perf_counter() - t_aside

    if bar is not None:
        bar.close()
    if d.world > 1:  # every rank holds the same weights: DDP averaged the same gradients into the same state
        sums = all_gather_objects(float(sum(p.double().sum() for p in model.parameters())), d)
        if len(set(sums)) != 1:
            raise RuntimeError(f"ranks hold different weights after training (checksums {sums})")
    with backend:
        eval_result = _finish(cfg, ema, data, d, step, log, train_seconds)
    return TrainResult(model=model, ema=ema, step=step, config=cfg, eval=eval_result)


# Fields that define a run: on --resume they come from the checkpoint (the command line may change the rest,
# e.g. --steps to train longer, or the logging and checkpoint intervals).
_IDENTITY_FIELDS = ("model", "data", "vae", "image_size", "batch_size", "optimizer", "lr", "betas", "weight_decay",
                    "max_grad_norm", "ema_decay", "class_dropout", "mask_ratio", "min_snr_gamma", "seed", "precision",
                    "fused")


def _progress(cfg, step, d):
    if not (cfg.progress and d.main):
        return None
    from tqdm.auto import tqdm

    tty = sys.stderr.isatty()
    return tqdm(total=cfg.steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
                mininterval=0.5 if tty else 30.0, file=sys.stderr)


def _save(cfg, config, step, model, ema, opt, d, device, train_seconds):
    rngs = all_gather_objects(rng_state(device), d)
    if d.main:
        state = {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "rng": rngs,
                 "config": config, "train_seconds": train_seconds}
        ckpt.save_checkpoint(cfg.out, step, state, keep_last=cfg.keep_last)
    if d.world > 1:
        dist.barrier()


def _sample_labels(n: int, num_classes: int) -> torch.Tensor:
    return torch.arange(n) % num_classes


def _evaluate(ema, data: TrainData, cfg: TrainConfig, d: Dist, step: int, log, train_seconds: float) -> dict | None:
    """Built-in sets (digits, mnist): class accuracy and Frechet distance of EMA samples (rank 0; others wait)."""
    result = None
    if d.main and cfg.data in JUDGES:
        from .sample import generate

        labels = _sample_labels(cfg.eval_samples, data.num_classes)
        samples = generate(ema, labels, steps=cfg.sample_steps, cfg_scale=cfg.cfg_scale, clip_denoised=True,
                           seed=cfg.seed + 12345)
        result = sample_quality(cfg.data, samples, labels)
        result.update(cfg_scale=cfg.cfg_scale, sample_steps=cfg.sample_steps)
        log.write({"step": step, "train_seconds": train_seconds, "eval": result})
    if d.world > 1:
        dist.barrier()
    return result


def _finish(cfg, ema, data, d, step, log, train_seconds) -> dict | None:
    """Loss curve, sample grid and (built-in sets) the quality of the final EMA model, in the run folder."""
    result = _evaluate(ema, data, cfg, d, step, log, train_seconds)
    if not d.main:
        return result
    from .sample import generate, save_grid

    plot_losses(log.read(), os.path.join(cfg.out, "loss.png"))
    per_class = 10
    labels = torch.arange(data.num_classes).repeat_interleave(per_class)[: 10 * per_class]
    pictures = generate(ema, labels, steps=cfg.sample_steps, cfg_scale=cfg.cfg_scale,
                        clip_denoised=cfg.data in JUDGES, seed=cfg.seed + 777)
    save_grid(data.decode(pictures), os.path.join(cfg.out, "samples.png"), nrow=per_class)
    if result is not None:
        with open(os.path.join(cfg.out, "eval.json"), "w") as f:
            json.dump({"step": step, **result}, f, indent=2)
        print(f"step {step}: EMA samples classified as their class {100 * result['accuracy']:.1f}% of the time, "
              f"Frechet distance {result['frechet']:.2f} ({result['n']} samples, cfg {cfg.cfg_scale}); "
              f"grid: {os.path.join(cfg.out, 'samples.png')}", file=sys.stderr)
    return result


#################################################################################
#                                  Command line                                 #
#################################################################################

def add_arguments(p) -> None:
    c, flag = TrainConfig(), argparse.BooleanOptionalAction
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=c.model, help="model name (mdt.models.MODELS, e.g. MDTv2-Ti/2, DiT-S/2)")
    g.add_argument("--data", default=c.data,
                   help="'digits' (8x8), 'mnist' (32x32), a `mdt prepare-latents` folder or an image folder")
    g.add_argument("--vae", default=c.vae, help="VAE for image folders (diffusers name or path)")
    g.add_argument("--image-size", type=int, default=c.image_size)
    g.add_argument("--mask-ratio", type=float, default=c.mask_ratio)
    g.add_argument("--class-dropout", type=float, default=c.class_dropout)
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=c.batch_size, help="global batch (split over ranks)")
    g.add_argument("--steps", type=int, default=c.steps)
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=c.optimizer)
    g.add_argument("--lr", type=float, default=c.lr)
    g.add_argument("--betas", type=float, nargs="+", default=list(c.betas))
    g.add_argument("--weight-decay", type=float, default=c.weight_decay)
    g.add_argument("--max-grad-norm", type=float, default=c.max_grad_norm)
    g.add_argument("--ema-decay", type=float, default=c.ema_decay)
    g.add_argument("--min-snr-gamma", type=float, default=c.min_snr_gamma, help="MDTv2 loss weighting (DiT: none)")
    g = p.add_argument_group("speed")
    g.add_argument("--fused", action=flag, default=c.fused, help="fused kernels (--no-fused: reference)")
    g.add_argument("--precision", choices=list(PRECISIONS), default=c.precision)
    g.add_argument("--compile", action=flag, default=c.compile, help="torch.compile the training step")
    g.add_argument("--device", default=c.device)
    g.add_argument("--threads", type=int, default=c.threads, help="CPU threads per rank (0: torch default)")
    g = p.add_argument_group("run")
    g.add_argument("--out", default=c.out, help="output folder")
    g.add_argument("--seed", type=int, default=c.seed)
    g.add_argument("--resume", nargs="?", const="latest", default=None, metavar="latest|auto|PATH",
                   help="continue from the newest usable checkpoint in --out (or from this file or run folder); "
                   "'auto': resume when --out holds checkpoints, else start a new run")
    g.add_argument("--log-every", type=int, default=c.log_every)
    g.add_argument("--ckpt-every", type=int, default=c.ckpt_every)
    g.add_argument("--keep-last", type=int, default=c.keep_last, help="checkpoints to keep (0: all)")
    g.add_argument("--eval-every", type=int, default=c.eval_every, help="digits, mnist: evaluate the EMA every N steps")
    g.add_argument("--eval-samples", type=int, default=c.eval_samples)
    g.add_argument("--sample-steps", type=int, default=c.sample_steps)
    g.add_argument("--cfg-scale", type=float, default=c.cfg_scale)
    g.add_argument("--progress", action=flag, default=c.progress)


def config_from_args(args) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: getattr(args, k) for k in names if hasattr(args, k)}
    values["betas"] = tuple(values["betas"])
    if len(values["betas"]) not in (2, 3):
        raise UsageError(f"--betas takes 2 (AdamW) or 3 (Adan) values, got {len(values['betas'])}")
    if values["optimizer"] == "adan" and len(values["betas"]) != 3:
        raise UsageError("Adan needs 3 --betas values")
    return TrainConfig(**values)


def run(args) -> int:
    cfg = config_from_args(args)
    if args.resume == "auto":
        args.resume = "latest" if ckpt.list_checkpoints(cfg.out) else None
    if args.resume is None and ckpt.list_checkpoints(cfg.out):
        raise UsageError(f"{cfg.out!r} already holds checkpoints: pass --resume to continue that run, or choose "
                         "another --out")
    train(cfg, resume=args.resume)
    return 0
