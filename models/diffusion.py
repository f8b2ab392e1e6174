"""Gaussian diffusion over normalised log-mel: training loss and guided sampling.

`GaussianDiffusion` owns the schedule (betas from models/schedule.py, re-exported here), the
normalisation statistics (buffers), the loss and the guided sampling loop; the samplers are diffusers
schedulers built from the same schedule (models/schedulers.py: `set_timesteps(n)`, `step(model_output,
t, x)`), so the sampler can be swapped without touching the model.
Raw data goes in and comes out; everything in between lives in normalised space.
"""
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .hparams import hparam
from .layout import MOTION_DIM, NUM_MELS
from .motion_features import DEFAULT_MOTION_FEATURES, DERIVED, MOTION_FEATURES, motion_feature_dim
from .schedule import BETA_SCHEDULES, LINEAR_MIN_TIMESTEPS, cosine_beta_schedule, linear_beta_schedule
from .schedulers import SAMPLERS, initial_noise, make_scheduler, run_scheduler

__all__ = ["linear_beta_schedule", "cosine_beta_schedule", "GaussianDiffusion", "DiffusionConfig",
           "SamplingConfig", "condition_dropout_masks", "BETA_SCHEDULES", "OBJECTIVES", "SAMPLERS",
           "PRECISIONS", "LINEAR_MIN_TIMESTEPS"]

OBJECTIVES = ("eps", "v")
STD_FLOOR = 1e-5  # a constant feature (std 0) must not blow up the normalisation


@dataclass(frozen=True)
class DiffusionConfig:
    """The diffusion's settings, declared once: GaussianDiffusion is built from it, the checkpoint
    stores asdict(config), train.py generates its diffusion flags from these fields. The defaults are
    the recommended settings, the ones train.py trains with (RESULTS.md)."""
    timesteps: int = hparam(1000, "diffusion steps T")
    beta_schedule: str = hparam("linear", "noise schedule", choices=tuple(BETA_SCHEDULES))
    objective: str = hparam("v", 'the network predicts "eps" (noise) or "v"', choices=OBJECTIVES)
    motion_features: str = hparam(DEFAULT_MOTION_FEATURES,
                                  "what the network sees of the dance: raw features, rhythm channels "
                                  "without pose or position, or only their whole-body beat channels "
                                  "(models/motion_features.py)", choices=MOTION_FEATURES)

    def __post_init__(self):
        if self.beta_schedule not in tuple(BETA_SCHEDULES):
            raise ValueError(f"unknown beta_schedule {self.beta_schedule!r}: choose one of "
                             f"{tuple(BETA_SCHEDULES)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}: choose one of {OBJECTIVES}")
        motion_feature_dim(self.motion_features)  # raises on an unknown name
        BETA_SCHEDULES[self.beta_schedule](self.timesteps)  # raises on a schedule T cannot have, naming the fix


# "auto" is resolved to "fp32" or "bf16" by the caller before sampling: it depends on the device's CPU
# flags (/proc/cpuinfo), file I/O that has no place in models/; GaussianDiffusion.sample refuses it
PRECISIONS = ("fp32", "bf16", "auto")


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample, declared once: passed whole from sample.py / val.py to generation and written
    into every generated npz with asdict. seed and batch_size are the generation loop's (per-clip
    noise streams seeded from seed and the clip's name; batching never changes a clip's result)."""
    sampler: str = hparam("dpm++", "sampler (default chosen in BENCHMARKS.md, quality vs steps)",
                          choices=SAMPLERS)
    steps: int = hparam(20, "sampling steps (<= the checkpoint's diffusion timesteps)")
    eta: float = hparam(0.0, "DDIM eta: 0 deterministic, 1 = DDPM-like noise")
    guidance: float = hparam(2.0, "classifier-free guidance weight: 1 = conditional only, "
                                  "0 = unconditional")
    clip_x0: float = hparam(6.0, "clip the predicted x0 to +-this in normalised units (0 = off)")
    precision: str = hparam("auto", "the network's arithmetic: fp32, bf16 autocast (CPU and CUDA), or auto "
                                    "(bf16 where the device computes it natively, else fp32)",
                            choices=PRECISIONS)
    seed: int = hparam(0, "seeds the noise (one generator per clip, from seed and clip name)")
    batch_size: int = hparam(8, "clips per batch (guidance doubles the network batch)")

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}: choose one of {SAMPLERS}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}: choose one of {PRECISIONS}")


def _extract(a, t, x):
    """a (T,) float64 buffer, t (B,) long -> (B, 1, ..., 1) in x's dtype, broadcastable to x."""
    out = a.gather(0, t.to(a.device).long())
    return out.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))


