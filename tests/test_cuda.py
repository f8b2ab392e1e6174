"""CUDA readiness (issue 19, item 4): the code paths that only run on a GPU, on tiny models and fake
clips so they take seconds there. Every test but the last is marked `cuda` and skipped without a
GPU (`pytest -m cuda tests` runs them; sometest/gpu_check.sh runs them with the GPU benchmark rows):

- AMP training steps (bf16; fp16 with a GradScaler) through build_parts + train_step: finite, and
  their losses close to an fp32 step's on the same weights, batch and seed;
- exact resume on CUDA: train.py N steps straight == N/2 + --resume + N/2, bitwise, and the CUDA
  generator state round-trips through capture_rng_state / restore_rng_state (and a checkpoint file);
- bf16 sampling on CUDA equal to fp32 within the tolerance measured on CPU, and CUDA fp32 equal
  to CPU fp32 (same CPU noise generators);
- peak GPU memory of one default-size training step at batch 16 x 516 mel frames (default amp),
  printed (run with -s to see it) and bounded.

The last test runs everywhere: the `cuda` marker is registered (root conftest.py) and `-m cuda`
selects exactly the tests of this file.
"""
import gc
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

# cuBLAS is deterministic only with a fixed workspace; the variable must be set before the first
# cuBLAS handle of the process (nothing touches CUDA while tests are collected, so this is early
# enough). It changes nothing else.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import train  # noqa: E402
from lm2a import REPO_ROOT  # noqa: E402
from lm2a.checkpoint import load_checkpoint  # noqa: E402
from lm2a.device import amp_settings  # noqa: E402
from lm2a.training import TrainConfig, build_parts, capture_rng_state, restore_rng_state, train_step  # noqa: E402
from models.adan import Adan  # noqa: E402
from models.diffusion import DiffusionConfig, GaussianDiffusion, SamplingConfig  # noqa: E402
from models.layout import MOTION_DIM, NUM_MELS  # noqa: E402
from models.unet1d_ultimate import UNet1D_ultimate, UNetConfig  # noqa: E402
from tests.fakeclips import write_fake_clips  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


def cuda_test(fn):
    """Marked `cuda` (pytest -m cuda selects it) and skipped without a GPU."""
    return pytest.mark.cuda(needs_cuda(fn))


TINY = dict(base_dim=16, dim_mults=(1, 2), cond_dim=16, time_emb_dim=16, num_res_blocks=1,
            num_mid_blocks=1, num_heads=2, dropout=0.1)
TINY_FLAGS = ["--base_dim", "16", "--dim_mults", "1,2", "--cond_dim", "16", "--time_emb_dim", "16",
              "--num_res_blocks", "1", "--num_mid_blocks", "1", "--num_heads", "2", "--dropout", "0.1",
              "--timesteps", "100", "--no_progress"]  # tests/test_train.py's TINY
MEL_FRAMES = 64
LYRIC_DIM = 32
LYRIC_TOKENS = 6

# Relative difference of an AMP training loss from the fp32 loss on the same weights, batch and
# seed. Measured on CPU (2-core AVX512-BF16/AMX machine, torch 2.13, 2 threads) with bf16 autocast
# on the tiny model below, weights perturbed by PERTURB, batch 8 x 64 frames, 3 steps from each of 8
# seeds (amp_loss_gap("cpu", "bf16", seed) for seed 0..7; losses ~1.8): the largest
# |bf16 - fp32| / fp32 over the 24 losses was 7.2e-5, the median 1.4e-5 (the mean over 40960
# squared errors averages bf16's per-element rounding, 2^-8 = 3.9e-3, away). The bound is ~30x the
# largest CPU figure, for other bf16 kernels (cuDNN/cuBLAS accumulate differently from oneDNN) and
# for CUDA's "fp32" convolutions, which run in TF32 by default (10-bit mantissa); it is still half
# of one bf16 rounding, so a loss computed in reduced precision, or the wrong weights, fails it.
# fp16 (10-bit mantissa against bf16's 7) is held to the same bound: its rounding error is ~8x
# smaller; a loss scaled out of fp16 range shows as a skipped GradScaler step, checked on its own.
AMP_LOSS_RTOL = 2e-3
AMP_STEPS = 3
PERTURB = 0.05  # std of the noise added to the built weights (the output conv starts at zero)

