"""The field's table: val.py's rhythm scores as the dance-to-music papers print them, in Markdown.

    protocol = protocol_from(npz_dir, clips, summary)   # reads split.json beside npz_dir
    text = field_table(summary, protocol)               # pure: no I/O

One row per reference row present (LM2A, unconditional, chance, shuffled motion, real audio);
columns D2M-GAN's BCS / BHS and LORIS's Cover / CSD / Hit / HSD / F1 at the published 1 s bins (F1 as
LORIS prints it: the F1 of the mean cover and the mean hit, lm2a.rhythm.summarize_rhythm's
'of_means'; CSD / HSD: the std over clips, ddof 1), then LORIS's cover / hit / F1 at 0.2 s bins,
labelled as the finer variant, and the AIST++ beat alignment score BAS. Above the table the protocol
(clip length, clips and songs, split, vocoder, onset settings), because a published row may only
stand beside these when its protocol is the same. Percent with one decimal (as LORIS's tables print
them), BAS as a fraction with 4 decimals (as AIST++ / FACT print it). The real row's onset scores are
real audio against itself, 1 by construction, and are marked so.
"""
import json
import math
from pathlib import Path

from lm2a.rhythm import (BAS_SIGMA_FRAMES, BIN_RATES, D2M_PEAKS, LORIS_PEAKS, ONSET_PAD_MODE, PAPER_ONSET_HOP,
                         PAPER_SR, RHYTHM_KEYS, aist_order)

FIELD_TABLE_FILE = "field_table.md"
SPLIT_FILE = "split.json"           # newsplit_npz.py's record, in the folder above the set's folder
ROWS = {"model": "LM2A",
        "uncond": "LM2A, unconditional (guidance 0)",
        "chance": "chance (another real clip)",
        "shuffled": "shuffled motion (LM2A vs another clip)",
        "real": "real audio"}
PUBLISHED = next(k for k, rate in BIN_RATES.items() if rate == 1)   # the papers' 1 s bins
FINER = next(k for k, rate in BIN_RATES.items() if rate > 1)        # later work's finer bins
FINER_S = 1 / BIN_RATES[FINER]
BAS_KEY = "bas_aist"
# (rhythm key, statistic of summarize_rhythm, header); every onset column but BAS is printed in percent
COLUMNS = ((f"bcs_d2m_{PUBLISHED}", "mean", "BCS"), (f"bhs_d2m_{PUBLISHED}", "mean", "BHS"),
           (f"cover_loris_{PUBLISHED}", "mean", "Cover"), (f"cover_loris_{PUBLISHED}", "std", "CSD"),
           (f"hit_loris_{PUBLISHED}", "mean", "Hit"), (f"hit_loris_{PUBLISHED}", "std", "HSD"),
           (f"f1_loris_{PUBLISHED}", "of_means", "F1"),
           (f"cover_loris_{FINER}", "mean", f"Cover ({FINER_S:g} s bins)"),
           (f"hit_loris_{FINER}", "mean", f"Hit ({FINER_S:g} s bins)"),
           (f"f1_loris_{FINER}", "of_means", f"F1 ({FINER_S:g} s bins)"),
           (BAS_KEY, "mean", "BAS"))
assert all(key in RHYTHM_KEYS for key, _, _ in COLUMNS)
UNDEFINED = "—"
BY_CONSTRUCTION = "†"
SPLIT_PRESETS = {"aistpp": "AIST++ music-held-out test set, no test music in training",
                 "aistpp-random": "AIST++ random sequences, music ids leak between train and test"}
SPLIT_BY = {"song": "by song (no song in two sets)", "clip": "random clips (songs leak between sets)",
            "sequence": "by sequence"}


# ---- protocol (reads split.json) --------------------------------------------------------------
def read_split(npz_dir):
    """What the table says of the split, from split.json in the folder above npz_dir -> dict(file,
    set, preset, by, seed, set_clips, set_songs, leaks) or dict(file, set, missing / unreadable)."""
    here = Path(npz_dir).resolve()
    path = here.parent / SPLIT_FILE
    out = {"file": str(path), "set": here.name}
    if not path.is_file():
        return dict(out, missing=True)
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return dict(out, unreadable=str(e))
    mine = (split.get("sets") or {}).get(here.name) or {}
    leaks = (split.get("leaks") or {}).get("songs_in_several_sets")
    return dict(out, preset=split.get("preset"), by=split.get("by"), seed=split.get("seed"),
                set_clips=mine.get("clips"), set_songs=len(mine["songs"]) if "songs" in mine else None,
                leaks=len(leaks) if isinstance(leaks, (list, dict)) else leaks)


