"""Stage 3: train the motion+lyrics -> mel diffusion model (UNet1D_ultimate in GaussianDiffusion).

    python train.py --npz_dir split/train --val_npz_dir split/val --save_dir checkpoints
    python train.py ... --resume                  # continue from the newest checkpoint in save_dir
    torchrun --nproc_per_node=4 train.py ...      # DDP, one process per GPU (gloo on CPU)

Writes into --save_dir: step_XXXXXXXX.pt every --save_every steps (the last --keep of them are kept),
best.pt (lowest validation loss), last.pt (end of run, or Ctrl-C / SIGTERM), train_log.csv and
TensorBoard events. Checkpoints are self-describing (lm2a/checkpoint.py): sample.py and val.py need
nothing else. --batch_size is per process: the global batch under DDP is batch_size x processes.

Condition dropout (classifier-free guidance): each training item draws u ~ U[0, 1) and
    u < 0.1          -> motion dropped, lyrics kept     (P_DROP_MOTION)
    0.1 <= u < 0.2   -> lyrics dropped, motion kept     (P_DROP_LYRICS)
    0.2 <= u < 0.3   -> both dropped (unconditional)    (P_DROP_BOTH)
    otherwise        -> both kept                       (70 %)
so motion is dropped for 20 % of items, lyrics for 20 %, both together for 10 %.

Exact resume: every step seeds the torch RNG from (seed, step, rank) before drawing its timesteps,
noise, dropout masks and the network's dropout, and the data order of an epoch is a pure function of
(seed, epoch); so N steps straight and N/2 + resume + N/2 give the same weights (test_train.py).
Validation uses the EMA weights on a fixed set of timesteps and noises per val item (seeded by the
item's index), so successive values are comparable; val_loss_uncond is the same with both conditions
dropped: the gap between the two shows how much the model uses its conditions.

Exit codes: 0 done; 130 interrupted by Ctrl-C / SIGTERM (last.pt saved: --resume continues);
3 too many non-finite losses in a row; 2 unreadable input (clip or checkpoint files).
"""
import argparse
import csv
import hashlib
import math
import os
import random
import signal
import sys
import threading
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

# ---- data and output
NPZ_DIR = "split/train"        # training clips (stage 2 output)
VAL_NPZ_DIR = "split/val"      # validation clips; "" = no validation
SAVE_DIR = "checkpoints"       # checkpoints, train_log.csv and TensorBoard events
# ---- length of the run
EPOCHS = 100                   # passes over the training set (used when MAX_STEPS is 0)
MAX_STEPS = 0                  # optimizer steps; > 0 overrides EPOCHS
BATCH_SIZE = 16                # clips per step and per process
# ---- model (UNet1D_ultimate)
BASE_DIM = 256                 # channels at the first UNet level
DIM_MULTS = (1, 2, 4)          # channel multiplier per UNet level
COND_DIM = 128                 # width of the motion / lyric condition embeddings
TIME_EMB_DIM = 256             # width of the diffusion-timestep embedding
NUM_RES_BLOCKS = 2             # residual blocks per UNet level
NUM_MID_BLOCKS = 3             # blocks in the middle of the UNet
NUM_HEADS = 8                  # attention heads
DROPOUT = 0.1                  # dropout inside the UNet
# ---- diffusion
TIMESTEPS = 1000               # diffusion steps T
BETA_SCHEDULE = "linear"       # "linear" or "cosine"
OBJECTIVE = "eps"              # network predicts "eps" (noise) or "v"
# ---- optimisation
LR = 3e-4                      # peak learning rate (Adan)
WEIGHT_DECAY = 0.02            # Adan decoupled weight decay
WARMUP_STEPS = 500             # linear LR warm-up (capped at a tenth of the run)
LR_SCHEDULE = "cosine"         # after warm-up: "cosine", "step" or "constant"
MIN_LR_RATIO = 0.1             # cosine decays to LR * MIN_LR_RATIO
LR_DECAY_EVERY = 10000         # "step" schedule: multiply by LR_DECAY_GAMMA every this many steps
LR_DECAY_GAMMA = 0.5           # "step" schedule factor
GRAD_CLIP = 1.0                # max gradient norm
EMA_DECAY = 0.999              # EMA decay; early steps use min(EMA_DECAY, (1+n)/(EMA_WARMUP+n))
EMA_WARMUP = 10                # EMA warm-up constant (n = EMA updates so far)
P_DROP_MOTION = 0.1            # items with only the motion condition dropped
P_DROP_LYRICS = 0.1            # items with only the lyrics condition dropped
P_DROP_BOTH = 0.1              # items with both conditions dropped (unconditional)
AMP = "auto"                   # auto: CUDA bf16 (fp16+GradScaler if no bf16), CPU off; on, off, bf16, fp16
MAX_NONFINITE = 20             # stop after this many non-finite losses in a row
# ---- bookkeeping
VAL_EVERY = 500                # validate (EMA weights) every this many steps
VAL_TIMESTEPS = 8              # fixed timesteps per val item, stratified over [0, T)
VAL_SEED = 1234                # seed of the fixed val timesteps and noises
SAVE_EVERY = 1000              # write step_XXXXXXXX.pt every this many steps
KEEP = 3                       # keep only the newest KEEP step checkpoints (0 = keep all)
LOG_EVERY = 10                 # train_log.csv / TensorBoard row every this many steps
SEED = 0                       # seeds model init, data order and per-step noise
DEVICE = "auto"                # auto, cpu, cuda, cuda:1
NUM_WORKERS = 0                # data loader workers (clips are preloaded in memory: 0 is enough)
COMPILE = False                # torch.compile the UNet for training

