"""Stage 3: train the motion+lyrics -> mel diffusion model (UNet1D_ultimate in GaussianDiffusion).

    python train.py --npz_dir split/train --val_npz_dir split/val --save_dir checkpoints
    python train.py ... --resume                  # continue from the newest checkpoint in save_dir
    python train.py --npz_dir justlmd/train aist/train ...   # several clip folders trained on together
    python train.py ... --init_from runs/pre      # a new run starting from another run's weights
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
every setting from the checkpoint (model, diffusion, optimisation and the run's own: data folders,
length, validation, saving, samples): flags need not be repeated; a model or diffusion flag that
contradicts it is an error, any other flag that changes a setting is applied and named in a note.

Several --npz_dir folders (and --val_npz_dir folders) are one set: their clips must share the mel
config and text encoder, the normalisation statistics are those of all training folders, and clips of
different lengths (e.g. 2 s and 6 s clips) are trained on in batches of one length each
(lm2a.training.EpochBatchSampler); the validation clips must share one length (the training-time
samples compare them as one stack). Clips without lyrics (zero lyric tokens) get the learned null lyric.

--init_from CKPT (a checkpoint file, or a run folder: its newest) starts a NEW run (step 0, a new
optimizer and LR schedule, the settings of the flags) from that checkpoint's model and EMA weights,
with its model and diffusion configuration (a flag that contradicts them is an error) and its
normalisation statistics: the network's inputs then mean what they meant when it learned its weights,
rather than being rescaled by the new data's statistics. The new run's checkpoints record it in
train_args["init_from"] ({path, step}); --resume of such a run keeps the record.

The constants below are the defaults of the configuration dataclasses (UNetConfig, DiffusionConfig,
TrainConfig, RunConfig; tests/test_settings.py checks that they agree). The pieces (build_parts,
train_step, validation_loss, the checkpoint layout) live in lm2a/training.py, the run's bookkeeping
in lm2a/run.py; this file is the command line and the loop.

--resume (and --init_from) with a folder use its newest checkpoint that can be read: a truncated newer
one (a crash during a copy) is skipped with a line naming it. Before the first step the run warns when
--save_dir has less free space than 3 checkpoints need (lm2a.run.ROOM_FOR_CHECKPOINTS).

Exit codes: 0 done; 130 interrupted by Ctrl-C / SIGTERM (last.pt saved: --resume continues);
3 too many non-finite losses in a row; 2 unreadable input (clip or checkpoint files);
4 disk (or quota) full at a checkpoint save: the line names the file, the space it needed and the space
free; the previous checkpoints are intact and no temp file is left: free space (or move the run folder)
and --resume continues from the newest intact checkpoint.
5 under DDP a rank did not answer within the collective timeout (lm2a.run.COLLECTIVE_TIMEOUT_S, env
LM2A_COLLECTIVE_TIMEOUT_S): the line names it; the checkpoints stay as last written, --resume continues.
75 --save_dir is in use by another run (its lock .lm2a.lock, lm2a/lock.py; rank 0 holds it): the line
names that run; wait, or if it is gone remove the lock or pass --break_lock (not --force).
"""
import argparse
import os
import random
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dataset import MelDataset
from lm2a.checkpoint import CheckpointError, find_checkpoint, load_checkpoint, step_file_name
from lm2a.clipio import ClipFileError, DiskFullError
from lm2a.config import add_config_flags, config_from_args, constants_for, flag_fields
from lm2a.data import collate_fn, fixed_lyric_collate
from lm2a.lock import EXIT_FOLDER_IN_USE, FolderInUse, FolderLock, add_break_lock_flag
from lm2a.run import (RanksLost, Run, check_clip_configs, lost_ranks, prepare_save_dir, ranks_agree,
                      room_warning, setup_processes)
from lm2a.trained import trained_model
from lm2a.training import (EpochBatchSampler, RunConfig, RunState, StopFlag, TrainConfig, build_parts,
                           checkpoint_bytes, ignore_sigint, restore_training, run_origins, saved_settings,
                           start_from_weights, train_step, world_from_env)
from models.diffusion import DiffusionConfig
from models.motion_features import motion_feature_dim
from models.unet1d_ultimate import UNetConfig

