"""Stage 4: generate log-mel spectrograms from motion and lyrics with a trained checkpoint.

    python sample.py --ckpt checkpoints --npz_dir split/test --out_dir generated
    python sample.py --ckpt checkpoints/best.pt --npz split/test/song__00012000.npz --out_dir gen
    python sample.py --ckpt checkpoints --motion JustLMD/Songs_2021/x/smplfull.json \\
        --lyrics "text of the line" --start 12.0 --motion_t0 3.5 --out_dir gen
    python sample.py --ckpt checkpoints --song JustLMD/Songs_2021/x --out_dir gen      # whole dance
    python sample.py --ckpt checkpoints --motion x/smplfull.json --lyrics_json x/sliced.json \\
        [--start 20 --end 80] --out_dir gen                                              # whole dance, raw

The work is done by lm2a/generate.py (shared with val.py); this file is the command line.
Everything about the model (architecture, diffusion settings, normalisation, mel config, text
encoder) comes from the checkpoint; a folder means its newest checkpoint. Clips whose mel config or
text encoder differs from the checkpoint's are refused. Per clip it writes `<name>_gen.npz`
(generated raw log-mel (80, T), same convention as the clip's `mel`, plus the sampler settings,
seed, checkpoint and source provenance) and `<name>.png` (real above generated, one colour scale).

Whole dance (lm2a/longform.py): --song <song folder> (smplfull.json; sliced.json gives the line sung
in each window and motion frame 0 at its first key; audio.wav, when present, is only the reference),
or --motion smplfull.json with --lyrics_json sliced.json, --lyrics "one line" or neither (null lyric),
with --end, --full, or without --start. Overlapping 6 s windows, each next one continuing the previous
output (inpainting of the overlap; --crossfade S mixes the last S seconds of each overlap instead of
holding them, off by default: RESULTS.md): --overlap, --crossfade,
--no-continuation (independent windows, the naive concatenation). Writes <name>_full_gen.npz (the
whole mel (80, T), the window layout, settings, provenance) and <name>_full.png (generated above
real, window boundaries marked); testwav.py turns it into one wav. --batch_size = dances in parallel.

Clips longer than the model's window (--npz / --npz_dir; e.g. preprocess.py --clip_seconds 0 writes
one clip per whole AIST++ dance, 10-30 s): a clip more than a few frames longer than --window (6 s, the
model's clip length: the checkpoint does not record it) is generated the same way, in overlapping
windows each continuing the previous output, from the clip's own motion and lyric (lm2a.longform.
generate_clips); its <name>_gen.npz has the clip's mel length and also records the window layout
(window_starts, window_frames, ...). Clips up to the window's length are one network call, as before.

Determinism: every clip draws its noise (initial and, for DDPM / DDIM eta > 0, per step) from its
own CPU torch.Generator seeded by (--seed, clip name), so a clip's mel does not depend on which
other clips are in the folder, on --batch_size or on --max_clips, and re-runs are identical (on
CUDA the noise is the same numbers; the network's arithmetic may differ in the last bits).
Every sampling setting (models/diffusion.py SamplingConfig) is recorded in the generated npz (FORMATS.md).
--guidance: 1 = conditional only, 0 = unconditional (both conditions dropped), w = classifier-free
guidance eps_u + w (eps_c - eps_u) from one batched forward per step.

Exit codes: 0 done; 1 nothing generated; 2 bad flags or input (checkpoint, clips); 75 --out_dir is in
use by another run (its lock .lm2a.lock, lm2a/lock.py): the line names that run; wait, or if it is gone
remove the lock or pass --break_lock.
"""
import argparse
import sys
import time
from pathlib import Path

from lm2a.checkpoint import CheckpointError
from lm2a.clipio import list_clip_files
from lm2a.config import add_config_flags, add_sampling_flags, config_from_args, constants_for
from lm2a.device import pick_device, resolve_precision
from lm2a.generate import check_settings, describe_settings, load_clips, raw_item
from lm2a.lock import EXIT_FOLDER_IN_USE, FolderInUse, FolderLock, add_break_lock_flag
from lm2a.longform import (FULL_GEN_SUFFIX, LongformConfig, generate_clips, generate_dances, load_dance,
                           plot_longform, window_frames, write_longform)
from lm2a.timeline import MOTION_T0_RULES
from lm2a.trained import load_model
from models.diffusion import SamplingConfig

