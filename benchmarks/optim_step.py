"""Optimizer-step profile: Adan (foreach reference vs fused backends) against torch.optim.AdamW
(foreach and fused) on the parameter lists of MDTv2-S/2 and MDTv2-XL/2 (built by shape, no model).

    python -m benchmarks.optim_step                     # S/2 (and XL/2 on a GPU), fp32
    python -m benchmarks.optim_step --shapes S/2 --dtype bf16

Adan runs with MDT's settings (max_grad_norm=1, weight_decay=0.02, nonfinite="raise"). GB/s counts the
minimal bytes each row must move per parameter; "x min" is the measured time over the time those
bytes take at the measured copy bandwidth (1.0 = as fast as a copy of the same traffic):
  Adan step    read p, g, m, n, v, neg_pre_grad + write p, m, n, v, neg_pre_grad (44 B in fp32), plus
               one more read of g for the global norm (clipping and the finiteness test): 48 B.
  adan kernel  the fused kernel alone (mdt_kernels.adan_step with a fixed clip coefficient): 44 B.
  AdamW        read p, g, m, v + write p, m, v: 28 B (no clipping).
XL/2 (742M parameters, ~18 GB of fp32 tensors) is only run on a GPU.
"""

from __future__ import annotations

import argparse
import gc

import torch

import mdt_kernels as mk
from benchmarks._harness import median_time, run_meta, run_parser, split_choices, table_head, write_results
from mdt.optim import Adan

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# MDTv2 sizes (../shared/MDT_SPEC.md): hidden D, heads, transformer blocks (encoder + decoder + the side
# block), long-skip Linear(2D -> D) layers (one per en_out and decoder block), and the expected total.
MODELS = {
    "S/2": dict(D=384, heads=6, blocks=13, skips=9, total=38_454_872),
    "XL/2": dict(D=1152, heads=16, blocks=29, skips=16, total=742_263_904),
}


def mdt_param_shapes(D: int, heads: int, blocks: int, skips: int, total: int | None = None, grid: int = 16,
                     patch: int = 2, in_ch: int = 4, num_classes: int = 1000, freq_dim: int = 256) -> list[tuple]:
    """The parameter shapes of an MDTv2 (patch 2, 32x32x4 latents, learned sigma), in model order."""
    block = [(3 * D, D), (3 * D,), (D, D), (D,),  # attention qkv, proj
             (4 * D, D), (4 * D,), (D, 4 * D), (D,),  # mlp fc1, fc2
             (6 * D, D), (6 * D,),  # adaLN modulation
             ((2 * grid - 1) ** 2 + 3, heads)]  # relative position bias table
    out = patch * patch * in_ch * 2
    shapes = [(D, in_ch, patch, patch), (D,)]  # patch embedding
    shapes += [(D, freq_dim), (D,), (D, D), (D,)]  # timestep embedder MLP
    shapes += [(num_classes + 1, D)]  # label table (+1: the CFG null class)
    shapes += [(1, grid * grid, D)] * 2  # pos_embed, decoder_pos_embed
    shapes += block * blocks + [(D, 2 * D), (D,)] * skips
    shapes += [(2 * D, D), (2 * D,), (out, D), (out,)]  # final layer: adaLN, linear
    shapes += [(1, 1, D)]  # mask_token
    n = sum(torch.Size(s).numel() for s in shapes)
    if total is not None and n != total:
        raise AssertionError(f"MDTv2 D={D}: {n} parameters, expected {total}")
    return shapes


def optimizer_providers(params: list[torch.Tensor], device: torch.device, dtype: torch.dtype) -> list[tuple]:
    """(name, bytes moved per parameter, build) for each optimizer step to time; build() -> (holder, step)."""
    ps, gs, ss = dtype.itemsize, dtype.itemsize, 4  # Adan state is fp32; AdamW's is in the param dtype
    adan_kernel_bytes = 2 * ps + gs + 8 * ss
    adamw_bytes = 2 * ps + gs + 4 * ps

    def adan(fused: bool | None, backend: str | None):
        opt = Adan(params, lr=5e-4, weight_decay=0.02, max_grad_norm=1.0, fused=fused)

        def step():
            if backend is None:
                opt.step()
            else:
                with mk.use_backend(backend):
                    opt.step()

        return opt, step

    def kernel_only(backend: str):
        states = [[torch.zeros_like(p, dtype=torch.float32) for p in params] for _ in range(4)]
        coef = torch.tensor(0.5, device=device)
        grads = [p.grad for p in params]
        data = [p.detach() for p in params]
        return states, lambda: mk.adan_step(data, grads, *states, lr=5e-4, step=10, weight_decay=0.02, clip_coef=coef,
                                            backend=backend)

    def adamw(**kw):
        opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.02, **kw)
        return opt, opt.step

    fused_backends = [b for b in mk.available_backends(device) if b != "reference"
                      and not (b == "triton" and device.type == "cpu")]  # interpreted Triton is not a contender
    providers = [("Adan foreach (reference)", adan_kernel_bytes + gs, lambda: adan(False, None))]
    providers += [(f"Adan fused {b}", adan_kernel_bytes + gs, lambda b=b: adan(True, b)) for b in fused_backends]
    providers += [(f"adan_step kernel only, {b}", adan_kernel_bytes, lambda b=b: kernel_only(b))
                  for b in fused_backends]
    providers += [("AdamW foreach", adamw_bytes, lambda: adamw(foreach=True)),
                  ("AdamW fused", adamw_bytes, lambda: adamw(fused=True))]
    return providers


