"""`mdt sample`, `mdt eval` and `mdt prepare-latents` through the `mdt` command (mdt.cli.main)."""

import json

import numpy as np
import pytest
import torch
from train_helpers import IMAGE_SIZE

from mdt import checkpoint, cli
from mdt.checkpoint import save_checkpoint
from mdt.data import digits_split
from mdt.models import MODELS
from mdt.sample import generate, to_uint8

DIGITS_CONFIG = {"model": "MDTv2-Ti/2", "data": "digits", "in_channels": 1, "input_size": 8, "num_classes": 10,
                 "class_dropout_prob": 0.1, "mask_ratio": 0.3, "vae": None, "latent_scale": None}


@pytest.fixture(scope="module")
def _cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(autouse=True)
def _env(_cache, monkeypatch):
    monkeypatch.setenv("MDT_CACHE", _cache)  # the digits classifier of `mdt eval`, trained once here
    monkeypatch.delenv("MDT_DEBUG", raising=False)


def mdt(argv, capsys):
    """(exit code, stdout, stderr) of `mdt ARGV`."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def _perturbed(model, seed):
    """The model's state dict with every tensor moved off its (partly zero) initialisation."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
            for k, v in model.state_dict().items()}


def _model(name, config, state):
    model = MODELS[name](**config)
    model.load_state_dict(state)
    return model.eval()


@pytest.fixture
def digits_checkpoint(tmp_path):
    """A training checkpoint of an (untrained, perturbed) MDTv2-Ti/2 digits model; EMA != raw weights."""
    kwargs = {k: DIGITS_CONFIG[k] for k in ("in_channels", "input_size", "num_classes", "class_dropout_prob",
                                            "mask_ratio")}
    model = MODELS["MDTv2-Ti/2"](**kwargs)
    raw, ema = _perturbed(model, 1), _perturbed(model, 2)
    path = save_checkpoint(str(tmp_path / "run"), 7, {"model": raw, "ema": ema, "opt": {}, "rng": {},
                                                      "config": DIGITS_CONFIG})
    return path, kwargs, raw, ema


@pytest.mark.parametrize("weights", ["ema", "model"])
def test_sample_from_training_checkpoint(tmp_path, capsys, digits_checkpoint, weights):
    path, kwargs, raw, ema = digits_checkpoint
    code, out, err = mdt(["sample", "--checkpoint", path, "--weights", weights, "--classes", "0,3", "--steps", 4,
                          "--num-per-class", 2, "--cfg-scale", 2, "--seed", 5, "--out", tmp_path / "s.png"], capsys)
    assert code == 0, err
    assert (tmp_path / "s.png").stat().st_size > 0 and "s.npz" in out
    with np.load(tmp_path / "s.npz") as f:
        pictures, labels = f["arr_0"], f["arr_1"]
    assert pictures.shape == (4, 8, 8, 1) and pictures.dtype == np.uint8
    assert labels.tolist() == [0, 0, 3, 3] and labels.dtype == np.int64
    from PIL import Image

    assert Image.open(tmp_path / "s.png").size == (176, 176)  # 2 x 2 grid of 8 px cells + 2 px gaps, enlarged 8x
    # the same sampling by hand with the chosen weights gives the same pictures
    model = _model("MDTv2-Ti/2", kwargs, ema if weights == "ema" else raw)
    x = generate(model, torch.tensor([0, 0, 3, 3]), steps=4, cfg_scale=2.0, clip_denoised=True, seed=5)
    np.testing.assert_array_equal(pictures, to_uint8(x.clamp(-1, 1)))


def test_sample_from_plain_state_dict_with_module_prefix_decodes_with_the_vae(tmp_path, capsys, tiny_vae_dir):
    config = {"input_size": 8, "in_channels": 4, "num_classes": 5}  # latents of 16 x 16 pictures (tiny VAE)
    state = _perturbed(MODELS["MDTv2-Ti/2"](**config), 3)
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "release.pt")  # as saved from DDP
    code, out, err = mdt(["sample", "--weights-file", tmp_path / "release.pt", "--model", "MDTv2-Ti/2",
                          "--vae", tiny_vae_dir, "--classes", "4", "--num-per-class", 3, "--steps", 3,
                          "--sampler", "ddim", "--out", f"{tmp_path}/out/"], capsys)
    assert code == 0, err
    npz = list((tmp_path / "out").glob("*.npz"))
    assert len(npz) == 1 and npz[0].with_suffix(".png").exists()
    with np.load(npz[0]) as f:
        pictures, labels = f["arr_0"], f["arr_1"]
    assert pictures.shape == (3, IMAGE_SIZE, IMAGE_SIZE, 3) and pictures.dtype == np.uint8
    assert labels.tolist() == [4, 4, 4]
    from mdt.data.vae import decode_latents, load_vae

    z = generate(_model("MDTv2-Ti/2", config, state), torch.tensor([4, 4, 4]), sampler="ddim", steps=3)
    want = to_uint8(decode_latents(load_vae(tiny_vae_dir), z))
    assert np.abs(pictures.astype(int) - want).max() <= 1


@pytest.mark.parametrize("wrap", [lambda s: {"ema": s, "opt": {}}, lambda s: {"model": {"_orig_mod." + k: v
                                                                                        for k, v in s.items()}}])
def test_wrapped_weights_are_unwrapped(wrap):
    state = {"pos_embed": torch.zeros(1), "x_embedder.proj.weight": torch.ones(2)}
    got = checkpoint.unwrap_state_dict(wrap(state))
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)


