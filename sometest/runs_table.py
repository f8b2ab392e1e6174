"""Markdown table of training runs from their train_log.csv: the conditioning gap at every validation
and the last validation's losses and training-time sample figures (RESULTS.md, issue 9).

    python sometest/runs_table.py runs/A runs/B ... [--names A B ...]

Columns: gap (val_loss_uncond - val_loss, x1000) at each validation after step 0, then at the last
validation: val_loss, val_loss_uncond, motion only, lyrics only, and the last sample event's
sample MSE / uncond MSE, beat alignment with the own / a shuffled motion, share of values outside
the real range, max band level error, and the samples' music-likeness (lm2a/musicality.py: harmonic
share / partials / chroma concentration) with the real clips' in brackets. A run still going shows its
latest rows.
"""
import argparse
import csv
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script

from lm2a.musicality import FIGURES as MUSIC_FIGURES  # noqa: E402


def read_rows(run_dir: Path):
    path = Path(run_dir) / "train_log.csv"
    if not path.is_file():
        raise SystemExit(f"runs_table.py: {path} not found (is {run_dir} a train.py --save_dir?)")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _f(row, key):
    value = (row or {}).get(key, "")
    return float(value) if value not in ("", None) else None


def run_summary(rows):
    """train_log rows -> dict of the figures the table shows (None where not logged yet)."""
    vals = [r for r in rows if r.get("val_loss")]
    samples = [r for r in rows if r.get("sample_mse")]
    last, last_s = (vals[-1] if vals else None), (samples[-1] if samples else None)
    return {
        "step": int(rows[-1]["step"]) if rows else 0,
        "gaps": [(int(r["step"]), _f(r, "cond_gap")) for r in vals if int(r["step"]) > 0],
        **{k: _f(last, k) for k in ("val_loss", "val_loss_uncond", "val_loss_motion_only",
                                     "val_loss_lyrics_only")},
        **{k: _f(last_s, k) for k in ("sample_mse", "sample_uncond_mse", "sample_beat_align",
                                       "sample_beat_align_shuffled", "sample_out_of_range",
                                       "sample_band_level_err", "sample_band_level_err_train")},
        "music": [_f(last_s, f"sample_{f}") for f in MUSIC_FIGURES],
        "music_real": [_f(last_s, f"sample_real_{f}") for f in MUSIC_FIGURES],
    }


def fmt(x, spec):
    return "" if x is None else format(x, spec)


def music_cell(s):
    if all(x is None for x in s.get("music", ())):
        return ""
    sample = " / ".join(fmt(x, ".2f") for x in s["music"])
    return sample + (" (" + " / ".join(fmt(x, ".2f") for x in s["music_real"]) + ")"
                     if any(x is not None for x in s["music_real"]) else "")


def table(names, summaries):
    head = ("| run | steps | gap x1000 at each validation | val_loss | uncond | motion only | lyrics only "
            "| sample MSE / uncond | beat align own / shuffled | outside real range "
            "| max band err (training mean's) | music: harmonic / partials / chroma (real clips') |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, s in zip(names, summaries):
        ref = "" if s["sample_band_level_err_train"] is None else f" ({s['sample_band_level_err_train']:.2f})"
        gaps = " ".join(f"{1000 * g:+.0f}" for _, g in s["gaps"] if g is not None)
        lines.append(
            f"| {name} | {s['step']} | {gaps} | {fmt(s['val_loss'], '.4f')} | {fmt(s['val_loss_uncond'], '.4f')} "
            f"| {fmt(s['val_loss_motion_only'], '.4f')} | {fmt(s['val_loss_lyrics_only'], '.4f')} "
            f"| {fmt(s['sample_mse'], '.2f')} / {fmt(s['sample_uncond_mse'], '.2f')} "
            f"| {fmt(s['sample_beat_align'], '.3f')} / {fmt(s['sample_beat_align_shuffled'], '.3f')} "
            f"| {fmt(None if s['sample_out_of_range'] is None else 100 * s['sample_out_of_range'], '.2f')} % "
            f"| {fmt(s['sample_band_level_err'], '.2f')}{ref} | {music_cell(s)} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="train.py --save_dir folders")
    p.add_argument("--names", nargs="*", help="row names (default: the folder names)")
    args = p.parse_args(argv)
    names = args.names or [r.name for r in args.runs]
    if len(names) != len(args.runs):
        raise SystemExit("runs_table.py: give one --names entry per run folder")
    print(table(names, [run_summary(read_rows(r)) for r in args.runs]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
