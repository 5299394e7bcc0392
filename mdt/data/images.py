"""Image folders (ImageNet layout: one sub-folder per class): scanning, ADM/DiT center-crop loading, and
`ImageFolderData`, the training set that encodes its images with the VAE on every step (MDT's own pipeline)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..errors import InputError, MissingInputError, NotAFolderError
from ..utils import default_device
from .base import TrainData
from .vae import DEFAULT_VAE, NO_VAE, VAE_SCALE, decode_latents, latent_size, load_vae, vae_name

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")


def center_crop_arr(pil_image, image_size: int) -> np.ndarray:
    """ADM/DiT preprocessing: halve with a box filter while the short side is >= 2 * image_size, resize
    (bicubic) so the short side is image_size, then cut the centre square. -> (image_size, image_size, 3) uint8."""
    from PIL import Image

    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(s // 2 for s in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(s * scale) for s in pil_image.size), resample=Image.BICUBIC)
    arr = np.asarray(pil_image)
    top, left = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return arr[top:top + image_size, left:left + image_size]


def load_image(path: str, image_size: int) -> torch.Tensor:
    """An image file -> (3, image_size, image_size) float32 in [-1, 1], center-cropped."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = center_crop_arr(im.convert("RGB"), image_size)
    except OSError as e:  # unreadable or truncated file
        raise InputError(f"cannot read image {path!r} ({e})") from e
    return torch.from_numpy(arr.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def scan_image_folder(image_dir: str) -> tuple[list[str], list[int], list[str]]:
    """(files relative to image_dir, label of each, class names) of an ImageNet-layout folder: one sub-folder
    per class (label = index in the sorted names), images anywhere below it."""
    if not os.path.exists(image_dir):
        raise MissingInputError(f"image folder {image_dir!r} does not exist")
    if not os.path.isdir(image_dir):
        raise NotAFolderError(f"image folder {image_dir!r} is not a folder")
    classes = sorted(e.name for e in os.scandir(image_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise InputError(f"image folder {image_dir!r} has no class sub-folders (expected one folder per class "
                         "holding its images, as in ImageNet's train/)")
    files, labels, empty = [], [], []
    for label, name in enumerate(classes):
        found = []
        for root, dirs, names in os.walk(os.path.join(image_dir, name)):
            dirs.sort()
            found += [os.path.join(root, f) for f in sorted(names) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            empty.append(name)
        files += [os.path.relpath(f, image_dir) for f in found]
        labels += [label] * len(found)
    if empty:
        raise InputError(f"image folder {image_dir!r}: class folder(s) without images: {', '.join(empty[:5])}"
                         + (" ..." if len(empty) > 5 else ""))
    return files, labels, classes


class ImageFolderData(TrainData):
    """An ImageNet-layout image folder (one sub-folder per class) read on the fly and encoded every step with
    the VAE (MDT's own pipeline): `batch` loads center-cropped images, `to_model_input` flips (p = 0.5),
    encodes and samples. With vae "none" the model trains on the pictures themselves (small images)."""

    def __init__(self, path: str, vae=DEFAULT_VAE, image_size: int = 256, device=None, workers: int = 4):
        self.path, self.image_size = path, image_size
        self.files, labels, self.classes = scan_image_folder(path)
        self.labels = torch.tensor(labels, dtype=torch.int64)
        vae = vae or DEFAULT_VAE
        if isinstance(vae, str) and vae.lower() == NO_VAE:
            self._vae, self.vae_name, self.scale = None, None, None
            self.in_channels, self.input_size = 3, image_size
            space = "pixels"
        else:
            self._vae = load_vae(vae, device or default_device()) if isinstance(vae, str) else vae
            self.vae_name, self.scale = vae_name(self._vae), VAE_SCALE
            self.in_channels, self.input_size = latent_size(self._vae, image_size)
            space = f"encoded every step with VAE {self.vae_name}"
        self.num_classes = len(self.classes)
        self.workers = workers
        self._pool = None
        self.description = (f"{len(self.files)} images ({image_size}px, {self.num_classes} classes) in {path}, "
                            f"{space}")

    def __len__(self):
        return len(self.files)

    def _load(self, i):
        return load_image(os.path.join(self.path, self.files[i]), self.image_size)

    def batch(self, indices):
        if self._pool is None and self.workers > 1:  # PIL decodes and resizes without holding the GIL
            self._pool = ThreadPoolExecutor(self.workers)
        idx = indices.tolist()
        images = list(self._pool.map(self._load, idx)) if self._pool else [self._load(i) for i in idx]
        return {"image": torch.stack(images), "y": self.labels[indices]}  # (B, 3, S, S) in [-1, 1]

    @torch.no_grad()
    def to_model_input(self, batch, device):
        x = batch["image"].to(device, non_blocking=True)
        flip = torch.rand(x.shape[0], device=device) < 0.5  # (B,)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        if self._vae is None:
            return x, batch["y"].to(device, non_blocking=True)
        posterior = self._vae.to(device).encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn_like(posterior.mean)  # (B, C, h, w)
        return z * self.scale, batch["y"].to(device, non_blocking=True)

    def decode(self, x):
        return x if self._vae is None else decode_latents(self._vae.to(x.device), x, self.scale)