MODEL_FLAGS = ("base_dim", "dim_mults", "cond_dim", "time_emb_dim", "num_res_blocks",
               "num_mid_blocks", "num_heads", "dropout")
DIFFUSION_FLAGS = ("timesteps", "beta_schedule", "objective")
LOG_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "val_loss_uncond", "lr", "seconds")
EXIT_INTERRUPTED = 130
EXIT_NONFINITE = 3


def parse_dim_mults(text):
    try:
        mults = tuple(int(x) for x in str(text).replace(" ", "").strip("()").split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--dim_mults {text!r}: expected integers like 1,2,4")
    if not mults:
        raise argparse.ArgumentTypeError("--dim_mults: at least one level")
    return mults


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--npz_dir", default=NPZ_DIR)
    p.add_argument("--val_npz_dir", default=VAL_NPZ_DIR, help='"" = no validation')
    p.add_argument("--save_dir", default=SAVE_DIR)
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, default=EPOCHS)
    length.add_argument("--max_steps", type=int, default=MAX_STEPS, help="> 0 overrides --epochs")
    p.add_argument("--batch_size", type=int, default=BATCH_SIZE, help="per process")
    # model and diffusion flags default to None so that --resume can tell what was asked for;
    # None means the constant above (or, on resume, the checkpoint's value)
    p.add_argument("--base_dim", type=int, default=None, help=f"default {BASE_DIM}")
    p.add_argument("--dim_mults", type=parse_dim_mults, default=None,
                   help=f"default {','.join(map(str, DIM_MULTS))}")
    p.add_argument("--cond_dim", type=int, default=None, help=f"default {COND_DIM}")
    p.add_argument("--time_emb_dim", type=int, default=None, help=f"default {TIME_EMB_DIM}")
    p.add_argument("--num_res_blocks", type=int, default=None, help=f"default {NUM_RES_BLOCKS}")
    p.add_argument("--num_mid_blocks", type=int, default=None, help=f"default {NUM_MID_BLOCKS}")
    p.add_argument("--num_heads", type=int, default=None, help=f"default {NUM_HEADS}")
    p.add_argument("--dropout", type=float, default=None, help=f"default {DROPOUT}")
    p.add_argument("--timesteps", type=int, default=None, help=f"default {TIMESTEPS}")
    p.add_argument("--beta_schedule", choices=("linear", "cosine"), default=None,
                   help=f"default {BETA_SCHEDULE}")
    p.add_argument("--objective", choices=("eps", "v"), default=None, help=f"default {OBJECTIVE}")
    p.add_argument("--lr", type=float, default=LR)
    p.add_argument("--weight_decay", type=float, default=WEIGHT_DECAY)
    p.add_argument("--warmup_steps", type=int, default=WARMUP_STEPS)
    p.add_argument("--lr_schedule", choices=("cosine", "step", "constant"), default=LR_SCHEDULE)
    p.add_argument("--min_lr_ratio", type=float, default=MIN_LR_RATIO)
    p.add_argument("--lr_decay_every", type=int, default=LR_DECAY_EVERY)
    p.add_argument("--lr_decay_gamma", type=float, default=LR_DECAY_GAMMA)
    p.add_argument("--grad_clip", type=float, default=GRAD_CLIP)
    p.add_argument("--ema_decay", type=float, default=EMA_DECAY)
    p.add_argument("--ema_warmup", type=float, default=EMA_WARMUP)
    p.add_argument("--p_drop_motion", type=float, default=P_DROP_MOTION)
    p.add_argument("--p_drop_lyrics", type=float, default=P_DROP_LYRICS)
    p.add_argument("--p_drop_both", type=float, default=P_DROP_BOTH)
    p.add_argument("--amp", nargs="?", const="on", default=AMP,
                   choices=("auto", "on", "off", "bf16", "fp16"),
                   help="--amp alone = on (bf16 on CPU)")
    p.add_argument("--max_nonfinite", type=int, default=MAX_NONFINITE)
    p.add_argument("--val_every", type=int, default=VAL_EVERY)
    p.add_argument("--val_timesteps", type=int, default=VAL_TIMESTEPS)
    p.add_argument("--val_seed", type=int, default=VAL_SEED)
    p.add_argument("--save_every", type=int, default=SAVE_EVERY)
    p.add_argument("--keep", type=int, default=KEEP, help="0 = keep all step checkpoints")
    p.add_argument("--log_every", type=int, default=LOG_EVERY)
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="no value: newest checkpoint in --save_dir; or a checkpoint file/folder")
    p.add_argument("--force", action="store_true",
                   help="start fresh although --save_dir holds checkpoints (deletes them)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--device", default=DEVICE)
    p.add_argument("--num_workers", type=int, default=NUM_WORKERS)
    p.add_argument("--compile", action="store_true", default=COMPILE)
    p.add_argument("--no_progress", action="store_true", help="no tqdm bar (logs, CI)")
    return p


