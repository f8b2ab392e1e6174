"""Stage 5's library (val.py is its command line): generated log-mels scored against the real clips
of a split, with reference rows, written as per_clip.csv, summary.json, plots, report.html and
field_table.md (the rhythm scores as the dance-to-music papers print them, lm2a/fieldtable.py).

    summary = evaluate(EvalOptions(npz_dir="split/test", out_dir="val", ...), SamplingConfig())

Rows (per_clip.csv's `row` column; val.py's docstring says how to read them): model (generated vs
real), uncond (guidance 0, no conditions), chance (another real clip), shuffled (the generation
against another clip's audio and motion), real (the real audio against its own motion: the ceiling).
The model, uncond, chance and real rows also hold the music-likeness figures (lm2a/musicality.py) of
their own mel: the generated, unconditional, other real and real clip; summary.json's
`music_likeness` sets their means side by side with the Fréchet distances.

Whole sequences (the field's long-clip protocol): a clip longer than the model's window
(opts.longform.window; lm2a.longform.needs_windows) is generated in windows, each continuing the
previous output (lm2a.longform.generate_clips), and scored twice: per sequence (the rows above, on the
whole mel and audio) and per window: every evaluated clip's real and generated mels (and their vocoded
audio) cut into consecutive non-overlapping windows of the model's length (a last piece shorter than
half a window dropped), each scored like a clip with the same rows (summary.json's per_window,
per_window.csv, field_table_per_window.md).
"""
import csv
import io
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lm2a import evalaudio, report
from lm2a import metrics as M
from lm2a.checkpoint import CheckpointError
from lm2a.clipio import ClipFileError, json_safe, list_clip_files, load_clip, write_text_atomic
from lm2a.device import pick_device, resolve_precision
from lm2a.evalplots import plot_histograms, plot_mel_pairs, plot_metric_bars
from lm2a.fieldtable import FIELD_TABLE_FILE, field_table, protocol_from
from lm2a.generate import GEN_SUFFIX, RECORD_KEYS, check_settings, load_clips, read_generated, usable_items
from lm2a.longform import LongformConfig, generate_clips, needs_windows, window_frames
from lm2a.musicality import FIGURES as MUSIC_FIGURES, music_figures
from lm2a.rhythm import (METRIC_SOURCES, ONSET_PAD_MODE, PAPER_SR, RESOLUTION_NOTE, RHYTHM_KEYS, rhythm_scores,
                         summarize_rhythm)
from lm2a.trained import load_model
from lm2a.video import VideoError, render_video
from models.diffusion import SamplingConfig

ROW_KINDS = ("model", "uncond", "chance", "shuffled", "real")
METRICS = ("mse", "ssim", "cosine", "mean_error", "std_error", "snr_db", "lsd_db", "onset_precision",
           "onset_recall", "onset_f1", "beat_align", "beat_align_shuffled", "beat_align_real") + RHYTHM_KEYS \
    + MUSIC_FIGURES
# the rows of summary.json's music_likeness table (real first: the target), and the Fréchet distance beside each
MUSIC_ROWS = {"real": "real_split_half", "model": "model", "uncond": "uncond", "chance": "chance"}
CSV_COLUMNS = ("name", "song", "start_s", "row", "paired_with") + METRICS
# panels of metrics_bars.png and hist_metrics.png (the shuffled / real columns are rows there)
PLOT_METRICS = tuple(m for m in METRICS if m not in ("beat_align_shuffled", "beat_align_real")
                     and (m not in RHYTHM_KEYS or m in ("bhs_d2m_1s", "bhs_d2m_5hz", "f1_loris_1s",
                                                        "f1_loris_5hz", "bas_aist")))
GEN_SETTING_KEYS = tuple(SamplingConfig.__dataclass_fields__) + RECORD_KEYS
PLOTS = ("mel_pairs.png", "metrics_bars.png", "hist_metrics.png")
WINDOW_SEP = "#w"                                  # per-window pieces are named <clip name>#w<k>
WINDOW_FILES = ("per_window.csv", "field_table_per_window.md")


