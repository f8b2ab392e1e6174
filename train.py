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

--stop_after N takes at most N steps in this invocation, saves last.pt and exits 0 (a job with a
time slice continues with --resume; the LR schedule spans the whole run either way). --resume takes
the model, diffusion and optimisation settings from the checkpoint: flags need not be repeated; a
model or diffusion flag that contradicts it is an error, an optimisation flag that changes it is
applied and named in a note.

The pieces (TrainConfig, build_parts, train_step, validation_loss, the checkpoint layout) live in
lm2a/training.py and lm2a/checkpoint.py; this file is the command line and the loop.

Exit codes: 0 done; 130 interrupted by Ctrl-C / SIGTERM (last.pt saved: --resume continues);
3 too many non-finite losses in a row; 2 unreadable input (clip or checkpoint files).
"""
import argparse
import math
import random
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from lm2a.config import add_config_flags, config_from_args, constants_for, flag_fields
from lm2a.monitor import SAMPLE_FIGURES
from lm2a.training import LOG_COLUMNS, TrainConfig
from models.diffusion import DiffusionConfig
from models.motion_features import motion_feature_dim
from models.unet1d_ultimate import UNetConfig

# ---- data and output
NPZ_DIR = "split/train"        # training clips (stage 2 output)
VAL_NPZ_DIR = "split/val"      # validation clips; "" = no validation
SAVE_DIR = "checkpoints"       # checkpoints, train_log.csv and TensorBoard events
# ---- length of the run
EPOCHS = 100                   # passes over the training set (used when MAX_STEPS is 0)
MAX_STEPS = 0                  # optimizer steps; > 0 overrides EPOCHS
BATCH_SIZE = 16                # clips per step and per process
# ---- model (UNet1D_ultimate; models/unet1d_ultimate.py UNetConfig)
BASE_DIM = 256                 # channels at the first UNet level
DIM_MULTS = (1, 2, 4)          # channel multiplier per UNet level
COND_DIM = 128                 # width of the motion / lyric condition embeddings
TIME_EMB_DIM = 256             # width of the diffusion-timestep embedding
NUM_RES_BLOCKS = 2             # residual blocks per UNet level
NUM_MID_BLOCKS = 3             # blocks in the middle of the UNet
NUM_HEADS = 8                  # attention heads
DROPOUT = 0.1                  # dropout inside the UNet
# ---- diffusion (models/diffusion.py DiffusionConfig)
TIMESTEPS = 1000               # diffusion steps T
BETA_SCHEDULE = "linear"       # "linear" or "cosine"
OBJECTIVE = "v"                # network predicts "eps" (noise) or "v" (RESULTS.md, issue 9)
MOTION_FEATURES = "beat"       # "raw" 234 features, "rhythm" or "beat" channels (models/motion_features.py)
# ---- optimisation (lm2a/training.py TrainConfig)
LR = 5e-4                      # peak learning rate (Adan)
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
AUG_MIRROR = 0.5               # share of training clips with the dancer mirrored left-right (beat channels are mirror-invariant: matters for rhythm/raw)
AUG_LYRIC_SWAP = 0.8           # share of training clips given another clip's lyric line
AUG_GAIN = 0.3                 # std of a random log-mel level offset per training clip (ln units)
AUG_EQ = 0.4                   # per-band std of a random smooth spectral curve per training clip (ln units)
AMP = "auto"                   # auto: CUDA bf16 (fp16+GradScaler if no bf16), CPU off; on, off, bf16, fp16
SEED = 0                       # seeds model init, data order and per-step noise
# ---- bookkeeping
MAX_NONFINITE = 20             # stop after this many non-finite losses in a row
VAL_EVERY = 500                # validate (EMA weights) every this many steps
VAL_TIMESTEPS = 8              # fixed timesteps per val item, stratified over [0, T)
VAL_SEED = 1234                # seed of the fixed val timesteps and noises
SAVE_EVERY = 1000              # write step_XXXXXXXX.pt every this many steps
KEEP = 3                       # keep only the newest KEEP step checkpoints (0 = keep all)
LOG_EVERY = 10                 # train_log.csv / TensorBoard row every this many steps
SAMPLE_EVERY = None            # sample fixed val clips every this many steps (None: with validation, 0: off)
SAMPLE_CLIPS = 4               # validation clips sampled (and again with the conditions dropped)
SAMPLE_STEPS = 20              # sampler steps of those samples (the sampler and guidance: SamplingConfig's)
SAMPLE_GL_ITERS = 32           # Griffin-Lim iterations of the samples' audio (without --vocoder)
VOCODER = ""                   # a BigVGAN folder for the samples' audio ("" = Griffin-Lim)
DEVICE = "auto"                # auto, cpu, cuda, cuda:1
NUM_WORKERS = 0                # data loader workers (clips are preloaded in memory: 0 is enough)
COMPILE = False                # torch.compile the UNet for training

EXIT_INTERRUPTED = 130
EXIT_NONFINITE = 3
TB_TAGS = {"train_loss": "train/loss", "lr": "train/lr", "val_loss": "val/loss",
           "val_loss_uncond": "val/loss_uncond", "val_loss_motion_only": "val/loss_motion_only",
           "val_loss_lyrics_only": "val/loss_lyrics_only", "cond_gap": "val/conditioning_gap",
           **{k: "samples/" + k[len("sample_"):] for k in SAMPLE_FIGURES}}
# validation losses: (drop_motion, drop_lyrics) of each column
VAL_DROPS = {"val_loss": (False, False), "val_loss_uncond": (True, True),
             "val_loss_motion_only": (False, True), "val_loss_lyrics_only": (True, False)}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--npz_dir", default=NPZ_DIR)
    p.add_argument("--val_npz_dir", default=VAL_NPZ_DIR, help='"" = no validation')
    p.add_argument("--save_dir", default=SAVE_DIR)
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, default=EPOCHS)
    length.add_argument("--max_steps", type=int, default=MAX_STEPS, help="> 0 overrides --epochs")
    p.add_argument("--stop_after", type=int, default=0,
                   help="take at most this many steps now, save last.pt, exit 0 (0 = run to the end)")
    # model, diffusion and optimisation flags stay None unless given, so --resume can tell what was
    # asked for; None means the constant above (or, on resume, the checkpoint's value)
    add_config_flags(p, UNetConfig, constants_for(UNetConfig, globals()), unset=True, title="model")
    add_config_flags(p, DiffusionConfig, constants_for(DiffusionConfig, globals()), unset=True,
                     title="diffusion")
    add_config_flags(p, TrainConfig, constants_for(TrainConfig, globals()), unset=True, title="optimisation")
    p.add_argument("--max_nonfinite", type=int, default=MAX_NONFINITE)
    p.add_argument("--val_every", type=int, default=VAL_EVERY)
    p.add_argument("--val_timesteps", type=int, default=VAL_TIMESTEPS)
    p.add_argument("--val_seed", type=int, default=VAL_SEED)
    p.add_argument("--save_every", type=int, default=SAVE_EVERY)
    p.add_argument("--keep", type=int, default=KEEP, help="0 = keep all step checkpoints")
    p.add_argument("--log_every", type=int, default=LOG_EVERY)
    p.add_argument("--sample_every", type=int, default=SAMPLE_EVERY,
                   help="sample fixed val clips every this many steps (default: with validation; 0 = off)")
    p.add_argument("--sample_clips", type=int, default=SAMPLE_CLIPS)
    p.add_argument("--sample_steps", type=int, default=SAMPLE_STEPS)
    p.add_argument("--sample_gl_iters", type=int, default=SAMPLE_GL_ITERS)
    p.add_argument("--vocoder", default=VOCODER, help='BigVGAN folder for the samples\' audio ("" = Griffin-Lim)')
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="no value: newest checkpoint in --save_dir; or a checkpoint file/folder")
    p.add_argument("--force", action="store_true",
                   help="start fresh although --save_dir holds checkpoints (deletes them)")
    p.add_argument("--device", default=DEVICE)
    p.add_argument("--num_workers", type=int, default=NUM_WORKERS)
    p.add_argument("--compile", action="store_true", default=COMPILE)
    p.add_argument("--no_progress", action="store_true", help="no tqdm bar (logs, CI)")
    return p


# ---------------------------------------------------------------------------------------------
# setup

def resolve_configs(args, ckpt, lyric_dim):
    """(UNetConfig, DiffusionConfig): the checkpoint's on resume (a flag that contradicts it is an
    error), else the flags over the constants above."""
    from lm2a.checkpoint import diffusion_config, model_config
    if ckpt is None:
        model_base = UNetConfig(lyric_dim=lyric_dim, **constants_for(UNetConfig, globals()))
        diffusion_base = DiffusionConfig(**constants_for(DiffusionConfig, globals()))
    else:
        model_base, diffusion_base = model_config(ckpt), diffusion_config(ckpt)
        for base in (model_base, diffusion_base):
            for name, have in vars(base).items():
                given = getattr(args, name, None)
                if given is not None and given != have:
                    raise SystemExit(f"train.py: {ckpt['_path']} was trained with {name}={have}; "
                                     f"--{name} {given} cannot change it on --resume")
    diffusion_cfg = config_from_args(DiffusionConfig, args, diffusion_base)
    model_cfg = config_from_args(UNetConfig, args, model_base)
    if ckpt is None:  # the network's motion input follows the chosen motion features
        model_cfg = replace(model_cfg, motion_dim=motion_feature_dim(diffusion_cfg.motion_features))
    return model_cfg, diffusion_cfg


def resolve_train_config(args, ckpt):
    """-> (TrainConfig, changed): the flags over the constants above; on resume the flags over the
    checkpoint's own settings, so a resumed run goes on as it was started (augmentation, learning
    rate, dropout rates ...) unless a flag says otherwise. changed: "name old -> new" for each
    setting a flag changed against the checkpoint."""
    base = TrainConfig(**constants_for(TrainConfig, globals()))
    if ckpt is None:
        return config_from_args(TrainConfig, args, base), []
    saved = ckpt.get("train_args") or {}
    names = [f.name for f in flag_fields(TrainConfig)]
    base = replace(base, **{k: saved[k] for k in names if saved.get(k) is not None})
    cfg = config_from_args(TrainConfig, args, base)
    changed = [f"{k} {getattr(base, k)} -> {getattr(cfg, k)}" for k in names if getattr(base, k) != getattr(cfg, k)]
    return cfg, changed


def check_clip_configs(train_ds, val_ds, ckpt):
    """Refuses clips whose mel config / text encoder / lyric dim differ between train, val and the
    checkpoint being resumed. -> the training clips' mel config (dict)."""
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


