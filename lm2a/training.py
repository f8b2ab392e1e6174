"""The parts of a training run, importable: train.py's loop and sometest/bench.py call these.

    parts = build_parts(model_config, diffusion_config, train_config, norm_stats, device, total_steps)
    result = train_step(parts, batch, step)         # one optimizer step, the one train.py takes
    val, uncond = validation_losses(parts.ema_diffusion, val_ds, ...)

`TrainConfig` declares the optimisation settings once (train.py generates their flags);
`RunState` holds the counters a checkpoint carries (lm2a.checkpoint writes and restores both).
"""
import csv
import io
import math
import os
import signal
import threading
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import random
from datetime import datetime, timezone

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lm2a import SCHEMA_VERSION
from lm2a.checkpoint import CHECKPOINT_KIND, config_from_checkpoint, tensor_bytes, to_cpu
from lm2a.clipio import json_safe, write_text_atomic
from lm2a.data import collate_fn
from lm2a.device import amp_settings
from models.adan import Adan
from models.diffusion import GaussianDiffusion, condition_dropout_masks
from models.hparams import hparam
from models.motion_features import mirror_raw_motion
from models.unet1d_ultimate import UNet1D_ultimate

LOG_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "val_loss_uncond", "lr", "seconds")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings, declared once (train.py's flags are generated from these fields and
    its UPPERCASE constants are their defaults)."""
    batch_size: int = hparam(16, "clips per step and per process")
    lr: float = hparam(5e-4, "peak learning rate (Adan)")
    weight_decay: float = hparam(0.02, "Adan decoupled weight decay")
    warmup_steps: int = hparam(500, "linear LR warm-up (capped at a tenth of the run)")
    lr_schedule: str = hparam("cosine", "after warm-up", choices=("cosine", "step", "constant"))
    min_lr_ratio: float = hparam(0.1, "cosine decays to lr * min_lr_ratio")
    lr_decay_every: int = hparam(10000, '"step" schedule: multiply by lr_decay_gamma this often')
    lr_decay_gamma: float = hparam(0.5, '"step" schedule factor')
    grad_clip: float = hparam(1.0, "max gradient norm")
    ema_decay: float = hparam(0.999, "EMA decay; early updates use min(ema_decay, (1+n)/(ema_warmup+n))")
    ema_warmup: float = hparam(10, "EMA warm-up constant (n = EMA updates so far)")
    p_drop_motion: float = hparam(0.1, "items with only the motion condition dropped")
    p_drop_lyrics: float = hparam(0.1, "items with only the lyrics condition dropped")
    p_drop_both: float = hparam(0.1, "items with both conditions dropped (unconditional)")
    aug_mirror: float = hparam(0.5, "share of training clips whose dancer is mirrored left-right "
                                    "(beat channels are mirror-invariant: matters for rhythm/raw)")
    aug_lyric_swap: float = hparam(0.8, "share of training clips given another clip's lyric line, so "
                                         "the lyrics cannot serve as a song ID")
    aug_gain: float = hparam(0.3, "std of a random level offset added to a training clip's log-mel "
                                  "(natural-log units; 0.23 = 2 dB)")
    aug_eq: float = hparam(0.4, "per-band std of a random smooth spectral tilt/curve added to a training "
                                "clip's log-mel (ln units), so a song's timbre cannot be told from its dance")
    amp: str = hparam("auto", "auto: CUDA bf16 (fp16 + GradScaler without bf16); a CPU with native bf16 "
                              "bf16 from lm2a.device.AUTO_BF16_MIN_WIDTH up, else off; --amp alone = on",
                      choices=("auto", "on", "off", "bf16", "fp16"),
                      flag_kwargs=dict(nargs="?", const="on"))
    seed: int = hparam(0, "seeds model init, data order and per-step noise")

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError("--batch_size must be >= 1")
        if self.p_drop_motion + self.p_drop_lyrics + self.p_drop_both > 1.0 + 1e-9:
            raise ValueError("--p_drop_motion + --p_drop_lyrics + --p_drop_both must be <= 1")
        for name in ("aug_mirror", "aug_lyric_swap"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"--{name} is a share of clips: 0 <= it <= 1")
        for name in ("aug_gain", "aug_eq"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} is a standard deviation: >= 0")


FOLDERS_FLAG = dict(nargs="+", type=str)  # --npz_dir A B ...


def folder_tuple(value):
    """A folder (str or Path) or several -> a tuple of str; "" entries are dropped ("" = none)."""
    values = [value] if isinstance(value, (str, Path)) else list(value)
    return tuple(str(v) for v in values if str(v))


@dataclass(frozen=True)
class RunConfig:
    """What a run does besides optimising: its data, length, validation, saving, logging and the
    training-time samples. Stored in the checkpoint (train_args) and restored by --resume like
    TrainConfig (a flag changes a setting and is named in the note)."""
    npz_dir: tuple = hparam(("split/train",), "training clips (stage 2 output): one folder or several, "
                                              "whose clips are trained on together",
                            flag_kwargs=FOLDERS_FLAG)
    val_npz_dir: tuple = hparam(("split/val",), 'validation clips: one folder or several; "" = no validation',
                                flag_kwargs=FOLDERS_FLAG)
    epochs: int = hparam(100, "passes over the training set (used when max_steps is 0)")
    max_steps: int = hparam(0, "optimizer steps; > 0 overrides epochs")
    max_nonfinite: int = hparam(20, "stop after this many non-finite losses in a row")
    val_every: int = hparam(500, "validate (EMA weights) every this many steps")
    val_timesteps: int = hparam(8, "fixed timesteps per val item, stratified over [0, T)")
    val_seed: int = hparam(1234, "seed of the fixed val timesteps and noises")
    save_every: int = hparam(1000, "write step_XXXXXXXX.pt every this many steps")
    keep: int = hparam(3, "keep only the newest this many step checkpoints (0 = keep all)")
    log_every: int = hparam(10, "train_log.csv / TensorBoard row every this many steps")
    sample_every: int = hparam(None, "sample fixed val clips every this many steps (None: with "
                                     "validation, 0: off); sampled with sample.py's settings",
                               flag_kwargs=dict(type=int))
    sample_clips: int = hparam(4, "validation clips sampled (and again with the conditions dropped)")
    sample_steps: int = hparam(None, "sampler steps of those samples (None: sample.py's)",
                               flag_kwargs=dict(type=int))
    sample_gl_iters: int = hparam(32, "Griffin-Lim iterations of the samples' audio (without --vocoder)")
    vocoder: str = hparam("", 'a BigVGAN folder for the samples\' audio ("" = Griffin-Lim)')
    num_workers: int = hparam(0, "data loader workers (clips are preloaded in memory: 0 is enough)")
    compile: bool = hparam(False, "torch.compile the UNet for training")

    def __post_init__(self):  # a str (one folder, as older checkpoints store it) or a list -> a tuple
        for name in ("npz_dir", "val_npz_dir"):
            object.__setattr__(self, name, folder_tuple(getattr(self, name)))

    def anchored(self, *bases):
        """These settings with their folders (npz_dir, val_npz_dir, vocoder) absolute, a relative one
        taken relative to the first of `bases` under which it exists (else the first): a checkpoint
        then names them wherever --resume runs from."""
        def absolute(folder):
            found = [os.path.join(base, folder) for base in bases if os.path.exists(os.path.join(base, folder))]
            return os.path.normpath((found or [os.path.join(bases[0], folder)])[0]) if folder else folder
        return replace(self, npz_dir=tuple(map(absolute, self.npz_dir)),
                       val_npz_dir=tuple(map(absolute, self.val_npz_dir)), vocoder=absolute(self.vocoder))

    def total_steps(self, batches_per_epoch):
        return self.max_steps if self.max_steps > 0 else self.epochs * batches_per_epoch

    def sample_due(self, step):
        every = self.val_every if self.sample_every is None else self.sample_every
        return every > 0 and step % every == 0


@dataclass
class RunState:
    """The counters of a run: what a checkpoint needs, besides the weights, to resume exactly."""
    step: int = 0              # optimizer steps taken (skipped non-finite steps count)
    epoch: int = 0
    epoch_batch: int = 0       # batches of the current epoch already taken
    best_val: float = None     # lowest validation loss (best.pt)
    last_val: float = None     # the newest validation loss ...
    val_step: int = -1         # ... and its step
    nonfinite_total: int = 0   # steps skipped for a non-finite loss or gradient
    nonfinite_run: int = 0     # ... in a row, now
    train_seconds: float = 0.0  # before this process started (resume)

    def advance(self, batches_per_epoch):
        self.step += 1
        self.epoch_batch += 1
        if self.epoch_batch >= batches_per_epoch:
            self.epoch, self.epoch_batch = self.epoch + 1, 0


@dataclass
class TrainParts:
    """Everything a training step touches. `net` is the module the loss runs through (the model,
    or its DDP / compiled view); `diffusion` wraps `net`, `ema_diffusion` the EMA copy."""
    model: torch.nn.Module
    ema: torch.nn.Module
    diffusion: torch.nn.Module
    ema_diffusion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: object
    amp_dtype: object
    device: torch.device
    config: TrainConfig
    rank: int = 0
    world: int = 1

    @property
    def amp_name(self):
        """The arithmetic the training steps run in: "fp32", "bf16" or "fp16" (--amp resolved)."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp_dtype, "fp32")

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()


