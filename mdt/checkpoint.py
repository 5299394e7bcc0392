"""Training checkpoints: one file per save holding model, EMA, optimizer, step, RNG states and config.

Files are written atomically (a temporary file in the same folder, fsync, rename), so a crash or kill
mid-save leaves the previous checkpoints untouched and never a half-written file under a checkpoint
name. They are read with ``torch.load(weights_only=True)``: plain tensors and containers only, no
pickled code runs. A truncated or corrupt file raises `CheckpointError`, and `load_latest` then falls
back to the newest checkpoint that reads.
"""

from __future__ import annotations

import glob
import os
import re
import warnings

import torch

FORMAT = "mdt-kernels/train-checkpoint"
VERSION = 1
_NAME = re.compile(r"^ckpt_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, truncated, corrupt or not one of ours."""


def checkpoint_dir(out_dir: str) -> str:
    return os.path.join(out_dir, "checkpoints")


def checkpoint_path(out_dir: str, step: int) -> str:
    return os.path.join(checkpoint_dir(out_dir), f"ckpt_{step:08d}.pt")


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, write) -> None:
    """Calls write(f) on a temporary file beside `path`, then fsync + rename: readers see the old file or
    the whole new one, never a part."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(folder)


def atomic_save(obj, path: str) -> None:
    """torch.save to `path` through atomic_write."""
    atomic_write(path, lambda f: torch.save(obj, f))


def save_checkpoint(out_dir: str, step: int, state: dict, keep_last: int = 0) -> str:
    """Writes state (plus format tags) as checkpoints/ckpt_<step>.pt; keeps the newest `keep_last` (0: all)."""
    path = checkpoint_path(out_dir, step)
    atomic_save({"format": FORMAT, "version": VERSION, "step": step, **state}, path)
    if keep_last > 0:
        for old in list_checkpoints(out_dir)[:-keep_last]:
            os.remove(old)
    return path


def load_file(path: str, map_location="cpu"):
    """torch.load(weights_only=True) with every way a damaged file fails turned into a CheckpointError."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - the unpickler fails on damaged bytes with many exception types
        if isinstance(e, MemoryError):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path!r} is truncated or corrupt ({first})") from e


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """A training checkpoint written by `save_checkpoint` (checked to be one)."""
    state = load_file(path, map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not an mdt-kernels training checkpoint (for a plain model state dict, "
                              "use `mdt sample --weights`)")
    if state.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path!r} has format version {state.get('version')}, "
                              f"this mdt-kernels reads version {VERSION}")
    return state


def list_checkpoints(out_dir: str) -> list[str]:
    """Checkpoint files of a run folder, oldest step first."""
    found = []
    for path in glob.glob(os.path.join(checkpoint_dir(out_dir), "ckpt_*.pt")):
        m = _NAME.match(os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found)]


def load_latest(out_dir: str, map_location="cpu") -> tuple[str, dict]:
    """(path, state) of the newest checkpoint of a run folder that reads; damaged newer ones are reported
    (a warning naming each) and skipped. Raises CheckpointError when none can be used."""
    paths = list_checkpoints(out_dir)
    if not paths:
        raise CheckpointError(f"no checkpoint to resume from in {checkpoint_dir(out_dir)!r}")
    errors = []
    for path in reversed(paths):
        try:
            state = load_checkpoint(path, map_location)
        except CheckpointError as e:
            warnings.warn(f"{e}; trying the previous checkpoint", stacklevel=2)
            errors.append(str(e))
            continue
        return path, state
    raise CheckpointError(f"none of the {len(paths)} checkpoints in {checkpoint_dir(out_dir)!r} can be read: "
                          + "; ".join(errors))


def resolve_resume(resume: str, out_dir: str, map_location="cpu") -> tuple[str, dict]:
    """`--resume` (the value "latest": newest usable checkpoint of out_dir), a run folder, or a file."""
    if resume == "latest":
        return load_latest(out_dir, map_location)
    if os.path.isdir(resume):
        return load_latest(resume, map_location)
    return resume, load_checkpoint(resume, map_location)
