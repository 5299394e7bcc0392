"""Sample quality on the built-in labelled sets (8x8 digits, 32x32 MNIST): a small classifier, trained once
with a fixed seed on the set's training split, judges class-conditional samples.

    accuracy   how often a sample is classified as the class it was asked for
    frechet    Frechet distance between the classifier's penultimate features of the samples and of the
               held-out real images (the analogue of FID in a feature space that knows these digits)

The classifier is cached (plain tensors, loaded with weights_only=True) under a name derived from its
recipe version, seed and a hash of the training images, so every run and every evaluation on a machine
uses the same network, and changed data or a changed recipe trains a new one.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import digits_split, mnist_split
from .errors import UsageError


class DigitsClassifier(nn.Module):
    """MLP on the 64 pixels of an 8x8 digit; `features` (64) is the penultimate activation."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def features(self, x):  # x: (n, 1, 8, 8) in [-1, 1]
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


class MnistClassifier(nn.Module):
    """Three conv + max-pool stages (32 -> 16 -> 8 -> 4) and a 128-wide layer, `features` (128)."""

    def __init__(self):
        super().__init__()
        conv = lambda cin, cout: [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]  # noqa: E731
        self.body = nn.Sequential(*conv(1, 32), *conv(32, 64), *conv(64, 64), nn.Flatten(),
                                  nn.Linear(64 * 4 * 4, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)

    def features(self, x):  # x: (n, 1, 32, 32) in [-1, 1]
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


def train_digits_classifier(model, x, y, gen):
    """Full-batch Adam with light noise augmentation (samples are never exact)."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(600):
        loss = F.cross_entropy(model(x + 0.1 * torch.randn(x.shape, generator=gen)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def train_mnist_classifier(model, x, y, gen, epochs=20, batch=128, shift=2):
    """Adam over shuffled mini-batches; each image shifted by up to `shift` pixels and lightly noised."""
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * (len(y) // batch))
    padded = F.pad(x, (shift,) * 4, value=-1.0)  # (n, 1, S + 2 shift, S + 2 shift)
    side = x.shape[-1]
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(len(y) // batch):
            idx = perm[i * batch:(i + 1) * batch]
            dr, dc = torch.randint(0, 2 * shift + 1, (2,), generator=gen).tolist()
            xb = padded[idx, :, dr:dr + side, dc:dc + side]
            loss = F.cross_entropy(model(xb + 0.1 * torch.randn(xb.shape, generator=gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


@dataclass(frozen=True)
class Judge:
    """The classifier that judges samples of one built-in set, and how it is trained."""

    data: str  # the set's name (`--data`)
    shape: tuple  # (C, S, S) of one picture
    split: Callable  # split("train" | "test") -> (x (n, C, S, S) in [-1, 1], y (n,))
    network: type
    train: Callable  # train(model, x, y, generator), in place
    version: int  # bump when the network or the recipe changes


JUDGES = {
    "digits": Judge("digits", (1, 8, 8), digits_split, DigitsClassifier, train_digits_classifier, version=1),
    "mnist": Judge("mnist", (1, 32, 32), mnist_split, MnistClassifier, train_mnist_classifier, version=1),
}


def judge_for(data: str) -> Judge:
    if data not in JUDGES:
        raise UsageError(f"sample quality is measured on the built-in sets {', '.join(JUDGES)}, not {data!r}")
    return JUDGES[data]


def judge_for_shape(shape: tuple) -> Judge | None:
    """The judge of pictures of shape (C, S, S), or None."""
    return next((j for j in JUDGES.values() if j.shape == tuple(shape)), None)


def cache_dir() -> str:
    return os.environ.get("MDT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "mdt-kernels"))


def classifier_path(judge: Judge, seed: int = 0) -> str:
    """The cache file of a judge's classifier: named by its recipe, seed and a hash of its training data."""
    x, y = judge.split("train")
    digest = hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()[:16]
    return os.path.join(cache_dir(), f"{judge.data}_classifier_v{judge.version}_seed{seed}_{digest}.pt")


@torch.enable_grad()
def train_classifier(judge: Judge, seed: int = 0) -> nn.Module:
    """The judge's network trained on its set's training split, seeded (weights, shuffles, augmentation)."""
    x, y = judge.split("train")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = judge.network()
    judge.train(model, x, y, torch.Generator().manual_seed(seed))
    return model.eval()


def load_classifier(data: str = "digits", seed: int = 0) -> nn.Module:
    """The judge of `data`: read from the cache, or trained and cached (a corrupt cache file is retrained)."""
    judge = judge_for(data)
    path = classifier_path(judge, seed)
    model = judge.network()
    if os.path.exists(path):
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.eval()
        except (RuntimeError, OSError, EOFError, pickle.UnpicklingError):
            pass
    model = train_classifier(judge, seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to the rows of a and b:
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))."""
    from scipy import linalg

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # dead ReLU features make the covariances singular; handled below
        warnings.simplefilter("ignore")
        covmean, _ = linalg.sqrtm(s_a @ s_b, disp=False)
    if not np.isfinite(covmean).all():  # near-singular product: regularise, as the FID reference code does
        eps = 1e-6 * np.eye(s_a.shape[0])
        covmean = linalg.sqrtm((s_a + eps) @ (s_b + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))


@torch.no_grad()
def _features(clf: nn.Module, x: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, logits) of x, in batches."""
    feats = [clf.features(x[i:i + batch]) for i in range(0, len(x), batch)]
    f = torch.cat(feats) if feats else torch.zeros(0)
    return f, clf.head(f)


@torch.no_grad()
def sample_quality(data: str, samples: torch.Tensor, labels: torch.Tensor | None, seed: int = 0) -> dict:
    """accuracy: share of samples classified as their requested label (None for an unconditional model's
    samples, labels None); frechet: feature Frechet distance to the held-out real images of `data`.
    samples: (n, C, S, S) in model space [-1, 1]."""
    judge = judge_for(data)
    if samples.dim() != 4 or tuple(samples.shape[1:]) != judge.shape:
        raise ValueError(f"{data} samples must have shape (n, {', '.join(map(str, judge.shape))}), "
                         f"got {tuple(samples.shape)}")
    if len(samples) < 2:
        raise ValueError(f"a Frechet distance needs at least 2 samples, got {len(samples)}")
    clf = load_classifier(data, seed)
    f_samples, logits = _features(clf, samples.float().cpu().clamp(-1, 1))
    real, _ = judge.split("test")
    acc = None if labels is None else (logits.argmax(1) == labels.cpu()).float().mean().item()
    fd = frechet_distance(f_samples.numpy(), _features(clf, real)[0].numpy())
    return {"accuracy": acc, "frechet": fd, "n": int(samples.shape[0])}


@torch.no_grad()
def classifier_accuracy(data: str, seed: int = 0) -> float:
    """Held-out accuracy of the judge of `data` on its set's test split."""
    x, y = judge_for(data).split("test")
    return (_features(load_classifier(data, seed), x)[1].argmax(1) == y).float().mean().item()


def digits_quality(samples: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> dict:
    """sample_quality on the 8x8 digits."""
    return sample_quality("digits", samples, labels, seed)