@dataclass(frozen=True)
class EvalOptions:
    """val.py's flags beside the sampling ones. No defaults here: val.py's UPPERCASE constants are
    the one place they are set."""
    npz_dir: str            # real clips (a split folder)
    out_dir: str            # csv, json, plots, report.html, generated files and wavs go here
    ckpt: str               # checkpoint file or folder; with gen_dir only needed for the uncond row
    gen_dir: str            # read <name>_gen.npz from here instead of generating ("" = generate)
    max_samples: int        # the first N clips only (0 = all)
    references: bool        # the uncond / chance / shuffled / real rows
    audio_metrics: bool     # vocode and score the waveforms (and play them in report.html)
    vocoder: str            # BigVGAN folder, name or hub id ("" = Griffin-Lim)
    gl_iters: int           # Griffin-Lim iterations
    report_clips: int       # clips shown in report.html
    attention_clips: int    # clips with cross-attention maps in report.html
    attention_layer: str    # cross-attention block ("" = lm2a.report.default_attention_layer)
    plot_clips: int         # clips shown in mel_pairs.png
    use_ema: bool
    device: str             # auto, cpu, cuda
    progress: bool = True   # tqdm bars
    other_songs_dir: str = ""  # real clips of other songs: their Fréchet distance to the real set
                               # ("auto" = the train folder beside npz_dir, "" = none)
    longform: LongformConfig = field(default_factory=LongformConfig)  # the model's window (clips longer are
                               # generated in windows and scored per window too) and the window settings
    report_videos: bool = True  # an MP4 of each shown clip: the dancer with the generated audio


@dataclass
class Generations:
    """The generated rows: model (always) and uncond (with references and a model at hand)."""
    model: dict                    # {name: mel (80, T)}
    model_settings: dict           # summary.json's settings of the model row
    skipped: list                  # [(name, reason)]
    diffusion: object = None       # the loaded network (uncond row, attention maps) or None
    uncond: dict = None            # {name: mel (80, T)} or None
    uncond_settings: dict = None


@dataclass
class Scores:
    """The metrics of the evaluated clips."""
    pairs: object           # the chance / shuffled pairing (a permutation of the clips) or None
    rows: list              # per-clip row dicts (per_clip.csv)
    summary_rows: dict      # summarize_rows(rows)
    frechet: dict           # frechet_distances


# ---- inputs -----------------------------------------------------------------------------------
def load_real_clips(paths, info=None):
    """Clip files, each read once (lm2a.generate.load_clips) -> (items, skipped [(name, reason)]).
    Each item's `clip` holds the arrays the metrics use: mel (80, T), motion (frames, 234) at fps."""
    items, skipped = load_clips(paths, info)
    return items, [(Path(p).stem, reason) for p, reason in skipped]


def real_inputs(opts):
    """The listed clip files (max_samples of them) and their items -> (paths, items, skipped).
    Raises ValueError when none is readable."""
    paths = list_clip_files(opts.npz_dir)
    if opts.max_samples > 0:
        paths = paths[:opts.max_samples]
    items, skipped = load_real_clips(paths)
    if not items:
        raise ValueError(f"{opts.npz_dir}: no readable clip ({skipped[0][1] if skipped else 'empty folder'})")
    return paths, items, skipped


def _generated_problem(path, gen, item):
    """Why a read generated file cannot stand for its clip, or None."""
    clip, source = item["clip"], item["meta"]["source_npz"]
    mel = gen["mel"]
    if mel.shape != clip["mel"].shape:
        return f"{path}: mel {mel.shape} vs real {clip['mel'].shape} in {source}"
    if not np.isfinite(mel).all():
        return f"{path}: generated mel holds NaN/inf values"
    if gen["mel_config"] is not None:
        diffs = gen["mel_config"].differences(item["mel_config"], "generated", "clip")
        if diffs:
            return f"{path}: mel config differs from {source}: {'; '.join(diffs)}"
    return None


def generated_for_clips(gen_dir, items):
    """Matches <name>_gen.npz in gen_dir to the real clips -> (gens {name: mel (80, T)},
    settings {name: {sampler, steps, ...}}, skipped [(name, reason)])."""
    gen_dir = Path(gen_dir)
    if not gen_dir.is_dir():
        raise FileNotFoundError(f"{gen_dir}: --gen_dir is not a folder (run sample.py --out_dir "
                                f"{gen_dir} first)")
    gens, settings, skipped = {}, {}, []
    for item in items:
        name = item["name"]
        path = gen_dir / f"{name}{GEN_SUFFIX}.npz"
        if not path.is_file():
            skipped.append((name, f"{path}: no generated file for {item['meta']['source_npz']}"))
            continue
        try:
            gen = read_generated(path)
        except ValueError as e:
            skipped.append((name, str(e)))
            continue
        problem = _generated_problem(path, gen, item)
        if problem:
            skipped.append((name, problem))
            continue
        gens[name] = gen["mel"]
        settings[name] = gen["settings"]
    return gens, settings, skipped


def common_settings(per_file):
    """{key: value} when all files agree, {key: [values]} when they do not."""
    out = {}
    for k in GEN_SETTING_KEYS:
        values = []
        for s in per_file.values():
            if k in s and s[k] not in values:
                values.append(s[k])
        if values:
            out[k] = values[0] if len(values) == 1 else values
    return out