def derive_seed(*parts) -> int:
    """A 63-bit seed from integers (seed, step, rank ...), well mixed."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0]
               >> np.uint64(1))


def make_lr_lambda(schedule, warmup_steps, total_steps, min_ratio=0.1, decay_every=10000, gamma=0.5):
    """LambdaLR factor for optimizer step `i` (0-based): linear warm-up, then the schedule."""
    def lr_lambda(i):
        if i < warmup_steps:
            return (i + 1) / warmup_steps
        if schedule == "cosine":
            progress = min(1.0, (i - warmup_steps) / max(1, total_steps - warmup_steps))
            return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if schedule == "step":
            return gamma ** ((i - warmup_steps) // max(1, decay_every))
        return 1.0
    return lr_lambda


def make_ema(model, decay, warmup):
    """EMA of `model`'s weights (and buffers) through AveragedModel + get_ema_multi_avg_fn; the n-th
    update uses decay min(decay, (1 + n) / (warmup + n)) so the EMA is useful early on."""

    def ema_update(ema_params, model_params, num_averaged):
        n = int(num_averaged)
        d = decay if warmup <= 0 else min(decay, (1.0 + n) / (warmup + n))
        get_ema_multi_avg_fn(d)(ema_params, model_params, num_averaged)

    ema = AveragedModel(model, multi_avg_fn=ema_update, use_buffers=True)
    ema.eval()
    return ema


def build_parts(model_config, diffusion_config, config: TrainConfig, norm_stats, device, total_steps,
                net_wrapper=None, rank=0, world=1):
    """Model (seeded by config.seed), EMA, diffusion (training and EMA views), Adan, warm-up +
    schedule, AMP and GradScaler. `net_wrapper(model) -> module` wraps the network the loss runs
    through (DDP, torch.compile); the EMA and the checkpoint always see the plain model."""
    torch.manual_seed(config.seed)
    model = UNet1D_ultimate(model_config).to(device)
    ema = make_ema(model, config.ema_decay, config.ema_warmup)
    optimizer = Adan(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = min(config.warmup_steps, max(1, total_steps // 10))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, make_lr_lambda(
        config.lr_schedule, warmup, total_steps, config.min_lr_ratio, config.lr_decay_every,
        config.lr_decay_gamma))
    amp_dtype, use_scaler = amp_settings(config.amp, device, model_config.base_dim)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    net = net_wrapper(model) if net_wrapper is not None else model
    diffusion = GaussianDiffusion(net, diffusion_config, **norm_stats).to(device)
    ema_diffusion = GaussianDiffusion(ema.module, diffusion_config, **norm_stats).to(device)
    return TrainParts(model, ema, diffusion, ema_diffusion, optimizer, scheduler, scaler, amp_dtype,
                      device, config, rank, world)


ADAN_STATE_TENSORS = 4  # exp_avg, exp_avg_diff, exp_avg_sq, prev_grad per parameter (models/adan.py)


def checkpoint_bytes(parts) -> int:
    """About the size of the run's checkpoint (training_checkpoint): the model's and the EMA's state
    and the optimizer's (before the first step, when Adan holds none yet: ADAN_STATE_TENSORS copies
    of the trainable parameters)."""
    params = sum(p.numel() * p.element_size() for p in parts.model.parameters() if p.requires_grad)
    optimizer = tensor_bytes(parts.optimizer.state_dict()["state"]) or ADAN_STATE_TENSORS * params
    return tensor_bytes(parts.model.state_dict()) + tensor_bytes(parts.ema.module.state_dict()) + optimizer


def run_origins(ckpt) -> list:
    """Where a checkpoint's run may have been started from, most likely first: the folders its relative
    data folders were meant from (older train.py versions stored them as given). The folder the file
    lies in now less the --save_dir it stored (when relative and matching), the current folder, then
    the folders above the file's (a run folder copied elsewhere)."""
    stored = Path(str((ckpt.get("train_args") or {}).get("save_dir") or ""))
    here = Path(os.path.abspath(Path(ckpt.get("_path", "")).parent))
    n, origins = len(stored.parts), []
    if n and not stored.is_absolute() and ".." not in stored.parts and here.parts[-n:] == stored.parts:
        origins.append(str(Path(*here.parts[:-n])))
    return origins + [os.getcwd()] + [str(p) for p in here.parents]


