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
(chance) has exactly the real statistics, so chance has no Fréchet distance.

Writes per_clip.csv, summary.json (mean/std/median of every metric per row, the rhythm scores as the
papers summarise them, Fréchet distances, counts, settings, seeds), report.html (lm2a/report.py:
tables, audio players, mels, cross-attention maps, settings), mel_pairs.png, metrics_bars.png and
hist_metrics.png to --out_dir.
"""
import argparse
import csv
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from lm2a.clipio import json_safe, write_text_atomic
from lm2a.config import config_from_args
from lm2a.generate import GEN_SUFFIX, RECORD_KEYS, add_sampling_flags
from lm2a.rhythm import METRIC_SOURCES, RESOLUTION_NOTE, RHYTHM_KEYS
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
N_PLOT_PAIRS = 4               # clips shown in mel_pairs.png
VOCODER = ""                   # BigVGAN folder for the waveform metrics ("" = Griffin-Lim)
GL_ITERS = 64                  # Griffin-Lim iterations
REPORT_CLIPS = 8               # clips shown (and playable) in report.html
ATTENTION_CLIPS = 2            # clips with cross-attention maps in report.html
ATTENTION_LAYER = ""           # cross-attention block to draw ("" = lm2a.report.default_attention_layer)
COLORS = {"model": "tab:blue", "uncond": "tab:orange", "chance": "tab:gray", "shuffled": "tab:purple",
          "real": "tab:green"}

ROW_KINDS = ("model", "uncond", "chance", "shuffled", "real")
METRICS = ("mse", "ssim", "cosine", "mean_error", "std_error", "snr_db", "lsd_db", "onset_precision",
           "onset_recall", "onset_f1", "beat_align", "beat_align_shuffled", "beat_align_real") + RHYTHM_KEYS
CSV_COLUMNS = ("name", "song", "start_s", "row", "paired_with") + METRICS
# panels of metrics_bars.png and hist_metrics.png (the shuffled / real columns are rows there)
PLOT_METRICS = tuple(m for m in METRICS if m not in ("beat_align_shuffled", "beat_align_real")
                     and (m not in RHYTHM_KEYS or m in ("bhs_d2m_1s", "bhs_d2m_5hz", "f1_loris_1s",
                                                        "f1_loris_5hz", "bas_aist")))
GEN_SETTING_KEYS = tuple(SamplingConfig.__dataclass_fields__) + RECORD_KEYS


# ---- inputs -----------------------------------------------------------------------------------
def load_real_clips(paths, info=None):
    """Clip files, each read once (lm2a.generate.load_clips) -> (items, skipped [(name, reason)]).
    Each item's `clip` holds the arrays the metrics use: mel (80, T), motion (frames, 234) at fps."""
    from lm2a.generate import load_clips
    items, skipped = load_clips(paths, info)
    return items, [(Path(p).stem, reason) for p, reason in skipped]


def read_generated(gen_dir, items):
    """Matches <name>_gen.npz in gen_dir to the real clips -> (gens {name: mel (80, T)},
    settings {name: {sampler, steps, ...}}, skipped [(name, reason)])."""
    from lm2a.generate import read_generated as read_one
    from lm2a.melconfig import compare_mel_configs, mel_config_from_json
    gen_dir = Path(gen_dir)
    if not gen_dir.is_dir():
        raise FileNotFoundError(f"{gen_dir}: --gen_dir is not a folder (run sample.py --out_dir "
                                f"{gen_dir} first)")
    gens, settings, skipped = {}, {}, []
    for item in items:
        name, clip = item["name"], item["clip"]
        path = gen_dir / f"{name}{GEN_SUFFIX}.npz"
        if not path.is_file():
            skipped.append((name, f"{path}: no generated file for {item['meta']['source_npz']}"))
            continue
        try:
            gen = read_one(path)
        except ValueError as e:
            skipped.append((name, str(e)))
            continue
        mel = gen["mel"]
        if mel.shape != clip["mel"].shape:
            skipped.append((name, f"{path}: mel {mel.shape} vs real {clip['mel'].shape} in "
                                  f"{item['meta']['source_npz']}"))
            continue
        if not np.isfinite(mel).all():
            skipped.append((name, f"{path}: generated mel holds NaN/inf values"))
            continue
        if gen["mel_config"] is not None:
            diffs = compare_mel_configs(gen["mel_config"], mel_config_from_json(clip["mel_config"]),
                                        "generated", "clip")
            if diffs:
                skipped.append((name, f"{path}: mel config differs from {item['meta']['source_npz']}: "
                                      f"{'; '.join(diffs)}"))
                continue
        gens[name] = mel
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


