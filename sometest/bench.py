"""The one place LM2A's speed is measured: preprocessing, data loading, training, sampling.

    python sometest/bench.py [--quick] [--device auto] [--json bench.json] [--sections pre,load,train,sample]
    python sometest/bench.py --sections original --original_repo /path/to/original/checkout
    python sometest/bench.py --sections plane --base_dim 128 [--train_size demo]   # what the 2D band plane costs

Every figure is the median of repeated runs after a warm-up; versions that are compared (SDPA vs
nn.MultiheadAttention, preloaded vs per-item loader, DDIM-50 vs DDPM-1000, AMP vs fp32) are measured
in the same run, interleaved. Prints a table and writes JSON. On CUDA the training and sampling rows
are taken with fp32 and with AMP bf16, and peak GPU memory is reported.

Training times lm2a.training.train_step, the step train.py takes, with our SDPA attention and with the
nn.MultiheadAttention baseline, which lives here only (MHAAttention, swapped in by mha_attention()). Sampling times
GaussianDiffusion.sample, the path sample.py and val.py take: one sampler step is one guided forward
of the doubled batch plus the scheduler update, every step of a sampler costs about the same, so
seconds per clip = median step time (over SAMPLE_STEPS_TIMED steps) x the sampler's steps / batch,
in fp32 and under bf16 autocast.

Section `original` (not run by default) puts the original study's sampling step
(github.com/Bokway/LM2A-lyrics-and-motion-to-audio-with-diffusion-model) next to ours at our default
model size, fp32, guidance 2 (doubled batch), batches SAMPLE_BATCHES, interleaved (ABAB..., median):
their UNet1D_ultimate forward with their sample.py's settings plus their DDPM update, against our
guided DDPM step through GaussianDiffusion.sample. It reports seconds per step, their DDPM-1000 and
our default sampler (sample.py's sampler and precision here) per clip, the ratios and both parameter
counts. It needs a checkout of their code, whose modules are imported at run time (nothing of theirs
is copied here):
    python sometest/bench.py --quick --sections original --original_repo /path/to/checkout
"""
import argparse
import contextlib
import copy
import gc
import importlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import preprocess  # noqa: E402
import sample as sample_script  # noqa: E402
from dataset import MelDataset  # noqa: E402
from lm2a.data import collate_fn  # noqa: E402
from lm2a.device import amp_settings, native_bf16, pick_device, resolve_precision  # noqa: E402
from lm2a.training import TrainConfig, build_parts, train_step  # noqa: E402
from models import cross_attention  # noqa: E402
from models.adan import KERNELS, Adan  # noqa: E402
from models.cross_attention import SDPAAttention  # noqa: E402
from models.diffusion import DiffusionConfig, GaussianDiffusion, SamplingConfig  # noqa: E402
from models.layout import MOTION_DIM, NUM_MELS  # noqa: E402
from models.unet1d_ultimate import UNet1D_ultimate, UNetConfig  # noqa: E402
from sometest.make_demo_data import make_demo_dataset  # noqa: E402

# ---- defaults (edit here or pass --flag) --------------------------------------------------------
REPEATS = 5            # timed repetitions per figure (median reported); --quick uses 2
TRAIN_BATCHES = (4, 16)  # training batch sizes
PLANE_BATCH = 8          # --sections plane: the batch of the CPU recipe (README)
DEMO_UNET = dict(base_dim=32, dim_mults=(1, 2))  # --train_size demo: make demo's model (1.3 M parameters)
SAMPLE_BATCHES = (1, 8)  # sampling batch sizes
SAMPLE_STEPS_TIMED = 5   # sampler steps timed per repetition
SAMPLE_GUIDANCE = 2.0    # classifier-free guidance weight of the sampling rows (doubled batch)
SAMPLERS_TIMED = (("ddpm", 1000), ("ddim", 50), ("dpm++", 20), ("unipc", 20))  # (sampler, steps) rows
T_MEL = 516            # mel frames of a 6 s clip
LYRIC_TOKENS = 16      # tokens per lyric line in synthetic batches
LYRIC_DIM = 384        # all-MiniLM-L6-v2
DEMO_SONGS, DEMO_SECONDS = 5, 40.0  # the demo dataset (make demo)

# section "original": the original study's code, imported from a checkout given by --original_repo
ORIGINAL_GITHUB = "Bokway/LM2A-lyrics-and-motion-to-audio-with-diffusion-model"
ORIGINAL_FILES = ("models/unet1d_ultimate.py", "models/embedding.py", "models/diffusion.py", "models/adan.py")
ORIGINAL_PACKAGE = "orig_lm2a_models"  # the name their models/ package is imported under
# their sample.py's build_models(): UNet1D_ultimate(...) keyword arguments (attn_heads=8 there and in
# their train.py; 4 is only the class's default) and CondProjection(motion_dim, text_dim, out_dim=cond_dim)
ORIGINAL_UNET = dict(in_dim=NUM_MELS, base_dim=256, dim_mults=(1, 2, 4), cond_dim=128, time_emb_dim=256,
                     num_res_blocks=2, mid_blocks=3, attn_heads=8)
ORIGINAL_COND = dict(motion_dim=78 * 3, text_dim=768)  # lyrics: 768-d, resampled to every mel frame
ORIGINAL_TIMESTEPS, ORIGINAL_BETAS = 1000, (1e-4, 0.02)  # their GaussianDiffusion: linear betas
# their train.py's defaults for the loop body the training rows time (its --amp takes torch.cuda.amp,
# which is off on a CPU: there their step is fp32)
ORIGINAL_TRAIN = dict(lr=2e-4, weight_decay=1e-4, grad_clip=1.0, ema_decay=0.999, cond_drop_prob=0.2)
ORIGINAL_TRAIN_BATCHES = (4,)  # three default-size models with optimizer and EMA live at once: ~12 GB
OUR_UNET = {}  # UNetConfig overrides for our side of the comparison ({} = our default size)