# ---- data and output (RunConfig)
NPZ_DIR = ("split/train",)     # training clip folders (stage 2 output): one or several
VAL_NPZ_DIR = ("split/val",)   # validation clip folders; "" = no validation
SAVE_DIR = "checkpoints"       # checkpoints, train_log.csv and TensorBoard events
# ---- length of the run (RunConfig)
EPOCHS = 100                   # passes over the training set (used when MAX_STEPS is 0)
MAX_STEPS = 0                  # optimizer steps; > 0 overrides EPOCHS
# ---- model (UNet1D_ultimate; models/unet1d_ultimate.py UNetConfig)
BASE_DIM = 256                 # channels at the first UNet level
DIM_MULTS = (1, 2, 4)          # channel multiplier per UNet level
COND_DIM = 128                 # width of the motion / lyric condition embeddings
TIME_EMB_DIM = 256             # width of the diffusion-timestep embedding
NUM_RES_BLOCKS = 2             # residual blocks per UNet level
NUM_MID_BLOCKS = 3             # blocks in the middle of the UNet
NUM_HEADS = 8                  # attention heads
DROPOUT = 0.1                  # dropout inside the UNet
STEM_CHANNELS = 16             # channels of the 2D band plane over (band, frame) beside the 1D UNet (0 = none; RESULTS.md, issue 20)
# ---- diffusion (models/diffusion.py DiffusionConfig)
TIMESTEPS = 1000               # diffusion steps T
BETA_SCHEDULE = "linear"       # "linear" or "cosine"
OBJECTIVE = "v"                # network predicts "eps" (noise) or "v" (RESULTS.md, issue 9)
MOTION_FEATURES = "beat"       # "raw" 234 features, "rhythm" or "beat" channels (models/motion_features.py)
# ---- optimisation (lm2a/training.py TrainConfig)
BATCH_SIZE = 16                # clips per step and per process
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
AMP = "auto"                   # auto: CUDA bf16 (fp16+GradScaler if no bf16), CPU with native bf16 from lm2a.device.AUTO_BF16_MIN_WIDTH up (BENCHMARKS.md); on, off, bf16, fp16
SEED = 0                       # seeds model init, data order and per-step noise
# ---- bookkeeping (RunConfig)
MAX_NONFINITE = 20             # stop after this many non-finite losses in a row
VAL_EVERY = 500                # validate (EMA weights) every this many steps
VAL_TIMESTEPS = 8              # fixed timesteps per val item, stratified over [0, T)
VAL_SEED = 1234                # seed of the fixed val timesteps and noises
SAVE_EVERY = 1000              # write step_XXXXXXXX.pt every this many steps
KEEP = 3                       # keep only the newest KEEP step checkpoints (0 = keep all)
LOG_EVERY = 10                 # train_log.csv / TensorBoard row every this many steps
SAMPLE_EVERY = None            # sample fixed val clips every this many steps (None: with validation, 0: off)
SAMPLE_CLIPS = 4               # validation clips sampled (and again with the conditions dropped)
SAMPLE_STEPS = None            # sampler steps of those samples (None: sample.py's; sampler and guidance are too)
SAMPLE_GL_ITERS = 32           # Griffin-Lim iterations of the samples' audio (without --vocoder)
VOCODER = ""                   # a BigVGAN folder for the samples' audio ("" = Griffin-Lim)
NUM_WORKERS = 0                # data loader workers (clips are preloaded in memory: 0 is enough)
COMPILE = False                # torch.compile the UNet for training
DEVICE = "auto"                # auto, cpu, cuda, cuda:1

EXIT_INTERRUPTED = 130
EXIT_NONFINITE = 3
EXIT_DISK_FULL = 4
EXIT_RANK_LOST = 5
SETTINGS = (TrainConfig, RunConfig)  # restored from the checkpoint on --resume, flags over them


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--save_dir", default=SAVE_DIR)
    p.add_argument("--stop_after", type=int, default=0,
                   help="take at most this many steps now, save last.pt, exit 0 (0 = run to the end)")
    # every configuration flag stays None unless given, so --resume can tell what was asked for;
    # None means the constant above (or, on resume, the checkpoint's value)
    for cls, title in ((UNetConfig, "model"), (DiffusionConfig, "diffusion"), (TrainConfig, "optimisation"),
                       (RunConfig, "run")):
        add_config_flags(p, cls, constants_for(cls, globals()), unset=True, title=title)
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="no value: newest checkpoint in --save_dir; or a checkpoint file/folder")
    p.add_argument("--init_from", default=None,
                   help="a new run from this checkpoint's weights (file, or a run folder: its newest)")
    p.add_argument("--force", action="store_true",
                   help="start fresh although --save_dir holds checkpoints (deletes them)")
    add_break_lock_flag(p)
    p.add_argument("--device", default=DEVICE)
    p.add_argument("--no_progress", action="store_true", help="no tqdm bar (logs, CI)")
    return p


