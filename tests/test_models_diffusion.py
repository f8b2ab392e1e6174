"""GaussianDiffusion: schedules, forward process and posterior against closed forms, samplers on an
analytically solvable toy (Gaussian data, exact eps), guidance batching, loss."""
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from models.diffusion import (GaussianDiffusion, SamplingConfig, cosine_beta_schedule,  # noqa: E402
                              linear_beta_schedule)
from models.schedulers import make_scheduler  # noqa: E402
from models.unet1d_ultimate import UNet1D_ultimate  # noqa: E402

torch.set_num_threads(1)


class GaussianToyModel(torch.nn.Module):
    """Exact denoiser for 1-D data x0 ~ N(mu, s^2) in normalised space: eps_hat = E[eps | x_t]
    (or the matching v). The conditional mean is mu_cond, the unconditional (dropped) one mu_uncond,
    so guidance w gives the data mean mu_uncond + w (mu_cond - mu_uncond) exactly."""
    mel_dim = 1
    motion_dim = 3

    def __init__(self, alphas_cumprod, mu_cond, mu_uncond, s, objective="eps"):
        super().__init__()
        self.register_buffer("ab", alphas_cumprod.double().clone())
        self.mu_cond, self.mu_uncond, self.s, self.objective = mu_cond, mu_uncond, s, objective
        self.calls = []  # (batch size, drop_motion) per call

    def forward(self, x, t, motion, lyrics, lyric_pad_mask=None, drop_motion=None, drop_lyrics=None):
        self.calls.append((x.shape[0], None if drop_motion is None else drop_motion.tolist()))
        ab = self.ab[t][:, None, None]
        mu = torch.full_like(ab, self.mu_cond)
        if drop_motion is not None:
            mu = torch.where(drop_motion[:, None, None], torch.full_like(ab, self.mu_uncond), mu)
        xd = x.double()
        var_t = ab * self.s ** 2 + 1 - ab  # marginal variance of x_t
        eps = (1 - ab).sqrt() * (xd - ab.sqrt() * mu) / var_t
        if self.objective == "v":
            x0 = mu + ab.sqrt() * self.s ** 2 * (xd - ab.sqrt() * mu) / var_t
            return (ab.sqrt() * eps - (1 - ab).sqrt() * x0).to(x.dtype)
        return eps.to(x.dtype)


def toy_diffusion(objective="eps", schedule="linear", mu_cond=1.5, mu_uncond=-0.5, s=0.5,
                  mel_mean=2.0, mel_std=3.0):
    betas = (linear_beta_schedule if schedule == "linear" else cosine_beta_schedule)(1000)
    model = GaussianToyModel(torch.cumprod(1 - betas, 0), mu_cond, mu_uncond, s, objective)
    # the toy's 3 motion channels are standardised "raw" features (the default view, beat, needs 234)
    return GaussianDiffusion(model, timesteps=1000, beta_schedule=schedule, objective=objective,
                             motion_features="raw", mel_mean=[mel_mean], mel_std=[mel_std],
                             motion_mean=np.zeros(3), motion_std=np.ones(3))


def toy_conditions(batch=4, frames=1000):
    return torch.zeros(batch, frames, 3), torch.zeros(batch, 2, 5), None


def test_schedules():
    linear = linear_beta_schedule(1000)
    assert linear.dtype == torch.float64 and linear.shape == (1000,)
    assert linear[0].item() == pytest.approx(1e-4) and linear[-1].item() == pytest.approx(0.02)
    assert linear_beta_schedule(21)[-1].item() == pytest.approx(0.02 * 1000 / 21)  # 0.95: still < 1
    with pytest.raises(ValueError, match="timesteps >= 21.*cosine"):  # T = 20: the last beta is 1
        linear_beta_schedule(20)
    assert (cosine_beta_schedule(10) <= 0.999).all()  # the cosine schedule has no such floor
    cosine = cosine_beta_schedule(1000)
    assert (cosine > 0).all() and (cosine <= 0.999).all()
    ab = torch.cumprod(1 - cosine, 0)
    f = lambda t: np.cos((t / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
    np.testing.assert_allclose(ab[:-1].numpy(), f(np.arange(1, 1000)) / f(0), rtol=1e-9)
    for name in ("linear", "cosine"):
        d = GaussianDiffusion(GaussianToyModel(ab, 0, 0, 1), beta_schedule=name, motion_features="raw")
        assert asdict(d.config) == dict(timesteps=1000, beta_schedule=name, objective="v",
                                      motion_features="raw")
        assert d.alphas_cumprod.dtype == torch.float64


def test_q_sample_matches_closed_form_float64():
    d = toy_diffusion(schedule="linear")
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 1, 7, generator=g, dtype=torch.float64)
    noise = torch.randn(6, 1, 7, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 500, 998, 999])
    a = torch.from_numpy(ab[t.numpy()])[:, None, None]
    got = d.q_sample(x0, t, noise)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, a.sqrt() * x0 + (1 - a).sqrt() * noise, rtol=1e-12, atol=1e-12)


