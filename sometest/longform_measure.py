"""Seam continuity and beat alignment of whole-dance generations (sample.py --song, issue 12).

    python sometest/longform_measure.py --run continuation=gen_cont --run naive=gen_naive [--run ...] \\
        [--other_motion JustLMD/Songs_2021/y/smplfull.json ...] [--json out.json]

Each --run LABEL=FOLDER holds <song>_full_gen.npz files; songs are matched by file name across runs.

Seam ratio (lm2a.longform.seam_ratio): mean frame-to-frame log-mel change (L1, mean over bands) at
the joins / the same elsewhere, per song at the file's own joins (join_frames), then averaged over
songs. Reference: the real mel (real_mel, the song's audio) at the joins of the first run (the real
song's own ratio), and averaged over that join grid shifted to every offset within one stride (the
real song's expected ratio, ~1: music has no seams; the 5-95 % range of the shifts says how noisy
one grid's ratio is). Beat alignment (lm2a.metrics): motion beats of the whole dance (the file's
`motion`) vs onsets of the mel; controls: the same onsets against the motion shifted circularly by
1/4, 1/2, 3/4 of its length, and against other dances' motion (--other_motion: every other song's
smplfull.json over the time both cover). Prints markdown tables.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lm2a.longform import FULL_GEN_SUFFIX, SEAM_WIDTH, seam_ratio  # noqa: E402
from lm2a.melconfig import MelConfig  # noqa: E402
from lm2a.metrics import audio_beats, beat_alignment, motion_beats  # noqa: E402
from lm2a.motion import song_motion  # noqa: E402


def load(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def motion_of(smpl_json, fps=30):
    """(frames, 234) features of a whole dance (lm2a.motion.song_motion, features over all frames)."""
    motion = song_motion(smpl_json)
    return motion.span_features(0, len(motion), fps)[0]


def beat_scores(mel, motion, fps, mel_config, others=()):
    """-> dict(true, shifted (mean over 3 circular shifts), other (mean over other dances or nan))."""
    onsets = audio_beats(mel, mel_config)
    true = beat_alignment(motion_beats(motion, fps), onsets)
    shifted = [beat_alignment(motion_beats(np.roll(motion, int(f * len(motion)), axis=0), fps), onsets)
               for f in (0.25, 0.5, 0.75)]
    other = []
    for m in others:  # another dance, over the time both cover
        n = min(len(m), len(motion))
        other.append(beat_alignment(motion_beats(m[:n], fps), onsets[onsets < n / fps]))
    return dict(true=true, shifted=float(np.nanmean(shifted)), other=float(np.nanmean(other)) if other else np.nan)


def measure_file(z, joins, width, others, fps, mel_config, mel_key="mel"):
    mel = z[mel_key]
    joins = [j for j in joins if j < mel.shape[1]]
    motion = z["motion"][:int(round(mel.shape[1] * mel_config.hop_size / mel_config.sampling_rate * fps))]
    beats = beat_scores(mel, motion, fps, mel_config, others)
    return dict(seam=seam_ratio(mel, joins, width), seam_w0=seam_ratio(mel, joins, 0), joins=len(joins),
                beat_true=beats["true"], beat_shifted=beats["shifted"], beat_other=beats["other"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", action="append", required=True, metavar="LABEL=FOLDER",
                   help="a folder of _full_gen.npz files (the first run gives the real song's reference)")
    p.add_argument("--other_motion", nargs="*", default=[], help="smplfull.json of the dances (shuffled motion: "
                                                                "each song is scored against the others)")
    p.add_argument("--width", type=int, default=SEAM_WIDTH, help="transitions on each side of a join")
    p.add_argument("--json", help="write the numbers here too")
    args = p.parse_args(argv)

    runs = [tuple(r.split("=", 1)) for r in args.run]
    songs = sorted(f.name[:-len(f"{FULL_GEN_SUFFIX}.npz")] for f in Path(runs[0][1]).glob(f"*{FULL_GEN_SUFFIX}.npz"))
    motions = {Path(m).parent.name: motion_of(m) for m in args.other_motion}
    table = {}
    for song in songs:
        others = [m for name, m in motions.items() if name != song]
        for label, row in measure_song(song, runs, others, args.width):
            table.setdefault(label, {})[song] = row
    print_tables(table, songs, runs, args.width)
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2, default=float))
    return 0


def measure_song(song, runs, others, width):
    """-> [(row label, row)] of one song: each run that has it, and the real song's reference when the
    first run's file holds the real mel."""
    ref = load(Path(runs[0][1]) / f"{song}{FULL_GEN_SUFFIX}.npz")
    fps, cfg = int(ref["fps"]), MelConfig.parse(ref["mel_config"])
    rows = []
    for label, folder in runs:
        path = Path(folder) / f"{song}{FULL_GEN_SUFFIX}.npz"
        if path.is_file():
            z = load(path)
            row = measure_file(z, [int(j) for j in z["join_frames"]], width, others, fps, cfg)
            row.update(windows=len(z["window_starts"]), overlap=float(z["overlap"]),
                       crossfade=float(z["crossfade"]), continuation=bool(z["continuation"]))
            rows.append((label, row))
    if "real_mel" in ref:
        joins = [int(j) for j in ref["join_frames"]]
        row = measure_file(ref, joins, width, others, fps, cfg, mel_key="real_mel")
        stride = int(np.diff(ref["window_starts"]).max()) if len(joins) else 1
        real = ref["real_mel"]
        shifted = [seam_ratio(real, [j + d for j in joins if 0 < j + d < real.shape[1]], width)
                   for d in range(-(stride // 2), stride - stride // 2)]
        row.update(windows=0, seam_all_shifts=float(np.nanmean(shifted)),
                   seam_shift_p5=float(np.nanpercentile(shifted, 5)),
                   seam_shift_p95=float(np.nanpercentile(shifted, 95)))
        rows.append(("real song", row))
    return rows


def print_tables(table, songs, runs, width):
    def mean(label, key):
        return float(np.nanmean([r[key] for r in table[label].values()]))

    print(f"songs: {', '.join(songs)}\n")
    print(f"| row | songs | joins | seam ratio (±{width} frames) | per song | seam ratio (join frame only) | "
          f"beat align: true motion | shifted motion | other dances' motion |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, rows in table.items():
        per_song = " / ".join(f"{r['seam']:.2f}" for r in rows.values())
        print(f"| {label} | {len(rows)} | {sum(r['joins'] for r in rows.values())} | {mean(label, 'seam'):.3f} | "
              f"{per_song} | {mean(label, 'seam_w0'):.3f} | {mean(label, 'beat_true'):.3f} | "
              f"{mean(label, 'beat_shifted'):.3f} | {mean(label, 'beat_other'):.3f} |")
    if "real song" in table:
        print(f"\nreal song, the join grid of '{runs[0][0]}' shifted to every offset within a stride: mean seam "
              f"ratio {mean('real song', 'seam_all_shifts'):.3f} (per song 5-95 %: " +
              ", ".join(f"{r['seam_shift_p5']:.2f}-{r['seam_shift_p95']:.2f}" for r in table["real song"].values())
              + ")")


if __name__ == "__main__":
    sys.exit(main())
