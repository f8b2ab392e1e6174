"""Samplers for GaussianDiffusion: diffusers schedulers configured from the checkpoint's diffusion
settings (number of timesteps, beta schedule, eps/v objective), and the loop that runs them.

`make_scheduler(name, timesteps, beta_schedule, objective, clip_x0, eta)` returns a diffusers scheduler
(`set_timesteps(n)`, `step(model_output, t, x, ...)`); `run_scheduler(scheduler, denoise_fn, x,
generators, steps)` runs it. The caller's `denoise_fn(x, t)` does classifier-free guidance (one
batched forward per step); the scheduler never sees the model.

What is ours, on top of diffusers 0.42 (each choice is checked against the hand-written samplers that
models/diffusion.py had, tests/test_schedulers.py):
- the schedule: our float64 betas (linear scaled by 1000 / T, or cosine clipped at 0.999) go in as
  `trained_betas`. diffusers keeps them in float32 and takes the cumulative product in float32;
  `_use_float64_schedule` puts the float64 alphas_cumprod back (see its docstring for the size of the
  difference).
- the timesteps of DDPM and DDIM: n points from T-1 down to 0 (`np.round(np.linspace(T-1, 0, n))`);
  after t = 0 the last step goes to alphas_cumprod = 1 (`set_alpha_to_one=True`, `steps_offset=0`).
  diffusers' "linspace" spacing rounds the mirror image, round(linspace(0, T-1, n))[::-1]: for T = 1000
  it differs from ours by one at the midpoint for 139 values of n (n = 27: 499, ours 500) and gives
  [0] for n = 1 (a single step at t = 0 from pure noise), so we set our own list.
  diffusers' default "leading" spacing never visits T-1: at 10 steps it starts pure noise at t = 900.
- DDIM steps to the next timestep of its own list. diffusers' DDIMScheduler.step uses
  prev = t - T // n, which is only the next timestep for "leading" spacing (huggingface/diffusers
  issues #11347, #12633, unfixed in 0.42.1): with linspace at 10 steps it steps from 999 to the noise
  level of 899 and then calls the model as if at 888. That is a bug upstream, not a choice.
- x0 clipping (`clip_x0`: predicted x0 clamped to +-clip_x0 in normalised space): DDPM and DDIM by
  diffusers' own `clip_sample` / `clip_sample_range` (DDIM also recomputes eps from the clipped x0,
  `use_clipped_model_output`, as ours did); DPM-Solver++ and UniPC have no static clip in diffusers
  (only dynamic `thresholding`, which also rescales by the percentile), so they clamp the data
  prediction that `convert_model_output` returns: both are data-prediction solvers, so this is the same
  clamp at the same point of the update, and it also holds for the multistep history.

Every diffusers attribute below the public scheduler API (`set_timesteps`, `step`, `scale_model_input`,
`init_noise_sigma`, `timesteps`, `convert_model_output`) that this module reads or writes is touched in
one section, "adapter: diffusers internals", and listed in DIFFUSERS_INTERNALS; make_scheduler checks
they exist, tests/test_diffusers_adapter.py checks they still mean what we assume, and requirements.txt
pins diffusers to the versions those tests ran on.
"""
import contextlib
import inspect

import numpy as np
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                       UniPCMultistepScheduler)
from diffusers import __version__ as DIFFUSERS_VERSION
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from .schedule import BETA_SCHEDULES

__all__ = ["SAMPLERS", "make_scheduler", "run_scheduler", "initial_noise", "linspace_timesteps",
           "DIFFUSERS_VERSION", "DIFFUSERS_INTERNALS", "check_diffusers_internals"]

SAMPLERS = ("ddpm", "ddim", "dpm++", "unipc")
PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction"}
# label only (trained_betas wins); it makes the stored config say which schedule it is
_DIFFUSERS_BETA_LABEL = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


