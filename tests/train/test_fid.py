"""FID and Inception Score in PyTorch (mdt.fid, `mdt eval --fid`): the Frechet distance and IS against closed
forms, the command end to end with a tiny random-weights network in place of Inception-v3, the one-line error
when the Inception weights cannot be had, and torch-fidelity's Inception loaded without torchvision."""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from test_sample_eval_cli import mdt

from mdt import fid


class TinyNet(nn.Module):
    """Stands in for the Inception: uint8 (n, 3, H, W) -> (features (n, 6), logits (n, 5))."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.feat = nn.Linear(8, 6)
        self.head = nn.Linear(6, 5)

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        h = torch.relu(self.conv((x.float() - 128) / 128)).mean((2, 3))
        f = self.feat(h)
        return f, self.head(f)


@pytest.fixture(autouse=True)
def _tiny(monkeypatch, tmp_path):
    net = TinyNet().eval()
    monkeypatch.setattr(fid, "load_inception", lambda path=None, device="cpu": net)
    monkeypatch.setenv("MDT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(fid.WEIGHTS_ENV, raising=False)
    return net


def pictures(n, seed, side=12, shift=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(128 + shift, 50, (n, side, side, 3)), 0, 255).astype(np.uint8)


def test_frechet_distance_of_gaussians_with_commuting_covariances_has_a_closed_form():
    rng = np.random.default_rng(0)
    d = 7
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))  # a shared eigenbasis: sigma1 sigma2 commute
    v1, v2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert fid.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(want, rel=1e-10)
    got = fid.frechet_distance(mu1, q @ np.diag(v1) @ q.T, mu2, q @ np.diag(v2) @ q.T)
    assert got == pytest.approx(want, rel=1e-8)
    assert fid.frechet_distance(mu1, np.diag(v1), mu1, np.diag(v1)) == pytest.approx(0, abs=1e-10)
    # singular covariances (fewer samples than features) take the regularised path and stay finite
    a = rng.normal(size=(3, d))
    assert np.isfinite(fid.frechet_distance(*fid.feature_stats(a), *fid.feature_stats(a + 1)))
    with pytest.raises(ValueError, match="do not match"):
        fid.frechet_distance(mu1, np.diag(v1), mu2[:3], np.diag(v2[:3]))


def test_inception_score_closed_forms():
    k = 5
    assert fid.inception_score(np.zeros((20, k)), splits=2)[0] == pytest.approx(1.0)  # uniform p(y|x)
    confident = 50 * np.eye(k)[np.arange(40) % k]  # certain and balanced over k classes: IS = k
    mean, std = fid.inception_score(confident, splits=4)
    assert mean == pytest.approx(k, rel=1e-6) and std == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 10"):
        fid.inception_score(np.zeros((3, k)))


def _npz(path, arr):
    np.savez(path, arr, np.zeros(len(arr), np.int64))
    return str(path)


@torch.no_grad()
def _features(net, pictures):
    """The network's features of uint8 (n, H, W, 3) pictures, computed here without mdt.fid."""
    return net(torch.from_numpy(pictures).permute(0, 3, 1, 2))[0].double().numpy()


def test_eval_fid_end_to_end_against_pictures_folder_and_mu_sigma(tmp_path, capsys, _tiny):
    samples, ref = pictures(40, 1), pictures(50, 2, shift=40)
    s = _npz(tmp_path / "s.npz", samples)
    # the distance from the network's features, computed here independently
    fs, fr = _features(_tiny, samples), _features(_tiny, ref)
    from scipy import linalg

    cs, cr = np.cov(fs, rowvar=False), np.cov(fr, rowvar=False)
    want = ((fs.mean(0) - fr.mean(0)) ** 2).sum() + np.trace(cs + cr - 2 * linalg.sqrtm(cs @ cr).real)

    code, out, err = mdt(["eval", s, "--fid", _npz(tmp_path / "r.npz", ref), "--batch-size", 16], capsys)
    assert code == 0, err
    report = json.load(open(tmp_path / "s.eval.json"))
    assert report["fid"] == pytest.approx(want, rel=1e-6) and report["n"] == 40 and "FID" in out
    assert report["is"] >= 1.0

    folder = tmp_path / "ref"
    folder.mkdir()
    for i, a in enumerate(ref):
        Image.fromarray(a).save(folder / f"{i:03d}.png")
    code, out, err = mdt(["eval", s, "--fid", folder, "--out", tmp_path / "f.json"], capsys)
    assert code == 0, err
    assert json.load(open(tmp_path / "f.json"))["fid"] == pytest.approx(want, rel=1e-6)

    np.savez(tmp_path / "stats.npz", mu=fr.mean(0), sigma=cr)  # an ADM-style reference of statistics
    code, out, err = mdt(["eval", s, "--fid", tmp_path / "stats.npz", "--out", tmp_path / "m.json"], capsys)
    assert code == 0, err
    assert json.load(open(tmp_path / "m.json"))["fid"] == pytest.approx(want, rel=1e-6)

    code, out, err = mdt(["eval", s, "--fid", s, "--out", tmp_path / "self.json"], capsys)  # itself: 0
    assert code == 0 and json.load(open(tmp_path / "self.json"))["fid"] == pytest.approx(0, abs=1e-6)


