"""One training step of `mdt train`, and the one function that sets it up (`build_train_step`).

t ~ U{0..999} -> Objective (MDTv2: full + masked pass; DiT: one pass), under autocast for bf16 ->
loss.mean().backward() -> optimizer (Adan) step -> EMA update. The trainer (mdt.train) and the benchmark
of its step (benchmarks/train_step.py) both build it here, so what is benchmarked is what trains.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from .diffusion import MIN_SNR_GAMMA, create_diffusion
from .models import build_model
from .optim import Adan
from .utils import Dist

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
OPTIMIZERS = ("adan", "adamw")


@dataclass
class TrainConfig:
    model: str = "MDTv2-S/2"  # a name of mdt.models.MODELS
    data: str = "digits"  # "digits", "mnist", a `mdt prepare-latents` folder, or an image folder (encoded per step)
    vae: str | None = None  # VAE for image folders (default stabilityai/sd-vae-ft-mse)
    image_size: int = 256  # image folders: center-crop size
    out: str = "runs/mdt"  # output folder: checkpoints/, metrics.jsonl, loss.png, samples.png, eval.json
    batch_size: int = 256  # global batch, split over the ranks
    steps: int = 400_000  # total optimizer steps (a resumed run counts from its checkpoint's step)
    optimizer: str = "adan"  # "adan" (MDT) or "adamw" (DiT)
    lr: float = 5e-4  # MDT's lr for S/2 (run.sh); constant, no warm-up
    betas: tuple = (0.98, 0.92, 0.99)  # Adan's (AdamW uses the first two)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # global-norm clipping (Adan's max_grad_norm)
    ema_decay: float = 0.9999
    class_dropout: float = 0.1  # labels dropped to the null class (classifier-free guidance)
    mask_ratio: float = 0.3  # MDTv2 masked pass
    min_snr_gamma: float | None = MIN_SNR_GAMMA  # MDTv2 loss weighting; DiT models use none
    fused: bool = True  # mdt_kernels' fused ops and the fused Adan step (False: the PyTorch reference)
    precision: str = "fp32"  # "fp32" or "bf16" (autocast; weights, optimizer and EMA stay fp32)
    compile: bool = False  # torch.compile the training objective
    seed: int = 0
    device: str = "auto"  # "auto": the rank's GPU when there is one, else CPU
    threads: int = 0  # CPU threads per rank (0: torch's default)
    log_every: int = 50
    ckpt_every: int = 1000
    keep_last: int = 0  # checkpoints kept (0: all)
    eval_every: int = 0  # digits, mnist: sample + evaluate the EMA model every N steps (0: only at the end)
    eval_samples: int = 500  # samples per evaluation (digits, mnist)
    sample_steps: int = 100  # DDPM steps for evaluation samples and the final grid
    cfg_scale: float = 1.5  # guidance for evaluation samples and the grid (<= 1: none)
    progress: bool = True

    def is_mdt(self) -> bool:
        return self.model.startswith("MDT")


#################################################################################
#                                 Building blocks                               #
#################################################################################

class Objective(nn.Module):
    """The training loss as one module (so DDP and torch.compile see one forward per step):
    MDTv2: full pass + masked pass (diffusion.mdt_training_losses); DiT: one pass. Returns per-sample terms."""

    def __init__(self, model, diffusion, masked: bool):
        super().__init__()
        self.model, self.diffusion, self.masked = model, diffusion, masked

    def forward(self, x, t, y):
        if self.masked:
            return self.diffusion.mdt_training_losses(self.model, x, t, {"y": y})
        return self.diffusion.training_losses(self.model, x, t, {"y": y})


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, one multi-tensor lerp over all parameters."""
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)


def autocast_context(precision: str, device: torch.device):
    """bf16: autocast (weights, optimizer state and EMA stay fp32); fp32: nothing."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def make_optimizer(cfg: TrainConfig, params):
    if cfg.optimizer == "adan":
        return Adan(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                    max_grad_norm=cfg.max_grad_norm, fused=cfg.fused)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas[:2]), weight_decay=cfg.weight_decay)


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def step_seed(seed: int, rank: int) -> int:
    """Seed of a rank's per-step randomness (timesteps, noise, masks, data augmentation), drawn after the
    model is built: the model is the same on every rank, the draws are not."""
    return seed * 1_000_003 + 1 + rank


#################################################################################
#                                 The training step                             #
#################################################################################

def model_config(cfg: TrainConfig, input_size: int, in_channels: int, num_classes: int) -> dict:
    """The run's options plus what the data set fixes: enough to rebuild the model (build_model). DiT models
    train without loss weighting, so their cfg.min_snr_gamma is set to None here."""
    if cfg.min_snr_gamma is not None and not cfg.is_mdt():
        cfg.min_snr_gamma = None  # DiT's loss has no weighting
    return {**dataclasses.asdict(cfg), "input_size": input_size, "in_channels": in_channels,
            "num_classes": num_classes, "class_dropout_prob": cfg.class_dropout, "learn_sigma": True}


@dataclass
class TrainStep:
    """What a training step works on; calling it takes one step on the batch (x, y)."""

    model: nn.Module
    ema: nn.Module
    opt: torch.optim.Optimizer
    diffusion: object
    step_fn: nn.Module  # the Objective, wrapped in DDP and torch.compile as configured
    autocast: object
    ema_decay: float

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """t ~ U{0..T-1} -> objective (both passes for MDTv2) -> backward -> optimizer -> EMA. Returns (terms, loss)."""
        t = torch.randint(0, self.diffusion.num_timesteps, (x.shape[0],), device=x.device)
        with self.autocast:
            terms = self.step_fn(x, t, y)
        loss = terms["loss"].float().mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        update_ema(self.ema, self.model, self.ema_decay)
        return terms, loss


def build_train_step(cfg: TrainConfig, config: dict, device: torch.device, d: Dist | None = None,
                     state: dict | None = None) -> TrainStep:
    """Model (from `config`, see model_config), EMA, optimizer, diffusion and Objective of a run, and the
    per-step random generators seeded for rank d.rank; `state` (a checkpoint) restores weights, optimizer and
    the generators. The model, EMA and optimizer are identical on every rank (same seed)."""
    d = d or Dist()
    torch.manual_seed(cfg.seed)
    model = build_model(config).to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    diffusion = create_diffusion("", min_snr_gamma=cfg.min_snr_gamma)
    torch.manual_seed(step_seed(cfg.seed, d.rank))
    if device.type == "cuda":
        torch.cuda.manual_seed(step_seed(cfg.seed, d.rank))
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        rngs = state["rng"]
        if len(rngs) == d.world:
            set_rng_state(rngs[d.rank], device)
        elif d.main:
            warnings.warn(f"the checkpoint was written by {len(rngs)} ranks, this run has {d.world}: random "
                          "draws are reseeded, so the run will not repeat the original one", stacklevel=3)

    objective = Objective(model, diffusion, masked=cfg.is_mdt()).to(device)
    if d.world > 1:
        ddp_kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
        objective = nn.parallel.DistributedDataParallel(objective, **ddp_kwargs)
    step_fn = torch.compile(objective) if cfg.compile else objective
    model.train()
    return TrainStep(model=model, ema=ema, opt=opt, diffusion=diffusion, step_fn=step_fn,
                     autocast=autocast_context(cfg.precision, device), ema_decay=cfg.ema_decay)