def batch_to_device(batch, device):
    nb = device.type == "cuda"
    return {
        "mel": batch["mel"].to(device, non_blocking=nb).transpose(1, 2).contiguous(),  # (B, 80, T)
        "motion": batch["motion"].to(device, non_blocking=nb),                        # (B, T, 234)
        "lyrics": batch["lyrics"].to(device, non_blocking=nb),                        # (B, L, D)
        "lyric_pad_mask": batch["lyric_pad_mask"].to(device, non_blocking=nb),        # (B, L)
    }


EQ_COMPONENTS = 3  # cosine shapes over the mel bands in aug_eq's random curve (tilt, bowl, wiggle)


def augment(batch, p_mirror, gain_std, p_lyric_swap=0.0, eq_std=0.0):
    """Training augmentation (torch's global RNG, which train_step seeds per step; a setting of 0
    draws nothing). Two keep the music-motion link: each clip's dancer mirrored left-right with
    probability p_mirror (models/motion_features.mirror_raw_motion), and a level offset
    ~ N(0, gain_std) added to each clip's log-mel (a gain change of the whole clip). The third
    weakens the lyrics-song link: with probability p_lyric_swap a clip gets the lyric line of
    another clip of the batch (never its own). Unlike condition dropout, which only teaches
    the null condition, a swapped line is a wrong one, so the model learns to trust the lyrics only
    as far as they predict the music across songs, not to read them as a song's name. The fourth,
    eq_std, adds to each clip's log-mel a random smooth curve over the bands (EQ_COMPONENTS cosine
    shapes, zero mean over the bands, per-band std eq_std on average): a random equaliser. A
    song's timbre is what the dance cannot predict and what a conditioned model on a few songs learns
    to read off the dancer; with it varied per clip, only the timing stays worth taking from the motion.
    Returns a new batch dict."""
    out = dict(batch)
    if p_mirror > 0:
        flip = torch.rand(batch["motion"].shape[0], device=batch["motion"].device) < p_mirror
        out["motion"] = torch.where(flip[:, None, None], mirror_raw_motion(batch["motion"]), batch["motion"])
    if gain_std > 0:
        out["mel"] = batch["mel"] + gain_std * torch.randn(batch["mel"].shape[0], 1, 1, device=batch["mel"].device)
    B = batch["lyrics"].shape[0] if "lyrics" in batch else 0
    if p_lyric_swap > 0 and B > 1:
        device = batch["lyrics"].device
        swap = torch.rand(B, device=device) < p_lyric_swap
        perm = torch.randperm(B, device=device)
        perm = torch.where(perm == torch.arange(B, device=device), perm.roll(1), perm)  # no clip keeps its own
        src = torch.where(swap, perm, torch.arange(B, device=device))
        out["lyrics"], out["lyric_pad_mask"] = batch["lyrics"][src], batch["lyric_pad_mask"][src]
    if eq_std > 0:
        mel = out["mel"]
        n_mels = mel.shape[1]
        k = (torch.arange(n_mels, device=mel.device, dtype=torch.float32) + 0.5) / n_mels
        basis = torch.stack([torch.cos(torch.pi * j * k) for j in range(1, EQ_COMPONENTS + 1)])  # (J, n_mels)
        coef = torch.randn(mel.shape[0], EQ_COMPONENTS, device=mel.device) * (eq_std / (EQ_COMPONENTS / 2) ** 0.5)
        out["mel"] = mel + (coef @ basis).to(mel.dtype)[:, :, None]
    return out


