"""Generation, shared by sample.py, val.py, the training-time samples and the sometest tools: load
clips (each file read once), check them against a checkpoint, generate for a batch of items, write
and read generated npz files.

    diffusion, model = load_model("runs/exp1", device)          # lm2a.trained
    items, skipped = load_clips(paths, model)
    results = generate_for_items(diffusion, model, items, SamplingConfig(steps=50), out_dir="gen")

An item is a dict: name, mel (T, 80) and motion at the mel frame rate (T, 234) tensors exactly as
in training (lm2a.data.item_from_clip), lyrics (L, D), `clip` (the clip's own arrays: mel (80, T),
motion (frames, 234) at its fps, and its scalars, for evaluation) and `meta` (provenance written
into the generated npz). Determinism: every item draws its noise from its own CPU generator seeded
by (settings.seed, name), so its mel does not depend on the batch it was in. A clip longer than the
model's window is generated in windows by lm2a.longform.generate_clips (which calls this module for
the others).
"""
import hashlib
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lm2a.clipio import ClipFileError, load_clip, save_npz_atomic
from lm2a.conditions import conditions_from_raw
from lm2a.data import ITEM_KEYS, collate_fn, item_from_clip
from lm2a.device import resolve_precision
from lm2a.lyrics import LyricEncoder
from lm2a.melconfig import MelConfig
from lm2a.motion import resample_to_mel
from lm2a.plots import mel_figure
from models.diffusion import SamplingConfig

GEN_SUFFIX = "_gen"            # <name>_gen.npz
# what a generated npz records beside the mel: the sampling settings (asdict(SamplingConfig))
# and these (FORMATS.md, "Generated npz")
RECORD_KEYS = ("use_ema", "ckpt_path", "ckpt_step")


def check_settings(settings: SamplingConfig, model):
    """-> error string or None: settings the checkpoint (a TrainedModel) cannot sample with."""
    timesteps = model.diffusion_config.timesteps
    if not 1 <= settings.steps <= timesteps:
        return f"--steps {settings.steps}: must be in [1, {timesteps}] (the checkpoint's diffusion timesteps)"
    return None


# ---- clips ------------------------------------------------------------------------------------
def compatibility_problems(clip_label, mel_config, text_encoder, lyric_dim, model):
    """What keeps a clip from being used with this checkpoint (a TrainedModel): [] when nothing.
    mel_config: anything MelConfig.parse reads."""
    ckpt_label = f"checkpoint {model.path}"
    cfg = MelConfig.parse(mel_config, where=clip_label)
    problems = [f"mel config {d}" for d in cfg.differences(model.mel_config, "clip", "checkpoint")]
    te = model.text_encoder
    if text_encoder != te.name or int(lyric_dim) != te.dim:
        problems.append(f"text encoder {text_encoder!r} ({lyric_dim}-dim) (clip) vs {te.name!r} "
                        f"({te.dim}-dim) (checkpoint)")
    if not problems:
        return []
    return [f"{clip_label}: does not match {ckpt_label}: " + "; ".join(problems) +
            " (re-run preprocess.py with the checkpoint's vocoder config and text encoder, or use a "
            "checkpoint trained on these clips)"]


def usable_items(items, model):
    """Splits items into those the checkpoint (a TrainedModel) can generate for and the others ->
    (usable, skipped [(path, reason)])."""
    usable, skipped = [], []
    for item in items:
        clip = item["clip"]
        problems = compatibility_problems(item["meta"]["source_npz"], clip["mel_config"],
                                          clip["text_encoder"], clip["lyrics"].shape[1], model)
        if problems:
            skipped.append((Path(item["meta"]["source_npz"]), problems[0]))
        else:
            usable.append(item)
    return usable, skipped