# ---- metrics ----------------------------------------------------------------------------------
def _crop_pair(a, b):
    """Two mels of possibly different lengths -> both cut to the shorter one."""
    t = min(a.shape[1], b.shape[1])
    return a[:, :t], b[:, :t]


def score_pair(ref, est_mel, motion, fps, ref_audio=None, est_audio=None):
    """Metrics of an estimate against the real clip `ref` (both mels cropped to the shorter), beat
    scores against `motion`; with audio (lm2a.rhythm.audio_rhythm dicts) the rhythm scores too."""
    from lm2a import metrics as M
    from lm2a.rhythm import rhythm_scores
    a, b = _crop_pair(ref["mel"], est_mel)
    row = M.clip_metrics(a, b, motion, int(ref["sr"]), int(ref["hop_length"]), fps)
    if ref_audio is not None and est_audio is not None:
        row.update(rhythm_scores(ref_audio, est_audio, motion, fps))
    return row


def real_row(clip, fps, audio=None):
    """The ceiling: the real audio against its own motion (beat scores; onset scores are 1)."""
    from lm2a import metrics as M
    from lm2a.rhythm import rhythm_scores
    audio_beats = M.audio_beats(clip["mel"], int(clip["sr"]), int(clip["hop_length"]))
    row = {"beat_align": M.beat_alignment(M.motion_beats(clip["motion"], fps), audio_beats)}
    if audio is not None:
        row.update(rhythm_scores(audio, audio, clip["motion"], fps))
    return row


def compute_rows(clips, gens, uncond=None, pairs=None, references=True, progress=True, audio=None):
    """Per-clip metric rows (module docstring). clips: real clips (load_real_clips), gens {name: mel},
    uncond {name: mel} or None, pairs: permutation (chance_pairs) or None, audio: {real|generated|
    uncond: {name: lm2a.rhythm.audio_rhythm dict}} of the vocoded waveforms or None. -> row dicts."""
    from tqdm import tqdm

    def sound(kind, name):
        return audio[kind][name] if audio and kind in audio else None
    rows = []
    for i, c in enumerate(tqdm(clips, desc="metrics", unit="clip", disable=not progress)):
        name, fps = c["name"], int(c["fps"])
        base = {"name": name, "song": c["song"], "start_s": c["start_s"]}

        def add(kind, ref, est_mel, est_audio, motion, paired_with=""):
            row = dict(base, row=kind, paired_with=paired_with,
                       **score_pair(ref, est_mel, motion, fps, sound("real", ref["name"]), est_audio))
            rows.append(row)
            return row
        model = add("model", c, gens[name], sound("generated", name), c["motion"])
        if not references:
            continue
        if uncond is not None:
            add("uncond", c, uncond[name], sound("uncond", name), c["motion"])
        if pairs is not None:
            other = clips[pairs[i]]
            add("chance", c, other["mel"], sound("real", other["name"]), c["motion"], other["name"])
            shuffled = add("shuffled", other, gens[name], sound("generated", name), other["motion"],
                           other["name"])
            model["beat_align_shuffled"], model["paired_with"] = shuffled["beat_align"], other["name"]
        real = dict(base, row="real", paired_with="", **real_row(c, fps, sound("real", name)))
        model["beat_align_real"] = real["beat_align"]
        rows.append(real)
    return rows


def frechet_distances(clips, gens, uncond, seed):
    """{model, uncond, chance, real_split_half}: Fréchet distance of each generated set to the real
    set; real_split_half compares two random halves of the real set (the floor at this size)."""
    from lm2a.metrics import frechet_distance
    real = [c["mel"] for c in clips]
    out = {"model": frechet_distance(real, [gens[c["name"]] for c in clips]),
           "uncond": frechet_distance(real, [uncond[c["name"]] for c in clips]) if uncond else None,
           "chance": None, "real_split_half": None}
    if len(clips) >= 2:
        order = np.random.default_rng(seed).permutation(len(clips))
        half = len(clips) // 2
        out["real_split_half"] = frechet_distance([real[i] for i in order[:half]],
                                                  [real[i] for i in order[half:]])
    return out


