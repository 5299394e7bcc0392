"""DPM-Solver++(2M) (mdt.diffusion.dpm_solver) against diffusers' DPMSolverMultistepScheduler, against the
published update rule re-derived here in float64, against the exact probability-flow ODE solution for Gaussian
data (closer than DDIM, converging faster), and against DDIM on data concentrated near a few values."""

import math

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
    paper: t_0 = 0 (abar = 1) ... t_M; first order at the first step and at the last two (into the kept step
    t = 0, sigma = 0.01, and from there to sigma = 0: the reference implementations' lower-order final step)."""
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
        if prev is None or i == 2:
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
    """diffusers over the kept steps above t = 0, then a first-order (euler_at_final) step to its sigma_min, the
    sigma of t = 0, and the x_0 prediction there: our grid, with its last two steps first order."""
    from diffusers import DPMSolverMultistepScheduler

    diffusion = create_diffusion(str(steps), learn_sigma=False)
    base = create_diffusion("", learn_sigma=False)
    sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, trained_betas=base.betas.numpy(),
                                        algorithm_type="dpmsolver++", solver_order=2, prediction_type="epsilon",
                                        final_sigmas_type="sigma_min", euler_at_final=True)
    assert diffusion.timestep_map[0] == 0
    sched.set_timesteps(timesteps=list(reversed(diffusion.timestep_map[1:])))
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    ours = dpm_solver_pp_sample_loop(diffusion, EpsModel(), SHAPE, noise=x, clip_denoised=False)
    theirs = x.clone()
    for t in sched.timesteps:
        theirs = sched.step(toy_eps(theirs, t.expand(len(theirs))), t, theirs).prev_sample
    abar0 = base.alphas_cumprod[0].item()  # diffusers stops at t = 0; its x_0 prediction there is our result
    theirs = (theirs - math.sqrt(1 - abar0) * toy_eps(theirs, torch.zeros(len(x), dtype=torch.long))) / math.sqrt(abar0)
    # diffusers keeps its sigmas in float32: agreement to float32 round-off over the steps
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_the_model_and_its_guidance_see_each_kept_original_step_once():
    """One model evaluation per kept step, at the original step number (from which forward_with_cfg computes the
    guidance scale), from t = T - 1 down to 0."""
    seen = []

    def model(x, t, **kwargs):
        seen.append(t.tolist())
        return toy_eps(x, t)

    diffusion = create_diffusion("25", learn_sigma=False)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    dpm_solver_pp_sample_loop(diffusion, model, SHAPE, noise=x, clip_denoised=False)
    want = sorted(diffusion.timestep_map, reverse=True)
    assert want[0] == 999 and want[-1] == 0
    assert seen == [[t] * SHAPE[0] for t in want]


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


def test_closer_to_the_exact_ode_solution_than_ddim_and_converging_faster():
    """On the time-uniform grid (as DiT/MDT respace and diffusers' "linspace") the step into t = 0 is long in
    lambda (r = h_prev / h: 0.24 at 25 steps, 0.43 at 250). Taken second order it overshot: DPM-Solver++(2M) was
    further from the exact solution than DDIM at 20 and 40 steps (0.26 vs 0.15, 0.091 vs 0.077) and 1.6x closer at
    80. Taken first order it is 3x (20 steps) to 48x closer. Its local error partly cancels the interior steps' so
    the total is no clean power of the step count, but from 80 to 320 steps it falls 9x (DDIM, first order: 3.9x)."""
    eps, ode_end = gaussian_case()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    want = ode_end(x)
    err = {}
    for steps in (20, 40, 80, 160, 320):
        diffusion = create_diffusion(str(steps), learn_sigma=False)
        dpm = dpm_solver_pp_sample_loop(diffusion, eps, SHAPE, noise=x, clip_denoised=False)
        ddim = diffusion.ddim_sample_loop(eps, SHAPE, noise=x, clip_denoised=False)
        err[steps] = ((dpm - want).abs().max().item(), (ddim - want).abs().max().item())
    assert all(dpm < ddim / 2.5 for dpm, ddim in err.values()), err
    assert err[80][0] / err[320][0] > 6 and 3.5 < err[80][1] / err[320][1] < 4.5, err


def mixture_case(mu=(-0.6, 0.2, 0.7), s=0.05):
    """Data concentrated near a few values (each pixel from an equal mixture of N(mu_k, s^2), like the quantised
    pixels of the 8x8 digits): the exact eps prediction. Its x_0 prediction still changes quickly near t = 0."""
    full = create_diffusion("", learn_sigma=False).alphas_cumprod
    mu = torch.tensor(mu, dtype=torch.float64)

    def eps(x, t):
        a = full[t].view(-1, 1, 1, 1).to(x.dtype)
        var = a * s**2 + 1 - a  # variance of x_t given the component
        d = x.unsqueeze(-1) - a.sqrt().unsqueeze(-1) * mu  # (..., K)
        resp = torch.softmax(-0.5 * d**2 / var.unsqueeze(-1), dim=-1)  # posterior weights of the components
        return (1 - a).sqrt() * (resp * d).sum(-1) / var
    return eps


@pytest.mark.parametrize("steps", [25, 50])
def test_closer_to_the_ode_solution_than_ddim_on_data_near_a_few_values(steps):
    """On the time-uniform grid the step into t = 0 is long in lambda (25 steps: r = h_prev / h = 0.24). Taken
    second order it extrapolates D by 2.1 (D - D_prev) and overshoots: 25-step DPM-Solver++ was then 2.3x as far
    from the ODE solution as DDIM (0.164 vs 0.071 rms; 50 steps: 0.063 vs 0.051). First order: 0.048 and 0.028."""
    eps = mixture_case()
    shape = (64, 1, 4, 4)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    want = create_diffusion("1000", learn_sigma=False).ddim_sample_loop(eps, shape, noise=x, clip_denoised=False)
    diffusion = create_diffusion(str(steps), learn_sigma=False)
    dpm = dpm_solver_pp_sample_loop(diffusion, eps, shape, noise=x, clip_denoised=False)
    ddim = diffusion.ddim_sample_loop(eps, shape, noise=x, clip_denoised=False)
    dpm_err, ddim_err = ((dpm - want) ** 2).mean().sqrt().item(), ((ddim - want) ** 2).mean().sqrt().item()
    assert dpm_err < 0.8 * ddim_err, (dpm_err, ddim_err)


def test_sampler_is_reachable_from_generate():
    from test_mdt_parity import tiny_mdt

    from mdt.sample import generate

    model = tiny_mdt()
    labels = torch.tensor([0, 1])
    a = generate(model, labels, sampler="dpm++", steps=4, cfg_scale=2.0, seed=3)
    b = generate(model, labels, sampler="dpm++", steps=4, cfg_scale=2.0, seed=3)
    c = generate(model, labels, sampler="ddim", steps=4, cfg_scale=2.0, seed=3)
    assert a.shape == c.shape and torch.equal(a, b) and torch.isfinite(a).all()
