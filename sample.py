"""Stage 4: generate log-mel spectrograms from motion and lyrics with a trained checkpoint.

    python sample.py --ckpt checkpoints --npz_dir split/test --out_dir generated
    python sample.py --ckpt checkpoints/best.pt --npz split/test/song__00012000.npz --out_dir gen
    python sample.py --ckpt checkpoints --motion JustLMD/Songs_2021/x/smplfull.json \\
        --lyrics "text of the line" --start 12.0 --motion_t0 3.5 --out_dir gen

Everything about the model (architecture, diffusion settings, normalisation, mel config, text
encoder) comes from the checkpoint; a folder means its newest checkpoint. Clips whose mel config or
text encoder differs from the checkpoint's are refused. Per clip it writes `<name>_gen.npz`
(generated raw log-mel (80, T), same convention as the clip's `mel`, plus the sampler settings,
seed, checkpoint and source provenance) and `<name>.png` (real above generated, one colour scale).

Determinism: every clip draws its noise (initial and, for DDPM / DDIM eta > 0, per step) from its
own CPU torch.Generator seeded by (--seed, clip name), so a clip's mel does not depend on which
other clips are in the folder, on --batch_size or on --max_clips, and re-runs are identical (on
CUDA the noise is the same numbers; the network's arithmetic may differ in the last bits).
--guidance: 1 = conditional only, 0 = unconditional (both conditions dropped), w = classifier-free
guidance eps_u + w (eps_c - eps_u) from one batched forward per step.
"""
import argparse
import hashlib
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

# ---- defaults (edit here or pass --flag) --------------------------------------------------------
CKPT = "checkpoints"           # checkpoint file, or a folder (its newest checkpoint)
NPZ_DIR = "split/test"         # clips to generate for (used when neither --npz nor --motion is given)
OUT_DIR = "generated"          # where <name>_gen.npz and <name>.png go
SAMPLER = "ddim"               # "ddim" or "ddpm"
STEPS = 50                     # sampling steps (<= the checkpoint's diffusion timesteps)
ETA = 0.0                      # DDIM eta: 0 deterministic, 1 = DDPM-like noise
GUIDANCE = 2.0                 # classifier-free guidance: 1 cond only, 0 uncond only
BATCH_SIZE = 8                 # clips per batch (guidance doubles the network batch)
SEED = 0                       # seeds the noise (one generator per clip, from seed and clip name)
DEVICE = "auto"                # auto, cpu, cuda, cuda:1
MAX_CLIPS = 0                  # generate for the first N clips only (0 = all)
SECONDS = 6.0                  # raw input: clip length (the model was trained on 6 s clips)
FPS = 30                       # raw input: motion frame rate of smplfull.json
MOTION_T0 = 0.0                # raw input: song time (s) of motion frame 0 (stage 1: first lyric key)

GEN_SUFFIX = "_gen"            # <name>_gen.npz
CLIP_X0 = 6.0                  # clip predicted x0 to +-this (normalised), as GaussianDiffusion.sample
HEAVY_KEYS = ("model", "ema", "optimizer", "scheduler", "scaler", "rng")


# ---- model ------------------------------------------------------------------------------------
def load_model(ckpt_path, device="cpu", use_ema=True):
    """Checkpoint file or folder -> (GaussianDiffusion in eval mode on `device`, info). `info` is
    the checkpoint dict without its weights and optimizer state, plus `_path` and `use_ema` (False
    when the checkpoint has no EMA weights)."""
    from lm2a.checkpoint import build_diffusion, describe_checkpoint, load_checkpoint
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")
    diffusion = build_diffusion(ckpt, use_ema=use_ema, device=device)
    info = {k: v for k, v in ckpt.items() if k not in HEAVY_KEYS}
    info["use_ema"] = bool(use_ema and ckpt.get("ema") is not None)
    info["description"] = describe_checkpoint(ckpt)
    return diffusion, info


def weights_label(info):
    return "EMA" if info.get("use_ema") else "raw (no EMA)"


def mel_frames_for(seconds, mel_config):
    from lm2a.audio import n_mel_frames
    return n_mel_frames(int(round(seconds * mel_config["sampling_rate"])), mel_config)