def load_clips(paths, model=None):
    """Clip npz files, each read once -> (items, skipped [(path, reason)]). With `model` (a
    TrainedModel), clips it cannot use are skipped with the reason (usable_items)."""
    items, skipped = [], []
    for path in paths:
        path = Path(path)
        try:
            clip = load_clip(path, keys=ITEM_KEYS)
        except (ClipFileError, OSError, ValueError) as e:
            skipped.append((path, str(e)))
            continue
        item = item_from_clip(clip, path)
        item["clip"] = clip
        item["meta"] = dict(source_npz=str(path.resolve()), song=clip["song"], start_s=float(clip["start_s"]),
                            lyric_text=clip["lyric_text"], mel_config=clip["mel_config"],
                            text_encoder=clip["text_encoder"], sr=int(clip["sr"]),
                            hop_length=int(clip["hop_length"]))
        items.append(item)
    if model is not None:
        items, refused = usable_items(items, model)
        skipped += refused
    return items, skipped


def raw_item(model, motion_path, lyric_text, start_s, seconds=6.0, fps=30, t0_s=0.0, device="cpu"):
    """An item like load_clips' from raw inputs (lm2a.conditions), for the checkpoint's (TrainedModel)
    text encoder and mel config; named raw_<start_ms>. Its `mel` has no bins: there is no real mel."""
    cfg = model.mel_config
    encoder = LyricEncoder(model.text_encoder.name, device=str(device))
    cond = conditions_from_raw(motion_path, lyric_text, start_s, seconds=seconds, fps=fps,
                               t0_s=t0_s, encoder=encoder)
    problems = compatibility_problems(f"{motion_path} + lyrics", cfg, cond["text_encoder"],
                                      cond["lyrics"].shape[1], model)
    if problems:
        raise ValueError(problems[0])
    n_frames = cfg.frames_for_seconds(seconds)
    motion = resample_to_mel(cond["motion"], fps, n_frames, cfg.sampling_rate, cfg.hop_size)
    meta = dict(source_npz="", song="", start_s=float(start_s), lyric_text=str(lyric_text),
                mel_config=cfg.to_json(), text_encoder=cond["text_encoder"],
                sr=cfg.sampling_rate, hop_length=cfg.hop_size,
                motion_path=str(Path(motion_path).resolve()), motion_t0=cond["motion_t0"],
                frame_start=cond["frame_start"], frame_end=cond["frame_end"], fps=int(fps),
                motion_repaired_frames=cond["motion_repaired_frames"],
                motion=cond["motion"])  # (frames, 234) at fps: the raw clip has no npz to point at
    return {"name": f"raw_{int(round(start_s * 1000)):08d}",
            "mel": torch.zeros(n_frames, 0),  # collate_fn only needs the length
            "motion": torch.from_numpy(np.ascontiguousarray(motion, dtype=np.float32)),
            "lyrics": torch.from_numpy(cond["lyrics"]), "meta": meta}


# ---- generation -------------------------------------------------------------------------------
def clip_seed(seed, name):
    """The seed of one clip's noise: a stable 63-bit hash of (seed, clip name)."""
    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def make_generator(seed):
    """A CPU generator: the numbers do not depend on the device the model runs on."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


@torch.inference_mode()
def generate(diffusion, batch, settings: SamplingConfig, generator=None, progress=False):
    """One collate_fn batch -> generated RAW log-mels, numpy float32 (B, 80, T), T = the batch's mel
    frames (motion is at the mel frame rate). `generator`: one torch.Generator for the whole batch,
    or a list of B generators, one noise stream per clip."""
    motion = batch["motion"]
    settings = resolve_precision(settings, diffusion.device)
    mel = diffusion.sample(motion, batch["lyrics"], lyric_pad_mask=batch["lyric_pad_mask"],
                           length=motion.shape[1], settings=settings, generator=generator,
                           progress=progress)
    return mel.float().cpu().numpy()


def make_batches(items, batch_size):
    """Consecutive runs of at most batch_size items of one mel length (collate_fn stacks them).
    Batching never changes a clip's result: its noise is its own."""
    batches = []
    for item in items:
        if batches and len(batches[-1]) < batch_size and \
                batches[-1][0]["motion"].shape[0] == item["motion"].shape[0]:
            batches[-1].append(item)
        else:
            batches.append([item])
    return batches