# ---- generation -------------------------------------------------------------------------------
def checkpoint_record(info):
    """What summary.json records of the checkpoint beside the sampling settings."""
    return dict(ckpt_path=info.path, ckpt_step=info.step, use_ema=info.use_ema)


def model_row_from_files(opts, settings, items, device, notes):
    """The model row read from opts.gen_dir -> (Generations, settings for the uncond row: the
    flags, with what every file records in their place, info or None)."""
    gens, per_file, skipped = generated_for_clips(opts.gen_dir, items)
    recorded = common_settings(per_file)
    model_settings = {k: recorded.get(k) for k in GEN_SETTING_KEYS}  # as the files say
    # the uncond row repeats the generation's settings where the files agree on them
    settings = replace(settings, **{k: v for k, v in recorded.items()
                                    if k in asdict(settings) and not isinstance(v, list)})
    diffusion = info = None
    if opts.references:
        try:
            diffusion, info = load_model(opts.ckpt, device, use_ema=opts.use_ema)
        except (FileNotFoundError, CheckpointError) as e:
            notes.append(f"uncond row skipped: no usable --ckpt ({e})")
        if info is not None and "ckpt_step" in recorded and recorded["ckpt_step"] != info.step:
            notes.append(f"--ckpt is step {info.step}, the generated files record step "
                         f"{recorded['ckpt_step']}: the uncond row comes from a different model")
    return Generations(gens, model_settings, skipped, diffusion), settings, info


def model_row_generated(opts, settings, items, device):
    """The model row generated here (written to OUT/generated/) -> (Generations, the settings as
    run, info)."""
    diffusion, info = load_model(opts.ckpt, device, use_ema=opts.use_ema)
    settings = resolve_precision(settings, device)
    problem = check_settings(settings, info)
    if problem:
        raise ValueError(problem)
    items, skipped = usable_items(items, info)
    skipped = [(Path(p).stem, reason) for p, reason in skipped]
    results = generate_clips(diffusion, info, items, settings, opts.longform, Path(opts.out_dir) / "generated",
                             png=False, progress=opts.progress, desc="model")
    gens = {r["name"]: r["mel"] for r in results}
    model_settings = dict(asdict(settings), **checkpoint_record(info))
    return Generations(gens, model_settings, skipped, diffusion), settings, info


def add_uncond_row(opts, gen, info, items, settings, notes):
    """The same generation with both conditions dropped (guidance 0, same per-clip noise), written
    to OUT/generated_uncond/; left None (with a note) when the checkpoint refuses some clips."""
    usable, _ = usable_items([it for it in items if it["name"] in gen.model], info)
    uncond_cfg = replace(settings, guidance=0.0)
    results = generate_clips(gen.diffusion, info, usable, uncond_cfg, opts.longform,
                             Path(opts.out_dir) / "generated_uncond", png=False, progress=opts.progress, desc="uncond")
    uncond = {r["name"]: r["mel"] for r in results}
    if len(uncond) != len(gen.model):
        notes.append(f"uncond row: {len(gen.model) - len(uncond)} clips refused by the checkpoint")
        return
    gen.uncond = uncond
    gen.uncond_settings = dict(asdict(uncond_cfg), **checkpoint_record(info))


def generated_rows(opts, settings, items, device, notes):
    """The model row's mels (generated here or read from opts.gen_dir) and, with references, the
    uncond row's -> Generations."""
    if opts.gen_dir:
        gen, settings, info = model_row_from_files(opts, settings, items, device, notes)
    else:
        gen, settings, info = model_row_generated(opts, settings, items, device)
    if opts.references and gen.diffusion is not None:
        add_uncond_row(opts, gen, info, items, settings, notes)
    return gen


def evaluated_clips(items, gens, skipped):
    """The real clips that have a generated mel: each its clip dict with its name, its mel_config
    parsed (MelConfig) and `music`, the music-likeness figures of its mel. Raises ValueError naming
    the first reasons when none has."""
    clips = [dict(it["clip"], name=it["name"], mel_config=it["mel_config"],
                  music=music_figures(it["clip"]["mel"], it["mel_config"])) for it in items if it["name"] in gens]
    if not clips:
        reasons = "; ".join(r for _, r in skipped[:3])
        raise ValueError(f"no clip to evaluate ({reasons})")
    return clips


