"""The diffusion's noise schedules, in one module below both users: GaussianDiffusion
(models/diffusion.py) and the diffusers samplers built from the same betas (models/schedulers.py).
Pure math, float64 (T,) betas."""
import math

import torch

__all__ = ["linear_beta_schedule", "cosine_beta_schedule", "BETA_SCHEDULES", "LINEAR_MIN_TIMESTEPS"]

LINEAR_MIN_TIMESTEPS = 21  # 0.02 * 1000 / T < 1


def linear_beta_schedule(timesteps):
    """Linear betas 1e-4 .. 0.02 for T = 1000 (Ho et al. 2020); scaled by 1000 / T for other T
    so the total noise stays comparable. float64 (T,). Below LINEAR_MIN_TIMESTEPS the last beta
    would reach 1 (x_t pure noise, 1 - beta = 0 divides): refused with the fix named."""
    if timesteps < LINEAR_MIN_TIMESTEPS:
        raise ValueError(f"the linear beta schedule needs timesteps >= {LINEAR_MIN_TIMESTEPS} (with T = "
                         f"{timesteps} its betas, scaled by 1000 / T, reach {0.02 * 1000 / timesteps:.2f}); "
                         f"use more timesteps or --beta_schedule cosine")
    scale = 1000.0 / timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)


def cosine_beta_schedule(timesteps, s=0.008):
    """Cosine schedule (Nichol & Dhariwal 2021), betas clipped to 0.999. float64 (T,)."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    alphas_cumprod = torch.cos((steps + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(0, 0.999)


BETA_SCHEDULES = {"linear": linear_beta_schedule, "cosine": cosine_beta_schedule}
