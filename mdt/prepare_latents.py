"""Encode an image folder into VAE latents for training (`mdt prepare-latents`).

MDT runs the frozen SD-VAE encoder on every training step and trains on a posterior *sample* of the
(randomly flipped) image. Encoding once ahead of time keeps that recipe exactly: for every image and its
horizontal flip we store the posterior mean and standard deviation (not a sample), and training draws the
flip and the sample fresh each step (`LatentFolder.to_model_input`).

A latent folder holds (n = images, C, h, w = latent channels and size, axis 1: [image, flipped image]):
    mean.npy    float16 (n, 2, C, h, w)   posterior means
    std.npy     float16 (n, 2, C, h, w)   posterior standard deviations
    labels.npy  int64   (n,)              class ids (index into meta["classes"])
    files.txt                             the source image of each row, relative to the image folder
    meta.json                             written last: a folder without it is an unfinished run
Latents are stored unscaled; the model sees (mean + std * eps) * meta["scale"] (MDT's 0.18215).
"""

from __future__ import annotations

import os

from .data.latents import prepare_latents
from .data.vae import DEFAULT_VAE
from .errors import UsageError


def add_arguments(parser):
    parser.add_argument("image_dir", help="ImageNet-layout folder: one sub-folder of images per class")
    parser.add_argument("out_dir", help="folder to write the latents to (created)")
    parser.add_argument("--vae", default=DEFAULT_VAE, help="diffusers AutoencoderKL: hub name or local folder")
    parser.add_argument("--image-size", type=int, default=256, help="center-crop size of the images")
    parser.add_argument("--batch-size", type=int, default=32, help="images per VAE call (each is encoded twice)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="image decoding processes (0: in the main process)")
    parser.add_argument("--device", default=None, help="cuda or cpu; unset: cuda when available")
    parser.add_argument("--overwrite", action="store_true", help="replace latents already in OUT_DIR")


def run(args):
    if args.image_size < 1 or args.batch_size < 1:
        raise UsageError("--image-size and --batch-size must be positive")
    meta = prepare_latents(args.image_dir, args.out_dir, vae=args.vae, image_size=args.image_size,
                           batch_size=args.batch_size, device=args.device, num_workers=max(0, args.workers),
                           overwrite=args.overwrite)
    c, h, w = meta["latent_shape"]
    print(f"wrote latents of {meta['count']} images ({len(meta['classes'])} classes, {c}x{h}x{w}, and their "
          f"flips) to {args.out_dir}")
    return 0