# ---- waveforms --------------------------------------------------------------------------------
def waveforms(opts, clips, gen, device, notes):
    """The real, generated and uncond mels through one vocoder (lm2a.evalaudio), written to
    OUT/audio/<set>/<name>.wav -> (wav paths {set: {name: path}}, {set: {name: audio_rhythm}},
    audio settings for summary.json, the waveforms as read back {set: {name: wav}}); ({}, None, None,
    None) without opts.audio_metrics."""
    if not opts.audio_metrics:
        return {}, None, None, None
    configs = {c["mel_config"] for c in clips}
    if len(configs) > 1:
        raise ValueError(f"{opts.npz_dir}: the clips hold {len(configs)} different mel configs; one "
                         f"vocoder cannot serve them (evaluate one preprocess.py output at a time)")
    mel_cfg = configs.pop()
    model, audio_settings = evalaudio.open_vocoder(opts.vocoder, mel_cfg, device, opts.gl_iters, notes)
    mel_sets = {"real": {c["name"]: c["mel"] for c in clips}, "generated": gen.model, "uncond": gen.uncond}
    paths, wavs = evalaudio.vocode_sets(mel_sets, mel_cfg, Path(opts.out_dir) / evalaudio.AUDIO_DIR, model,
                                        opts.gl_iters, opts.progress)
    analysis = evalaudio.analyse_sets(wavs, mel_cfg.sampling_rate, int(clips[0]["fps"]), opts.progress)
    audio_settings.update(sample_rate=mel_cfg.sampling_rate,
                          wav="16-bit PCM, read back for the metrics", wav_dir=evalaudio.AUDIO_DIR,
                          analysis_rate=PAPER_SR, onset_pad_mode=ONSET_PAD_MODE)
    return paths, analysis, audio_settings, wavs


# ---- metrics ----------------------------------------------------------------------------------
def _crop_pair(a, b):
    """Two mels of possibly different lengths -> both cut to the shorter one."""
    t = min(a.shape[1], b.shape[1])
    return a[:, :t], b[:, :t]


def score_pair(ref, est_mel, motion, fps, ref_audio=None, est_audio=None):
    """Metrics of an estimate against the real clip `ref` (evaluated_clips; both mels cropped to the
    shorter), beat scores against `motion`; with audio (lm2a.rhythm.audio_rhythm dicts) the rhythm scores too."""
    a, b = _crop_pair(ref["mel"], est_mel)
    row = M.clip_metrics(a, b, ref["mel_config"], motion, fps)
    if ref_audio is not None and est_audio is not None:
        row.update(rhythm_scores(ref_audio, est_audio, motion, fps))
    return row


def real_row(clip, fps, audio=None):
    """The ceiling: the real audio against its own motion (beat scores; onset scores are 1)."""
    audio_beats = M.audio_beats(clip["mel"], clip["mel_config"])
    row = {"beat_align": M.beat_alignment(M.motion_beats(clip["motion"], fps), audio_beats)}
    if audio is not None:
        row.update(rhythm_scores(audio, audio, clip["motion"], fps))
    return row


def clip_rows(clips, i, gens, uncond, pairs, references, sound):
    """The rows of clip i (compute_rows); sound(set, name) -> its audio_rhythm dict or None."""
    c = clips[i]
    name, fps = c["name"], int(c["fps"])
    base = {"name": name, "song": c["song"], "start_s": c["start_s"]}
    rows = []

    def add(kind, ref, est_mel, est_audio, motion, paired_with=""):
        row = dict(base, row=kind, paired_with=paired_with,
                   **score_pair(ref, est_mel, motion, fps, sound("real", ref["name"]), est_audio))
        rows.append(row)
        return row
    model = add("model", c, gens[name], sound("generated", name), c["motion"])
    model.update(music_figures(gens[name], c["mel_config"]))
    if not references:
        return rows
    if uncond is not None:
        add("uncond", c, uncond[name], sound("uncond", name), c["motion"]).update(
            music_figures(uncond[name], c["mel_config"]))
    if pairs is not None:
        other = clips[pairs[i]]
        add("chance", c, other["mel"], sound("real", other["name"]), c["motion"], other["name"]).update(other["music"])
        shuffled = add("shuffled", other, gens[name], sound("generated", name), other["motion"], other["name"])
        model["beat_align_shuffled"], model["paired_with"] = shuffled["beat_align"], other["name"]
    real = dict(base, row="real", paired_with="", **real_row(c, fps, sound("real", name)), **c["music"])
    model["beat_align_real"] = real["beat_align"]
    rows.append(real)
    return rows


def compute_rows(clips, gens, uncond=None, pairs=None, references=True, progress=True, audio=None):
    """Per-clip metric rows (module docstring). clips: real clips (load_real_clips), gens {name: mel},
    uncond {name: mel} or None, pairs: permutation (chance_pairs) or None, audio: {real|generated|
    uncond: {name: lm2a.rhythm.audio_rhythm dict}} of the vocoded waveforms or None. -> row dicts."""
    def sound(kind, name):
        return audio[kind][name] if audio and kind in audio else None
    rows = []
    for i in tqdm(range(len(clips)), desc="metrics", unit="clip", disable=not progress):
        rows += clip_rows(clips, i, gens, uncond, pairs, references, sound)
    return rows