def linspace_timesteps(num_train_timesteps, steps):
    """Our DDPM/DDIM timesteps: `steps` evenly spaced from T-1 down to 0, int64 (steps,)."""
    steps = int(steps)
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}], got {steps}")
    return torch.from_numpy(np.round(np.linspace(num_train_timesteps - 1, 0, steps)).astype(np.int64))


# ---- adapter: diffusers internals -------------------------------------------------------------------
# The only code that reads or writes scheduler attributes outside diffusers' public API. What each
# attribute must mean (diffusers 0.30 .. 0.42, set in the constructors from trained_betas):
#   betas (T,), alphas = 1 - betas, alphas_cumprod = cumprod(alphas)                      all four
#   alpha_t = sqrt(ab), sigma_t = sqrt(1 - ab), lambda_t = log alpha_t - log sigma_t,
#   sigmas = sqrt((1 - ab) / ab) (until set_timesteps replaces them)                   DPM++, UniPC
#   final_alpha_cumprod: the alphas_cumprod that DDIMScheduler.step goes to when
#   t - T // num_inference_steps < 0                                                           DDIM
#   num_inference_steps: the step count; DDPM's set_timesteps(timesteps=...) leaves it None, so
#   LinspaceDDPMScheduler sets it (only so it reads right: with custom timesteps step() ignores it)
DIFFUSERS_INTERNALS = {
    DDPMScheduler: ("betas", "alphas", "alphas_cumprod", "num_inference_steps"),
    DDIMScheduler: ("betas", "alphas", "alphas_cumprod", "final_alpha_cumprod", "num_inference_steps"),
    DPMSolverMultistepScheduler: ("betas", "alphas", "alphas_cumprod", "alpha_t", "sigma_t", "lambda_t",
                                  "sigmas"),
    UniPCMultistepScheduler: ("betas", "alphas", "alphas_cumprod", "alpha_t", "sigma_t", "lambda_t", "sigmas"),
}


def check_diffusers_internals(scheduler):
    """RuntimeError naming the attribute and the diffusers version when `scheduler` lacks one of the
    internals this module relies on (a diffusers outside requirements.txt's range)."""
    for cls, names in DIFFUSERS_INTERNALS.items():
        if isinstance(scheduler, cls):
            missing = [name for name in names if not hasattr(scheduler, name)]
            if missing:
                raise RuntimeError(f"diffusers {DIFFUSERS_VERSION}: {cls.__name__} has no {missing}, which "
                                   f"models/schedulers.py's adapter relies on; install the diffusers range "
                                   f"that requirements.txt pins")
            return


def _use_float64_schedule(scheduler, betas):
    """Put the float64 schedule back after diffusers' constructor made it float32.

    diffusers builds `torch.tensor(trained_betas, dtype=torch.float32)` and its cumprod in float32.
    For the linear schedule (T = 1000) that moves alphas_cumprod by up to 2.7e-7 relative; for the
    cosine schedule the last beta (0.999, clipped) loses 1.3e-5 of 1 - beta, so alphas_cumprod[T-1]
    (2.4e-9) is off by 1.3e-5 relative, and eps -> x0 at t = T-1 divides by its square root. On the
    toy of tests/test_schedulers.py (samples of magnitude ~3) float32 moves DDIM/DDPM samples by
    2e-5 (linear) to 9e-5 (cosine) at 10-50 steps and DDPM-1000 on cosine by 1e-3. Our samplers
    computed every coefficient in float64 and cast it once; with float64 alphas_cumprod the diffusers
    steps do the same (a 0-dim float64 tensor times a float32 tensor stays float32) and agree with
    ours bit for bit. The schedule stays on the CPU: indexing it never waits for the GPU.
    """
    betas = torch.as_tensor(betas, dtype=torch.float64).cpu()
    scheduler.betas = betas
    scheduler.alphas = 1.0 - betas
    scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)
    if isinstance(scheduler, (DPMSolverMultistepScheduler, UniPCMultistepScheduler)):
        # the VP quantities their __init__ derived from the float32 alphas_cumprod
        scheduler.alpha_t = scheduler.alphas_cumprod.sqrt()
        scheduler.sigma_t = (1 - scheduler.alphas_cumprod).sqrt()
        scheduler.lambda_t = scheduler.alpha_t.log() - scheduler.sigma_t.log()
        scheduler.sigmas = ((1 - scheduler.alphas_cumprod) / scheduler.alphas_cumprod).sqrt()


