"""LM2A checkpoint files: one self-describing file per save, its layout and what old files meant.

A checkpoint is a plain dict that `torch.load(path, weights_only=True)` reads (tensors, dicts, lists,
str, numbers, None only), holding everything needed to rebuild the model and to resume training:

    schema_version, kind="lm2a-checkpoint", model_class, model_config, diffusion_config,
    norm_stats {mel_mean, mel_std, motion_mean, motion_std} (tensors), mel_config, text_encoder
    {name, dim}, step, epoch, model (UNet state_dict), ema (EMA UNet state_dict), optimizer,
    scheduler, scaler (or None), rng, train_args, val_loss, best_val_loss, created, torch_version

FORMATS.md lists every key. The layout is written once: lm2a.training's `training_checkpoint` builds
the dict from a run's parts and state and `restore_training` puts it back; lm2a.trained rebuilds the
model from it. This module only reads, writes and finds the files, and says what a key that an older
file lacks meant (LEGACY_VALUES). File names in a save dir: step_00001234.pt, best.pt, last.pt.
A folder read as a checkpoint means its newest one that torch.load can read (a truncated newer one is
skipped, named in a line); a full disk while saving raises lm2a.clipio.DiskFullError in one line, the
previous file intact.
"""
import re
import sys
from collections import OrderedDict
from dataclasses import fields
from pathlib import Path

import torch

from lm2a import SCHEMA_VERSION
from lm2a.clipio import atomic_file

CHECKPOINT_KIND = "lm2a-checkpoint"
REQUIRED_KEYS = ("schema_version", "kind", "model_class", "model_config", "diffusion_config",
                 "norm_stats", "mel_config", "text_encoder", "step", "epoch", "model", "ema")
NORM_STAT_KEYS = ("mel_mean", "mel_std", "motion_mean", "motion_std")
STEP_FILE_RE = re.compile(r"^step_(\d+)\.pt$")
ROOM_ADVICE = "free space there or choose another --save_dir"
SAVE_ADVICE = f"{ROOM_ADVICE}; train.py --resume continues from the newest intact checkpoint"


class CheckpointError(ValueError):
    pass


class UnreadableCheckpoint(CheckpointError):
    """torch.load could not read the file (truncated, cut short by a crash during a copy, not a
    torch file): a folder's newest checkpoint that is unreadable is skipped for an older one.
    reason: torch's error, one line."""

    def __init__(self, message, reason=""):
        super().__init__(message)
        self.reason = reason


def step_file_name(step: int) -> str:
    return f"step_{int(step):08d}.pt"


_PLAIN_TYPES = (str, int, float, bool, type(None), torch.Size, torch.dtype, torch.device)


def _check_loadable(obj, where="checkpoint"):
    """Raises TypeError naming the first value torch.load(weights_only=True) would refuse."""
    if torch.is_tensor(obj) or type(obj) in _PLAIN_TYPES:
        return
    if isinstance(obj, dict) and type(obj) in (dict, OrderedDict):
        for k, v in obj.items():
            _check_loadable(k, f"{where} key")
            _check_loadable(v, f"{where}[{k!r}]")
        return
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            _check_loadable(v, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}: not loadable "
                    f"with torch.load(weights_only=True); store tensors, dicts, lists, str or numbers")


def tensor_bytes(obj) -> int:
    """The bytes of the tensors anywhere in nested dicts/lists: about a checkpoint's size on disk."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def save_checkpoint(obj: dict, path) -> Path:
    """Writes `obj` to `path` atomically (lm2a.clipio.atomic_file: a reader never sees half a
    checkpoint, and a crash mid-write leaves the previous file intact). Refuses (before writing)
    anything torch.load(weights_only=True) could not read back. A full disk raises
    lm2a.clipio.DiskFullError (one line: the file, the space it needs and the space free)."""
    path = Path(path)
    _check_loadable(obj)
    # the size it needs: its tensors', or that of the file it replaces or of the run's newest step file
    earlier = [path] + [p for _, p in step_checkpoints(path.parent)[-1:]]
    expected = max([tensor_bytes(obj)] + [p.stat().st_size for p in earlier if p.is_file()])
    with atomic_file(path, "wb", expected_size=expected, advice=SAVE_ADVICE) as f:
        torch.save(obj, f)
    return path


def step_checkpoints(directory):
    """[(step, path)] of the step_XXXXXXXX.pt files in `directory`, oldest first."""
    d = Path(directory)
    out = []
    for p in d.iterdir() if d.is_dir() else ():
        m = STEP_FILE_RE.match(p.name)
        if m and p.is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def _peek_step(path: Path):
    """The 'step' of a checkpoint without reading its tensors (mmap), or None if unreadable."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(obj["step"])
    except Exception:
        return None


