"""models/schedulers.py's adapter section: the diffusers internals it reads and writes
(DIFFUSERS_INTERNALS) exist in the installed diffusers and still mean what the adapter assumes, and
the installed version lies in the range requirements.txt pins. Every failure names the attribute and
the diffusers version: a new diffusers that moved one of them fails here, not in a sample."""
import re
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from models.schedule import BETA_SCHEDULES
from models.schedulers import (DIFFUSERS_INTERNALS, DIFFUSERS_VERSION, SAMPLERS, _ddim_step_goes_to,
                               check_diffusers_internals, make_scheduler)

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parent.parent
T = 1000
BETAS = BETA_SCHEDULES["cosine"](T)  # float64 (T,); alphas_cumprod spans 1 .. 2e-9
PIN_ADVICE = "models/schedulers.py's adapter section relies on it; keep diffusers in requirements.txt's range"


def where(cls, attr):
    return f"diffusers {DIFFUSERS_VERSION}: {cls.__name__}.{attr}"


def plain(cls, **config):
    """diffusers' own scheduler on our betas, untouched by the adapter."""
    return cls(num_train_timesteps=T, trained_betas=BETAS.tolist(), **config)


def test_installed_diffusers_is_in_the_pinned_range():
    lines = [line for line in (REPO / "requirements.txt").read_text().splitlines()
             if re.match(r"diffusers\s*[<>=!~]", line)]
    assert len(lines) == 1, "requirements.txt: expected one diffusers line with a version range"
    spec = SpecifierSet(lines[0].split("#")[0].strip()[len("diffusers"):].strip())
    assert "0.42.1" in spec and "0.43.0" not in spec, \
        f"requirements.txt pins diffusers{spec}: the adapter was checked on 0.30 .. 0.42 only"
    assert Version(DIFFUSERS_VERSION) in spec, \
        (f"diffusers {DIFFUSERS_VERSION} is installed, outside requirements.txt's diffusers{spec}: "
         f"{PIN_ADVICE} (or check this file and tests/test_schedulers.py on it, then widen the pin)")


@pytest.mark.parametrize("cls", list(DIFFUSERS_INTERNALS), ids=lambda c: c.__name__)
def test_the_internals_exist(cls):
    scheduler = plain(cls)
    for attr in DIFFUSERS_INTERNALS[cls]:
        assert hasattr(scheduler, attr), f"{where(cls, attr)} is missing; {PIN_ADVICE}"


@pytest.mark.parametrize("cls", list(DIFFUSERS_INTERNALS), ids=lambda c: c.__name__)
def test_the_schedule_attributes_mean_what_the_adapter_assumes(cls):
    """_use_float64_schedule rewrites these in float64 from our betas; they must be the quantities
    diffusers derives from trained_betas (its own float32 values: same formulas, float32 roundoff)."""
    s = plain(cls)
    ab = s.alphas_cumprod
    formulas = {"betas": ("trained_betas", torch.as_tensor(BETAS, dtype=ab.dtype)),
                "alphas": ("1 - betas", 1.0 - s.betas),
                "alphas_cumprod": ("cumprod(alphas)", torch.cumprod(s.alphas, dim=0))}
    if "lambda_t" in DIFFUSERS_INTERNALS[cls]:
        formulas.update(alpha_t=("sqrt(alphas_cumprod)", ab.sqrt()),
                        sigma_t=("sqrt(1 - alphas_cumprod)", (1 - ab).sqrt()),
                        lambda_t=("log(alpha_t) - log(sigma_t)", ab.sqrt().log() - (1 - ab).sqrt().log()),
                        sigmas=("sqrt((1 - alphas_cumprod) / alphas_cumprod)", ((1 - ab) / ab).sqrt()))
    for attr, (formula, want) in formulas.items():
        got = torch.as_tensor(getattr(s, attr))
        assert got.shape == want.shape and torch.allclose(got.double(), want.double(), rtol=1e-5, atol=1e-6), \
            f"{where(cls, attr)} is no longer {formula} after the constructor; {PIN_ADVICE}"
    # and against our float64 schedule: what the adapter puts back differs by float32 roundoff only
    torch.testing.assert_close(ab.double(), torch.cumprod(1 - BETAS, 0), rtol=1e-4, atol=0)


def test_ddim_final_alpha_cumprod_is_where_a_step_goes_past_the_first_timestep():
    """NextStepDDIMScheduler's step goes through `_ddim_step_goes_to`: with num_inference_steps = 1,
    upstream's step must take final_alpha_cumprod as the previous alphas_cumprod."""
    s = plain(DDIMScheduler, clip_sample=False, set_alpha_to_one=True, timestep_spacing="linspace",
              steps_offset=0)
    assert float(s.final_alpha_cumprod) == 1.0, \
        f"{where(DDIMScheduler, 'final_alpha_cumprod')} is not 1 with set_alpha_to_one; {PIN_ADVICE}"
    s.set_timesteps(10)
    t, ab_prev = 500, torch.tensor(0.7, dtype=torch.float64)
    ab_t = s.alphas_cumprod[t].double()
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 3, 5, generator=g, dtype=torch.float64), torch.randn(2, 3, 5, generator=g,
                                                                                dtype=torch.float64)
    with _ddim_step_goes_to(s, ab_prev):
        got = s.step(eps, t, x, eta=0.0).prev_sample
    assert s.num_inference_steps == 10, "_ddim_step_goes_to must restore num_inference_steps"
    x0 = (x - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
    want = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps  # deterministic DDIM to ab_prev
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-6), \
        (f"{where(DDIMScheduler, 'final_alpha_cumprod')}: DDIMScheduler.step with num_inference_steps = 1 no "
         f"longer steps to final_alpha_cumprod (t - T // n < 0); {PIN_ADVICE}")


@pytest.mark.parametrize("name", SAMPLERS)
def test_make_scheduler_refuses_a_diffusers_without_an_internal(name):
    scheduler = make_scheduler(name, T, "cosine", "v")
    check_diffusers_internals(scheduler)  # the real one passes
    cls = next(c for c in DIFFUSERS_INTERNALS if isinstance(scheduler, c))
    attr = DIFFUSERS_INTERNALS[cls][-1]
    delattr(scheduler, attr)  # an instance attribute: deleting it stands in for a diffusers without it
    with pytest.raises(RuntimeError, match=rf"diffusers {re.escape(DIFFUSERS_VERSION)}: {cls.__name__} "
                                           rf"has no \['{attr}'\]"):
        check_diffusers_internals(scheduler)
