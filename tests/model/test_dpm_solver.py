"""DPM-Solver++(2M) (mdt.diffusion.dpm_solver) against diffusers' DPMSolverMultistepScheduler, against the
published update rule re-derived here in float64, and against the exact probability-flow ODE solution for
Gaussian data (second-order convergence)."""

import math

import numpy as np
import pytest
import torch

from mdt.diffusion import create_diffusion
from mdt.diffusion.dpm_solver import dpm_solver_pp_sample_loop

SHAPE = (3, 2, 4, 4)


def toy_eps(x, t):
    """A smooth deterministic eps 'model' of (x, original step t)."""
    s = (t.double() / 1000).view(-1, 1, 1, 1)
    return (0.6 * torch.tanh(x.double()) + 0.3 * torch.sin(3 * s + x.double()) * s).to(x.dtype)


class EpsModel:
    def __init__(self, learned_sigma=False):
        self.learned_sigma = learned_sigma

    def __call__(self, x, t, **kwargs):
        eps = toy_eps(x, t)
        if self.learned_sigma:  # the variance channels must not change the ODE solution
            return torch.cat([eps, torch.rand_like(eps) * 2 - 1], dim=1)
        return eps


def reference_dpmpp_2m(abar, timesteps, x, eps_fn):
    """Lu et al. 2022 (DPM-Solver++, Algorithm 2, multistep, data prediction) written out in float64 from the
    paper: t_0 = 0 (abar = 1) ... t_M; first order at the first and the last step."""
    abar = [1.0] + [float(a) for a in abar]  # position 0: the clean end, sigma = 0
    steps = [None] + list(timesteps)
    M = len(abar) - 1
    alpha = [math.sqrt(a) for a in abar]
    sigma = [math.sqrt(1 - a) for a in abar]
    lam = [math.log(a / s) if s > 0 else math.inf for a, s in zip(alpha, sigma)]
    x = x.double()
    prev = None
    for i in range(M, 0, -1):  # from position i to i - 1
        t = torch.full((x.shape[0],), steps[i], dtype=torch.long)
        data = (x - sigma[i] * eps_fn(x, t)) / alpha[i]
        h = lam[i - 1] - lam[i]
        if i == 1:  # h = inf: x_0 = sigma_0/sigma_1 x - alpha_0 (e^-inf - 1) D = D
            return data
        if prev is None:
            d = data
        else:
            r = (lam[i] - lam[i + 1]) / h
            d = (1 + 1 / (2 * r)) * data - 1 / (2 * r) * prev
        x = sigma[i - 1] / sigma[i] * x - alpha[i - 1] * (math.exp(-h) - 1) * d
        prev = data
    raise AssertionError("unreachable")


@pytest.mark.parametrize("steps", [5, 12, 25])
def test_matches_the_published_update_rule_in_float64(steps):
    diffusion = create_diffusion(str(steps), learn_sigma=False)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(steps), dtype=torch.float64)
    got = dpm_solver_pp_sample_loop(diffusion, EpsModel(), SHAPE, noise=x, clip_denoised=False)
    want = reference_dpmpp_2m(diffusion.alphas_cumprod.tolist(), diffusion.timestep_map, x, toy_eps)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_learned_sigma_channels_do_not_change_the_solution():
    learned, fixed = create_diffusion("10"), create_diffusion("10", learn_sigma=False)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    a = dpm_solver_pp_sample_loop(learned, EpsModel(learned_sigma=True), SHAPE, noise=x, clip_denoised=False)
    b = dpm_solver_pp_sample_loop(fixed, EpsModel(), SHAPE, noise=x, clip_denoised=False)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("steps", [6, 20])
def test_matches_diffusers_on_the_same_betas_and_timesteps(steps):
    from diffusers import DPMSolverMultistepScheduler

    diffusion = create_diffusion(str(steps), learn_sigma=False)
    base = create_diffusion("", learn_sigma=False)
    sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, trained_betas=base.betas.numpy(),
                                        algorithm_type="dpmsolver++", solver_order=2, prediction_type="epsilon",
                                        final_sigmas_type="zero", lower_order_final=True)
    sched.set_timesteps(timesteps=list(reversed(diffusion.timestep_map)))
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    ours = dpm_solver_pp_sample_loop(diffusion, EpsModel(), SHAPE, noise=x, clip_denoised=False)
    theirs = x.clone()
    for t in sched.timesteps:
        theirs = sched.step(toy_eps(theirs, t.expand(len(theirs))), t, theirs).prev_sample
    # diffusers keeps its sigmas in float32: agreement to float32 round-off over the steps
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def gaussian_case(mu=0.7, s=0.5):
    """Data N(mu, s^2): the exact eps prediction and the exact probability-flow ODE map from x_T to x_0."""
    full = create_diffusion("", learn_sigma=False).alphas_cumprod

    def eps(x, t):
        a = full[t].view(-1, 1, 1, 1).to(x.dtype)
        var = a * s**2 + 1 - a  # marginal variance of x_t
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / var

    def ode_end(x_T):
        a = full[-1].item()
        return mu + s * (x_T - math.sqrt(a) * mu) / math.sqrt(a * s**2 + 1 - a)
    return eps, ode_end


def test_converges_to_the_exact_ode_solution_at_second_order():
    """On the time-uniform grid (as DiT/MDT respace and diffusers' "linspace") the first and last steps are long
    in lambda, so few-step errors are not in the asymptotic regime; from 80 steps on doubling the steps divides
    DPM-Solver++(2M)'s error by about 4 and DDIM's (first order) by about 2."""
    eps, ode_end = gaussian_case()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    want = ode_end(x)
    err = {}
    for steps in (80, 160, 320):
        diffusion = create_diffusion(str(steps), learn_sigma=False)
        dpm = dpm_solver_pp_sample_loop(diffusion, eps, SHAPE, noise=x, clip_denoised=False)
        ddim = diffusion.ddim_sample_loop(eps, SHAPE, noise=x, clip_denoised=False)
        err[steps] = ((dpm - want).abs().max().item(), (ddim - want).abs().max().item())
    for a, b in ((80, 160), (160, 320)):
        dpm_order, ddim_order = np.log2(err[a][0] / err[b][0]), np.log2(err[a][1] / err[b][1])
        assert 1.7 < dpm_order < 2.6 and 0.8 < ddim_order < 1.2, err
        assert err[b][0] < err[b][1] / 3, err


def test_sampler_is_reachable_from_generate():
    from test_mdt_parity import tiny_mdt

    from mdt.sample import generate

    model = tiny_mdt()
    labels = torch.tensor([0, 1])
    a = generate(model, labels, sampler="dpm++", steps=4, cfg_scale=2.0, seed=3)
    b = generate(model, labels, sampler="dpm++", steps=4, cfg_scale=2.0, seed=3)
    c = generate(model, labels, sampler="ddim", steps=4, cfg_scale=2.0, seed=3)
    assert a.shape == c.shape and torch.equal(a, b) and torch.isfinite(a).all()