def test_ddpm_step_is_the_posterior_of_bayes_rule():
    """The DDPM sampler's step from t to t-1 draws from q(x_{t-1} | x_t, x0): by Bayes the product
    of q(x_t | x_{t-1}) and q(x_{t-1} | x0), written out here in float64."""
    betas = np.linspace(1e-4, 0.02, 1000)
    ab = np.cumprod(1 - betas)
    sampler = make_scheduler("ddpm", 1000, "linear", "eps")
    sampler.set_timesteps(1000)
    assert sampler.timesteps.tolist() == list(range(999, -1, -1))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 1, 4, generator=g, dtype=torch.float64)
    t = 500
    x0 = (x - np.sqrt(1 - ab[t]) * eps) / np.sqrt(ab[t])
    out = sampler.step(eps, t, x, generator=torch.Generator().manual_seed(7))
    ab_prev, alpha, beta = ab[t - 1], 1 - betas[t], betas[t]
    precision = 1 / (1 - ab_prev) + alpha / beta
    mean = (np.sqrt(ab_prev) * x0 / (1 - ab_prev) + np.sqrt(alpha) * x / beta) / precision
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    torch.testing.assert_close(out.prev_sample, mean + np.sqrt(1 / precision) * noise, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out.pred_original_sample, x0, rtol=1e-9, atol=1e-9)


def test_normalisation_round_trip_and_stats_in_state_dict():
    d = toy_diffusion(mel_mean=2.0, mel_std=3.0)
    mel = torch.randn(2, 1, 5)
    torch.testing.assert_close(d.normalize_mel(mel), (mel - 2.0) / 3.0)
    torch.testing.assert_close(d.unnormalize_mel(d.normalize_mel(mel)), mel)
    keys = set(k for k in d.state_dict() if not k.startswith("model."))
    assert keys == {"mel_mean", "mel_std", "motion_mean", "motion_std"}  # schedule is rebuilt, not stored
    with pytest.raises(ValueError, match="mel_mean"):
        GaussianDiffusion(UNet1D_ultimate(base_dim=8, dim_mults=(1,), num_heads=2, lyric_dim=4),
                          mel_mean=np.zeros(79))


@pytest.mark.parametrize("sampler,steps,eta,objective", [
    ("ddpm", 1000, 0.0, "eps"),
    ("ddpm", 100, 0.0, "v"),
    ("ddim", 50, 0.0, "eps"),
    ("ddim", 50, 0.0, "v"),
    ("ddim", 100, 1.0, "eps"),
])
def test_sampling_recovers_toy_distribution(sampler, steps, eta, objective):
    d = toy_diffusion(objective=objective, mu_cond=1.5, s=0.5, mel_mean=2.0, mel_std=3.0)
    motion, lyrics, pad = toy_conditions()
    settings = SamplingConfig(sampler=sampler, steps=steps, eta=eta, guidance=1.0, precision="fp32")
    mel = d.sample(motion, lyrics, pad, settings=settings, generator=torch.Generator().manual_seed(0))
    assert mel.shape == (4, 1, 1000)
    assert len(d.model.calls) == steps
    # raw = 2 + 3 x with x ~ N(1.5, 0.5^2): mean 6.5, std 1.5; 4000 samples. With few steps both
    # samplers shrink the variance a little (discretisation error, not a bug): compare with the
    # exact moments of the sampler's affine recursion, and those with the data distribution.
    ab = d.alphas_cumprod.numpy()
    ts = np.round(np.linspace(999, 0, steps)).astype(int)
    mean, std = sampler_gaussian_moments([ab[t] for t in ts] + [1.0], 1.5, 0.5,
                                         eta=1.0 if sampler == "ddpm" else eta)
    assert mean == pytest.approx(1.5, abs=0.01) and std == pytest.approx(0.5, rel=0.08)
    if steps == 1000:
        assert std == pytest.approx(0.5, rel=0.01)
    assert mel.mean().item() == pytest.approx(2 + 3 * mean, abs=0.07)
    assert mel.std().item() == pytest.approx(3 * std, rel=0.04)


