"""Helpers shared by the commands: the device to run on, and the process group under torchrun."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import UsageError


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_arg: str) -> tuple[Dist, torch.device]:
    """Under torchrun (WORLD_SIZE > 1): one process group (NCCL on GPUs, gloo on CPU), one device per rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg == "auto":
        device_arg = default_device()
    if device_arg.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError("--device cuda requested but this torch has no usable GPU")
        device = torch.device("cuda", local_rank if world > 1 or ":" not in device_arg else int(device_arg[5:]))
        torch.cuda.set_device(device)
    elif device_arg == "cpu":
        device = torch.device("cpu")
    else:
        raise UsageError(f"unknown device {device_arg!r}; use auto, cpu, cuda or cuda:N")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    d = Dist(rank=dist.get_rank() if world > 1 else 0, world=world, local_rank=local_rank)
    return d, device


def all_gather_objects(obj, d: Dist) -> list:
    if d.world == 1:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out