@dataclass
class StepResult:
    loss: float       # mean loss over all processes (NaN/inf when the step was skipped)
    finite: bool      # False: non-finite loss or gradient, no update was made
    lr: float         # the learning rate the step used
    stop: bool        # a process asked to stop (signal), so every process stops together


def train_step(parts: TrainParts, batch, step, stop=False) -> StepResult:
    """One optimizer step on a collate_fn batch: seeds the RNG from (seed, step, rank) so the
    timesteps, noise, dropout masks and network dropout are a pure function of the step (exact
    resume); loss under autocast; one collective under DDP (mean loss + stop flag: a non-finite
    loss on any process skips the step everywhere); backward, clipping, Adan step, EMA update;
    then the LR schedule steps (also on a skipped step, so the schedule follows the step count)."""
    cfg, device = parts.config, parts.device
    torch.manual_seed(derive_seed(cfg.seed, step, parts.rank))
    batch = batch_to_device(batch, device)
    B, mel_dim, frames = batch["mel"].shape
    t = torch.randint(0, parts.diffusion.timesteps, (B,), device=device)
    noise = torch.randn(B, mel_dim, frames, device=device)
    drop_motion, drop_lyrics = condition_dropout_masks(
        B, cfg.p_drop_motion, cfg.p_drop_lyrics, cfg.p_drop_both, device)
    batch = augment(batch, cfg.aug_mirror, cfg.aug_gain, cfg.aug_lyric_swap, cfg.aug_eq)  # draws after the above
    lr = parts.optimizer.param_groups[0]["lr"]
    with parts.autocast():
        loss = parts.diffusion.loss(batch["mel"], batch["motion"], batch["lyrics"],
                                    lyric_pad_mask=batch["lyric_pad_mask"], drop_motion=drop_motion,
                                    drop_lyrics=drop_lyrics, t=t, noise=noise)
    flags = torch.stack([loss.detach().float().reshape(()), torch.tensor(float(bool(stop)), device=device)])
    if parts.world > 1:
        torch.distributed.all_reduce(flags)
    loss_mean, stop_any = flags.tolist()
    loss_mean /= parts.world
    finite = math.isfinite(loss_mean)
    if finite:
        params = parts.model.parameters()
        if parts.scaler is not None:
            parts.scaler.scale(loss).backward()
            parts.scaler.unscale_(parts.optimizer)
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            parts.scaler.step(parts.optimizer)  # skips the step itself on inf grads (fp16 range)
            parts.scaler.update()
        else:
            loss.backward()
            finite = bool(torch.isfinite(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)))
            if finite:
                parts.optimizer.step()
    if finite:
        parts.ema.update_parameters(parts.model)
    parts.optimizer.zero_grad(set_to_none=True)
    parts.scheduler.step()
    return StepResult(loss_mean, finite, lr, bool(stop_any))


