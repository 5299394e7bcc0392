"""Many samples (the 50,000 of an FID run), split over torchrun processes, written as they go, resumable.

`mdt sample --num-samples N` (under `torchrun --nproc_per_node=P -m mdt.cli sample ...` or alone) draws N
class labels uniformly from `--classes` with `--seed`, cuts the work into shards of `--batch-size` samples
and deals the shards that are not on disk yet over the ranks (NCCL on GPUs, gloo on CPU). Each shard is
sampled with its own seed (derived from `--seed` and its index), so a shard is the same whichever rank makes
it and whenever: a run killed and started again skips the finished shards and ends with the same bytes as
one that ran through. Shards are written atomically to STEM.shards/shard_NNNNNN.npz next to a settings.json
that a resumed run must match; at the end rank 0 merges them into STEM.npz (ADM format: arr_0 (N, H, W, C)
uint8, arr_1 (N,) int64 labels, as DiT's sample_ddp.py writes) and STEM.png (the first 64). The shards stay
(delete the folder once the .npz is checked); running the command again only re-merges.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import signal
import sys
import zipfile

import numpy as np
import torch
import torch.distributed as dist

from .checkpoint import atomic_write
from .errors import InputError, MissingInputError, UsageError
from .utils import default_device, init_distributed

EXIT_AFTER_ENV = "MDT_SAMPLE_EXIT_AFTER"  # testing: a rank SIGKILLs itself after writing this many shards
GRID = 64  # pictures in STEM.png


def shard_seed(seed: int, shard: int) -> int:
    """A 63-bit seed per (run seed, shard index), independent of ranks and batch order."""
    digest = hashlib.sha256(f"mdt-sample/{seed}/{shard}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def draw_labels(classes: list[int], num_samples: int, seed: int) -> torch.Tensor:
    """(num_samples,) labels drawn uniformly from classes with a generator of `seed`."""
    gen = torch.Generator().manual_seed(seed)
    return torch.tensor(classes)[torch.randint(len(classes), (num_samples,), generator=gen)]


def shard_path(folder: str, k: int) -> str:
    return os.path.join(folder, f"shard_{k:06d}.npz")


def write_npz(path: str, parts: list, labels: np.ndarray, write_labels: bool = True) -> None:
    """An .npz of arr_0 = concatenation of `parts` (uint8 arrays, or callables returning one, read one at a
    time so 50k pictures need not be in memory twice) and arr_1 = labels (one per picture; not written for
    an unconditional model's pictures), written atomically and byte for byte the same for the same arrays
    (np.savez stamps the zip entries with the time)."""
    def first():
        return parts[0]() if callable(parts[0]) else parts[0]

    head = first()
    shape = (int(len(labels)), *head.shape[1:])

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            info = zipfile.ZipInfo("arr_0.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as out:
                header = np.lib.format.header_data_from_array_1_0(head)
                header["shape"] = shape
                np.lib.format.write_array_header_2_0(out, header)
                n = 0
                for part in parts:
                    arr = np.ascontiguousarray(part() if callable(part) else part)
                    if arr.dtype != head.dtype or arr.shape[1:] != head.shape[1:]:
                        raise InputError(f"{path}: a shard holds {arr.dtype} {arr.shape}, expected {head.dtype} "
                                         f"(n, {', '.join(map(str, head.shape[1:]))})")
                    out.write(arr.tobytes())
                    n += len(arr)
                if n != shape[0]:
                    raise InputError(f"{path}: the shards hold {n} pictures, expected {shape[0]}")
            if write_labels:
                info = zipfile.ZipInfo("arr_1.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with zf.open(info, "w", force_zip64=True) as out:
                    np.lib.format.write_array(out, np.asarray(labels, dtype=np.int64))
    atomic_write(path, write)


def read_shard(path: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return f["arr_0"], f["arr_1"]


def check_settings(folder: str, settings: dict) -> None:
    """Writes folder/settings.json, or checks that the shards already there were made with these settings."""
    path = os.path.join(folder, "settings.json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != settings:
            diff = ", ".join(f"{k}: {old.get(k)!r} there, {settings.get(k)!r} now"
                             for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k))
            raise UsageError(f"the shards in {folder!r} were sampled with other settings ({diff}); resume with the "
                             "same options, or give another --out")
        return
    os.makedirs(folder, exist_ok=True)
    atomic_write(path, lambda f: f.write(json.dumps(settings, indent=1, sort_keys=True).encode()))


def run_sharded(model, info: dict, args, stem: str, render) -> tuple[str, str]:
    """Samples args.num_samples pictures into stem.npz (see the module docstring); returns (png, npz) paths.
    render(labels, seed) -> (n, H, W, C) uint8 pictures of one shard."""
    from .sample import parse_classes

    n = args.num_samples
    if n < 1 or args.batch_size < 1:
        raise UsageError("--num-samples and --batch-size must be positive")
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    labels = draw_labels(parse_classes(args.classes, info["num_classes"]), n, args.seed)
    num_shards = -(-n // args.batch_size)
    folder = stem + ".shards"
    settings = {"source": info["source"], "model": info["model"], "num_samples": n, "shard_size": args.batch_size,
                "seed": args.seed, "sampler": args.sampler, "steps": args.steps, "cfg_scale": args.cfg_scale,
                "scale_pow": args.scale_pow, "classes": [str(c) for c in args.classes], "weights": args.weights,
                "vae": info.get("vae"), "latent_scale": info.get("latent_scale")}
    if args.precision != "fp32":  # (fp32 shard folders from before --precision existed resume as they are)
        settings["precision"] = args.precision
    todo = shards_to_do(folder, settings, num_shards, rank, world)
    mine = todo[rank::world]
    exit_after = int(os.environ.get(EXIT_AFTER_ENV, "0") or 0)
    if rank == 0:
        print(f"{n} samples in {num_shards} shards of {args.batch_size} in {folder}: {num_shards - len(todo)} done, "
              f"{len(todo)} to sample on {world} process(es)", file=sys.stderr, flush=True)
    bar = None
    if rank == 0 and todo:
        from tqdm.auto import tqdm

        total = sum(len(labels[k * args.batch_size:(k + 1) * args.batch_size]) for k in todo)
        bar = tqdm(total=total, unit="sample", desc="sample", smoothing=0.1, dynamic_ncols=True,
                   mininterval=1 if sys.stderr.isatty() else 30)
    for done, k in enumerate(mine, 1):
        y = labels[k * args.batch_size:(k + 1) * args.batch_size]
        pictures = render(y, shard_seed(args.seed, k))
        atomic_write(shard_path(folder, k), lambda f, p=pictures, y=y: np.savez(f, p, y.numpy().astype(np.int64)))
        if bar is not None:
            bar.update(min(len(y) * world, bar.total - bar.n))  # the other ranks advance at about the same pace
        if exit_after and done >= exit_after:
            os.kill(os.getpid(), signal.SIGKILL)
    if bar is not None:
        bar.close()
    if world > 1:
        dist.barrier()
    png, npz = stem + ".png", stem + ".npz"
    if rank == 0:
        assemble(folder, num_shards, args.batch_size, labels, png, npz, write_labels=info["num_classes"] > 0)
    if world > 1:
        dist.barrier()
    return png, npz


def shards_to_do(folder: str, settings: dict, num_shards: int, rank: int, world: int) -> list[int]:
    """The shards not yet in folder, as rank 0 finds them (after checking that folder was sampled with these
    settings) and tells every rank; a mismatch raises on every rank instead of leaving the others waiting."""
    todo = None
    if rank == 0:
        try:
            check_settings(folder, settings)
            todo = [k for k in range(num_shards) if not os.path.exists(shard_path(folder, k))]
        except (ValueError, OSError) as e:
            todo = e
    if world > 1:
        box = [todo]
        dist.broadcast_object_list(box, src=0)
        todo = box[0]
    if isinstance(todo, Exception):
        raise todo
    return todo


def assemble(folder: str, num_shards: int, shard_size: int, labels: torch.Tensor, png: str, npz: str,
             write_labels: bool) -> None:
    """Writes the finished shards of folder as one .npz (streamed shard by shard) and the first GRID as a grid."""
    from .sample import save_grid

    missing = [k for k in range(num_shards) if not os.path.exists(shard_path(folder, k))]
    if missing:
        raise MissingInputError(f"shards {missing[:5]} of {folder!r} are missing after sampling")
    write_npz(npz, [lambda k=k: read_shard(shard_path(folder, k))[0] for k in range(num_shards)], labels.numpy(),
              write_labels=write_labels)
    grid = np.concatenate([read_shard(shard_path(folder, k))[0]
                           for k in range(min(num_shards, -(-GRID // shard_size)))])[:GRID]
    save_grid(torch.from_numpy(grid).permute(0, 3, 1, 2).float() / 127.5 - 1, png)


def init_process_group(device_arg: str | None) -> torch.device:
    """Under torchrun: one process group (NCCL on GPUs, gloo on CPU) with a day-long timeout (ranks may wait
    long at the final barrier when a resumed run finishes unevenly); else nothing. Returns this rank's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if (device_arg or default_device()).startswith("cuda") else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=24))
    _, device = init_distributed(device_arg or "auto")
    return device
