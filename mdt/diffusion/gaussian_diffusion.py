"""Gaussian diffusion for training and sampling MDTv2 and DiT (the IDDPM formulation of DiT and MDT).

Forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) over T steps; the model predicts eps (or x_0)
and, with a learned range, interpolates its log-variance between the posterior's and beta_t. Training loss:
(min-SNR-weighted) MSE on eps + the variational bound term that trains the variance (IDDPM "hybrid").
MDTv2 adds min-SNR-5 weighting of the MSE and a two-pass loss (full pass + masked pass).
References: openai/improved-diffusion, openai/guided-diffusion, facebookresearch/DiT (diffusion/),
sail-sg/MDT (masked_diffusion/gaussian_diffusion.py), Hang et al. 2023 (min-SNR weighting).
Schedules are kept in float64; per-step coefficients are looked up per batch element.
"""

from __future__ import annotations

import enum
import math

import torch

from .diffusion_utils import discretized_gaussian_log_likelihood, mean_flat, normal_kl

LINEAR_BETA_START, LINEAR_BETA_END = 1e-4, 0.02  # Ho et al. for T = 1000, rescaled by 1000 / T
COSINE_S, MAX_BETA = 0.008, 0.999  # the squared-cosine schedule of IDDPM


class ModelMeanType(enum.Enum):
    """What the model's first C channels predict."""

    START_X = enum.auto()  # x_0
    EPSILON = enum.auto()  # the noise eps


class ModelVarType(enum.Enum):
    """The reverse-process variance: learned within [posterior variance, beta_t], or fixed to either end."""

    LEARNED_RANGE = enum.auto()
    FIXED_SMALL = enum.auto()  # posterior variance
    FIXED_LARGE = enum.auto()  # beta_t


class LossType(enum.Enum):
    MSE = enum.auto()  # MSE (+ the VB term when the variance is learned)
    RESCALED_MSE = enum.auto()  # same, VB term scaled by T / 1000
    KL = enum.auto()  # the variational bound alone
    RESCALED_KL = enum.auto()  # the variational bound scaled by T (estimates the full bound)


def get_named_beta_schedule(name, num_diffusion_timesteps):
    """(T,) float64 betas: "linear" (DDPM, rescaled to T steps) or "squaredcos_cap_v2" (IDDPM cosine)."""
    if name == "linear":
        scale = 1000 / num_diffusion_timesteps
        return torch.linspace(scale * LINEAR_BETA_START, scale * LINEAR_BETA_END, num_diffusion_timesteps,
                              dtype=torch.float64)
    if name == "squaredcos_cap_v2":
        def alpha_bar(s):
            return math.cos((s + COSINE_S) / (1 + COSINE_S) * math.pi / 2) ** 2
        T = num_diffusion_timesteps
        return torch.tensor([min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), MAX_BETA) for i in range(T)],
                            dtype=torch.float64)
    raise ValueError(f"unknown beta schedule {name!r}; choose \"linear\" or \"squaredcos_cap_v2\"")


