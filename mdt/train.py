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
import contextlib
import copy
import dataclasses
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

import mdt_kernels as mk

from . import checkpoint as ckpt
from .data import TrainData, open_dataset
from .diffusion import MIN_SNR_GAMMA, create_diffusion
from .models import MODELS
from .optim import Adan

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
OPTIMIZERS = ("adan", "adamw")


@dataclass
class TrainConfig:
    model: str = "MDTv2-S/2"  # a name of mdt.models.MODELS
    data: str = "digits"  # "digits", a `mdt prepare-latents` folder, or an image folder (encoded per step)
    vae: str | None = None  # VAE for image folders (default stabilityai/sd-vae-ft-mse)
    image_size: int = 256  # image folders: center-crop size
    out: str = "runs/mdt"  # output folder: checkpoints/, metrics.jsonl, loss.png, samples.png, eval.json
    batch_size: int = 256  # global batch, split over the ranks
    steps: int = 400_000  # total optimizer steps (a resumed run counts from its checkpoint's step)
    optimizer: str = "adan"  # "adan" (MDT) or "adamw" (DiT)
    lr: float = 5e-4  # MDT's lr for S/2 (run.sh); constant, no warm-up
    betas: tuple = (0.98, 0.92, 0.99)  # Adan's (AdamW uses the first two)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # global-norm clipping (Adan's max_grad_norm)
    ema_decay: float = 0.9999
    class_dropout: float = 0.1  # labels dropped to the null class (classifier-free guidance)
    mask_ratio: float = 0.3  # MDTv2 masked pass
    min_snr_gamma: float | None = MIN_SNR_GAMMA  # MDTv2 loss weighting; DiT models use none
    fused: bool = True  # mdt_kernels' fused ops and the fused Adan step (False: the PyTorch reference)
    precision: str = "fp32"  # "fp32" or "bf16" (autocast; weights, optimizer and EMA stay fp32)
    compile: bool = False  # torch.compile the training objective
    seed: int = 0
    device: str = "auto"  # "auto": the rank's GPU when there is one, else CPU
    threads: int = 0  # CPU threads per rank (0: torch's default)
    log_every: int = 50
    ckpt_every: int = 1000
    keep_last: int = 0  # checkpoints kept (0: all)
    eval_every: int = 0  # digits: sample + evaluate the EMA model every N steps (0: only at the end)
    eval_samples: int = 500  # samples per evaluation (digits)
    sample_steps: int = 100  # DDPM steps for evaluation samples and the final grid
    cfg_scale: float = 1.5  # guidance for evaluation samples and the grid (<= 1: none)
    progress: bool = True

    def is_mdt(self) -> bool:
        return self.model.startswith("MDT")


#################################################################################
#                                 Building blocks                               #
#################################################################################

def build_model(config: dict) -> nn.Module:
    """The model a config describes: a checkpoint's "config" (the run's TrainConfig plus what the data set
    fixed: input_size, in_channels, num_classes, class_dropout_prob, learn_sigma), or such keys read off a
    published state dict (mdt.sample_cli)."""
    name = config["model"]
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    kwargs = {k: config[k] for k in ("input_size", "in_channels", "num_classes", "class_dropout_prob", "learn_sigma")
              if config.get(k) is not None}
    if name.startswith("MDT") and config.get("mask_ratio") is not None:
        kwargs["mask_ratio"] = config["mask_ratio"]
    return MODELS[name](**kwargs)


class Objective(nn.Module):
    """The training loss as one module (so DDP and torch.compile see one forward per step):
    MDTv2: full pass + masked pass (diffusion.mdt_training_losses); DiT: one pass. Returns per-sample terms."""

    def __init__(self, model, diffusion, masked: bool):
        super().__init__()
        self.model, self.diffusion, self.masked = model, diffusion, masked

    def forward(self, x, t, y):
        if self.masked:
            return self.diffusion.mdt_training_losses(self.model, x, t, {"y": y})
        return self.diffusion.training_losses(self.model, x, t, {"y": y})


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, one multi-tensor lerp over all parameters."""
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)


def autocast_context(precision: str, device: torch.device):
    """bf16: autocast (weights, optimizer state and EMA stay fp32); fp32: nothing."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def training_step(step_fn, model, ema, opt, x, y, num_timesteps: int, autocast, ema_decay: float):
    """One optimizer step as `mdt train` takes it (benchmarks/train_step.py times this same function):
    t ~ U{0..T-1} -> objective (both passes for MDTv2) -> backward -> optimizer -> EMA. Returns (terms, loss)."""
    t = torch.randint(0, num_timesteps, (x.shape[0],), device=x.device)
    with autocast:
        terms = step_fn(x, t, y)
    loss = terms["loss"].float().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    update_ema(ema, model, ema_decay)
    return terms, loss