# ---- clips ------------------------------------------------------------------------------------
def compatibility_problems(clip_label, mel_config, text_encoder, lyric_dim, info):
    """What keeps a clip from being used with this checkpoint: [] when nothing. mel_config is a dict
    or a JSON string."""
    from lm2a.melconfig import compare_mel_configs, mel_config_from_json
    ckpt_label = f"checkpoint {info.get('_path', '?')}"
    cfg = mel_config_from_json(mel_config) if isinstance(mel_config, (str, np.str_)) else mel_config
    problems = [f"mel config {d}" for d in compare_mel_configs(cfg, info["mel_config"], "clip", "checkpoint")]
    te = info["text_encoder"]
    if text_encoder != te["name"] or int(lyric_dim) != int(te["dim"]):
        problems.append(f"text encoder {text_encoder!r} ({lyric_dim}-dim) (clip) vs {te['name']!r} "
                        f"({te['dim']}-dim) (checkpoint)")
    if not problems:
        return []
    return [f"{clip_label}: does not match {ckpt_label}: " + "; ".join(problems) +
            " (re-run preprocess.py with the checkpoint's vocoder config and text encoder, or use a "
            "checkpoint trained on these clips)"]


def load_clips(paths, info):
    """Clip npz files -> (items, skipped [(path, reason)]). Items hold mel (T, 80) and motion at the
    mel frame rate (T, 234) built by dataset.load_item exactly as in training, lyrics (L, D), the
    name, and `meta` (provenance written into the generated npz)."""
    from dataset import load_item
    from lm2a.clipio import ClipFileError, load_clip
    items, skipped = [], []
    for path in paths:
        path = Path(path)
        try:
            item = load_item(path)
            meta = load_clip(path, keys=("song", "start_s", "lyric_text", "sr", "hop_length", "fps"))
        except (ClipFileError, OSError, ValueError) as e:
            skipped.append((path, str(e)))
            continue
        problems = compatibility_problems(str(path), item["mel_config"], item["text_encoder"],
                                          item["lyrics"].shape[1], info)
        if problems:
            skipped.append((path, problems[0]))
            continue
        item["meta"] = dict(source_npz=str(path.resolve()), song=meta["song"],
                            start_s=float(meta["start_s"]), lyric_text=meta["lyric_text"],
                            mel_config=item["mel_config"], text_encoder=item["text_encoder"],
                            sr=int(meta["sr"]), hop_length=int(meta["hop_length"]))
        items.append(item)
    return items, skipped


