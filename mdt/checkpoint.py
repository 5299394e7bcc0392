"""Checkpoints: writing and reading ours, and loading models from them or from published weights.

Training checkpoints: one file per save holding model, EMA, optimizer, step, RNG states and config.

Files are written atomically (a temporary file in the same folder, fsync, rename), so a crash or kill
mid-save leaves the previous checkpoints untouched and never a half-written file under a checkpoint
name. They are read with ``torch.load(weights_only=True)``: plain tensors and containers only, no
pickled code runs. A truncated or corrupt file raises `CheckpointError`, and `load_latest` then falls
back to the newest checkpoint that reads.

`load_model` builds the model of a training checkpoint, or of a plain state dict such as the official
MDTv2-XL/2 release (its input size, channels and classes read off the weights).
"""

from __future__ import annotations

import glob
import math
import os
import re
import warnings

import torch

from .errors import MdtError, UsageError
from .models import MODELS, build_model

FORMAT = "mdt-kernels/train-checkpoint"
VERSION = 1
_NAME = re.compile(r"^ckpt_(\d+)\.pt$")
STRIP_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


class CheckpointError(MdtError, RuntimeError):
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
        with warnings.catch_warnings():
            # torch's note on a file pickled with another protocol than its own: noise whether the file then loads
            # or is refused, and a second line under the one-line error of a refused one.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - the unpickler fails on damaged bytes with many exception types
        if isinstance(e, MemoryError):
            raise
        reason = load_error_reason(path, e)
        raise CheckpointError(f"checkpoint {path!r} is truncated or corrupt, or not a torch.save file of tensors and "
                              f"plain containers{f' ({reason})' if reason else ''}") from e


# Words of torch's advice on a file that weights_only=True refuses: load it with weights_only=False, or
# allowlist its classes "if you trust" them; either runs whatever code the file holds.
_UNSAFE_ADVICE = re.compile(r"weights_only|pickl|safe_globals|allowlist|trust", re.IGNORECASE)


def load_error_reason(path: str, e: Exception) -> str | None:
    """Why torch.load(weights_only=True) failed on path, in a few words of ours; None where torch's own say
    nothing ('pop from empty list', a KeyError's '101' on random bytes). torch's advice to load the file
    unsafely never reaches the user: its reason is kept only where it is a plain description (the zip
    reader's, on a truncated file)."""
    text = str(e).strip()
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:  # a torch.save file holding objects other than tensors and plain containers
        return f"it names the Python class or function {found.group(1)}, which mdt never loads: that can run any code"
    if os.path.getsize(path) == 0:
        return "the file is empty"
    first = text.splitlines()[0].split(". ")[0] if text else ""
    return first if isinstance(e, RuntimeError) and first and not _UNSAFE_ADVICE.search(first) else None


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


#################################################################################
#                  Loading models: our checkpoints, published weights           #
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
        table = state.get("y_embedder.embedding_table.weight")  # none: an unconditional model
        rows = table.shape[0] if table is not None else 0  # num_classes (+ 1 null class for CFG)
        out = state["final_layer.linear.weight"].shape[0]  # p * p * C_out
    except KeyError as e:
        raise CheckpointError(f"the weights have no {e.args[0]!r}: not an MDTv2 or DiT state dict") from e
    in_channels = in_channels or proj.shape[1]
    num_classes = num_classes or max(rows - 1, 0)  # released models keep the null class
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
        raise UsageError("give either --checkpoint or --weights-file")
    if checkpoint is not None:
        if any(v is not None for v in (model_name, input_size, in_channels, num_classes)):
            raise UsageError("--model, --input-size, --in-channels and --num-classes apply to --weights-file only "
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
            raise UsageError("--weights-file needs --model (one of " + ", ".join(MODELS) + ")")
        if model_name not in MODELS:
            raise UsageError(f"unknown model {model_name!r}; choose one of {', '.join(MODELS)}")
        state = unwrap_state_dict(load_file(weights_file), weights)
        info = config_from_weights(state, model_name, input_size, in_channels, num_classes)
        model = build_model(info)
        load_weights(model, state, f"{weights_file!r}")
        info.update(vae=None, latent_scale=None,
                    source=os.path.splitext(os.path.basename(weights_file))[0])
    return model.to(device).eval(), info
