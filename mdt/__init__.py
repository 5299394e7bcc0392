"""MDTv2 and DiT models, Gaussian diffusion, the Adan optimizer, data, metrics and trainer."""