def rows_for(shape_name: str, device: torch.device, dtype: torch.dtype, min_time: float, bw: float) -> list[dict]:
    spec = MODELS[shape_name]
    shapes = mdt_param_shapes(**spec)
    n = spec["total"]
    gen = torch.Generator(device=device).manual_seed(0)
    params = [torch.randn(s, generator=gen, device=device, dtype=dtype).requires_grad_() for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, device=device, dtype=dtype)
    providers = optimizer_providers(params, device, dtype)

    rows = []
    for name, bytes_per_param, build in providers:
        try:
            holder, fn = build()
            ms = 1e3 * median_time(fn, device, min_time=min_time)
        except (RuntimeError, ValueError) as e:  # e.g. a fused AdamW this torch lacks for the device
            print(f"  {name}: skipped ({str(e).splitlines()[0]})")
            continue
        finally:
            holder = fn = None  # noqa: F841 - free optimizer state before the next provider allocates
            gc.collect()
        gbps = bytes_per_param * n / (ms / 1e3) / 1e9
        min_ms = 1e3 * bytes_per_param * n / (bw * 1e9)
        rows.append(dict(shape=shape_name, params=n, provider=name, ms=ms, bytes_per_param=bytes_per_param,
                         gbps=gbps, x_min=ms / min_ms))
        print(f"  {name}: {ms:.2f} ms, {gbps:.1f} GB/s, {ms / min_ms:.2f}x the minimal-bytes time", flush=True)
    base = next((r["ms"] for r in rows if r["provider"].startswith("Adan foreach")), None)
    for r in rows:
        r["speedup_vs_adan_foreach"] = base / r["ms"] if base else None
    return rows


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = table_head(
        f"Optimizer step ({meta['dtype']} parameters)", meta,
        "Median ms per step. Adan: lr 5e-4, weight_decay 0.02, max_grad_norm 1, fp32 state. B/param: minimal bytes "
        "moved per parameter; x min: time over the time of those bytes at copy bandwidth.",
        ["model", "params", "provider", "ms", "vs Adan foreach", "B/param", "GB/s", "% copy", "x min"])
    for r in rows:
        speed = f"{r['speedup_vs_adan_foreach']:.2f}x" if r["speedup_vs_adan_foreach"] else "-"
        lines.append(f"| MDTv2-{r['shape']} | {r['params']:,} | {r['provider']} | {r['ms']:.2f} | {speed} | "
                     f"{r['bytes_per_param']} | {r['gbps']:.1f} | {100 * r['gbps'] / meta['copy_gbps']:.0f}% | "
                     f"{r['x_min']:.2f} |")
    notes = ["", "B/param is what each step needs at least, not what it moves: the foreach rows move several times "
             "more (sail-sg's Adan foreach sequence ~184 B/param). The copy bandwidth is torch's copy_ of buffers far "
             "beyond the caches, counted as read + write; a copy also pays a write-allocate read of its destination, "
             "while every array the Adan kernel writes it has just read, so a kernel can exceed 100% of it."]
    return "\n".join(lines + notes + meta.get("notes", [])) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The command line (benchmarks/gpu_session.sh is checked against it by the tests)."""
    return run_parser(__doc__, DTYPES, MODELS, min_time=1.0)


def main(argv=None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    shapes = split_choices(p, args.shapes, MODELS, "shape")

    meta = run_meta(device, args.dtype)
    meta["notes"], bw = [], meta["copy_gbps"]
    rows = []
    for name in shapes:
        if name == "XL/2" and device.type != "cuda":
            note = ("XL/2 skipped: 742M parameters need ~18 GB of fp32 parameter, gradient and state tensors; "
                    "it runs on a GPU only.")
            print(note)
            meta["notes"] += ["", note]
            continue
        print(f"MDTv2-{name}: {MODELS[name]['total']:,} parameters")
        rows += rows_for(name, device, dtype, args.min_time, bw)

    write_results(args.out, "optim_step", device, meta, rows, markdown)

if __name__ == "__main__":
    main()