def summarize_rows(rows):
    from lm2a.metrics import summarize
    out = {}
    for kind in ROW_KINDS:
        sel = [{k: r[k] for k in METRICS if k in r} for r in rows if r["row"] == kind]
        if sel:
            out[kind] = dict(n=len(sel), metrics=summarize(sel))
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


# ---- output -----------------------------------------------------------------------------------
def write_csv(path, rows):
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, restval="", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    write_text_atomic(path, buf.getvalue())


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_mel_pairs(path, clips, gens, uncond=None, n=N_PLOT_PAIRS):
    """Columns = clips; rows = real, generated (and unconditional); one colour scale for all."""
    plt = _plt()
    shown = clips[:n]
    kinds = [("real", {c["name"]: c["mel"] for c in shown}), ("generated", gens)]
    if uncond:
        kinds.append(("uncond", uncond))
    mels = [[k[1][c["name"]] for c in shown] for k in kinds]
    vmin = min(float(m.min()) for row in mels for m in row)
    vmax = max(float(m.max()) for row in mels for m in row)
    fig, axes = plt.subplots(len(kinds), len(shown), figsize=(3.6 * len(shown) + 1, 2.2 * len(kinds) + 0.6),
                             squeeze=False, constrained_layout=True)
    for r, (label, _) in enumerate(kinds):
        for j, c in enumerate(shown):
            ax = axes[r, j]
            im = ax.imshow(mels[r][j], origin="lower", aspect="auto", vmin=vmin, vmax=vmax, cmap="magma",
                           interpolation="nearest")
            if r == 0:
                ax.set_title(c["name"], fontsize=7)
            if j == 0:
                ax.set_ylabel(f"{label}\nmel bin")
            if r == len(kinds) - 1:
                ax.set_xlabel("mel frame")
    fig.colorbar(im, ax=axes.ravel().tolist(), label="log-mel (ln)")
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _metric_panels(summary_rows):
    return [m for m in PLOT_METRICS if any(m in s["metrics"] for s in summary_rows.values())]


def plot_metric_bars(path, summary_rows):
    """One panel per metric: mean +- std of every row kind."""
    plt = _plt()
    panels = _metric_panels(summary_rows)
    cols = 4
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False,
                             constrained_layout=True)
    for ax, metric in zip(axes.ravel(), panels):
        bars = [(k, summary_rows[k]["metrics"].get(metric)) for k in ROW_KINDS if k in summary_rows]
        bars = [(k, s) for k, s in bars if s is not None and s["count"] > 0]
        x = np.arange(len(bars))
        ax.bar(x, [s["mean"] for _, s in bars], yerr=[s["std"] for _, s in bars], capsize=3,
               color=[COLORS[k] for k, _ in bars])
        ax.set_xticks(x, [k for k, _ in bars], fontsize=8)
        ax.set_title(metric, fontsize=9)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _series(rows, metric):
    """[(label, per-clip values)] of a metric for every row kind."""
    out = [(kind, [r[metric] for r in rows if r["row"] == kind and metric in r]) for kind in ROW_KINDS]
    return [(k, np.asarray(v, dtype=np.float64)) for k, v in out if v]


def plot_histograms(path, rows):
    """One panel per metric: histograms of the per-clip values of every row kind, overlaid on
    common bins."""
    plt = _plt()
    panels = [m for m in PLOT_METRICS if any(m in r for r in rows)]
    cols = 4
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.4 * nrows), squeeze=False,
                             constrained_layout=True)
    for ax, metric in zip(axes.ravel(), panels):
        series = [(k, v[np.isfinite(v)]) for k, v in _series(rows, metric)]
        finite = np.concatenate([v for _, v in series]) if series else np.zeros(0)
        if finite.size:
            bins = np.histogram_bin_edges(finite, bins=20)
            for kind, vals in series:
                if vals.size:
                    ax.hist(vals, bins=bins, alpha=0.5, label=kind, color=COLORS[kind])
        ax.set_title(metric, fontsize=9)
        ax.tick_params(labelsize=7)
        if metric == panels[0]:
            ax.legend(fontsize=7)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---- main -------------------------------------------------------------------------------------