# ---------------------------------------------------------------------------------------------
# small pieces the tests import

def derive_seed(*parts) -> int:
    """A 63-bit seed from integers (seed, step, rank ...), well mixed."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0]
               >> np.uint64(1))


def make_lr_lambda(schedule, warmup_steps, total_steps, min_ratio=MIN_LR_RATIO,
                   decay_every=LR_DECAY_EVERY, gamma=LR_DECAY_GAMMA):
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


def condition_dropout_masks(batch_size, p_motion, p_lyrics, p_both, device=None, generator=None):
    """Per item: (drop_motion, drop_lyrics) bool (B,). u < p_motion: motion only; then p_lyrics:
    lyrics only; then p_both: both; else none (see the module docstring)."""
    if p_motion + p_lyrics + p_both > 1.0 + 1e-9:
        raise ValueError(f"condition dropout probabilities sum to {p_motion + p_lyrics + p_both} > 1")
    u = torch.rand(batch_size, device=device, generator=generator)
    motion_only = u < p_motion
    lyrics_only = (u >= p_motion) & (u < p_motion + p_lyrics)
    both = (u >= p_motion + p_lyrics) & (u < p_motion + p_lyrics + p_both)
    return motion_only | both, lyrics_only | both


def make_ema(model, decay, warmup):
    """EMA of `model`'s weights (and buffers) through AveragedModel + get_ema_multi_avg_fn; the n-th
    update uses decay min(decay, (1 + n) / (warmup + n)) so the EMA is useful early on."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    def ema_update(ema_params, model_params, num_averaged):
        n = int(num_averaged)
        d = decay if warmup <= 0 else min(decay, (1.0 + n) / (warmup + n))
        get_ema_multi_avg_fn(d)(ema_params, model_params, num_averaged)

    ema = AveragedModel(model, multi_avg_fn=ema_update, use_buffers=True)
    ema.eval()
    return ema


class EpochSampler(torch.utils.data.Sampler):
    """Shuffled indices whose order is a pure function of (seed, epoch), sharded across DDP ranks
    like DistributedSampler (the list is padded by wrapping so every rank gets the same count), and
    able to skip the batches already done in the epoch (for an exact resume)."""

    def __init__(self, n, batch_size, seed=0, rank=0, world_size=1, shuffle=True):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.per_rank = math.ceil(n / world_size)
        self.batches_per_epoch = math.ceil(self.per_rank / batch_size)
        self.epoch, self.skip_batches = 0, 0

    def set_epoch(self, epoch, skip_batches=0):
        self.epoch, self.skip_batches = epoch, skip_batches

    def epoch_indices(self, epoch):
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.world_size
        order = (order * math.ceil(total / self.n))[:total]
        return order[self.rank::self.world_size]

    def __iter__(self):
        return iter(self.epoch_indices(self.epoch)[self.skip_batches * self.batch_size:])

    def __len__(self):
        return max(0, self.per_rank - self.skip_batches * self.batch_size)


def compute_loss(diffusion, batch, t, noise, drop_motion, drop_lyrics):
    """Mean training loss of one batch (tests monkeypatch this to inject non-finite losses)."""
    return diffusion.loss(batch["mel"], batch["motion"], batch["lyrics"],
                          lyric_pad_mask=batch["lyric_pad_mask"], drop_motion=drop_motion,
                          drop_lyrics=drop_lyrics, t=t, noise=noise)


def batch_to_device(batch, device):
    nb = device.type == "cuda"
    return {
        "mel": batch["mel"].to(device, non_blocking=nb).transpose(1, 2).contiguous(),  # (B, 80, T)
        "motion": batch["motion"].to(device, non_blocking=nb),                        # (B, T, 234)
        "lyrics": batch["lyrics"].to(device, non_blocking=nb),                        # (B, L, D)
        "lyric_pad_mask": batch["lyric_pad_mask"].to(device, non_blocking=nb),        # (B, L)
    }


def pad_lyrics(batch, length):
    """Pads lyric tokens (and the mask, True = padding) to a fixed `length`: with --compile a fixed
    shape avoids recompiles (and an inductor backward bug with a dynamic token count)."""
    B, L, D = batch["lyrics"].shape
    if L >= length:
        return batch
    pad = length - L
    lyrics = torch.cat([batch["lyrics"], batch["lyrics"].new_zeros(B, pad, D)], dim=1)
    mask = torch.cat([batch["lyric_pad_mask"], batch["lyric_pad_mask"].new_ones(B, pad)], dim=1)
    return {**batch, "lyrics": lyrics, "lyric_pad_mask": mask}