def pair_clips(clips, seed, references, notes):
    """The chance / shuffled pairing (lm2a.metrics.chance_pairs, another song where possible) or
    None."""
    if not references:
        return None
    if len(clips) < 2:
        notes.append("chance and shuffled rows need at least 2 clips")
        return None
    pairs = M.chance_pairs([c["song"] for c in clips], seed=seed)
    same_song = sum(clips[i]["song"] == clips[j]["song"] for i, j in enumerate(pairs))
    if same_song:
        notes.append(f"chance pairs: {same_song} of {len(clips)} paired within their song "
                     f"(one song holds more than half of the clips)")
    return pairs


def other_songs_folder(opts):
    """The folder of opts.other_songs_dir: "auto" -> the `train` folder beside opts.npz_dir where
    there is one (None otherwise), "" -> None."""
    if opts.other_songs_dir != "auto":
        return Path(opts.other_songs_dir) if opts.other_songs_dir else None
    here = Path(opts.npz_dir).resolve()
    train = here.parent / "train"
    return train if train.is_dir() and train != here else None


def other_songs_mels(folder, songs, progress=False):
    """Real mels (80, T) of the clips in `folder` whose song is not in `songs` -> (mels, their songs).
    Unreadable files are left out (the folder is a reference, not the evaluated set)."""
    mels, found = [], set()
    for path in tqdm(list_clip_files(folder), desc="other songs", unit="clip", disable=not progress, leave=False):
        try:
            clip = load_clip(path, keys=("mel", "song"))
        except (ClipFileError, OSError, ValueError):
            continue
        if clip["song"] not in songs:
            mels.append(np.asarray(clip["mel"], dtype=np.float32))
            found.add(clip["song"])
    return mels, sorted(found)


def frechet_distances(clips, gens, uncond, seed, other=None):
    """{model, uncond, chance, real_split_half, real_other_songs}: Fréchet distance of each generated
    set to the real set; real_split_half compares two random halves of the real set (the floor at this
    size), real_other_songs the real clips of other songs (`other`, a list of mels) with the real set:
    what a model that makes music like its training songs' but cannot know these songs would score."""
    real = [c["mel"] for c in clips]
    out = {"model": M.frechet_distance(real, [gens[c["name"]] for c in clips]),
           "uncond": M.frechet_distance(real, [uncond[c["name"]] for c in clips]) if uncond else None,
           "chance": None, "real_split_half": None,
           "real_other_songs": M.frechet_distance(real, other) if other else None}
    if len(clips) >= 2:
        order = np.random.default_rng(seed).permutation(len(clips))
        half = len(clips) // 2
        out["real_split_half"] = M.frechet_distance([real[i] for i in order[:half]],
                                                    [real[i] for i in order[half:]])
    return out


def score_clips(clips, gen, audio, seed, references, progress, notes, other=None):
    """Every row of every clip, their summary and the Fréchet distances -> Scores. audio: the
    waveforms' analysis (waveforms) or None; other: real mels of other songs or None."""
    pairs = pair_clips(clips, seed, references, notes)
    rows = compute_rows(clips, gen.model, gen.uncond, pairs, references, progress, audio)
    return Scores(pairs, rows, summarize_rows(rows), frechet_distances(clips, gen.model, gen.uncond, seed, other))


# ---- per window -------------------------------------------------------------------------------
def window_spans(n_frames, window):
    """[(a, b)]: consecutive non-overlapping windows of `window` mel frames over n_frames; a last partial
    window shorter than half a window is dropped."""
    spans = [(a, min(a + window, n_frames)) for a in range(0, n_frames, window)]
    return [(a, b) for a, b in spans if 2 * (b - a) >= window]


def window_piece(clip, k, a, b):
    """Window k (mel frames a..b) of an evaluated clip as a clip of its own, named <name>#w<k>: its mel,
    its motion at fps over the same seconds, its start_s and the music figures of its mel."""
    sr, hop, fps = int(clip["sr"]), int(clip["hop_length"]), float(clip["fps"])
    fa, fb = (int(round(f * hop / sr * fps)) for f in (a, b))
    mel = clip["mel"][:, a:b]
    return dict(clip, name=f"{clip['name']}{WINDOW_SEP}{k}", mel=mel, motion=clip["motion"][fa:fb],
                start_s=float(clip["start_s"]) + a * hop / sr, music=music_figures(mel, clip["mel_config"]))


