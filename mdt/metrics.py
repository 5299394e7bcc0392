"""Sample quality on the digits set: a small classifier trained (seeded) on the training split judges
class-conditional samples (accuracy against the requested class), and the Frechet distance between
its penultimate features of samples and of held-out real digits measures how real they look (the
digits analogue of FID)."""

from __future__ import annotations

import os
import pickle
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import digits_split

CLASSIFIER_VERSION = 1  # bump when the architecture or training recipe changes (invalidates the cache)
FEATURES = 64


class DigitsClassifier(nn.Module):
    """MLP on the 64 pixels; `features` is the penultimate activation used for the Frechet distance."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, FEATURES), nn.ReLU())
        self.head = nn.Linear(FEATURES, 10)

    def features(self, x):  # x: (n, 1, 8, 8) in [-1, 1]
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


@torch.enable_grad()
def train_classifier(seed: int = 0, steps: int = 600) -> DigitsClassifier:
    """Full-batch Adam on the training split with light noise augmentation (samples are never exact)."""
    gen = torch.Generator().manual_seed(seed)
    x, y = digits_split("train")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DigitsClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(steps):
        noisy = x + 0.1 * torch.randn(x.shape, generator=gen)
        loss = F.cross_entropy(model(noisy), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def cache_dir() -> str:
    return os.environ.get("MDT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "mdt-kernels"))


def load_classifier(seed: int = 0) -> DigitsClassifier:
    """The seeded classifier, trained once and cached (plain tensors, loaded with weights_only=True)."""
    path = os.path.join(cache_dir(), f"digits_classifier_v{CLASSIFIER_VERSION}_seed{seed}.pt")
    model = DigitsClassifier()
    if os.path.exists(path):
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.eval()
        except (RuntimeError, OSError, EOFError, pickle.UnpicklingError):
            pass  # a corrupt cache is retrained below
    model = train_classifier(seed)
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
def digits_quality(samples: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> dict:
    """accuracy: share of samples classified as their requested label; frechet: feature Frechet distance
    to the held-out real digits. samples: (n, 1, 8, 8) in model space [-1, 1]."""
    if samples.dim() != 4 or tuple(samples.shape[1:]) != (1, 8, 8):
        raise ValueError(f"digits samples must have shape (n, 1, 8, 8), got {tuple(samples.shape)}")
    clf = load_classifier(seed)
    samples = samples.float().cpu().clamp(-1, 1)
    real, _ = digits_split("test")
    acc = (clf(samples).argmax(1) == labels.cpu()).float().mean().item()
    fd = frechet_distance(clf.features(samples).numpy(), clf.features(real).numpy())
    return {"accuracy": acc, "frechet": fd, "n": int(samples.shape[0])}