@torch.no_grad()
def validation_loss(diffusion, dataset, indices, batch_size, device, amp_ctx=nullcontext,
                    n_timesteps=VAL_TIMESTEPS, seed=VAL_SEED):
    """Sums (not means) of the per-item loss over `indices` of `dataset`, with conditions and with
    both conditions dropped, on a fixed set of timesteps and noises: val item i always gets
    n_timesteps stratified timesteps and noises drawn from a generator seeded by (seed, i), so the
    result depends only on the weights. Returns (sum_cond, sum_uncond, count)."""
    from dataset import collate_fn
    T = diffusion.config["timesteps"]
    k = n_timesteps
    sum_c = sum_u = 0.0
    count = 0
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        batch = batch_to_device(collate_fn([dataset[i] for i in chunk]), device)
        B, _, frames = batch["mel"].shape
        ts, noises = [], []
        for i in chunk:
            g = torch.Generator().manual_seed(derive_seed(seed, i))
            ts.append(((torch.arange(k) + torch.rand(k, generator=g)) * T / k).long().clamp_(0, T - 1))
            noises.append(torch.randn(k, batch["mel"].shape[1], frames, generator=g))
        ts = torch.stack(ts).to(device)          # (B, k)
        noises = torch.stack(noises).to(device)  # (B, k, 80, T)
        ones = torch.ones(B, dtype=torch.bool, device=device)
        for j in range(k):
            with amp_ctx():
                lc = diffusion.loss(batch["mel"], batch["motion"], batch["lyrics"],
                                    lyric_pad_mask=batch["lyric_pad_mask"], t=ts[:, j],
                                    noise=noises[:, j], reduction="none")
                lu = diffusion.loss(batch["mel"], batch["motion"], batch["lyrics"],
                                    lyric_pad_mask=batch["lyric_pad_mask"], drop_motion=ones,
                                    drop_lyrics=ones, t=ts[:, j], noise=noises[:, j],
                                    reduction="none")
            sum_c += float(lc.float().sum())
            sum_u += float(lu.float().sum())
        count += B * k
    return sum_c, sum_u, count


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


def to_cpu(obj):
    """Tensors anywhere in nested dicts/lists -> CPU, so a checkpoint loads without CUDA."""
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def json_able(value):
    if isinstance(value, (tuple, list)):
        return [json_able(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_able(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def prune_step_checkpoints(save_dir, keep):
    """Deletes all but the newest `keep` step_XXXXXXXX.pt files (keep 0 = keep all)."""
    from lm2a.checkpoint import step_checkpoints
    if keep <= 0:
        return []
    old = step_checkpoints(save_dir)[:-keep]
    for _, path in old:
        path.unlink(missing_ok=True)
    return [p for _, p in old]


def state_hash(module) -> str:
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
                 if v.numel() else b"")
    return h.hexdigest()


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


def _ignore_sigint(_worker_id):
    # Ctrl-C reaches the loader workers too; only the main process must handle it
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ---------------------------------------------------------------------------------------------
# setup helpers

def resolve_config(args, ckpt):
    """Model and diffusion config: the checkpoint's on resume (a flag that contradicts it is an
    error), else the flags, else the constants."""
    defaults = {"base_dim": BASE_DIM, "dim_mults": DIM_MULTS, "cond_dim": COND_DIM,
                "time_emb_dim": TIME_EMB_DIM, "num_res_blocks": NUM_RES_BLOCKS,
                "num_mid_blocks": NUM_MID_BLOCKS, "num_heads": NUM_HEADS, "dropout": DROPOUT,
                "timesteps": TIMESTEPS, "beta_schedule": BETA_SCHEDULE, "objective": OBJECTIVE}
    if ckpt is not None:
        saved = {**ckpt["model_config"], **ckpt["diffusion_config"]}
        for name in MODEL_FLAGS + DIFFUSION_FLAGS:
            given = getattr(args, name)
            have = saved.get(name)
            if name == "dim_mults" and have is not None:
                have = tuple(have)
            if given is not None and have is not None and given != have:
                raise SystemExit(f"train.py: {ckpt['_path']} was trained with {name}={have}; "
                                 f"--{name} {given} cannot change it on --resume")
            setattr(args, name, have if have is not None else defaults[name])
        return
    for name in MODEL_FLAGS + DIFFUSION_FLAGS:
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])


def amp_settings(mode, device):
    """-> (autocast dtype or None, use GradScaler)."""
    if mode == "auto":
        mode = "on" if device.type == "cuda" else "off"
    if mode == "off":
        return None, False
    if mode == "on":
        if device.type == "cuda":
            mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            mode = "bf16"
    if mode == "fp16" and device.type != "cuda":
        raise SystemExit("train.py: --amp fp16 needs CUDA; on CPU use --amp bf16 (or --amp)")
    return (torch.bfloat16, False) if mode == "bf16" else (torch.float16, True)