# ---- defaults (edit here or pass --flag) --------------------------------------------------------
CKPT = "checkpoints"           # checkpoint file, or a folder (its newest checkpoint)
NPZ_DIR = "split/test"         # clips to generate for (used when neither --npz nor --motion is given)
OUT_DIR = "generated"          # where <name>_gen.npz and <name>.png go
SAMPLER = "dpm++"              # "dpm++", "unipc", "ddim" or "ddpm" (BENCHMARKS.md: quality vs steps)
STEPS = 20                     # sampling steps (<= the checkpoint's diffusion timesteps)
ETA = 0.0                      # DDIM eta: 0 deterministic, 1 = DDPM-like noise
GUIDANCE = 2.0                 # classifier-free guidance: 1 cond only, 0 uncond only
PRECISION = "auto"             # network arithmetic: auto = bf16 where the device has it natively (BENCHMARKS.md), fp32, bf16
CLIP_X0 = 6.0                  # clip the predicted x0 to +-this (normalised units; 0 = off)
BATCH_SIZE = 8                 # clips per batch (guidance doubles the network batch)
SEED = 0                       # seeds the noise (one generator per clip, from seed and clip name)
DEVICE = "auto"                # auto, cpu, cuda, cuda:1
MAX_CLIPS = 0                  # generate for the first N clips only (0 = all)
SECONDS = 6.0                  # raw input: clip length (the model was trained on 6 s clips)
FPS = 30                       # raw input: motion frame rate of smplfull.json
MOTION_T0 = 0.0                # raw input: song time (s) of motion frame 0 (stage 1: first lyric key)
MOTION_T0_RULE = "first_lyric" # whole dance with a lyric timeline: motion frame 0 at its first key
WINDOW = 6.0                   # whole dance and longer clips: window length (s), the model's clip length
OVERLAP = 1.0                  # whole dance: overlap of consecutive windows (s)
CROSSFADE = 0.0                # whole dance: crossfade (s) at the end of each overlap (0: none, measured best)
CONTINUATION = True            # whole dance: each window continues the previous output (False: naive)
LYRIC_MIN = 0.5                # whole dance: a line conditions a window when sung >= this (s) in it
LYRIC_PICK = "all"             # whole dance: "all" lines sung in a window (joined) or the "longest"


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", default=CKPT, help="checkpoint file or folder (newest checkpoint)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--npz", help="one clip npz")
    src.add_argument("--npz_dir", help=f"a folder of clip npz files (default {NPZ_DIR})")
    src.add_argument("--motion", help="raw input: an EasyMocap smplfull.json (with --lyrics, --start) or an "
                                        "AIST++ motions/<sequence>.pkl (60 fps, resampled; frame 0 at 0 s)")
    src.add_argument("--song", nargs="+", metavar="SONG_DIR",
                     help="whole dance: JustLMD song folder(s) (smplfull.json, sliced.json, audio.wav)")
    p.add_argument("--lyrics", help="raw input: the lyric line sung in the clip (whole dance: in every window)")
    p.add_argument("--lyrics_json", help="whole dance, raw input: a sliced.json lyric timeline")
    p.add_argument("--audio", help="whole dance, raw input: the real audio.wav (reference only)")
    p.add_argument("--start", type=float, help="raw input: clip start in song time (s); whole dance: span start")
    p.add_argument("--end", type=float, help="whole dance: span end in song time (s) (default: end of the motion)")
    p.add_argument("--full", action="store_true",
                   help="whole dance for --motion even with --start and no --end (from --start to the end)")
    p.add_argument("--name", help="whole dance: output name (default: the song folder's name)")
    p.add_argument("--motion_t0", type=_motion_t0,
                   help=f"song time (s) of motion frame 0, or a rule {MOTION_T0_RULES} (default: raw clip "
                        f"{MOTION_T0}; whole dance {MOTION_T0_RULE} with a lyric timeline, else 0)")
    p.add_argument("--seconds", type=float, default=SECONDS, help="raw input: clip length (s)")
    p.add_argument("--fps", type=int, default=FPS, help="raw input: motion frame rate")
    p.add_argument("--out_dir", default=OUT_DIR)
    p.add_argument("--max_clips", type=int, default=MAX_CLIPS, help="first N clips only (0 = all)")
    p.add_argument("--no_png", action="store_true", help="skip the per-clip png")
    add_break_lock_flag(p)
    add_sampling_flags(p, globals())
    add_config_flags(p, LongformConfig, constants_for(LongformConfig, globals()),
                     title="whole dance, and clips longer than --window")
    return p


def _motion_t0(text):
    if text in MOTION_T0_RULES:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: seconds, or one of {MOTION_T0_RULES}")