def setup_processes(device_name):
    """(rank, world, device) under torchrun (process group initialised) or for one process."""
    from lm2a import pick_device
    from lm2a.training import world_from_env
    rank, local_rank, world = world_from_env()
    device = pick_device(device_name)
    if world > 1:
        import torch.distributed as dist
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


class Run:
    """What the loop needs besides the parts: where it writes, the validation set, the logs."""

    def __init__(self, args, parts, state, save_dir, val_ds, meta, is_main):
        from torch.utils.tensorboard import SummaryWriter

        from lm2a.training import CsvLog
        self.args, self.parts, self.state, self.save_dir = args, parts, state, save_dir
        self.val_ds, self.meta, self.is_main = val_ds, meta, is_main
        self.val_indices = list(range(parts.rank, len(val_ds), parts.world)) if val_ds else []
        self.saved = []  # paths written by this run
        self.history = []  # the validation rows so far (floats), for the warnings
        self.monitor = make_monitor(args, parts, val_ds, meta, save_dir) if is_main else None
        self.t_start, self.seconds_before = time.time(), state.train_seconds
        resumed = args.resume is not None
        self.csv = CsvLog(save_dir / "train_log.csv", state.step if resumed else None,
                          LOG_COLUMNS + tuple(VAL_DROPS)[2:] + ("cond_gap",) + SAMPLE_FIGURES) if is_main else None
        self.tb = SummaryWriter(log_dir=str(save_dir), purge_step=state.step + 1 if resumed else None) \
            if is_main else None

    def barrier(self):
        if self.parts.world > 1:
            torch.distributed.barrier()

    def seconds(self):
        return self.seconds_before + time.time() - self.t_start

    def save(self, name):
        from lm2a.checkpoint import save_checkpoint, training_checkpoint
        from lm2a.training import prune_step_checkpoints
        self.barrier()
        path = self.save_dir / name
        if self.is_main:
            self.state.train_seconds = self.seconds()
            save_checkpoint(training_checkpoint(self.parts, self.state, **self.meta), path)
            if path not in self.saved:
                self.saved.append(path)
            if name.startswith("step_"):
                for p in prune_step_checkpoints(self.save_dir, self.args.keep):
                    if p in self.saved:
                        self.saved.remove(p)
        self.barrier()
        return path

    def validate(self):
        """Validates the EMA model (all ranks) with the conditions, without, and with one of them;
        keeps best.pt -> the val columns of a log row."""
        from lm2a.training import validation_loss
        parts, state, args = self.parts, self.state, self.args
        parts.ema_diffusion.eval()
        sums, n = validation_loss(parts.ema_diffusion, self.val_ds, self.val_indices, parts.config.batch_size,
                                  parts.device, parts.autocast, args.val_timesteps, args.val_seed, VAL_DROPS)
        totals = torch.tensor([sums[k] for k in VAL_DROPS] + [n], dtype=torch.float64, device=parts.device)
        if parts.world > 1:
            torch.distributed.all_reduce(totals)
        losses = dict(zip(VAL_DROPS, (totals[:-1] / max(float(totals[-1]), 1.0)).tolist()))
        state.last_val, state.val_step = losses["val_loss"], state.step
        if state.step > 0 and math.isfinite(state.last_val) and \
                (state.best_val is None or state.last_val < state.best_val):
            state.best_val = state.last_val
            self.save("best.pt")
        losses["cond_gap"] = losses["val_loss_uncond"] - losses["val_loss"]
        if self.is_main:
            from tqdm import tqdm
            tqdm.write(f"train.py: step {state.step} val loss {state.last_val:.4f} (conditions dropped "
                       f"{losses['val_loss_uncond']:.4f}, gap {losses['cond_gap']:+.4f}; motion only "
                       f"{losses['val_loss_motion_only']:.4f}, lyrics only {losses['val_loss_lyrics_only']:.4f}),"
                       f" best {fmt_loss(state.best_val)}")
        return losses

    def sample(self):
        """The training-time samples (rank 0): figures for the log, PNGs/wavs, TensorBoard."""
        if self.monitor is None:
            return {}
        step = self.state.step
        figures, tb = self.monitor.run(self.parts.ema_diffusion, step)
        for name, image in tb["images"].items():
            self.tb.add_image(f"samples/{name}", image, step, dataformats="HWC")
        for name, wav in tb["audio"].items():
            self.tb.add_audio(f"samples/{name}", wav, step, sample_rate=tb["sr"])
        return figures

    def evaluate(self, with_samples):
        """Validation (+ samples) -> the log row's columns; warns in words when they say so."""
        from lm2a.monitor import warnings
        row = self.validate()
        if with_samples:
            row.update(self.sample())
        if self.is_main:
            from tqdm import tqdm
            self.history.append(row)
            for text in warnings(self.history):
                tqdm.write(f"train.py: warning: {text}")
        return {k: f"{v:.6f}" for k, v in row.items()}

    def log(self, row, lr):
        if not self.is_main:
            return
        row = {"epoch": self.state.epoch, "step": self.state.step, "lr": f"{lr:.6g}",
               "seconds": f"{self.seconds():.1f}", **row}
        self.csv.write(row)
        for key, tag in TB_TAGS.items():
            if row.get(key) not in (None, ""):
                self.tb.add_scalar(tag, float(row[key]), row["step"])
        self.tb.flush()

    def close(self):
        for f in (self.csv, self.tb):
            if f is not None:
                f.close()


