"""Evaluate samples (`mdt eval`): class accuracy + Frechet distance on the built-in sets, or an ADM-evaluator .npz.

`mdt eval SAMPLES.npz` reads an .npz in the ADM format (arr_0: (n, H, W, C) uint8 pictures, arr_1: labels).
Single-channel pictures of a built-in set (8x8 digits, 32x32 MNIST) are judged here (mdt.metrics.sample_quality:
accuracy of the set's classifier against the requested labels, and the Frechet distance of its features to the
set's held-out real images); the report is printed and written as JSON. Any other pictures are checked to be a
valid batch for OpenAI's ADM evaluator (guided-diffusion evaluations/evaluator.py: FID, sFID, IS, precision,
recall), whose command line is printed.
`mdt eval --checkpoint CKPT` samples a checkpoint of a built-in set first (the options of `mdt sample`).
`mdt eval SAMPLES.npz --fid REF` computes FID and Inception Score in PyTorch (mdt.fid: torch-fidelity's
Inception-v3, which reproduces the TensorFlow numbers) against REF: an ADM reference batch (.npz with mu/sigma),
an .npz of pictures or a folder of pictures.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from .checkpoint import load_model
from .errors import InputError, UsageError
from .sample import read_samples
from .sample_cli import add_sampling_arguments, sample_pictures
from .utils import default_device

ADM_EVALUATOR = "https://github.com/openai/guided-diffusion/tree/main/evaluations"
REF_BATCHES = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet"
REF_BATCH_NAMES = {64: "VIRTUAL_imagenet64_labeled.npz", 128: "VIRTUAL_imagenet128_labeled.npz",
                   256: "VIRTUAL_imagenet256_labeled.npz", 512: "VIRTUAL_imagenet512.npz"}


def evaluate_builtin(data: str, pictures: np.ndarray, labels: np.ndarray | None) -> dict:
    """mdt.metrics.sample_quality of (n, S, S, 1) uint8 pictures of the built-in set `data` against their
    labels (None: an unconditional model's samples, Frechet distance only), with the held-out accuracy of the
    classifier that judged them."""
    from .metrics import classifier_accuracy, sample_quality

    if len(pictures) < 2:
        raise InputError(f"a Frechet distance needs at least 2 samples, the file has {len(pictures)}")
    if labels is not None and (labels.min() < 0 or labels.max() > 9):
        raise InputError(f"{data} labels must be in 0..9, found {labels.min()}..{labels.max()}")
    x = torch.from_numpy(pictures).permute(0, 3, 1, 2).float() / 127.5 - 1  # (n, 1, S, S) in [-1, 1]
    y = None if labels is None else torch.from_numpy(labels.astype(np.int64))
    return {"kind": data, **sample_quality(data, x, y), "classifier_accuracy": classifier_accuracy(data)}


def adm_report(path: str, pictures: np.ndarray) -> dict:
    """Shape of a batch for the ADM evaluator and the command that evaluates it."""
    n, h, w, c = pictures.shape
    if c != 3:
        raise InputError(f"{path!r}: the ADM evaluator needs RGB pictures, arr_0 has {c} channel(s)")
    ref = REF_BATCH_NAMES.get(h) if h == w else None
    report = {"kind": "adm", "samples": path, "n": n, "shape": [n, h, w, c]}
    if ref is not None:
        report["reference"] = f"{REF_BATCHES}/{h}/{ref}"
        report["command"] = f"python evaluations/evaluator.py {ref} {path}"
    return report


def add_arguments(parser):
    parser.add_argument("samples", nargs="?", help="ADM-format .npz (from `mdt sample`)")
    parser.add_argument("--checkpoint", help="a training checkpoint of a built-in set (digits, mnist): sample it, "
                        "then evaluate")
    parser.add_argument("--out", default=None,
                        help="JSON report; unset: SAMPLES.eval.json, or CHECKPOINT.eval.json")
    parser.add_argument("--fid", metavar="REF", default=None,
                        help="compute FID and IS of SAMPLES.npz against REF (ADM reference .npz with mu/sigma, an "
                             ".npz of pictures, or a folder of pictures)")
    parser.add_argument("--prec-recall", action="store_true",
                        help="with --fid: also precision and recall (k = 3, as ADM's evaluator) against the "
                             "reference pictures, whose features are then computed")
    parser.add_argument("--inception-weights", default=None,
                        help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth; unset: "
                             "$MDT_INCEPTION_WEIGHTS, else the cache folder (downloaded there if possible)")
    add_sampling_arguments(parser, num_per_class=100)


def run_fid(args):
    """`mdt eval SAMPLES.npz --fid REF`: FID and IS, printed and written as JSON."""
    import sys

    from . import fid
    pictures, _ = read_samples(args.samples)
    device = torch.device(args.device or default_device())
    net = fid.load_inception(args.inception_weights, device)
    report = {"kind": "fid", "samples": args.samples,
              **fid.fid_report(pictures, args.fid, net, args.batch_size, device, progress=sys.stderr.isatty(),
                               prec_recall=args.prec_recall)}
    line = f"FID {report['fid']:.4f} of {report['n']} samples against {report['reference']}"
    if "is" in report:
        line += f"; Inception Score {report['is']:.3f} +- {report['is_std']:.3f}"
    if "precision" in report:
        line += f"; precision {report['precision']:.4f}, recall {report['recall']:.4f}"
    print(line)
    out = args.out or os.path.splitext(args.samples)[0] + ".eval.json"
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"report: {out}")
    return 0


def run(args):
    if (args.samples is None) == (args.checkpoint is None):
        raise UsageError("give either a SAMPLES.npz file or --checkpoint")
    if args.fid is not None:
        if args.checkpoint is not None:
            raise UsageError("--fid evaluates a SAMPLES.npz; sample the checkpoint with `mdt sample` first")
        return run_fid(args)
    if args.prec_recall:
        raise UsageError("--prec-recall goes with --fid REF (the reference pictures)")
    from .metrics import JUDGES, judge_for_shape

    if args.checkpoint is not None:
        model, info = load_model(args.checkpoint, weights=args.weights, device=args.device or default_device())
        data = info.get("data")
        if data not in JUDGES or info.get("vae"):
            raise UsageError(f"--checkpoint evaluates models of the built-in sets ({', '.join(JUDGES)}) only; "
                             f"{args.checkpoint!r} is a {info['model']} on {data}: sample it with `mdt sample` and "
                             "evaluate the .npz")
        pictures, labels = sample_pictures(model, info, args)
        report = {"checkpoint": args.checkpoint, "weights": args.weights, "sampler": args.sampler,
                  "steps": args.steps, "cfg_scale": args.cfg_scale, "seed": args.seed,
                  **evaluate_builtin(data, pictures, None if labels is None else labels.numpy())}
        source = args.checkpoint
    else:
        pictures, labels = read_samples(args.samples)
        source = args.samples
        judge = judge_for_shape(pictures.shape[1:][::-1])  # (n, S, S, C) -> (C, S, S)
        if judge is not None:
            report = {"samples": args.samples, **evaluate_builtin(judge.data, pictures, labels)}
        else:
            report = adm_report(args.samples, pictures)
    if report["kind"] in JUDGES:
        acc = "unconditional" if report["accuracy"] is None else f"accuracy {report['accuracy']:.4f}"
        print(f"{report['kind']}: {acc}, Frechet distance {report['frechet']:.4f} ({report['n']} samples; the "
              f"judging classifier scores {report['classifier_accuracy']:.4f} on the held-out real images)")
    else:
        print(f"{source}: {report['n']} pictures of {report['shape'][1]}x{report['shape'][2]}x3, a valid batch for "
              f"the ADM evaluator ({ADM_EVALUATOR}; needs TensorFlow).")
        if "command" in report:
            print(f"Download the reference batch {report['reference']}, then run in a guided-diffusion checkout:")
            print(f"  {report['command']}")
        else:
            print("There is no ImageNet reference batch of this resolution; give evaluator.py your own reference "
                  "batch (same format) as its first argument.")
    out = args.out or os.path.splitext(source)[0] + ".eval.json"
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"report: {out}")
    return 0
