"""Sample from a checkpoint: PNG grid and ADM .npz (`mdt sample`).

The weights come from a training checkpoint (`--checkpoint`; its EMA weights unless `--weights model`)
or from a plain state dict such as the official MDTv2-XL/2 release (`--weights-file PATH --model NAME`;
input size, channels and classes are read off the weights unless given). `--num-per-class` pictures of
each class in `--classes` are sampled with DDPM, DDIM or DPM-Solver++ and MDT's classifier-free guidance,
latents are decoded with the VAE, and OUT.png (one row per class) and OUT.npz (ADM evaluator format) are written.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import torch

from .checkpoint import CheckpointError, load_checkpoint, load_file, load_latest
from .models import MODELS
from .sample import SAMPLERS, generate, save_grid, save_npz, to_uint8
from .train import build_model

STRIP_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers
NO_VAE = "none"
GRID_SIDE = 16  # the PNG shows at most 16 classes x 16 pictures (the .npz holds them all)


#################################################################################
#                                 Loading models                                #
#################################################################################

def unwrap_state_dict(obj, weights: str = "ema") -> dict:
    """The model state dict in a loaded weights file: plain or under "ema"/"model"/"state_dict" (`weights`
    picks when both EMA and raw weights are there), with DDP/compile key prefixes removed."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"expected a state dict, found a {type(obj).__name__}")
    order = ("ema", "model", "state_dict") if weights == "ema" else ("model", "ema", "state_dict")
    for key in order:
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"entry {k!r} of the weights is a {type(v).__name__}, not a tensor")
        for prefix in STRIP_PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix):]
        state[k] = v
    return state


def config_from_weights(state: dict, name: str, input_size=None, in_channels=None, num_classes=None) -> dict:
    """A model config read off a state dict (what is given explicitly wins)."""
    try:
        proj = state["x_embedder.proj.weight"]  # (D, C, p, p)
        grid = math.isqrt(state["pos_embed"].shape[1])  # pos_embed: (1, N, D), N = grid * grid
        rows = state["y_embedder.embedding_table.weight"].shape[0]  # num_classes (+ 1 null class for CFG)
        out = state["final_layer.linear.weight"].shape[0]  # p * p * C_out
    except KeyError as e:
        raise CheckpointError(f"the weights have no {e.args[0]!r}: not an MDTv2 or DiT state dict") from e
    in_channels = in_channels or proj.shape[1]
    num_classes = num_classes or rows - 1  # released models keep the null class
    return {"model": name, "input_size": input_size or grid * proj.shape[-1], "in_channels": in_channels,
            "num_classes": num_classes, "class_dropout_prob": 0.1 if rows > num_classes else 0.0,
            "learn_sigma": out == proj.shape[-1] ** 2 * 2 * in_channels, "mask_ratio": None}