def generate_for_items(diffusion, model, items, settings: SamplingConfig = None, out_dir=None, png=True,
                       progress=True, step_progress=False, desc="generating"):
    """Generates for `items` (load_clips / raw_item) in batches of settings.batch_size, each clip
    with its own noise generator seeded by clip_seed(settings.seed, name). With out_dir, writes
    <name>_gen.npz (atomically) and, with png, <name>.png; `model` (the TrainedModel, recorded in
    them) is needed only then. -> list of dict(name, mel (80, T) float32, path or None, item), in
    the order of `items`."""
    settings = resolve_precision(settings or SamplingConfig(), diffusion.device)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    results = []
    for chunk in tqdm(make_batches(items, settings.batch_size), desc=desc, unit="batch",
                      disable=not progress or not items):
        generators = [make_generator(clip_seed(settings.seed, item["name"])) for item in chunk]
        mels = generate(diffusion, collate_fn(chunk), settings, generators, progress=step_progress)
        for item, mel in zip(chunk, mels):
            path = None
            if out is not None:
                path = write_generated(out / f"{item['name']}{GEN_SUFFIX}.npz", item, mel, model, settings)
                if png:
                    real = item["mel"].numpy().T if item["mel"].shape[1] > 0 else None  # (80, T)
                    plot_mels(out / f"{item['name']}.png", mel, real,
                              title=f"{item['name']}: {describe_settings(settings)}, step {model.step} "
                                    f"{model.weights_label}")
            results.append({"name": item["name"], "mel": mel, "path": path, "item": item})
    return results


def describe_settings(settings: SamplingConfig):
    return (f"{settings.sampler} {settings.steps} steps, eta {settings.eta:g}, guidance "
            f"{settings.guidance:g}, {settings.precision}, seed {settings.seed}")


# ---- generated npz ----------------------------------------------------------------------------
def write_generated(path, item, mel, model, settings: SamplingConfig, extra=None):
    """<name>_gen.npz (FORMATS.md): the generated raw log-mel (80, T), every sampling setting
    (asdict), the clip's seed, the checkpoint (a TrainedModel), the item's provenance and `extra`
    fields (a clip generated in windows: lm2a.longform.window_layout). -> path."""
    meta = dict(item["meta"])
    motion = meta.pop("motion", None)
    fields = dict(mel=np.asarray(mel, dtype=np.float32), **asdict(settings),
                  clip_seed=np.int64(clip_seed(settings.seed, item["name"])),
                  use_ema=np.bool_(model.use_ema),
                  ckpt_path=np.str_(str(Path(model.path).resolve())), ckpt_step=np.int64(model.step),
                  name=np.str_(item["name"]),
                  created=np.str_(datetime.now(timezone.utc).isoformat(timespec="seconds")))
    fields.update({k: np.str_(v) if isinstance(v, str) else v for k, v in meta.items()})
    if motion is not None:
        fields["motion"] = np.asarray(motion, dtype=np.float32)
    fields.update(extra or {})
    save_npz_atomic(path, **fields)
    return Path(path)


def _scalar(v):
    v = v.item() if hasattr(v, "item") else v
    return str(v) if isinstance(v, (bytes, np.str_)) else v


def read_generated(path):
    """A <name>_gen.npz -> dict(mel (80, T) float32, settings {sampling settings + RECORD_KEYS
    present in the file}, mel_config (MelConfig or None)). Raises ValueError naming the file."""
    setting_keys = tuple(SamplingConfig.__dataclass_fields__) + RECORD_KEYS
    try:
        with np.load(path, allow_pickle=False) as z:
            mel = z["mel"].astype(np.float32)
            settings = {k: _scalar(z[k]) for k in setting_keys if k in z.files}
            mel_config = MelConfig.parse(z["mel_config"], where=str(path)) if "mel_config" in z.files else None
    except Exception as e:  # BadZipFile, KeyError, OSError, ValueError
        raise ValueError(f"{path}: cannot read generated npz ({type(e).__name__}: {e})") from e
    return {"mel": mel, "settings": settings, "mel_config": mel_config}


def plot_mels(path, generated, real=None, title=""):
    """PNG of the real mel (when given) above the generated one, on one colour scale."""
    rows = ([("real", [real])] if real is not None else []) + [("generated", [generated])]
    mel_figure(path, rows, title=title)
