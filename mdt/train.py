"""Train MDTv2 (or DiT) with the fused kernels (`mdt train`), on one CPU, one GPU or many (torchrun, one node or
several): the training loop.

Defaults follow MDT: Adan (lr 5e-4, betas 0.98/0.92/0.99, grad clip 1.0, no weight decay), EMA 0.9999,
class dropout 0.1, mask ratio 0.3, and MDTv2's loss (a full and a masked pass, min-SNR-5 weighted MSE + VB,
one backward). DiT models train with DiT's single pass and no loss weighting. Recipes of the published runs:
mdt/recipes/ (`mdt train --config NAME`).

One step (mdt.train_step): batch -> random draws -> micro-batches (--grad-accum) -> backward -> the step
judged on the device (non-finite: skipped and counted) -> optimizer -> EMA. Every checkpoint holds model,
EMA, optimizer, step, the RNG states of every rank and the config; batches are a pure function of (seed,
step); so `--resume` after a crash, a kill or a stop signal (mdt.preempt) continues exactly where an
uninterrupted run would be. Module map: train_step.py (the step), train_log.py (metrics, TensorBoard,
plots), train_eval.py (evaluation hooks), train_cli.py (the command line), preempt.py (stop signals).
"""

from __future__ import annotations

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
from .data import open_dataset
from .errors import NonFiniteError, UsageError
from .models import MODELS
from .preempt import StopRequests
from .train_eval import evaluate, finish
from .train_log import MetricsLog, progress_bar
from .train_step import OPTIMIZERS, PRECISIONS, SAMPLERS, TrainConfig, build_train_step, model_config, rng_state
from .utils import Dist, all_gather_objects, init_distributed

__all__ = ["TrainConfig", "TrainResult", "batch_indices", "train", "validate"]

# Fields that define a run: on --resume they come from the checkpoint (the command line may change the rest,
# e.g. --steps to train longer, --grad-accum for fewer devices, the logging and checkpoint intervals).
IDENTITY_FIELDS = ("model", "data", "vae", "image_size", "num_classes", "decode_layer", "batch_size", "optimizer",
                   "lr", "betas", "weight_decay", "max_grad_norm", "ema_decay", "class_dropout", "mask_ratio",
                   "min_snr_gamma", "seed", "precision", "fused")


def batch_indices(step: int, n: int, global_batch: int, seed: int) -> torch.Tensor:
    """The global batch of `step`: epochs are seeded permutations of the n examples (the last partial
    batch of each epoch is dropped), so a batch depends only on (seed, step)."""
    per_epoch = n // global_batch
    epoch, j = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[j * global_batch:(j + 1) * global_batch]


@dataclass
class TrainResult:
    model: nn.Module
    ema: nn.Module
    step: int
    config: TrainConfig
    eval: dict | None = None
    stopped_by: str | None = None  # the stop signal that ended the run early (mdt.preempt), else None