def condition_dropout_masks(batch_size, p_motion, p_lyrics, p_both, device=None, generator=None):
    """Per-item condition dropout for classifier-free guidance training -> (drop_motion,
    drop_lyrics) bool (B,). Each item draws u ~ U[0, 1):
        u < p_motion                 motion dropped, lyrics kept
        next p_lyrics of the range   lyrics dropped, motion kept
        next p_both of the range     both dropped (unconditional)
        otherwise                    both kept
    so motion is dropped for p_motion + p_both of the items, lyrics for p_lyrics + p_both."""
    if p_motion + p_lyrics + p_both > 1.0 + 1e-9:
        raise ValueError(f"condition dropout probabilities sum to {p_motion + p_lyrics + p_both} > 1")
    u = torch.rand(batch_size, device=device, generator=generator)
    motion_only = u < p_motion
    lyrics_only = (u >= p_motion) & (u < p_motion + p_lyrics)
    both = (u >= p_motion + p_lyrics) & (u < p_motion + p_lyrics + p_both)
    return motion_only | both, lyrics_only | both


def _eps_x0_from_output(model_output, x, ab, objective):
    """Model output at alphas_cumprod `ab` (python float or broadcastable tensor) -> (eps, x0)."""
    sqrt_ab, sqrt_1mab = _sqrt(ab), _sqrt(1 - ab)
    if objective == "eps":
        eps = model_output
        x0 = (x - sqrt_1mab * eps) / sqrt_ab
    elif objective == "v":
        x0 = sqrt_ab * x - sqrt_1mab * model_output
        eps = sqrt_1mab * x + sqrt_ab * model_output
    else:
        raise ValueError(f"unknown objective {objective!r}: choose one of {OBJECTIVES}")
    return eps, x0


def _sqrt(a):
    return math.sqrt(a) if isinstance(a, float) else a.sqrt()


def _stat_tensor(value, default_fill, dim, name):
    if value is None:
        return torch.full((dim,), float(default_fill), dtype=torch.float32)
    tensor = torch.as_tensor(np.asarray(value) if not torch.is_tensor(value) else value).float().reshape(-1)
    if tensor.numel() != dim:
        raise ValueError(f"GaussianDiffusion: {name} has {tensor.numel()} values, expected {dim}")
    return tensor.detach().clone()


