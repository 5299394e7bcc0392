"""Helpers of the latent-data and command-line tests (the fixtures are in conftest.py)."""

import numpy as np

IMAGE_SIZE = 16  # pictures of the tiny folder; the tiny VAE halves them once -> (4, 8, 8) latents
CLASSES = {"cat": 3, "dog": 2}  # class folder -> number of pictures


def write_pictures(folder, sizes_by_class, seed=0):
    """Random RGB PNGs (w, h) per class folder; returns the files in sorted order with their labels."""
    from PIL import Image

    rng = np.random.RandomState(seed)
    files = []
    for label, (name, sizes) in enumerate(sorted(sizes_by_class.items())):
        (folder / name).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            path = folder / name / f"{name}_{i:02d}.png"
            Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
            files.append((path, label))
    return files