@contextlib.contextmanager
def _ddim_step_goes_to(scheduler, prev_alpha_cumprod):
    """Inside the block DDIMScheduler.step goes to `prev_alpha_cumprod`: upstream step() takes
    alphas_cumprod[t - T // n], or final_alpha_cumprod when that index is negative, so n = 1 forces
    the negative index and final_alpha_cumprod carries the value. Both are restored afterwards."""
    saved = scheduler.num_inference_steps, scheduler.final_alpha_cumprod
    scheduler.num_inference_steps, scheduler.final_alpha_cumprod = 1, prev_alpha_cumprod
    try:
        yield
    finally:
        scheduler.num_inference_steps, scheduler.final_alpha_cumprod = saved


# ---- our schedulers ---------------------------------------------------------------------------------
class LinspaceDDPMScheduler(DDPMScheduler):
    """diffusers' DDPMScheduler (posterior variance "fixed_small" = our beta~) on our timesteps.
    Its `previous_timestep` already looks up the next entry of `self.timesteps`."""

    def set_timesteps(self, num_inference_steps=None, device=None, timesteps=None):
        if timesteps is None and self.config.timestep_spacing == "linspace":
            timesteps = linspace_timesteps(self.config.num_train_timesteps, num_inference_steps).tolist()
        if timesteps is None:
            super().set_timesteps(num_inference_steps, device=device)
        else:
            super().set_timesteps(timesteps=timesteps, device=device)
            self.num_inference_steps = len(self.timesteps)  # see DIFFUSERS_INTERNALS


class NextStepDDIMScheduler(DDIMScheduler):
    """diffusers' DDIMScheduler that steps to the next timestep of its own list (see the module
    docstring), on our timesteps, with eta and eps-from-clipped-x0 fixed at construction.

    step() hands upstream's step the right previous alphas_cumprod (`_ddim_step_goes_to`, in the
    adapter section); the rest of step() (x0, clipping, eta variance, noise) is diffusers' own code.
    Should upstream switch to looking the next timestep up in `self.timesteps`, it gets the same value
    there (and 1.0 after the last step), so this stays right.
    """
    eta = 0.0

    def set_timesteps(self, num_inference_steps, device=None):
        super().set_timesteps(num_inference_steps, device=device)
        if self.config.timestep_spacing == "linspace":
            self.timesteps = linspace_timesteps(self.config.num_train_timesteps, num_inference_steps).to(
                self.timesteps.device)
        timesteps = self.timesteps.tolist()
        self._prev_alpha_cumprod = {t: (self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod)
                                    for t, prev in zip(timesteps, timesteps[1:] + [-1])}

    def step(self, model_output, timestep, sample, eta=None, use_clipped_model_output=None, generator=None,
             variance_noise=None, return_dict=True):
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        key = int(timestep)  # timesteps live on the CPU: no device sync
        if key not in self._prev_alpha_cumprod:
            raise ValueError(f"timestep {key} is not one of this scheduler's timesteps (call set_timesteps)")
        if use_clipped_model_output is None:
            use_clipped_model_output = bool(self.config.clip_sample)
        with _ddim_step_goes_to(self, self._prev_alpha_cumprod[key]):
            return super().step(model_output, timestep, sample, eta=self.eta if eta is None else eta,
                                use_clipped_model_output=use_clipped_model_output, generator=generator,
                                variance_noise=variance_noise, return_dict=return_dict)


