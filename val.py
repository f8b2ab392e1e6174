"""Stage 5: evaluate generated log-mels against the real ones of a split, with reference rows.

    python val.py --ckpt checkpoints --npz_dir split/test --out_dir val
    python val.py --npz_dir split/test --gen_dir generated --out_dir val   # already generated

Generates through lm2a/generate.py (written to OUT/generated/, plus OUT/generated_uncond/ for
the unconditional reference; each clip file is read once), or reads `<name>_gen.npz` from --gen_dir, matched by name to the real
clips. Per clip, on the mels (lm2a.metrics.clip_metrics): MSE, SSIM, frame-wise cosine, mean and
std of the error, SNR, log-spectral distance, onset precision/recall/F1 (50 ms) and motion-audio
beat alignment (motion beats vs onsets of the generated mel, sigma 0.1 s). On waveforms, as the
dance-to-music papers compute them (lm2a.rhythm, sources in summary.json's rhythm_sources): the
real, generated and uncond mels are vocoded once each with ONE vocoder (--vocoder: Griffin-Lim by
default, a BigVGAN folder when given), written to OUT/audio/<real|generated|uncond>/<name>.wav and
read back; D2M-GAN BCS/BHS, LORIS cover/hit/F1 (1 s and 0.2 s bins) and AIST++ BAS are computed on
those files (--no_audio_metrics skips this).

Rows of per_clip.csv (`row` column), so that the numbers can be read:
  model     generated vs real (audio and mel); beat scores against the clip's own motion. Also
            beat_align_shuffled and beat_align_real: the beat_align of the shuffled and real rows
  uncond    the same generation with both conditions dropped (guidance 0, same seed and batches)
  chance    real vs a different real clip (`paired_with`), from another song where possible; its
            beat scores are the other clip's audio against this clip's motion
  shuffled  the generated audio scored against the clip in `paired_with` (its real audio and its
            motion): what the generation gets against a dance and song it was not made for
  real      the real audio against its own motion (beat scores only; the onset scores of real
            against itself are 1 by construction): the ceiling
Set level: Fréchet distance between Gaussians of the real and generated mel frames; its floor is
`real_split_half` (two halves of the real set against each other); a permutation of the real set
(chance) has exactly the real statistics, so chance has no Fréchet distance. On songs the model has not
seen its other reference is `real_other_songs`: the real clips of other songs (--other_songs_dir, by
default the split's train folder beside --npz_dir, its clips of the evaluated songs left out) against
the real set, the distance of music like the training songs' that cannot know these songs (RESULTS.md,
issue 20: 140 on 4 held-out songs whose split halves score 8).
Music-likeness (lm2a/musicality.py), per clip in the model, uncond, chance and real rows, each of its
own mel: harmonic_share (HPSS energy share), partials (energy share of spectral peaks held 8 frames
or more) and chroma_concentration (pitch classes over 0.5 s); noise textures with onset stripes score
low on all three. summary.json's music_likeness puts their means for real, model, uncond and chance
beside the Fréchet distances, and the summary line and report.html show them beside the real row.

Writes per_clip.csv, summary.json (mean/std/median of every metric per row, the rhythm scores as the
papers summarise them, Fréchet distances, music-likeness, counts, settings, seeds), report.html (lm2a/report.py:
tables, audio players, mels, cross-attention maps, settings), mel_pairs.png, metrics_bars.png and
hist_metrics.png to --out_dir, and with the waveform metrics field_table.md (lm2a/fieldtable.py): the rhythm
rows as the papers print them (BCS/BHS, cover/CSD/hit/HSD/F1 at 1 s bins, the 0.2 s variant, BAS) under
the protocol they hold for (clip length, split from split.json above --npz_dir, vocoder, onset settings),
Markdown ready for a paper, also in summary.json's "field_table" and report.html. The work is in
lm2a/evaluation.py; this file is its command line.

Whole sequences (e.g. preprocess.py --clip_seconds 0: one clip per whole AIST++ dance, 10-30 s): a clip
more than a few frames longer than --window (the model's clip length, 6 s; the checkpoint does not record
it) is generated in overlapping windows, each continuing the previous output (lm2a/longform.py, as
sample.py does), and scored per sequence (the rows above, on the whole mel and audio) and per window:
every clip's real and generated mels and audio cut into consecutive --window windows (a last piece
shorter than half a window dropped), each scored like a clip: summary.json's "per_window" (rows, rhythm),
per_window.csv, field_table_per_window.md, a section of report.html and a part of the summary line.

Exit codes: 0 done; 2 bad input (checkpoint, clips, settings); 75 --out_dir is in use by another run
(its lock .lm2a.lock, lm2a/lock.py): the line names that run; wait, or if it is gone remove the lock or
pass --break_lock.
"""
import argparse
import math
import sys
from pathlib import Path

