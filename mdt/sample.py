"""Sampling: class-conditional generation with classifier-free guidance, DDPM, DDIM or DPM-Solver++(2M),
and the files it writes and reads (a PNG grid and an .npz in the ADM evaluation format)."""

from __future__ import annotations

import functools
import math
import os
import zipfile
import zlib

import numpy as np
import torch

from .diffusion import create_diffusion
from .diffusion.dpm_solver import dpm_solver_pp_sample_loop
from .errors import InputError, MissingInputError, UsageError

SAMPLERS = ("ddpm", "ddim", "dpm++")  # each takes one model evaluation per step


@torch.no_grad()
def generate(model, labels: torch.Tensor, *, sampler: str = "ddpm", steps: int = 250, cfg_scale: float | None = None,
             scale_pow: float | None = None, clip_denoised: bool = False, seed: int = 0, batch_size: int = 256,
             progress: bool = False) -> torch.Tensor:
    """Samples x_0 (n, C, H, W) in model space for class `labels` (n,), in eval mode, with its own seeded
    generator state (the caller's global RNG state is left as it was).

    cfg_scale: None or <= 1 samples without guidance; otherwise MDT's guided batch [cond; uncond] with the
    power-cosine scale schedule (scale_pow: None = the model's default)."""
    if sampler not in SAMPLERS:
        raise UsageError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
    if steps < 1:
        raise UsageError(f"sampling steps must be >= 1, got {steps}")
    device = next(model.parameters()).device
    diffusion = create_diffusion(("ddim" if sampler == "ddim" else "") + str(steps), learn_sigma=model.learn_sigma)
    guided = cfg_scale is not None and cfg_scale > 1.0
    if guided and model.y_embedder is None:
        raise UsageError("this model is unconditional: classifier-free guidance does not apply (use a cfg scale of 1)")
    side = model.x_embedder.grid_size * model.patch_size
    shape = (model.in_channels, side, side)
    was_training = model.training
    model.eval()
    out = []
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for y in labels.to(device).split(batch_size):
            z = torch.randn(len(y), *shape, device=device)
            if guided:
                null = torch.full_like(y, model.y_embedder.num_classes)
                kwargs = {"y": torch.cat([y, null]), "cfg_scale": cfg_scale, "scale_pow": scale_pow}
                fn, z = model.forward_with_cfg, torch.cat([z, z])
            else:
                kwargs, fn = {"y": y}, model.forward
            loop = {"ddpm": diffusion.p_sample_loop, "ddim": diffusion.ddim_sample_loop,
                    "dpm++": functools.partial(dpm_solver_pp_sample_loop, diffusion)}[sampler]
            x = loop(fn, z.shape, noise=z, clip_denoised=clip_denoised, model_kwargs=kwargs, progress=progress)
            out.append(x[: len(y)].float())
    model.train(was_training)
    return torch.cat(out)


