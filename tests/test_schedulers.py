"""models/schedulers.py: the diffusers samplers against our hand-written DDPM/DDIM (same timesteps,
same samples), x0 clipping in all four, per-clip noise streams, and DPM-Solver++ / UniPC against a
1000-step DDIM on a toy denoiser."""
import math

import numpy as np
import pytest
import torch

from models.schedule import BETA_SCHEDULES
from models.schedulers import SAMPLERS, initial_noise, linspace_timesteps, make_scheduler, run_scheduler
from models.unet1d_ultimate import UNet1D_ultimate

torch.set_num_threads(1)

T = 1000
MU, S = 1.0, 0.5  # toy data: x0 ~ N(MU, S^2) per value, in normalised space
CLIP = 1.5        # cuts the toy data's upper tail: the clipping branch is taken


def alphas_cumprod(schedule):
    return torch.cumprod(1 - BETA_SCHEDULES[schedule](T), 0)  # float64 (T,)


def toy_denoiser(schedule, objective, seed=0):
    """Exact eps of the Gaussian toy plus a fixed smooth nonlinear error, 0.3 tanh(W x): a denoiser
    with some structure, consistent as t -> 0 (its x0 tends to x), computed in float64."""
    ab_all = alphas_cumprod(schedule)
    weight = torch.randn(8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) / math.sqrt(8)

    def denoise(x, t):
        ab = float(ab_all[int(t)])
        xd = x.double()
        x0 = MU + math.sqrt(ab) * S ** 2 * (xd - math.sqrt(ab) * MU) / (ab * S ** 2 + 1 - ab)
        error = 0.3 * torch.tanh(torch.einsum("oc,bcl->bol", weight, xd))
        eps = (xd - math.sqrt(ab) * x0) / math.sqrt(1 - ab) + error
        if objective == "v":
            x0 = (xd - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
            return (math.sqrt(ab) * eps - math.sqrt(1 - ab) * x0).float()
        return eps.float()
    return denoise


def start(batch=2, seed=1):
    """x_T and one generator per item (fresh each call, so two runs draw the same noise)."""
    generators = [torch.Generator().manual_seed(100 + seed * 10 + i) for i in range(batch)]
    return initial_noise((batch, 8, 12), generators, "cpu"), generators


def reference_sample(name, schedule, objective, clip_x0, steps, denoise, x, generators, eta=0.0):
    """The hand-written DDPMSampler / DDIMSampler of models/diffusion.py (commit 911c93b), frozen
    here so this test keeps its reference once those classes are gone: timesteps
    round(linspace(T-1, 0, n)), float64 coefficients, ab_prev = 1 after the last step, noise
    torch.randn(item shape, generator=g_i) per item."""
    ab_all = alphas_cumprod(schedule)
    timesteps = np.round(np.linspace(T - 1, 0, steps)).astype(np.int64).tolist()
    for t, prev in zip(timesteps, timesteps[1:] + [-1]):
        out = denoise(x, t)
        ab_t, ab_prev = float(ab_all[t]), (float(ab_all[prev]) if prev >= 0 else 1.0)
        if objective == "eps":
            eps, x0 = out, (x - math.sqrt(1 - ab_t) * out) / math.sqrt(ab_t)
        else:
            x0 = math.sqrt(ab_t) * x - math.sqrt(1 - ab_t) * out
            eps = math.sqrt(1 - ab_t) * x + math.sqrt(ab_t) * out
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
            eps = (x - math.sqrt(ab_t) * x0) / math.sqrt(1 - ab_t)
        noise = lambda: torch.stack([torch.randn(x.shape[1:], generator=g) for g in generators])  # noqa: E731
        if name == "ddpm":
            beta = 1 - ab_t / ab_prev
            x_new = (math.sqrt(ab_prev) * beta / (1 - ab_t)) * x0 + \
                (math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab_t)) * x
            if prev >= 0:
                x_new = x_new + math.sqrt(beta * (1 - ab_prev) / (1 - ab_t)) * noise()
        else:
            sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))
            x_new = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma ** 2, 0.0)) * eps
            if sigma > 0:
                x_new = x_new + sigma * noise()
        x = x_new
    return x


