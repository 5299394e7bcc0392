"""Sample from a checkpoint: PNG grid and ADM .npz (`mdt sample`; `--config RECIPE`: a paper's FID protocol).

The weights come from a training checkpoint (`--checkpoint`; its EMA weights unless `--weights model`)
or from a plain state dict such as the official MDTv2-XL/2 release (`--weights-file PATH --model NAME`;
input size, channels and classes are read off the weights unless given). `--num-per-class` pictures of
each class in `--classes` are sampled with DDPM, DDIM or DPM-Solver++ and MDT's classifier-free guidance,
latents are decoded with the VAE, and OUT.png (one row per class) and OUT.npz (ADM evaluator format) are written.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

from .checkpoint import load_model
from .data.vae import NO_VAE, SAMPLE_VAE, VAE_SCALE, decode_latents, load_vae
from .errors import UsageError
from .models import MODELS
from .sample import SAMPLERS, generate, parse_classes, save_grid, save_npz, to_uint8
from .train_step import PRECISIONS, autocast_context
from .utils import default_device

GRID_SIDE = 16  # the PNG shows at most 16 classes x 16 pictures (the .npz holds them all)


#################################################################################
#                                    Sampling                                   #
#################################################################################

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
    parser.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32",
                        help="bf16: the model runs under bf16 autocast (the VAE decodes in fp32)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model's forward")
    parser.add_argument("--device", default=None, help="cuda or cpu; unset: cuda when available")


def sample_pictures(model, info: dict, args) -> tuple[np.ndarray, torch.Tensor]:
    """(pictures (n, H, W, C) uint8, labels (n,) or None for an unconditional model): args.num_per_class of each
    of args.classes, class-major;
    latents are decoded with info["vae"] (None: the model samples pictures). Pictures are kept as uint8 only:
    50k ImageNet samples take 9.8 GB so, four times that as floats."""
    if args.num_per_class < 1 or args.batch_size < 1:
        raise UsageError("--num-per-class and --batch-size must be positive")
    classes = parse_classes(args.classes, info["num_classes"])
    check_guidance(model, info, args)
    labels = torch.tensor(classes).repeat_interleave(args.num_per_class)  # (n,)
    pictures = render_pictures(model, info, args, labels, args.seed, progress=sys.stderr.isatty())
    return pictures, labels if info["num_classes"] else None


def check_guidance(model, info: dict, args) -> None:
    if args.cfg_scale > 1 and model.y_embedder is None:
        raise UsageError("this model is unconditional: classifier-free guidance does not apply; use --cfg-scale 1")
    if args.cfg_scale > 1 and model.y_embedder.embedding_table.num_embeddings <= info["num_classes"]:
        raise UsageError("this model was trained without class dropout (no null class): classifier-free guidance "
                         "needs one; use --cfg-scale 1")


def render_pictures(model, info: dict, args, labels: torch.Tensor, seed: int, progress: bool = False,
                    vae=None) -> np.ndarray:
    """(n, H, W, C) uint8 pictures of class `labels` sampled with `seed`; latents are decoded with `vae` or
    info["vae"] (None: the model samples pictures)."""
    latent = info.get("vae") is not None
    device = next(model.parameters()).device
    with autocast_context(getattr(args, "precision", "fp32"), device):
        x = generate(compiled(model) if getattr(args, "compile", False) else model, labels, sampler=args.sampler,
                     steps=args.steps, cfg_scale=args.cfg_scale, scale_pow=args.scale_pow, clip_denoised=not latent,
                     seed=seed, batch_size=args.batch_size, progress=progress)  # (n, C, h, w) in model space
    x = x.float()
    if not latent:
        return to_uint8(x.clamp(-1, 1))
    vae = vae or load_vae(info["vae"], next(model.parameters()).device)
    scale = info.get("latent_scale") or VAE_SCALE
    return np.concatenate([to_uint8(decode_latents(vae, z, scale)) for z in x.split(args.batch_size)])


def compiled(model: torch.nn.Module) -> torch.nn.Module:
    """The model with its forward compiled once (forward_with_cfg calls it): batch sizes are fixed by
    --batch-size, so shapes are static, except a last smaller batch (one recompilation)."""
    if not getattr(model, "_mdt_compiled", False):
        model.forward = torch.compile(model.forward, dynamic=False)
        model._mdt_compiled = True
    return model


def save_samples(pictures: np.ndarray, labels: torch.Tensor | None, stem: str, per_class: int) -> tuple[str, str]:
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


RECIPE_TABLE = "sample"  # the table of a recipe that holds this command's options (the paper's FID protocol)


def add_arguments(parser):
    parser.add_argument("--config", metavar="RECIPE",
                        help="a recipe (TOML file, or a shipped one: mdtv2-xl2, dit-xl2, ...; 'list'): its [sample] "
                             "values (the published FID protocol) become the defaults, flags override them")
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
    if vae_arg is None:
        return info.get("vae") if checkpoint is not None else SAMPLE_VAE
    if vae_arg.lower() == NO_VAE:
        return None
    if checkpoint is not None and info.get("vae") is None:
        raise UsageError(f"checkpoint {checkpoint!r} was trained on pixels ({info.get('data')}): --vae does not apply")
    return vae_arg


def sample_tag(info: dict, args) -> str:
    """The default file stem of a sampling run, e.g. MDTv2-XL-2_step400000_dpmpp25_cfg3.8_seed0."""
    cfg = f"_cfg{args.cfg_scale:g}" if args.cfg_scale > 1 else ""
    sampler = args.sampler.replace("+", "p")
    precision = "" if args.precision == "fp32" else f"_{args.precision}"
    return f"{info['model'].replace('/', '-')}_{info['source']}_{sampler}{args.steps}{cfg}{precision}_seed{args.seed}"


def run(args):
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
