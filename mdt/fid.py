"""FID, Inception Score, precision and recall in PyTorch, with the Inception-v3 that reproduces the TensorFlow numbers.

The network is torch-fidelity's FeatureExtractorInceptionV3: the 2015-12-05 TensorFlow Inception graph of the
FID/IS papers and of OpenAI's ADM evaluator, ported with TensorFlow 1.x's bilinear resize to 299x299, fed uint8
RGB pictures. FID uses its 2048 pool-3 features, IS the softmax of its unbiased logits (10 splits), as
torch-fidelity computes them; precision/recall the k = 3 nearest-neighbour balls of the pool-3 features, as
ADM's evaluator computes them. torch-fidelity's package imports torchvision, which has no wheel for our torch
pin; only its Inception module is loaded here (it needs torch alone). Its weights file
(weights-inception-2015-12-05-6726825d.pth) is read from --inception-weights, $MDT_INCEPTION_WEIGHTS or the
cache folder, or downloaded there where a network exists.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
import warnings

import numpy as np
import torch

from .errors import InputError, MissingInputError, MissingPackageError, NonFiniteError

INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
INCEPTION_FILE = os.path.basename(INCEPTION_URL)
WEIGHTS_ENV = "MDT_INCEPTION_WEIGHTS"
IS_SPLITS = 10
PR_NEIGHBOURS = 3  # k of the k-NN manifold estimate of precision/recall (ADM's evaluator)
EXACT = "donot_use_mm_for_euclid_dist"  # cdist: differences, not the |a|^2 + |b|^2 - 2ab expansion
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


#################################################################################
#                                   The network                                 #
#################################################################################

def _inception_class():
    """torch-fidelity's FeatureExtractorInceptionV3, without importing the torchvision-bound rest of it."""
    name = "torch_fidelity.feature_extractor_inceptionv3"
    try:
        return importlib.import_module(name).FeatureExtractorInceptionV3
    except ModuleNotFoundError as e:
        if e.name == "torch_fidelity":
            raise MissingPackageError("FID needs torch-fidelity: pip install --no-deps torch-fidelity==0.4.0") from e
        if e.name != "torchvision":
            raise
    for key in [k for k in sys.modules if k == "torch_fidelity" or k.startswith("torch_fidelity.")]:
        del sys.modules[key]  # the half-imported package
    spec = importlib.util.find_spec("torch_fidelity")
    package = types.ModuleType("torch_fidelity")  # the package without its __init__ (which imports torchvision)
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["torch_fidelity"] = package
    try:
        return importlib.import_module(name).FeatureExtractorInceptionV3
    finally:
        del sys.modules["torch_fidelity"]  # a later `import torch_fidelity` imports the real package


def inception_weights_path(path: str | None = None, download: bool = True) -> str:
    """The Inception weights file: `path`, $MDT_INCEPTION_WEIGHTS, or the cache (downloaded into it if
    possible). A FileNotFoundError of one line says where to put the file when none can be had."""
    from .metrics import cache_dir

    path = path or os.environ.get(WEIGHTS_ENV)
    if path:
        if not os.path.isfile(path):
            raise MissingInputError(f"Inception weights {path!r} do not exist; download {INCEPTION_URL}")
        return path
    path = os.path.join(cache_dir(), INCEPTION_FILE)
    if os.path.isfile(path):
        return path
    reason = "downloads are off"
    if download:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            torch.hub.download_url_to_file(INCEPTION_URL, path, progress=sys.stderr.isatty())
            return path
        except Exception as e:  # no network, proxy, disk...: one line below
            reason = " ".join(str(e).split()) or type(e).__name__
    raise MissingInputError(f"no Inception weights: {path!r} is missing and {INCEPTION_URL} could not be fetched "
                            f"({reason}); download it where a network exists and give --inception-weights PATH "
                            f"(or ${WEIGHTS_ENV})")