# ---- the attention baseline: torch.nn.MultiheadAttention in place of our SDPA attention ----------------
class MHAAttention(nn.Module):
    """The same block as models.cross_attention.SDPAAttention (same parameters, same math), built on
    torch.nn.MultiheadAttention: the baseline the training rows time SDPA against."""

    def __init__(self, dim, context_dim, num_heads):
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, num_heads, bias=True, kdim=context_dim,
                                         vdim=context_dim, batch_first=True)

    @property
    def num_heads(self):  # models.cross_attention.attention_weights reads it
        return self.mha.num_heads

    def forward(self, x, context, key_padding_mask=None):  # (B, T, dim), (B, S, context_dim) -> (B, T, dim)
        out, _ = self.mha(x, context, context, key_padding_mask=key_padding_mask, need_weights=False)
        return out

    def _qkv_weights(self):
        mha = self.mha
        if mha._qkv_same_embed_dim:  # packed (3 dim, dim) weight when context_dim == dim
            return mha.in_proj_weight.chunk(3, dim=0)
        return mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight

    def get_qkvo(self):
        """The projections by role, as SDPAAttention.get_qkvo names them."""
        wq, wk, wv = self._qkv_weights()
        bq, bk, bv = self.mha.in_proj_bias.chunk(3, dim=0)
        return dict(q_weight=wq, q_bias=bq, k_weight=wk, k_bias=bk, v_weight=wv, v_bias=bv,
                    out_weight=self.mha.out_proj.weight, out_bias=self.mha.out_proj.bias)


ATTENTION_TYPES = (SDPAAttention, MHAAttention)


@contextlib.contextmanager
def mha_attention():
    """Models built inside the block (UNet1D_ultimate, CrossAttentionBlock) get MHAAttention where they
    would get SDPAAttention: CrossAttentionBlock looks SDPAAttention up in models.cross_attention when
    it is built, so swapping that name is the whole switch. check_attention confirms it took."""
    with mock.patch.object(cross_attention, "SDPAAttention", MHAAttention):
        yield


def check_attention(model, impl):
    """RuntimeError unless every attention module of `model` is of `impl` ("sdpa" | "mha"): a bench
    row must time what it is labelled with."""
    want = {"sdpa": SDPAAttention, "mha": MHAAttention}[impl]
    found = {type(m) for m in model.modules() if isinstance(m, ATTENTION_TYPES)}
    if found != {want}:
        raise RuntimeError(f"bench: a model built for attention {impl!r} has {sorted(t.__name__ for t in found)}; "
                           f"mha_attention() no longer swaps models/cross_attention.py's attention")


@torch.no_grad()
def copy_weights_across_impl(dst, src):
    """Copy every weight of model `src` into model `dst` when they differ only in their attention
    modules (SDPAAttention vs MHAAttention): the rest by state_dict, the attention by role."""
    src_attention = {name: m for name, m in src.named_modules() if isinstance(m, ATTENTION_TYPES)}
    dst_attention = {name: m for name, m in dst.named_modules() if isinstance(m, ATTENTION_TYPES)}
    if src_attention.keys() != dst_attention.keys():
        raise ValueError("copy_weights_across_impl: the two models have different attention layouts")
    prefixes = tuple(name + "." for name in src_attention)
    other = {k: v for k, v in src.state_dict().items() if not k.startswith(prefixes)}
    missing, unexpected = dst.load_state_dict(other, strict=False)
    missing = [k for k in missing if not k.startswith(prefixes)]
    if missing or unexpected:
        raise ValueError(f"copy_weights_across_impl: missing {missing}, unexpected {unexpected}")
    for name, module in dst_attention.items():
        weights = src_attention[name].get_qkvo()
        for key, param in module.get_qkvo().items():  # MHA's chunks are views: copies land in place
            param.copy_(weights[key])


def median_time(fn, repeats, warmup=1, sync=None):
    """(median seconds, all times) of `repeats` runs of fn() after `warmup` runs."""
    return interleaved_median_times({"fn": fn}, repeats, warmup, sync)["fn"]


def reset_peak_rss():
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb():
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# ---- sections ------------------------------------------------------------------------------------
def bench_preprocess(args, work):
    """clips/s of preprocess.py on the demo data at 1 and 2 workers, with the time shares."""
    root = work / "JustLMD"
    if not root.exists():
        make_demo_dataset(root, DEMO_SONGS, DEMO_SECONDS, seed=0)
    rows = []
    for workers in (1, 2):
        runs = []
        for r in range(1 if args.quick else 3):
            out = work / f"pre_w{workers}_{r}"
            rep = preprocess.run(preprocess.build_parser().parse_args(
                ["--data_root", str(root), "--out_dir", str(out), "--workers", str(workers), "--quiet"]))
            runs.append(rep)
        med = sorted(runs, key=lambda r: r["timings_s"]["total"])[len(runs) // 2]
        tm = med["timings_s"]
        rows.append({"workers": workers, "clips": med["clips_written"], "seconds": tm["total"],
                     "clips_per_s": med["clips_written"] / tm["total"],
                     "text_encoding_s": tm["text_encoding"], "audio_load_s": tm["audio_load"],
                     "mel_s": tm["mel"], "motion_s": tm["motion"], "lines_encoded": med["lyric_lines_encoded"],
                     "runs_s": [r["timings_s"]["total"] for r in runs]})
    return {"preprocess": rows, "clips_dir": str(work / "pre_w1_0" / "clips")}


class PerItemInterpDataset(torch.utils.data.Dataset):
    """The baseline loader: reads the npz on every access and resamples motion one dimension at a
    time with np.interp (the original study's way)."""

    def __init__(self, files):
        self.files = files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        z = np.load(self.files[i])
        mel, motion = z["mel"], z["motion"]
        T = mel.shape[1]
        t_mel = (np.arange(T) * 256 + 128) / 22050
        t_mot = np.arange(motion.shape[0]) / 30
        res = np.stack([np.interp(t_mel, t_mot, motion[:, d]) for d in range(motion.shape[1])], 1)
        return {"mel": torch.from_numpy(mel.T.copy()), "motion": torch.from_numpy(res.astype(np.float32)),
                "lyrics": torch.from_numpy(z["lyrics"]), "name": Path(self.files[i]).stem}


def bench_loading(args, clips_dir):
    reps = 2 if args.quick else REPEATS
    files = sorted(Path(clips_dir).glob("*.npz"))
    t = time.perf_counter()
    ds = MelDataset(clips_dir)
    load_s = time.perf_counter() - t

    n_batches = 40  # per timed pass, drawn with replacement so a small split still gives many

    def iterate(dataset, bs=16):
        sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=bs * n_batches)
        for _ in DataLoader(dataset, batch_size=bs, sampler=sampler, collate_fn=collate_fn, num_workers=0):
            pass

    t_pre, _ = median_time(lambda: iterate(ds), reps)
    base = PerItemInterpDataset(files)
    t_base, _ = median_time(lambda: iterate(base), reps)
    items = n_batches * 16
    return {"loading": {"clips": len(ds), "preload_s": load_s, "preload_items_per_s": len(ds) / load_s,
                        "batches_per_s": n_batches / t_pre, "items_per_s": items / t_pre,
                        "baseline_per_item_interp_batches_per_s": n_batches / t_base,
                        "baseline_items_per_s": items / t_base, "batch_size": 16}}


