"""One training step of `mdt train`, and the one function that sets it up (`build_train_step`).

Every random draw of an optimizer step is made first, for the rank's whole batch (timesteps, each pass's noise
and label dropout, the masked pass's kept tokens: MDT draws one mask ratio per step), then the batch runs in
`grad_accum` equal micro-batches: Objective (MDTv2: full + masked pass; DiT: one pass) under autocast for bf16
-> backward of the micro-batch's share of the mean loss, DDP's gradient all-reduce on the last one only. So an
accumulated step computes the update of one step on the whole batch. Then the step is judged on the device
(a non-finite loss or gradient norm: skipped, counted, no host sync) -> optimizer -> EMA.
The trainer (mdt.train) and the benchmarks of its step (benchmarks/train_step.py, step_parts.py) build it here,
so what is benchmarked is what trains.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from .diffusion import MIN_SNR_GAMMA, create_diffusion
from .models import build_model
from .optim import Adan
from .utils import Dist

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
OPTIMIZERS = ("adan", "adamw")
SAMPLERS = ("ddpm", "ddim", "dpm++")  # mdt.sample.SAMPLERS, for the evaluation samples


@dataclass
class TrainConfig:
    model: str = "MDTv2-S/2"  # a name of mdt.models.MODELS
    data: str = "digits"  # "digits", "mnist", a `mdt prepare-latents` folder, or an image folder
    vae: str | None = None  # VAE for image folders (default stabilityai/sd-vae-ft-mse; "none": pixels)
    image_size: int = 256  # image folders: center-crop size
    num_classes: int | None = None  # None: the data set's classes; 0: unconditional (labels ignored)
    decode_layer: int | None = None  # MDTv2 decoder blocks (None: the model's published depth)
    out: str = "runs/mdt"  # output folder: checkpoints/, metrics.jsonl, loss.png, samples.png, eval.json
    batch_size: int = 256  # global batch, split over the ranks (and their micro-batches)
    grad_accum: int = 1  # micro-batches per optimizer step on each rank
    steps: int = 400_000  # total optimizer steps (a resumed run counts from its checkpoint's step)
    optimizer: str = "adan"  # "adan" (MDT) or "adamw" (DiT)
    lr: float = 5e-4  # MDT's lr for S/2 (run.sh); constant, no warm-up
    betas: tuple = (0.98, 0.92, 0.99)  # Adan's (AdamW uses the first two)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # global-norm clipping (0: none)
    ema_decay: float = 0.9999
    class_dropout: float = 0.1  # labels dropped to the null class (classifier-free guidance)
    mask_ratio: float = 0.3  # MDTv2 masked pass
    min_snr_gamma: float | None = MIN_SNR_GAMMA  # MDTv2 loss weighting; DiT models use none
    fused: bool = True  # mdt_kernels' fused ops and the fused Adan step (False: the PyTorch reference)
    precision: str = "fp32"  # "fp32" or "bf16" (autocast; weights, optimizer and EMA stay fp32)
    compile: bool = False  # torch.compile the training objective
    grad_checkpoint: bool = False  # recompute each transformer block in the backward (less activation memory)
    seed: int = 0
    device: str = "auto"  # "auto": the rank's GPU when there is one, else CPU
    threads: int = 0  # CPU threads per rank (0: torch's default)
    max_bad_steps: int = 20  # non-finite steps in a row (each skipped) that stop the run
    log_every: int = 50
    ckpt_every: int = 1000
    keep_last: int = 0  # checkpoints kept (0: all)
    tensorboard: bool = False  # also write the metrics as TensorBoard scalars (out/tensorboard)
    eval_every: int = 0  # digits, mnist: sample + evaluate the EMA model every N steps (0: only at the end)
    eval_samples: int = 500  # samples per evaluation (digits, mnist)
    sampler: str = "ddpm"  # sampler of the evaluation samples and the final grid
    sample_steps: int = 100  # its steps
    cfg_scale: float = 1.5  # guidance for evaluation samples and the grid (<= 1: none)
    progress: bool = True

    def __post_init__(self):
        if not self.is_mdt():
            self.min_snr_gamma = None  # DiT's loss has no weighting

    def is_mdt(self) -> bool:
        return self.model.startswith("MDT")


#################################################################################
#                                 Building blocks                               #
#################################################################################

class Objective(nn.Module):
    """The training loss as one module (so DDP and torch.compile see one forward per step): MDTv2's full and
    masked passes, or DiT's one pass, with the step's random draws (`draws`, see TrainStep.draw) given.
    Returns per-sample terms."""

    def __init__(self, model, diffusion, masked: bool):
        super().__init__()
        self.model, self.diffusion, self.masked = model, diffusion, masked

    def forward(self, x, t, y, draws: dict):
        kwargs = {"y": y, "force_drop_ids": draws.get("drop")}
        if not self.masked:
            return self.diffusion.training_losses(self.model, x, t, kwargs, noise=draws["noise"])
        return self.diffusion.mdt_training_losses(
            self.model, x, t, kwargs, noise=draws["noise"], masked_noise=draws["m_noise"],
            masked_kwargs={"force_drop_ids": draws.get("m_drop"), "ids_keep": draws["ids_keep"]})


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, good: torch.Tensor | None = None) -> None:
    """ema <- decay * ema + (1 - decay) * model, one multi-tensor lerp over all parameters; with `good` (a 0-d
    bool on the device) false, ema stays as it is (a skipped step), decided on the device."""
    weight = 1.0 - decay if good is None else (1.0 - decay) * good.float()
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], weight)


def autocast_context(precision: str, device: torch.device):
    """bf16: autocast (weights, optimizer state and EMA stay fp32); fp32: nothing."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def make_optimizer(cfg: TrainConfig, params):
    """Adan (skipping non-finite steps on the device), or AdamW in its fused form (which skips a step when its
    found_inf is set, also on the device)."""
    if cfg.optimizer == "adan":
        return Adan(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                    max_grad_norm=cfg.max_grad_norm, fused=cfg.fused, nonfinite="skip")
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas[:2]), weight_decay=cfg.weight_decay, fused=True)


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
    """The run's options plus what the data set fixes: enough to rebuild the model (build_model). An
    unconditional run (num_classes 0) has no class dropout."""
    classes = num_classes if cfg.num_classes is None else cfg.num_classes
    return {**dataclasses.asdict(cfg), "input_size": input_size, "in_channels": in_channels,
            "num_classes": classes, "class_dropout_prob": cfg.class_dropout if classes else 0.0,
            "learn_sigma": True}


