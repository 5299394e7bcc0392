"""Latent folders: `prepare_latents` writes one (`mdt prepare-latents`), `LatentFolder` trains from one.

The files of a folder and why it stores posterior means and standard deviations: mdt.prepare_latents
(what `mdt prepare-latents --help` shows).
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from ..errors import InputError, MissingInputError, UsageError
from ..utils import default_device
from .base import TrainData
from .images import load_image, scan_image_folder
from .vae import DEFAULT_VAE, VAE_SCALE, decode_latents, latent_size, load_vae, vae_name

FORMAT = "mdt-kernels/latents"
VERSION = 1
ARRAYS = ("mean.npy", "std.npy", "labels.npy")


#################################################################################
#                                prepare-latents                                #
#################################################################################

class _ImageFiles(torch.utils.data.Dataset):
    def __init__(self, image_dir, files, image_size):
        self.image_dir, self.files, self.image_size = image_dir, files, image_size

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        return load_image(os.path.join(self.image_dir, self.files[i]), self.image_size)


def _write_json(obj, path):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@torch.no_grad()
def prepare_latents(image_dir: str, out_dir: str, vae=DEFAULT_VAE, image_size: int = 256, batch_size: int = 32,
                    device=None, progress: bool = True, num_workers: int = 0, overwrite: bool = False) -> dict:
    """Encodes every image of `image_dir` (and its horizontal flip) with `vae` (a module, or a name or folder
    for load_vae) into a latent folder at `out_dir`; returns its meta. See the module docstring for the files."""
    files, labels, classes = scan_image_folder(image_dir)
    meta_path = os.path.join(out_dir, "meta.json")
    if os.path.exists(meta_path):
        if not overwrite:
            raise UsageError(f"{out_dir!r} already holds prepared latents (meta.json); choose another folder or "
                             "pass --overwrite")
        os.remove(meta_path)  # from here on the folder reads as unfinished until the new meta.json is written
    device = torch.device(device or default_device())
    if isinstance(vae, str):
        vae = load_vae(vae, device)
    name = vae_name(vae)
    vae_device = next(vae.parameters()).device
    channels, side = latent_size(vae, image_size)
    os.makedirs(out_dir, exist_ok=True)
    n = len(files)
    shape = (n, 2, channels, side, side)
    mean = np.lib.format.open_memmap(os.path.join(out_dir, "mean.npy"), mode="w+", dtype=np.float16, shape=shape)
    std = np.lib.format.open_memmap(os.path.join(out_dir, "std.npy"), mode="w+", dtype=np.float16, shape=shape)
    np.save(os.path.join(out_dir, "labels.npy"), np.asarray(labels, dtype=np.int64))
    with open(os.path.join(out_dir, "files.txt"), "w") as f:
        f.writelines(p + "\n" for p in files)

    loader = torch.utils.data.DataLoader(_ImageFiles(image_dir, files, image_size), batch_size=batch_size,
                                         num_workers=num_workers, pin_memory=vae_device.type == "cuda")
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc="encoding", unit="batch")
    start = 0
    for x in loader:  # (B, 3, S, S) in [-1, 1]
        x = x.to(vae_device, non_blocking=True)
        posterior = vae.encode(torch.cat([x, x.flip(-1)])).latent_dist  # image and mirror image in one pass
        b = len(x)
        # (2B, C, h, w) -> (B, 2, C, h, w): axis 1 is [image, flipped image]
        mean[start:start + b] = posterior.mean.view(2, b, *shape[2:]).transpose(0, 1).half().cpu().numpy()
        std[start:start + b] = posterior.std.view(2, b, *shape[2:]).transpose(0, 1).half().cpu().numpy()
        start += b
    mean.flush()
    std.flush()
    del mean, std
    meta = {"format": FORMAT, "version": VERSION, "vae": name, "image_size": image_size, "scale": VAE_SCALE,
            "latent_shape": [channels, side, side], "dtype": "float16", "flip": True, "count": n,
            "classes": classes, "source": os.path.abspath(image_dir)}
    _write_json(meta, meta_path)  # last: its presence marks a finished folder
    return meta


#################################################################################
#                         LatentFolder (the training set)                       #
#################################################################################

def is_latent_folder(path: str) -> bool:
    """Whether `path` is (or was meant to become) a folder written by `mdt prepare-latents`."""
    return any(os.path.exists(os.path.join(path, f)) for f in ("meta.json", *ARRAYS))


def read_meta(path: str) -> dict:
    meta_path = os.path.join(path, "meta.json")
    if not os.path.isfile(meta_path):
        raise InputError(f"{path!r} is an unfinished `mdt prepare-latents` output (no meta.json): run it again")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{meta_path!r} cannot be read ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{meta_path!r} is not the meta file of an `mdt prepare-latents` folder")
    if meta.get("version") != VERSION:
        raise InputError(f"latent folder {path!r} has format version {meta.get('version')}, this mdt-kernels "
                         f"reads version {VERSION}")
    return meta


def _load_npy(folder: str, name: str, mmap_mode=None) -> np.ndarray:
    """np.load of folder/name, an array file of prepare_latents, with a one-line InputError when it is not one
    (numpy takes any other file for a pickle, and refuses it with advice to load it unsafely: not passed on)."""
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise MissingInputError(f"latent folder {folder!r} has no {name} (`mdt prepare-latents` writes it)")
    try:
        arr = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (OSError, EOFError, ValueError) as e:
        raise InputError(f"latent folder {folder!r}: {name} is truncated or corrupt, or not an .npy array of "
                         "numbers") from e
    if not isinstance(arr, np.ndarray):  # an .npz
        arr.close()
        raise InputError(f"latent folder {folder!r}: {name} is an .npz file, not an .npy array")
    return arr


class LatentFolder(TrainData):
    """A folder written by `prepare_latents`, memory-mapped. Each step draws, per example, the flip (p = 0.5)
    and a posterior sample on the device, as MDT does when it encodes images on the fly."""

    def __init__(self, path: str, vae=None):
        self.meta = meta = read_meta(path)
        self.path = path
        self.mean = _load_npy(path, "mean.npy", mmap_mode="r")  # (n, 2, C, h, w) float16
        self.std = _load_npy(path, "std.npy", mmap_mode="r")
        self.labels = _load_npy(path, "labels.npy")  # (n,) int64
        n, (c, h, w) = meta["count"], meta["latent_shape"]
        for name, arr in (("mean", self.mean), ("std", self.std)):
            if arr.shape != (n, 2, c, h, w):
                raise InputError(f"{path!r}: {name}.npy has shape {arr.shape}, meta.json says {(n, 2, c, h, w)}")
        if self.labels.shape != (n,):
            raise InputError(f"{path!r}: labels.npy has shape {self.labels.shape}, meta.json says ({n},)")
        self.in_channels, self.input_size, self.num_classes = c, h, len(meta["classes"])
        self.scale = float(meta["scale"])
        self.vae_name = meta["vae"]
        self._vae = vae  # decoder for pictures: a module, a name/folder, or None (meta["vae"]); loaded lazily
        self.description = (f"latents of {n} images ({meta['image_size']}px, {len(meta['classes'])} classes, "
                            f"VAE {meta['vae']}) in {path}")

    def __len__(self):
        return len(self.labels)

    def batch(self, indices):
        idx = indices.numpy()
        return {"mean": torch.from_numpy(np.ascontiguousarray(self.mean[idx])),  # (B, 2, C, h, w) float16
                "std": torch.from_numpy(np.ascontiguousarray(self.std[idx])),
                "y": torch.from_numpy(self.labels[idx])}

    def to_model_input(self, batch, device):
        mean = batch["mean"].to(device, non_blocking=True).float()  # (B, 2, C, h, w)
        std = batch["std"].to(device, non_blocking=True).float()
        flip = torch.rand(mean.shape[0], device=device) < 0.5  # (B,) per-example mirror choice
        pick = flip.long().view(-1, 1, 1, 1, 1).expand(-1, 1, *mean.shape[2:])
        mean, std = mean.gather(1, pick).squeeze(1), std.gather(1, pick).squeeze(1)  # (B, C, h, w)
        z = mean + std * torch.randn_like(mean)  # a posterior sample, as MDT trains on
        return z * self.scale, batch["y"].to(device, non_blocking=True)

    def vae(self, device):
        if self._vae is None or isinstance(self._vae, str):
            self._vae = load_vae(self._vae or self.vae_name, device)
        return self._vae.to(device)

    def decode(self, x):
        return decode_latents(self.vae(x.device), x, self.scale)
