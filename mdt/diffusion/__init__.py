"""Gaussian diffusion (IDDPM) for MDTv2 and DiT: schedules, losses, respacing, DDPM and DDIM samplers."""

from . import gaussian_diffusion as gd
from .respace import SpacedDiffusion, space_timesteps

MIN_SNR_GAMMA = 5.0  # MDTv2 weights the eps-MSE by min(SNR, 5) / SNR; DiT uses no weighting (None)


def create_diffusion(timestep_respacing, noise_schedule="linear", use_kl=False, sigma_small=False,
                     predict_xstart=False, learn_sigma=True, rescale_learned_sigmas=False, diffusion_steps=1000,
                     min_snr_gamma=MIN_SNR_GAMMA):
    """The diffusion of MDTv2 (defaults) or DiT (min_snr_gamma=None), as DiT's and MDT's create_diffusion.

    timestep_respacing: "" or None for all diffusion_steps (training), else the steps to sample with, e.g. "250"
    or "ddim50" (see space_timesteps). The model always receives original step numbers.
    """
    betas = gd.get_named_beta_schedule(noise_schedule, diffusion_steps)
    if use_kl:
        loss_type = gd.LossType.RESCALED_KL
    elif rescale_learned_sigmas:
        loss_type = gd.LossType.RESCALED_MSE
    else:
        loss_type = gd.LossType.MSE
    if timestep_respacing is None or timestep_respacing == "":
        timestep_respacing = [diffusion_steps]
    if learn_sigma:
        var_type = gd.ModelVarType.LEARNED_RANGE
    else:
        var_type = gd.ModelVarType.FIXED_SMALL if sigma_small else gd.ModelVarType.FIXED_LARGE
    return SpacedDiffusion(
        use_timesteps=space_timesteps(diffusion_steps, timestep_respacing),
        betas=betas,
        model_mean_type=gd.ModelMeanType.START_X if predict_xstart else gd.ModelMeanType.EPSILON,
        model_var_type=var_type,
        loss_type=loss_type,
        min_snr_gamma=min_snr_gamma,
    )


__all__ = ["MIN_SNR_GAMMA", "SpacedDiffusion", "create_diffusion", "gd", "space_timesteps"]
