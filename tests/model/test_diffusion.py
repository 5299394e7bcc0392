"""Gaussian diffusion against closed forms: schedules, q_sample moments, posterior, KL, likelihood, min-SNR
weights, losses, respacing, samplers (exact recovery with an oracle model; determinism under a seed)."""

import math

import pytest
import torch
from test_mdt_parity import tiny_mdt

from mdt.diffusion import create_diffusion, gd, space_timesteps
from mdt.diffusion.diffusion_utils import discretized_gaussian_log_likelihood, normal_kl

T = 1000


def alphas_cumprod_loop(betas):
    """abar_t = prod_{s <= t} (1 - beta_s), as a plain Python loop in float64."""
    out, acc = [], 1.0
    for b in betas.tolist():
        acc *= 1.0 - b
        out.append(acc)
    return torch.tensor(out, dtype=torch.float64)


@pytest.fixture(scope="module")
def diffusion():
    return create_diffusion("")


def test_linear_schedule(diffusion):
    betas = diffusion.betas
    assert betas.shape == (T,) and betas.dtype == torch.float64
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    torch.testing.assert_close(betas[1:] - betas[:-1], torch.full((T - 1,), (0.02 - 1e-4) / (T - 1),
                                                                  dtype=torch.float64))
    torch.testing.assert_close(diffusion.alphas_cumprod, alphas_cumprod_loop(betas), rtol=1e-12, atol=0)
    # other step counts rescale the endpoints by 1000 / T
    assert create_diffusion("", diffusion_steps=500).betas[-1].item() == pytest.approx(0.04)


def test_q_sample_moments(diffusion):
    torch.manual_seed(0)
    n = 200_000
    for step in (0, 10, 300, 999):
        x0 = torch.full((n, 1), 0.7)
        t = torch.full((n,), step)
        xt = diffusion.q_sample(x0, t)
        abar = alphas_cumprod_loop(diffusion.betas)[step].item()
        mean, var = math.sqrt(abar) * 0.7, 1 - abar
        # 6-sigma bounds of the sample mean and sample variance estimators
        assert abs(xt.mean().item() - mean) < 6 * math.sqrt(var / n)
        assert abs(xt.var().item() - var) < 6 * var * math.sqrt(2 / n)
        m, v, logv = diffusion.q_mean_variance(x0[:4], t[:4])
        torch.testing.assert_close(m, torch.full((4, 1), mean))
        torch.testing.assert_close(v, torch.full((4, 1), var))
        torch.testing.assert_close(logv, torch.full((4, 1), math.log(var)))
    x0, noise, t = torch.randn(5, 3), torch.randn(5, 3), torch.randint(0, T, (5,))
    abar = alphas_cumprod_loop(diffusion.betas)[t].float()[:, None]
    torch.testing.assert_close(diffusion.q_sample(x0, t, noise), abar.sqrt() * x0 + (1 - abar).sqrt() * noise)