def _newest_first(folder: Path):
    """[(step or None, path)] of a run folder's checkpoints, newest first: step_*.pt by the step in
    their names and last.pt by its stored step (it wins a tie: it is written after the step file of
    the same step); a last.pt whose step cannot be read (None) comes first, the newest file as far as
    anyone can tell, so that loading it says why it is skipped."""
    candidates = [(step, 0, path) for step, path in step_checkpoints(folder)]
    last = folder / "last.pt"
    if last.is_file():
        step = _peek_step(last)
        candidates.append((float("inf") if step is None else step, 1, last))
    return [(None if step == float("inf") else step, path) for step, _, path in sorted(candidates, reverse=True)]


def find_checkpoint(path_or_dir) -> Path:
    """A file -> itself. A folder -> its newest checkpoint by step among step_*.pt and last.pt
    (last.pt wins a tie: it is written after the step file of the same step; an unreadable last.pt
    is passed over). load_checkpoint also passes over unreadable step files."""
    p = Path(path_or_dir)
    if p.is_file():
        return p
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such checkpoint file or folder")
    readable = [path for step, path in _newest_first(p) if step is not None]
    if not readable:
        raise FileNotFoundError(
            f"{p}: no checkpoint in this folder (expected step_XXXXXXXX.pt or last.pt written by "
            f"train.py; is it the right --save_dir?)")
    return readable[0]


def _read_checkpoint(path: Path, map_location) -> dict:
    """torch.load + the checks that it is an LM2A checkpoint this code reads. UnreadableCheckpoint
    when torch.load fails, CheckpointError when it reads but is not one."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        first = str(e).splitlines()[0].split(". ")[0] if str(e) else ""  # torch adds paragraphs of advice
        reason = f"{type(e).__name__}: {first}"
        raise UnreadableCheckpoint(f"{path}: cannot read as an LM2A checkpoint ({reason}); is it a complete "
                                   f"file written by train.py?", reason) from e
    if not isinstance(ckpt, dict) or ckpt.get("kind") != CHECKPOINT_KIND:
        what = f"a {type(ckpt).__name__}" if not isinstance(ckpt, dict) else \
            f"a dict with kind={ckpt.get('kind')!r} and keys {sorted(ckpt)[:8]}"
        raise CheckpointError(f"{path}: not an LM2A checkpoint (found {what}; expected "
                              f"kind='{CHECKPOINT_KIND}' as written by train.py)")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: LM2A checkpoint is missing keys {missing} (truncated or "
                              f"written by an older train.py?)")
    if ckpt["schema_version"] != SCHEMA_VERSION:
        raise CheckpointError(f"{path}: schema_version {ckpt['schema_version']}, this code reads "
                              f"{SCHEMA_VERSION}")
    missing = [k for k in NORM_STAT_KEYS if k not in ckpt["norm_stats"]]
    if missing:
        raise CheckpointError(f"{path}: norm_stats lacks {missing}")
    ckpt["_path"] = str(path)
    return ckpt


def readable_checkpoints(folder, but=None):
    """'step_00000010.pt (step 10), best.pt (step 8)': the checkpoints of `folder` whose step can be
    read (newest first, best.pt last), except the file `but`."""
    folder = Path(folder)
    paths = [path for _, path in _newest_first(folder)] + [folder / "best.pt"]
    found = [(path, _peek_step(path)) for path in paths if path.is_file() and path != Path(but or "")]
    return ", ".join(f"{path.name} (step {step})" for path, step in found if step is not None)


def _stderr(line):
    print(line, file=sys.stderr)


def _load_newest_readable(folder: Path, map_location, log) -> dict:
    """The newest checkpoint of a run folder that torch.load can read; each one skipped is named in a
    line to `log`."""
    candidates = [path for _, path in _newest_first(folder)]
    if not candidates:
        find_checkpoint(folder)  # raises the 'no checkpoint in this folder' error
    for path in candidates:
        try:
            return _read_checkpoint(path, map_location)
        except UnreadableCheckpoint as e:
            log(f"lm2a: skipping {path}: cannot be read ({e.reason}; truncated, e.g. by a crash during a "
                f"copy?); trying the next older checkpoint")
    names = ", ".join(p.name for p in candidates)
    raise CheckpointError(f"{folder}: none of its checkpoints can be read ({names}: truncated or not written "
                          f"by train.py); delete them and start over, or name another checkpoint")


def load_checkpoint(path_or_dir, map_location="cpu", log=_stderr) -> dict:
    """Loads an LM2A checkpoint with weights_only=True and checks that it is one. The path it came
    from is stored under '_path'. A folder means its newest checkpoint that can be read: unreadable
    newer ones (truncated: a crash during a copy) are skipped with one line each to `log`. A file
    named explicitly that cannot be read is an error naming the folder's readable checkpoints."""
    p = Path(path_or_dir)
    if p.is_dir():
        return _load_newest_readable(p, map_location, log)
    path = find_checkpoint(p)
    try:
        return _read_checkpoint(path, map_location)
    except UnreadableCheckpoint as e:
        others = readable_checkpoints(path.parent, but=path)
        if not others:
            raise
        raise UnreadableCheckpoint(f"{e} Readable checkpoints in {path.parent}: {others} (name one, or "
                                   f"the folder: its newest readable one)", e.reason) from e