def _precision_recall_loops(real, fake, k):
    """Kynkaanniemi et al.'s definition, written out with plain loops (no shared code with mdt.fid)."""
    def radii(x):
        return [sorted(float(np.sqrt(((a - b) ** 2).sum())) for j, b in enumerate(x) if j != i)[k - 1]
                for i, a in enumerate(x)]

    def covered(points, centres, r):
        return np.mean([any(np.sqrt(((p - c) ** 2).sum()) <= rc for c, rc in zip(centres, r, strict=True))
                        for p in points])

    return covered(fake, real, radii(real)), covered(real, fake, radii(fake))


def test_precision_recall_matches_the_definition_and_its_limits():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(0, 1, (40, 5)), rng.normal(0.7, 1.3, (30, 5))
    for k in (1, 3):
        assert fid.precision_recall(real, fake, k) == pytest.approx(_precision_recall_loops(real, fake, k), abs=0)
    p, r = fid.precision_recall(real, fake)
    assert 0 < p < 1 and 0 < r < 1
    assert fid.precision_recall(real, real) == (1.0, 1.0)  # every point is the centre of its own ball
    assert fid.precision_recall(real, real + 100) == (0.0, 0.0)  # far apart: neither covers the other
    # batched distances give the same radii as one block
    assert fid.knn_radii(real, 3, batch=7) == pytest.approx(fid.knn_radii(real, 3), abs=1e-12)
    with pytest.raises(fid.InputError, match="more than 3 pictures"):
        fid.precision_recall(real[:3], fake)


def test_eval_prec_recall_end_to_end(tmp_path, capsys, _tiny):
    samples, ref = pictures(30, 1), pictures(40, 2, shift=20)
    s = _npz(tmp_path / "s.npz", samples)
    fs, fr = _features(_tiny, samples), _features(_tiny, ref)
    want = _precision_recall_loops(fr, fs, 3)
    # an ADM-style reference: pictures and their stored statistics
    np.savez(tmp_path / "adm.npz", arr_0=ref, mu=fr.mean(0), sigma=np.cov(fr, rowvar=False))
    code, out, err = mdt(["eval", s, "--fid", tmp_path / "adm.npz", "--prec-recall", "--out", tmp_path / "pr.json"],
                         capsys)
    assert code == 0, err
    report = json.load(open(tmp_path / "pr.json"))
    assert (report["precision"], report["recall"]) == pytest.approx(want, abs=1e-12) and "recall" in out
    np.savez(tmp_path / "stats.npz", mu=fr.mean(0), sigma=np.cov(fr, rowvar=False))  # statistics only
    code, out, err = mdt(["eval", s, "--fid", tmp_path / "stats.npz", "--prec-recall"], capsys)
    assert code != 0 and "only mu/sigma" in err and len(err.strip().splitlines()) == 1
    code, out, err = mdt(["eval", s, "--prec-recall"], capsys)
    assert code != 0 and "--prec-recall goes with --fid" in err


def test_missing_inception_weights_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.undo()  # the real loader
    monkeypatch.setenv("MDT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(fid.WEIGHTS_ENV, raising=False)
    s = _npz(tmp_path / "s.npz", pictures(4, 0))
    code, out, err = mdt(["eval", s, "--fid", s, "--inception-weights", tmp_path / "nope.pth"], capsys)
    assert code == 2 and "nope.pth" in err and len(err.strip().splitlines()) == 1, err

    def offline(url, dst, progress=True):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    code, out, err = mdt(["eval", s, "--fid", s], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--inception-weights" in err and "name resolution" in err and fid.INCEPTION_FILE in err


def test_torch_fidelity_inception_loads_without_torchvision(tmp_path, monkeypatch):
    pytest.importorskip("scipy")
    if __import__("importlib").util.find_spec("torch_fidelity") is None:
        pytest.skip("torch-fidelity is not installed")
    monkeypatch.undo()
    cls = fid._inception_class()
    # random weights of the right layout: build the module once with loading switched off
    torch.save({}, tmp_path / "empty.pth")
    monkeypatch.setattr(cls, "load_state_dict", lambda self, state, *a, **k: None)
    skeleton = cls("x", ["2048"], feature_extractor_weights_path=str(tmp_path / "empty.pth"))
    monkeypatch.undo()
    torch.save(skeleton.state_dict(), tmp_path / "w.pth")
    net = fid.load_inception(str(tmp_path / "w.pth"))
    f, g = fid.inception_outputs(net, pictures(2, 0, side=32), batch_size=2)
    assert f.shape == (2, 2048) and g.shape == (2, 1008) and np.isfinite(f).all()
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not torch-fidelity's Inception weights"):
        fid.load_inception(str(tmp_path / "bad.pth"))
