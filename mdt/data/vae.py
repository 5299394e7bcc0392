"""The frozen VAE of latent diffusion (diffusers' AutoencoderKL): loading it, latent shapes, decoding.

MDT trains on latents of the SD VAE scaled by VAE_SCALE and decodes samples with the EMA-finetuned one.
"""

from __future__ import annotations

import os

import torch

from ..errors import MissingInputError, MissingPackageError, UsageError

VAE_SCALE = 0.18215  # MDT/DiT latent scale for the SD VAE (MDT uses it whatever the VAE's config says)
NO_VAE = "none"  # --vae none: an image folder trained on in pixel space, or samples written as they are
DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"  # MDT's training encoder
SAMPLE_VAE = "stabilityai/sd-vae-ft-ema"  # MDT's default decoder for samples (scripts/image_sample.py)


def load_vae(name_or_path: str = DEFAULT_VAE, device="cpu"):
    """A diffusers AutoencoderKL (a local folder or a Hugging Face hub name), in eval mode, frozen, fp32."""
    try:
        from diffusers import AutoencoderKL
    except ImportError as e:
        raise MissingPackageError("VAE latents need diffusers: pip install diffusers (or pip install "
                          "'mdt-kernels[latents]')") from e
    # a hub name is "org/name"; anything else, or an "org" that is a local folder, is meant as a local path
    looks_local = (name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") != 1
                   or os.path.isdir(name_or_path.split("/")[0]))
    if looks_local and not os.path.isdir(os.path.expanduser(name_or_path)):
        raise MissingInputError(f"VAE folder {name_or_path!r} does not exist")
    try:
        vae = AutoencoderKL.from_pretrained(os.path.expanduser(name_or_path), low_cpu_mem_usage=False)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MissingInputError(f"cannot load the VAE {name_or_path!r}: not a diffusers AutoencoderKL folder, "
                                f"and loading it from the hub failed ({first})") from e
    return vae.to(device).eval().requires_grad_(False)


def vae_name(vae) -> str | None:
    """What load_vae was given for `vae` (a hub name, or a folder as an absolute path)."""
    name = vae if isinstance(vae, str) else getattr(vae.config, "_name_or_path", None)
    return os.path.abspath(name) if name and os.path.isdir(name) else name


def latent_size(vae, image_size: int) -> tuple[int, int]:
    """(channels, side) of the latent of an image_size x image_size picture."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)  # one 2x downsampling per encoder block but the last
    if image_size % factor:
        raise UsageError(f"image size {image_size} is not a multiple of the VAE's downsampling factor {factor}")
    return vae.config.latent_channels, image_size // factor


@torch.no_grad()
def decode_latents(vae, z: torch.Tensor, scale: float = VAE_SCALE, batch_size: int = 32) -> torch.Tensor:
    """Scaled latents (n, C, h, w) -> pictures (n, 3, H, W) in [-1, 1] (float32, on z's device)."""
    dev = next(vae.parameters()).device
    out = [vae.decode(zb.to(dev, torch.float32) / scale).sample.clamp(-1, 1).to(z.device)
           for zb in z.split(batch_size)]
    return torch.cat(out)