def protocol_from(npz_dir, clips, summary):
    """The protocol the table names: clips (val's evaluated clip dicts: mel (80, T), hop_length, sr,
    fps), their split (split.json beside npz_dir), the vocoder (summary["audio"]), the onset and BAS
    settings (lm2a.rhythm's constants). -> a JSON-able dict."""
    frames = sorted({int(c["mel"].shape[1]) for c in clips})
    hop, sr, fps = int(clips[0]["hop_length"]), int(clips[0]["sr"]), int(clips[0]["fps"])
    counts = summary.get("counts") or {}
    return {"clips": counts.get("clips_evaluated", len(clips)), "songs": counts.get("songs"),
            "mel_frames": [frames[0], frames[-1]], "hop_length": hop, "sample_rate": sr,
            "clip_seconds": [frames[0] * hop / sr, frames[-1] * hop / sr],
            "split": read_split(npz_dir), "audio": dict(summary.get("audio") or {}),
            "onsets": {"sample_rate": PAPER_SR, "hop_length": PAPER_ONSET_HOP, "pad_mode": ONSET_PAD_MODE,
                       "d2m_gan": dict(D2M_PEAKS), "loris": dict(LORIS_PEAKS)},
            "bas": {"fps": fps, "order": aist_order(fps), "sigma_frames": BAS_SIGMA_FRAMES}}