def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", default=CKPT, help="checkpoint file or folder; with --gen_dir only "
                                                "needed for the uncond row")
    p.add_argument("--npz_dir", default=NPZ_DIR, help="real clips (a split folder)")
    p.add_argument("--out_dir", default=OUT_DIR)
    p.add_argument("--max_samples", type=int, default=MAX_SAMPLES, help="first N clips (0 = all)")
    p.add_argument("--gen_dir", default=GEN_DIR, help="read <name>_gen.npz from here instead of generating")
    p.add_argument("--no_references", action="store_true",
                   help="model row only (no uncond / chance / shuffled / real rows)")
    p.add_argument("--vocoder", default=VOCODER, help="BigVGAN folder, name or hub id for the waveform "
                                                      "metrics and report audio (\"\" = Griffin-Lim)")
    p.add_argument("--gl_iters", type=int, default=GL_ITERS, help="Griffin-Lim iterations")
    p.add_argument("--no_audio_metrics", action="store_true",
                   help="no vocoding: no waveform (rhythm) metrics, no audio in report.html")
    p.add_argument("--report_clips", type=int, default=REPORT_CLIPS, help="clips shown in report.html")
    p.add_argument("--attention_clips", type=int, default=ATTENTION_CLIPS,
                   help="clips with cross-attention maps in report.html (needs --ckpt)")
    p.add_argument("--attention_layer", default=ATTENTION_LAYER,
                   help="cross-attention block to draw, e.g. up.1.attn (\"\" = highest-resolution up block)")
    add_sampling_flags(p, globals())
    return p


def generated_rows(args, items, out_dir, device, progress, notes):
    """The model row's mels (generated here or read from --gen_dir) and, with references, the
    uncond row's (same per-clip noise, conditions dropped) -> (gens, uncond, settings of both,
    skipped, the diffusion model or None)."""
    from dataclasses import asdict, replace

    from lm2a.checkpoint import CheckpointError
    from lm2a.generate import check_settings, generate_for_items, load_model, resolve_precision, usable_items
    settings = config_from_args(SamplingConfig, args)
    references = not args.no_references
    diffusion = info = None
    skipped = []
    if args.gen_dir:
        gens, per_file, skipped = read_generated(args.gen_dir, items)
        recorded = common_settings(per_file)
        model_settings = {k: recorded.get(k) for k in GEN_SETTING_KEYS}  # as the files say
        # the uncond row repeats the generation's settings where the files agree on them
        settings = replace(settings, **{k: v for k, v in recorded.items()
                                        if k in asdict(settings) and not isinstance(v, list)})
        if references:
            try:
                diffusion, info = load_model(args.ckpt, device, use_ema=not args.no_ema)
            except (FileNotFoundError, CheckpointError) as e:
                notes.append(f"uncond row skipped: no usable --ckpt ({e})")
            if info is not None and "ckpt_step" in recorded and recorded["ckpt_step"] != info["step"]:
                notes.append(f"--ckpt is step {info['step']}, the generated files record step "
                             f"{recorded['ckpt_step']}: the uncond row comes from a different model")
    else:
        diffusion, info = load_model(args.ckpt, device, use_ema=not args.no_ema)
        settings = resolve_precision(settings, device)
        problem = check_settings(settings, info)
        if problem:
            raise ValueError(problem)
        items, skipped = usable_items(items, info)
        skipped = [(Path(p).stem, reason) for p, reason in skipped]
        results = generate_for_items(diffusion, info, items, settings, out_dir / "generated", png=False,
                                     progress=progress, desc="model")
        gens = {r["name"]: r["mel"] for r in results}
        model_settings = dict(asdict(settings), ckpt_path=info["_path"], ckpt_step=info["step"],
                              use_ema=info["use_ema"])
    uncond, uncond_settings = None, None
    if references and diffusion is not None:
        usable, _ = usable_items([it for it in items if it["name"] in gens], info)
        uncond_cfg = replace(settings, guidance=0.0)
        results = generate_for_items(diffusion, info, usable, uncond_cfg, out_dir / "generated_uncond",
                                     png=False, progress=progress, desc="uncond")
        uncond = {r["name"]: r["mel"] for r in results}
        if len(uncond) != len(gens):
            notes.append(f"uncond row: {len(gens) - len(uncond)} clips refused by the checkpoint")
            uncond = None
        else:
            uncond_settings = dict(asdict(uncond_cfg), ckpt_path=info["_path"], ckpt_step=info["step"],
                                   use_ema=info["use_ema"])
    return gens, uncond, model_settings, uncond_settings, skipped, diffusion