# ---------------------------------------------------------------------------------------------
# settings: the constants above, the checkpoint's on --resume, and the flags over them

def resolve_configs(args, source, lyric_dim, flag="--resume"):
    """(UNetConfig, DiffusionConfig): the checkpoint's on --resume or --init_from (`source`: its
    TrainedModel, `flag` the one that named it; a flag that contradicts it is an error), else the flags
    over the constants above."""
    if source is None:
        model_base = UNetConfig(lyric_dim=lyric_dim, **constants_for(UNetConfig, globals()))
        diffusion_base = DiffusionConfig(**constants_for(DiffusionConfig, globals()))
    else:
        model_base, diffusion_base = source.model_config, source.diffusion_config
        for base in (model_base, diffusion_base):
            for name, have in vars(base).items():
                given = getattr(args, name, None)
                if given is not None and given != have:
                    raise SystemExit(f"train.py: {source.path} was trained with {name}={have}; "
                                     f"--{name} {given} cannot change it on {flag}")
    diffusion_cfg = config_from_args(DiffusionConfig, args, diffusion_base)
    model_cfg = config_from_args(UNetConfig, args, model_base)
    if source is None:  # the network's motion input follows the chosen motion features
        model_cfg = replace(model_cfg, motion_dim=motion_feature_dim(diffusion_cfg.motion_features))
    return model_cfg, diffusion_cfg


def resolve_settings(cls, args, ckpt):
    """-> (settings, changed): a TrainConfig or RunConfig from the flags over the constants above; on
    resume the flags over the checkpoint's own settings, so a resumed run goes on as it was started
    unless a flag says otherwise. changed: "name old -> new" for each setting a flag changed. The
    RunConfig's folders are made absolute (a flag's from here; an older checkpoint's relative ones from
    where its run started), so --resume finds them from any folder."""
    base = cls(**constants_for(cls, globals())) if ckpt is None else saved_settings(ckpt, cls)
    if cls is RunConfig and ckpt is not None:
        base = base.anchored(*run_origins(ckpt))
    settings = config_from_args(cls, args, base)
    if cls is RunConfig:
        settings = settings.anchored(os.getcwd())
    names = [f.name for f in flag_fields(cls)]
    changed = [f"{k} {getattr(base, k)} -> {getattr(settings, k)}" for k in names
               if ckpt is not None and getattr(base, k) != getattr(settings, k)]
    return settings, changed


def checkpoint_to_resume(args, log):
    """The checkpoint dict --resume names (None without --resume): a folder's (the save dir's without a
    value) newest readable one, naming each unreadable newer one it skips."""
    if args.resume is None:
        return None
    source = Path(args.save_dir) if args.resume == "auto" else Path(args.resume)
    try:
        ckpt = load_checkpoint(source, map_location="cpu", log=log)
    except FileNotFoundError as e:
        raise SystemExit(f"train.py: --resume: {e}")
    log(f"train.py: resuming from {ckpt['_path']} (step {ckpt['step']})")
    return ckpt


def checkpoint_to_init_from(args, log):
    """The checkpoint dict --init_from names (None without it)."""
    if args.init_from is None:
        return None
    if args.resume is not None:
        raise SystemExit("train.py: --init_from starts a new run from another run's weights and --resume "
                         "continues the run in --save_dir: give one of them")
    try:
        ckpt = load_checkpoint(args.init_from, map_location="cpu", log=log)
    except FileNotFoundError as e:
        raise SystemExit(f"train.py: --init_from: {e}")
    if Path(ckpt["_path"]).resolve().parent == Path(args.save_dir).resolve():
        raise SystemExit(f"train.py: --init_from {ckpt['_path']} lies in --save_dir {args.save_dir}, where "
                         f"the new run writes (and --force deletes): choose another --save_dir")
    return ckpt