# RMS (log-mel units) of a bf16 sample minus the fp32 sample, same weights and noise generators.
# Measured on CPU (same machine) with bf16 autocast, the same GaussianDiffusion.sample path, on the
# tiny model below, DPM++ 10 steps, guidance 2, batch 2 x 64 frames, model seeds 0..7
# (sample_gap("cpu", seed)): largest 0.0051, median 0.0050; between two noise seeds the same
# samples differ by 2.33-2.42 RMS. (At the default size, BENCHMARKS.md "bf16 sampling": 0.025-0.041
# against ~1.85.) The bound is ~6x the largest CPU figure and 1/80 of the seed-to-seed distance.
# CUDA fp32 against CPU fp32 differs by TF32 rounding only (finer than bf16's): the same bound.
SAMPLE_RMS_TOL = 0.03
SAMPLE_SETTINGS = dict(sampler="dpm++", steps=10, guidance=2.0)

PEAK_MEMORY_BOUND_GIB = 60  # default size, batch 16 x 516 frames: a few GiB expected


def tiny_config(**kw):
    return UNetConfig(lyric_dim=LYRIC_DIM, **dict(TINY, **kw))


def unit_stats():
    return {"mel_mean": torch.zeros(NUM_MELS), "mel_std": torch.ones(NUM_MELS),
            "motion_mean": torch.zeros(MOTION_DIM), "motion_std": torch.ones(MOTION_DIM)}