def batch_indices(step: int, n: int, global_batch: int, seed: int) -> torch.Tensor:
    """The global batch of `step`: epochs are seeded permutations of the n examples (the last partial
    batch of each epoch is dropped), so a batch depends only on (seed, step)."""
    per_epoch = n // global_batch
    epoch, j = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[j * global_batch:(j + 1) * global_batch]


def make_optimizer(cfg: TrainConfig, params):
    if cfg.optimizer == "adan":
        return Adan(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                    max_grad_norm=cfg.max_grad_norm, fused=cfg.fused)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas[:2]), weight_decay=cfg.weight_decay)


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


#################################################################################
#                                    Distributed                                #
#################################################################################

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_arg: str) -> tuple[Dist, torch.device]:
    """Under torchrun (WORLD_SIZE > 1): one process group (NCCL on GPUs, gloo on CPU), one device per rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg == "auto":
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    if device_arg.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda requested but this torch has no usable GPU")
        device = torch.device("cuda", local_rank if world > 1 or ":" not in device_arg else int(device_arg[5:]))
        torch.cuda.set_device(device)
    elif device_arg == "cpu":
        device = torch.device("cpu")
    else:
        raise ValueError(f"unknown device {device_arg!r}; use auto, cpu, cuda or cuda:N")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    d = Dist(rank=dist.get_rank() if world > 1 else 0, world=world, local_rank=local_rank)
    return d, device


def _all_gather_objects(obj, d: Dist) -> list:
    if d.world == 1:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


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
        raise ValueError(f"unknown model {cfg.model!r}; choose one of {', '.join(MODELS)}")
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {cfg.precision!r}; choose one of {', '.join(PRECISIONS)}")
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if cfg.batch_size < 1 or cfg.batch_size % world:
        raise ValueError(f"batch size {cfg.batch_size} must be a positive multiple of the world size {world}")
    for name in ("steps", "log_every", "ckpt_every", "eval_samples", "sample_steps"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1), got {cfg.ema_decay}")
    if not 0.0 <= cfg.mask_ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {cfg.mask_ratio}")
    if not cfg.lr > 0:
        raise ValueError(f"learning rate must be > 0, got {cfg.lr}")


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
        raise ValueError(f"batch size {cfg.batch_size} is larger than the data set ({len(data)} examples)")
    if cfg.min_snr_gamma is not None and not cfg.is_mdt():
        cfg.min_snr_gamma = None  # DiT's loss has no weighting
    # The saved config: the run's options plus what the data set fixes (enough to rebuild the model and decode).
    config = {**dataclasses.asdict(cfg), "input_size": data.input_size, "in_channels": data.in_channels,
              "num_classes": data.num_classes, "class_dropout_prob": cfg.class_dropout, "learn_sigma": True,
              "vae": getattr(data, "vae_name", cfg.vae), "latent_scale": getattr(data, "scale", None),
              "data_description": data.description, "world_size": d.world}

    # Model, EMA and optimizer: identical on every rank (same seed); per-rank randomness starts afterwards.
    torch.manual_seed(cfg.seed)
    model = build_model(config).to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    diffusion = create_diffusion("", min_snr_gamma=cfg.min_snr_gamma)
    torch.manual_seed(cfg.seed * 1_000_003 + 1 + d.rank)
    if device.type == "cuda":
        torch.cuda.manual_seed(cfg.seed * 1_000_003 + 1 + d.rank)

    step, train_seconds = 0, 0.0  # train_seconds: time spent in training steps (no evaluation, no saving)
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step = int(state["step"])
        train_seconds = float(state.get("train_seconds", 0.0))
        rngs = state["rng"]
        if len(rngs) == d.world:
            _set_rng_state(rngs[d.rank], device)
        elif d.main:
            warnings.warn(f"the checkpoint was written by {len(rngs)} ranks, this run has {d.world}: random "
                          "draws are reseeded, so the run will not repeat the original one", stacklevel=2)
        del state

    objective = Objective(model, diffusion, masked=cfg.is_mdt()).to(device)
    if d.world > 1:
        ddp_kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
        objective = nn.parallel.DistributedDataParallel(objective, **ddp_kwargs)
    step_fn = torch.compile(objective) if cfg.compile else objective
    autocast = autocast_context(cfg.precision, device)
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
    model.train()
    with backend:
        while step < cfg.steps:
            idx = batch_indices(step, len(data), cfg.batch_size, cfg.seed)[d.rank * local_batch:][:local_batch]
            x, y = data.to_model_input(data.batch(idx), device)
            terms, loss = training_step(step_fn, model, ema, opt, x, y, diffusion.num_timesteps, autocast,
                                        cfg.ema_decay)
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
                    raise FloatingPointError(f"the training loss is {mean[0]} at step {step}; the last checkpoint "
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
        sums = _all_gather_objects(float(sum(p.double().sum() for p in model.parameters())), d)
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
    rngs = _all_gather_objects(_rng_state(device), d)
    if d.main:
        state = {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "rng": rngs,
                 "config": config, "train_seconds": train_seconds}
        ckpt.save_checkpoint(cfg.out, step, state, keep_last=cfg.keep_last)
    if d.world > 1:
        dist.barrier()


def _sample_labels(n: int, num_classes: int) -> torch.Tensor:
    return torch.arange(n) % num_classes


def _evaluate(ema, data: TrainData, cfg: TrainConfig, d: Dist, step: int, log, train_seconds: float) -> dict | None:
    """Digits only: class accuracy and Frechet distance of EMA samples (rank 0; others wait)."""
    result = None
    if d.main and cfg.data == "digits":
        from .metrics import digits_quality
        from .sample import generate

        labels = _sample_labels(cfg.eval_samples, data.num_classes)
        samples = generate(ema, labels, steps=cfg.sample_steps, cfg_scale=cfg.cfg_scale, clip_denoised=True,
                           seed=cfg.seed + 12345)
        result = digits_quality(samples, labels)
        result.update(cfg_scale=cfg.cfg_scale, sample_steps=cfg.sample_steps)
        log.write({"step": step, "train_seconds": train_seconds, "eval": result})
    if d.world > 1:
        dist.barrier()
    return result


def _finish(cfg, ema, data, d, step, log, train_seconds) -> dict | None:
    """Loss curve, sample grid and (digits) the quality of the final EMA model, in the run folder."""
    result = _evaluate(ema, data, cfg, d, step, log, train_seconds)
    if not d.main:
        return result
    from .sample import generate, save_grid

    plot_losses(log.read(), os.path.join(cfg.out, "loss.png"))
    per_class = 10
    labels = torch.arange(data.num_classes).repeat_interleave(per_class)[: 10 * per_class]
    pictures = generate(ema, labels, steps=cfg.sample_steps, cfg_scale=cfg.cfg_scale,
                        clip_denoised=cfg.data == "digits", seed=cfg.seed + 777)
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
    g.add_argument("--data", default=c.data, help="'digits', a `mdt prepare-latents` folder or an image folder")
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
    g.add_argument("--eval-every", type=int, default=c.eval_every, help="digits: evaluate the EMA every N steps")
    g.add_argument("--eval-samples", type=int, default=c.eval_samples)
    g.add_argument("--sample-steps", type=int, default=c.sample_steps)
    g.add_argument("--cfg-scale", type=float, default=c.cfg_scale)
    g.add_argument("--progress", action=flag, default=c.progress)


def config_from_args(args) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: getattr(args, k) for k in names if hasattr(args, k)}
    values["betas"] = tuple(values["betas"])
    if len(values["betas"]) not in (2, 3):
        raise ValueError(f"--betas takes 2 (AdamW) or 3 (Adan) values, got {len(values['betas'])}")
    if values["optimizer"] == "adan" and len(values["betas"]) != 3:
        raise ValueError("Adan needs 3 --betas values")
    return TrainConfig(**values)


def run(args) -> int:
    cfg = config_from_args(args)
    if args.resume == "auto":
        args.resume = "latest" if ckpt.list_checkpoints(cfg.out) else None
    if args.resume is None and ckpt.list_checkpoints(cfg.out):
        raise ValueError(f"{cfg.out!r} already holds checkpoints: pass --resume to continue that run, or choose "
                         "another --out")
    train(cfg, resume=args.resume)
    return 0