@torch.no_grad()
def validation_loss(diffusion, dataset, indices, batch_size, device, amp_ctx=nullcontext,
                    n_timesteps=8, seed=1234, drops=None):
    """Sums (not means) of the per-item loss over `indices` of `dataset` on a fixed set of timesteps
    and noises: val item i always gets n_timesteps stratified timesteps and noises drawn from a
    generator seeded by (seed, i), so the result depends only on the weights. `drops` maps a name
    to (drop_motion, drop_lyrics) bools; default: "cond" (none dropped) and "uncond" (both).
    Returns ({name: sum}, count)."""
    drops = drops or {"cond": (False, False), "uncond": (True, True)}
    T, k = diffusion.timesteps, n_timesteps
    sums = {name: 0.0 for name in drops}
    count = 0
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        batch = batch_to_device(collate_fn([dataset[i] for i in chunk]), device)
        B, mel_dim, frames = batch["mel"].shape
        ts, noises = [], []
        for i in chunk:
            g = torch.Generator().manual_seed(derive_seed(seed, i))
            ts.append(((torch.arange(k) + torch.rand(k, generator=g)) * T / k).long().clamp_(0, T - 1))
            noises.append(torch.randn(k, mel_dim, frames, generator=g))
        ts = torch.stack(ts).to(device)          # (B, k)
        noises = torch.stack(noises).to(device)  # (B, k, 80, T)
        for j in range(k):
            for name, (dm, dl) in drops.items():
                with amp_ctx():
                    loss = diffusion.loss(
                        batch["mel"], batch["motion"], batch["lyrics"],
                        lyric_pad_mask=batch["lyric_pad_mask"],
                        drop_motion=torch.full((B,), dm, device=device),
                        drop_lyrics=torch.full((B,), dl, device=device),
                        t=ts[:, j], noise=noises[:, j], reduction="none")
                sums[name] += float(loss.float().sum())
        count += B * k
    return sums, count