def prune_step_checkpoints(save_dir, keep, upto=None):
    """Deletes all but the newest `keep` step_XXXXXXXX.pt files (keep 0 = keep all) -> the deleted.
    upto: only files of steps up to this one count (a run resumed from an older checkpoint leaves the
    newer files, perhaps unreadable ones, alone until it overwrites them)."""
    if keep <= 0:
        return []
    old = [(step, path) for step, path in step_checkpoints(save_dir) if upto is None or step <= upto][:-keep]
    for _, path in old:
        path.unlink(missing_ok=True)
    return [p for _, p in old]


def to_cpu(obj):
    """Tensors anywhere in nested dicts/lists -> CPU, so a checkpoint loads without CUDA."""
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


# ---- what an older checkpoint meant ----------------------------------------------------------
# A setting a checkpoint lacks was written before the setting existed: it meant the behaviour of the
# code of that time, listed here. The dataclass defaults are today's recommendations and change when a
# better recipe is measured: they never stand in for a missing key. A key missing from a section
# and from this table is an error (the file is not what this code knows how to read).
LEGACY_VALUES = {
    "model_config": {"stem_channels": 0},              # before the 2D band plane (issue 20)
    "diffusion_config": {"objective": "eps",           # before the v objective (fa5f920)
                         "motion_features": "raw"},    # before the rhythm/beat views (dcb8f69)
    "train_args": {"aug_mirror": 0.0, "aug_lyric_swap": 0.0, "aug_gain": 0.0,  # before augmentation
                   "aug_eq": 0.0},
}
# settings that no longer exist -> the one value a checkpoint may hold for them and still load
DROPPED_VALUES = {
    "model_config": {"attn_impl": "sdpa"},  # the MHA baseline kernel moved to sometest/bench.py
}


def config_from_checkpoint(cls, ckpt: dict, key: str, section=None):
    """An instance of the config dataclass `cls` from ckpt[key] (section: the dict to read, default
    ckpt[key]): missing fields from LEGACY_VALUES[key], dropped settings checked and removed. Keys
    this code does not know, or a missing field with no legacy value, are refused naming the file.
    Fields with flag=False that the section lacks keep their default (derived, not a setting)."""
    where = ckpt.get("_path", "checkpoint")
    values = dict(ckpt[key] if section is None else section)
    for name, allowed in DROPPED_VALUES.get(key, {}).items():
        if name in values and values.pop(name) != allowed:
            raise CheckpointError(f"{where}: {key}.{name} is not {allowed!r}: this setting no longer exists "
                                  f"(sometest/bench.py keeps the alternative for measurement); retrain")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names) if section is None else []
    if unknown:
        raise CheckpointError(f"{where}: {key} has keys {unknown} that this code does not know "
                              f"(written by a newer train.py?)")
    legacy = LEGACY_VALUES.get(key, {})
    missing = [f.name for f in fields(cls) if f.name not in values and f.name not in legacy
               and f.metadata.get("flag", True)]
    if missing:
        raise CheckpointError(f"{where}: {key} lacks {missing} and this code does not know what an old "
                              f"file meant by their absence (add them to lm2a.checkpoint.LEGACY_VALUES)")
    return cls(**{n: values[n] if n in values else legacy[n] for n in names if n in values or n in legacy})