def to_uint8(pictures: torch.Tensor) -> np.ndarray:
    """(n, C, H, W) in [-1, 1] -> (n, H, W, C) uint8, rounded as ADM/DiT do."""
    return ((pictures.float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def save_grid(pictures: torch.Tensor, path: str, nrow: int | None = None, min_cell: int = 64) -> str:
    """A PNG grid of pictures (n, 1 or 3, H, W) in [-1, 1], nrow per row; tiny pictures are enlarged (nearest
    neighbour) to at least `min_cell` pixels so they can be looked at."""
    from PIL import Image

    arr = to_uint8(pictures)
    n, h, w, c = arr.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    pad = 2
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = arr[i]
    image = Image.fromarray(grid[..., 0] if c == 1 else grid)
    factor = max(1, math.ceil(min_cell / max(h, w)))
    if factor > 1:
        image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image.save(path)
    return path


def save_npz(pictures: torch.Tensor, labels: torch.Tensor | None, path: str) -> str:
    """The ADM evaluation format: arr_0 (n, H, W, C) uint8 pictures, arr_1 (n,) int64 class labels (none for
    an unconditional model's samples). pictures: (n, C, H, W) in [-1, 1], or an (n, H, W, C) uint8 array
    already converted by to_uint8."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    arr = pictures if isinstance(pictures, np.ndarray) and pictures.dtype == np.uint8 else to_uint8(pictures)
    if labels is None:
        np.savez(path, arr)
    else:
        np.savez(path, arr, labels.cpu().numpy().astype(np.int64))
    return path


# numpy reads a file that is neither a zip nor an .npy as a pickle, and an object array as pickled data; with
# allow_pickle=False it refuses both with advice to load the file unsafely (allow_pickle=True), which would run
# whatever code the file holds. open_npz and npz_array say what is wrong in their own words instead.
_NPZ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)


def open_npz(path: str, what: str = "samples file"):
    """np.load(path, allow_pickle=False) of an .npz (a context manager), with a one-line InputError naming the
    file when it is not an .npz; `what` names the file's role in the message."""
    try:
        f = np.load(path, allow_pickle=False)
    except _NPZ_ERRORS as e:
        raise InputError(f"{what} {path!r} is not an .npz file (the zip of .npy arrays that np.savez writes)") from e
    if not isinstance(f, np.lib.npyio.NpzFile):  # an .npy: a single array, not named ones
        raise InputError(f"{what} {path!r} is a single .npy array, not an .npz file (the zip of .npy arrays that "
                         "np.savez writes)")
    return f


def npz_array(f, name: str, path: str) -> np.ndarray:
    """Array `name` of an .npz opened by open_npz, with a one-line InputError when it cannot be read."""
    try:
        return f[name]
    except _NPZ_ERRORS as e:
        problem = "holds Python objects, not numbers" if "pickle" in str(e) else "is truncated or corrupt"
        raise InputError(f"{path!r}: array {name} {problem}") from e


def read_samples(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(arr_0 pictures, arr_1 labels or None) of an ADM-format .npz, with one-line errors for other files."""
    if not os.path.isfile(path):
        raise MissingInputError(f"samples file {path!r} does not exist")
    with open_npz(path) as f:
        if "arr_0" not in f.files:
            raise InputError(f"{path!r} has no arr_0 (arrays: {', '.join(f.files) or 'none'}); expected the "
                             "ADM format written by `mdt sample`")
        pictures = npz_array(f, "arr_0", path)
        labels = npz_array(f, "arr_1", path) if "arr_1" in f.files else None
    if pictures.dtype != np.uint8 or pictures.ndim != 4 or pictures.shape[-1] not in (1, 3):
        raise InputError(f"{path!r}: arr_0 is {pictures.dtype} of shape {pictures.shape}; expected uint8 pictures "
                         "(n, H, W, 3), or (n, S, S, 1) single-channel digits")
    if labels is not None and labels.shape != (len(pictures),):
        raise InputError(f"{path!r}: arr_1 has shape {labels.shape}, expected one label per picture "
                         f"({len(pictures)},)")
    return pictures, labels


def parse_classes(tokens, num_classes: int) -> list[int]:
    """["all"] or class ids (separate or comma-separated) -> sorted ids, each checked to be < num_classes.
    An unconditional model (num_classes 0) has one "class", 0, which it ignores."""
    words = [w for t in tokens for w in str(t).replace(",", " ").split()]
    if num_classes == 0:
        if words != ["all"]:
            raise UsageError("--classes: this model is unconditional (it has no classes)")
        return [0]
    if words == ["all"]:
        return list(range(num_classes))
    try:
        ids = [int(w) for w in words]
    except ValueError as e:
        raise UsageError(f"--classes takes class ids or 'all', got {' '.join(words)!r}") from e
    bad = [i for i in ids if not 0 <= i < num_classes]
    if bad or not ids:
        raise UsageError(f"--classes: {bad or 'none given'} not in 0..{num_classes - 1}")
    return ids