def diffusers_sample(name, schedule, objective, clip_x0, steps, denoise, x, generators, eta=0.0):
    scheduler = make_scheduler(name, T, schedule, objective, clip_x0=clip_x0, eta=eta)
    return run_scheduler(scheduler, denoise, x, generators, steps), scheduler


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_timesteps_are_ours(name):
    scheduler = make_scheduler(name, T, "linear", "eps")
    for steps in (1, 2, 10, 27, 50, 1000):  # diffusers' own "linspace" differs at 1 (-> [0]) and 27 (499 vs 500)
        scheduler.set_timesteps(steps)
        expected = np.round(np.linspace(T - 1, 0, steps)).astype(np.int64)
        assert scheduler.timesteps.tolist() == expected.tolist() == linspace_timesteps(T, steps).tolist()
        assert scheduler.timesteps.device.type == "cpu"


def test_schedule_is_our_float64_schedule():
    for schedule in ("linear", "cosine"):
        for name in SAMPLERS:
            scheduler = make_scheduler(name, T, schedule, "v")
            assert scheduler.alphas_cumprod.dtype == torch.float64
            assert torch.equal(scheduler.alphas_cumprod, alphas_cumprod(schedule))
    # what the float32 default would have cost: 1 - 0.999 (the cosine schedule's clipped last beta)
    betas32 = BETA_SCHEDULES["cosine"](T).float()
    rel = ((torch.cumprod(1 - betas32, 0).double() - alphas_cumprod("cosine")) / alphas_cumprod("cosine")).abs()
    assert 1e-6 < rel.max() < 1e-4


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
@pytest.mark.parametrize("schedule,objective", [("linear", "eps"), ("linear", "v"), ("cosine", "eps"),
                                                ("cosine", "v")])
@pytest.mark.parametrize("clip_x0", [None, CLIP])
def test_diffusers_ddpm_ddim_give_our_samples(name, schedule, objective, clip_x0):
    denoise = toy_denoiser(schedule, objective)
    for steps in (10, 50) + ((1000,) if (schedule, objective) in {("linear", "eps"), ("cosine", "v")} else ()):
        x, generators = start()
        ours = reference_sample(name, schedule, objective, clip_x0, steps, denoise, x, generators)
        x, generators = start()
        theirs, _ = diffusers_sample(name, schedule, objective, clip_x0, steps, denoise, x, generators)
        assert ours.abs().max() > 0.5 and ours.std() > 0.1  # a real sample, not a collapsed one
        if clip_x0 is not None:
            assert ours.abs().max() <= clip_x0 + 1e-6 < ours.abs().max() + 1e-3  # the clip was hit
        # same float32 arithmetic on float64 coefficients: equal to rounding (bitwise on this machine)
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)


def test_stochastic_ddim_gives_our_samples():
    denoise = toy_denoiser("linear", "v")
    for eta in (0.5, 1.0):
        x, generators = start()
        ours = reference_sample("ddim", "linear", "v", CLIP, 20, denoise, x, generators, eta=eta)
        x, generators = start()
        theirs, _ = diffusers_sample("ddim", "linear", "v", CLIP, 20, denoise, x, generators, eta=eta)
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)


def test_upstream_ddim_steps_to_a_timestep_it_does_not_visit():
    """Why NextStepDDIMScheduler exists: diffusers' DDIMScheduler with our (linspace) timesteps steps
    to t - T // n, not to the next timestep (huggingface/diffusers #11347, #12633)."""
    from diffusers import DDIMScheduler
    upstream = DDIMScheduler(num_train_timesteps=T, trained_betas=BETA_SCHEDULES["linear"](T).tolist(),
                             clip_sample=False, timestep_spacing="linspace")
    upstream.set_timesteps(10)
    visited = upstream.timesteps.tolist()
    assert visited[:3] == [999, 888, 777]
    assert visited[0] - T // 10 not in visited  # 899: the noise level it leaves x at
    denoise = toy_denoiser("linear", "eps")
    x, generators = start()
    ours = reference_sample("ddim", "linear", "eps", None, 10, denoise, x, generators)
    x, generators = start()
    if (run_scheduler(upstream, denoise, x, generators, 10) - ours).abs().max() < 1e-3:
        pytest.fail("diffusers' DDIMScheduler now matches our DDIM with linspace spacing: the upstream bug "
                    "is fixed, NextStepDDIMScheduler's workaround can go")