def cut_windows(clips, gen, wavs, window):
    """Every evaluated clip cut into windows (window_spans) -> (pieces: window_piece clips, Generations
    holding the model and uncond mels cut alike, the waveforms {set: {name: wav}} cut at the same
    times: {set: {piece name: wav}}, {} without waveforms)."""
    pieces, model, uncond = [], {}, {} if gen.uncond else None
    cut = {kind: {} for kind in (wavs or {})}
    for c in clips:
        hop = int(c["hop_length"])
        for k, (a, b) in enumerate(window_spans(c["mel"].shape[1], window)):
            piece = window_piece(c, k, a, b)
            pieces.append(piece)
            name = piece["name"]
            model[name] = gen.model[c["name"]][:, a:b]
            if uncond is not None:
                uncond[name] = gen.uncond[c["name"]][:, a:b]
            for kind, named in (wavs or {}).items():  # real, generated, uncond: each named by its clip
                if c["name"] in named:
                    cut[kind][name] = named[c["name"]][a * hop:b * hop]
    return pieces, Generations(model, {}, [], uncond=uncond), cut


def score_windows(opts, clips, gen, wavs, seed):
    """summary.json's per_window and its rows -> (per_window dict, rows, pieces), or (None, [], []) when
    no clip is longer than the model's window (opts.longform)."""
    window = window_frames(clips[0]["mel_config"], opts.longform)
    sequences = sum(needs_windows(c["mel"].shape[1], window) for c in clips)
    if not sequences:
        return None, [], []
    pieces, pieces_gen, cut = cut_windows(clips, gen, wavs, window)
    if not pieces:
        return None, [], []
    audio = (evalaudio.analyse_sets(cut, clips[0]["mel_config"].sampling_rate, int(clips[0]["fps"]), opts.progress)
             if cut else None)
    notes = []
    pairs = pair_clips(pieces, seed, opts.references, notes)
    rows = compute_rows(pieces, pieces_gen.model, pieces_gen.uncond, pairs, opts.references, opts.progress, audio)
    summary_rows = summarize_rows(rows)
    per_window = {"window_s": window * clips[0]["mel_config"].hop_seconds, "window_frames": window,
                  "windows": len(pieces), "sequences": sequences, "clips": len(clips),
                  "counts": {k: v["n"] for k, v in summary_rows.items()},
                  "rows": summary_rows, "rhythm": rhythm_summary(rows) if audio else None,
                  "chance_seed": seed if pairs is not None else None, "notes": notes}
    return per_window, rows, pieces


def write_window_files(opts, summary, rows, pieces):
    """OUT/per_window.csv (the per-window rows, per_clip.csv's columns) and, with waveform metrics,
    OUT/field_table_per_window.md (lm2a/fieldtable.py on the per-window rhythm; its text also in
    summary["per_window"]["field_table"]); stale ones of an earlier run are removed."""
    out_dir, per_window = Path(opts.out_dir), summary.get("per_window")
    for name in WINDOW_FILES:
        (out_dir / name).unlink(missing_ok=True)
    if not per_window:
        return
    write_csv(out_dir / WINDOW_FILES[0], rows)
    if not per_window.get("rhythm"):
        return
    counts = {"clips_evaluated": len(pieces), "songs": len({p["song"] for p in pieces})}
    protocol = protocol_from(opts.npz_dir, pieces, {"counts": counts, "audio": summary.get("audio")})
    text = (f"Per window: each of {per_window['clips']} sequences cut into consecutive non-overlapping "
            f"{per_window['window_s']:.2f} s windows (the model's length; a last piece shorter than half a "
            f"window dropped), each scored as a clip; the \"clips\" below are these windows.\n\n"
            + field_table({"rhythm": per_window["rhythm"]}, protocol))
    per_window.update(field_table=text, field_table_file=WINDOW_FILES[1])
    write_text_atomic(out_dir / WINDOW_FILES[1], text)


# ---- aggregation ------------------------------------------------------------------------------
def summarize_rows(rows):
    """{row kind: dict(n, metrics={metric: lm2a.metrics.summarize stats})}, kinds in ROW_KINDS order."""
    out = {}
    for kind in ROW_KINDS:
        sel = [{k: r[k] for k in METRICS if k in r} for r in rows if r["row"] == kind]
        if sel:
            out[kind] = dict(n=len(sel), metrics=M.summarize(sel))
    return out


def rhythm_summary(rows):
    """{row kind: lm2a.rhythm.summarize_rhythm} of the rows holding waveform metrics."""
    out = {}
    for kind in ROW_KINDS:
        sel = [r for r in rows if r["row"] == kind and RHYTHM_KEYS[0] in r]
        if sel:
            out[kind] = summarize_rhythm(sel)
    return out


def beat_table(summary_rows):
    """Mean beat alignment of every reference, side by side."""
    def mean(kind, key):
        try:
            return summary_rows[kind]["metrics"][key]["mean"]
        except KeyError:
            return None
    return {"model": mean("model", "beat_align"), "uncond": mean("uncond", "beat_align"),
            "chance": mean("chance", "beat_align"), "shuffled": mean("model", "beat_align_shuffled"),
            "real": mean("model", "beat_align_real")}