class GaussianDiffusion:
    """Training losses and DDPM/DDIM samplers for a discrete-time Gaussian diffusion with the given betas."""

    def __init__(self, *, betas, model_mean_type, model_var_type, loss_type, min_snr_gamma=None):
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type
        self.min_snr_gamma = min_snr_gamma
        betas = torch.as_tensor(betas, dtype=torch.float64)
        assert betas.dim() == 1 and (betas > 0).all() and (betas <= 1).all()
        self.num_timesteps = betas.shape[0]
        self.betas = betas
        self.log_betas = torch.log(betas)
        alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([betas.new_ones(1), self.alphas_cumprod[:-1]])
        # q(x_t | x_0)
        self.one_minus_alphas_cumprod = 1.0 - self.alphas_cumprod
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.log_one_minus_alphas_cumprod = torch.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1).sqrt()
        # q(x_{t-1} | x_t, x_0); its variance is 0 at t = 0, so the log is clipped to the value at t = 1
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / (1.0 - self.alphas_cumprod)
        # FIXED_LARGE uses beta_t, with the posterior variance at t = 0 for a better decoder likelihood
        self.large_variance = torch.cat([self.posterior_variance[1:2], betas[1:]])
        # min-SNR-gamma weight of the MSE term: min(SNR, gamma) / SNR for eps, min(SNR, gamma) for x_0
        snr = self.alphas_cumprod / (1.0 - self.alphas_cumprod)
        if min_snr_gamma is None:
            self.mse_loss_weight = torch.ones_like(snr)
        elif model_mean_type == ModelMeanType.EPSILON:
            self.mse_loss_weight = snr.clamp(max=min_snr_gamma) / snr
        else:
            self.mse_loss_weight = snr.clamp(max=min_snr_gamma)
        self._device_tables = {}

    def _extract(self, name, t, x):
        """Schedule ``name`` at steps t (B,), shaped (B, 1, ..., 1) to broadcast against x; float32 (float64 for
        float64 x). The tables are copied to each device once."""
        key = (name, t.device)
        table = self._device_tables.get(key)
        if table is None:
            table = self._device_tables[key] = getattr(self, name).to(t.device)
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        return table[t].to(dtype).view(-1, *([1] * (x.dim() - 1)))

    ######################################################################
    # Forward process and posterior

    def q_mean_variance(self, x_start, t):
        """Mean, variance and log-variance of q(x_t | x_0)."""
        mean = self._extract("sqrt_alphas_cumprod", t, x_start) * x_start
        variance = self._extract("one_minus_alphas_cumprod", t, x_start).expand_as(x_start)
        log_variance = self._extract("log_one_minus_alphas_cumprod", t, x_start).expand_as(x_start)
        return mean, variance, log_variance

    def q_sample(self, x_start, t, noise=None):
        """Draws x_t ~ q(x_t | x_0) = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise."""
        if noise is None:
            noise = torch.randn_like(x_start)
        assert noise.shape == x_start.shape
        return (self._extract("sqrt_alphas_cumprod", t, x_start) * x_start
                + self._extract("sqrt_one_minus_alphas_cumprod", t, x_start) * noise)

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        assert x_start.shape == x_t.shape
        mean = (self._extract("posterior_mean_coef1", t, x_t) * x_start
                + self._extract("posterior_mean_coef2", t, x_t) * x_t)
        variance = self._extract("posterior_variance", t, x_t).expand_as(x_t)
        log_variance = self._extract("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        return mean, variance, log_variance

    def _predict_xstart_from_eps(self, x_t, t, eps):
        return (self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t
                - self._extract("sqrt_recipm1_alphas_cumprod", t, x_t) * eps)

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        return ((self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t - pred_xstart)
                / self._extract("sqrt_recipm1_alphas_cumprod", t, x_t))

    ######################################################################
    # Reverse process

    def _split_variance(self, model_output, x, t):
        """model output -> (mean prediction, variance, log-variance) of p(x_{t-1} | x_t)."""
        C = x.shape[1]
        if self.model_var_type == ModelVarType.LEARNED_RANGE:
            assert model_output.shape == (x.shape[0], 2 * C, *x.shape[2:])
            model_output, var_values = torch.split(model_output, C, dim=1)
            min_log = self._extract("posterior_log_variance_clipped", t, x)
            max_log = self._extract("log_betas", t, x)
            frac = (var_values + 1) / 2  # the model's [-1, 1] -> [min, max] log-variance
            log_variance = frac * max_log + (1 - frac) * min_log
            return model_output, torch.exp(log_variance), log_variance
        name = "posterior_variance" if self.model_var_type == ModelVarType.FIXED_SMALL else "large_variance"
        variance = self._extract(name, t, x).expand_as(x)
        return model_output, variance, torch.log(variance)

    def p_mean_variance(self, model, x, t, clip_denoised=True, model_kwargs=None):
        """Applies the model at (x, t): mean, variance, log-variance of p(x_{t-1} | x_t) and the x_0 prediction."""
        assert t.shape == (x.shape[0],)
        model_output, variance, log_variance = self._split_variance(model(x, t, **(model_kwargs or {})), x, t)
        if self.model_mean_type == ModelMeanType.START_X:
            pred_xstart = model_output
        else:
            pred_xstart = self._predict_xstart_from_eps(x, t, model_output)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_xstart": pred_xstart}

    def p_sample(self, model, x, t, clip_denoised=True, model_kwargs=None):
        """One ancestral (DDPM) step x_t -> x_{t-1}; no noise is added at t = 0."""
        out = self.p_mean_variance(model, x, t, clip_denoised, model_kwargs)
        nonzero = (t != 0).float().view(-1, *([1] * (x.dim() - 1)))
        sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * torch.randn_like(x)
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_sample(self, model, x, t, clip_denoised=True, model_kwargs=None, eta=0.0):
        """One DDIM step (Song et al. eq. 12); eta = 0 is deterministic, eta = 1 matches DDPM's variance."""
        out = self.p_mean_variance(model, x, t, clip_denoised, model_kwargs)
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])  # re-derived: valid for any mean type
        alpha_bar = self._extract("alphas_cumprod", t, x)
        alpha_bar_prev = self._extract("alphas_cumprod_prev", t, x)
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        mean_pred = out["pred_xstart"] * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        nonzero = (t != 0).float().view(-1, *([1] * (x.dim() - 1)))
        sample = mean_pred + nonzero * sigma * torch.randn_like(x)
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, model_kwargs=None, device=None,
                                ddim=False, eta=0.0, progress=False):
        """Yields each step's {"sample", "pred_xstart"} from x_T = noise (or a fresh N(0, I) draw) down to t = 0."""
        if device is None:  # model may be a bound method such as model.forward_with_cfg
            device = noise.device if noise is not None else next(getattr(model, "__self__", model).parameters()).device
        img = noise if noise is not None else torch.randn(*shape, device=device)
        indices = list(range(self.num_timesteps))[::-1]
        if progress:
            from tqdm.auto import tqdm  # optional dependency
            indices = tqdm(indices)
        for i in indices:
            t = torch.full((shape[0],), i, device=device, dtype=torch.long)
            with torch.no_grad():
                if ddim:
                    out = self.ddim_sample(model, img, t, clip_denoised, model_kwargs, eta)
                else:
                    out = self.p_sample(model, img, t, clip_denoised, model_kwargs)
            yield out
            img = out["sample"]

    def p_sample_loop(self, model, shape, noise=None, clip_denoised=True, model_kwargs=None, device=None,
                      progress=False):
        """Ancestral (DDPM) sampling over every step of this diffusion; returns x_0 samples of ``shape``."""
        for out in self.sample_loop_progressive(model, shape, noise, clip_denoised, model_kwargs, device,
                                                progress=progress):
            final = out
        return final["sample"]

    def ddim_sample_loop(self, model, shape, noise=None, clip_denoised=True, model_kwargs=None, device=None,
                         progress=False, eta=0.0):
        """DDIM sampling over every step of this diffusion (respace it for fewer steps)."""
        for out in self.sample_loop_progressive(model, shape, noise, clip_denoised, model_kwargs, device,
                                                ddim=True, eta=eta, progress=progress):
            final = out
        return final["sample"]

    ######################################################################
    # Losses

    def _vb_terms_bpd(self, model, x_start, x_t, t, clip_denoised=True, model_kwargs=None):
        """Per-sample variational-bound term in bits/dim: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0,
        the discretized decoder NLL -log p(x_0|x_1) at t = 0."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised, model_kwargs)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / math.log(2.0)
        decoder_nll = -discretized_gaussian_log_likelihood(x_start, means=out["mean"],
                                                           log_scales=0.5 * out["log_variance"])
        decoder_nll = mean_flat(decoder_nll) / math.log(2.0)
        return {"output": torch.where(t == 0, decoder_nll, kl), "pred_xstart": out["pred_xstart"]}

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None):
        """Per-sample losses (B,) of one forward pass at steps t: {"loss", and "mse", "vb" when they apply}."""
        model_kwargs = model_kwargs or {}
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)
        terms = {}
        if self.loss_type in (LossType.KL, LossType.RESCALED_KL):
            terms["loss"] = self._vb_terms_bpd(model, x_start, x_t, t, False, model_kwargs)["output"]
            if self.loss_type == LossType.RESCALED_KL:
                terms["loss"] = terms["loss"] * self.num_timesteps
            return terms
        model_output = model(x_t, t, **model_kwargs)
        if self.model_var_type == ModelVarType.LEARNED_RANGE:
            C = x_t.shape[1]
            assert model_output.shape == (x_t.shape[0], 2 * C, *x_t.shape[2:])
            model_output, var_values = torch.split(model_output, C, dim=1)
            # The bound trains the variance only: the mean prediction enters it detached.
            frozen_out = torch.cat([model_output.detach(), var_values], dim=1)
            terms["vb"] = self._vb_terms_bpd(lambda *args, r=frozen_out: r, x_start, x_t, t, False)["output"]
            if self.loss_type == LossType.RESCALED_MSE:
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)
        target = x_start if self.model_mean_type == ModelMeanType.START_X else noise
        assert model_output.shape == target.shape == x_start.shape
        weight = self._extract("mse_loss_weight", t, t)  # (B,)
        terms["mse"] = weight * mean_flat((target - model_output) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms

    def mdt_training_losses(self, model, x_start, t, model_kwargs=None, noise=None, masked_noise=None,
                            masked_kwargs=None):
        """MDT's loss: a full pass and a masked pass (enable_mask=True) at the same x_0 and t, each with its own
        noise (noise, masked_noise; None: drawn here). masked_kwargs: model arguments of the masked pass only
        (its kept tokens, its label dropout), over model_kwargs. "loss" (B,) is their sum (so loss.mean() =
        mean(full) + mean(masked), for one backward); the masked pass's terms are also returned with the
        prefix "m_"."""
        model_kwargs = model_kwargs or {}
        full = self.training_losses(model, x_start, t, model_kwargs, noise=noise)
        masked = self.training_losses(model, x_start, t, {**model_kwargs, "enable_mask": True, **(masked_kwargs or {})},
                                      noise=masked_noise)
        terms = {**full, **{"m_" + k: v for k, v in masked.items()}}
        terms["loss"] = full["loss"] + masked["loss"]
        return terms

    def prior_bpd(self, x_start):
        """KL(q(x_T | x_0) || N(0, I)) per sample in bits/dim: the bound's term no model can change."""
        t = torch.full((x_start.shape[0],), self.num_timesteps - 1, device=x_start.device, dtype=torch.long)
        mean, _, log_variance = self.q_mean_variance(x_start, t)
        return mean_flat(normal_kl(mean, log_variance, 0.0, 0.0)) / math.log(2.0)