def lineage(init, resumed_ckpt):
    """train_args["init_from"] of the new checkpoints: {path, step} of the --init_from checkpoint, the
    resumed run's own record on --resume, else None."""
    if init is not None:
        return {"path": str(Path(init["_path"]).resolve()), "step": int(init["step"])}
    return (resumed_ckpt.get("train_args") or {}).get("init_from") if resumed_ckpt is not None else None


# ---------------------------------------------------------------------------------------------
# setup

def load_data(run_cfg, source, bars):
    """(train set, val set or None, the clips' MelConfig): the union of each split's folders, checked
    against each other and against the checkpoint (`source`: the TrainedModel resumed or initialised
    from)."""
    if not run_cfg.npz_dir:
        raise SystemExit("train.py: --npz_dir names no folder: give one or more folders of training clips")
    train_ds = MelDataset(run_cfg.npz_dir, progress=bars)
    val_ds = MelDataset(run_cfg.val_npz_dir, progress=bars) if run_cfg.val_npz_dir else None
    if val_ds is not None and len(set(val_ds.mel_lengths())) > 1:
        raise SystemExit(f"train.py: validation clips of different lengths: {val_ds.describe()}; the "
                         f"training-time samples compare them as one stack: validate on clips of one "
                         f"length (cut them with one preprocess.py --clip_seconds value)")
    mel_config = check_clip_configs(train_ds, val_ds, source)
    return train_ds, val_ds, mel_config


def norm_stats_for(train_ds, source):
    """The checkpoint's statistics on --resume and --init_from (the network's inputs keep the meaning
    its weights learned), else those of the TRAIN split only (all its folders)."""
    if source is not None:
        return source.norm_stats
    return {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in train_ds.stats().items()
            if k != "frames"}


def make_loader(train_ds, sampler, run_cfg, device):
    # a fixed lyric length under torch.compile: one shape, no recompiles
    collate = fixed_lyric_collate(train_ds.max_lyric_tokens()) if run_cfg.compile else collate_fn
    return torch.utils.data.DataLoader(
        train_ds, batch_sampler=sampler, collate_fn=collate,
        num_workers=run_cfg.num_workers, pin_memory=device.type == "cuda",
        worker_init_fn=ignore_sigint if run_cfg.num_workers > 0 else None)


def net_wrapper(run_cfg, world, device):
    """The wrapper of the network the loss runs through (DDP, torch.compile), or None; the EMA and
    the checkpoints always see the plain model."""
    if world == 1 and not run_cfg.compile:
        return None

    def wrap(model):
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
        return torch.compile(net) if run_cfg.compile else net
    return wrap


def describe_setup(parts, model_cfg, diffusion_cfg, train_ds, val_ds, per_epoch, world, total_steps):
    return (f"train.py: UNet1D_ultimate {sum(p.numel() for p in parts.model.parameters()) / 1e6:.2f}M "
            f"parameters (base_dim {model_cfg.base_dim}, dim_mults {','.join(map(str, model_cfg.dim_mults))}, "
            f"cond_dim {model_cfg.cond_dim}; {diffusion_cfg.objective} objective, {diffusion_cfg.motion_features} "
            f"motion features); {len(train_ds)} train clips: {train_ds.describe()}; "
            f"{len(val_ds) if val_ds else 0} val clips{': ' + val_ds.describe() if val_ds else ''}; "
            f"{per_epoch} steps per epoch x {world} process(es); {total_steps} steps; "
            f"device {parts.device}, amp {parts.config.amp} -> {parts.amp_name}{' + GradScaler' if parts.scaler else ''}")


def resume_state(ckpt, parts, sampler, changed, run_changed, world, log):
    """The RunState to continue from (a fresh one without a checkpoint); notes what the flags changed:
    optimisation settings (the weights then differ from an uninterrupted run's) and the run's own."""
    if ckpt is None:
        return RunState()
    state = restore_training(ckpt, parts)
    if ckpt.get("world_size", 1) != world:
        changed.append(f"world_size {ckpt.get('world_size', 1)} -> {world}")
    if changed:
        log(f"train.py: note: {', '.join(changed)} since {ckpt['_path']}: training continues, "
            f"but not exactly as an uninterrupted run would")
    if run_changed:
        log(f"train.py: note: run settings changed by flags: {', '.join(run_changed)}")
    if state.epoch_batch >= sampler.batches_per_epoch:  # the training set shrank since
        state.epoch, state.epoch_batch = state.epoch + 1, 0
    return state