def sample_due(args, step):
    every = args.val_every if args.sample_every is None else args.sample_every
    return every > 0 and step % every == 0


def make_monitor(args, parts, val_ds, meta, save_dir):
    """The training-time sampler of --sample_clips validation clips (None without validation)."""
    from dataclasses import replace

    from lm2a.generate import load_clips
    from lm2a.monitor import SampleMonitor
    from lm2a.vocoder import load_bigvgan
    from models.diffusion import SamplingConfig
    if val_ds is None or args.sample_clips <= 0 or args.sample_every == 0:
        return None
    picks = np.unique(np.linspace(0, len(val_ds.files) - 1, min(args.sample_clips, len(val_ds.files))).round())
    items, _ = load_clips([val_ds.files[int(i)] for i in picks])
    settings = replace(SamplingConfig(), steps=min(args.sample_steps, parts.diffusion.timesteps),
                       batch_size=len(items))
    info = dict(meta, _path=str(save_dir), step=0, use_ema=True)
    vocoder = load_bigvgan(args.vocoder, device=str(parts.device)) if args.vocoder else None
    return SampleMonitor(items, settings, save_dir / "samples", info, vocoder, args.sample_gl_iters)


def fmt_loss(x):
    return "n/a" if x is None else f"{x:.4f}"