def test_weights_picks_ema_or_raw_from_a_file_holding_both():
    ema, raw = {"w": torch.zeros(1)}, {"w": torch.ones(1)}
    assert checkpoint.unwrap_state_dict({"ema": ema, "model": raw})["w"].item() == 0
    assert checkpoint.unwrap_state_dict({"ema": ema, "model": raw}, weights="model")["w"].item() == 1


def _digits_npz(path, labels=None):
    x, y = digits_split("test")
    np.savez(path, to_uint8(x), (y if labels is None else labels).numpy())
    return path


def test_eval_real_digits_scores_high_and_reads_the_labels(tmp_path, capsys):
    npz = _digits_npz(tmp_path / "real.npz")
    code, out, err = mdt(["eval", npz, "--out", tmp_path / "report.json"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["kind"] == "digits" and report["n"] == len(digits_split("test")[1])
    assert report["accuracy"] >= 0.9 and "accuracy" in out
    # the labels come from arr_1: shuffled labels are wrong about 90% of the time
    y = digits_split("test")[1]
    shuffled = _digits_npz(tmp_path / "shuffled.npz", y[torch.randperm(len(y))])
    assert mdt(["eval", shuffled], capsys)[0] == 0
    assert json.loads((tmp_path / "shuffled.eval.json").read_text())["accuracy"] < 0.3


def test_eval_checkpoint_samples_then_scores(tmp_path, capsys, digits_checkpoint):
    path = digits_checkpoint[0]
    code, out, err = mdt(["eval", "--checkpoint", path, "--num-per-class", 7, "--steps", 3,
                          "--out", tmp_path / "r.json"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n"] == 70 and report["checkpoint"] == path and 0 <= report["accuracy"] <= 1
    assert np.isfinite(report["frechet"])


def test_eval_adm_batch_prints_the_evaluator_command(tmp_path, capsys):
    np.savez(tmp_path / "imagenet.npz", np.zeros((6, 256, 256, 3), np.uint8), np.arange(6))
    code, out, err = mdt(["eval", tmp_path / "imagenet.npz"], capsys)
    assert code == 0, err
    assert "(6, 256, 256, 3)" in out or "6 pictures of 256x256x3" in out
    assert f"evaluations/evaluator.py VIRTUAL_imagenet256_labeled.npz {tmp_path / 'imagenet.npz'}" in out


def _one_line_error(code, err, *words):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mdt "), err
    for w in words:
        assert w in lines[0], lines[0]


def test_user_mistakes_end_with_one_line_and_status_2(tmp_path, capsys):
    np.savez(tmp_path / "wrong.npz", np.zeros((4, 8, 8), np.float32))
    _one_line_error(*mdt(["eval", tmp_path / "wrong.npz"], capsys)[::2], "arr_0", "(4, 8, 8)")
    _one_line_error(*mdt(["prepare-latents", tmp_path / "nowhere", tmp_path / "lat"], capsys)[::2],
                    "nowhere", "does not exist")
    (tmp_path / "empty").mkdir()
    _one_line_error(*mdt(["prepare-latents", tmp_path / "empty", tmp_path / "lat"], capsys)[::2],
                    "no class sub-folders")
    torch.save({"pos_embed": torch.zeros(1)}, tmp_path / "w.pt")
    _one_line_error(*mdt(["sample", "--weights-file", tmp_path / "w.pt", "--model", "MDTv9-Huge/2"], capsys)[::2],
                    "unknown model 'MDTv9-Huge/2'")
    _one_line_error(*mdt(["sample", "--checkpoint", tmp_path / "missing.pt"], capsys)[::2], "does not exist")


def test_sample_rejects_bad_classes_and_mismatched_weights(tmp_path, capsys, digits_checkpoint):
    path = digits_checkpoint[0]
    _one_line_error(*mdt(["sample", "--checkpoint", path, "--classes", "10"], capsys)[::2], "--classes", "0..9")
    torch.save(MODELS["DiT-Ti/2"](input_size=8, in_channels=1, num_classes=10).state_dict(), tmp_path / "dit.pt")
    _one_line_error(*mdt(["sample", "--weights-file", tmp_path / "dit.pt", "--model", "MDTv2-Ti/2", "--vae",
                          "none"], capsys)[::2], "does not fit", "missing")


@pytest.mark.parametrize("extra", [["--compile"], ["--precision", "bf16"]], ids=["compile", "bf16"])
def test_sample_compiled_or_bf16_matches_fp32_eager(tmp_path, capsys, digits_checkpoint, extra):
    """--compile gives the eager pictures (up to a rounding step); --precision bf16 runs the model under bf16
    autocast: close to fp32, not equal (a check that bf16 really ran), and tagged _bf16."""
    path = digits_checkpoint[0]
    common = ["sample", "--checkpoint", path, "--classes", "1,2", "--steps", 3, "--num-per-class", 2, "--cfg-scale",
              2, "--sampler", "ddim"]
    assert mdt(common + ["--out", tmp_path / "eager.png"], capsys)[0] == 0
    code, out, err = mdt(common + extra + ["--out", f"{tmp_path}/run/"], capsys)
    assert code == 0, err
    (npz,) = (tmp_path / "run").glob("*.npz")
    assert ("_bf16_" in npz.name) == ("bf16" in extra)
    with np.load(tmp_path / "eager.npz") as f, np.load(npz) as g:
        diff = np.abs(f["arr_0"].astype(int) - g["arr_0"].astype(int))
        assert f["arr_1"].tolist() == g["arr_1"].tolist()
    if "bf16" in extra:
        assert 0 < diff.max() <= 32 and diff.mean() < 4, (diff.max(), diff.mean())
    else:
        assert diff.max() <= 1