def describe_init(init):
    return (f"train.py: a new run from the weights of {init['_path']} (step {init['step']}), with its model "
            f"and diffusion configuration and its normalisation statistics (the network's inputs mean what "
            f"they meant when it learned its weights); a new optimizer and LR schedule from step 0")


def setup(args, rank, world, device, log):
    """Everything before the first step: the checkpoint to resume or to start from (--init_from),
    the settings, the data (train statistics), the run's parts and counters.
    -> (run, loader, sampler, total_steps)."""
    is_main = rank == 0
    init = checkpoint_to_init_from(args, log)
    ckpt = checkpoint_to_resume(args, log)
    source_ckpt = ckpt if ckpt is not None else init
    source = trained_model(source_ckpt) if source_ckpt is not None else None
    # the checkpoint's configs (a contradicting flag is refused) before anything is written
    configs = resolve_configs(args, source, None, "--resume" if init is None else "--init_from") \
        if source is not None else None
    (train_cfg, changed), (run_cfg, run_changed) = (resolve_settings(cls, args, ckpt) for cls in SETTINGS)
    save_dir = prepare_save_dir(args.save_dir, args.resume, args.force, is_main)
    if world > 1:
        torch.distributed.barrier()
    random.seed(train_cfg.seed)
    np.random.seed(train_cfg.seed)
    train_ds, val_ds, mel_config = load_data(run_cfg, source, is_main and not args.no_progress)
    model_cfg, diffusion_cfg = configs or resolve_configs(args, None, train_ds.lyric_dim)
    sampler = EpochBatchSampler(train_ds.mel_lengths(), train_cfg.batch_size, train_cfg.seed, rank, world)
    total_steps = run_cfg.total_steps(sampler.batches_per_epoch)
    parts = build_parts(model_cfg, diffusion_cfg, train_cfg, norm_stats_for(train_ds, source), device,
                        total_steps, net_wrapper(run_cfg, world, device), rank, world)
    state = resume_state(ckpt, parts, sampler, changed, run_changed, world, log)
    warning = room_warning(save_dir, checkpoint_bytes(parts)) if is_main else None
    if warning:
        log(f"train.py: warning: {warning}")
    if init is not None:
        start_from_weights(init, parts)
        log(describe_init(init))
    meta = dict(mel_config=mel_config, text_encoder={"name": train_ds.text_encoder, "dim": train_ds.lyric_dim},
                train_args=dict(vars(args), **asdict(train_cfg), **asdict(run_cfg),  # the settings in force
                                init_from=lineage(init, ckpt)))
    log(describe_setup(parts, model_cfg, diffusion_cfg, train_ds, val_ds, sampler.batches_per_epoch, world,
                       total_steps))
    run = Run(parts, state, save_dir, val_ds, meta, run_cfg, args.resume is not None, is_main)
    return run, make_loader(train_ds, sampler, run_cfg, device), sampler, total_steps


# ---------------------------------------------------------------------------------------------
# the loop

def fmt_loss(x):
    return "n/a" if x is None else f"{x:.4f}"


def finish(run, stop_reason, stop, total_steps, stop_after, lr, log):
    """After the loop: the last checkpoint and validation, the messages -> exit code."""
    state = run.state
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
        log(f"train.py: stopped after --stop_after {stop_after} steps at step {state.step} "
            f"of {total_steps}; saved {path}; continue with --resume")
    return 0


class LossMeter:
    """The mean training loss between two log rows."""

    def __init__(self):
        self.total, self.count = 0.0, 0

    def add(self, loss):
        self.total, self.count = self.total + loss, self.count + 1

    def take(self):
        mean = self.total / self.count if self.count else None
        self.total, self.count = 0.0, 0
        return mean


def after_step(run, result, meter, total_steps):
    """Bookkeeping after one step: counters, the log row (validation and samples when due), step
    checkpoints. -> the stop reason or None."""
    state, cfg = run.state, run.settings
    if result.finite:
        meter.add(result.loss)
        state.nonfinite_run = 0
    else:
        state.nonfinite_run += 1
        state.nonfinite_total += 1
    row, final = {}, state.step >= total_steps
    if (state.step % cfg.log_every == 0 or final) and meter.count:
        row["train_loss"] = f"{meter.take():.6f}"
    if run.val_ds is not None and (final or cfg.val_every > 0 and state.step % cfg.val_every == 0):
        row.update(run.evaluate(with_samples=final or cfg.sample_due(state.step)))
    if row:
        run.log(row, result.lr)
    if state.nonfinite_run >= cfg.max_nonfinite:
        return "nonfinite"
    if cfg.save_every > 0 and state.step % cfg.save_every == 0:
        run.save(step_file_name(state.step))
    return None