from lm2a.config import add_config_flags, add_sampling_flags, config_from_args, constants_for
from lm2a.evaluation import EvalOptions, evaluate
from lm2a.lock import EXIT_FOLDER_IN_USE, FolderInUse, FolderLock, add_break_lock_flag
from lm2a.longform import LongformConfig
from lm2a.musicality import FIGURES as MUSIC_FIGURES
from models.diffusion import SamplingConfig

# ---- defaults (edit here or pass --flag) --------------------------------------------------------
CKPT = "checkpoints"           # checkpoint file or folder (newest); optional with --gen_dir
NPZ_DIR = "split/test"         # real clips to evaluate against
OUT_DIR = "val"                # csv, json and plots go here
MAX_SAMPLES = 0                # evaluate the first N clips only (0 = all)
GEN_DIR = ""                   # read <name>_gen.npz from here instead of generating ("" = generate)
SAMPLER = "dpm++"              # "dpm++", "unipc", "ddim" or "ddpm"
STEPS = 20                     # sampling steps
GUIDANCE = 2.0                 # classifier-free guidance weight of the model row
PRECISION = "auto"             # network arithmetic: auto = bf16 where the device has it natively (BENCHMARKS.md), fp32, bf16
SEED = 0                       # noise seed (model and uncond rows) and seed of the chance pairing
DEVICE = "auto"                # auto, cpu, cuda
PLOT_CLIPS = 4                 # clips shown in mel_pairs.png
VOCODER = ""                   # BigVGAN folder for the waveform metrics ("" = Griffin-Lim)
GL_ITERS = 64                  # Griffin-Lim iterations
REPORT_CLIPS = 8               # clips shown (and playable) in report.html
REPORT_VIDEOS = True           # an MP4 of each shown clip (the dancer with the generated audio) linked in report.html
ATTENTION_CLIPS = 2            # clips with cross-attention maps in report.html
ATTENTION_LAYER = ""           # cross-attention block to draw ("" = lm2a.report.default_attention_layer)
OTHER_SONGS_DIR = "auto"       # real clips of other songs, the Fréchet reference ("auto" = the train folder beside --npz_dir, "" = none)
WINDOW = 6.0                   # the model's clip length (s): longer clips are generated in windows and scored per window too
OVERLAP = 1.0                  # longer clips: overlap of consecutive windows (s)
CROSSFADE = 0.0                # longer clips: crossfade (s) at the end of each overlap (0: none, measured best)
CONTINUATION = True            # longer clips: each window continues the previous output (False: naive)
LYRIC_MIN = 0.5                # (lyric timelines only; a clip has one lyric, in every window)
LYRIC_PICK = "all"             # (lyric timelines only)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", default=CKPT, help="checkpoint file or folder; with --gen_dir only "
                                                "needed for the uncond row")
    p.add_argument("--npz_dir", default=NPZ_DIR, help="real clips (a split folder)")
    p.add_argument("--out_dir", default=OUT_DIR)
    p.add_argument("--max_samples", type=int, default=MAX_SAMPLES, help="first N clips (0 = all)")
    p.add_argument("--other_songs_dir", default=OTHER_SONGS_DIR,
                   help='real clips of other songs: their Fréchet distance to the real set is the reference of a model '
                        'that cannot know the evaluated songs ("auto" = the train folder beside --npz_dir, "" = none)')
    p.add_argument("--gen_dir", default=GEN_DIR, help="read <name>_gen.npz from here instead of generating")
    p.add_argument("--no_references", action="store_true",
                   help="model row only (no uncond / chance / shuffled / real rows)")
    p.add_argument("--vocoder", default=VOCODER, help="BigVGAN folder, name or hub id for the waveform "
                                                      "metrics and report audio (\"\" = Griffin-Lim)")
    p.add_argument("--gl_iters", type=int, default=GL_ITERS, help="Griffin-Lim iterations")
    p.add_argument("--no_audio_metrics", action="store_true",
                   help="no vocoding: no waveform (rhythm) metrics, no audio in report.html")
    p.add_argument("--report_clips", type=int, default=REPORT_CLIPS, help="clips shown in report.html")
    p.add_argument("--no_report_videos", dest="report_videos", action="store_false", default=REPORT_VIDEOS,
                   help="no MP4 of the shown clips (report/video/<name>.mp4)")
    p.add_argument("--attention_clips", type=int, default=ATTENTION_CLIPS,
                   help="clips with cross-attention maps in report.html (needs --ckpt)")
    p.add_argument("--attention_layer", default=ATTENTION_LAYER,
                   help="cross-attention block to draw, e.g. up.1.attn (\"\" = highest-resolution up block)")
    p.add_argument("--plot_clips", type=int, default=PLOT_CLIPS, help="clips shown in mel_pairs.png")
    add_break_lock_flag(p)
    add_sampling_flags(p, globals())
    add_config_flags(p, LongformConfig, constants_for(LongformConfig, globals()),
                     title="clips longer than --window (generated in windows, scored per window too)")
    return p