def validate(cfg: TrainConfig, world: int) -> None:
    """One-line UsageErrors for settings that cannot work (before any process group or model exists)."""
    if cfg.model not in MODELS:
        raise UsageError(f"unknown model {cfg.model!r}; choose one of {', '.join(MODELS)}")
    for name, value, known in (("precision", cfg.precision, PRECISIONS), ("optimizer", cfg.optimizer, OPTIMIZERS),
                               ("sampler", cfg.sampler, SAMPLERS)):
        if value not in known:
            raise UsageError(f"unknown {name} {value!r}; choose one of {', '.join(known)}")
    if cfg.batch_size < 1 or cfg.batch_size % world:
        raise UsageError(f"batch size {cfg.batch_size} must be a positive multiple of the world size {world}")
    if cfg.grad_accum < 1 or (cfg.batch_size // world) % cfg.grad_accum:
        raise UsageError(f"--grad-accum {cfg.grad_accum} must divide each rank's batch of "
                         f"{cfg.batch_size // world} (global batch {cfg.batch_size} over {world} ranks)")
    for name in ("steps", "log_every", "ckpt_every", "eval_samples", "sample_steps", "max_bad_steps"):
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
    if cfg.num_classes is not None and cfg.num_classes < 0:
        raise UsageError(f"--num-classes must be >= 0 (0: unconditional), got {cfg.num_classes}")
    if cfg.decode_layer is not None and not cfg.is_mdt():
        raise UsageError("--decode-layer sets an MDTv2 decoder's depth; DiT models have none")


def train(cfg: TrainConfig, resume: str | None = None) -> TrainResult:
    """Runs (or, with resume = "latest" / a path, continues) a training run; see the module docstring."""
    validate(cfg, int(os.environ.get("WORLD_SIZE", "1")))  # before any process group exists
    d, device = init_distributed(cfg.device)
    try:
        return Trainer(cfg, resume, d, device).run()
    finally:
        if d.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def resolve_config(cfg: TrainConfig, state: dict | None) -> TrainConfig:
    """The run's config: on resume, the identity fields come from the checkpoint."""
    if state is None:
        return cfg
    saved = dict(state["config"])
    return dataclasses.replace(cfg, **{k: saved[k] for k in IDENTITY_FIELDS if k in saved})


class Trainer:
    """One run of `mdt train`: its data, step, logs and the loop (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, resume: str | None, d: Dist, device: torch.device):
        state = None
        if resume is not None:
            path, state = ckpt.resolve_resume(resume, cfg.out)
            if d.main:
                print(f"resuming from {path} (step {state['step']})", file=sys.stderr)
        self.cfg = cfg = resolve_config(cfg, state)
        validate(cfg, d.world)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.d, self.device = d, device
        self.data = open_dataset(cfg.data, vae=cfg.vae, image_size=cfg.image_size, device=device)
        if len(self.data) < cfg.batch_size:
            raise UsageError(f"batch size {cfg.batch_size} is larger than the data set ({len(self.data)} examples)")
        data = self.data
        if cfg.num_classes is None:  # the data set's classes
            self.cfg = cfg = dataclasses.replace(cfg, num_classes=data.num_classes)
        # The saved config: the run's options plus what the data set fixes (enough to rebuild the model, decode).
        self.config = {**model_config(cfg, data.input_size, data.in_channels, data.num_classes),
                       "vae": getattr(data, "vae_name", cfg.vae), "latent_scale": getattr(data, "scale", None),
                       "data_description": data.description, "world_size": d.world}
        self.step = int(state["step"]) if state is not None else 0
        self.saved_step = self.step if state is not None else None
        self.train_seconds = float(state.get("train_seconds", 0.0)) if state is not None else 0.0
        self.ts = build_train_step(cfg, self.config, device, d, state)
        del state
        self.log = MetricsLog(cfg.out, self.step if resume is not None else None, cfg.tensorboard) if d.main \
            else None
        self.sums = torch.zeros(5, device=device, dtype=torch.float64)  # see _accumulate
        self.skipped_at_log = 0

    def announce(self) -> None:
        cfg, d = self.cfg, self.d
        if not d.main:
            return
        os.makedirs(cfg.out, exist_ok=True)
        with open(os.path.join(cfg.out, "config.json"), "w") as f:
            json.dump(self.config, f, indent=2)
        n_params = sum(p.numel() for p in self.ts.model.parameters())
        micro = f" in {cfg.grad_accum} micro-batches" if cfg.grad_accum > 1 else ""
        print(f"{cfg.model} ({n_params / 1e6:.2f}M parameters) on {self.data.description}; {d.world} x "
              f"{self.device.type}, global batch {cfg.batch_size}{micro}, {'fused' if cfg.fused else 'reference'} "
              f"ops, {cfg.precision}{', compiled' if cfg.compile else ''}"
              f"{', gradient checkpointing' if cfg.grad_checkpoint else ''}; steps {self.step} -> {cfg.steps}; "
              f"output {cfg.out}", file=sys.stderr)

    def run(self) -> TrainResult:
        cfg, d = self.cfg, self.d
        self.announce()
        stopped_by = None
        with mk.use_backend("auto" if cfg.fused else "reference"), StopRequests(d.world) as stop:
            bar = progress_bar(cfg.steps, self.step, cfg.progress and d.main)
            n_log, t_log = 0, time.perf_counter()
            while self.step < cfg.steps:
                self.one_step()
                n_log += 1
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    t_log = self.write_log(n_log, t_log, bar)
                    n_log = 0
                if bar is not None:
                    bar.update(1)
                t_aside = time.perf_counter()  # evaluation and checkpoint time is left out of steps/s
                elapsed = self.train_seconds + (t_aside - t_log)
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                    evaluate(self.ts.ema, self.data, cfg, d, self.step, self.log, elapsed)
                if stop.should_stop():
                    stopped_by = stop.signal
                    self.stop_early(n_log, t_log, elapsed, stopped_by)
                    break
                if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                    self.save(elapsed)
                t_log += time.perf_counter() - t_aside
            if bar is not None:
                bar.close()
            result = None
            if stopped_by is None:
                self.check_ranks_agree()
                result = finish(cfg, self.ts.ema, self.data, d, self.step, self.log, self.train_seconds)
        if self.log is not None:
            self.log.close()
        return TrainResult(model=self.ts.model, ema=self.ts.ema, step=self.step, config=cfg, eval=result,
                           stopped_by=stopped_by)

    def one_step(self) -> None:
        cfg, d, data = self.cfg, self.d, self.data
        local = cfg.batch_size // d.world
        idx = batch_indices(self.step, len(data), cfg.batch_size, cfg.seed)[d.rank * local:][:local]
        x, y = data.to_model_input(data.batch(idx), self.device)
        terms, loss = self.ts(x, y, step=self.step + 1)
        self.step += 1
        self._accumulate(terms, loss)

    @torch.no_grad()
    def _accumulate(self, terms: dict, loss: torch.Tensor) -> None:
        """Sums over the log interval, on the device, of the good steps' losses (total, full pass, masked pass)
        and gradient norms, and the number of good steps: a skipped step adds nothing."""
        good = torch.isfinite(loss) & torch.isfinite(self.ts.grad_norm)
        full = (terms["loss"] - terms["m_loss"] if "m_loss" in terms else terms["loss"]).float().mean()
        values = torch.stack([loss, full, loss - full, self.ts.grad_norm.float().to(loss.device),
                              torch.ones_like(loss)]).double()
        self.sums += torch.where(good, values, torch.zeros_like(values))

    def write_log(self, n_log: int, t_log: float, bar) -> float:
        """One metrics record for the steps since the last one (the one host sync of a log interval); stops
        the run when --max-bad-steps non-finite steps came in a row. Returns the time it was written."""
        cfg, d = self.cfg, self.d
        if d.world > 1:
            dist.all_reduce(self.sums)  # sums over the ranks' good steps, and their count
        s = self.sums.tolist()
        health = self.ts.health
        skipped_total, stop_at = int(health.total), int(health.stop_at)
        if stop_at >= 0:
            raise NonFiniteError(
                f"{cfg.max_bad_steps} steps in a row had a non-finite loss or gradient (skipped), the last at step "
                f"{stop_at}; stopped. The last checkpoint in {ckpt.checkpoint_dir(cfg.out)} is intact: resume from "
                "it with a lower --lr, or --precision fp32")
        now = time.perf_counter()
        self.train_seconds += now - t_log
        mean = [v / s[4] if s[4] else math.nan for v in s[:4]]
        record = {"step": self.step, "loss": mean[0], "grad_norm": mean[3], "steps_per_s": n_log / (now - t_log),
                  "lr": self.ts.opt.param_groups[0]["lr"], "skipped_steps": skipped_total - self.skipped_at_log,
                  "skipped_total": skipped_total, "train_seconds": self.train_seconds, "time": time.time()}
        if cfg.is_mdt():
            record.update(loss_full=mean[1], loss_masked=mean[2])
        self.skipped_at_log = skipped_total
        if d.main:
            self.log.write(record)
            if bar is not None:
                bar.set_postfix(loss=f"{mean[0]:.4f}", it_s=f"{record['steps_per_s']:.1f}", skipped=skipped_total)
        self.sums.zero_()
        return now

    def save(self, train_seconds: float) -> None:
        """One checkpoint of every rank's state (rank 0 writes it); never of weights that are not finite."""
        cfg, d, ts = self.cfg, self.d, self.ts
        if not all(bool(torch.isfinite(p).all()) for p in ts.model.parameters()):
            raise NonFiniteError(f"the weights hold inf or NaN at step {self.step}; not saved. The last checkpoint "
                                 f"in {ckpt.checkpoint_dir(cfg.out)} is intact")
        rngs = all_gather_objects(rng_state(self.device), d)
        if d.main:
            state = {"model": ts.model.state_dict(), "ema": ts.ema.state_dict(), "opt": ts.opt.state_dict(),
                     "rng": rngs, "config": self.config, "train_seconds": train_seconds}
            ckpt.save_checkpoint(cfg.out, self.step, state, keep_last=cfg.keep_last)
        if d.world > 1:
            dist.barrier()
        self.saved_step = self.step

    def stop_early(self, n_log: int, t_log: float, elapsed: float, signal_name: str) -> None:
        """A stop was requested: log the steps since the last record, write one checkpoint of this step."""
        if n_log:
            self.write_log(n_log, t_log, None)
        if self.saved_step != self.step:
            self.save(elapsed)
        if self.d.main:
            path = ckpt.checkpoint_path(self.cfg.out, self.step)
            print(f"stopped by {signal_name} after step {self.step}; checkpoint {path}; continue with --resume auto",
                  file=sys.stderr)

    def check_ranks_agree(self) -> None:
        """Every rank holds the same weights: DDP averaged the same gradients into the same state."""
        if self.d.world > 1:
            sums = all_gather_objects(float(sum(p.double().sum() for p in self.ts.model.parameters())), self.d)
            if len(set(sums)) != 1:
                raise RuntimeError(f"ranks hold different weights after training (checksums {sums})")