def synthetic_batch(B, mel_frames=MEL_FRAMES, lyric_dim=LYRIC_DIM, tokens=LYRIC_TOKENS, seed=0):
    """A collate_fn-layout batch on the CPU: mel (B, T, 80), motion (B, T, 234) (MelDataset resamples
    motion to the mel frames at load time), lyrics (B, L, D) with padding in half the batch."""
    g = torch.Generator().manual_seed(seed)
    pad = torch.zeros(B, tokens, dtype=torch.bool)
    pad[B // 2:, tokens // 2:] = True
    return {"mel": torch.randn(B, mel_frames, NUM_MELS, generator=g),  # unit_stats: already normalised
            "motion": torch.randn(B, mel_frames, MOTION_DIM, generator=g),
            "lyrics": torch.randn(B, tokens, lyric_dim, generator=g), "lyric_pad_mask": pad}


@torch.no_grad()
def perturb(model, seed, scale=PERTURB):
    """Adds seeded noise (drawn on the CPU, the same on any device) to every floating weight."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(scale * torch.randn(p.shape, generator=g).to(p.device, p.dtype))


def amp_losses(device, amp, seed=0, steps=AMP_STEPS, batch_size=8):
    """(losses, finite flags, GradScaler scales after each step or None, parts) of `steps`
    train_steps of the tiny model under --amp `amp`, from weights perturbed by a seeded noise."""
    parts = build_parts(tiny_config(), DiffusionConfig(timesteps=100), TrainConfig(
        batch_size=batch_size, amp=amp, lr=1e-3, warmup_steps=1, seed=seed), unit_stats(),
        torch.device(device), total_steps=100)
    perturb(parts.model, seed + 1)
    batch = synthetic_batch(batch_size, seed=seed)
    losses, finite, scales = [], [], []
    for step in range(steps):
        r = train_step(parts, batch, step)
        losses.append(r.loss)
        finite.append(r.finite)
        scales.append(parts.scaler.get_scale() if parts.scaler is not None else None)
    return losses, finite, scales, parts


def amp_loss_gap(device, amp, seed=0):
    """Largest |loss_amp - loss_fp32| / loss_fp32 over the steps (CPU measurement: amp "bf16")."""
    ref = amp_losses(device, "off", seed)[0]
    got = amp_losses(device, amp, seed)[0]
    return max(abs(a - b) / abs(b) for a, b in zip(got, ref))


def tiny_diffusion(device, seed=0):
    torch.manual_seed(seed)
    model = UNet1D_ultimate(tiny_config(dropout=0.0))
    perturb(model, seed + 1)
    return GaussianDiffusion(model, DiffusionConfig(timesteps=100), **unit_stats()).to(device).eval()


def sample_with(diffusion, precision, batch, noise_seed=0):
    B = batch["motion"].shape[0]
    settings = SamplingConfig(precision=precision, seed=noise_seed, **SAMPLE_SETTINGS)
    generators = [torch.Generator().manual_seed(1000 * noise_seed + i) for i in range(B)]  # CPU noise
    with torch.no_grad():
        mel = diffusion.sample(batch["motion"], batch["lyrics"], batch["lyric_pad_mask"],
                               length=batch["mel"].shape[1], settings=settings, generator=generators)
    return mel.float().cpu()


def rms(a, b):
    return float((a - b).pow(2).mean().sqrt())


def sample_gap(device, seed=0):
    """(RMS bf16 - fp32, RMS between two noise seeds) of the tiny model's samples on `device`."""
    diffusion, batch = tiny_diffusion(device, seed), synthetic_batch(2, seed=seed)
    fp32, bf16 = sample_with(diffusion, "fp32", batch), sample_with(diffusion, "bf16", batch)
    other = sample_with(diffusion, "fp32", batch, noise_seed=1)
    return rms(bf16, fp32), rms(other, fp32)


# ---- a. AMP training steps ----------------------------------------------------------------------

@cuda_test
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_training_steps_are_finite_and_close_to_fp32(amp):
    dtype, use_scaler = amp_settings(amp, torch.device("cuda"))
    ref, ref_finite, _, _ = amp_losses("cuda", "off")
    got, finite, scales, parts = amp_losses("cuda", amp)
    assert parts.amp_dtype == dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    assert (parts.scaler is not None) == use_scaler == (amp == "fp16")  # fp16 needs the GradScaler
    assert all(ref_finite) and all(finite), (ref, got)
    assert all(torch.isfinite(p).all() for p in parts.model.parameters())
    compared = len(got)
    if parts.scaler is not None:
        # a GradScaler step whose scaled gradients overflowed is skipped and the scale halved: the
        # weights then stay behind fp32's, so only the losses before the first skip are comparable
        # (the first one always is: same weights). Most steps must have been taken.
        start = 65536.0  # GradScaler's initial scale (growth only every 2000 steps)
        skipped = [i for i, s in enumerate(scales) if s < (scales[i - 1] if i else start)]
        compared = skipped[0] + 1 if skipped else len(got)
        assert len(skipped) <= 1, f"fp16: the GradScaler skipped steps {skipped} (scales {scales})"
    gaps = [abs(a - b) / abs(b) for a, b in zip(got, ref)]
    print(f"\namp {amp}: losses {got} vs fp32 {ref}, relative gaps {[f'{g:.2e}' for g in gaps]}, "
          f"scales {scales}")
    assert max(gaps[:compared]) < AMP_LOSS_RTOL, (amp, got, ref)


# ---- b. exact resume on CUDA --------------------------------------------------------------------

@pytest.fixture
def deterministic_cuda():
    """Deterministic CUDA kernels for the duration of a test, so that two identical runs agree
    bitwise and any difference a resume makes shows: deterministic algorithms (cuDNN convolutions,
    cuBLAS with the fixed workspace above; warnings, not errors, for ops without a deterministic
    version: they are collected and named if two straight runs disagree) and the math SDPA backend
    (the memory-efficient attention backward adds in any order). train.py sets none of this, so
    without it two CUDA runs may differ in the last bits; the resume itself is what is tested here.
    Yields the list of warnings."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    from torch.nn.attention import SDPBackend, sdpa_kernel
    try:
        with sdpa_kernel(SDPBackend.MATH), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2:]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda_split")
    write_fake_clips(root / "train", n=8, mel_frames=MEL_FRAMES, lyric_dim=LYRIC_DIM, seed=0)
    write_fake_clips(root / "val", n=3, mel_frames=MEL_FRAMES, lyric_dim=LYRIC_DIM, seed=1)
    return root


def train_args(clips, save_dir, *extra, device="cuda"):
    return train.build_parser().parse_args(
        ["--npz_dir", str(clips / "train"), "--val_npz_dir", str(clips / "val"), "--save_dir", str(save_dir),
         "--device", device, *TINY_FLAGS, *map(str, extra)])


RESUME_RUN = ("--max_steps", 4, "--batch_size", 3, "--lr", 3e-3, "--val_every", 3, "--save_every", 0,
              "--log_every", 1, "--warmup_steps", 2, "--aug_mirror", 0.5, "--aug_gain", 0.2,
              "--aug_lyric_swap", 0.5, "--aug_eq", 0.3, "--sample_clips", 2, "--sample_steps", 2,
              "--sample_gl_iters", 2)  # test_train.py's resume run, with its training-time samples on CUDA


def weight_differences(a, b):
    """Names of the model/EMA/optimizer tensors that differ between two checkpoints."""
    out = [f"{key}.{name}" for key in ("model", "ema") for name in a[key]
           if not torch.equal(a[key][name], b[key][name])]
    for i, (pa, pb) in enumerate(zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values())):
        out += [f"optimizer.{i}.{name}" for name in pa
                if not torch.equal(torch.as_tensor(pa[name]), torch.as_tensor(pb[name]))]
    return out


def resume_runs(clips, root, device="cuda"):
    """(straight, straight again, half + --resume + half) last.pt checkpoints of RESUME_RUN."""
    for name in ("a", "a2"):
        assert train.train(train_args(clips, root / name, *RESUME_RUN, device=device))["exit_code"] == 0
    first = train.train(train_args(clips, root / "b", *RESUME_RUN, "--stop_after", 2, device=device))
    assert first["exit_code"] == 0 and first["step"] == 2
    second = train.train(train_args(clips, root / "b", "--max_steps", 4, "--resume", device=device))
    assert second["exit_code"] == 0 and second["step"] == 4
    return [load_checkpoint(root / name / "last.pt") for name in ("a", "a2", "b")]


@cuda_test
def test_resume_on_cuda_is_exact(clips, tmp_path, deterministic_cuda):
    a, a2, b = resume_runs(clips, tmp_path)
    assert a["train_args"]["amp"] == b["train_args"]["amp"]
    # two straight runs first: if they differ, the kernels are not deterministic and no resume can be
    # bitwise; the message names the ops torch warned about
    nondeterministic = sorted({str(w.message).split("\n")[0][:160] for w in deterministic_cuda
                               if "determinis" in str(w.message)})
    differ = weight_differences(a, a2)
    assert not differ, (f"two identical CUDA runs differ ({len(differ)} tensors, e.g. {differ[:3]}): "
                        f"nondeterministic kernels: {nondeterministic}")
    differ = weight_differences(a, b)
    assert not differ, f"the resumed run differs from the straight one: {differ[:10]}"
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 4
    assert a["val_loss"] == b["val_loss"]
    assert a["rng"]["cuda"] and len(a["rng"]["cuda"]) == torch.cuda.device_count()  # stored in the checkpoint


@cuda_test
def test_cuda_rng_state_round_trips(tmp_path):
    torch.cuda.manual_seed_all(123)
    state = capture_rng_state()
    assert len(state["cuda"]) == torch.cuda.device_count() and all(s.device.type == "cpu" for s in state["cuda"])
    first = (torch.randn(5, device="cuda"), torch.randint(0, 10 ** 6, (5,), device="cuda"), torch.rand(3))
    torch.cuda.manual_seed_all(999)  # move the generator elsewhere
    restore_rng_state(state)
    again = (torch.randn(5, device="cuda"), torch.randint(0, 10 ** 6, (5,), device="cuda"), torch.rand(3))
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    # ... and through a checkpoint file, loaded the way checkpoints are (weights_only)
    torch.save({"rng": state}, tmp_path / "rng.pt")
    torch.cuda.manual_seed_all(7)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert torch.equal(torch.randn(5, device="cuda"), first[0])


# ---- c. bf16 sampling on CUDA -------------------------------------------------------------------

@cuda_test
def test_bf16_sampling_on_cuda_equals_fp32_within_the_cpu_tolerance():
    batch = synthetic_batch(2)
    cuda = tiny_diffusion("cuda")
    fp32, bf16 = sample_with(cuda, "fp32", batch), sample_with(cuda, "bf16", batch)
    seed_gap = rms(sample_with(cuda, "fp32", batch, noise_seed=1), fp32)
    cpu_fp32 = sample_with(tiny_diffusion("cpu"), "fp32", batch)
    gap, device_gap = rms(bf16, fp32), rms(fp32, cpu_fp32)
    print(f"\nsampling RMS (log-mel): bf16 vs fp32 on CUDA {gap:.4f}, CUDA fp32 vs CPU fp32 {device_gap:.4f}, "
          f"between noise seeds {seed_gap:.3f} (tolerance {SAMPLE_RMS_TOL})")
    assert torch.isfinite(bf16).all() and bf16.shape == fp32.shape == (2, NUM_MELS, MEL_FRAMES)
    assert 0 < gap < SAMPLE_RMS_TOL  # > 0: autocast did run in bf16
    assert device_gap < SAMPLE_RMS_TOL
    assert seed_gap > 10 * SAMPLE_RMS_TOL  # the tolerance is small against what a sample varies by


# ---- c2. the fused Adan (torch.compile -> Triton on CUDA) against the per-tensor loop ---------------

@cuda_test
def test_fused_adan_on_cuda_equals_the_loop():
    """The default kernel compiles to Triton on a GPU: 50 steps equal the loop kernel's to the CPU
    test's tolerance (tests/test_models_adan.py), parameters and state."""
    g = torch.Generator().manual_seed(5)
    start = [torch.randn(s, generator=g) for s in ((64, 32), (32,), (16, 8, 3), (1,))]
    runs = {}
    for name, kwargs in (("loop", dict(fused=False, foreach=False)), ("fused", dict(fused=True))):
        params = [torch.nn.Parameter(p.clone().cuda()) for p in start]
        opt = Adan(params, lr=1e-2, weight_decay=0.05, **kwargs)
        for step in range(50):
            gs = torch.Generator().manual_seed(100 + step)
            for p in params:
                p.grad = (torch.randn(p.shape, generator=gs) * (1 + step % 5)).cuda()
            opt.step()
        runs[name] = (params, opt)
    (loop, loop_opt), (fused, fused_opt) = runs["loop"], runs["fused"]
    for p, q in zip(fused, loop):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6), (p - q).abs().max()
        for key in ("exp_avg", "exp_avg_diff", "exp_avg_sq", "prev_grad"):
            assert torch.allclose(fused_opt.state[p][key], loop_opt.state[q][key], rtol=1e-5, atol=1e-6), key
    assert max((p.cpu() - s).abs().max().item() for p, s in zip(loop, start)) > 0.1  # they moved