@pytest.mark.parametrize("schedule,objective,clip_x0", [("linear", "eps", None), ("cosine", "v", CLIP)])
def test_multistep_solvers_at_20_steps_land_near_ddim_1000(schedule, objective, clip_x0):
    denoise = toy_denoiser(schedule, objective)
    x, generators = start(batch=4)
    reference = reference_sample("ddim", schedule, objective, clip_x0, 1000, denoise, x, generators)
    errors = {}
    for name, steps in (("ddim", 20), ("dpm++", 20), ("unipc", 20), ("dpm++", 50)):
        x, generators = start(batch=4)
        sample, scheduler = diffusers_sample(name, schedule, objective, clip_x0, steps, denoise, x, generators)
        errors[name, steps] = float((sample - reference).abs().max())
    # on this toy (measured): DDIM-20 0.24 / 0.18, DPM-Solver++-20 0.13 / 0.13, UniPC-20 0.10 / 0.07
    assert errors["dpm++", 20] < 0.2 and errors["unipc", 20] < 0.2, errors
    assert errors["dpm++", 20] < errors["ddim", 20] and errors["unipc", 20] < errors["ddim", 20], errors
    assert errors["dpm++", 50] < errors["dpm++", 20], errors  # it converges


@pytest.mark.parametrize("name", SAMPLERS)
def test_clip_x0_in_every_sampler(name):
    """A model whose x0 prediction is 5 everywhere: with clip_x0 = 1.5 the sample ends at 1.5
    (every sampler's last step returns its x0), without it at 5."""
    def x0_is_five(objective, schedule="linear"):
        ab_all = alphas_cumprod(schedule)

        def denoise(x, t):
            ab = float(ab_all[t])
            eps = (x - math.sqrt(ab) * 5.0) / math.sqrt(1 - ab)
            return eps if objective == "eps" else math.sqrt(ab) * eps - math.sqrt(1 - ab) * 5.0
        return denoise

    for objective in ("eps", "v"):
        for clip_x0, expected in ((CLIP, CLIP), (None, 5.0)):
            x, generators = start()
            sample, _ = diffusers_sample(name, "linear", objective, clip_x0, 10, x0_is_five(objective), x,
                                         generators)
            torch.testing.assert_close(sample, torch.full_like(sample, expected), rtol=0, atol=2e-3)


def tiny_unet():
    torch.manual_seed(0)
    unet = UNet1D_ultimate(mel_dim=8, motion_dim=6, lyric_dim=4, base_dim=8, dim_mults=(1,), cond_dim=8,
                           time_emb_dim=8, num_res_blocks=1, num_mid_blocks=1, num_heads=2)
    torch.nn.init.normal_(unet.out_conv.weight, std=0.1)  # zero-initialised: it would predict 0
    return unet.eval()


def guided(unet, motion, lyrics, guidance=2.0):
    """Classifier-free guidance from ONE forward of [cond | uncond], as GaussianDiffusion does."""
    def denoise(x, t):
        batch = x.shape[0]
        drop = torch.arange(2 * batch) >= batch
        t = torch.full((2 * batch,), t, dtype=torch.long)
        out = unet(torch.cat([x, x]), t, torch.cat([motion, motion]), torch.cat([lyrics, lyrics]),
                   drop_motion=drop, drop_lyrics=drop)
        cond, uncond = out.chunk(2)
        return uncond + guidance * (cond - uncond)
    return denoise


