"""Sampling speed: samples per second of `mdt sample`'s loop (mdt.sample.generate), per model, with the fused
kernels against the PyTorch reference, each eager and under torch.compile.

    python -m benchmarks.sample                                  # MDTv2-S/2, 32x32x4 latents, batch 8 + CFG
    python -m benchmarks.sample --models MDTv2-S/2 DiT-S/2 --steps 10 --precision bf16

Providers (one model, same weights):
  reference          use_backend("reference"): plain PyTorch, what the model costs without mdt-kernels
  reference+compile  torch.compile of the model's forward under the reference backend
  fused              use_backend("auto"): the fused kernels (what `mdt sample` runs)
  fused+compile      torch.compile of the model's forward over the fused ops
The weights are perturbed (a fresh model's zero-initialised output layer outputs 0, which every provider
would match), and every provider's samples are compared with the eager reference's: the table gives the
largest difference, and a provider further than --tol from the reference fails the run.
Writes benchmarks/results/sample_<device>_<precision>.{md,json}.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics

import torch

import mdt_kernels as mk
from benchmarks._harness import median_time, run_meta, table_head, write_results
from mdt.models import MODELS, build_model
from mdt.sample import SAMPLERS, generate

PROVIDERS = ("reference", "reference+compile", "fused", "fused+compile")
PRECISIONS = ("fp32", "bf16")  # bf16: autocast, fp32 weights (as `mdt train --precision bf16`)


def perturbed_model(name: str, input_size: int, in_channels: int, num_classes: int, device) -> torch.nn.Module:
    """The model with small random offsets on every weight (seeded), in eval mode."""
    model = build_model(dict(model=name, input_size=input_size, in_channels=in_channels, num_classes=num_classes,
                             class_dropout_prob=0.1, learn_sigma=True))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return model.to(device).eval()


def provider_model(model: torch.nn.Module, provider: str) -> torch.nn.Module:
    """The model a provider runs: the same one, or a copy whose forward is compiled."""
    if not provider.endswith("+compile"):
        return model
    compiled = copy.deepcopy(model)
    compiled.forward = torch.compile(compiled.forward, dynamic=False)  # forward_with_cfg calls self.forward
    return compiled


def rows_for(name: str, args, device: torch.device) -> list[dict]:
    """Each provider's samples and median time per batch. The providers take turns, one timed batch each per
    round (after one warm-up batch each, which also compiles): a shared machine's slow drift then lands on
    every provider alike instead of on whichever ran last."""
    model = perturbed_model(name, args.input_size, args.in_channels, args.num_classes, device)
    labels = torch.arange(args.batch) % args.num_classes
    kw = dict(sampler=args.sampler, steps=args.steps, cfg_scale=args.cfg_scale, seed=0, batch_size=args.batch)
    models = {provider: provider_model(model, provider) for provider in args.providers}

    def run(provider):
        with mk.use_backend("reference" if provider.startswith("reference") else "auto"), torch.autocast(
                device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            return generate(models[provider], labels, **kw)

    samples = {provider: run(provider) for provider in args.providers}  # warm-up
    times: dict[str, list[float]] = {provider: [] for provider in args.providers}
    for _ in range(args.reps):
        for provider in args.providers:
            times[provider].append(median_time(lambda p=provider: run(p), device, min_time=0, min_reps=1, warmup=0))
    rows, reference = [], samples[args.providers[0]]
    for provider in args.providers:
        seconds = statistics.median(times[provider])
        diff = (samples[provider].float() - reference.float()).abs().max().item()
        rows.append(dict(model=name, provider=provider, seconds=seconds, samples_per_s=args.batch / seconds,
                         max_diff=diff, times=times[provider]))
        print(f"  {name} {provider}: {seconds:.2f} s per batch of {args.batch} (runs: "
              f"{', '.join(f'{t:.2f}' for t in times[provider])}), {args.batch / seconds:.2f} samples/s, "
              f"max |diff| vs {args.providers[0]} {diff:.2e}", flush=True)
    base = {r["provider"]: r["seconds"] for r in rows}
    for r in rows:
        r["vs_reference"] = base.get("reference", float("nan")) / r["seconds"]
        r["vs_reference_compile"] = base.get("reference+compile", float("nan")) / r["seconds"]
    return rows


def markdown(meta: dict, rows: list[dict]) -> str:
    a = meta["args"]
    lines = table_head(
        f"Sampling speed ({meta['dtype']})", meta,
        f"One batch of {a['batch']} samples with classifier-free guidance (scale {a['cfg_scale']}: {2 * a['batch']} "
        f"rows per model evaluation), {a['steps']} {a['sampler']} steps, {a['input_size']}x{a['input_size']}x"
        f"{a['in_channels']} latents, {a['num_classes']} classes; median of {a['reps']} runs after one warm-up "
        "(compilation excluded), the providers taking turns run by run.",
        ["model", "provider", "s per batch", "samples/s", "vs reference", "vs reference+compile", "max abs diff"])
    for r in rows:
        lines.append(f"| {r['model']} | {r['provider']} | {r['seconds']:.2f} | {r['samples_per_s']:.2f} | "
                     f"{r['vs_reference']:.2f}x | {r['vs_reference_compile']:.2f}x | {r['max_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["MDTv2-S/2"], choices=list(MODELS))
    p.add_argument("--providers", nargs="+", default=list(PROVIDERS), choices=PROVIDERS,
                   help="the first one is the baseline the others are compared with")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--batch", type=int, default=8, help="samples per batch (CFG doubles the rows)")
    p.add_argument("--cfg-scale", type=float, default=1.5)
    p.add_argument("--sampler", default="ddim", choices=SAMPLERS)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--input-size", type=int, default=32, help="latent side (32: ImageNet-256 through the VAE)")
    p.add_argument("--in-channels", type=int, default=4)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--tol", type=float, default=1e-3, help="largest difference from the reference allowed")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    return p


def main(argv=None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    if args.batch < 1 or args.steps < 1 or args.reps < 1:
        p.error("--batch, --steps and --reps must be positive")
    device = torch.device(args.device)
    meta = run_meta(device, args.precision)
    meta["args"] = {k: v for k, v in vars(args).items() if k != "out"}
    rows = []
    for name in args.models:
        rows += rows_for(name, args, device)
    write_results(args.out, "sample", device, meta, rows, markdown)
    bad = [r for r in rows if r["max_diff"] > args.tol]
    if bad:
        raise SystemExit(f"samples differ from the reference by more than {args.tol}: "
                         + ", ".join(f"{r['model']} {r['provider']} ({r['max_diff']:.1e})" for r in bad))


if __name__ == "__main__":
    main()