class EpochBatchSampler(torch.utils.data.Sampler):
    """Batches of dataset indices (a DataLoader's batch_sampler) whose order is a pure function of
    (seed, epoch), sharded across DDP ranks like DistributedSampler, and able to skip the batches
    already done in the epoch (for an exact resume). `lengths`: each item's mel length; a batch holds
    clips of one length (collate_fn stacks them). The epoch's shuffled order is split by length (each
    length's clips in the order they drew), each length's list padded by wrapping so every rank gets
    the same count, cut into batches, and with several lengths the batches are shuffled together (the
    same order on every rank: all ranks take one length at a time). With one length this is a shuffled
    index list cut into batch_size pieces, as the DataLoader's own batching of it would be."""

    def __init__(self, lengths, batch_size, seed=0, rank=0, world_size=1):
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.rank, self.world_size = rank, world_size
        counts = {}
        for length in self.lengths:
            counts[length] = counts.get(length, 0) + 1
        self.batches_per_epoch = sum(math.ceil(math.ceil(n / world_size) / batch_size) for n in counts.values())
        self.epoch, self.skip_batches = 0, 0

    def set_epoch(self, epoch, skip_batches=0):
        self.epoch, self.skip_batches = epoch, skip_batches

    def epoch_batches(self, epoch):
        """This rank's batches (lists of indices) of `epoch`, in the order they are taken."""
        g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        by_length = {}
        for i in torch.randperm(len(self.lengths), generator=g).tolist():
            by_length.setdefault(self.lengths[i], []).append(i)
        batches = []
        for length in sorted(by_length):
            order = by_length[length]
            per_rank = math.ceil(len(order) / self.world_size)
            total = per_rank * self.world_size
            mine = (order * math.ceil(total / len(order)))[:total][self.rank::self.world_size]
            batches += [mine[k:k + self.batch_size] for k in range(0, per_rank, self.batch_size)]
        if len(by_length) > 1:
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch, 1))
            batches = [batches[j] for j in torch.randperm(len(batches), generator=g).tolist()]
        return batches

    def __iter__(self):
        return iter(self.epoch_batches(self.epoch)[self.skip_batches:])

    def __len__(self):
        return max(0, self.batches_per_epoch - self.skip_batches)


def weights_checksum(module) -> torch.Tensor:
    """(2,) float64: sum and sum of squares of every weight and buffer; equal weights -> equal
    checksums (used to check that DDP ranks agree at the end of a run)."""
    total = torch.zeros(2, dtype=torch.float64)
    for v in module.state_dict().values():
        if v.is_floating_point():
            v = v.detach().double().cpu()
            total += torch.stack([v.sum(), (v * v).sum()])
    return total


class StopFlag:
    """Set by SIGINT/SIGTERM: the loop finishes the current step, saves and exits. A second Ctrl-C
    aborts at once."""

    def __init__(self):
        self.signal_name = None
        self._previous = {}

    def __bool__(self):
        return self.signal_name is not None

    def _handler(self, signum, frame):
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def install(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handler)
        return self

    def uninstall(self):
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()


def ignore_sigint(_worker_id):
    """DataLoader worker_init_fn: Ctrl-C reaches the workers too; only the main process handles it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class CsvLog:
    """train_log.csv, appended and flushed row by row; on resume rows after the resume step
    (logged by a run that died after its last checkpoint) are dropped."""

    def __init__(self, path, resume_step=None, columns=LOG_COLUMNS):
        self.path, self.columns = Path(path), tuple(columns)
        rows = []
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit()
                        and int(r["step"]) <= resume_step]
        buf = io.StringIO()
        w = csv.DictWriter(buf, self.columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        write_text_atomic(self.path, buf.getvalue())
        self.file = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.file, self.columns, extrasaction="ignore")

    def write(self, row):
        self.writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in self.columns})
        self.file.flush()

    def close(self):
        self.file.close()


def world_from_env():
    """(rank, local_rank, world_size) from torchrun's environment."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")),
            int(os.environ.get("WORLD_SIZE", "1")))


