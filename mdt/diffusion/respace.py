"""Timestep respacing: run a diffusion trained with T steps on a subset of them (fewer sampling steps)."""

from __future__ import annotations

import torch

from .gaussian_diffusion import GaussianDiffusion


def space_timesteps(num_timesteps, section_counts):
    """The set of original steps to keep.

    section_counts: a list of step counts, or a comma-separated string of them, one per equal section of the T
    steps, each section strided evenly from its first to its last step (e.g. "250" over 1000 steps); or "ddimN":
    DDIM's fixed integer stride giving exactly N steps.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired_count = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired_count:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(f"cannot create exactly {desired_count} steps with an integer stride")
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start_idx, all_steps = 0, []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < section_count:
            raise ValueError(f"cannot divide section of {size} steps into {section_count}")
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0  # accumulated (not j * stride) so that rounding matches IDDPM/DiT/MDT step for step
        for _ in range(section_count):
            all_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return set(all_steps)


class SpacedDiffusion(GaussianDiffusion):
    """A diffusion over a subset of a base process's steps; the model always receives the original step numbers."""

    def __init__(self, use_timesteps, **kwargs):
        self.use_timesteps = set(use_timesteps)
        base = GaussianDiffusion(**kwargs)
        self.original_num_steps = base.num_timesteps
        # Betas of the kept steps, such that the cumulative products equal the base process's at those steps.
        self.timestep_map, new_betas, last_alpha_cumprod = [], [], 1.0
        for i, alpha_cumprod in enumerate(base.alphas_cumprod.tolist()):
            if i in self.use_timesteps:
                new_betas.append(1 - alpha_cumprod / last_alpha_cumprod)
                last_alpha_cumprod = alpha_cumprod
                self.timestep_map.append(i)
        kwargs["betas"] = torch.tensor(new_betas, dtype=torch.float64)
        super().__init__(**kwargs)

    def p_mean_variance(self, model, *args, **kwargs):
        return super().p_mean_variance(self._wrap_model(model), *args, **kwargs)

    def training_losses(self, model, *args, **kwargs):
        return super().training_losses(self._wrap_model(model), *args, **kwargs)

    def _wrap_model(self, model):
        if isinstance(model, _WrappedModel):
            return model
        return _WrappedModel(model, self.timestep_map)


class _WrappedModel:
    """Calls the model with respaced step indices mapped back to the original steps."""

    def __init__(self, model, timestep_map):
        self.model = model
        self.timestep_map = torch.tensor(timestep_map, dtype=torch.long)

    def __call__(self, x, ts, **kwargs):
        if self.timestep_map.device != ts.device:
            self.timestep_map = self.timestep_map.to(ts.device)
        return self.model(x, self.timestep_map[ts], **kwargs)