def load_inception(path: str | None = None, device="cpu"):
    """The FID Inception-v3 in eval mode: net(uint8 (n, 3, H, W)) -> (pool-3 features (n, 2048), unbiased
    logits (n, 1008))."""
    path = inception_weights_path(path)
    cls = _inception_class()
    # torch-fidelity loads the file with torch.load(weights_only=False), which would run any pickled code in
    # it: refuse a file that is not plain tensors first (mmap: no second read of the data).
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        from .checkpoint import load_error_reason

        reason = load_error_reason(path, e)
        raise InputError(f"{path!r} is not a plain state dict of Inception weights{f' ({reason})' if reason else ''}") \
            from e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.load(weights_only=False) inside, on the file checked above
        try:
            net = cls("inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=path)
        except (RuntimeError, OSError, EOFError) as e:
            raise InputError(f"{path!r} is not torch-fidelity's Inception weights file ({str(e).splitlines()[0]})") \
                from e
    return net.to(device).eval()


@torch.no_grad()
def inception_outputs(net, pictures: np.ndarray, batch_size: int = 100, device="cpu",
                      progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, D) float64, logits (n, K) float64) of uint8 pictures (n, H, W, C); one channel is
    repeated to RGB."""
    if pictures.dtype != np.uint8 or pictures.ndim != 4 or pictures.shape[-1] not in (1, 3):
        raise InputError(f"pictures must be uint8 (n, H, W, 1 or 3), got {pictures.dtype} {pictures.shape}")
    feats, logits = [], []
    starts = range(0, len(pictures), batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="inception", unit="batch")
    for i in starts:
        x = torch.from_numpy(pictures[i:i + batch_size]).to(device).permute(0, 3, 1, 2)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        f, g = net(x.contiguous())
        feats.append(f.double().cpu())
        logits.append(g.double().cpu())
    return torch.cat(feats).numpy(), torch.cat(logits).numpy()


#################################################################################
#                                    Metrics                                    #
#################################################################################

def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), covariance (D, D)) of the rows, as the FID reference implementations compute them."""
    features = np.asarray(features, dtype=np.float64)
    if len(features) < 2:
        raise InputError(f"FID needs at least 2 pictures, got {len(features)}")
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2):
    |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)), with the product's square root regularised
    by eps * I when it is singular, as pytorch-fid and ADM's evaluator do."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise InputError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs "
                         f"{sigma2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean, _ = linalg.sqrtm(sigma1 @ sigma2, disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(mu1)) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise NonFiniteError(f"the covariance product's square root has an imaginary part "
                                     f"{np.abs(covmean.imag).max():.3g}: too few pictures for these features?")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def knn_radii(features: np.ndarray, k: int = PR_NEIGHBOURS, batch: int = 5000) -> np.ndarray:
    """Distance from each row to its k-th nearest other row (the radius of its ball in the manifold estimate)."""
    x = torch.from_numpy(np.asarray(features, np.float64))
    if len(x) <= k:
        raise InputError(f"precision/recall with k = {k} needs more than {k} pictures per set, got {len(x)}")
    # k + 1: the row itself is the nearest, at 0
    return torch.cat([torch.cdist(x[i:i + batch], x, compute_mode=EXACT).kthvalue(k + 1, dim=1).values
                      for i in range(0, len(x), batch)]).numpy()