# ---- the training checkpoint: built once, restored once (lm2a/checkpoint.py reads and writes it) ----

def capture_rng_state():
    """Python, numpy, torch and CUDA RNG states as tensors/lists/numbers (weights_only-loadable)."""
    py = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state):
    if not state:
        return
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    s = state["numpy"]
    np.random.set_state((s["name"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"],
                         s["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available() \
            and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def training_checkpoint(parts, state, mel_config, text_encoder, train_args) -> dict:
    """The checkpoint of a training run (TrainParts + RunState): configs, statistics, weights,
    optimizer/scheduler/scaler, RNG and counters. The one place the layout is written (FORMATS.md).
    mel_config: a MelConfig; text_encoder: {name, dim}; train_args: the TrainConfig and RunConfig
    in force (and the command line's other flags, for the record)."""
    diffusion = parts.ema_diffusion
    return {
        "schema_version": SCHEMA_VERSION, "kind": CHECKPOINT_KIND,
        "model_class": type(parts.model).__name__, "model_config": json_safe(parts.model.config),
        "diffusion_config": json_safe(diffusion.config),
        "norm_stats": diffusion.norm_stats(), "mel_config": mel_config.to_dict(),
        "text_encoder": dict(text_encoder),
        "step": state.step, "epoch": state.epoch, "epoch_batch": state.epoch_batch,
        "world_size": parts.world, "amp": parts.amp_name,
        "model": to_cpu(parts.model.state_dict()), "ema": to_cpu(parts.ema.module.state_dict()),
        "ema_num_averaged": int(parts.ema.n_averaged),
        "optimizer": to_cpu(parts.optimizer.state_dict()),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict() if parts.scaler is not None else None,
        "rng": capture_rng_state(), "train_args": json_safe(train_args),
        "val_loss": state.last_val, "val_step": state.val_step, "best_val_loss": state.best_val,
        "train_seconds": state.train_seconds, "nonfinite_steps": state.nonfinite_total,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch_version": str(torch.__version__),
    }


def restore_training(ckpt, parts) -> RunState:
    """Puts a training checkpoint back into freshly built parts (weights, EMA, optimizer, schedule,
    scaler, RNG) -> the RunState to continue from."""
    parts.model.load_state_dict(ckpt["model"])
    parts.ema.module.load_state_dict(ckpt["ema"])
    parts.ema.n_averaged.fill_(int(ckpt.get("ema_num_averaged", ckpt["step"])))
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    parts.scheduler.load_state_dict(ckpt["scheduler"])
    if parts.scaler is not None and ckpt.get("scaler"):
        parts.scaler.load_state_dict(ckpt["scaler"])
    restore_rng_state(ckpt.get("rng"))
    return RunState(step=int(ckpt["step"]), epoch=int(ckpt["epoch"]),
                    epoch_batch=int(ckpt.get("epoch_batch", 0)), best_val=ckpt.get("best_val_loss"),
                    last_val=ckpt.get("val_loss"), val_step=int(ckpt.get("val_step", -1)),
                    nonfinite_total=int(ckpt.get("nonfinite_steps", 0)),
                    train_seconds=float(ckpt.get("train_seconds", 0.0)))


def start_from_weights(ckpt, parts):
    """Puts a checkpoint's weights into freshly built parts and nothing else (train.py --init_from):
    the model's and the EMA's (a file without EMA weights: the model's), and the EMA's update count,
    so the EMA goes on averaging at its full decay rather than starting over from the raw weights.
    The optimizer, LR schedule, scaler, RNG and counters stay those of a new run."""
    parts.model.load_state_dict(ckpt["model"])
    parts.ema.module.load_state_dict(ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"])
    parts.ema.n_averaged.fill_(int(ckpt.get("ema_num_averaged", ckpt["step"])))


def saved_settings(ckpt, cls):
    """The TrainConfig or RunConfig a checkpoint's run had (train_args; LEGACY_VALUES for settings
    older than the file)."""
    return config_from_checkpoint(cls, ckpt, "train_args", section=ckpt.get("train_args") or {})
