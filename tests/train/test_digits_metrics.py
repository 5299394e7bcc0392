import numpy as np
import pytest
import torch

from mdt import metrics
from mdt.data import digits_split


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MDT_CACHE", str(tmp_path))


def test_split_is_fixed_disjoint_and_in_range():
    xtr, ytr = digits_split("train")
    xte, yte = digits_split("test")
    assert xtr.shape[1:] == (1, 8, 8) and len(xtr) + len(xte) == 1797
    assert xtr.min() >= -1 and xtr.max() <= 1
    assert torch.equal(digits_split("test")[0], xte)  # same split every call
    assert set(yte.tolist()) == set(range(10))
    # no held-out image is also a training image
    tr = {tuple(r) for r in xtr.flatten(1).tolist()}
    assert sum(tuple(r) in tr for r in xte.flatten(1).tolist()) < 5  # the data set has a few exact duplicates
    with pytest.raises(ValueError, match="split must be"):
        digits_split("val")


def test_frechet_distance_matches_closed_form_for_gaussians():
    rng = np.random.RandomState(0)
    n, d = 200000, 3
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([2.0, 0.5, 1.0])
    m1, m2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a = m1 + rng.randn(n, d) * np.sqrt(s1)
    b = m2 + rng.randn(n, d) * np.sqrt(s2)
    # diagonal covariances: tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (sqrt(s1) - sqrt(s2))^2
    expected = ((m1 - m2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, abs=0.05)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_classifier_recognises_real_digits_and_rejects_noise():
    xte, yte = digits_split("test")
    q_real = metrics.digits_quality(xte, yte)
    assert q_real["accuracy"] >= 0.9
    noise = torch.rand(len(xte), 1, 8, 8) * 2 - 1
    q_noise = metrics.digits_quality(noise, yte)
    assert q_noise["accuracy"] < 0.3
    assert q_noise["frechet"] > 10 * max(q_real["frechet"], 1e-3)


def test_classifier_is_cached_and_reloaded(tmp_path):
    a = metrics.load_classifier()
    files = list(tmp_path.glob("digits_classifier_*.pt"))
    assert len(files) == 1
    b = metrics.load_classifier()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    files[0].write_bytes(b"not a checkpoint")  # a corrupt cache is retrained, not an error
    c = metrics.load_classifier()
    for pa, pc in zip(a.parameters(), c.parameters()):
        assert torch.equal(pa, pc)


def test_quality_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\(n, 1, 8, 8\)"):
        metrics.digits_quality(torch.zeros(3, 8, 8), torch.zeros(3, dtype=torch.long))