def whole_dance_mode(args):
    """--song, --lyrics_json, --end, --full, or --motion without --start: one mel for the whole dance."""
    return bool(args.song or args.lyrics_json or args.end is not None or args.full or
                (args.motion is not None and args.start is None))


def load_dances(args, info, longform):
    """The dances of --song folders or of the raw --motion input (lm2a.longform.load_dance)."""
    if args.motion is not None:
        return [load_dance(info, args.motion, lyrics_json=args.lyrics_json, lyric_text=args.lyrics,
                           start_s=args.start, end_s=args.end, motion_t0=args.motion_t0, fps=args.fps,
                           audio_path=args.audio, name=args.name, config=longform)]
    dances = []
    for song in args.song:
        d = Path(song)
        for f in ("smplfull.json", "sliced.json"):
            if not (d / f).is_file():
                raise FileNotFoundError(f"{d}: no {f} (a JustLMD song folder holds smplfull.json, sliced.json "
                                        f"and audio.wav)")
        name = args.name if args.name and len(args.song) == 1 else None
        dances.append(load_dance(info, d / "smplfull.json", lyrics_json=d / "sliced.json", start_s=args.start,
                                 end_s=args.end, motion_t0=MOTION_T0_RULE if args.motion_t0 is None else args.motion_t0, fps=args.fps,
                                 audio_path=d / "audio.wav", name=name, config=longform))
    return dances


def run_whole_dance(args, settings, diffusion, info, t_start):
    """Whole-dance generation: <name>_full_gen.npz and <name>_full.png per dance. -> exit code."""
    longform = config_from_args(LongformConfig, args)
    dances = load_dances(args, info, longform)
    t_gen = time.perf_counter()
    results = generate_dances(diffusion, info, dances, settings, longform, progress=not args.quiet)
    gen_seconds = time.perf_counter() - t_gen
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hop_s = info.mel_config.hop_seconds
    for dance, res in zip(dances, results):
        path = write_longform(out / f"{dance['name']}{FULL_GEN_SUFFIX}.npz", dance, res, info, settings, longform)
        if not args.no_png:
            plan = dance["plan"]
            plot_longform(out / f"{dance['name']}_full.png", res["mel"], dance["real_mel"], plan["starts"],
                          plan["joins"], hop_s, dance["meta"]["start_s"],
                          title=f"{dance['name']} {dance['meta']['start_s']:.2f}-{dance['meta']['end_s']:.2f} s: "
                                f"{len(plan['starts'])} windows, overlap {longform.overlap:g} s, crossfade "
                                f"{longform.crossfade:g} s, {'continuation' if longform.continuation else 'independent'}; "
                                f"{describe_settings(settings)}, step {info.step}")
        if not args.quiet:
            print(f"sample.py: {path}")
    n_windows = sum(len(d["plan"]["starts"]) for d in dances)
    seconds = sum(d["n_frames"] for d in dances) * hop_s
    per_window = f"{gen_seconds / n_windows:.2f} s/window" if n_windows else "n/a"
    print(f"sample.py: whole dance: {len(dances)} dance(s), {seconds:.1f} s of mel, {n_windows} windows "
          f"(overlap {longform.overlap:g} s, crossfade {longform.crossfade:g} s, "
          f"{'continuation' if longform.continuation else 'independent windows'}); {describe_settings(settings)}, "
          f"{info.weights_label} weights of step {info.step}; {time.perf_counter() - t_start:.1f} s "
          f"({per_window}) -> {out}")
    return 0 if results else 1


def load_items(args, info, device):
    """-> (items, number of inputs read, skipped [(path, reason)]) for --npz / --npz_dir / --motion."""
    if args.motion is not None:
        return [raw_item(info, args.motion, args.lyrics, args.start, args.seconds, args.fps,
                         args.motion_t0, device)], 1, []
    paths = [Path(args.npz)] if args.npz else list_clip_files(args.npz_dir or NPZ_DIR)
    if args.npz and not paths[0].is_file():
        raise FileNotFoundError(f"{paths[0]}: no such clip file")
    if args.max_clips > 0:
        paths = paths[:args.max_clips]
    items, skipped = load_clips(paths, info)
    return items, len(paths), skipped