def check_clip_configs(train_ds, val_ds, ckpt):
    """Refuses clips whose mel config / text encoder / lyric dim differ between train, val and the
    checkpoint being resumed."""
    from lm2a.melconfig import compare_mel_configs, mel_config_from_json
    train_cfg = mel_config_from_json(train_ds.mel_config)
    others = []
    if val_ds is not None:
        others.append((f"{val_ds.dir} (val)", mel_config_from_json(val_ds.mel_config),
                       val_ds.text_encoder, val_ds.lyric_dim))
    if ckpt is not None:
        te = ckpt["text_encoder"]
        others.append((f"{ckpt['_path']} (checkpoint)", ckpt["mel_config"], te["name"], te["dim"]))
    for name, cfg, encoder, dim in others:
        diffs = compare_mel_configs(cfg, train_cfg, name, f"{train_ds.dir} (train)")
        if diffs:
            raise SystemExit(f"train.py: mel configs differ: {'; '.join(diffs)}. Clips must come "
                             f"from one preprocess.py setting; re-run stages 1-2 or pick matching dirs.")
        if encoder != train_ds.text_encoder or dim != train_ds.lyric_dim:
            raise SystemExit(f"train.py: text encoder differs: {encoder!r} ({dim}-dim) in {name} vs "
                             f"{train_ds.text_encoder!r} ({train_ds.lyric_dim}-dim) in "
                             f"{train_ds.dir} (train); lyric embeddings of different encoders "
                             f"cannot be mixed.")
    return train_cfg


def prepare_save_dir(save_dir, resume, force, is_main):
    from lm2a.checkpoint import step_checkpoints
    save_dir = Path(save_dir)
    existing = [p for _, p in step_checkpoints(save_dir)] + \
        [save_dir / n for n in ("last.pt", "best.pt") if (save_dir / n).is_file()]
    if resume is None and existing:
        if not force:
            raise SystemExit(f"train.py: {save_dir} already holds checkpoints "
                             f"({', '.join(p.name for p in existing[:4])}); pass --resume to "
                             f"continue that run, --force to start over (deletes them), or "
                             f"choose another --save_dir")
        if is_main:
            for p in existing + [save_dir / "train_log.csv"] + \
                    list(save_dir.glob("events.out.tfevents.*")):
                p.unlink(missing_ok=True)
            print(f"train.py: --force: deleted {len(existing)} checkpoints, the log and "
                  f"TensorBoard events in {save_dir}")
    if is_main:
        save_dir.mkdir(parents=True, exist_ok=True)
    return save_dir


class CsvLog:
    """train_log.csv, appended and flushed row by row; on resume rows after the resume step
    (logged by a run that died after its last checkpoint) are dropped."""

    def __init__(self, path, resume_step=None):
        self.path = Path(path)
        rows = []
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit()
                        and int(r["step"]) <= resume_step]
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, LOG_COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.path)
        self.file = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.file, LOG_COLUMNS, extrasaction="ignore")

    def write(self, row):
        self.writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in LOG_COLUMNS})
        self.file.flush()

    def close(self):
        self.file.close()


def fmt_loss(x):
    return "n/a" if x is None else f"{x:.4f}"


# ---------------------------------------------------------------------------------------------