def manifold_coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, batch: int = 5000) -> float:
    """Fraction of `points` inside at least one ball (centre, radius)."""
    p, c = torch.from_numpy(np.asarray(points, np.float64)), torch.from_numpy(np.asarray(centres, np.float64))
    r = torch.from_numpy(np.asarray(radii, np.float64))
    inside = [(torch.cdist(p[i:i + batch], c, compute_mode=EXACT) <= r).any(dim=1) for i in range(0, len(p), batch)]
    return float(torch.cat(inside).double().mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = PR_NEIGHBOURS) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019), as ADM's evaluator computes them on the pool
    features: precision is the fraction of samples inside the k-NN balls of the reference set, recall the
    fraction of reference pictures inside those of the samples."""
    return (manifold_coverage(fake, real, knn_radii(real, k)), manifold_coverage(real, fake, knn_radii(fake, k)))


def inception_score(logits: np.ndarray, splits: int = IS_SPLITS) -> tuple[float, float]:
    """(mean, std) over `splits` equal parts of exp(E_x KL(p(y|x) || p(y))), p(y|x) = softmax(logits)."""
    logits = torch.from_numpy(np.asarray(logits, np.float64))
    if len(logits) < splits:
        raise InputError(f"the Inception Score needs at least {splits} pictures, got {len(logits)}")
    log_p = torch.log_softmax(logits, dim=1)
    scores = []
    for part in log_p.chunk(splits):
        log_marginal = torch.logsumexp(part, dim=0) - np.log(len(part))
        scores.append(torch.exp((part.exp() * (part - log_marginal)).sum(1).mean()).item())
    return float(np.mean(scores)), float(np.std(scores))


#################################################################################
#                                  Reference sets                               #
#################################################################################

def read_image_folder(folder: str) -> np.ndarray:
    """(n, H, W, 3) uint8 of the pictures in a folder (recursively, sorted); all must have one size."""
    from PIL import Image

    paths = sorted(os.path.join(root, f) for root, _, files in os.walk(folder) for f in files
                   if f.lower().endswith(IMAGE_SUFFIXES))
    if not paths:
        raise MissingInputError(f"no pictures ({', '.join(IMAGE_SUFFIXES)}) in {folder!r}")
    arrays = []
    for p in paths:
        with Image.open(p) as im:
            arrays.append(np.asarray(im.convert("RGB")))
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise InputError(f"the pictures in {folder!r} have different sizes ({sorted(sizes)[:3]}); resize them to "
                         "one size first, as the reference batches are")
    return np.stack(arrays)


def reference_features(ref: str, features_of, need_features: bool = False):
    """(mu, sigma, features or None, what) of a reference: an .npz with mu/sigma (the ADM reference batches hold
    them, computed by the TensorFlow graph, next to their pictures), an .npz of pictures (arr_0), or a folder of
    pictures. features_of(uint8 NHWC) -> features. need_features: the reference pictures' features are
    computed (precision/recall), also where mu/sigma are stored."""
    from .sample import npz_array, open_npz, read_samples

    if os.path.isdir(ref):
        pictures = read_image_folder(ref)
        feats = features_of(pictures)
        return (*feature_stats(feats), feats, f"{len(pictures)} pictures of {ref}")
    if not os.path.isfile(ref):
        raise MissingInputError(f"reference {ref!r} does not exist (give an .npz or a folder of pictures)")
    with open_npz(ref, "reference") as f:
        stored = "mu" in f.files and "sigma" in f.files
        mu_sigma = tuple(npz_array(f, k, ref).astype(np.float64) for k in ("mu", "sigma")) if stored else None
        if stored and not need_features:
            return *mu_sigma, None, f"mu/sigma of {ref}"
        if stored and "arr_0" not in f.files:
            raise InputError(f"precision/recall need the reference pictures; {ref!r} holds only mu/sigma")
    pictures, _ = read_samples(ref)
    feats = features_of(pictures)
    mu, sigma = mu_sigma or feature_stats(feats)
    return mu, sigma, feats, (f"mu/sigma and {len(pictures)} pictures of {ref}" if stored
                              else f"{len(pictures)} pictures of {ref}")


def fid_report(samples: np.ndarray, ref: str, net, batch_size: int = 100, device="cpu",
               progress: bool = False, prec_recall: bool = False) -> dict:
    """FID of uint8 samples (n, H, W, C) against `ref`, their Inception Score, and with prec_recall their
    precision and recall against the reference pictures."""
    def features_of(pictures):
        return inception_outputs(net, pictures, batch_size, device, progress)[0]

    feats, logits = inception_outputs(net, samples, batch_size, device, progress)
    mu, sigma = feature_stats(feats)
    mu_ref, sigma_ref, feats_ref, what = reference_features(ref, features_of, need_features=prec_recall)
    if mu_ref.shape != mu.shape:
        raise InputError(f"the reference statistics have {mu_ref.shape[0]} features, the network gives {mu.shape[0]}")
    report = {"fid": frechet_distance(mu, sigma, mu_ref, sigma_ref), "n": int(len(samples)), "reference": what}
    if len(samples) >= IS_SPLITS:
        report["is"], report["is_std"] = inception_score(logits)
    if prec_recall:
        report["precision"], report["recall"] = precision_recall(feats_ref, feats)
    return report
