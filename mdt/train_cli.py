"""Train MDTv2 (or DiT) with the fused kernels: `mdt train`, on one CPU, one GPU or many (torchrun).

Settings come from a recipe (--config NAME or FILE: mdt/recipes/, `--config list`), overridden by flags; the
resolved config is printed at the start (--print-config: only that), and stored in every checkpoint. Stop
signals (SIGTERM, SIGUSR1, a first Ctrl-C) end the run after the current step with a checkpoint and exit status
75; `--resume auto` continues it exactly. See mdt.train for the loop.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from . import checkpoint as ckpt
from .errors import UsageError
from .preempt import EXIT_PREEMPTED
from .recipes import to_toml
from .train import train
from .train_step import OPTIMIZERS, PRECISIONS, SAMPLERS, TrainConfig

RECIPE_TABLE = "train"  # the table of a recipe that holds this command's options


def add_arguments(p) -> None:
    c, flag = TrainConfig(), argparse.BooleanOptionalAction
    p.add_argument("--config", metavar="RECIPE",
                   help="a recipe (TOML file, or a shipped one: mdtv2-s2, mdtv2-b2, mdtv2-xl2, dit-xl2; 'list'): its "
                        "[train] values become the defaults, flags override them")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as TOML and exit")
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=c.model, help="model name (mdt.models.MODELS, e.g. MDTv2-Ti/2, DiT-S/2)")
    g.add_argument("--data", default=c.data,
                   help="'digits' (8x8), 'mnist' (32x32), a `mdt prepare-latents` folder or an image folder")
    g.add_argument("--vae", default=c.vae, help="VAE for image folders (diffusers name or path; 'none': pixels)")
    g.add_argument("--image-size", type=int, default=c.image_size)
    g.add_argument("--num-classes", type=int, default=c.num_classes,
                   help="0: unconditional (labels ignored, no guidance); unset: the data set's classes")
    g.add_argument("--decode-layer", type=int, default=c.decode_layer,
                   help="MDTv2 decoder blocks; unset: the model's published depth")
    g.add_argument("--mask-ratio", type=float, default=c.mask_ratio)
    g.add_argument("--class-dropout", type=float, default=c.class_dropout)
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=c.batch_size, help="global batch (split over ranks)")
    g.add_argument("--grad-accum", type=int, default=c.grad_accum,
                   help="micro-batches per step on each rank: the global batch on fewer devices (same update)")
    g.add_argument("--steps", type=int, default=c.steps)
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=c.optimizer)
    g.add_argument("--lr", type=float, default=c.lr)
    g.add_argument("--betas", type=float, nargs="+", default=list(c.betas))
    g.add_argument("--weight-decay", type=float, default=c.weight_decay)
    g.add_argument("--max-grad-norm", type=float, default=c.max_grad_norm, help="global-norm clipping (0: none)")
    g.add_argument("--ema-decay", type=float, default=c.ema_decay)
    g.add_argument("--min-snr-gamma", type=float, default=c.min_snr_gamma, help="MDTv2 loss weighting (DiT: none)")
    g.add_argument("--max-bad-steps", type=int, default=c.max_bad_steps,
                   help="non-finite steps in a row (each skipped) that stop the run")
    g = p.add_argument_group("speed and memory")
    g.add_argument("--fused", action=flag, default=c.fused, help="fused kernels (--no-fused: reference)")
    g.add_argument("--precision", choices=list(PRECISIONS), default=c.precision)
    g.add_argument("--compile", action=flag, default=c.compile, help="torch.compile the training step")
    g.add_argument("--grad-checkpoint", action=flag, default=c.grad_checkpoint,
                   help="recompute each transformer block in the backward: less memory, about one more forward")
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
    g.add_argument("--tensorboard", action=flag, default=c.tensorboard,
                   help="also write the metrics as TensorBoard scalars (OUT/tensorboard)")
    g.add_argument("--eval-every", type=int, default=c.eval_every,
                   help="digits, mnist: evaluate the EMA every N steps")
    g.add_argument("--eval-samples", type=int, default=c.eval_samples)
    g.add_argument("--sampler", choices=SAMPLERS, default=c.sampler, help="sampler of evaluations and the grid")
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
    text = to_toml("train", dataclasses.asdict(cfg))
    if args.print_config:
        print(text, end="")
        return 0
    if args.resume == "auto":
        args.resume = "latest" if ckpt.list_checkpoints(cfg.out) else None
    if args.resume is None and ckpt.list_checkpoints(cfg.out):
        raise UsageError(f"{cfg.out!r} already holds checkpoints: pass --resume to continue that run, or choose "
                         "another --out")
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"config{' (' + args.config + ')' if args.config else ''}:\n{text}", file=sys.stderr, end="")
    result = train(cfg, resume=args.resume)
    return EXIT_PREEMPTED if result.stopped_by is not None else 0