def sampler_gaussian_moments(ab_seq, mu, s, eta):
    """Mean and std of DDIM(eta) output (DDPM = DDIM with eta 1) for x_T ~ N(0, 1) and the exact
    eps of N(mu, s^2) data: each step is x_prev = a x + b + sigma z, so the moments follow exactly."""
    mean, var = 0.0, 1.0
    for ab, ab_prev in zip(ab_seq[:-1], ab_seq[1:]):
        v_t = ab * s ** 2 + 1 - ab
        # eps = c (x - sqrt(ab) mu), x0 = (x - sqrt(1 - ab) eps) / sqrt(ab)
        c = np.sqrt(1 - ab) / v_t
        a_x0, b_x0 = (1 - np.sqrt(1 - ab) * c) / np.sqrt(ab), np.sqrt(1 - ab) * c * mu
        sigma = eta * np.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
        direction = np.sqrt(1 - ab_prev - sigma ** 2)
        a = np.sqrt(ab_prev) * a_x0 + direction * c
        b = np.sqrt(ab_prev) * b_x0 - direction * c * np.sqrt(ab) * mu
        mean, var = a * mean + b, a ** 2 * var + sigma ** 2
    return mean, np.sqrt(var)


def test_guidance_batches_cond_and_uncond_in_one_call_per_step():
    d = toy_diffusion(mu_cond=1.0, mu_uncond=-0.5, s=0.3, mel_mean=0.0, mel_std=1.0)
    motion, lyrics, pad = toy_conditions(batch=2)
    mel = d.sample(motion, lyrics, pad, settings=SamplingConfig(steps=20, guidance=2.0, precision="fp32"),
                   generator=torch.Generator().manual_seed(0))
    assert len(d.model.calls) == 20
    assert all(c == (4, [False, False, True, True]) for c in d.model.calls)
    assert mel.mean().item() == pytest.approx(-0.5 + 2.0 * (1.0 + 0.5), abs=0.05)  # guided mean 2.5

    for guidance, expected_call in ((1.0, (2, None)), (0.0, (2, [True, True]))):
        d.model.calls.clear()
        settings = SamplingConfig(steps=10, guidance=guidance, precision="fp32")
        mel = d.sample(motion, lyrics, pad, settings=settings, generator=torch.Generator().manual_seed(0))
        assert d.model.calls == [expected_call] * 10
        assert mel.mean().item() == pytest.approx(1.0 if guidance == 1 else -0.5, abs=0.05)


def test_sample_refuses_an_unresolved_precision():
    """"auto" depends on the device's CPU flags, which models/ does not read: the caller resolves it."""
    d = toy_diffusion()
    motion, lyrics, pad = toy_conditions(batch=1, frames=4)
    for settings in (SamplingConfig(), None):
        with pytest.raises(ValueError, match='resolves "auto" for its device first'):
            d.sample(motion, lyrics, pad, settings=settings)
    assert SamplingConfig().precision == "auto"  # the recommended default, resolved per device


def test_guidance_with_unet_counts_calls_and_sample_is_deterministic():
    torch.manual_seed(0)
    unet = UNet1D_ultimate(lyric_dim=8, base_dim=16, dim_mults=(1, 2), cond_dim=16, time_emb_dim=16,
                           num_res_blocks=1, num_mid_blocks=1, num_heads=2, dropout=0.1)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    batch_sizes = []
    unet.register_forward_pre_hook(lambda module, args: batch_sizes.append(args[0].shape[0]))
    d = GaussianDiffusion(unet, timesteps=100)
    g = torch.Generator().manual_seed(0)
    motion, lyrics = torch.randn(2, 13, 234, generator=g), torch.randn(2, 3, 8, generator=g)
    pad = torch.tensor([[False, False, True], [False, False, False]])
    def run(seed, sampler="ddim", **kw):
        settings = SamplingConfig(sampler=sampler, steps=6, guidance=3.0, precision="fp32")
        generator = torch.Generator().manual_seed(seed)
        return d.sample(motion, lyrics, pad, settings=settings, generator=generator, **kw)
    a = run(1)
    assert batch_sizes == [4] * 6
    assert unet.training  # mode restored after sampling
    assert torch.equal(a, run(1)) and not torch.equal(a, run(2))
    b = run(1, sampler="ddpm", progress=True)
    assert torch.equal(b, run(1, sampler="ddpm")) and b.shape == (2, 80, 13)
    assert torch.isfinite(b).all()