# ---- d. peak GPU memory of a default-size training step -----------------------------------------

@cuda_test
def test_peak_memory_of_a_default_size_training_step():
    device, B, T = torch.device("cuda"), 16, 516
    gc.collect()
    torch.cuda.empty_cache()  # what earlier tests left is not counted
    config = TrainConfig(batch_size=B)  # default amp
    parts = build_parts(UNetConfig(), DiffusionConfig(), config, unit_stats(), device, total_steps=1000)
    batch = synthetic_batch(B, mel_frames=T, lyric_dim=UNetConfig().lyric_dim, tokens=16)
    torch.cuda.synchronize()
    resident = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    results = [train_step(parts, batch, step) for step in range(2)]  # the first allocates Adan's state
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    params = sum(p.numel() for p in parts.model.parameters())
    amp = str(parts.amp_dtype).replace("torch.", "") if parts.amp_dtype else "fp32"
    print(f"\npeak GPU memory, default-size training step (batch {B} x {T} frames, amp {config.amp} -> {amp}"
          f"{' + GradScaler' if parts.scaler else ''}, {params / 1e6:.1f} M parameters, "
          f"{torch.cuda.get_device_name(device)}): {peak / 2 ** 30:.2f} GiB "
          f"({peak / 2 ** 20:.0f} MiB; model + EMA before the step {resident / 2 ** 20:.0f} MiB)")
    assert all(r.finite for r in results), [r.loss for r in results]
    assert 0 < resident < peak < PEAK_MEMORY_BOUND_GIB * 2 ** 30