def synthetic_batch(B, T=None, seed=0):
    """A collate_fn-layout batch (mel (B, T, 80), motion (B, T, 234); T defaults to T_MEL) of random
    clips on the CPU."""
    T = T_MEL if T is None else T
    g = torch.Generator().manual_seed(seed)
    lyr = torch.randn(B, LYRIC_TOKENS, LYRIC_DIM, generator=g)
    pad = torch.zeros(B, LYRIC_TOKENS, dtype=torch.bool)
    pad[B // 2:, LYRIC_TOKENS // 2:] = True
    return {"mel": torch.randn(B, T, NUM_MELS, generator=g) - 5,
            "motion": torch.randn(B, T, MOTION_DIM, generator=g), "lyrics": lyr, "lyric_pad_mask": pad}


def unit_stats():
    return {"mel_mean": torch.zeros(NUM_MELS), "mel_std": torch.ones(NUM_MELS),
            "motion_mean": torch.zeros(MOTION_DIM), "motion_std": torch.ones(MOTION_DIM)}


BASELINE_VARIANT = ("off", "sdpa", "loop", False)  # the training step before issue 19


def training_variants(args, device):
    """(amp, attention kernel, Adan kernel, compiled) of the training rows. The baseline is the step as
    it was before issue 19: fp32, SDPA, Adan's per-tensor loop. Then fp32 with the fused Adan, and,
    where the device computes it natively or on CUDA, bf16 autocast with each Adan kernel; with --mha
    the nn.MultiheadAttention baseline (fp32, loop). With --compile only three: the baseline,
    train.py's default here and the same compiled. Every variant holds its own model, EMA and optimizer
    state (about 3.6 GB at the default size), so the lists stay short."""
    default = default_training_variant(device, args.train_size)
    if args.compile:
        return [BASELINE_VARIANT, default, default[:3] + (True,)]
    amps = ("off", "bf16") if device.type == "cuda" or native_bf16(device) else ("off",)
    variants = [(amp, "sdpa", adan, False) for amp in amps for adan in ("loop", "fused")]
    if args.mha:
        variants.append(("off", "mha", "loop", False))
    return variants


def unet_overrides(size):
    """UNetConfig overrides of a training size: "default" (none), "demo" (DEMO_UNET) or a dict."""
    return dict(size) if isinstance(size, dict) else DEMO_UNET if size == "demo" else {}


def training_parts(variant, B, device, size="default"):
    """train.py's TrainParts for a variant (training_variants) at batch B."""
    amp, impl, adan, compiled = variant
    unet = UNetConfig(lyric_dim=LYRIC_DIM, **unet_overrides(size))
    with mha_attention() if impl == "mha" else contextlib.nullcontext():
        parts = build_parts(unet, DiffusionConfig(),
                            TrainConfig(batch_size=B, amp=amp, lr=1e-4), unit_stats(), device,
                            total_steps=1000, net_wrapper=torch.compile if compiled else None)
    check_attention(parts.model, impl)
    for group in parts.optimizer.param_groups:  # Adan's kernel (models/adan.py): fused is its default
        group["fused"], group["foreach"] = adan == "fused", False
    return parts


def default_training_variant(device, size="default"):
    """The variant train.py runs with its defaults here: --amp auto resolved for this device and width,
    the fused Adan, no compile."""
    width = UNetConfig(**unet_overrides(size)).base_dim
    dtype, _ = amp_settings("auto", device, width)
    return ("off" if dtype is None else {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype], "sdpa", "fused", False)


def train_step_fns(variants, B, device, size="default"):
    """({variant: fn() taking one train_step}, {variant: its first step's seconds (the compile when
    compiled)}, {variant: parameter count}) on a synthetic batch of B clips."""
    batch = synthetic_batch(B)
    steps, first, n_params = {}, {}, {}
    for variant in variants:
        parts = training_parts(variant, B, device, size)
        n_params[variant] = sum(p.numel() for p in parts.model.parameters())
        counter = iter(range(10 ** 6))
        steps[variant] = (lambda parts=parts, counter=counter: train_step(parts, batch, next(counter)))
        t = time.perf_counter()
        steps[variant]()  # warm-up; for a compiled variant this is the compile
        first[variant] = time.perf_counter() - t
    return steps, first, n_params


def bench_training(args, device):
    """Median time of train.py's own step (lm2a.training.train_step: loss, backward, clipping, Adan,
    EMA update, LR schedule) at the default model size (or make demo's, --train_size demo), every
    variant (training_variants) of a batch size timed in the same rounds (interleaved); the first steps
    of a compiled variant (its compile time) are timed apart."""
    reps = getattr(args, "repeats", 0) or (2 if args.quick else 3)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    rows = []
    for B in (TRAIN_BATCHES[:1] if args.quick else TRAIN_BATCHES):
        steps, first, n_params = train_step_fns(training_variants(args, device), B, device, args.train_size)
        reset_peak_rss()
        timed = interleaved_median_times(steps, reps, warmup=1, sync=sync)
        for variant, (med, times) in timed.items():
            amp, impl, adan, compiled = variant
            rows.append({"batch": B, "size": args.train_size, "amp": "fp32" if amp == "off" else amp,
                         "attn": impl + ("+compile" if compiled else ""), "adan": adan, "step_s": med,
                         "samples_per_s": B / med, "first_step_s": first[variant], "peak_mem_mb": peak_rss_mb(),
                         "params": n_params[variant], "times": times,
                         "default": variant == default_training_variant(device, args.train_size)})
        steps = None  # frees the models before the next batch size
    return {"training": rows}


def bench_plane(args, device):
    """train.py's default training step (its variant here) with the 2D band plane (UNetConfig's
    stem_channels) and without it (stem_channels 0), at the training size and batch PLANE_BATCH,
    interleaved: what the plane costs (RESULTS.md, "A 2D band plane", has what it buys)."""
    reps = getattr(args, "repeats", 0) or (3 if args.quick else 5)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    variant = default_training_variant(device, args.train_size)
    steps, n_params = {}, {}
    for stem in (0, UNetConfig().stem_channels):
        size = dict(unet_overrides(args.train_size), stem_channels=stem)
        fns, _, params = train_step_fns([variant], PLANE_BATCH, device, size)
        steps[stem], n_params[stem] = fns[variant], params[variant]
    timed = interleaved_median_times(steps, reps, warmup=1, sync=sync)
    width = UNetConfig(**unet_overrides(args.train_size)).base_dim
    return {"plane": [{"stem_channels": stem, "base_dim": width, "batch": PLANE_BATCH, "amp": variant[0],
                       "params": n_params[stem], "step_s": med, "times": ts} for stem, (med, ts) in timed.items()]}


def bench_adan(args, device):
    """Adan's step alone with each kernel (models.adan.KERNELS) over the parameters of the training size's
    UNet with random gradients, interleaved; the first step (the state's allocation, and for fused
    the compile) timed apart."""
    reps = getattr(args, "repeats", 0) or (5 if args.quick else 11)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    torch.manual_seed(0)
    model = UNet1D_ultimate(UNetConfig(lyric_dim=LYRIC_DIM, **unet_overrides(args.train_size))).to(device)
    steps, first = {}, {}
    for name, kwargs in KERNELS.items():
        params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
        for p in params:
            p.grad = torch.randn_like(p)
        opt = Adan(params, lr=1e-4, weight_decay=0.02, **kwargs)
        t = time.perf_counter()
        opt.step()
        first[name] = time.perf_counter() - t
        steps[name] = opt.step
    timed = interleaved_median_times(steps, reps, warmup=1, sync=sync)
    return {"adan": [{"kernel": name, "size": args.train_size, "params": sum(p.numel() for p in model.parameters()),
                      "step_s": med, "first_step_s": first[name], "times": ts}
                     for name, (med, ts) in timed.items()]}


def bench_sampling(args, device):
    """Seconds per clip of each sampler at its step count, through GaussianDiffusion.sample (the path
    sample.py and val.py take): a few steps of the sampler are timed and scaled to the full count
    (every step is one guided forward of the doubled batch plus the update)."""
    reps = 2 if args.quick else 3
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    diff = our_sampling_model(device)
    rows = []
    for B in SAMPLE_BATCHES:
        batch = synthetic_batch(B)
        for precision in ("fp32", "bf16"):
            for sampler, total_steps in SAMPLERS_TIMED:
                med, _ = median_time(our_sampling_run(diff, batch, sampler, precision), reps, sync=sync)
                per_step = med / SAMPLE_STEPS_TIMED
                rows.append({"sampler": f"{sampler.upper()}-{total_steps}", "batch": B, "amp": precision,
                             "guidance": SAMPLE_GUIDANCE, "step_s": per_step,
                             "s_per_clip": per_step * total_steps / B})
    if args.compile:
        rows += compiled_sampling_rows(diff, reps, sync, device)
    return {"sampling": rows, "sampling_default": default_sampling(device)}


def compiled_sampling_rows(diff, reps, sync, device, batches=SAMPLE_BATCHES):
    """sample.py's default sampler with the UNet under torch.compile against the same UNet eager,
    interleaved, per precision and batch; the first run (the compile) timed apart."""
    sampler, total_steps = sample_script.SAMPLER, sample_script.STEPS
    compiled = GaussianDiffusion(torch.compile(diff.model)).to(device).eval()
    rows = []
    for B in batches:
        batch = synthetic_batch(B)
        for precision in ("fp32", "bf16"):
            runs = {"eager": our_sampling_run(diff, batch, sampler, precision),
                    "compile": our_sampling_run(compiled, batch, sampler, precision)}
            t = time.perf_counter()
            runs["compile"]()
            first = time.perf_counter() - t
            for name, (med, _) in interleaved_median_times(runs, reps, sync=sync).items():
                per_step = med / SAMPLE_STEPS_TIMED
                rows.append({"sampler": f"{sampler.upper()}-{total_steps}" + ("+compile" if name == "compile" else ""),
                             "batch": B, "amp": precision, "guidance": SAMPLE_GUIDANCE, "step_s": per_step,
                             "s_per_clip": per_step * total_steps / B,
                             "first_run_s": first if name == "compile" else None, "interleaved": True})
    return rows


def our_sampling_model(device, **overrides):
    """GaussianDiffusion around our UNet1D_ultimate at the default size (or `overrides` of UNetConfig),
    untrained, seeded, in eval mode: the model the sampling rows time."""
    torch.manual_seed(0)
    return GaussianDiffusion(UNet1D_ultimate(lyric_dim=LYRIC_DIM, **overrides)).to(device).eval()


def our_sampling_run(diff, batch, sampler, precision):
    """fn() running SAMPLE_STEPS_TIMED steps of `sampler` through GaussianDiffusion.sample with guidance
    SAMPLE_GUIDANCE on `batch` (synthetic_batch layout): one timed sampling repetition."""
    settings = SamplingConfig(sampler=sampler, steps=SAMPLE_STEPS_TIMED, guidance=SAMPLE_GUIDANCE,
                              precision=precision)
    B = batch["motion"].shape[0]

    def run():
        diff.sample(batch["motion"], batch["lyrics"], batch["lyric_pad_mask"], settings=settings,
                    generator=[torch.Generator().manual_seed(i) for i in range(B)])
    return run


def default_sampling(device):
    """What sample.py / val.py run by default on `device`: {"sampler": "DPM++-20", "amp": resolved
    precision}, the row the "default" ratio picks."""
    d = resolve_precision(SamplingConfig(sampler=sample_script.SAMPLER, steps=sample_script.STEPS,
                                         precision=sample_script.PRECISION), device)
    return {"sampler": f"{d.sampler.upper()}-{d.steps}", "amp": d.precision,
            "precision_setting": sample_script.PRECISION}


# ---- the original study side by side (section "original") ---------------------------------------------
def check_original_repo(repo_dir):
    """The checkout's root, or SystemExit naming the file it lacks."""
    root = Path(repo_dir).expanduser().resolve()
    for rel in ORIGINAL_FILES:
        if not (root / rel).is_file():
            raise SystemExit(f"bench: --original_repo {repo_dir}: {rel} not found there (expected a checkout "
                             f"of github.com/{ORIGINAL_GITHUB})")
    return root


def load_original_models(repo_dir):
    """The original study's classes (a namespace: unet = UNet1D_ultimate, cond = CondProjection,
    diffusion = GaussianDiffusion, adan = Adan), imported at run time from the checkout's models/ as
    package ORIGINAL_PACKAGE. Their relative imports resolve inside it; for the
    import, their root leads sys.path and `models` (also our package's name) is their package, then
    sys.path and our `models` modules are put back, so `import models` stays ours."""
    root = check_original_repo(repo_dir)
    pkg_dir = root / "models"
    for name in [k for k in sys.modules if k == ORIGINAL_PACKAGE or k.startswith(ORIGINAL_PACKAGE + ".")]:
        del sys.modules[name]
    init = pkg_dir / "__init__.py"
    if init.is_file():
        spec = importlib.util.spec_from_file_location(ORIGINAL_PACKAGE, init,
                                                      submodule_search_locations=[str(pkg_dir)])
        pkg = importlib.util.module_from_spec(spec)
    else:
        spec, pkg = None, types.ModuleType(ORIGINAL_PACKAGE)
        pkg.__path__ = [str(pkg_dir)]

    def is_models(name):
        return name == "models" or name.startswith("models.")

    ours = {k: sys.modules.pop(k) for k in list(sys.modules) if is_models(k)}
    sys.path.insert(0, str(root))
    sys.modules[ORIGINAL_PACKAGE] = sys.modules["models"] = pkg
    try:
        if spec is not None:
            spec.loader.exec_module(pkg)
        theirs = types.SimpleNamespace(
            unet=importlib.import_module(ORIGINAL_PACKAGE + ".unet1d_ultimate").UNet1D_ultimate,
            cond=importlib.import_module(ORIGINAL_PACKAGE + ".embedding").CondProjection,
            diffusion=importlib.import_module(ORIGINAL_PACKAGE + ".diffusion").GaussianDiffusion,
            adan=importlib.import_module(ORIGINAL_PACKAGE + ".adan").Adan)
    finally:
        sys.path.remove(str(root))
        for k in [k for k in sys.modules if is_models(k)]:
            del sys.modules[k]
        sys.modules.update(ours)
    return theirs


def original_sampling_run(unet, motion_f, text_f, length, guidance=SAMPLE_GUIDANCE):
    """fn() running SAMPLE_STEPS_TIMED steps (t = 999, 998, ...) of the original sample.py's DDPM loop
    from fresh noise: per step one forward of the doubled batch [null | cond] (null = conditions x 0),
    eps = clamp(eps_u + w clamp(eps_c - eps_u, +-5), +-10), x0 estimate, x_{t-1} = (x_t - beta_t /
    sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sqrt(beta_t) z. motion_f, text_f: their CondProjection's
    output, computed once per clip outside the loop as there."""
    device = motion_f.device
    betas = torch.linspace(*ORIGINAL_BETAS, ORIGINAL_TIMESTEPS, device=device)
    alphas = 1.0 - betas
    alpha_bars = torch.cumprod(alphas, dim=0)
    B = motion_f.shape[0]
    mel_dim = ORIGINAL_UNET["in_dim"]

    @torch.no_grad()
    def run():
        x = torch.randn(B, mel_dim, length, device=device)
        for t in range(ORIGINAL_TIMESTEPS - 1, ORIGINAL_TIMESTEPS - 1 - SAMPLE_STEPS_TIMED, -1):
            t_batch = torch.full((B,), t, device=device, dtype=torch.long)
            null = torch.zeros(B, 1, 1, device=device)
            out = unet(torch.cat([x, x]), torch.cat([t_batch, t_batch]), torch.cat([motion_f * null, motion_f]),
                       torch.cat([text_f * null, text_f]))
            eps_u, eps_c = out.chunk(2)
            eps = (eps_u + guidance * (eps_c - eps_u).clamp(-5.0, 5.0)).clamp(-10.0, 10.0)
            beta, alpha, abar = betas[t], alphas[t], alpha_bars[t]
            (x - eps * (1 - abar).sqrt()) / abar.sqrt()  # their x0 estimate, computed and unused there
            noise = torch.randn_like(x) if t > 0 else torch.zeros_like(x)
            x = (x - beta / (1 - abar).sqrt() * eps) / alpha.sqrt() + beta.sqrt() * noise
    return run


def original_training_step(original, B, device):
    """fn() taking one step of the original train.py's loop body at their default settings
    (ORIGINAL_TRAIN), fp32, on a synthetic batch of B clips: zero_grad; their CondProjection over motion
    and per-frame lyrics; one Bernoulli mask dropping both conditions; their GaussianDiffusion.loss
    (eps MSE); backward; clip_grad_norm_ over UNet + CondProjection; their Adan's step; their EMA
    (a Python loop of mul_/add_ over the parameters of both modules)."""
    torch.manual_seed(0)
    unet = original.unet(**ORIGINAL_UNET).to(device).train()
    cond_proj = original.cond(out_dim=ORIGINAL_UNET["cond_dim"], **ORIGINAL_COND).to(device)
    diffusion = original.diffusion(unet, timesteps=ORIGINAL_TIMESTEPS, device=device, dataset_mean=0.0,
                                   dataset_std=1.0)
    params = list(unet.parameters()) + list(cond_proj.parameters())
    optim = original.adan(params, lr=ORIGINAL_TRAIN["lr"], weight_decay=ORIGINAL_TRAIN["weight_decay"])
    ema = [copy.deepcopy(m).requires_grad_(False) for m in (unet, cond_proj)]
    g = torch.Generator().manual_seed(B)
    mel = (torch.randn(B, T_MEL, NUM_MELS, generator=g) - 5).to(device)  # their loader's (B, T, 80)
    motion = torch.randn(B, T_MEL, ORIGINAL_COND["motion_dim"], generator=g).to(device)
    lyrics = torch.randn(B, T_MEL, ORIGINAL_COND["text_dim"], generator=g).to(device)
    decay, p_drop = ORIGINAL_TRAIN["ema_decay"], ORIGINAL_TRAIN["cond_drop_prob"]

    def step():
        unet.train()
        optim.zero_grad()
        motion_f, text_f = cond_proj(motion, lyrics)
        keep = (~(torch.rand(B, device=device) < p_drop).view(B, 1, 1)).float()
        loss = diffusion.loss(mel.permute(0, 2, 1), motion_f * keep, text_f * keep)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, ORIGINAL_TRAIN["grad_clip"])
        optim.step()
        with torch.no_grad():
            for ema_module, module in zip(ema, (unet, cond_proj)):
                for ema_p, p in zip(ema_module.parameters(), module.parameters()):
                    ema_p.data.mul_(decay).add_(p.data * (1.0 - decay))
    return step, sum(p.numel() for p in params)