@pytest.mark.parametrize("name,eta", [("ddpm", 0.0), ("ddim", 1.0), ("dpm++", 0.0)])
def test_a_clips_sample_does_not_depend_on_its_batch(name, eta):
    unet = tiny_unet()
    conditions = torch.Generator().manual_seed(5)
    motion, lyrics = torch.randn(3, 12, 6, generator=conditions), torch.randn(3, 5, 4, generator=conditions)
    seeds = [11, 22, 33]

    def sample(items):
        generators = [torch.Generator().manual_seed(seeds[i]) for i in items]
        x = initial_noise((len(items), 8, 12), generators, "cpu")
        scheduler = make_scheduler(name, T, "linear", "v", clip_x0=3.0, eta=eta)
        with torch.no_grad():
            return run_scheduler(scheduler, guided(unet, motion[items], lyrics[items]), x, generators, 8)

    batch = sample([0, 1, 2])
    alone = sample([1])
    reordered = sample([2, 1])
    torch.testing.assert_close(alone[0], batch[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(reordered[1], batch[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(reordered[0], batch[2], rtol=0, atol=1e-5)
    assert (batch[0] - batch[1]).abs().max() > 0.1


def test_initial_noise_is_each_generators_own_stream():
    generators = [torch.Generator().manual_seed(s) for s in (3, 4)]
    noise = initial_noise((2, 8, 12), generators, "cpu")
    for i, seed in enumerate((3, 4)):
        assert torch.equal(noise[i], torch.randn(8, 12, generator=torch.Generator().manual_seed(seed)))
    with pytest.raises(ValueError, match="3 generators for a batch of 2"):
        initial_noise((2, 8, 12), [torch.Generator()] * 3, "cpu")


def test_settings_reach_the_scheduler_and_bad_settings_are_refused():
    scheduler = make_scheduler("ddim", T, "cosine", "v", clip_x0=6.0, eta=0.5)
    scheduler.set_timesteps(10)
    assert type(scheduler).__name__ == "NextStepDDIMScheduler" and scheduler.sampler_name == "ddim"
    assert scheduler.eta == 0.5 and scheduler.config.num_train_timesteps == T
    assert scheduler.timesteps[0] == 999 and scheduler.timesteps[-1] == 0 and len(scheduler.timesteps) == 10
    config = scheduler.config
    assert config.prediction_type == "v_prediction" and config.timestep_spacing == "linspace"
    assert config.clip_sample is True and config.clip_sample_range == 6.0
    assert config.beta_schedule == "squaredcos_cap_v2"  # the label of our cosine schedule
    dpm = make_scheduler("dpm++", T, "linear", "eps")
    assert dpm.config.algorithm_type == "dpmsolver++" and dpm.config.solver_order == 2
    with pytest.raises(ValueError, match="unknown sampler"):
        make_scheduler("euler", T, "linear", "eps")
    with pytest.raises(ValueError, match="eta applies to ddim only"):
        make_scheduler("dpm++", T, "linear", "eps", eta=1.0)
    assert make_scheduler("ddpm", T, "linear", "eps", clip_x0=0).config.clip_sample is False  # 0: off
    assert make_scheduler("unipc", T, "linear", "eps", clip_x0=0).clip_x0 is None
    with pytest.raises(ValueError, match="clip_x0 must be > 0"):
        make_scheduler("ddim", T, "linear", "eps", clip_x0=-1)
    with pytest.raises(ValueError, match="unknown objective"):
        make_scheduler("ddim", T, "linear", "x0")


@pytest.mark.parametrize("name", SAMPLERS)
def test_loop_reads_nothing_back_from_the_device(name):
    """On the meta device any host read of a tensor's value (.item(), bool(), float()) raises: the
    loop, the schedulers' steps and the x0 clipping run there, so they never wait for the GPU."""
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    x = initial_noise((2, 8, 12), generators, "meta")
    scheduler = make_scheduler(name, T, "cosine", "v", clip_x0=CLIP, eta=1.0 if name == "ddim" else 0.0)
    seen = []

    def denoise(x, t):
        seen.append((x.device.type, type(t)))
        return torch.tanh(x)
    out = run_scheduler(scheduler, denoise, x, generators, 10)
    assert out.device.type == "meta" and out.shape == (2, 8, 12)
    assert seen == [("meta", int)] * 10