class GaussianDiffusion(nn.Module):
    def __init__(self, model, config: DiffusionConfig = None, mel_mean=None, mel_std=None,
                 motion_mean=None, motion_std=None, **overrides):
        """GaussianDiffusion(net, DiffusionConfig(...), **norm_stats), or keyword overrides of the
        config: GaussianDiffusion(net, objective="eps", timesteps=100)."""
        super().__init__()
        self.config = config = replace(config or DiffusionConfig(), **overrides)
        self.model = model
        self.timesteps = config.timesteps
        self.objective = config.objective
        self.mel_dim = int(getattr(model, "mel_dim", None)
                           or (len(mel_mean) if mel_mean is not None else NUM_MELS))
        # motion_dim: the RAW features' width (the normalisation stats); the network takes
        # motion_feature_dim(config.motion_features) channels of it
        net_motion_dim = getattr(model, "motion_dim", None)
        raw_dim = len(motion_mean) if motion_mean is not None else MOTION_DIM
        if config.motion_features == "raw":
            self.motion_dim = int(net_motion_dim or raw_dim)
        else:
            self.motion_dim = raw_dim
            want = motion_feature_dim(config.motion_features)
            if net_motion_dim is not None and net_motion_dim != want:
                raise ValueError(f"GaussianDiffusion: motion_features={config.motion_features!r} gives "
                                 f"{want} channels but the network takes motion_dim={net_motion_dim}")

        self.register_buffer("mel_mean", _stat_tensor(mel_mean, 0.0, self.mel_dim, "mel_mean"))
        self.register_buffer("mel_std", _stat_tensor(mel_std, 1.0, self.mel_dim, "mel_std"))
        self.register_buffer("motion_mean", _stat_tensor(motion_mean, 0.0, self.motion_dim, "motion_mean"))
        self.register_buffer("motion_std", _stat_tensor(motion_std, 1.0, self.motion_dim, "motion_std"))

        # schedule in float64 (cast at use), not persistent: rebuilt from the config
        betas = BETA_SCHEDULES[config.beta_schedule](self.timesteps)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)

        def buffer(name, value):
            self.register_buffer(name, value.to(torch.float64), persistent=False)

        buffer("betas", betas)
        buffer("alphas_cumprod", alphas_cumprod)
        buffer("sqrt_alphas_cumprod", alphas_cumprod.sqrt())
        buffer("sqrt_one_minus_alphas_cumprod", (1.0 - alphas_cumprod).sqrt())

    def norm_stats(self):
        return dict(mel_mean=self.mel_mean.detach().cpu().clone(), mel_std=self.mel_std.detach().cpu().clone(),
                    motion_mean=self.motion_mean.detach().cpu().clone(),
                    motion_std=self.motion_std.detach().cpu().clone())

    @property
    def device(self):
        return self.mel_mean.device

    # normalisation ---------------------------------------------------------------------------
    def normalize_mel(self, mel):  # (B, mel_dim, T)
        return (mel - self.mel_mean[:, None]) / self.mel_std.clamp_min(STD_FLOOR)[:, None]

    def unnormalize_mel(self, mel):  # (B, mel_dim, T)
        return mel * self.mel_std.clamp_min(STD_FLOOR)[:, None] + self.mel_mean[:, None]

    def motion_input(self, motion):
        """RAW motion (B, T, 234) -> the network's motion condition (config.motion_features):
        standardised raw features, or channels derived per clip (rhythm, beat)."""
        if self.config.motion_features in DERIVED:
            return DERIVED[self.config.motion_features](motion)
        return (motion - self.motion_mean) / self.motion_std.clamp_min(STD_FLOOR)

    # forward process -------------------------------------------------------------------------
    def q_sample(self, x0, t, noise=None):
        """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise."""
        if noise is None:
            noise = torch.randn_like(x0)
        return _extract(self.sqrt_alphas_cumprod, t, x0) * x0 + \
            _extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def v_target(self, x0, t, noise):
        return _extract(self.sqrt_alphas_cumprod, t, x0) * noise - \
            _extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0

    def predict_eps_x0(self, model_output, xt, t):
        """Model output (per self.objective) at timesteps t (B,) -> (eps, x0)."""
        return _eps_x0_from_output(model_output, xt, _extract(self.alphas_cumprod, t, xt), self.objective)

    # training --------------------------------------------------------------------------------
    def loss(self, mel, motion, lyrics, lyric_pad_mask=None, drop_motion=None, drop_lyrics=None, t=None,
             noise=None, reduction="mean"):
        """MSE between the model output and the eps (or v) target; mel RAW (B, mel_dim, T),
        motion RAW (B, Tm, motion_dim). reduction "mean" -> scalar, "sum", "none" -> (B,)."""
        x0 = self.normalize_mel(mel)
        batch_size = x0.shape[0]
        if t is None:
            t = torch.randint(0, self.timesteps, (batch_size,), device=x0.device)
        t = torch.as_tensor(t, device=x0.device).long().expand(batch_size)
        if noise is None:
            noise = torch.randn_like(x0)
        xt = self.q_sample(x0, t, noise)
        out = self.model(xt, t, self.motion_input(motion), lyrics, lyric_pad_mask=lyric_pad_mask,
                         drop_motion=drop_motion, drop_lyrics=drop_lyrics)
        target = noise if self.objective == "eps" else self.v_target(x0, t, noise)
        per_item = F.mse_loss(out.float(), target.float(), reduction="none").flatten(1).mean(1)  # (B,)
        if reduction == "mean":
            return per_item.mean()
        if reduction == "sum":
            return per_item.sum()
        if reduction == "none":
            return per_item
        raise ValueError(f"unknown reduction {reduction!r}: choose mean, sum or none")

    forward = loss

    # sampling --------------------------------------------------------------------------------
    def guided_output(self, x, t, motion, lyrics, lyric_pad_mask=None, guidance=1.0):
        """Model output with classifier-free guidance: out_u + w (out_c - out_u) from ONE forward
        of the doubled batch [cond | uncond]; w = 1 -> cond only, w = 0 -> uncond only.
        motion is the network's input here (motion_input)."""
        batch_size = x.shape[0]
        t = torch.full((batch_size,), int(t), device=x.device, dtype=torch.long)
        if guidance == 1:
            return self.model(x, t, motion, lyrics, lyric_pad_mask=lyric_pad_mask)
        if guidance == 0:
            drop = torch.ones(batch_size, dtype=torch.bool, device=x.device)
            return self.model(x, t, motion, lyrics, lyric_pad_mask=lyric_pad_mask, drop_motion=drop,
                              drop_lyrics=drop)
        drop = torch.arange(2 * batch_size, device=x.device) >= batch_size  # [cond | uncond]
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([motion, motion]),
                         torch.cat([lyrics, lyrics]),
                         lyric_pad_mask=None if lyric_pad_mask is None else torch.cat([lyric_pad_mask] * 2),
                         drop_motion=drop, drop_lyrics=drop)
        out_cond, out_uncond = out.chunk(2)
        return out_uncond + guidance * (out_cond - out_uncond)

    @torch.no_grad()
    def sample(self, motion, lyrics, lyric_pad_mask=None, length=None, settings: SamplingConfig = None,
               generator=None, progress=False, known=None, known_mask=None):
        """Generate RAW log-mel (B, mel_dim, length) for RAW motion (B, Tm, motion_dim) and lyric tokens
        (B, L, D) with `settings` (SamplingConfig: sampler, steps, eta, guidance, clip_x0, precision),
        through a diffusers scheduler (models/schedulers.py). settings.precision must be resolved
        ("fp32" or "bf16"): the caller turns "auto" into one of them for its device. `length` defaults
        to Tm. Deterministic for a given torch.Generator, or a list of one generator per item
        (noise is drawn on the generator's device). clip_x0 clips the predicted x0 in normalised
        space (0: off). The model runs in eval mode (its mode is restored afterwards).

        Inpainting by replacement: `known` RAW log-mel (B, mel_dim, length) and `known_mask` bool
        (B, length), True on frames to hold. Before every model call those frames are replaced by
        `known` noised to the current timestep (q_sample, noise from the item's own generator), and
        the output equals `known` there."""
        if settings is None or settings.precision not in ("fp32", "bf16"):
            got = "no settings" if settings is None else f"precision={settings.precision!r}"
            raise ValueError(f"GaussianDiffusion.sample: got {got}; pass settings=SamplingConfig(...) with "
                             f'precision "fp32" or "bf16" (the caller resolves "auto" for its device first)')
        device = self.device
        motion = self.motion_input(motion.to(device))  # (B, Tm, network motion channels)
        lyrics = lyrics.to(device)
        if lyric_pad_mask is not None:
            lyric_pad_mask = lyric_pad_mask.to(device)
        length = int(length) if length is not None else motion.shape[1]
        scheduler = make_scheduler(settings.sampler, self.timesteps, self.config.beta_schedule, self.objective,
                                   clip_x0=settings.clip_x0, eta=settings.eta)
        dtype = self.mel_mean.dtype
        x = initial_noise((motion.shape[0], self.mel_dim, length), generator, device, dtype)  # x_T
        hold_fn = None
        if known is not None:
            hold_fn = self._holder(self.normalize_mel(known.to(device, dtype)), known_mask.to(device),
                                   generator)

        def denoise(x_t, t):  # (B, mel_dim, length) -> the guided model output, in x's dtype
            if settings.precision == "bf16":
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    return self.guided_output(x_t, t, motion, lyrics, lyric_pad_mask, settings.guidance).to(dtype)
            return self.guided_output(x_t, t, motion, lyrics, lyric_pad_mask, settings.guidance)

        was_training = self.model.training
        self.model.eval()
        try:
            x = run_scheduler(scheduler, denoise, x, generator, settings.steps, progress, hold_fn)
        finally:
            self.model.train(was_training)
        return self.unnormalize_mel(x)

    def _holder(self, known_x0, mask, generator):
        """hold_fn for run_scheduler: the held frames of x -> known_x0 noised to timestep t."""
        mask = mask[:, None, :]  # (B, 1, T)

        def hold(x, t):
            if t < 0:
                return torch.where(mask, known_x0, x)
            noise = initial_noise(x.shape, generator, x.device, x.dtype)
            tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
            return torch.where(mask, self.q_sample(known_x0, tt, noise), x)
        return hold