def bench_original_training(args, device, original):
    """Rows of their training step (original_training_step, fp32) against train_step with our defaults
    in fp32 (the fused Adan, amp off) and as train.py runs here (default_training_variant), at our
    default size (OUR_UNET overrides), interleaved."""
    reps = getattr(args, "repeats", 0) or (2 if args.quick else REPEATS)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    ours_fp32, ours_default = ("off", "sdpa", "fused", False), default_training_variant(device, OUR_UNET)
    rows = []
    for B in ORIGINAL_TRAIN_BATCHES:
        fns, _, n_ours = train_step_fns(list(dict.fromkeys([ours_fp32, ours_default])), B, device, OUR_UNET)
        fns = {"ours_fp32": fns[ours_fp32], "ours_default": fns[ours_default]}
        fns["original"], n_theirs = original_training_step(original, B, device)
        timed = interleaved_median_times(fns, reps, warmup=1, sync=sync)
        t = {name: med for name, (med, _) in timed.items()}
        rows.append({"batch": B, "original_step_s": t["original"], "ours_fp32_step_s": t["ours_fp32"],
                     "ours_default_step_s": t["ours_default"],
                     "original_over_ours_fp32": t["original"] / t["ours_fp32"],
                     "original_over_ours_default": t["original"] / t["ours_default"],
                     "params_original": n_theirs, "params_ours": n_ours[ours_fp32],
                     "times": {name: ts for name, (_, ts) in timed.items()}})
        fns = timed = None
        gc.collect()
    amp = ours_default[0]
    return {"rows": rows, "ours_default": {"amp": "fp32" if amp == "off" else amp, "adan": ours_default[2]},
            "train_settings": ORIGINAL_TRAIN, "repeats": reps}


