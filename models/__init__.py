"""LM2A models: the 1D UNet, its embeddings and cross-attention, the Gaussian diffusion (schedules,
loss, guided sampling), the diffusers samplers built from its schedule and the Adan optimizer.
Modules and math only: no file I/O, and no import from the project's upper layers (models/ is the bottom
layer: torch and diffusers; the tensor and SMPL layout lives in models/layout.py)."""
from .adan import Adan
from .cross_attention import CrossAttentionBlock
from .diffusion import (DiffusionConfig, GaussianDiffusion, SamplingConfig, condition_dropout_masks,
                        cosine_beta_schedule, linear_beta_schedule)
from .embedding import LyricEmbedding, MotionEmbedding, TimestepEmbedding, sinusoidal_embedding
from .motion_features import MOTION_FEATURES, mirror_raw_motion, motion_feature_dim
from .schedulers import SAMPLERS, make_scheduler, run_scheduler
from .unet1d_ultimate import UNet1D_ultimate, UNetConfig

__all__ = ["Adan", "CrossAttentionBlock", "DiffusionConfig", "GaussianDiffusion", "SamplingConfig",
           "condition_dropout_masks", "cosine_beta_schedule", "linear_beta_schedule", "LyricEmbedding",
           "MotionEmbedding", "TimestepEmbedding", "sinusoidal_embedding", "MOTION_FEATURES",
           "mirror_raw_motion", "motion_feature_dim", "SAMPLERS", "make_scheduler", "run_scheduler",
           "UNet1D_ultimate", "UNetConfig"]