# ---- text (pure) ------------------------------------------------------------------------------
def _defined(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def split_text(split):
    """'AIST++ music-held-out test set (split.json: preset aistpp, by sequence, seed 42; ...)'."""
    if split.get("missing") or split.get("unreadable"):
        why = "no" if split.get("missing") else "unreadable"
        return f"unknown split ({why} {SPLIT_FILE} above the `{split['set']}` folder)"
    preset, by = split.get("preset"), split.get("by")
    what = (SPLIT_PRESETS.get(preset, f"preset {preset}") if preset else SPLIT_BY.get(by, f"split by {by}"))
    record = [f"preset {preset}"] if preset else []
    record += [f"by {by}", f"seed {split.get('seed')}"]
    if split.get("set_clips") is not None:
        record.append(f"its `{split['set']}` set holds {split['set_clips']} clips of {split['set_songs']} songs")
    if split.get("leaks"):
        record.append(f"{split['leaks']} songs in several sets")
    return f"{what} ({SPLIT_FILE}: {', '.join(record)})"


def vocoder_text(audio):
    """'Griffin-Lim (64 iterations)' / 'BigVGAN (path)', as summary["audio"] records it."""
    if audio.get("vocoder") == "bigvgan":
        return f"BigVGAN ({audio.get('path')})"
    text = f"Griffin-Lim ({audio.get('gl_iters')} iterations, seed {audio.get('gl_seed')})"
    if audio.get("vocoder_requested"):
        text += f"; {audio['vocoder_requested']} was asked for but could not be loaded"
    return text


def _peaks(peaks):
    return ", ".join(f"{k}={v:g}" for k, v in peaks.items())


def clip_length(protocol):
    """'5.99 s', or '5.99–6.00 s' when the clips differ."""
    s0, s1 = protocol["clip_seconds"]
    return f"{s0:.2f} s" if f"{s0:.2f}" == f"{s1:.2f}" else f"{s0:.2f}–{s1:.2f} s"


def protocol_lines(protocol):
    """The protocol, one Markdown bullet a line."""
    f0, f1 = protocol["mel_frames"]
    frames = f"{f0}" if f0 == f1 else f"{f0}–{f1}"
    on, bas, audio = protocol["onsets"], protocol["bas"], protocol["audio"]
    wav_sr = audio.get("sample_rate")
    resampled = f", resampled from {wav_sr} Hz" if wav_sr and int(wav_sr) != on["sample_rate"] else ""
    return [
        f"- Clips: {protocol['clips']} clips of {protocol['songs']} songs from the `{protocol['split']['set']}` "
        f"folder, {clip_length(protocol)} each "
        f"({frames} mel frames, hop {protocol['hop_length']} at {protocol['sample_rate']} Hz).",
        f"- Split: {split_text(protocol['split'])}.",
        f"- Audio: every row's audio, the real row's included, is its mel through one vocoder, "
        f"{vocoder_text(audio)}, written as 16-bit wav and read back.",
        f"- Onsets: librosa onset_detect at {on['sample_rate']} Hz{resampled}, hop {on['hop_length']} "
        f"(STFT padding {on['pad_mode']}); D2M-GAN's peak picking ({_peaks(on['d2m_gan'])}) for BCS/BHS, "
        f"LORIS's ({_peaks(on['loris'])}) for Cover/Hit/F1.",
        f"- Bins: 1 s as published; the three \"{FINER_S:g} s bins\" columns are LORIS's definitions at "
        f"{FINER_S:g} s bins, the finer variant of later work, not the published protocol.",
        f"- BAS: AIST++'s beat alignment score, motion beats at {bas['fps']} fps (argrelextrema order "
        f"{bas['order']}), sigma {bas['sigma_frames']:g} frames = {bas['sigma_frames'] / bas['fps']:.2f} s.",
        "- Values: BCS, BHS, Cover, CSD, Hit, HSD, F1 in percent with one decimal (as LORIS prints them; "
        "CSD/HSD = std of cover/hit over clips, ddof 1; F1 = F1 of the mean cover and mean hit); BAS "
        "as a fraction with 4 decimals (as AIST++/FACT).",
        "- A published row may stand beside these only when its protocol (clip length, split, bins) is "
        "the same: nothing from another protocol shares a column.",
    ]


def cell(stats, statistic, key, by_construction):
    """One cell: percent with one decimal, BAS with 4, UNDEFINED for nan / None / missing."""
    value = (stats or {}).get(statistic)
    if not _defined(value):
        return UNDEFINED
    text = f"{value:.4f}" if key == BAS_KEY else f"{100 * value:.1f}"
    return text + (BY_CONSTRUCTION if by_construction else "")


def table_lines(rhythm):
    """The Markdown table: a header, then one line per row of ROWS present in `rhythm`."""
    lines = ["| Row | " + " | ".join(h for _, _, h in COLUMNS) + " |",
             "|:--|" + "--:|" * len(COLUMNS)]
    for kind, label in ROWS.items():
        if kind not in rhythm:
            continue
        cells = [cell(rhythm[kind].get(key), statistic, key, kind == "real" and key != BAS_KEY)
                 for key, statistic, _ in COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def partial_counts(rhythm):
    """'model BCS over 3 of 4 clips, ...' for the shown scores some clips leave undefined."""
    parts = []
    for kind, label in ROWS.items():
        for key, statistic, header in COLUMNS:
            stats = (rhythm.get(kind) or {}).get(key) or {}
            if statistic == "mean" and stats.get("n_nan") and stats.get("count"):
                parts.append(f"{label} {header} over {stats['count']} of {stats['count'] + stats['n_nan']} clips")
    return ", ".join(parts)


def footnotes(rhythm, table):
    """The notes under the table (each its own paragraph), only those its cells need."""
    notes = ["Columns: BCS, BHS: D2M-GAN's beat coverage and beat hit (1 s bins; BCS counts onset "
                 "density and can exceed 100). Cover, CSD, Hit, HSD, F1: LORIS's (1 s bins). BAS: AIST++. "
                 "Higher is better except CSD/HSD (lower) and BCS (nearest 100)."]
    if "real" in rhythm:
        notes.append(f"{BY_CONSTRUCTION} The real row's onset scores are real audio against itself: 100 (0 for "
                     f"CSD/HSD) by construction, less only where a clip has no onset; not a result. Its BAS "
                     f"(real audio against its own dance) is the ceiling.")
    if any(UNDEFINED in line for line in table[2:]):
        notes.append(f"{UNDEFINED} undefined: no clip with a defined score (BCS/BHS need an onset in the real "
                     f"clip; CSD/HSD need 2 clips).")
    partial = partial_counts(rhythm)
    if partial:
        notes.append(f"Means over the clips where a score is defined: {partial}.")
    return [line for note in notes for line in ("", note)]


def field_table(summary, protocol):
    """summary.json's content (its "rhythm": {row kind: lm2a.rhythm.summarize_rhythm}) and a
    protocol (protocol_from) -> the Markdown text of field_table.md. Raises ValueError without
    waveform metrics."""
    rhythm = summary.get("rhythm") or {}
    if not rhythm:
        raise ValueError("no waveform metrics in the summary (val.py --no_audio_metrics): no field table")
    title = (f"**Rhythm of generated music on {protocol['clips']} clips of {clip_length(protocol)}, in the "
             f"dance-to-music papers' conventions (D2M-GAN, LORIS, AIST++)**")
    table = table_lines(rhythm)
    return "\n".join([title, "", "Protocol:", *protocol_lines(protocol), "", *table, *footnotes(rhythm, table)]) + "\n"
