"""The bookkeeping of a training run (train.py): where it writes, validation, training-time samples,
the log, the checkpoints it saves, and the processes it runs on.

    run = Run(parts, state, save_dir, val_ds, meta, run_config, resumed, is_main)
    row = run.evaluate(with_samples=True); run.log(row, lr); run.save("last.pt")
"""
import errno
import math
import os
import shutil
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from lm2a.checkpoint import ROOM_ADVICE, prune_step_checkpoints, save_checkpoint, step_checkpoints
from lm2a.clipio import DiskFullError, fmt_bytes
from lm2a.device import pick_device, resolve_precision
from lm2a.generate import load_clips
from lm2a.monitor import SAMPLE_FIGURES, SampleMonitor, warnings
from lm2a.musicality import FIGURES as MUSIC_FIGURES
from lm2a.training import (LOG_COLUMNS, CsvLog, training_checkpoint, validation_loss, weights_checksum,
                           world_from_env)
from lm2a.vocoder import load_bigvgan
from models.diffusion import SamplingConfig

TB_TAGS = {"train_loss": "train/loss", "lr": "train/lr", "val_loss": "val/loss",
           "val_loss_uncond": "val/loss_uncond", "val_loss_motion_only": "val/loss_motion_only",
           "val_loss_lyrics_only": "val/loss_lyrics_only", "cond_gap": "val/conditioning_gap",
           **{k: "samples/" + k[len("sample_"):] for k in SAMPLE_FIGURES}}
# validation losses: (drop_motion, drop_lyrics) of each column
VAL_DROPS = {"val_loss": (False, False), "val_loss_uncond": (True, True),
             "val_loss_motion_only": (False, True), "val_loss_lyrics_only": (True, False)}
LOG_FIELDS = LOG_COLUMNS + tuple(VAL_DROPS)[2:] + ("cond_gap",) + SAMPLE_FIGURES
# Under DDP every collective (the step's all_reduce, DDP's gradient buckets, the barriers around a
# checkpoint) gives up after this many seconds, so a rank that stops answering (SIGSTOP, swapped out,
# stuck in I/O) ends the run instead of holding the others for the backend's default (gloo 30 min).
# The longest a healthy rank waits at a collective is for rank 0's work between two of them (the
# training-time samples and the checkpoint write inside Run.save's barriers, torch.compile's first
# step): tens of seconds on the field's machines; 5 min leaves a wide margin. TIMEOUT_ENV changes it.
COLLECTIVE_TIMEOUT_S = 300.0
TIMEOUT_ENV = "LM2A_COLLECTIVE_TIMEOUT_S"
# after a timeout the ranks that still run answer a roll call in the rendezvous store for up to this
# long (at most the timeout): ranks time out within the skew of their entry into the same collective
ROLL_CALL_S = 60.0
ROLL_CALL_POLL_S = 0.2
ROLL_CALL_KEY = "lm2a/roll_call/"
# free space a run wants at its start, in checkpoints: a save writes its temp file beside the file
# it replaces, and best.pt and last.pt come on top of the step files
ROOM_FOR_CHECKPOINTS = 3


def check_clip_configs(train_ds, val_ds, model=None):
    """Refuses clips whose mel config / text encoder / lyric dim differ between train, val and the
    checkpoint being resumed (model: its TrainedModel). -> the training clips' MelConfig."""
    train_cfg = train_ds.mel_config
    others = []
    if val_ds is not None:
        others.append((f"{val_ds.dir} (val)", val_ds.mel_config, val_ds.text_encoder, val_ds.lyric_dim))
    if model is not None:
        others.append((f"{model.path} (checkpoint)", model.mel_config, model.text_encoder.name,
                       model.text_encoder.dim))
    for name, cfg, encoder, dim in others:
        diffs = cfg.differences(train_cfg, name, f"{train_ds.dir} (train)")
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


def room_warning(save_dir, checkpoint_bytes, count=ROOM_FOR_CHECKPOINTS):
    """One line when `save_dir` has less free space than `count` checkpoints of `checkpoint_bytes`
    need (shutil.disk_usage), else None."""
    free, need = shutil.disk_usage(save_dir).free, count * checkpoint_bytes
    if free >= need:
        return None
    return (f"{save_dir} has {fmt_bytes(free)} free, less than the {fmt_bytes(need)} of {count} checkpoints "
            f"of about {fmt_bytes(checkpoint_bytes)}: the run may stop at a save when the disk fills; "
            f"{ROOM_ADVICE}")