def _fmt(x, spec=".3f"):
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def summary_line(summary, out_dir):
    rows = summary["rows"]

    def mean(kind, key):
        return rows.get(kind, {}).get("metrics", {}).get(key, {}).get("mean")

    ba, fd, n = summary["beat_alignment"], summary["frechet"], summary["counts"]
    return (f"val.py: evaluated {n['clips_evaluated']} clips of {n['clips_listed']} "
            f"({n['clips_skipped']} skipped); MSE model {_fmt(mean('model', 'mse'))} / uncond "
            f"{_fmt(mean('uncond', 'mse'))} / chance {_fmt(mean('chance', 'mse'))}; onset F1 model "
            f"{_fmt(mean('model', 'onset_f1'))} / uncond {_fmt(mean('uncond', 'onset_f1'))} / chance "
            f"{_fmt(mean('chance', 'onset_f1'))}; beat alignment model {_fmt(ba['model'])} / uncond "
            f"{_fmt(ba['uncond'])} / chance {_fmt(ba['chance'])} / shuffled {_fmt(ba['shuffled'])} / "
            f"real {_fmt(ba['real'])}; Fréchet model {_fmt(fd['model'], '.2f')} (real split-half "
            f"{_fmt(fd['real_split_half'], '.2f')}{other_songs_part(fd)}){music_line(summary)}{rhythm_line(summary)}"
            f"{per_window_part(summary)}; {summary['seconds']['total']:.1f} s "
            f"-> {Path(out_dir) / summary['report']}{field_table_part(summary, out_dir)}")


def field_table_part(summary, out_dir):
    """', <OUT>/field_table.md (the papers' table)', or why there is none."""
    name = summary.get("field_table_file")
    if name:
        return f", {Path(out_dir) / name} (the papers' table)"
    return f"; {summary['field_table_skipped']}" if summary.get("field_table_skipped") else ""