def music_table(summary_rows, clips, frechet):
    """summary.json's music_likeness: {row: {figure: mean over clips, frechet: the row's Fréchet
    distance}} for the MUSIC_ROWS there are; the real row comes from the clips themselves, so it is
    there with --no_references too (its Fréchet distance is the real split-half floor; chance has none:
    a permutation of the real clips, its figures' means are the real row's)."""
    out = {"real": {k: float(np.mean([c["music"][k] for c in clips])) for k in MUSIC_FIGURES}}
    for kind in MUSIC_ROWS:
        if kind != "real" and kind in summary_rows:
            out[kind] = {k: summary_rows[kind]["metrics"][k]["mean"] for k in MUSIC_FIGURES}
    for kind, row in out.items():
        row["frechet"] = frechet.get(MUSIC_ROWS[kind])
    return out


def make_summary(opts, gen, scores, clips, n_listed, skipped, audio, audio_settings, seed, device, notes):
    """summary.json's content, report and timings aside."""
    summary_rows = scores.summary_rows
    return {
        "settings": dict(gen.model_settings, npz_dir=str(Path(opts.npz_dir).resolve()),
                         gen_dir=str(Path(opts.gen_dir).resolve()) if opts.gen_dir else None,
                         generated_here=not opts.gen_dir, max_samples=opts.max_samples,
                         references=opts.references, chance_seed=seed if scores.pairs is not None else None,
                         uncond=gen.uncond_settings, device=str(device), longform=asdict(opts.longform)),
        "counts": {"clips_listed": n_listed, "clips_evaluated": len(clips),
                   "clips_skipped": len(skipped), "songs": len({c["song"] for c in clips}),
                   "rows": {k: v["n"] for k, v in summary_rows.items()}},
        "rows": summary_rows,
        "rhythm": rhythm_summary(scores.rows) if audio else None,
        "rhythm_sources": dict(METRIC_SOURCES),
        "rhythm_resolution_note": RESOLUTION_NOTE,
        "audio": audio_settings,
        "frechet": scores.frechet,
        "music_likeness": music_table(summary_rows, clips, scores.frechet),
        "beat_alignment": beat_table(summary_rows),
        "skipped": [{"clip": n, "reason": r} for n, r in skipped],
        "notes": notes,
    }


# ---- output -----------------------------------------------------------------------------------
def write_csv(path, rows):
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, restval="", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    write_text_atomic(path, buf.getvalue())


def write_tables_and_plots(out_dir, scores, clips, gen, plot_clips):
    """per_clip.csv and the three PLOTS."""
    write_csv(out_dir / "per_clip.csv", scores.rows)
    plot_mel_pairs(out_dir / PLOTS[0], clips, gen.model, gen.uncond, n=plot_clips)
    plot_metric_bars(out_dir / PLOTS[1], scores.summary_rows, PLOT_METRICS, ROW_KINDS)
    plot_histograms(out_dir / PLOTS[2], scores.rows, PLOT_METRICS, ROW_KINDS)


def add_field_table(opts, summary, clips):
    """OUT/field_table.md (lm2a/fieldtable.py: the rhythm scores as the papers print them, with their
    protocol), its text in summary["field_table"] and its protocol in summary["field_protocol"]. Without
    waveform metrics there is none (a stale file from an earlier run is removed) and summary says why."""
    path = Path(opts.out_dir) / FIELD_TABLE_FILE
    if not summary.get("rhythm"):
        path.unlink(missing_ok=True)
        summary.update(field_table=None, field_table_file=None,
                       field_table_skipped="no field table: --no_audio_metrics (it needs the waveform metrics)")
        return
    protocol = protocol_from(opts.npz_dir, clips, summary)
    summary.update(field_table=field_table(summary, protocol), field_table_file=FIELD_TABLE_FILE,
                   field_protocol=protocol)
    write_text_atomic(path, summary["field_table"])


def attention_record(summary, attention, names, seed):
    """summary["attention"]: what the maps show, or why there are none."""
    if attention:
        weights = "EMA" if summary["settings"].get("use_ema") else "raw"
        return {"layer": attention[0]["layer"], "t": attention[0]["t"], "clips": names,
                "input": f"the generated mel noised to t (noise seed {seed}), {weights} weights, heads averaged"}
    return {"skipped": "no attention maps: no model loaded (--gen_dir without a usable --ckpt, or "
                       "--no_references)"}