def interleaved_median_times(fns, repeats, warmup=1, sync=None):
    """{name: fn} -> {name: (median s, times)}; every round runs each fn once in turn (ABAB...), so
    load that comes and goes on a shared machine falls on all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if sync:
                sync()
            t = time.perf_counter()
            fn()
            if sync:
                sync()
            times[name].append(time.perf_counter() - t)
    return {name: (statistics.median(ts), ts) for name, ts in times.items()}


def bench_original(args, device, sampling_rows=None):
    """The original study's guided DDPM step (their UNet1D_ultimate with their sample.py's settings + their
    update) against our guided DDPM step at our default size (OUR_UNET overrides), fp32, interleaved.
    Our default sampler's seconds per clip come from the sample section's row when it ran
    (`sampling_rows`), else from its step timed here in the same rounds."""
    reps = getattr(args, "repeats", 0) or (2 if args.quick else REPEATS)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    original = load_original_models(args.original_repo)
    models_file = sys.modules["models"].__file__
    if Path(models_file).resolve().parent != REPO / "models":
        raise RuntimeError(f"bench: `models` resolves to {models_file} after importing the original code")
    torch.manual_seed(0)
    theirs = original.unet(**ORIGINAL_UNET).to(device).eval()
    cond_proj = original.cond(out_dim=ORIGINAL_UNET["cond_dim"], **ORIGINAL_COND).to(device).eval()
    diff = our_sampling_model(device, **OUR_UNET)
    default = default_sampling(device)
    default_sampler, default_steps = default["sampler"].rsplit("-", 1)
    default_sampler, default_steps = default_sampler.lower(), int(default_steps)
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    rows = []
    for B in SAMPLE_BATCHES:
        batch = synthetic_batch(B, T=T_MEL)
        g = torch.Generator().manual_seed(B)
        with torch.no_grad():
            motion_f, text_f = cond_proj(
                torch.randn(B, T_MEL, ORIGINAL_COND["motion_dim"], generator=g).to(device),
                torch.randn(B, T_MEL, ORIGINAL_COND["text_dim"], generator=g).to(device))
        fns = {"original": original_sampling_run(theirs, motion_f, text_f, T_MEL),
               "ours": our_sampling_run(diff, batch, "ddpm", "fp32")}
        row_default = next((r for r in sampling_rows or () if r["batch"] == B and r["amp"] == default["amp"]
                            and r["sampler"] == default["sampler"]), None)
        if row_default is None and (default_sampler, default["amp"]) != ("ddpm", "fp32"):
            fns["ours_default"] = our_sampling_run(diff, batch, default_sampler, default["amp"])
        timed = interleaved_median_times(fns, reps, sync=sync)
        step = {name: med / SAMPLE_STEPS_TIMED for name, (med, _) in timed.items()}
        if row_default is not None:
            default_per_clip, source = row_default["s_per_clip"], "sample section"
        else:
            step.setdefault("ours_default", step["ours"])
            default_per_clip, source = step["ours_default"] * default_steps / B, "this section"
        row = {"batch": B, "original_step_s": step["original"], "ours_step_s": step["ours"],
               "original_ddpm1000_s_per_clip": step["original"] * ORIGINAL_TIMESTEPS / B,
               "ours_ddpm1000_s_per_clip": step["ours"] * 1000 / B,
               "ours_default_s_per_clip": default_per_clip, "ours_default_source": source}
        if source == "this section":
            row["ours_default_step_s"] = step["ours_default"]
        row["original_step_over_ours"] = row["original_step_s"] / row["ours_step_s"]
        row["original_ddpm1000_over_our_default"] = row["original_ddpm1000_s_per_clip"] / default_per_clip
        row["times"] = {name: ts for name, (_, ts) in timed.items()}
        rows.append(row)
    params = {"params_original_unet": n_params(theirs), "params_original_cond_proj": n_params(cond_proj),
              "params_original": n_params(theirs) + n_params(cond_proj), "params_ours": n_params(diff.model)}
    theirs = cond_proj = diff = fns = timed = None  # frees the sampling models (the closures hold them too)
    gc.collect()  # before the training rows, which hold three models with optimizer state
    training = bench_original_training(args, device, original)
    return {"original": {"training": training, **params,
        "repo": str(Path(args.original_repo).expanduser().resolve()), "github": ORIGINAL_GITHUB,
        "original_unet": {k: list(v) if isinstance(v, tuple) else v for k, v in ORIGINAL_UNET.items()},
        "original_cond": ORIGINAL_COND, "ours_unet": {**OUR_UNET},
        "guidance": SAMPLE_GUIDANCE, "amp": "fp32", "mel_frames": T_MEL, "steps_timed": SAMPLE_STEPS_TIMED,
        "repeats": reps, "our_default": {"sampler": default["sampler"], "amp": default["amp"]},
        "rows": rows}}

# ---- report ----------------------------------------------------------------------------------------
def markdown_table(header, rows):
    """Lines of a Markdown table (and a blank line after it)."""
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(x) for x in row) + " |" for row in rows] + [""])


def table(res):
    lines = []
    if "preprocess" in res:
        lines += markdown_table(
            ("preprocessing (demo data)", "clips", "s", "clips/s", "text enc. s", "audio s", "mel s", "motion s"),
            [(f"--workers {r['workers']}", r["clips"], f"{r['seconds']:.2f}", f"{r['clips_per_s']:.2f}",
              f"{r['text_encoding_s']:.2f}", f"{r['audio_load_s']:.2f}", f"{r['mel_s']:.2f}", f"{r['motion_s']:.2f}")
             for r in res["preprocess"]])
    if "loading" in res:
        L = res["loading"]
        lines += ["| data loading (batch 16) | batches/s | items/s |", "|---|---|---|",
                  f"| MelDataset preloaded (this code) | {L['batches_per_s']:.1f} | {L['items_per_s']:.0f} |",
                  f"| per-item npz read + np.interp per dim (baseline) | {L['baseline_per_item_interp_batches_per_s']:.1f} | {L['baseline_items_per_s']:.0f} |",
                  f"| preload (one-off) | | {L['preload_items_per_s']:.0f} |", ""]
    if "adan" in res:
        loop = next(r["step_s"] for r in res["adan"] if r["kernel"] == "loop")
        lines += markdown_table(
            (f"Adan step ({res['adan'][0]['params'] / 1e6:.1f} M parameters)", "s/step", "vs loop", "first step s"),
            [(r["kernel"], f"{r['step_s']:.4f}", f"{loop / r['step_s']:.2f}x", f"{r['first_step_s']:.2f}")
             for r in res["adan"]])
    if "training" in res:
        size = res["training"][0].get("size", "default") if res["training"] else "default"
        base = {r["batch"]: r["step_s"] for r in res["training"] if is_baseline_training_row(r)}
        lines += markdown_table(
            (f"training step ({size} size)", "batch", "amp", "Adan", "s/step", "vs fp32 loop", "samples/s",
             "first step s", "peak mem MB"),
            [(r["attn"] + (" (train.py's default)" if r.get("default") else ""), r["batch"], r["amp"],
              r.get("adan", "loop"), f"{r['step_s']:.3f}",
              f"{base[r['batch']] / r['step_s']:.2f}x" if r["batch"] in base else "",
              f"{r['samples_per_s']:.2f}", f"{r.get('first_step_s', float('nan')):.1f}", f"{r['peak_mem_mb']:.0f}")
             for r in res["training"]])
    if "plane" in res:
        without = next(r["step_s"] for r in res["plane"] if r["stem_channels"] == 0)
        lines += markdown_table(
            (f"training step, width {res['plane'][0]['base_dim']}, train.py's default variant", "stem_channels",
             "batch", "amp", "params M", "s/step", "vs no plane"),
            [("with the band plane" if r["stem_channels"] else "without", r["stem_channels"], r["batch"], r["amp"],
              f"{r['params'] / 1e6:.2f}", f"{r['step_s']:.3f}", f"{r['step_s'] / without:.2f}x")
             for r in res["plane"]])
    if "sampling" in res:
        lines += ["| sampling, guidance 2 (doubled batch) | batch | amp | s/step | s/clip |", "|---|---|---|---|---|"]
        for r in res["sampling"]:
            lines.append(f"| {r['sampler']} | {r['batch']} | {r['amp']} | {r['step_s']:.3f} | {r['s_per_clip']:.2f} |")
        d = res.get("sampling_default")
        if d:
            lines.append(f"\nsample.py's defaults on this device: {d['sampler']} {d['amp']} "
                         f"(precision {d['precision_setting']!r})")
        lines.append("")
    if "original" in res:
        o, d = res["original"], res["original"]["our_default"]
        lines += [f"| original study vs ours, guidance {o['guidance']:g} (doubled batch), fp32 | batch | s/step | "
                  f"DDPM-1000 s/clip | ours {d['sampler']} {d['amp']} s/clip | step ratio | "
                  "their DDPM-1000 / our default |", "|---|---|---|---|---|---|---|"]
        for r in o["rows"]:
            lines.append(f"| original (their sample.py settings) | {r['batch']} | {r['original_step_s']:.3f} | "
                         f"{r['original_ddpm1000_s_per_clip']:.1f} | | {r['original_step_over_ours']:.2f} | "
                         f"{r['original_ddpm1000_over_our_default']:.1f} |")
            lines.append(f"| ours (default size) | {r['batch']} | {r['ours_step_s']:.3f} | "
                         f"{r['ours_ddpm1000_s_per_clip']:.1f} | {r['ours_default_s_per_clip']:.2f} | 1 | |")
        u = o["original_unet"]
        lines += ["", f"parameters: original {o['params_original']:,} (UNet1D_ultimate {o['params_original_unet']:,} "
                  f"+ CondProjection {o['params_original_cond_proj']:,}), ours {o['params_ours']:,}",
                  f"original: their sample.py's UNet1D_ultimate(base_dim={u['base_dim']}, dim_mults={u['dim_mults']}, "
                  f"cond_dim={u['cond_dim']}, time_emb_dim={u['time_emb_dim']}, num_res_blocks={u['num_res_blocks']}, "
                  f"mid_blocks={u['mid_blocks']}, attn_heads={u['attn_heads']}), "
                  f"motion {o['original_cond']['motion_dim']}-d and lyrics {o['original_cond']['text_dim']}-d on every one of {o['mel_frames']} frames, "
                  "CondProjection once per clip; step = their UNet forward + their DDPM update (eps clamps)",
                  f"ours: default UNetConfig{' + ' + str(o['ours_unet']) if o['ours_unet'] else ''}, "
                  f"motion {MOTION_DIM}-d per frame, {LYRIC_TOKENS} lyric tokens x {LYRIC_DIM}; step = "
                  "GaussianDiffusion.sample DDPM step; default sampler s/clip timed in: "
                  + ", ".join(sorted({r["ours_default_source"] for r in o["rows"]})),
                  f"interleaved, median of {o['repeats']} rounds of {o['steps_timed']} steps each", ""]
        if o.get("training"):
            tr, d = o["training"], o["training"]["ours_default"]
            rows = []
            for r in tr["rows"]:
                rows += [("original (their train.py's loop body, fp32)", r["batch"], f"{r['original_step_s']:.3f}", "1"),
                         ("ours fp32 (train_step, fused Adan)", r["batch"], f"{r['ours_fp32_step_s']:.3f}",
                          f"{r['original_over_ours_fp32']:.2f}x"),
                         (f"ours as train.py runs here ({d['amp']}, {d['adan']} Adan)", r["batch"],
                          f"{r['ours_default_step_s']:.3f}", f"{r['original_over_ours_default']:.2f}x")]
            lines += markdown_table(("training step, original study vs ours", "batch", "s/step", "their step / this"),
                                    rows)
            lines += [f"parameters: original {tr['rows'][0]['params_original']:,}, ours {tr['rows'][0]['params_ours']:,}; "
                      f"their settings {tr['train_settings']}; interleaved, median of {tr['repeats']} rounds", ""]
    return "\n".join(lines)


def is_baseline_training_row(r):
    return (r["amp"], r["attn"], r.get("adan", "loop")) == ("fp32", "sdpa", "loop")


def ratios(res):
    out = {}
    if "training" in res:  # how much faster than the step before issue 19 (fp32, SDPA, Adan's loop)
        for B in sorted({r["batch"] for r in res["training"]}):
            rows = [r for r in res["training"] if r["batch"] == B]
            base = next((r for r in rows if is_baseline_training_row(r)), None)
            for r in rows:
                if base is None or r is base:
                    continue
                name = "mha" if r["attn"] == "mha" else f"{r['amp']}_{r['attn']}_{r.get('adan', 'loop')}"
                out[f"train_baseline_over_{name}_b{B}"] = base["step_s"] / r["step_s"]
                if r.get("default"):
                    out[f"train_baseline_over_default_b{B}"] = base["step_s"] / r["step_s"]
    if "adan" in res:
        loop = next(r["step_s"] for r in res["adan"] if r["kernel"] == "loop")
        out.update({f"adan_loop_over_{r['kernel']}": loop / r["step_s"] for r in res["adan"] if r["kernel"] != "loop"})
    if "sampling" in res:  # seconds per clip of DDPM-1000 fp32 over each row's, same batch, same run
        for r in res["sampling"]:
            base = next((b for b in res["sampling"] if b["batch"] == r["batch"] and b["amp"] == "fp32"
                         and b["sampler"] == "DDPM-1000"), None)
            if base is not None and r is not base:
                out[f"ddpm1000_fp32_over_{r['sampler'].lower()}_{r['amp']}_b{r['batch']}"] = \
                    base["s_per_clip"] / r["s_per_clip"]
                d = res.get("sampling_default") or {}
                if (r["sampler"], r["amp"]) == (d.get("sampler"), d.get("amp")):  # sample.py's defaults here
                    out[f"ddpm1000_fp32_over_default_b{r['batch']}"] = base["s_per_clip"] / r["s_per_clip"]
    if "original" in res:  # same run, interleaved: their step over ours, their DDPM-1000 over our default
        for r in res["original"]["rows"]:
            out[f"original_step_over_ours_b{r['batch']}"] = r["original_step_s"] / r["ours_step_s"]
            out[f"original_ddpm1000_over_our_default_b{r['batch']}"] = \
                r["original_ddpm1000_s_per_clip"] / r["ours_default_s_per_clip"]
        for r in res["original"].get("training", {}).get("rows", ()):
            out[f"original_train_over_ours_fp32_b{r['batch']}"] = r["original_step_s"] / r["ours_fp32_step_s"]
            out[f"original_train_over_ours_default_b{r['batch']}"] = r["original_step_s"] / r["ours_default_step_s"]
    if "loading" in res and "training" in res:
        default = [r for r in res["training"] if r.get("default") and r["batch"] == 16] or \
                  [r for r in res["training"] if r.get("default")]
        if default:  # batches the loader makes in the time of one default training step
            out["loader_batches_per_train_step"] = res["loading"]["batches_per_s"] * default[0]["step_s"]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats, batch 4 only, 1 preprocessing run")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--sections", default="pre,load,train,sample",
                   help="comma list of pre,load,adan,train,plane,sample,sample_compile,original (original needs --original_repo)")
    p.add_argument("--original_repo", default=None,
                   help=f"checkout of github.com/{ORIGINAL_GITHUB}, for --sections original")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile: train.py's default training step compiled against eager (with "
                        "the baseline), and sample.py's sampler compiled")
    p.add_argument("--mha", action="store_true",
                   help="also time the training step with the nn.MultiheadAttention baseline (fp32)")
    p.add_argument("--repeats", type=int, default=0,
                   help="timed rounds of the training and original sections (0: 2 with --quick, else 3 / REPEATS)")
    p.add_argument("--base_dim", type=int, default=0,
                   help="training rows: this UNet width (base_dim) with the rest of --train_size's config")
    p.add_argument("--train_size", default="default", choices=("default", "demo"),
                   help="model size of the training rows: UNetConfig's defaults or make demo's")
    p.add_argument("--work_dir", default=None, help="where demo data and clips go (default: a temp dir)")
    args = p.parse_args(argv)
    if args.base_dim:
        args.train_size = dict(unet_overrides(args.train_size), base_dim=args.base_dim)
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    sections = set(args.sections.split(","))
    if "original" in sections:
        if not args.original_repo:
            p.error(f"--sections original needs --original_repo DIR: a checkout of the original study's code, "
                    f"github.com/{ORIGINAL_GITHUB}")
        check_original_repo(args.original_repo)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="lm2a_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit, "device": str(device),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "quick": args.quick, "command": "python sometest/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    t0 = time.perf_counter()
    clips_dir = None
    if "pre" in sections or "load" in sections:
        r = bench_preprocess(args, work)
        clips_dir = r.pop("clips_dir")
        if "pre" in sections:
            res.update(r)
    if "load" in sections:
        res.update(bench_loading(args, clips_dir))
    if "adan" in sections:
        res.update(bench_adan(args, device))
    if "train" in sections:
        res.update(bench_training(args, device))
    if "plane" in sections:
        res.update(bench_plane(args, device))
    if "sample" in sections:
        res.update(bench_sampling(args, device))
    elif "sample_compile" in sections:  # only sample.py's sampler, compiled against eager
        reps = 2 if args.quick else 3
        rows = compiled_sampling_rows(our_sampling_model(device), reps,
                                      torch.cuda.synchronize if device.type == "cuda" else None, device,
                                      SAMPLE_BATCHES[:1] if args.quick else SAMPLE_BATCHES)
        res.update({"sampling": rows, "sampling_default": default_sampling(device)})
    if "original" in sections:
        res.update(bench_original(args, device, res.get("sampling")))
    res["ratios"] = ratios(res)
    res["seconds"] = time.perf_counter() - t0
    print(table(res))
    for k, v in res["ratios"].items():
        print(f"{k}: {v:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    print(f"bench: {len(sections)} sections on {res['device']} ({res['threads']} threads) in {res['seconds']:.0f} s"
          + (f" -> {args.json}" if args.json else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