def usage_error(args, whole):
    """-> the message for flags that do not go together, or None. Sets the raw clip's motion_t0."""
    if whole:
        if args.song and (args.lyrics is not None or args.lyrics_json or args.audio):
            return ("--song reads the lyrics and audio of the song folder: --lyrics, --lyrics_json and --audio go "
                    "with --motion")
        if args.song is None and args.motion is None:
            return "whole dance: give --song SONG_DIR or --motion smplfull.json"
        if args.lyrics is not None and args.lyrics_json:
            return "give --lyrics_json (a timeline) or --lyrics (one line for every window), not both"
    raw = args.motion is not None and not whole
    if args.motion_t0 is None and not whole:
        args.motion_t0 = MOTION_T0  # whole dance: None = the rule of the lyric timeline (load_dance)
    elif raw and isinstance(args.motion_t0, str):
        return (f"--motion_t0 {args.motion_t0}: a raw clip has no lyric timeline; give the song time (s) of "
                f"motion frame 0")
    if raw and (args.lyrics is None or args.start is None):
        return "--motion needs --lyrics TEXT and --start SECONDS"
    if not raw and not whole and (args.lyrics is not None or args.start is not None):
        return "--lyrics and --start go with --motion (raw input)"
    return None


def report_skipped(skipped, shown=5):
    for _, reason in skipped[:shown]:  # every reason starts with the file name
        print(f"sample.py: skipped {reason}", file=sys.stderr)
    if len(skipped) > shown:
        print(f"sample.py: ... and {len(skipped) - shown} more skipped clips", file=sys.stderr)


def windowed_part(results, longform, info):
    """'; 2 clips longer than the 516-frame window generated in 9 windows (overlap 1 s)', or ''."""
    plans = [r["plan"] for r in results if "plan" in r]
    if not plans:
        return ""
    return (f"; {len(plans)} clip(s) longer than the {window_frames(info.mel_config, longform)}-frame window "
            f"generated in {sum(len(p['starts']) for p in plans)} windows (overlap {longform.overlap:g} s)")


def run_clips(args, settings, diffusion, info, items, n_read, skipped, t_start):
    """Generation for clips (--npz, --npz_dir, raw --motion): <name>_gen.npz + png; a clip longer than
    the model's window (--window) in windows (lm2a.longform.generate_clips). -> exit code."""
    report_skipped(skipped)
    longform = config_from_args(LongformConfig, args)
    t_gen = time.perf_counter()
    results = generate_clips(diffusion, info, items, settings, longform, args.out_dir, png=not args.no_png,
                             progress=not args.quiet, step_progress=not args.quiet)
    gen_seconds = time.perf_counter() - t_gen
    per_clip = f"{gen_seconds / len(results):.2f} s/clip" if results else "n/a s/clip"
    print(f"sample.py: read {n_read} clips, wrote {len(results)}, skipped {len(skipped)}"
          f"{windowed_part(results, longform, info)}; "
          f"{describe_settings(settings)}, {info.weights_label} weights of step {info.step}; "
          f"{time.perf_counter() - t_start:.1f} s ({per_clip}) -> {args.out_dir}")
    return 0 if results else 1


def main(argv=None):
    t_start = time.perf_counter()
    err = lambda msg: print(f"sample.py: error: {msg}", file=sys.stderr)  # noqa: E731
    try:
        args = build_parser().parse_args(argv)
        settings = config_from_args(SamplingConfig, args)
        whole = whole_dance_mode(args)
        config_from_args(LongformConfig, args)  # checks the window settings before loading anything
    except ValueError as e:
        err(str(e))
        return 2
    problem = usage_error(args, whole)
    if problem:
        err(problem)
        return 2
    try:
        with FolderLock(args.out_dir, "sample.py", args.break_lock):
            return generate(args, settings, whole, t_start, err)
    except FolderInUse as e:
        print(e, file=sys.stderr)
        return EXIT_FOLDER_IN_USE


def generate(args, settings, whole, t_start, err):
    """Loads the model and generates (main(), holding --out_dir's lock). -> exit code."""
    device = pick_device(args.device)
    try:
        diffusion, info = load_model(args.ckpt, device, use_ema=not args.no_ema)
        settings = resolve_precision(settings, device)
        problem = check_settings(settings, info)
        if problem:
            raise ValueError(problem)
        if not args.quiet:
            print(f"sample.py: {info.description} Using {info.weights_label} weights on {device}.")
        if whole:
            return run_whole_dance(args, settings, diffusion, info, t_start)
        items, n_read, skipped = load_items(args, info, device)
    except (FileNotFoundError, CheckpointError, RuntimeError, ValueError, OSError) as e:
        err(str(e))
        return 2
    return run_clips(args, settings, diffusion, info, items, n_read, skipped, t_start)


if __name__ == "__main__":
    sys.exit(main())