def test_posterior_is_bayes_rule(diffusion):
    """q(x_{t-1} | x_t, x_0) from Gaussian conditioning: precision = alpha_t / beta_t + 1 / (1 - abar_{t-1}),
    mean = var * (sqrt(alpha_t) x_t / beta_t + sqrt(abar_{t-1}) x_0 / (1 - abar_{t-1}))."""
    betas = diffusion.betas
    abar = alphas_cumprod_loop(betas)
    t = torch.tensor([1, 2, 50, 500, 999])
    x0, xt = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    beta, abar_prev = betas[t][:, None], abar[t - 1][:, None]
    var = 1 / ((1 - beta) / beta + 1 / (1 - abar_prev))
    mean = var * ((1 - beta).sqrt() * xt / beta + abar_prev.sqrt() * x0 / (1 - abar_prev))
    m, v, logv = diffusion.q_posterior_mean_variance(x0, xt, t)
    torch.testing.assert_close(m, mean, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(v, var.expand(5, 3), rtol=1e-9, atol=0)
    torch.testing.assert_close(logv, var.log().expand(5, 3), rtol=1e-9, atol=0)
    # at t = 0 the posterior is a point mass at x_0: mean x_0, log-variance clipped to the value at t = 1
    m0, v0, logv0 = diffusion.q_posterior_mean_variance(x0, xt, torch.zeros(5, dtype=torch.long))
    torch.testing.assert_close(m0, x0, rtol=1e-9, atol=1e-12)
    assert (v0 == 0).all() and torch.equal(logv0, logv[:1].expand(5, 3))  # row 0 is t = 1


def test_normal_kl():
    m, lv = torch.randn(10), torch.randn(10)
    torch.testing.assert_close(normal_kl(m, lv, m, lv), torch.zeros(10), atol=1e-6, rtol=0)
    m2, lv2 = torch.randn(10), torch.randn(10)
    p = torch.distributions.Normal(m, (0.5 * lv).exp())
    q = torch.distributions.Normal(m2, (0.5 * lv2).exp())
    torch.testing.assert_close(normal_kl(m, lv, m2, lv2), torch.distributions.kl_divergence(p, q))
    assert (normal_kl(m, lv, 0.0, 0.0) >= 0).all()


def test_discretized_likelihood_sums_to_one():
    """The 256 bins of [-1, 1] (edge bins open-ended) partition the line: their probabilities sum to 1."""
    bins = torch.linspace(-1, 1, 256, dtype=torch.float64)[:, None]
    for mean, log_scale in ((0.0, -1.0), (0.3, -3.0), (-0.9, 0.5)):
        logp = discretized_gaussian_log_likelihood(bins.expand(256, 1), means=torch.full((256, 1), mean,
                                                   dtype=torch.float64), log_scales=torch.full((256, 1), log_scale,
                                                   dtype=torch.float64))
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_min_snr_weights(diffusion):
    abar = alphas_cumprod_loop(diffusion.betas)
    snr = abar / (1 - abar)
    w = diffusion.mse_loss_weight
    for step in (0, 50, 100, 500):
        assert w[step].item() == pytest.approx(min(snr[step].item(), 5.0) / snr[step].item(), rel=1e-12)
    # MDT_SPEC.md 2: w(0) = 5e-4, w(50) ~ 0.155, w(100) ~ 0.586; SNR < 5 (w = 1) from t = 130 on
    assert w[0].item() == pytest.approx(5e-4, rel=0.01)
    assert w[50].item() == pytest.approx(0.155, abs=1e-3) and w[100].item() == pytest.approx(0.586, abs=1e-3)
    assert (w[130:] == 1).all() and (w[:130] < 1).all()
    x0_weights = create_diffusion("", predict_xstart=True).mse_loss_weight
    torch.testing.assert_close(x0_weights, snr.clamp(max=5.0))
    assert (create_diffusion("", min_snr_gamma=None).mse_loss_weight == 1).all()  # DiT


def oracle_output(diffusion, x0_star, log_var_frac=-1.0):
    """The optimal model when the data is the single point x0_star: eps = (x_t - sqrt(abar) x0*) / sqrt(1 - abar),
    and a constant variance output (-1 = the posterior variance end of the learned range). Receives original t."""
    abar = diffusion.alphas_cumprod

    def model(x, t, **kwargs):
        a = abar.to(x.dtype)[t].view(-1, *([1] * (x.dim() - 1)))
        eps = (x - a.sqrt() * x0_star) / (1 - a).sqrt()
        return torch.cat([eps, torch.full_like(x, log_var_frac)], dim=1)
    return model


def test_training_losses_vanish_for_the_oracle(diffusion):
    x0 = torch.rand(4, 2, 3, 3, dtype=torch.float64) * 2 - 1
    model = oracle_output(diffusion, x0)
    t = torch.tensor([1, 10, 500, 999])
    terms = diffusion.training_losses(model, x0, t)
    assert terms["mse"].abs().max() < 1e-20
    assert terms["vb"].abs().max() < 1e-9  # KL of identical Gaussians
    assert torch.equal(terms["loss"], terms["mse"] + terms["vb"])


def test_training_losses_terms():
    diffusion = create_diffusion("")
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0, 60, 700])
    out = torch.zeros(3, 4, 4, 4, requires_grad=True)
    terms = diffusion.training_losses(lambda x, ts: out, x0, t, noise=noise)
    w = diffusion.mse_loss_weight[t].float()
    torch.testing.assert_close(terms["mse"], w * noise.square().mean(dim=(1, 2, 3)))
    # the VB term trains the variance channels only
    (grad,) = torch.autograd.grad(terms["vb"].sum(), out)
    assert grad[:, :2].abs().sum() == 0 and grad[:, 2:].abs().sum() > 0
    # t = 0: discretized decoder NLL (positive), not a KL
    assert terms["vb"][0] > 0


def test_mdt_two_pass_loss():
    diffusion = create_diffusion("")
    calls = []

    def model(x, t, y, enable_mask=False):
        calls.append((x.clone(), t.clone(), enable_mask))
        return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])
    x0, t, y = torch.randn(2, 4, 4, 4), torch.tensor([5, 900]), torch.tensor([1, 2])
    terms = diffusion.mdt_training_losses(model, x0, t, {"y": y})
    (x_full, t_full, mask_full), (x_masked, t_masked, mask_masked) = calls
    assert (mask_full, mask_masked) == (False, True)
    assert torch.equal(t_full, t) and torch.equal(t_masked, t)
    assert not torch.allclose(x_full, x_masked)  # fresh noise per pass
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"] + terms["m_mse"] + terms["m_vb"])
    assert torch.equal(terms["m_loss"], terms["m_mse"] + terms["m_vb"])