def raw_item(info, motion_path, lyric_text, start_s, seconds=SECONDS, fps=FPS, t0_s=MOTION_T0,
             device="cpu"):
    """An item like load_clips' from raw inputs (lm2a.conditions), for the checkpoint's text encoder
    and mel config; named raw_<start_ms>. Its `mel` has no bins: there is no real mel."""
    from lm2a.conditions import conditions_from_raw
    from lm2a.lyrics import LyricEncoder
    from lm2a.melconfig import mel_config_to_json
    from lm2a.motion import resample_to_mel
    cfg = info["mel_config"]
    encoder = LyricEncoder(info["text_encoder"]["name"], device=str(device))
    cond = conditions_from_raw(motion_path, lyric_text, start_s, seconds=seconds, fps=fps,
                               t0_s=t0_s, encoder=encoder)
    problems = compatibility_problems(f"{motion_path} + lyrics", cfg, cond["text_encoder"],
                                      cond["lyrics"].shape[1], info)
    if problems:
        raise ValueError(problems[0])
    n_frames = mel_frames_for(seconds, cfg)
    motion = resample_to_mel(cond["motion"], fps, n_frames, cfg["sampling_rate"], cfg["hop_size"])
    name = f"raw_{int(round(start_s * 1000)):08d}"
    meta = dict(source_npz="", song="", start_s=float(start_s), lyric_text=str(lyric_text),
                mel_config=mel_config_to_json(cfg), text_encoder=cond["text_encoder"],
                sr=int(cfg["sampling_rate"]), hop_length=int(cfg["hop_size"]),
                motion_path=str(Path(motion_path).resolve()), motion_t0=cond["motion_t0"],
                frame_start=cond["frame_start"], frame_end=cond["frame_end"], fps=int(fps),
                motion_repaired_frames=cond["motion_repaired_frames"],
                motion=cond["motion"])  # (frames, 234) at fps: the raw clip has no npz to point at
    return {"name": name,
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
def generate(diffusion, batch, sampler=SAMPLER, steps=STEPS, eta=ETA, guidance=GUIDANCE,
             generator=None, progress=False):
    """One collate_fn batch -> generated RAW log-mels, numpy float32 (B, 80, T), T = the batch's mel
    frames (motion is at the mel frame rate). `generator`: one torch.Generator for the whole batch,
    or a list of B generators, one noise stream per clip (GaussianDiffusion.sample takes both)."""
    motion, lyrics, mask = batch["motion"], batch["lyrics"], batch["lyric_pad_mask"]
    mel = diffusion.sample(motion, lyrics, lyric_pad_mask=mask, length=motion.shape[1], sampler=sampler,
                           steps=steps, eta=eta, guidance=guidance, generator=generator,
                           progress=progress, clip_x0=CLIP_X0)
    return mel.float().cpu().numpy()


def gen_npz_fields(item, mel, info, settings):
    """Everything a generated npz holds (INTERFACES.md 'Generated npz')."""
    meta = dict(item["meta"])
    extra = {k: np.asarray(meta.pop(k), dtype=np.float32) for k in ("motion",) if k in meta}
    fields = dict(
        mel=np.asarray(mel, dtype=np.float32),
        sampler=np.str_(settings["sampler"]), steps=np.int64(settings["steps"]),
        eta=np.float64(settings["eta"]), guidance=np.float64(settings["guidance"]),
        seed=np.int64(settings["seed"]), clip_seed=np.int64(clip_seed(settings["seed"], item["name"])),
        batch_size=np.int64(settings["batch_size"]),
        use_ema=np.bool_(info.get("use_ema", True)),
        ckpt_path=np.str_(str(Path(info["_path"]).resolve())), ckpt_step=np.int64(info["step"]),
        name=np.str_(item["name"]), created=np.str_(datetime.now(timezone.utc).isoformat(timespec="seconds")),
    )
    for k, v in meta.items():
        fields[k] = np.str_(v) if isinstance(v, str) else v
    fields.update(extra)
    return fields


def plot_mels(path, generated, real=None, title=""):
    """PNG of the real mel (when given) above the generated one, on one colour scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = ([("real", real)] if real is not None else []) + [("generated", generated)]
    vmin = min(float(np.min(m)) for _, m in panels)
    vmax = max(float(np.max(m)) for _, m in panels)
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.6 * len(panels) + 0.4), squeeze=False,
                             constrained_layout=True)
    for ax, (label, mel) in zip(axes[:, 0], panels):
        im = ax.imshow(mel, origin="lower", aspect="auto", vmin=vmin, vmax=vmax, cmap="magma",
                       interpolation="nearest")
        ax.set_ylabel(f"{label}\nmel bin")
    axes[-1, 0].set_xlabel("mel frame")
    fig.colorbar(im, ax=axes[:, 0].tolist(), label="log-mel (ln)")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=80)
    plt.close(fig)


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


def generate_for_items(diffusion, info, items, out_dir=None, sampler=SAMPLER, steps=STEPS, eta=ETA,
                       guidance=GUIDANCE, seed=SEED, batch_size=BATCH_SIZE, png=True, progress=True,
                       step_progress=False, desc="generating"):
    """Generates for `items` (load_clips / raw_item) in batches of `batch_size`, each clip with its
    own noise generator seeded by clip_seed(seed, name). With out_dir, writes <name>_gen.npz
    (atomically) and, with png, <name>.png.
    -> list of dict(name, mel (80, T) float32, path or None, item), in the order of `items`."""
    from tqdm import tqdm

    from dataset import collate_fn
    from lm2a.clipio import save_npz_atomic
    settings = dict(sampler=sampler, steps=int(steps), eta=float(eta), guidance=float(guidance),
                    seed=int(seed), batch_size=int(batch_size))
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    results = []
    for chunk in tqdm(make_batches(items, batch_size), desc=desc, unit="batch",
                      disable=not progress or not items):
        generators = [make_generator(clip_seed(seed, item["name"])) for item in chunk]
        mels = generate(diffusion, collate_fn(chunk), sampler, steps, eta, guidance, generators,
                        progress=step_progress)  # (B, 80, T)
        for item, mel in zip(chunk, mels):
            path = None
            if out is not None:
                path = out / f"{item['name']}{GEN_SUFFIX}.npz"
                save_npz_atomic(path, **gen_npz_fields(item, mel, info, settings))
                if png:
                    real = item["mel"].numpy().T if item["mel"].shape[1] > 0 else None  # (80, T)
                    plot_mels(out / f"{item['name']}.png", mel, real,
                              title=f"{item['name']}: {sampler} {steps} steps, eta {eta:g}, guidance "
                                    f"{guidance:g}, seed {seed}, step {info['step']} {weights_label(info)}")
            results.append({"name": item["name"], "mel": mel, "path": path, "item": item})
    return results


def generate_for_files(diffusion, info, paths, out_dir=None, **kwargs):
    """load_clips + generate_for_items -> (results, skipped [(path, reason)])."""
    items, skipped = load_clips(paths, info)
    return generate_for_items(diffusion, info, items, out_dir, **kwargs), skipped


# ---- main -------------------------------------------------------------------------------------
def add_sampling_flags(p):
    """Flags val.py shares."""
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default=SAMPLER)
    p.add_argument("--steps", type=int, default=STEPS, help="sampling steps")
    p.add_argument("--eta", type=float, default=ETA, help="DDIM eta")
    p.add_argument("--guidance", type=float, default=GUIDANCE,
                   help="classifier-free guidance weight: 1 = conditional only, 0 = unconditional")
    p.add_argument("--batch_size", type=int, default=BATCH_SIZE)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--no_ema", action="store_true", help="use the raw weights, not the EMA ones")
    p.add_argument("--device", default=DEVICE, help="auto, cpu, cuda, cuda:1")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", default=CKPT, help="checkpoint file or folder (newest checkpoint)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--npz", help="one clip npz")
    src.add_argument("--npz_dir", help=f"a folder of clip npz files (default {NPZ_DIR})")
    src.add_argument("--motion", help="raw input: an EasyMocap smplfull.json (with --lyrics, --start)")
    p.add_argument("--lyrics", help="raw input: the lyric line sung in the clip")
    p.add_argument("--start", type=float, help="raw input: clip start in song time (s)")
    p.add_argument("--motion_t0", type=float, default=MOTION_T0,
                   help="raw input: song time (s) of motion frame 0")
    p.add_argument("--seconds", type=float, default=SECONDS, help="raw input: clip length (s)")
    p.add_argument("--fps", type=int, default=FPS, help="raw input: motion frame rate")
    p.add_argument("--out_dir", default=OUT_DIR)
    p.add_argument("--max_clips", type=int, default=MAX_CLIPS, help="first N clips only (0 = all)")
    p.add_argument("--no_png", action="store_true", help="skip the per-clip png")
    add_sampling_flags(p)
    return p


def check_sampling_args(args, info):
    """-> error string or None."""
    timesteps = int(info["diffusion_config"].get("timesteps", 1000))
    if not 1 <= args.steps <= timesteps:
        return f"--steps {args.steps}: must be in [1, {timesteps}] (the checkpoint's diffusion timesteps)"
    if args.batch_size < 1:
        return "--batch_size must be >= 1"
    return None


def main(argv=None):
    from lm2a import pick_device
    from lm2a.checkpoint import CheckpointError
    from lm2a.clipio import list_clip_files

    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    err = lambda msg: print(f"sample.py: error: {msg}", file=sys.stderr)  # noqa: E731
    raw = args.motion is not None
    if raw and (args.lyrics is None or args.start is None):
        err("--motion needs --lyrics TEXT and --start SECONDS")
        return 2
    if not raw and (args.lyrics is not None or args.start is not None):
        err("--lyrics and --start go with --motion (raw input)")
        return 2
    device = pick_device(args.device)
    try:
        diffusion, info = load_model(args.ckpt, device, use_ema=not args.no_ema)
    except (FileNotFoundError, CheckpointError, RuntimeError) as e:
        err(str(e))
        return 2
    problem = check_sampling_args(args, info)
    if problem:
        err(problem)
        return 2
    if not args.quiet:
        print(f"sample.py: {info['description']} Using {weights_label(info)} weights on {device}.")

    skipped = []
    try:
        if raw:
            items = [raw_item(info, args.motion, args.lyrics, args.start, args.seconds, args.fps,
                              args.motion_t0, device)]
            n_read = 1
        else:
            paths = [Path(args.npz)] if args.npz else list_clip_files(args.npz_dir or NPZ_DIR)
            if args.npz and not paths[0].is_file():
                raise FileNotFoundError(f"{paths[0]}: no such clip file")
            if args.max_clips > 0:
                paths = paths[:args.max_clips]
            n_read = len(paths)
            items, skipped = load_clips(paths, info)
    except (FileNotFoundError, ValueError, OSError) as e:
        err(str(e))
        return 2
    for _, reason in skipped[:5]:  # every reason starts with the file name
        print(f"sample.py: skipped {reason}", file=sys.stderr)
    if len(skipped) > 5:
        print(f"sample.py: ... and {len(skipped) - 5} more skipped clips", file=sys.stderr)

    t_gen = time.perf_counter()
    results = generate_for_items(diffusion, info, items, args.out_dir, sampler=args.sampler,
                                 steps=args.steps, eta=args.eta, guidance=args.guidance, seed=args.seed,
                                 batch_size=args.batch_size, png=not args.no_png,
                                 progress=not args.quiet, step_progress=not args.quiet)
    gen_seconds = time.perf_counter() - t_gen
    seconds = time.perf_counter() - t_start
    per_clip = f"{gen_seconds / len(results):.2f} s/clip" if results else "n/a s/clip"
    print(f"sample.py: read {n_read} clips, wrote {len(results)}, skipped {len(skipped)}; "
          f"{args.sampler} {args.steps} steps, eta {args.eta:g}, guidance {args.guidance:g}, "
          f"seed {args.seed}, {weights_label(info)} weights of step {info['step']}; "
          f"{seconds:.1f} s ({per_clip}) -> {args.out_dir}")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