def train(args, on_step=None):
    """Runs a training. `on_step(step) -> bool` is called after every step; True stops the run as
    a signal would (tests). Returns a dict: exit_code, step, epoch, best_val_loss, paths, seconds."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from dataset import MelDataset, collate_fn
    from lm2a import SCHEMA_VERSION, pick_device
    from lm2a.checkpoint import (CHECKPOINT_KIND, find_checkpoint, load_checkpoint,
                                 save_checkpoint, step_file_name)
    from models.adan import Adan
    from models.diffusion import GaussianDiffusion
    from models.unet1d_ultimate import UNet1D_ultimate

    t_start = time.time()
    # ---- processes and device
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    distributed = world > 1
    device = pick_device(args.device)
    if distributed:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    is_main = rank == 0
    log = print if is_main else (lambda *a, **k: None)

    def barrier():
        if distributed:
            dist.barrier()

    stop = StopFlag().install()
    writer = csv_log = None
    try:
        # ---- checkpoint to resume
        save_dir = Path(args.save_dir)
        ckpt = None
        if args.resume is not None:
            source = save_dir if args.resume == "auto" else Path(args.resume)
            try:
                ckpt = load_checkpoint(find_checkpoint(source), map_location="cpu")
            except FileNotFoundError as e:
                raise SystemExit(f"train.py: --resume: {e}")
            log(f"train.py: resuming from {ckpt['_path']} (step {ckpt['step']})")
        resolve_config(args, ckpt)
        save_dir = prepare_save_dir(save_dir, args.resume, args.force, is_main)
        barrier()

        # ---- data
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
        train_ds = MelDataset(args.npz_dir, in_memory=True, progress=is_main)
        val_ds = MelDataset(args.val_npz_dir, in_memory=True, progress=is_main) \
            if args.val_npz_dir else None
        mel_config = check_clip_configs(train_ds, val_ds, ckpt)
        if ckpt is not None:
            norm_stats = {k: v.float() for k, v in ckpt["norm_stats"].items()}
        else:
            stats = train_ds.stats()  # from the TRAIN split only
            norm_stats = {k: torch.from_numpy(np.asarray(stats[k], dtype=np.float32))
                          for k in ("mel_mean", "mel_std", "motion_mean", "motion_std")}
        num_workers = args.num_workers
        sampler = EpochSampler(len(train_ds), args.batch_size, args.seed, rank, world)
        loader = torch.utils.data.DataLoader(
            train_ds, batch_size=args.batch_size, sampler=sampler, collate_fn=collate_fn,
            num_workers=num_workers, pin_memory=device.type == "cuda",
            worker_init_fn=_ignore_sigint if num_workers > 0 else None)
        batches_per_epoch = sampler.batches_per_epoch
        total_steps = args.max_steps if args.max_steps and args.max_steps > 0 else \
            args.epochs * batches_per_epoch
        val_indices = list(range(rank, len(val_ds), world)) if val_ds is not None else []

        # ---- model, diffusion, EMA, optimizer, schedule, AMP
        if ckpt is not None:
            model = UNet1D_ultimate(**ckpt["model_config"])
        else:
            model = UNet1D_ultimate(
                mel_dim=80, motion_dim=234, lyric_dim=train_ds.lyric_dim, base_dim=args.base_dim,
                dim_mults=tuple(args.dim_mults), cond_dim=args.cond_dim,
                time_emb_dim=args.time_emb_dim, num_res_blocks=args.num_res_blocks,
                num_mid_blocks=args.num_mid_blocks, num_heads=args.num_heads, dropout=args.dropout)
        diffusion_config = dict(timesteps=args.timesteps, beta_schedule=args.beta_schedule,
                                objective=args.objective)
        model.to(device)
        ema = make_ema(model, args.ema_decay, args.ema_warmup)
        optimizer = Adan(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        warmup = min(args.warmup_steps, max(1, total_steps // 10))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, make_lr_lambda(
            args.lr_schedule, warmup, total_steps, args.min_lr_ratio, args.lr_decay_every,
            args.lr_decay_gamma))
        amp_dtype, use_scaler = amp_settings(args.amp, device)
        scaler = torch.amp.GradScaler("cuda") if use_scaler else None

        def amp_ctx():
            return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()

        step, epoch, epoch_batch = 0, 0, 0
        best_val, last_val, train_seconds = None, None, 0.0
        val_step = -1  # step of last_val
        nonfinite_total = 0
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            ema.module.load_state_dict(ckpt["ema"])
            ema.n_averaged.fill_(int(ckpt.get("ema_num_averaged", ckpt["step"])))
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            restore_rng_state(ckpt.get("rng"))
            before = dict(ckpt.get("train_args", {}), world_size=ckpt.get("world_size", 1))
            now = dict(batch_size=args.batch_size, seed=args.seed, world_size=world)
            changed = [f"{k} {before[k]} -> {v}" for k, v in now.items() if k in before and before[k] != v]
            if changed:
                log(f"train.py: note: {', '.join(changed)} since {ckpt['_path']}: training continues, "
                    f"but not exactly as an uninterrupted run would")
            step, epoch = int(ckpt["step"]), int(ckpt["epoch"])
            epoch_batch = int(ckpt.get("epoch_batch", 0))
            if epoch_batch >= batches_per_epoch:  # the training set shrank since
                epoch, epoch_batch = epoch + 1, 0
            best_val, last_val = ckpt.get("best_val_loss"), ckpt.get("val_loss")
            val_step = int(ckpt.get("val_step", -1))
            train_seconds = float(ckpt.get("train_seconds", 0.0))
            nonfinite_total = int(ckpt.get("nonfinite_steps", 0))
            del ckpt  # frees the loaded tensors
        n_params = sum(p.numel() for p in model.parameters())
        mults = ",".join(map(str, args.dim_mults))
        log(f"train.py: UNet1D_ultimate {n_params / 1e6:.2f}M parameters (base_dim {args.base_dim}, "
            f"dim_mults {mults}, cond_dim {args.cond_dim}); {len(train_ds)} train / "
            f"{len(val_ds) if val_ds else 0} val clips; {batches_per_epoch} steps per epoch x "
            f"{world} process(es); {total_steps} steps; device {device}, amp "
            f"{str(amp_dtype).replace('torch.', '') if amp_dtype else 'off'}"
            f"{' + GradScaler' if scaler else ''}")

        diffusion = GaussianDiffusion(model, **diffusion_config, **norm_stats).to(device)
        ema_diffusion = GaussianDiffusion(ema.module, **diffusion_config, **norm_stats).to(device)
        # the network the training loss runs through: DDP and/or compiled views of `model`
        train_net = model
        if distributed:
            train_net = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        lyric_tokens = None  # fixed lyric length for the compiled network
        if args.compile:
            train_net = torch.compile(train_net)
            lyric_tokens = max(train_ds[i]["lyrics"].shape[0] for i in range(len(train_ds)))
        train_diffusion = diffusion if train_net is model else \
            GaussianDiffusion(train_net, **diffusion_config, **norm_stats).to(device)

        # ---- logging
        if is_main:
            csv_log = CsvLog(save_dir / "train_log.csv", resume_step=step if args.resume else None)
            writer = SummaryWriter(log_dir=str(save_dir), purge_step=step + 1 if args.resume else None)

        def elapsed():
            return train_seconds + time.time() - t_start

        def make_checkpoint():
            return {
                "schema_version": SCHEMA_VERSION, "kind": CHECKPOINT_KIND,
                "model_class": "UNet1D_ultimate", "model_config": json_able(model.config),
                "diffusion_config": json_able(diffusion_config),
                "norm_stats": {k: v.detach().cpu().clone() for k, v in norm_stats.items()},
                "mel_config": mel_config,
                "text_encoder": {"name": train_ds.text_encoder, "dim": int(train_ds.lyric_dim)},
                "step": step, "epoch": epoch, "epoch_batch": epoch_batch, "world_size": world,
                "model": to_cpu(model.state_dict()), "ema": to_cpu(ema.module.state_dict()),
                "ema_num_averaged": int(ema.n_averaged),
                "optimizer": to_cpu(optimizer.state_dict()),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": capture_rng_state(), "train_args": json_able(vars(args)),
                "val_loss": last_val, "val_step": val_step, "best_val_loss": best_val,
                "train_seconds": elapsed(),
                "nonfinite_steps": nonfinite_total,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "torch_version": str(torch.__version__),
            }

        saved = []  # paths written by this run

        def save(name):
            barrier()
            path = save_dir / name
            if is_main:
                save_checkpoint(make_checkpoint(), path)
                if path not in saved:
                    saved.append(path)
                if name.startswith("step_"):
                    for p in prune_step_checkpoints(save_dir, args.keep):
                        if p in saved:
                            saved.remove(p)
            barrier()
            return path

        def validate():
            """-> (val_loss, val_loss_uncond) over the whole val set (all ranks take part)."""
            ema_diffusion.eval()
            s = validation_loss(ema_diffusion, val_ds, val_indices, args.batch_size, device, amp_ctx,
                                args.val_timesteps, args.val_seed)
            totals = torch.tensor(s, dtype=torch.float64, device=device)
            if distributed:
                dist.all_reduce(totals)
            c, u, n = totals.tolist()
            return c / max(n, 1), u / max(n, 1)

        def log_row(row):
            if not is_main:
                return
            csv_log.write(row)
            for key, tag in (("train_loss", "train/loss"), ("lr", "train/lr"),
                             ("val_loss", "val/loss"), ("val_loss_uncond", "val/loss_uncond")):
                if row.get(key) is not None and row.get(key) != "":
                    writer.add_scalar(tag, float(row[key]), row["step"])
            writer.flush()

        def validate_into(row):
            """Validates, adds the val columns to `row`, keeps best.pt (from step 1 on)."""
            nonlocal last_val, best_val, val_step
            last_val, val_uncond = validate()
            val_step = step
            row.update(val_loss=f"{last_val:.6f}", val_loss_uncond=f"{val_uncond:.6f}")
            if step > 0 and math.isfinite(last_val) and (best_val is None or last_val < best_val):
                best_val = last_val
                save("best.pt")
            if is_main:
                tqdm.write(f"train.py: step {step} val loss {last_val:.4f} (conditions dropped "
                           f"{val_uncond:.4f}), best {fmt_loss(best_val)}")

        if val_ds is not None and step == 0:
            row = {}
            validate_into(row)
            log_row({"epoch": 0, "step": 0, "lr": f"{optimizer.param_groups[0]['lr']:.6g}",
                     "seconds": f"{elapsed():.1f}", **row})

        # ---- the loop
        bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not is_main or args.no_progress)
        loss_sum, loss_count, nonfinite_run = 0.0, 0, 0
        exit_code, stop_reason = 0, None
        lr_now = optimizer.param_groups[0]["lr"]
        model.train()
        while step < total_steps and stop_reason is None:
            sampler.set_epoch(epoch, epoch_batch)
            for batch in loader:
                torch.manual_seed(derive_seed(args.seed, step, rank))  # t, noise, masks, dropout
                batch = batch_to_device(batch, device)
                if lyric_tokens is not None:
                    batch = pad_lyrics(batch, lyric_tokens)
                B, _, frames = batch["mel"].shape
                t = torch.randint(0, args.timesteps, (B,), device=device)
                noise = torch.randn(B, 80, frames, device=device)
                drop_motion, drop_lyrics = condition_dropout_masks(
                    B, args.p_drop_motion, args.p_drop_lyrics, args.p_drop_both, device)
                lr_now = optimizer.param_groups[0]["lr"]
                with amp_ctx():
                    loss = compute_loss(train_diffusion, batch, t, noise, drop_motion, drop_lyrics)
                # one collective per step: mean loss (non-finite anywhere -> all skip) + stop flag
                flags = torch.stack([loss.detach().float().reshape(()),
                                     torch.tensor(float(bool(stop)), device=device)])
                if distributed:
                    dist.all_reduce(flags)
                loss_mean, stop_any = flags.tolist()
                loss_mean /= world
                finite = math.isfinite(loss_mean)
                if finite:
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
                        scaler.step(optimizer)  # skips the step itself on inf grads (fp16 range)
                        scaler.update()
                    else:
                        loss.backward()
                        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
                        finite = bool(torch.isfinite(grad_norm))
                        if finite:
                            optimizer.step()
                if finite:
                    ema.update_parameters(model)
                    nonfinite_run = 0
                    loss_sum += loss_mean
                    loss_count += 1
                else:
                    nonfinite_run += 1
                    nonfinite_total += 1
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                epoch_batch += 1
                if epoch_batch >= batches_per_epoch:
                    epoch, epoch_batch = epoch + 1, 0

                row = {}
                if is_main:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_mean:.4f}", lr=f"{lr_now:.2e}", refresh=False)
                final = step >= total_steps
                if (step % args.log_every == 0 or final) and loss_count:
                    row.update(train_loss=f"{loss_sum / loss_count:.6f}")
                    loss_sum, loss_count = 0.0, 0
                if val_ds is not None and (final or args.val_every > 0 and step % args.val_every == 0):
                    validate_into(row)
                if row:
                    log_row({"epoch": epoch, "step": step, "lr": f"{lr_now:.6g}",
                             "seconds": f"{elapsed():.1f}", **row})
                if nonfinite_run >= args.max_nonfinite:
                    stop_reason = "nonfinite"
                    break
                if args.save_every > 0 and step % args.save_every == 0:
                    save(step_file_name(step))
                if on_step is not None and on_step(step) and not stop:
                    stop.signal_name = "on_step"
                if stop_any or (not distributed and stop):
                    stop_reason = "signal"
                    break
                if final:
                    break
        bar.close()

        # ---- the end
        if stop_reason == "nonfinite":
            last_good = [p for p in saved if p.name != "best.pt"]
            good = last_good[-1] if last_good else None
            if good is None:
                try:
                    good = find_checkpoint(save_dir)
                except FileNotFoundError:
                    good = "none written yet"
            log(f"train.py: {nonfinite_run} non-finite losses in a row, the last at step {step}; "
                f"stopping. Last good checkpoint: {good}. Try a lower --lr, --amp off, or "
                f"check the data.")
            exit_code = EXIT_NONFINITE
        elif stop_reason == "signal":
            path = save("last.pt")
            log(f"train.py: interrupted ({stop.signal_name or 'signal on another rank'}) at step "
                f"{step}; saved {path}; continue with --resume")
            exit_code = EXIT_INTERRUPTED
        else:
            if val_ds is not None and val_step != step:
                row = {}
                validate_into(row)
                log_row({"epoch": epoch, "step": step, "lr": f"{lr_now:.6g}",
                         "seconds": f"{elapsed():.1f}", **row})
            save("last.pt")
        if os.environ.get("LM2A_DEBUG_RANK_HASH"):  # DDP test: weights must agree across ranks
            (save_dir / f"weights_rank{rank}.sha256").write_text(
                f"{state_hash(model)} {state_hash(ema.module)}\n")
        seconds = time.time() - t_start
        result = {"exit_code": exit_code, "step": step, "epoch": epoch,
                  "epochs": step / batches_per_epoch, "best_val_loss": best_val,
                  "val_loss": last_val, "nonfinite_steps": nonfinite_total,
                  "paths": [str(p) for p in saved], "seconds": seconds, "save_dir": str(save_dir)}
        log(f"train.py: {step} steps ({step / batches_per_epoch:.2f} epochs), best val loss "
            f"{fmt_loss(best_val)}, last val loss {fmt_loss(last_val)}, {nonfinite_total} non-finite "
            f"steps skipped; wrote {', '.join(str(p) for p in saved) or 'nothing'}; {seconds:.1f} s")
        return result
    finally:
        stop.uninstall()
        if writer is not None:
            writer.close()
        if csv_log is not None:
            csv_log.close()
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


def main(argv=None):
    from lm2a.checkpoint import CheckpointError
    from lm2a.clipio import ClipFileError
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise SystemExit("train.py: --batch_size must be >= 1")
    try:
        return train(args)["exit_code"]
    except (ClipFileError, CheckpointError, FileNotFoundError) as e:  # bad input: no traceback
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
