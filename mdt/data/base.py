"""What `mdt train` needs of a training set (`TrainData`); the sets are in the sibling modules."""

from __future__ import annotations

import abc

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