def per_window_part(summary):
    """'; per window (5.99 s, 9 windows of 3 sequences): MSE model x / chance y; onset F1 ...; LORIS F1
    (0.2 s) ...', or '' when no clip is longer than the window."""
    pw = summary.get("per_window")
    if not pw:
        return ""

    def mean(kind, key):
        return pw["rows"].get(kind, {}).get("metrics", {}).get(key, {}).get("mean")
    kinds = [k for k in ("model", "uncond", "chance") if k in pw["rows"]]
    part = (f"; per window ({pw['window_s']:.2f} s, {pw['windows']} windows of {pw['clips']} clips, "
            f"{pw['sequences']} longer than a window): MSE " + " / ".join(f"{k} {_fmt(mean(k, 'mse'))}" for k in kinds)
            + "; onset F1 " + " / ".join(f"{k} {_fmt(mean(k, 'onset_f1'))}" for k in kinds))
    rhythm = pw.get("rhythm") or {}
    f1 = " / ".join(f"{k} {_fmt(rhythm[k]['f1_loris_5hz']['mean'])}" for k in ("model", "uncond", "chance", "shuffled")
                    if k in rhythm)
    return part + (f"; LORIS F1 (0.2 s) {f1}" if f1 else "")


def other_songs_part(frechet):
    value = frechet.get("real_other_songs")
    return "" if value is None else f", real clips of other songs {_fmt(value, '.2f')}"


def music_line(summary):
    """'; music-likeness (harmonic share / partials / chroma) real a / b / c, model ..., uncond ...'."""
    table = summary.get("music_likeness") or {}
    rows = ", ".join(f"{kind} " + " / ".join(_fmt(table[kind][k]) for k in MUSIC_FIGURES)
                     for kind in ("real", "model", "uncond") if kind in table)
    return f"; music-likeness (harmonic share / partials / chroma) {rows}" if rows else ""


def rhythm_line(summary):
    """'; on audio (vocoder): BAS model x / shuffled y / real z; LORIS F1 0.2 s model ... / chance ...'."""
    rhythm = summary.get("rhythm")
    if not rhythm:
        return ""

    def mean(kind, key):
        return rhythm.get(kind, {}).get(key, {}).get("mean")
    bas = " / ".join(f"{k} {_fmt(mean(k, 'bas_aist'))}" for k in ("model", "shuffled", "real") if k in rhythm)
    f1 = " / ".join(f"{k} {_fmt(mean(k, 'f1_loris_5hz'))}" for k in ("model", "uncond", "chance", "shuffled")
                    if k in rhythm)
    return f"; on {summary['audio']['vocoder']} audio: BAS {bas}; LORIS F1 (0.2 s) {f1}"


def options_from_args(args):
    """The library's options from the parsed flags (the sampling ones go in a SamplingConfig)."""
    return EvalOptions(npz_dir=args.npz_dir, out_dir=args.out_dir, ckpt=args.ckpt, gen_dir=args.gen_dir,
                       max_samples=args.max_samples, references=not args.no_references,
                       audio_metrics=not args.no_audio_metrics, vocoder=args.vocoder, gl_iters=args.gl_iters,
                       report_clips=args.report_clips, attention_clips=args.attention_clips,
                       attention_layer=args.attention_layer, plot_clips=args.plot_clips, use_ema=not args.no_ema,
                       device=args.device, progress=not args.quiet, other_songs_dir=args.other_songs_dir,
                       longform=config_from_args(LongformConfig, args), report_videos=args.report_videos)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:   # CheckpointError and MelConfigError are ValueErrors (and LongformConfig's checks)
        options, sampling = options_from_args(args), config_from_args(SamplingConfig, args)
        with FolderLock(args.out_dir, "val.py", args.break_lock):
            summary = evaluate(options, sampling)
    except FolderInUse as e:
        print(e, file=sys.stderr)
        return EXIT_FOLDER_IN_USE
    except (ValueError, FileNotFoundError) as e:
        print(f"val.py: error: {e}", file=sys.stderr)
        return 2
    for note in summary["notes"]:
        print(f"val.py: note: {note}", file=sys.stderr)
    for s in summary["skipped"][:5]:
        print(f"val.py: skipped {s['reason']}", file=sys.stderr)
    print(summary_line(summary, args.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
