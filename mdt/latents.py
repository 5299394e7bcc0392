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

import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .data import TrainData

FORMAT = "mdt-kernels/latents"
VERSION = 1
VAE_SCALE = 0.18215  # MDT/DiT latent scale for the SD VAE (MDT uses it whatever the VAE's config says)
DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"  # MDT's training encoder
SAMPLE_VAE = "stabilityai/sd-vae-ft-ema"  # MDT's default decoder for samples (scripts/image_sample.py)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
ARRAYS = ("mean.npy", "std.npy", "labels.npy")


#################################################################################
#                             VAE and image loading                             #
#################################################################################

def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_vae(name_or_path: str = DEFAULT_VAE, device="cpu"):
    """A diffusers AutoencoderKL (a local folder or a Hugging Face hub name), in eval mode, frozen, fp32."""
    try:
        from diffusers import AutoencoderKL
    except ImportError as e:
        raise ImportError("VAE latents need diffusers: pip install diffusers (or pip install "
                          "'mdt-kernels[latents]')") from e
    # a hub name is "org/name"; anything else, or an "org" that is a local folder, is meant as a local path
    looks_local = (name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") != 1
                   or os.path.isdir(name_or_path.split("/")[0]))
    if looks_local and not os.path.isdir(os.path.expanduser(name_or_path)):
        raise FileNotFoundError(f"VAE folder {name_or_path!r} does not exist")
    try:
        vae = AutoencoderKL.from_pretrained(os.path.expanduser(name_or_path), low_cpu_mem_usage=False)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(f"cannot load the VAE {name_or_path!r}: not a diffusers AutoencoderKL folder, "
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
        raise ValueError(f"image size {image_size} is not a multiple of the VAE's downsampling factor {factor}")
    return vae.config.latent_channels, image_size // factor


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
        raise ValueError(f"cannot read image {path!r} ({e})") from e
    return torch.from_numpy(arr.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def scan_image_folder(image_dir: str) -> tuple[list[str], list[int], list[str]]:
    """(files relative to image_dir, label of each, class names) of an ImageNet-layout folder: one sub-folder
    per class (label = index in the sorted names), images anywhere below it."""
    if not os.path.exists(image_dir):
        raise FileNotFoundError(f"image folder {image_dir!r} does not exist")
    if not os.path.isdir(image_dir):
        raise NotADirectoryError(f"image folder {image_dir!r} is not a folder")
    classes = sorted(e.name for e in os.scandir(image_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"image folder {image_dir!r} has no class sub-folders (expected one folder per class "
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
        raise ValueError(f"image folder {image_dir!r}: class folder(s) without images: {', '.join(empty[:5])}"
                         + (" ..." if len(empty) > 5 else ""))
    return files, labels, classes


@torch.no_grad()
def decode_latents(vae, z: torch.Tensor, scale: float = VAE_SCALE, batch_size: int = 32) -> torch.Tensor:
    """Scaled latents (n, C, h, w) -> pictures (n, 3, H, W) in [-1, 1] (float32, on z's device)."""
    dev = next(vae.parameters()).device
    out = [vae.decode(zb.to(dev, torch.float32) / scale).sample.clamp(-1, 1).to(z.device)
           for zb in z.split(batch_size)]
    return torch.cat(out)


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
            raise ValueError(f"{out_dir!r} already holds prepared latents (meta.json); choose another folder or "
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
#                      Training data sets (see mdt.data)                        #
#################################################################################

def is_latent_folder(path: str) -> bool:
    """Whether `path` is (or was meant to become) a folder written by `mdt prepare-latents`."""
    return any(os.path.exists(os.path.join(path, f)) for f in ("meta.json", *ARRAYS))


def read_meta(path: str) -> dict:
    meta_path = os.path.join(path, "meta.json")
    if not os.path.isfile(meta_path):
        raise ValueError(f"{path!r} is an unfinished `mdt prepare-latents` output (no meta.json): run it again")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{meta_path!r} cannot be read ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path!r} is not the meta file of an `mdt prepare-latents` folder")
    if meta.get("version") != VERSION:
        raise ValueError(f"latent folder {path!r} has format version {meta.get('version')}, this mdt-kernels "
                         f"reads version {VERSION}")
    return meta


class LatentFolder(TrainData):
    """A folder written by `prepare_latents`, memory-mapped. Each step draws, per example, the flip (p = 0.5)
    and a posterior sample on the device, as MDT does when it encodes images on the fly."""

    def __init__(self, path: str, vae=None):
        self.meta = meta = read_meta(path)
        self.path = path
        self.mean = np.load(os.path.join(path, "mean.npy"), mmap_mode="r")  # (n, 2, C, h, w) float16
        self.std = np.load(os.path.join(path, "std.npy"), mmap_mode="r")
        self.labels = np.load(os.path.join(path, "labels.npy"))  # (n,) int64
        n, (c, h, w) = meta["count"], meta["latent_shape"]
        for name, arr in (("mean", self.mean), ("std", self.std)):
            if arr.shape != (n, 2, c, h, w):
                raise ValueError(f"{path!r}: {name}.npy has shape {arr.shape}, meta.json says {(n, 2, c, h, w)}")
        if self.labels.shape != (n,):
            raise ValueError(f"{path!r}: labels.npy has shape {self.labels.shape}, meta.json says ({n},)")
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


class ImageFolderData(TrainData):
    """An ImageNet-layout image folder read on the fly and encoded every step with the VAE (MDT's own
    pipeline): `batch` loads center-cropped images, `to_model_input` flips (p = 0.5), encodes and samples."""

    def __init__(self, path: str, vae=DEFAULT_VAE, image_size: int = 256, device=None, workers: int = 4):
        self.path, self.image_size = path, image_size
        self.files, labels, self.classes = scan_image_folder(path)
        self.labels = torch.tensor(labels, dtype=torch.int64)
        vae = vae or DEFAULT_VAE
        self._vae = load_vae(vae, device or default_device()) if isinstance(vae, str) else vae
        self.vae_name = vae_name(self._vae)
        self.scale = VAE_SCALE
        self.in_channels, self.input_size = latent_size(self._vae, image_size)
        self.num_classes = len(self.classes)
        self.workers = workers
        self._pool = None
        self.description = (f"{len(self.files)} images ({image_size}px, {self.num_classes} classes) in {path}, "
                            f"encoded every step with VAE {self.vae_name}")

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
        vae = self._vae.to(device)
        x = batch["image"].to(device, non_blocking=True)
        flip = torch.rand(x.shape[0], device=device) < 0.5  # (B,)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn_like(posterior.mean)  # (B, C, h, w)
        return z * self.scale, batch["y"].to(device, non_blocking=True)

    def decode(self, x):
        return decode_latents(self._vae.to(x.device), x, self.scale)


#################################################################################
#                                 Command line                                  #
#################################################################################

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
        raise ValueError("--image-size and --batch-size must be positive")
    meta = prepare_latents(args.image_dir, args.out_dir, vae=args.vae, image_size=args.image_size,
                           batch_size=args.batch_size, device=args.device, num_workers=max(0, args.workers),
                           overwrite=args.overwrite)
    c, h, w = meta["latent_shape"]
    print(f"wrote latents of {meta['count']} images ({len(meta['classes'])} classes, {c}x{h}x{w}, and their "
          f"flips) to {args.out_dir}")
    return 0