def load_weights(model: torch.nn.Module, state: dict, what: str) -> None:
    """load_state_dict(strict=True), with a one-line CheckpointError naming what does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if keys]
        raise CheckpointError(f"{what} does not fit the model: " + "; ".join(parts))
    model.load_state_dict(state)


def load_model(checkpoint=None, weights_file=None, model_name=None, weights="ema", input_size=None,
               in_channels=None, num_classes=None, device="cpu") -> tuple[torch.nn.Module, dict]:
    """(model in eval mode on device, info) from a training checkpoint or a plain weights file.
    info: the model config plus "vae" and "latent_scale" (None: pixel space, unknown for weights files) and
    "source" (a short tag for file names)."""
    if (checkpoint is None) == (weights_file is None):
        raise ValueError("give either --checkpoint or --weights-file")
    if checkpoint is not None:
        if any(v is not None for v in (model_name, input_size, in_channels, num_classes)):
            raise ValueError("--model, --input-size, --in-channels and --num-classes apply to --weights-file only "
                             "(a training checkpoint records its model)")
        if os.path.isdir(checkpoint):  # a run folder: its newest readable checkpoint
            checkpoint, state = load_latest(checkpoint)
        else:
            state = load_checkpoint(checkpoint)
        config = state.get("config")
        if not isinstance(config, dict) or "model" not in config:
            raise CheckpointError(f"checkpoint {checkpoint!r} has no model config")
        if not isinstance(state.get(weights), dict):
            raise CheckpointError(f"checkpoint {checkpoint!r} has no {weights!r} weights"
                                  + ("; use --weights model" if weights == "ema" else ""))
        model = build_model(config)
        load_weights(model, unwrap_state_dict(state[weights]), f"the {weights} weights of {checkpoint!r}")
        info = {**config, "source": f"step{state.get('step', 0)}"}
    else:
        if model_name is None:
            raise ValueError("--weights-file needs --model (one of " + ", ".join(MODELS) + ")")
        if model_name not in MODELS:
            raise ValueError(f"unknown model {model_name!r}; choose one of {', '.join(MODELS)}")
        state = unwrap_state_dict(load_file(weights_file), weights)
        info = config_from_weights(state, model_name, input_size, in_channels, num_classes)
        model = build_model(info)
        load_weights(model, state, f"{weights_file!r}")
        info.update(vae=None, latent_scale=None,
                    source=os.path.splitext(os.path.basename(weights_file))[0])
    return model.to(device).eval(), info


#################################################################################
#                                    Sampling                                   #
#################################################################################

def parse_classes(tokens, num_classes: int) -> list[int]:
    """["all"] or class ids (separate or comma-separated) -> sorted ids, each checked to be < num_classes."""
    words = [w for t in tokens for w in str(t).replace(",", " ").split()]
    if words == ["all"]:
        return list(range(num_classes))
    try:
        ids = [int(w) for w in words]
    except ValueError as e:
        raise ValueError(f"--classes takes class ids or 'all', got {' '.join(words)!r}") from e
    bad = [i for i in ids if not 0 <= i < num_classes]
    if bad or not ids:
        raise ValueError(f"--classes: {bad or 'none given'} not in 0..{num_classes - 1}")
    return ids


def add_sampling_arguments(parser, num_per_class: int = 8):
    """The sampling options shared by `mdt sample` and `mdt eval --checkpoint`."""
    parser.add_argument("--weights", choices=("ema", "model"), default="ema",
                        help="which weights of a training checkpoint (or wrapped weights file) to use")
    parser.add_argument("--classes", nargs="+", default=["all"], help="class ids to sample, or 'all'")
    parser.add_argument("--num-per-class", type=int, default=num_per_class, help="pictures per class")
    parser.add_argument("--cfg-scale", type=float, default=1.0,
                        help="classifier-free guidance scale (1: none; MDT's FID setting: 3.8)")
    parser.add_argument("--scale-pow", type=float, default=None,
                        help="power of the guidance schedule; unset: the model's (MDTv2 4, DiT 0 = constant)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="ddpm",
                        help="ddpm (ancestral, MDT's FID setting), ddim (eta 0) or dpm++ (DPM-Solver++(2M), "
                             "about 25 steps)")
    parser.add_argument("--steps", type=int, default=250,
                        help="sampling steps = model evaluations (respaced from 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64, help="pictures per forward pass")
    parser.add_argument("--device", default=None, help="cuda or cpu; unset: cuda when available")


def sample_pictures(model, info: dict, args) -> tuple[np.ndarray, torch.Tensor]:
    """(pictures (n, H, W, C) uint8, labels (n,)): args.num_per_class of each of args.classes, class-major;
    latents are decoded with info["vae"] (None: the model samples pictures). Pictures are kept as uint8 only:
    50k ImageNet samples take 9.8 GB so, four times that as floats."""
    if args.num_per_class < 1 or args.batch_size < 1:
        raise ValueError("--num-per-class and --batch-size must be positive")
    classes = parse_classes(args.classes, info["num_classes"])
    check_guidance(model, info, args)
    labels = torch.tensor(classes).repeat_interleave(args.num_per_class)  # (n,)
    return render_pictures(model, info, args, labels, args.seed, progress=sys.stderr.isatty()), labels


def check_guidance(model, info: dict, args) -> None:
    if args.cfg_scale > 1 and model.y_embedder.embedding_table.num_embeddings <= info["num_classes"]:
        raise ValueError("this model was trained without class dropout (no null class): classifier-free guidance "
                         "needs one; use --cfg-scale 1")


def render_pictures(model, info: dict, args, labels: torch.Tensor, seed: int, progress: bool = False,
                    vae=None) -> np.ndarray:
    """(n, H, W, C) uint8 pictures of class `labels` sampled with `seed`; latents are decoded with `vae` or
    info["vae"] (None: the model samples pictures)."""
    latent = info.get("vae") is not None
    x = generate(model, labels, sampler=args.sampler, steps=args.steps, cfg_scale=args.cfg_scale,
                 scale_pow=args.scale_pow, clip_denoised=not latent, seed=seed, batch_size=args.batch_size,
                 progress=progress)  # (n, C, h, w) in model space
    if not latent:
        return to_uint8(x.clamp(-1, 1))
    from .latents import VAE_SCALE, decode_latents, load_vae

    vae = vae or load_vae(info["vae"], next(model.parameters()).device)
    scale = info.get("latent_scale") or VAE_SCALE
    return np.concatenate([to_uint8(decode_latents(vae, z, scale)) for z in x.split(args.batch_size)])


def save_samples(pictures: np.ndarray, labels: torch.Tensor, stem: str, per_class: int) -> tuple[str, str]:
    """STEM.npz (ADM format) and STEM.png: a grid of the first GRID_SIDE classes, up to GRID_SIDE pictures of
    each per row."""
    save_npz(pictures, labels, stem + ".npz")
    cols = min(per_class, GRID_SIDE)
    rows = torch.arange(min(len(pictures) // per_class, GRID_SIDE))
    pick = (rows[:, None] * per_class + torch.arange(cols)).flatten().numpy()
    grid = torch.from_numpy(pictures[pick]).permute(0, 3, 1, 2).float() / 127.5 - 1  # back to [-1, 1], exactly
    save_grid(grid, stem + ".png", nrow=cols)
    return stem + ".png", stem + ".npz"


def output_stem(out: str, tag: str) -> str:
    """`--out`: a folder (existing, or ending in a slash) gets <folder>/<tag>; anything else is the stem."""
    if out.endswith(("/", os.sep)) or os.path.isdir(out):
        return os.path.join(out, tag)
    root, ext = os.path.splitext(out)
    return root if ext in (".png", ".npz") else out


#################################################################################
#                                 Command line                                  #
#################################################################################

def add_model_arguments(parser):
    parser.add_argument("--checkpoint",
                        help="training checkpoint (ckpt_*.pt of `mdt train`, or its run folder: the newest)")
    parser.add_argument("--weights-file", help="plain state dict of an MDTv2/DiT (e.g. mdt_xl2_v2_ckpt.pt)")
    parser.add_argument("--model", help=f"model of --weights-file: {', '.join(MODELS)}")
    parser.add_argument("--input-size", type=int, help="--weights-file: model input side; unset: from the weights")
    parser.add_argument("--in-channels", type=int, help="--weights-file: input channels; unset: from the weights")
    parser.add_argument("--num-classes", type=int, help="--weights-file: classes; unset: from the weights")


def model_from_args(args, device):
    return load_model(args.checkpoint, args.weights_file, args.model, args.weights, args.input_size,
                      args.in_channels, args.num_classes, device)


def add_arguments(parser):
    add_model_arguments(parser)
    add_sampling_arguments(parser)
    parser.add_argument("--vae", default=None,
                        help="VAE to decode latents with, or 'none' for pixel models; unset: the checkpoint's, or "
                             "stabilityai/sd-vae-ft-ema (as MDT samples) for --weights-file")
    parser.add_argument("--latent-scale", type=float, default=None,
                        help="latent scale of a latent model; unset: the checkpoint's, else 0.18215")
    parser.add_argument("--out", default="samples/", help="output folder, or file stem for OUT.png and OUT.npz")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="sample this many pictures of random classes (of --classes) in shards of --batch-size "
                             "into OUT.shards/, resumable and split over torchrun processes, then merge them "
                             "into OUT.npz (instead of --num-per-class; see mdt.sample_shards)")


def resolve_vae(info: dict, vae_arg, checkpoint) -> str | None:
    """The VAE to decode with: --vae, else the checkpoint's (None: pixels), else MDT's sampling VAE."""
    from .latents import SAMPLE_VAE

    if vae_arg is None:
        return info.get("vae") if checkpoint is not None else SAMPLE_VAE
    if vae_arg.lower() == NO_VAE:
        return None
    if checkpoint is not None and info.get("vae") is None:
        raise ValueError(f"checkpoint {checkpoint!r} was trained on pixels ({info.get('data')}): --vae does not apply")
    return vae_arg


def sample_tag(info: dict, args) -> str:
    """The default file stem of a sampling run, e.g. MDTv2-XL-2_step400000_dpmpp25_cfg3.8_seed0."""
    cfg = f"_cfg{args.cfg_scale:g}" if args.cfg_scale > 1 else ""
    sampler = args.sampler.replace("+", "p")
    return f"{info['model'].replace('/', '-')}_{info['source']}_{sampler}{args.steps}{cfg}_seed{args.seed}"


def run(args):
    from .latents import default_device

    sharded = args.num_samples is not None
    if sharded:
        from .sample_shards import init_process_group, run_sharded

        device = init_process_group(args.device)
    else:
        device = torch.device(args.device or default_device())
    model, info = model_from_args(args, device)
    info["vae"] = resolve_vae(info, args.vae, args.checkpoint)
    if args.latent_scale is not None:
        info["latent_scale"] = args.latent_scale
    tag = sample_tag(info, args)
    if sharded:
        check_guidance(model, info, args)
        vae = None
        if info.get("vae") is not None:
            from .latents import load_vae

            vae = load_vae(info["vae"], device)
        png, npz = run_sharded(model, info, args, output_stem(args.out, tag),
                               lambda labels, seed: render_pictures(model, info, args, labels, seed, vae=vae))
        with np.load(npz) as f:
            n, h, w, c = f["arr_0"].shape
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    else:
        pictures, labels = sample_pictures(model, info, args)
        png, npz = save_samples(pictures, labels, output_stem(args.out, tag), args.num_per_class)
        n, h, w, c = pictures.shape
    if not sharded or int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {n} samples ({h}x{w}x{c}) of {info['model']} to {npz} and a grid of them to {png}")
    return 0