def ranks_agree(parts):
    """Under DDP: do the weights (model and EMA) agree on every rank? (None for one process)."""
    if parts.world == 1:
        return None
    from lm2a.training import weights_checksum
    dist = torch.distributed
    mine = torch.cat([weights_checksum(parts.model), weights_checksum(parts.ema.module)]).to(parts.device)
    low, high = mine.clone(), mine.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)  # (all_reduce, not all_gather: a gloo all_gather's
    dist.all_reduce(high, op=dist.ReduceOp.MAX)  # work object can deadlock the group's teardown)
    return torch.equal(low, high)


# ---------------------------------------------------------------------------------------------

def setup(args, rank, world, device, log):
    """Everything before the first step: the checkpoint to resume, the data (train statistics), the
    configs, the run's parts and counters. -> (run, loader, sampler, total_steps)."""
    from dataset import MelDataset, collate_fn
    from lm2a.checkpoint import find_checkpoint, load_checkpoint, restore_training
    from lm2a.training import EpochSampler, RunState, build_parts, ignore_sigint

    is_main = rank == 0
    ckpt = None
    if args.resume is not None:
        source = Path(args.save_dir) if args.resume == "auto" else Path(args.resume)
        try:
            ckpt = load_checkpoint(find_checkpoint(source), map_location="cpu")
        except FileNotFoundError as e:
            raise SystemExit(f"train.py: --resume: {e}")
        log(f"train.py: resuming from {ckpt['_path']} (step {ckpt['step']})")
    save_dir = prepare_save_dir(args.save_dir, args.resume, args.force, is_main)
    if world > 1:
        torch.distributed.barrier()
    train_cfg, changed = resolve_train_config(args, ckpt)
    random.seed(train_cfg.seed)
    np.random.seed(train_cfg.seed)
    bars = is_main and not args.no_progress
    train_ds = MelDataset(args.npz_dir, in_memory=True, progress=bars)
    val_ds = MelDataset(args.val_npz_dir, in_memory=True, progress=bars) if args.val_npz_dir else None
    mel_config = check_clip_configs(train_ds, val_ds, ckpt)
    model_cfg, diffusion_cfg = resolve_configs(args, ckpt, train_ds.lyric_dim)
    norm_stats = {k: v.float() for k, v in ckpt["norm_stats"].items()} if ckpt else \
        {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in train_ds.stats().items()
         if k != "frames"}  # statistics of the TRAIN split only
    sampler = EpochSampler(len(train_ds), train_cfg.batch_size, train_cfg.seed, rank, world)
    loader = torch.utils.data.DataLoader(
        train_ds, batch_size=train_cfg.batch_size, sampler=sampler, collate_fn=collate_fn,
        num_workers=args.num_workers, pin_memory=device.type == "cuda",
        worker_init_fn=ignore_sigint if args.num_workers > 0 else None)
    total_steps = args.max_steps if args.max_steps > 0 else args.epochs * sampler.batches_per_epoch

    def wrap(model):  # the network the loss runs through; the EMA and checkpoints see `model`
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                      else None) if world > 1 else model
        return torch.compile(net) if args.compile else net
    lyric_tokens = max(train_ds[i]["lyrics"].shape[0] for i in range(len(train_ds))) if args.compile else None
    parts = build_parts(model_cfg, diffusion_cfg, train_cfg, norm_stats, device, total_steps,
                        wrap if world > 1 or args.compile else None, lyric_tokens, rank, world)
    state = RunState()
    if ckpt is not None:
        state = restore_training(ckpt, parts)
        if ckpt.get("world_size", 1) != world:
            changed.append(f"world_size {ckpt.get('world_size', 1)} -> {world}")
        if changed:
            log(f"train.py: note: {', '.join(changed)} since {ckpt['_path']}: training continues, "
                f"but not exactly as an uninterrupted run would")
        if state.epoch_batch >= sampler.batches_per_epoch:  # the training set shrank since
            state.epoch, state.epoch_batch = state.epoch + 1, 0
    meta = dict(mel_config=mel_config, text_encoder={"name": train_ds.text_encoder, "dim": train_ds.lyric_dim},
                train_args=dict(vars(args), **asdict(train_cfg)))  # the settings in force, flags or not
    amp = str(parts.amp_dtype).replace("torch.", "") if parts.amp_dtype else "off"
    log(f"train.py: UNet1D_ultimate {sum(p.numel() for p in parts.model.parameters()) / 1e6:.2f}M "
        f"parameters (base_dim {model_cfg.base_dim}, dim_mults {','.join(map(str, model_cfg.dim_mults))}, "
        f"cond_dim {model_cfg.cond_dim}; {diffusion_cfg.objective} objective, {diffusion_cfg.motion_features} "
        f"motion features); {len(train_ds)} train / {len(val_ds) if val_ds else 0} val "
        f"clips; {sampler.batches_per_epoch} steps per epoch x {world} process(es); {total_steps} steps; "
        f"device {device}, amp {amp}{' + GradScaler' if parts.scaler else ''}")
    return Run(args, parts, state, save_dir, val_ds, meta, is_main), loader, sampler, total_steps