def pair_clips(clips, seed, references, notes):
    """The chance / shuffled pairing (lm2a.metrics.chance_pairs, another song where possible) or
    None."""
    from lm2a.metrics import chance_pairs
    if not references:
        return None
    if len(clips) < 2:
        notes.append("chance and shuffled rows need at least 2 clips")
        return None
    pairs = chance_pairs([c["song"] for c in clips], seed=seed)
    same_song = sum(clips[i]["song"] == clips[j]["song"] for i, j in enumerate(pairs))
    if same_song:
        notes.append(f"chance pairs: {same_song} of {len(clips)} paired within their song "
                     f"(one song holds more than half of the clips)")
    return pairs


def waveforms(args, clips, gens, uncond, out_dir, device, progress, notes):
    """The real, generated and uncond mels through one vocoder (lm2a.evalaudio), written to
    OUT/audio/<set>/<name>.wav -> (wav paths {set: {name: path}}, {set: {name: audio_rhythm}},
    audio settings for summary.json); ({}, None, None) with --no_audio_metrics."""
    if args.no_audio_metrics:
        return {}, None, None
    from lm2a import evalaudio
    from lm2a.melconfig import mel_config_from_json
    from lm2a.rhythm import ONSET_PAD_MODE, PAPER_SR
    configs = {str(c["mel_config"]) for c in clips}
    if len(configs) > 1:
        raise ValueError(f"{args.npz_dir}: the clips hold {len(configs)} different mel configs; one "
                         f"vocoder cannot serve them (evaluate one preprocess.py output at a time)")
    mel_cfg = mel_config_from_json(clips[0]["mel_config"])
    model, audio_settings = evalaudio.open_vocoder(args.vocoder, mel_cfg, device, args.gl_iters, notes)
    mel_sets = {"real": {c["name"]: c["mel"] for c in clips}, "generated": gens, "uncond": uncond}
    paths, wavs = evalaudio.vocode_sets(mel_sets, mel_cfg, out_dir / evalaudio.AUDIO_DIR, model,
                                        args.gl_iters, progress)
    analysis = evalaudio.analyse_sets(wavs, int(mel_cfg["sampling_rate"]), int(clips[0]["fps"]), progress)
    audio_settings.update(sample_rate=int(mel_cfg["sampling_rate"]),
                          wav="16-bit PCM, read back for the metrics", wav_dir=evalaudio.AUDIO_DIR,
                          analysis_rate=PAPER_SR, onset_pad_mode=ONSET_PAD_MODE)
    return paths, analysis, audio_settings


def rhythm_summary(rows):
    """{row kind: lm2a.rhythm.summarize_rhythm} of the rows holding waveform metrics."""
    from lm2a.rhythm import summarize_rhythm
    out = {}
    for kind in ROW_KINDS:
        sel = [r for r in rows if r["row"] == kind and RHYTHM_KEYS[0] in r]
        if sel:
            out[kind] = summarize_rhythm(sel)
    return out


def write_report_files(args, out_dir, summary, rows, clips, items, gens, pairs, wav_paths, diffusion):
    """Mel and attention PNGs of the shown clips and report.html (lm2a.report); records the
    attention settings in summary["attention"]."""
    from lm2a import report
    picked = report.pick_clips(clips, max(args.report_clips, 0))
    seed = summary["settings"].get("seed")
    info = report.clip_pages(out_dir, clips, picked, gens, wav_paths, pairs,
                             seed if isinstance(seed, int) else None)
    names = [clips[i]["name"] for i in picked[:max(args.attention_clips, 0)]]
    attention = []
    if names and diffusion is not None:
        attention = report.attention_pages(out_dir, diffusion, {it["name"]: it for it in items},
                                           {c["name"]: c for c in clips}, names, args.attention_layer or None,
                                           seed=args.seed, gens=gens)
        weights = "EMA" if summary["settings"].get("use_ema") else "raw"
        summary["attention"] = {"layer": attention[0]["layer"], "t": attention[0]["t"], "clips": names,
                                "input": f"the generated mel noised to t (noise seed {args.seed}), "
                                         f"{weights} weights, heads averaged"}
    elif names:
        summary["attention"] = {"skipped": "no attention maps: no model loaded (--gen_dir without a "
                                           "usable --ckpt, or --no_references)"}
    plots = ("mel_pairs.png", "metrics_bars.png", "hist_metrics.png")
    return report.write_report(out_dir, summary, rows, info, attention, plots)


