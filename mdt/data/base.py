"""What `mdt train` needs of a training set (`TrainData`); the sets are in the sibling modules."""

from __future__ import annotations

import abc

import numpy as np
import torch


class TrainData(abc.ABC):
    """What the trainer needs of a data set. Examples are addressed by index; `batch` loads the examples
    of a batch on the host and `to_model_input` turns them into the model's input on the device (where
    per-step randomness such as posterior sampling or flips is drawn from torch's global generators, which
    checkpoints save, so a resumed run draws what an uninterrupted one would)."""

    in_channels: int
    input_size: int  # model input is (in_channels, input_size, input_size)
    num_classes: int
    description: str

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of examples."""

    @abc.abstractmethod
    def batch(self, indices: torch.Tensor) -> dict:
        """Host tensors of the examples at `indices` (int64, (B,)); always holds "y" (B,) int64."""

    @abc.abstractmethod
    def to_model_input(self, batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(x (B, in_channels, input_size, input_size) float32, y (B,) int64), both on `device`."""

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> pictures in [-1, 1], (B, 1 or 3, H, W), for sample grids and .npz files."""
        return x


class LabelledImages(TrainData):
    """A small labelled image set held in memory in model space: x (n, C, S, S) in [-1, 1], y (n,) int64."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, description: str):
        self.x, self.y, self.description = x, y, description
        self.in_channels, self.input_size = x.shape[1], x.shape[-1]

    def __len__(self):
        return len(self.y)

    def batch(self, indices):
        return {"x": self.x[indices], "y": self.y[indices]}

    def to_model_input(self, batch, device):
        return batch["x"].to(device, non_blocking=True), batch["y"].to(device, non_blocking=True)


def held_out(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a fixed held-out split: round(fraction * count) random examples of every class,
    drawn from a RandomState(seed) class by class in label order."""
    rng = np.random.RandomState(seed)
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test[rng.choice(idx, size=int(round(fraction * len(idx))), replace=False)] = True
    return test