def collective_timeout_s():
    """Seconds a collective waits for the other ranks: COLLECTIVE_TIMEOUT_S, or TIMEOUT_ENV's value."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    if not raw:
        return COLLECTIVE_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise SystemExit(f"train.py: {TIMEOUT_ENV}={raw!r}: give the collective timeout in seconds (> 0), "
                         f"or unset it for the default {COLLECTIVE_TIMEOUT_S:g} s")
    return value


def setup_processes(device_name):
    """(rank, world, device) under torchrun (process group initialised, its collectives bounded by
    collective_timeout_s()) or for one process."""
    rank, local_rank, world = world_from_env()
    device = pick_device(device_name)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                             timeout=timedelta(seconds=collective_timeout_s()))
    return rank, world, device


class RanksLost(RuntimeError):
    """A collective timed out: .line names the ranks that did not answer ('' on the ranks that leave
    the report to another)."""

    def __init__(self, line):
        super().__init__(line or "a collective timed out (another rank reports)")
        self.line = line


def roll_call(rank, world, wait_s):
    """After a collective timed out: each rank that still runs checks in at the rendezvous store and
    waits until every rank has, or wait_s after the first did. -> (the ranks that did not check in,
    whether this rank reports: the lowest that did); (None, True) if the store does not answer."""
    key = f"{ROLL_CALL_KEY}{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"  # a torchrun restart's own
    try:
        store = torch.distributed.distributed_c10d._get_default_store()
        store.set(f"{key}{rank}", "1")
        deadline = float(store.compare_set(key + "first", "", repr(time.time()))) + wait_s
        while True:
            answered = [r for r in range(world) if store.check([f"{key}{r}"])]
            if len(answered) == world or time.time() >= deadline:
                break
            time.sleep(ROLL_CALL_POLL_S)
    except (RuntimeError, ValueError):
        return None, True  # each rank that cannot reach it says so
    return [r for r in range(world) if r not in answered], rank == min(answered)


def lost_ranks(error, rank, world, save_dir):
    """A collective that timed out (gloo raises it here; NCCL's watchdog ends its process itself) ->
    RanksLost naming the ranks that did not answer (roll_call), for the caller to raise; None for any
    other error. Rank 0's checkpoints are atomic and written between barriers: none is half written."""
    if world == 1 or "timed out" not in str(error).lower():
        return None
    timeout = collective_timeout_s()
    silent, reports = roll_call(rank, world, min(timeout, ROLL_CALL_S))
    if not reports:
        return RanksLost("")
    if silent:
        who = f"rank{'s' if len(silent) > 1 else ''} {', '.join(map(str, silent))} did not answer"
    elif silent is None:
        who = "which rank did not answer is unknown (the rendezvous store did not answer either: its host?)"
    else:
        who = "yet every rank answered a roll call after it (a rank slower than that, or ranks out of step)"
    return RanksLost(f"train.py: a collective timed out after {timeout:g} s ({TIMEOUT_ENV}): {who}; the run "
                     f"ends, saving nothing more (rank {rank} reporting; the checkpoints in {save_dir} stay as "
                     f"last written): check that rank's process and machine, then continue with --resume")


class Run:
    """What the loop needs besides the parts: where it writes, the validation set, the logs."""

    def __init__(self, parts, state, save_dir, val_ds, meta, settings, resumed, is_main):
        """meta: mel_config, text_encoder, train_args (what training_checkpoint stores besides the
        parts); settings: the RunConfig."""
        self.settings, self.parts, self.state, self.save_dir = settings, parts, state, save_dir
        self.val_ds, self.meta, self.is_main = val_ds, meta, is_main
        self.val_indices = list(range(parts.rank, len(val_ds), parts.world)) if val_ds else []
        self.saved = []  # paths written by this run
        self.history = []  # the validation rows so far (floats), for the warnings
        self.monitor = make_monitor(settings, parts, val_ds, meta, save_dir) if is_main else None
        self.t_start, self.seconds_before = time.time(), state.train_seconds
        self.csv = CsvLog(save_dir / "train_log.csv", state.step if resumed else None,
                          LOG_FIELDS) if is_main else None
        self.tb = SummaryWriter(log_dir=str(save_dir), purge_step=state.step + 1 if resumed else None) \
            if is_main else None

    def barrier(self):
        if self.parts.world > 1:
            torch.distributed.barrier()

    def seconds(self):
        return self.seconds_before + time.time() - self.t_start

    def save(self, name):
        """Writes the checkpoint `name` (rank 0; every rank waits for it). A full disk raises
        DiskFullError on every rank (the previous files are intact) so that all of them stop."""
        self.barrier()
        path, error = self.save_dir / name, None
        if self.is_main:
            self.state.train_seconds = self.seconds()
            try:
                save_checkpoint(training_checkpoint(self.parts, self.state, **self.meta), path)
            except DiskFullError as e:
                error = e
            else:
                self.saved_file(path)
        if self.parts.world > 1:  # rank 0's outcome to every rank
            failed = torch.tensor([float(error is not None)], device=self.parts.device)
            torch.distributed.all_reduce(failed)
            if failed.item() and error is None:
                error = DiskFullError(errno.ENOSPC, f"{path}: rank 0 could not write it, the disk is full")
        self.barrier()
        if error is not None:
            raise error
        return path

    def saved_file(self, path):
        """Bookkeeping after a save: the list of files written, keep-K pruning of the step files."""
        if path not in self.saved:
            self.saved.append(path)
        if path.name.startswith("step_"):
            for p in prune_step_checkpoints(self.save_dir, self.settings.keep, upto=self.state.step):
                if p in self.saved:
                    self.saved.remove(p)

    def validate(self):
        """Validates the EMA model (all ranks) with the conditions, without, and with one of them;
        keeps best.pt -> the val columns of a log row. In fp32 whatever --amp trains with, so the
        losses of runs in different precisions compare."""
        parts, state, settings = self.parts, self.state, self.settings
        parts.ema_diffusion.eval()
        sums, n = validation_loss(parts.ema_diffusion, self.val_ds, self.val_indices, parts.config.batch_size,
                                  parts.device, n_timesteps=settings.val_timesteps, seed=settings.val_seed,
                                  drops=VAL_DROPS)
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
        tqdm.write(f"train.py: step {step} samples' music-likeness {music_line(figures)}")
        return figures

    def evaluate(self, with_samples):
        """Validation (+ samples) -> the log row's columns; warns in words when they say so."""
        row = self.validate()
        if with_samples:
            row.update(self.sample())
        if self.is_main:
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


def make_monitor(settings, parts, val_ds, meta, save_dir):
    """The training-time sampler of settings.sample_clips validation clips (None without validation),
    sampling with sample.py's defaults (SamplingConfig) resolved for the device, unless
    settings.sample_steps asks for other step counts."""
    if val_ds is None or settings.sample_clips <= 0 or settings.sample_every == 0:
        return None
    picks = np.unique(np.linspace(0, len(val_ds.files) - 1, min(settings.sample_clips, len(val_ds.files))).round())
    items, _ = load_clips([val_ds.files[int(i)] for i in picks])
    sampling = resolve_precision(SamplingConfig(batch_size=len(items)), parts.device)
    if settings.sample_steps is not None:
        sampling = replace(sampling, steps=settings.sample_steps)
    sampling = replace(sampling, steps=min(sampling.steps, parts.diffusion.timesteps))
    vocoder = load_bigvgan(settings.vocoder, device=str(parts.device)) if settings.vocoder else None
    return SampleMonitor(items, sampling, save_dir / "samples", meta["mel_config"], vocoder,
                         settings.sample_gl_iters)


def music_line(figures):
    """'harmonic share 0.412 (uncond 0.398, real 0.702), partials ...' from the sample figures."""
    return ", ".join(f"{f.replace('_', ' ')} {figures[f'sample_{f}']:.3f} (uncond {figures[f'sample_uncond_{f}']:.3f}, "
                     f"real {figures[f'sample_real_{f}']:.3f})" for f in MUSIC_FIGURES)


def fmt_loss(x):
    return "n/a" if x is None else f"{x:.4f}"


def ranks_agree(parts):
    """Under DDP: do the weights (model and EMA) agree on every rank? (None for one process)."""
    if parts.world == 1:
        return None
    dist = torch.distributed
    mine = torch.cat([weights_checksum(parts.model), weights_checksum(parts.ema.module)]).to(parts.device)
    low, high = mine.clone(), mine.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)  # (all_reduce, not all_gather: a gloo all_gather's
    dist.all_reduce(high, op=dist.ReduceOp.MAX)  # work object can deadlock the group's teardown)
    return torch.equal(low, high)


# ---------------------------------------------------------------------------------------------