def evaluate(args):
    """Runs stage 5; returns the summary dict (also written to OUT/summary.json)."""
    from lm2a import pick_device
    from lm2a.clipio import list_clip_files

    t_start = time.perf_counter()
    out_dir = Path(args.out_dir)
    progress = not args.quiet
    references = not args.no_references
    notes = []
    paths = list_clip_files(args.npz_dir)
    if args.max_samples > 0:
        paths = paths[:args.max_samples]
    items, skipped = load_real_clips(paths)
    if not items:
        raise ValueError(f"{args.npz_dir}: no readable clip ({skipped[0][1] if skipped else 'empty folder'})")
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(args.device)

    t_gen = time.perf_counter()
    gens, uncond, model_settings, uncond_settings, gen_skipped, diffusion = generated_rows(
        args, items, out_dir, device, progress, notes)
    skipped += gen_skipped
    gen_seconds = time.perf_counter() - t_gen
    if args.attention_layer and diffusion is not None:   # a typo fails now, not after the vocoder
        from lm2a.report import record_attention
        with record_attention(diffusion.model, args.attention_layer):
            pass
    clips = [dict(it["clip"], name=it["name"]) for it in items if it["name"] in gens]
    if not clips:
        reasons = "; ".join(r for _, r in skipped[:3])
        raise ValueError(f"no clip to evaluate ({reasons})")

    t_audio = time.perf_counter()
    wav_paths, audio, audio_settings = waveforms(args, clips, gens, uncond, out_dir, device, progress, notes)
    t_metrics = time.perf_counter()
    pairs = pair_clips(clips, args.seed, references, notes)
    rows = compute_rows(clips, gens, uncond, pairs, references, progress, audio)
    summary_rows = summarize_rows(rows)
    frechet = frechet_distances(clips, gens, uncond, args.seed)
    metrics_seconds = time.perf_counter() - t_metrics

    # ---- outputs
    write_csv(out_dir / "per_clip.csv", rows)
    plot_mel_pairs(out_dir / "mel_pairs.png", clips, gens, uncond)
    plot_metric_bars(out_dir / "metrics_bars.png", summary_rows)
    plot_histograms(out_dir / "hist_metrics.png", rows)
    summary = {
        "settings": dict(model_settings, npz_dir=str(Path(args.npz_dir).resolve()),
                         gen_dir=str(Path(args.gen_dir).resolve()) if args.gen_dir else None,
                         generated_here=not args.gen_dir, max_samples=args.max_samples,
                         references=references, chance_seed=args.seed if pairs is not None else None,
                         uncond=uncond_settings, device=str(device)),
        "counts": {"clips_listed": len(paths), "clips_evaluated": len(clips),
                   "clips_skipped": len(skipped), "songs": len({c["song"] for c in clips}),
                   "rows": {k: v["n"] for k, v in summary_rows.items()}},
        "rows": summary_rows,
        "rhythm": rhythm_summary(rows) if audio else None,
        "rhythm_sources": dict(METRIC_SOURCES),
        "rhythm_resolution_note": RESOLUTION_NOTE,
        "audio": audio_settings,
        "frechet": frechet,
        "beat_alignment": beat_table(summary_rows),
        "skipped": [{"clip": n, "reason": r} for n, r in skipped],
        "notes": notes,
    }
    report_path = write_report_files(args, out_dir, summary, rows, clips, items, gens, pairs, wav_paths,
                                     diffusion)
    summary["report"] = report_path.name
    summary["seconds"] = {"total": round(time.perf_counter() - t_start, 3),
                          "generation": round(gen_seconds, 3),
                          "audio": round(t_metrics - t_audio, 3), "metrics": round(metrics_seconds, 3)}
    write_text_atomic(out_dir / "summary.json", json.dumps(json_safe(summary), indent=2))
    return summary


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
            f"{_fmt(fd['real_split_half'], '.2f')}){rhythm_line(summary)}; "
            f"{summary['seconds']['total']:.1f} s "
            f"-> {Path(out_dir) / summary['report']}")


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


def main(argv=None):
    from lm2a.checkpoint import CheckpointError
    try:
        args = build_parser().parse_args(argv)
        summary = evaluate(args)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
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