# ---- runs everywhere: the marker selects exactly this file's GPU tests ----------------------------

def test_cuda_marker_is_registered_and_selects_exactly_these_tests(pytestconfig):
    assert any(line.startswith("cuda:") for line in pytestconfig.getini("markers"))
    here = Path(__file__).resolve()
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "--strict-markers",
                           "-p", "no:cacheprovider", "-m", "cuda", str(here)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert proc.returncode == 0, proc.stdout + proc.stderr  # --strict-markers: an unknown marker fails
    selected = {line.split("::")[1].split("[")[0] for line in proc.stdout.splitlines() if "::" in line}
    module = sys.modules[__name__]
    ours = {name for name in dir(module) if name.startswith("test_") and callable(getattr(module, name))}
    this = sys._getframe().f_code.co_name
    assert selected == ours - {this}, (selected, ours)
    n_items = len([line for line in proc.stdout.splitlines() if "::" in line])
    assert n_items == len(ours) - 1 + 1, proc.stdout  # all but this one, the amp test twice (bf16, fp16)
    # no other test file uses the marker, so `pytest -m cuda tests` runs this file's tests only
    others = [p.name for p in here.parent.glob("test_*.py") if p != here
              and re.search(r"mark\.cuda\b", p.read_text(encoding="utf-8"))]
    assert others == []