class StepHealth:
    """Non-finite steps, counted on the device: in total, in the current run of consecutive ones, and the
    step at which a run first reached `limit` (-1: never). Reading them is the caller's host sync."""

    def __init__(self, device: torch.device, limit: int):
        self.limit = limit
        self.total = torch.zeros((), dtype=torch.int64, device=device)
        self.run = torch.zeros((), dtype=torch.int64, device=device)
        self.stop_at = torch.full((), -1, dtype=torch.int64, device=device)

    def record(self, bad: torch.Tensor, step: int) -> None:
        self.total += bad
        self.run = (self.run + 1) * bad
        self.stop_at = torch.where((self.stop_at < 0) & (self.run >= self.limit), step, self.stop_at)


@dataclass
class TrainStep:
    """What a training step works on; calling it takes one optimizer step on the batch (x, y)."""

    model: nn.Module
    ema: nn.Module
    opt: torch.optim.Optimizer
    diffusion: object
    step_fn: nn.Module  # the Objective, wrapped in DDP and torch.compile as configured
    autocast: object
    ema_decay: float
    grad_accum: int = 1
    max_grad_norm: float = 0.0  # AdamW's clipping (Adan clips inside its step)
    health: StepHealth | None = None
    grad_norm: torch.Tensor | None = None  # of the last step, before clipping, on the device

    def draw(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """(t, draws): every random choice of one step for the batch x, per sample (sliced with it)."""
        B, device, model = x.shape[0], x.device, self.model
        t = torch.randint(0, self.diffusion.num_timesteps, (B,), device=device)
        labels = getattr(model, "y_embedder", None)
        p_drop = labels.dropout_prob if labels is not None else 0.0

        def drops():  # on the CPU generator, like DiT's and MDT's label dropout
            return (torch.rand(B) < p_drop).to(device) if p_drop > 0 else None

        draws = {"noise": torch.randn_like(x), "drop": drops()}
        if getattr(model, "mask_ratio", None) is not None:
            draws.update(m_noise=torch.randn_like(x), m_drop=drops(),
                         ids_keep=model.random_ids_keep(B, model.x_embedder.num_patches, device))
        return t, draws

    def __call__(self, x: torch.Tensor, y: torch.Tensor, step: int = 0) -> tuple[dict, torch.Tensor]:
        """One optimizer step (numbered `step`, for the health record). Returns (terms of the whole batch,
        mean loss); a step with a non-finite loss or gradient norm leaves weights and EMA as they were."""
        t, draws = self.draw(x)
        self.opt.zero_grad(set_to_none=True)
        n, micro = self.grad_accum, x.shape[0] // self.grad_accum
        parts = []
        for i in range(n):
            sl = slice(i * micro, (i + 1) * micro)
            mb = {k: (v[sl] if v is not None else None) for k, v in draws.items()}
            sync = contextlib.nullcontext() if i == n - 1 or not hasattr(self.step_fn, "no_sync") \
                else self.step_fn.no_sync()  # DDP all-reduces the gradients once, on the last micro-batch
            with sync:
                with self.autocast:
                    terms = self.step_fn(x[sl], t[sl], y[sl], mb)
                (terms["loss"].float().mean() / n).backward()
            parts.append({k: v.detach() for k, v in terms.items()})
        terms = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        loss = terms["loss"].float().mean()
        bad = self._optimizer_step(loss)
        if self.health is not None:
            self.health.record(bad, step)
        update_ema(self.ema, self.model, self.ema_decay, ~bad)
        return terms, loss

    def _optimizer_step(self, loss: torch.Tensor) -> torch.Tensor:
        """The optimizer's step unless the loss or the gradient norm is not finite; returns that verdict (0-d
        bool on the device) and leaves the norm in self.grad_norm."""
        bad_loss = ~torch.isfinite(loss)
        if dist.is_initialized() and dist.get_world_size() > 1:  # every rank skips the same steps
            flag = bad_loss.to(torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            bad_loss = flag.bool()
        if isinstance(self.opt, Adan):
            self.opt.found_inf = bad_loss
            self.opt.step()
            self.grad_norm = self.opt.last_grad_norm
        else:  # fused AdamW reads found_inf; clipping by the same global norm as Adan's
            params = [p for g in self.opt.param_groups for p in g["params"] if p.grad is not None]
            grads = [p.grad for p in params]
            self.grad_norm = torch.nn.utils.get_total_norm(grads)
            if self.max_grad_norm > 0:
                torch.nn.utils.clip_grads_with_norm_(params, self.max_grad_norm, self.grad_norm)
            self.opt.found_inf = (bad_loss | ~torch.isfinite(self.grad_norm)).float()
            self.opt.step()
        return bad_loss | ~torch.isfinite(self.grad_norm)


def build_train_step(cfg: TrainConfig, config: dict, device: torch.device, d: Dist | None = None,
                     state: dict | None = None) -> TrainStep:
    """Model (from `config`, see model_config), EMA, optimizer, diffusion and Objective of a run, and the
    per-step random generators seeded for rank d.rank; `state` (a checkpoint) restores weights, optimizer and
    the generators. The model, EMA and optimizer are identical on every rank (same seed)."""
    d = d or Dist()
    torch.manual_seed(cfg.seed)
    model = build_model(config).to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    model.grad_checkpoint = cfg.grad_checkpoint
    opt = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    diffusion = create_diffusion("", min_snr_gamma=cfg.min_snr_gamma)
    torch.manual_seed(step_seed(cfg.seed, d.rank))
    if device.type == "cuda":
        torch.cuda.manual_seed(step_seed(cfg.seed, d.rank))
    if state is not None:
        _restore(state, model, ema, opt, d, device)
    objective = Objective(model, diffusion, masked=cfg.is_mdt()).to(device)
    if d.world > 1:
        ddp_kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
        objective = nn.parallel.DistributedDataParallel(objective, **ddp_kwargs)
    step_fn = torch.compile(objective) if cfg.compile else objective
    model.train()
    return TrainStep(model=model, ema=ema, opt=opt, diffusion=diffusion, step_fn=step_fn,
                     autocast=autocast_context(cfg.precision, device), ema_decay=cfg.ema_decay,
                     grad_accum=cfg.grad_accum, max_grad_norm=cfg.max_grad_norm if cfg.optimizer == "adamw" else 0.0,
                     health=StepHealth(device, cfg.max_bad_steps))


def _restore(state: dict, model, ema, opt, d: Dist, device: torch.device) -> None:
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["opt"])
    rngs = state["rng"]
    if len(rngs) == d.world:
        set_rng_state(rngs[d.rank], device)
    elif d.main:
        warnings.warn(f"the checkpoint was written by {len(rngs)} ranks, this run has {d.world}: random "
                      "draws are reseeded, so the run will not repeat the original one", stacklevel=3)