def loop(run, loader, sampler, last_step, total_steps, stop, bar):
    """Steps until last_step, a stop reason or a signal -> (stop reason or None, last lr)."""
    parts, state, meter = run.parts, run.state, LossMeter()
    lr, stop_reason = parts.optimizer.param_groups[0]["lr"], None
    compiling = run.settings.compile  # the first step compiles: its time is printed
    parts.model.train()
    while stop_reason is None and state.step < last_step:
        sampler.set_epoch(state.epoch, state.epoch_batch)
        for batch in loader:
            t_step = time.perf_counter()
            result = train_step(parts, batch, state.step, stop=bool(stop))
            if compiling:
                tqdm.write(f"train.py: first step under torch.compile (the compile): "
                           f"{time.perf_counter() - t_step:.1f} s")
                compiling = False
            state.advance(sampler.batches_per_epoch)
            lr = result.lr
            bar.update(1)
            bar.set_postfix(loss=f"{result.loss:.4f}", lr=f"{lr:.2e}", refresh=False)
            stop_reason = after_step(run, result, meter, total_steps)
            if result.stop or (parts.world == 1 and stop):
                stop_reason = stop_reason or "signal"
            if stop_reason or state.step >= last_step:
                break
    return stop_reason, lr


def report(run, exit_code, agree, t_start, per_epoch, log):
    """The closing lines -> train()'s result dict."""
    state, world = run.state, run.parts.world
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


def train(args):
    """Runs a training. Returns a dict: exit_code, step, epoch, best_val_loss, paths, seconds."""
    t_start = time.time()
    rank, world, device = setup_processes(args.device)
    log = print if rank == 0 else (lambda *a, **k: None)
    stop = StopFlag().install()
    run = None
    try:
        run, loader, sampler, total_steps = setup(args, rank, world, device, log)
        if run.val_ds is not None and run.state.step == 0:
            run.log(run.evaluate(with_samples=False), run.parts.optimizer.param_groups[0]["lr"])
        last_step = min(total_steps, run.state.step + args.stop_after) if args.stop_after > 0 else total_steps
        try:
            with tqdm(total=total_steps, initial=run.state.step, desc="train", unit="step", dynamic_ncols=True,
                      disable=rank != 0 or args.no_progress) as bar:
                stop_reason, lr = loop(run, loader, sampler, last_step, total_steps, stop, bar)
            # before finish(): its checkpoint barriers are then the last collectives, whose work objects
            # hold no Python tensors (a gloo group torn down while a worker thread still frees one can
            # deadlock on the GIL)
            agree = ranks_agree(run.parts)
            exit_code = finish(run, stop_reason, stop, total_steps, args.stop_after, lr, log)
        except DiskFullError as e:  # at a checkpoint save, on every rank (Run.save)
            log(f"train.py: stopped at step {run.state.step}: {e}")
            agree, exit_code = None, EXIT_DISK_FULL
        return report(run, exit_code, agree, t_start, sampler.batches_per_epoch, log)
    except RuntimeError as e:  # under DDP a collective that timed out: name the rank that did not answer
        lost = lost_ranks(e, rank, world, args.save_dir)
        if lost is None:
            raise
        raise lost from None
    finally:
        stop.uninstall()
        if run is not None:
            run.close()
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
        with FolderLock(args.save_dir, "train.py", args.break_lock, enabled=world_from_env()[0] == 0):
            return train(args)["exit_code"]
    except FolderInUse as e:
        print(e, file=sys.stderr)
        return EXIT_FOLDER_IN_USE
    except RanksLost as e:
        if e.line:
            print(e.line, file=sys.stderr)
        return EXIT_RANK_LOST
    except (ClipFileError, CheckpointError, FileNotFoundError, ValueError) as e:  # bad input: no traceback
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except DiskFullError as e:  # a write before the loop (the loop's saves: train())
        print(f"train.py: error: {e}", file=sys.stderr)
        return EXIT_DISK_FULL


if __name__ == "__main__":
    sys.exit(main())
