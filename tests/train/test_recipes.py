"""The shipped recipes (mdt/recipes/*.toml): each loads, prints its resolved config, trains 2 steps on a tiny
stand-in of its data (latents of a few random pictures, written by `mdt prepare-latents` with a tiny VAE) and
samples with its FID protocol, all on the CPU; recipe values become defaults that flags override."""

import os
import subprocess
import sys

import pytest
from train_helpers import IMAGE_SIZE, write_pictures

from mdt import checkpoint as ckpt
from mdt.recipes import load_recipe, shipped, tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# The XL/2 models (742M and 675M parameters) need ~20 GB for weights, gradients, EMA and optimizer state, and
# MDTv2-B/2's checkpoint (130M parameters: weights, EMA and Adan's four states) is 3 GB to write, fsync and read
# back: these recipes train the S/2 model of their family here, with every other value of the recipe.
STAND_IN_MODEL = {"mdtv2-xl2": "MDTv2-S/2", "mdtv2-b2": "MDTv2-S/2", "dit-xl2": "DiT-S/2"}


def mdt(*args):
    return subprocess.run([sys.executable, "-m", "mdt.cli", *map(str, args)], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def latents(tmp_path_factory, tiny_vae_dir):
    from mdt.data import prepare_latents

    root = tmp_path_factory.mktemp("recipe_data")
    write_pictures(root / "images", {"cat": [(IMAGE_SIZE, IMAGE_SIZE)] * 3, "dog": [(IMAGE_SIZE, IMAGE_SIZE)] * 2})
    prepare_latents(str(root / "images"), str(root / "latents"), vae=tiny_vae_dir, image_size=IMAGE_SIZE,
                    batch_size=2, device="cpu", progress=False)
    return root / "latents"


def test_the_papers_recipes_are_shipped():
    assert set(shipped()) >= {"mdtv2-s2", "mdtv2-b2", "mdtv2-xl2", "dit-xl2"}
    xl, dit = load_recipe("mdtv2-xl2"), load_recipe("dit-xl2")
    assert xl["train"]["batch_size"] == dit["train"]["batch_size"] == 256
    assert xl["train"]["betas"] == [0.98, 0.92, 0.99] and xl["train"]["ema_decay"] == 0.9999
    assert xl["train"]["mask_ratio"] == 0.3 and xl["train"]["min_snr_gamma"] == 5.0 and xl["train"]["decode_layer"] == 4
    assert xl["sample"] == {"sampler": "ddpm", "steps": 250, "cfg_scale": 3.8, "scale_pow": 4.0, "weights": "ema",
                            "num_samples": 50000, "vae": "stabilityai/sd-vae-ft-ema", "seed": 0}
    assert dit["train"]["optimizer"] == "adamw" and dit["sample"]["cfg_scale"] == 1.5


@pytest.mark.parametrize("name", shipped())
def test_recipe_prints_trains_and_samples(name, latents, tiny_vae_dir, tmp_path):
    recipe = load_recipe(name)
    r = mdt("train", "--config", name, "--print-config")
    assert r.returncode == 0, r.stderr
    printed = tomllib.loads(r.stdout)["train"]
    assert {k: printed[k] for k in recipe["train"]} == recipe["train"]  # every recipe value, resolved as is
    out = tmp_path / "run"
    model = STAND_IN_MODEL.get(name, recipe["train"]["model"])
    r = mdt("train", "--config", name, "--model", model, "--data", latents, "--batch-size", 2, "--steps", 2,
            "--log-every", 1, "--ckpt-every", 2, "--threads", 1, "--no-progress", "--out", out)
    assert r.returncode == 0, r.stderr
    assert f"lr = {recipe['train']['lr']!r}" in r.stderr  # the resolved config is printed at the start
    saved = ckpt.load_checkpoint(ckpt.checkpoint_path(str(out), 2))["config"]
    for key, value in recipe["train"].items():  # stored in the checkpoint; flags won over the recipe
        expected = {"model": model, "data": str(latents), "batch_size": 2, "steps": 2, "log_every": 1,
                    "ckpt_every": 2}.get(key, value)
        assert saved[key] == (tuple(expected) if isinstance(expected, list) else expected), key
    r = mdt("sample", "--config", name, "--checkpoint", out, "--num-samples", 2, "--batch-size", 2, "--steps", 2,
            "--vae", tiny_vae_dir, "--out", tmp_path / "fid")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "fid").with_suffix(".npz").exists() or list((tmp_path).glob("fid*.npz"))


def test_bad_recipes_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlearning_rate = 1.0\n")
    r = mdt("train", "--config", bad, "--print-config")
    assert r.returncode == 2 and "unknown option(s) learning_rate" in r.stderr and "Traceback" not in r.stderr
    bad.write_text("[train\nmodel = 1\n")
    r = mdt("train", "--config", bad, "--print-config")
    assert r.returncode == 2 and "not valid TOML" in r.stderr
    r = mdt("train", "--config", "mdtv2-xxl2", "--print-config")
    assert r.returncode == 2 and "no recipe 'mdtv2-xxl2'" in r.stderr


def test_config_list_names_the_recipes():
    r = mdt("train", "--config", "list")
    assert r.returncode == 0 and all(name in r.stdout for name in shipped())