class _ClampDataPrediction:
    """For data-prediction solvers (DPM-Solver++, UniPC with predict_x0): clamp the x0 that
    convert_model_output returns to +-clip_x0 (None: off)."""
    clip_x0 = None

    def convert_model_output(self, model_output, *args, sample=None, **kwargs):
        x0 = super().convert_model_output(model_output, *args, sample=sample, **kwargs)
        return x0 if self.clip_x0 is None else x0.clamp(-self.clip_x0, self.clip_x0)


class ClampedDPMSolverMultistepScheduler(_ClampDataPrediction, DPMSolverMultistepScheduler):
    """DPM-Solver++(2M) with optional static x0 clipping."""


class ClampedUniPCMultistepScheduler(_ClampDataPrediction, UniPCMultistepScheduler):
    """UniPC (bh2, data prediction) with optional static x0 clipping."""


def make_scheduler(name, timesteps, beta_schedule, objective, clip_x0=None, eta=0.0):
    """A diffusers scheduler for a model trained with `timesteps` steps of `beta_schedule`
    ("linear" | "cosine") and `objective` ("eps" | "v"), i.e. GaussianDiffusion.config.

    name: "ddpm" (ancestral, posterior variance), "ddim" (eta 0: deterministic; eta 1: DDPM's
    variance), "dpm++" (DPM-Solver++ 2M: multistep, order 2), "unipc" (UniPC-bh2, order 2).
    clip_x0: clamp predicted x0 to +-clip_x0 in normalised space (None or 0: off). eta: DDIM only.

    Settings and why:
    - timestep_spacing "linspace", steps_offset 0. DDPM/DDIM: n timesteps T-1 .. 0, then to
      alphas_cumprod = 1 (set_alpha_to_one); DPM-Solver++ / UniPC: diffusers' linspace, n of n + 1
      points T-1 .. 0 without the 0 (their final step goes to sigma = 0, final_sigmas_type "zero",
      so they never spend a model call at t = 0).
    - DDPM variance_type "fixed_small": beta~ = (1 - ab_prev) / (1 - ab_t) beta_t, the posterior
      variance, recomputed between kept timesteps when respaced.
    - clip_sample = (clip_x0 is not None), clip_sample_range = clip_x0; thresholding off (dynamic
      thresholding rescales x0 by a per-sample percentile: not our clamp).
    - DPM-Solver++: algorithm_type "dpmsolver++", solver_order 2, solver_type "midpoint",
      lower_order_final (first order on the last steps below 15 steps, stabler), euler_at_final off,
      use_karras_sigmas off (the timesteps stay on the training grid, as for the others),
      lambda_min_clipped -inf (no truncation of the start; clip_x0 is what guards the cosine
      schedule's huge eps -> x0 factor at t = T-1).
    - UniPC: solver_order 2 (the paper's choice for guided sampling), predict_x0, bh2, corrector on,
      lower_order_final.
    The schedule is our float64 one (`trained_betas`, then `_use_float64_schedule`).
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: choose one of {SAMPLERS}")
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"unknown beta_schedule {beta_schedule!r}: choose one of {tuple(BETA_SCHEDULES)}")
    if objective not in PREDICTION_TYPES:
        raise ValueError(f"unknown objective {objective!r}: choose one of {tuple(PREDICTION_TYPES)}")
    if clip_x0 is not None and float(clip_x0) < 0:
        raise ValueError(f"clip_x0 must be > 0 (0 or None: off), got {clip_x0}")
    clip_x0 = float(clip_x0) if clip_x0 else None
    if float(eta) != 0.0 and name != "ddim":
        raise ValueError(f"eta applies to ddim only (got eta={eta} for {name!r})")

    betas = BETA_SCHEDULES[beta_schedule](int(timesteps))  # float64 (T,)
    common = dict(num_train_timesteps=int(timesteps), beta_schedule=_DIFFUSERS_BETA_LABEL[beta_schedule],
                  trained_betas=betas.tolist(), prediction_type=PREDICTION_TYPES[objective],
                  thresholding=False, timestep_spacing="linspace", steps_offset=0)
    clip = dict(clip_sample=clip_x0 is not None, clip_sample_range=clip_x0 or 1.0)
    if name == "ddpm":
        scheduler = LinspaceDDPMScheduler(variance_type="fixed_small", **clip, **common)
    elif name == "ddim":
        scheduler = NextStepDDIMScheduler(set_alpha_to_one=True, **clip, **common)
        scheduler.eta = float(eta)
    elif name == "dpm++":
        scheduler = ClampedDPMSolverMultistepScheduler(
            algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", lower_order_final=True,
            euler_at_final=False, use_karras_sigmas=False, final_sigmas_type="zero",
            lambda_min_clipped=-float("inf"), **common)
    else:
        scheduler = ClampedUniPCMultistepScheduler(
            solver_order=2, predict_x0=True, solver_type="bh2", lower_order_final=True, disable_corrector=[],
            use_karras_sigmas=False, final_sigmas_type="zero", **common)
    if name in ("dpm++", "unipc"):
        scheduler.clip_x0 = clip_x0
    check_diffusers_internals(scheduler)
    _use_float64_schedule(scheduler, betas)
    scheduler.sampler_name = name  # run_scheduler's progress label
    return scheduler


def initial_noise(shape, generators, device, dtype=torch.float32):
    """x_T ~ N(0, I) of `shape` (B, ...): one generator per batch item (a list) gives each item its
    own stream, independent of its batch; a CPU generator gives the same numbers on any device
    (diffusers' randn_tensor draws on the generator's device and moves the result).
    GaussianDiffusion.sample draws x_T and the inpainting noise with it."""
    generator = _generator_arg(generators, shape[0])
    return randn_tensor(tuple(shape), generator=generator, device=torch.device(device), dtype=dtype)


def _generator_arg(generators, batch_size):
    if generators is None or isinstance(generators, torch.Generator):
        return generators
    generators = list(generators)  # diffusers tests isinstance(..., list): a tuple would break it
    if len(generators) != batch_size:
        raise ValueError(f"{len(generators)} generators for a batch of {batch_size}")
    return generators


@torch.no_grad()
def run_scheduler(scheduler, denoise_fn, x, generators=None, steps=50, progress=False, hold_fn=None):
    """Denoise x = x_T (B, C, L) in `steps` scheduler steps; returns x_0 (B, C, L).

    denoise_fn(x, t) -> the model output (eps or v, with guidance applied) for x at timestep t
    (a python int). generators: None, one torch.Generator, or a list of one per batch item (the
    noise of DDPM / DDIM eta > 0 then comes from the item's own stream: an item's result does not
    depend on its batch). The loop reads nothing back from the device: the schedule and timesteps
    stay on the CPU. (Noise from CPU generators is still copied to the device each stochastic step;
    generators on the model's device avoid that copy.)
    hold_fn(x, t) -> x: inpainting by replacement; called before every model call with the
    timestep about to be used, and once after the last step with t = -1 (clean data).
    """
    scheduler.set_timesteps(steps)
    generator = _generator_arg(generators, x.shape[0])
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    step_kwargs = {"generator": generator} if takes_generator else {}
    name = getattr(scheduler, "sampler_name", type(scheduler).__name__)
    x = x * scheduler.init_noise_sigma
    for t in tqdm(scheduler.timesteps, desc=f"{name} sampling", disable=not progress, leave=False):
        if hold_fn is not None:
            x = hold_fn(x, int(t))
        model_input = scheduler.scale_model_input(x, t)
        model_output = denoise_fn(model_input, int(t))
        x = scheduler.step(model_output.to(x.dtype), t, x, **step_kwargs).prev_sample
    return hold_fn(x, -1) if hold_fn is not None else x

