"""scikit-learn's 8x8 handwritten digits (1797 images, 10 classes): small enough to train an MDTv2 on a
laptop CPU in minutes, real enough to show whether sampling works."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import MissingPackageError, UsageError
from .base import LabelledImages, held_out

DIGITS_MAX = 16.0  # pixel values of sklearn's digits are integers in [0, 16]
DIGITS_TEST_FRACTION = 0.2  # held out per class, for the quality metric


def _digits_arrays():
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the install
        raise MissingPackageError("the digits data set needs scikit-learn: pip install scikit-learn") from e
    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)


def digits_split(split: str = "train", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (n,1,8,8) in [-1, 1], labels (n,)) of a fixed per-class split of the digits.

    The split depends only on `seed`: the same images are held out on every machine and run."""
    if split not in ("train", "test"):
        raise UsageError(f"split must be 'train' or 'test', got {split!r}")
    images, labels = _digits_arrays()
    test = held_out(labels, DIGITS_TEST_FRACTION, seed)
    keep = test if split == "test" else ~test
    x = torch.from_numpy(images[keep] / (DIGITS_MAX / 2) - 1.0).unsqueeze(1)  # (n, 1, 8, 8) in [-1, 1]
    return x.float(), torch.from_numpy(labels[keep])


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """Model space [-1, 1] -> [0, 1] (for pictures)."""
    return ((x + 1) / 2).clamp(0, 1)


class DigitsData(LabelledImages):
    """The training split of the 8x8 digits, held in memory: (1, 8, 8) images in [-1, 1], 10 classes."""

    num_classes = 10

    def __init__(self, split: str = "train"):
        x, y = digits_split(split)
        super().__init__(x, y, f"digits ({split} split, {len(y)} images)")