def report_videos(opts, shown, gens, wav_paths, summary):
    """OUT/report/video/<name>.mp4 of the shown clips (lm2a.video): the dancer with the generated audio
    as val.py wrote it, its mel under a time cursor. -> {name: path relative to OUT}; records the videos
    (or why there are none) in summary["report_videos"]. Needs the generated wavs (not with
    --no_audio_metrics); a clip whose video fails is left out with its reason."""
    generated = (wav_paths or {}).get("generated") or {}
    if not opts.report_videos or not generated:
        summary["report_videos"] = {"skipped": "--no_report_videos" if not opts.report_videos else
                                    "no generated wavs (--no_audio_metrics)"}
        return {}
    out, failed = {}, []
    for c in tqdm(shown, desc="report videos", unit="clip", disable=not opts.progress):
        rel = f"{report.VIDEO_DIR}/{c['name']}.mp4"
        try:
            wav = evalaudio.read_wav(generated[c["name"]])
            render_video(Path(opts.out_dir) / rel, c["motion"], wav, c["mel_config"].sampling_rate,
                         gens[c["name"]], int(c["fps"]), title=f"{c['name']} generated",
                         where=c["name"], progress=False)
            out[c["name"]] = rel
        except (VideoError, KeyError, OSError) as e:
            failed.append({"clip": c["name"], "reason": str(e)})
    summary["report_videos"] = {"dir": report.VIDEO_DIR, "videos": len(out), "failed": failed}
    return out


def write_report_files(opts, summary, scores, clips, items, gen, wav_paths, seed):
    """Mel and attention PNGs of the shown clips and report.html (lm2a.report) -> its path;
    records the attention settings in summary["attention"]."""
    out_dir = Path(opts.out_dir)
    picked = report.pick_clips(clips, max(opts.report_clips, 0))
    recorded_seed = summary["settings"].get("seed")
    videos = report_videos(opts, [clips[i] for i in picked], gen.model, wav_paths, summary)
    info = report.clip_pages(out_dir, clips, picked, gen.model, wav_paths, scores.pairs,
                             recorded_seed if isinstance(recorded_seed, int) else None, videos)
    names = [clips[i]["name"] for i in picked[:max(opts.attention_clips, 0)]]
    attention = []
    if names and gen.diffusion is not None:
        attention = report.attention_pages(out_dir, gen.diffusion, {it["name"]: it for it in items},
                                           {c["name"]: c for c in clips}, names, opts.attention_layer or None,
                                           seed=seed, gens=gen.model)
    if names:
        summary["attention"] = attention_record(summary, attention, names, seed)
    return report.write_report(out_dir, summary, scores.rows, info, attention, PLOTS)


def evaluate(opts, settings):
    """Runs stage 5 with the sampling `settings` (their seed also seeds the chance pairing, the
    split halves and the attention noise); returns the summary dict (also OUT/summary.json)."""
    t_start = time.perf_counter()
    out_dir, seed, notes = Path(opts.out_dir), settings.seed, []
    paths, items, skipped = real_inputs(opts)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(opts.device)
    t_gen = time.perf_counter()
    gen = generated_rows(opts, settings, items, device, notes)
    skipped += gen.skipped
    if opts.attention_layer and gen.diffusion is not None:   # a typo fails now, not after the vocoder
        report.attention_block(gen.diffusion.model, opts.attention_layer)
    clips = evaluated_clips(items, gen.model, skipped)
    t_audio = time.perf_counter()
    wav_paths, audio, audio_settings, wavs = waveforms(opts, clips, gen, device, notes)
    t_metrics = time.perf_counter()
    other_dir = other_songs_folder(opts)
    other, other_songs = other_songs_mels(other_dir, {c["song"] for c in clips}, opts.progress) if other_dir else ([], [])
    scores = score_clips(clips, gen, audio, seed, opts.references, opts.progress, notes, other)
    per_window, window_rows, pieces = score_windows(opts, clips, gen, wavs, seed)
    t_outputs = time.perf_counter()
    write_tables_and_plots(out_dir, scores, clips, gen, opts.plot_clips)
    summary = make_summary(opts, gen, scores, clips, len(paths), skipped, audio, audio_settings, seed, device, notes)
    summary["counts"]["other_songs"] = {"dir": str(other_dir) if other_dir else None, "clips": len(other),
                                        "songs": len(other_songs)}
    summary["per_window"] = per_window
    add_field_table(opts, summary, clips)
    write_window_files(opts, summary, window_rows, pieces)
    summary["report"] = write_report_files(opts, summary, scores, clips, items, gen, wav_paths, seed).name
    summary["seconds"] = {"total": round(time.perf_counter() - t_start, 3),
                          "generation": round(t_audio - t_gen, 3),
                          "audio": round(t_metrics - t_audio, 3), "metrics": round(t_outputs - t_metrics, 3)}
    write_text_atomic(out_dir / "summary.json", json.dumps(json_safe(summary), indent=2))
    return summary