def finish(run, stop_reason, stop, total_steps, lr, log):
    """After the loop: the last checkpoint and validation, the messages -> exit code."""
    from lm2a.checkpoint import find_checkpoint
    state, args = run.state, run.args
    if stop_reason == "nonfinite":
        good = next((p for p in reversed(run.saved) if p.name != "best.pt"), None)
        if good is None:
            try:
                good = find_checkpoint(run.save_dir)
            except FileNotFoundError:
                good = "none written yet"
        log(f"train.py: {state.nonfinite_run} non-finite losses in a row, the last at step {state.step}; "
            f"stopping. Last good checkpoint: {good}. Try a lower --lr, --amp off, or check the data.")
        return EXIT_NONFINITE
    if stop_reason == "signal":
        path = run.save("last.pt")
        log(f"train.py: interrupted ({stop.signal_name or 'signal on another rank'}) at step "
            f"{state.step}; saved {path}; continue with --resume")
        return EXIT_INTERRUPTED
    if run.val_ds is not None and state.val_step != state.step and state.step >= total_steps:
        run.log(run.evaluate(with_samples=True), lr)
    path = run.save("last.pt")
    if state.step < total_steps:
        log(f"train.py: stopped after --stop_after {args.stop_after} steps at step {state.step} "
            f"of {total_steps}; saved {path}; continue with --resume")
    return 0


