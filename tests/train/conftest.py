"""Fixtures for the latent-data and command-line tests: a tiny randomly initialised VAE saved as a diffusers
folder (nothing is downloaded) and a small ImageNet-layout folder of random pictures."""

import pytest
import torch
from train_helpers import CLASSES, IMAGE_SIZE, write_pictures


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory):
    """A 2-block AutoencoderKL (8 channels, 4 latent channels, downsampling 2). Its log-variance head is pushed
    to about -6 (std ~ 0.05) so that a posterior sample tells which of two latents it was drawn around."""
    diffusers = pytest.importorskip("diffusers")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        vae = diffusers.AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
            latent_channels=4, norm_num_groups=8, sample_size=IMAGE_SIZE)
        with torch.no_grad():
            vae.quant_conv.weight[4:] *= 0.1  # output channels 4..7 are the log-variance
            vae.quant_conv.bias[4:] = -6.0
    path = tmp_path_factory.mktemp("vae") / "tiny-vae"
    vae.save_pretrained(path)
    return str(path)


@pytest.fixture
def image_folder(tmp_path):
    """(folder, [(png path, label)]): 2 classes; short side = IMAGE_SIZE, so the center crop only cuts."""
    sizes = [(IMAGE_SIZE + 8, IMAGE_SIZE), (IMAGE_SIZE, IMAGE_SIZE + 6), (IMAGE_SIZE, IMAGE_SIZE)]
    files = write_pictures(tmp_path / "images", {name: sizes[:n] for name, n in CLASSES.items()})
    (tmp_path / "images" / "cat" / "notes.txt").write_text("not an image")
    return tmp_path / "images", files