def test_space_timesteps():
    steps = space_timesteps(1000, "250")
    assert len(steps) == 250 and min(steps) == 0 and max(steps) == 999
    assert space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
    # IDDPM's documented example: 300 steps, sections [10, 15, 20] over three strides of 100
    s = sorted(space_timesteps(300, [10, 15, 20]))
    assert len(s) == 45 and s[0] == 0 and s[9] == 99 and s[10] == 100 and s[24] == 199 and s[-1] == 299
    with pytest.raises(ValueError):
        space_timesteps(10, "11")


def test_respaced_diffusion(diffusion):
    spaced = create_diffusion("25")
    kept = sorted(space_timesteps(T, "25"))
    assert spaced.num_timesteps == 25 and spaced.timestep_map == kept
    torch.testing.assert_close(spaced.alphas_cumprod, diffusion.alphas_cumprod[kept], rtol=1e-12, atol=0)
    seen = []

    def model(x, t):
        seen.append(t.clone())
        return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])
    spaced.p_mean_variance(model, torch.randn(3, 1, 2, 2), torch.tensor([0, 12, 24]))
    assert seen[0].tolist() == [kept[0], kept[12], kept[24]]  # the model sees original step numbers


@pytest.mark.parametrize("respacing,ddim", [("", False), ("50", False), ("ddim20", True)])
def test_samplers_recover_the_data_point_with_the_oracle(respacing, ddim):
    """With the optimal model for a one-point data set, DDPM (any respacing) and DDIM end exactly at x0*."""
    base = create_diffusion("")
    sampler = create_diffusion(respacing)
    x0_star = torch.rand(2, 3, 4, 4, dtype=torch.float64) * 2 - 1
    model = oracle_output(base, x0_star)
    loop = sampler.ddim_sample_loop if ddim else sampler.p_sample_loop
    torch.manual_seed(0)
    out = loop(model, (2, 3, 4, 4), noise=torch.randn(2, 3, 4, 4, dtype=torch.float64), clip_denoised=False)
    torch.testing.assert_close(out, x0_star, atol=1e-9, rtol=0)


@pytest.mark.parametrize("ddim", [False, True], ids=["ddpm", "ddim"])
def test_sampling_is_deterministic_under_a_seed(ddim):
    model = tiny_mdt()
    diffusion = create_diffusion("ddim5" if ddim else "5")
    y = torch.tensor([3, 7, 1000, 1000])
    kwargs = dict(y=y, cfg_scale=4.0)
    loop = diffusion.ddim_sample_loop if ddim else diffusion.p_sample_loop

    def run(seed):
        torch.manual_seed(seed)
        return loop(model.forward_with_cfg, (4, 4, 8, 8), model_kwargs=kwargs, clip_denoised=False)
    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_prior_bpd_closed_form(diffusion):
    x0 = torch.zeros(2, 3, dtype=torch.float64)
    abar_T = alphas_cumprod_loop(diffusion.betas)[-1].item()
    var = 1 - abar_T
    expected = 0.5 * (-1 - math.log(var) + var) / math.log(2)  # KL(N(0, var) || N(0, 1)) in bits
    torch.testing.assert_close(diffusion.prior_bpd(x0), torch.full((2,), expected, dtype=torch.float64))


def test_fixed_variance_types():
    small = create_diffusion("", learn_sigma=False, sigma_small=True)
    large = create_diffusion("", learn_sigma=False)
    assert small.model_var_type == gd.ModelVarType.FIXED_SMALL and large.model_var_type == gd.ModelVarType.FIXED_LARGE
    x, t = torch.randn(2, 1, 2, 2), torch.tensor([0, 500])
    out_small = small.p_mean_variance(lambda x, t: torch.zeros_like(x), x, t)
    out_large = large.p_mean_variance(lambda x, t: torch.zeros_like(x), x, t)
    assert out_small["variance"][1, 0, 0, 0].item() == pytest.approx(small.posterior_variance[500].item(), rel=1e-6)
    assert out_large["variance"][1, 0, 0, 0].item() == pytest.approx(large.betas[500].item(), rel=1e-6)
    assert out_large["variance"][0, 0, 0, 0].item() == pytest.approx(large.posterior_variance[1].item(), rel=1e-6)