def train(args):
    """Runs a training. Returns a dict: exit_code, step, epoch, best_val_loss, paths, seconds."""
    from tqdm import tqdm

    from lm2a.checkpoint import step_file_name
    from lm2a.training import StopFlag, train_step

    t_start = time.time()
    rank, world, device = setup_processes(args.device)
    log = print if rank == 0 else (lambda *a, **k: None)
    stop = StopFlag().install()
    run = None
    try:
        run, loader, sampler, total_steps = setup(args, rank, world, device, log)
        parts, state, per_epoch = run.parts, run.state, sampler.batches_per_epoch
        lr = parts.optimizer.param_groups[0]["lr"]
        if run.val_ds is not None and state.step == 0:
            run.log(run.evaluate(with_samples=False), lr)
        last_step = min(total_steps, state.step + args.stop_after) if args.stop_after > 0 else total_steps
        bar = tqdm(total=total_steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=rank != 0 or args.no_progress)
        loss_sum, loss_count, stop_reason = 0.0, 0, None
        parts.model.train()
        while stop_reason is None and state.step < last_step:
            sampler.set_epoch(state.epoch, state.epoch_batch)
            for batch in loader:
                result = train_step(parts, batch, state.step, stop=bool(stop))
                state.advance(per_epoch)
                lr = result.lr
                if result.finite:
                    loss_sum, loss_count, state.nonfinite_run = loss_sum + result.loss, loss_count + 1, 0
                else:
                    state.nonfinite_run += 1
                    state.nonfinite_total += 1
                bar.update(1)
                bar.set_postfix(loss=f"{result.loss:.4f}", lr=f"{lr:.2e}", refresh=False)

                row, final = {}, state.step >= total_steps
                if (state.step % args.log_every == 0 or final) and loss_count:
                    row["train_loss"] = f"{loss_sum / loss_count:.6f}"
                    loss_sum, loss_count = 0.0, 0
                if run.val_ds is not None and (final or args.val_every > 0 and state.step % args.val_every == 0):
                    row.update(run.evaluate(with_samples=final or sample_due(args, state.step)))
                if row:
                    run.log(row, lr)
                if state.nonfinite_run >= args.max_nonfinite:
                    stop_reason = "nonfinite"
                elif args.save_every > 0 and state.step % args.save_every == 0:
                    run.save(step_file_name(state.step))
                if result.stop or (world == 1 and stop):
                    stop_reason = stop_reason or "signal"
                if stop_reason or state.step >= last_step:
                    break
        bar.close()
        # before finish(): its checkpoint barriers are then the last collectives, whose work objects
        # hold no Python tensors (a gloo group torn down while a worker thread still frees one can
        # deadlock on the GIL)
        agree = ranks_agree(parts)
        exit_code = finish(run, stop_reason, stop, total_steps, lr, log)
        if agree is not None:
            log(f"train.py: weights {'agree' if agree else 'DIFFER'} on all {world} ranks "
                f"(checksums of model and EMA)")
        seconds = time.time() - t_start
        log(f"train.py: {state.step} steps ({state.step / per_epoch:.2f} epochs), best val loss "
            f"{fmt_loss(state.best_val)}, last val loss {fmt_loss(state.last_val)}, {state.nonfinite_total} "
            f"non-finite steps skipped; wrote {', '.join(str(p) for p in run.saved) or 'nothing'}; "
            f"{seconds:.1f} s")
        return {"exit_code": exit_code, "step": state.step, "epoch": state.epoch,
                "epochs": state.step / per_epoch, "best_val_loss": state.best_val, "val_loss": state.last_val,
                "nonfinite_steps": state.nonfinite_total, "paths": [str(p) for p in run.saved],
                "seconds": seconds, "save_dir": str(run.save_dir), "ranks_agree": agree}
    finally:
        stop.uninstall()
        if run is not None:
            run.close()
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def main(argv=None):
    from lm2a.checkpoint import CheckpointError
    from lm2a.clipio import ClipFileError
    try:
        args = build_parser().parse_args(argv)
        return train(args)["exit_code"]
    except (ClipFileError, CheckpointError, FileNotFoundError, ValueError) as e:  # bad input: no traceback
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