def test_inpainting_holds_the_known_frames():
    """known/known_mask: the output equals the known mel on held frames, the free frames still
    follow the model (toy data mean), and a clip's result does not depend on its batch."""
    d = toy_diffusion(mu_cond=1.5, s=0.5, mel_mean=2.0, mel_std=3.0)
    motion, lyrics, pad = toy_conditions(batch=2, frames=50)
    known = torch.full((2, 1, 50), -7.0)
    mask = torch.zeros(2, 50, dtype=torch.bool)
    mask[:, :20] = True
    gens = lambda: [torch.Generator().manual_seed(s) for s in (3, 4)]  # noqa: E731
    cfg = SamplingConfig(sampler="ddpm", steps=30, guidance=1.0, precision="fp32")
    mel = d.sample(motion, lyrics, pad, settings=cfg, generator=gens(), known=known, known_mask=mask)
    assert torch.equal(mel[:, :, :20], known[:, :, :20])
    assert mel[:, :, 20:].mean().item() == pytest.approx(2 + 3 * 1.5, abs=0.6)
    alone = d.sample(motion[:1], lyrics[:1], None, settings=cfg, generator=gens()[:1], known=known[:1],
                     known_mask=mask[:1])
    torch.testing.assert_close(alone, mel[:1])


def test_v_objective_conversion_is_exact():
    d = toy_diffusion(objective="v")
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 1, 6, generator=g, dtype=torch.float64)
    noise = torch.randn(4, 1, 6, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    xt = d.q_sample(x0, t, noise)
    eps, x0_hat = d.predict_eps_x0(d.v_target(x0, t, noise), xt, t)
    torch.testing.assert_close(eps, noise, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("objective", ["eps", "v"])
def test_loss_is_finite_scalar_and_backprops(objective):
    torch.manual_seed(0)
    unet = UNet1D_ultimate(lyric_dim=8, base_dim=16, dim_mults=(1, 2), cond_dim=16, time_emb_dim=16,
                           num_res_blocks=1, num_mid_blocks=1, num_heads=2, dropout=0.0)
    d = GaussianDiffusion(unet, objective=objective, mel_mean=torch.full((80,), -5.0),
                          mel_std=torch.full((80,), 2.0), motion_mean=torch.zeros(234),
                          motion_std=torch.full((234,), 0.5))
    g = torch.Generator().manual_seed(1)
    mel = torch.randn(3, 80, 21, generator=g) * 2 - 5
    motion = torch.randn(3, 21, 234, generator=g)
    lyrics = torch.randn(3, 4, 8, generator=g)
    pad = torch.tensor([[False] * 4, [False, True, True, True], [False, False, True, True]])
    drop = torch.tensor([False, True, False])
    loss = d.loss(mel, motion, lyrics, pad, drop_motion=drop, drop_lyrics=~drop)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in unet.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert unet.out_conv.weight.grad.abs().sum() > 0

    # fixed t and noise: equals the MSE to the target written out by hand (fresh model outputs 0)
    t = torch.tensor([0, 400, 999])
    noise = torch.randn(3, 80, 21, generator=g)
    per_item = d.loss(mel, motion, lyrics, pad, t=t, noise=noise, reduction="none")
    assert per_item.shape == (3,)
    x0 = (mel + 5) / 2
    ab = d.alphas_cumprod[t].float()[:, None, None]
    target = noise if objective == "eps" else ab.sqrt() * noise - (1 - ab).sqrt() * x0
    torch.testing.assert_close(per_item, (target ** 2).mean(dim=(1, 2)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d.loss(mel, motion, lyrics, pad, t=t, noise=noise), per_item.mean())
