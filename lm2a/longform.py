"""Music for a whole dance: one continuous log-mel over a dance of any length (issue 12).

    dance = load_dance(info, "song/smplfull.json", lyrics_json="song/sliced.json", audio="song/audio.wav")
    results = generate_dances(diffusion, info, [dance], SamplingConfig(steps=50), LongformConfig())
    write_longform(out_dir / f"{dance['name']}_full_gen.npz", dance, results[0], info, settings, lf)

The model knows 6-second clips. The dance is covered by windows of that length (516 mel frames):
the fewest windows that overlap by at least `overlap` seconds, spread evenly so that the first starts
and the last ends with the dance (plan_windows; the overlaps come out a little longer than asked when
the dance length does not divide evenly). A dance shorter than one window is one window whose motion
is padded with its last frame and whose output is cut to the dance.

Continuation: the first window is sampled as a clip is. Each next window is sampled with the
frames it shares with what is already generated held to that output (inpainting by replacement,
GaussianDiffusion.sample(known=, known_mask=)): at every denoising step they are replaced by the
previous output noised to the current level, so the new frames grow out of the old ones. With
`crossfade` > 0 the last crossfade seconds of the shared frames are not held: there the old output
and the new window are mixed with a linear ramp. The default is no crossfade: measured on the demo
model (RESULTS.md), the held frames alone give joins as smooth as the music inside the windows (seam
ratio 1.01, the real songs' 1.00), while a 0.1 s crossfade makes them smoother than the music (0.75:
averaging two textures flattens the frame-to-frame change). With continuation off (LongformConfig.continuation=False) every window
is sampled independently and the windows are butted together: the naive concatenation that the
seam measure compares against.

Conditions: the motion features come from lm2a.motion (the same functions as stage 1) computed
once over the whole dance, then resampled to the mel frame rate and cut into windows. Stage 1 smooths
and differentiates each 6 s clip on its own, so within 6 motion frames (0.2 s) of a clip's edges its features
differ slightly from the whole-dance ones (Gaussian sigma 1 frame, truncated at 4, with 'nearest' edges; one-sided
differences at the ends); everywhere else they are the same numbers. The lyric condition of a window
is the line(s) sung in it (sliced.json: line i is sung from its key to the next one, the last key only
marks the end; a line counts when it is sung for at least `lyric_min` seconds of the window; several
lines are joined with a space, or with lyric_pick="longest" the one sung longest is taken); a window where nothing is sung gets the null lyric (the learned null
token alone, exactly what the model sees when lyrics are dropped: all its tokens are padding).

Determinism: window k of a dance draws all its noise from its own generator, seeded by
lm2a.generate.clip_seed(seed, "<name>#w<k>"), so a dance's mel does not depend on the other dances
sampled beside it (batch_size = dances in parallel: windows of one dance are sequential).

Clips longer than the model's window (generate_clips: sample.py --npz / --npz_dir and val.py): a clip
(preprocess.py --clip_seconds 0 writes one per whole AIST++ dance, 10-30 s) more than WINDOW_SLACK_FRAMES
mel frames longer than the window is generated the same way, as a dance (dance_from_item) made of the
clip's own motion (resampled to the mel frame rate as lm2a.data does) and its lyric tokens in every
window (the null lyric when it has none); its <name>_gen.npz also records the window layout
(window_layout, the keys of <name>_full_gen.npz). Shorter clips, and clips of the window's length, are
one network call at their own length (lm2a.generate.generate_for_items), as before. The checkpoint does
not record the length of its training clips: the model's window is LongformConfig.window (6 s, the
default clip length of preprocess.py; sample.py / val.py --window).

Seam measure (seam_ratio): mean frame-to-frame spectral change (L1 between consecutive log-mel
frames, averaged over bands) at the joins divided by the same elsewhere; ~1 means the joins are
as smooth as the music inside the windows.
"""
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lm2a.audio import compute_mel_long, load_audio
from lm2a.clipio import save_npz_atomic
from lm2a.data import pad_lyric_tokens
from lm2a.device import resolve_precision
from lm2a.generate import (GEN_SUFFIX, clip_seed, compatibility_problems, describe_settings, generate_for_items,
                           make_generator, write_generated)
from lm2a.lyrics import LyricEncoder
from lm2a.motion import clip_frame_range, read_motion, resample_to_mel
from lm2a.plots import mel_figure
from lm2a.timeline import motion_t0_seconds, read_lyric_timeline
from models.diffusion import SamplingConfig
from models.hparams import hparam

FULL_GEN_SUFFIX = "_full_gen"  # <name>_full_gen.npz
NULL_LYRIC = ""                # the window text of a window where nothing is sung
SEAM_WIDTH = 1                 # frame transitions on each side of a join that count as the join
WINDOW_SLACK_FRAMES = 4        # a clip at most this many mel frames longer than the window is one network call
PLOT_MAX_FRAMES = 16384        # mel frames a whole-dance PNG draws per panel (every k-th of a longer mel)


@dataclass(frozen=True)
class LongformConfig:
    """How a dance is covered by windows; written into the _full_gen.npz with asdict."""
    window: float = hparam(6.0, "window length (s): the clip length the model was trained on")
    overlap: float = hparam(1.0, "overlap of consecutive windows (s)")
    crossfade: float = hparam(0.0, "crossfade (s) at the end of each overlap, inside it (the overlap frames "
                                   "before it are held to the previous output); 0: none, the measured best "
                                   "(a crossfade averages two textures: joins come out too smooth, RESULTS.md)")
    continuation: bool = hparam(True, "hold each window's overlap to the previous output (--no-continuation: "
                                      "independent windows butted together, the naive concatenation)")
    lyric_min: float = hparam(0.5, "a lyric line conditions a window when it is sung for at least this "
                                   "long (s) in it")
    lyric_pick: str = hparam("all", "the lyric of a window: all lines sung in it (joined), or the one sung "
                                    "longest in it", choices=("all", "longest"))

    def __post_init__(self):
        if self.window <= 0:
            raise ValueError(f"window must be > 0 s, got {self.window}")
        if not 0 <= self.overlap < self.window:
            raise ValueError(f"overlap must be in [0, window = {self.window}) s, got {self.overlap}")
        if not 0 <= self.crossfade <= self.overlap:
            raise ValueError(f"crossfade must be in [0, overlap = {self.overlap}] s, got {self.crossfade}")
        if self.lyric_pick not in ("all", "longest"):
            raise ValueError(f"lyric_pick must be 'all' or 'longest', got {self.lyric_pick!r}")


# ---- windows ------------------------------------------------------------------------------------
def seconds_to_frames(seconds, mel_config):
    """Whole mel frames in `seconds` (a duration inside a mel, e.g. an overlap), MelConfig's rate."""
    return int(round(float(seconds) * mel_config.sampling_rate / mel_config.hop_size))


def window_frames(mel_config, config: LongformConfig):
    """The model's window in mel frames: config.window seconds at `mel_config` (the checkpoint's, a
    MelConfig). The checkpoint does not record its training clips' length; the window setting stands
    for it (516 frames for the default 6 s)."""
    return mel_config.frames_for_seconds(config.window)


def needs_windows(n_frames, window):
    """A clip of n_frames mel frames is generated in windows of `window` frames: it is longer than one
    window by more than WINDOW_SLACK_FRAMES (a 517-frame clip of a 516-frame model is one call)."""
    return int(n_frames) > int(window) + WINDOW_SLACK_FRAMES


def window_starts(n_frames, window, overlap):
    """First frames of the windows covering n_frames: the fewest windows whose consecutive ones
    overlap by at least `overlap` frames, spread evenly from 0 to n_frames - window (so the overlaps
    are equal to within a frame, >= overlap; the last window ends with the dance). [0] when the
    dance fits in one window."""
    if n_frames <= window:
        return [0]
    stride = window - overlap
    n_windows = -(-(n_frames - window) // stride) + 1
    return [int(round(k * (n_frames - window) / (n_windows - 1))) for k in range(n_windows)]


def plan_windows(n_frames, window, overlap, crossfade):
    """The layout of a dance of n_frames mel frames in windows of `window` frames (all in frames).
    -> dict(starts, shared, held, fade, joins, n_frames, window):
    shared[k]: frames window k shares with the output of windows < k (0 for k = 0);
    held[k] = shared[k] - fade[k]: frames held to that output while sampling (continuation);
    fade[k] = min(crossfade, shared[k]): the frames after them, mixed old -> new with a linear ramp;
    joins[k - 1]: the frame where window k takes over (the middle of its fade; the first frame
    after the shared ones when there is no fade)."""
    starts = window_starts(n_frames, window, overlap)
    shared, held, fade, joins = [0], [0], [0], []
    for prev, start in zip(starts, starts[1:]):
        s = prev + window - start
        f = min(crossfade, s)
        shared.append(s)
        fade.append(f)
        held.append(s - f)
        joins.append(start + s - f + f // 2)
    return dict(starts=starts, shared=shared, held=held, fade=fade, joins=joins, n_frames=int(n_frames),
                window=int(window))


def join_window(out, y, start, shared, fade):
    """Puts window output y (80, W) into the running output `out` (80, >= start + W) in place: the
    shared frames before the fade keep `out`, the fade mixes out -> y linearly, the rest is y."""
    window = y.shape[1]
    held = shared - fade
    if fade:
        w = ((np.arange(fade) + 0.5) / fade).astype(out.dtype)  # (fade,) 0 -> 1
        sl = slice(start + held, start + shared)
        out[:, sl] = (1 - w) * out[:, sl] + w * y[:, held:shared]
    out[:, start + shared:start + window] = y[:, shared:]
    return out


# ---- lyrics -------------------------------------------------------------------------------------
def sung_lines(entries):
    """Lyric timeline [(time_s, text)] (lm2a.timeline.read_lyric_timeline, sorted) -> [(start_s,
    end_s, text)]: line i is sung from its key to the next key; the last key only marks the end;
    blank lines are left out."""
    return [(t, t_next, text.strip()) for (t, text), (t_next, _) in zip(entries, entries[1:]) if text.strip()]


def window_lyrics(lines, window_times, min_s=0.5, pick="all"):
    """The lyric text of each window: the lines of `lines` ([(start_s, end_s, text)]) sung for at
    least min_s seconds in the window (or for all of a shorter window), in time order, joined by a
    space (pick="all") or the one sung longest in it (pick="longest", the earlier on a tie);
    NULL_LYRIC where none is. window_times: [(a_s, b_s)] in song time."""
    texts = []
    for a, b in window_times:
        need = min(min_s, b - a)
        sung = [(min(e, b) - max(s, a), text) for s, e, text in lines]
        picked = [(d, text) for d, text in sung if d > 0 and d >= need - 1e-9]
        if not picked:
            texts.append(NULL_LYRIC)
        elif pick == "longest":
            texts.append(max(picked, key=lambda p: p[0])[1])
        else:
            texts.append(" ".join(text for _, text in picked))
    return texts


# ---- one dance ----------------------------------------------------------------------------------
def dance_time_origin(motion_path, lyrics_json, entries, motion_t0):
    """-> (rule, song time (s) of motion frame 0): motion_t0 a rule of lm2a.timeline.MOTION_T0_RULES
    applied to the lyric timeline `entries`, a number of seconds ("given"), or None: "first_lyric"
    with a lyric timeline (JustLMD), else 0.0."""
    if motion_t0 is None:
        motion_t0 = "first_lyric" if lyrics_json is not None else 0.0
    if not isinstance(motion_t0, str):
        return "given", float(motion_t0)
    if lyrics_json is None and motion_t0 == "first_lyric":
        raise ValueError(f"{motion_path}: the motion time origin 'first_lyric' needs a lyric timeline "
                         f"(sliced.json); give one, or the song time of motion frame 0 in seconds")
    return motion_t0, motion_t0_seconds(entries, motion_t0)


def dance_span(motion, start_s, end_s, t0, fps):
    """The span [start_s, end_s) in song time (None: where the motion starts / ends) as motion frames.
    -> (start_s, end_s, frame_start, frame_end). Raises ValueError naming the file when the motion does
    not cover it or it holds fewer than 3 frames (derivatives need 3)."""
    start_s = t0 if start_s is None else float(start_s)
    end_s = t0 + len(motion) / fps if end_s is None else float(end_s)
    where = f"{motion.path}: the span {start_s:.3f}-{end_s:.3f} s"
    if end_s <= start_s:
        raise ValueError(f"{where} is empty (--start < --end)")
    frame_start, frame_end = clip_frame_range(start_s, t0, end_s - start_s, fps)
    problem = motion.span_problem(frame_start, frame_end, t0, fps)
    if problem:
        raise ValueError(f"{where} {problem}; pick a later --start or an earlier --end")
    if frame_end - frame_start < 3:
        raise ValueError(f"{where} holds fewer than 3 motion frames")
    return start_s, end_s, frame_start, frame_end


def real_mel_of(audio_path, start_s, end_s, cfg, n_frames):
    """(80, <= n_frames) float32 log-mel of the audio's span (the reference), or None when the file
    does not exist or the span holds less than one STFT window of audio."""
    if audio_path is None or not Path(audio_path).is_file():
        return None
    wav, _ = load_audio(audio_path, cfg.sampling_rate)
    a, b = int(round(start_s * cfg.sampling_rate)), min(int(round(end_s * cfg.sampling_rate)), len(wav))
    if b - a < cfg.n_fft:
        return None
    return compute_mel_long(wav[a:b], cfg)[:, :n_frames]  # in chunks: a long song's STFT is never whole


def load_dance(info, motion_path, lyrics_json=None, lyric_text=None, start_s=None, end_s=None,
               motion_t0=None, fps=30, audio_path=None, name=None, config: LongformConfig = None):
    """A dance to generate for, for the checkpoint `info` (a TrainedModel: its mel config): motion
    features over the whole dance at the mel frame rate, the window plan and each window's lyric text,
    and the real log-mel of the span when `audio_path` is given (the reference; None when it does not
    exist).

    motion_t0: see dance_time_origin. start_s / end_s: the span in song time (default: the whole
    motion). lyric_text: one line for every window (instead of lyrics_json; neither -> null lyric
    everywhere).
    -> dict(name, n_frames, motion_mel (T, 234), motion (frames, 234) at fps, real_mel (80, T_real)
    or None, meta {provenance written into the npz}, lines [(start_s, end_s, text)] sung, lyric_text,
    and plan_dance's config, plan, window_times, window_texts).
    Raises ValueError naming the file when the span is not covered by the motion."""
    cfg = info.mel_config
    motion_path = Path(motion_path)
    if lyrics_json is not None and lyric_text is not None:
        raise ValueError("give the lyrics as a timeline (sliced.json) or as one line, not both")
    entries, key_warnings = read_lyric_timeline(lyrics_json) if lyrics_json is not None else ([], [])
    t0_rule, t0 = dance_time_origin(motion_path, lyrics_json, entries, motion_t0)
    motion = read_motion(motion_path, fps)  # smplfull.json, or an AIST++ pkl resampled to fps
    start_s, end_s, frame_start, frame_end = dance_span(motion, start_s, end_s, t0, fps)
    # features over the whole dance (one smoothing and one derivative over all frames), then the span
    features, repaired = motion.span_features(frame_start, frame_end, fps)  # (frames, 234)
    n_frames = cfg.frames_for_seconds(end_s - start_s)
    motion_mel = resample_to_mel(features, fps, n_frames, cfg.sampling_rate, cfg.hop_size)  # float32: the features'
    real_mel = real_mel_of(audio_path, start_s, end_s, cfg, n_frames)

    default = motion_path.stem if motion_path.suffix.lower() == ".pkl" else motion_path.resolve().parent.name
    name = name or default.replace("__", "_")
    meta = dict(song=name, motion_path=str(motion_path.resolve()),
                lyrics_json=str(Path(lyrics_json).resolve()) if lyrics_json is not None else "",
                lyric_text=str(lyric_text) if lyric_text is not None else "",
                audio_path=str(Path(audio_path).resolve()) if real_mel is not None else "",
                start_s=float(start_s), end_s=float(end_s), motion_t0=float(t0), motion_t0_rule=t0_rule,
                frame_start=int(frame_start), frame_end=int(frame_end), fps=int(fps),
                motion_repaired_frames=repaired, motion_missing_frames=int(motion.missing_frames),
                lyric_key_warnings=len(key_warnings), mel_config=cfg.to_json(), sr=cfg.sampling_rate,
                hop_length=cfg.hop_size)
    dance = dict(name=name, n_frames=n_frames, motion_mel=motion_mel, motion=features.astype(np.float32),
                 real_mel=real_mel, meta=meta, lines=sung_lines(entries),
                 lyric_text=None if lyric_text is None else str(lyric_text).strip())
    return plan_dance(dance, info, config or LongformConfig())


def plan_dance(dance, info, config: LongformConfig):
    """Sets the dance's window plan (plan_windows, in mel frames), each window's song time and
    lyric text for `config` (and forgets lyrics encoded for another plan). -> dance."""
    cfg = info.mel_config
    window = cfg.frames_for_seconds(config.window)
    n_frames, start_s, sr, hop = dance["n_frames"], dance["meta"]["start_s"], cfg.sampling_rate, cfg.hop_size
    plan = plan_windows(n_frames, window, seconds_to_frames(config.overlap, cfg),
                        seconds_to_frames(config.crossfade, cfg))
    times = [(start_s + s * hop / sr, start_s + min(s + window, n_frames) * hop / sr) for s in plan["starts"]]
    if dance["lyric_text"] is not None:
        texts = [dance["lyric_text"] or NULL_LYRIC] * len(times)
    else:
        texts = window_lyrics(dance["lines"], times, config.lyric_min, config.lyric_pick)
    dance.update(config=config, plan=plan, window_times=times, window_texts=texts)
    dance.pop("window_lyrics", None)
    return dance


def dance_from_item(item, info, config: LongformConfig):
    """A loaded clip (lm2a.generate.load_clips, or raw_item) as a dance for generate_dances, planned for
    `config`: its motion at the mel frame rate (item["motion"], resampled from the clip's fps as
    lm2a.data.item_from_clip does), its lyric tokens in every window (a (0, D) lyric: the null lyric),
    its real mel as the reference (None for a raw item), its provenance as the meta."""
    meta, tokens = dict(item["meta"]), item["lyrics"].numpy()
    motion = meta.pop("motion", None)  # a raw item's features at fps; a clip's are in item["clip"]
    motion = item["clip"]["motion"] if "clip" in item else motion
    real = np.ascontiguousarray(item["mel"].numpy().T) if item["mel"].shape[1] > 0 else None
    dance = dict(name=item["name"], n_frames=int(item["motion"].shape[0]),
                 motion_mel=np.asarray(item["motion"].numpy(), np.float32), motion=motion, real_mel=real,
                 meta=meta, lines=[], lyric_text=str(meta.get("lyric_text", "")).strip() if tokens.shape[0] else "")
    plan_dance(dance, info, config)
    dance["window_lyrics"] = [tokens] * len(dance["plan"]["starts"])  # the clip's own tokens: nothing to encode
    return dance


# ---- generation ---------------------------------------------------------------------------------
def window_seed(seed, name, k):
    return clip_seed(seed, f"{name}#w{k}")


def encode_window_lyrics(dances, info, device="cpu", encoder=None):
    """Adds dance['window_lyrics'] = [(L, D) float32 token states, (0, D) for the null lyric] for
    every window, each distinct line encoded once with the checkpoint's text encoder. Raises
    ValueError when the encoder does not match the checkpoint's."""
    dim = int(info.text_encoder.dim)
    lines = sorted({t for d in dances for t in d["window_texts"] if t != NULL_LYRIC})
    table = {}
    if lines:
        encoder = encoder or LyricEncoder(info.text_encoder.name, device=str(device))
        problems = compatibility_problems("lyric encoder", info.mel_config, encoder.name, encoder.dim, info)
        if problems:
            raise ValueError(problems[0])
        tokens, _ = encoder.encode(lines)
        table = dict(zip(lines, tokens))
    for d in dances:
        d["window_lyrics"] = [table[t] if t != NULL_LYRIC else np.zeros((0, dim), np.float32)
                              for t in d["window_texts"]]
    return dances


def _lyric_batch(token_list):
    """[(L_i, D)] numpy -> lyrics (B, L, D) zero-padded, pad mask (B, L) True on padding, L >= 1; a null
    lyric (L_i = 0) is all padding: the model attends to its learned null token alone, as when
    lyrics are dropped (models/embedding.py LyricEmbedding)."""
    return pad_lyric_tokens([torch.from_numpy(t) for t in token_list], length=1)


def _window_motion(dance, k):
    """(W, 234) motion of window k; a dance shorter than a window is padded with its last frame."""
    plan = dance["plan"]
    s, window = plan["starts"][k], plan["window"]
    m = dance["motion_mel"][s:s + window]
    if m.shape[0] < window:
        m = np.concatenate([m, np.repeat(m[-1:], window - m.shape[0], axis=0)])
    return m


def _continuation(dances, active, k, outs, window):
    """The known frames of window k (> 0) of the active dances: (known (B, 80, W) tensor of the output
    so far, known_mask (B, W) True on the held frames)."""
    known = np.stack([outs[i][:, dances[i]["plan"]["starts"][k]:][:, :window] for i in active])
    held = [dances[i]["plan"]["held"][k] for i in active]
    known_mask = torch.arange(window)[None, :] < torch.tensor(held)[:, None]  # (B, W)
    return dict(known=torch.from_numpy(known), known_mask=known_mask)


def _sample_window(diffusion, dances, active, k, outs, settings, config, window, step_progress):
    """Window k of the active dances in one sample() call. -> (mel (B, 80, W) float32, seeds)."""
    motion = torch.from_numpy(np.stack([_window_motion(dances[i], k) for i in active]))  # (B, W, 234)
    lyrics, pad_mask = _lyric_batch([dances[i]["window_lyrics"][k] for i in active])
    seeds = [window_seed(settings.seed, dances[i]["name"], k) for i in active]
    # decided by k and the config only: batch-independent
    kwargs = _continuation(dances, active, k, outs, window) if k > 0 and config.continuation else {}
    mel = diffusion.sample(motion, lyrics, lyric_pad_mask=pad_mask, length=window, settings=settings,
                           generator=[make_generator(s) for s in seeds], progress=step_progress, **kwargs)
    mel = mel.float().cpu().numpy()  # (B, 80, W)
    if kwargs:  # exactly the previous output on the held frames (sample() holds them up to the round
        # trip through normalisation)
        mel = np.where(kwargs["known_mask"].numpy()[:, None, :], kwargs["known"].numpy(), mel)
    return mel, seeds


def _generate_chunk(diffusion, dances, chunk, settings, config, bar, step_progress):
    """The dances `chunk` (indices) window by window, window k of all of them in one call.
    -> {i: result dict}."""
    window = dances[chunk[0]]["plan"]["window"]
    if any(dances[i]["plan"]["window"] != window for i in chunk):
        raise ValueError("dances of one batch need the same window length (same checkpoint and config)")
    outs = {i: np.zeros((diffusion.mel_dim, max(dances[i]["n_frames"], window)), np.float32) for i in chunk}
    windows, seeds = {i: [] for i in chunk}, {i: [] for i in chunk}
    for k in range(max(len(dances[i]["plan"]["starts"]) for i in chunk)):
        active = [i for i in chunk if k < len(dances[i]["plan"]["starts"])]
        mel, seeds_k = _sample_window(diffusion, dances, active, k, outs, settings, config, window, step_progress)
        for i, y, s in zip(active, mel, seeds_k):
            plan = dances[i]["plan"]
            windows[i].append(y)
            seeds[i].append(s)
            if k == 0:
                outs[i][:, :window] = y
            else:
                join_window(outs[i], y, plan["starts"][k], plan["shared"][k], plan["fade"][k])
        bar.update(len(active))
    return {i: dict(name=dances[i]["name"], mel=outs[i][:, :dances[i]["n_frames"]].copy(), windows=windows[i],
                    seeds=seeds[i]) for i in chunk}


@torch.inference_mode()
def generate_dances(diffusion, info, dances, settings: SamplingConfig = None, config: LongformConfig = None,
                    progress=True, step_progress=False, encoder=None):
    """Generates the whole mel of every dance (load_dance) with the windows of `config` (a dance
    planned for another config is planned again) and their lyrics (encoded here when missing, with
    `encoder` or the checkpoint's text encoder). settings.batch_size dances are sampled in parallel:
    window k of each of them in one call. -> list (in the order of `dances`) of dict(name, mel
    (80, T) float32, windows [(80, W) float32 raw window outputs, before joining], seeds)."""
    settings = resolve_precision(settings or SamplingConfig(), diffusion.device)
    config = config or LongformConfig()
    for d in dances:
        if d.get("config") != config:
            plan_dance(d, info, config)
    if any("window_lyrics" not in d for d in dances):
        encode_window_lyrics(dances, info, diffusion.device, encoder)
    results = {}
    with tqdm(total=sum(len(d["plan"]["starts"]) for d in dances), desc="windows", unit="window",
              disable=not progress or not dances) as bar:
        for first in range(0, len(dances), settings.batch_size):
            chunk = list(range(first, min(first + settings.batch_size, len(dances))))
            results.update(_generate_chunk(diffusion, dances, chunk, settings, config, bar, step_progress))
    return [results[i] for i in range(len(dances))]


# ---- output -------------------------------------------------------------------------------------
def window_layout(dance, result, config: LongformConfig):
    """The npz fields recording how a dance was generated in windows (in mel frames): window_starts,
    window_frames, held_frames, crossfade_frames, join_frames, each window's lyric text and seed, and
    every LongformConfig setting (asdict)."""
    plan = dance["plan"]
    return dict(**asdict(config), window_starts=np.asarray(plan["starts"], np.int64),
                window_frames=np.int64(plan["window"]), held_frames=np.asarray(plan["held"], np.int64),
                crossfade_frames=np.asarray(plan["fade"], np.int64),
                join_frames=np.asarray(plan["joins"], np.int64),
                window_lyric_texts=np.asarray(dance["window_texts"], dtype=np.str_).reshape(-1),
                window_seeds=np.asarray(result["seeds"], np.int64))


def write_longform(path, dance, result, info, settings: SamplingConfig, config: LongformConfig):
    """<name>_full_gen.npz: mel (80, T) raw log-mel of the whole span; the window layout
    (window_layout: window_starts, window_frames, held_frames, crossfade_frames, join_frames, each
    window's lyric text and seed, every window setting); every sampling setting (asdict); the
    checkpoint; the inputs' provenance; motion (frames, 234) features of the span at fps; real_mel
    (80, T_real) when the reference audio exists. -> path."""
    fields = dict(mel=np.asarray(result["mel"], np.float32), **asdict(settings),
                  **window_layout(dance, result, config),
                  use_ema=np.bool_(info.use_ema),
                  ckpt_path=np.str_(str(Path(info.path).resolve())), ckpt_step=np.int64(info.step),
                  text_encoder=np.str_(info.text_encoder.name), name=np.str_(dance["name"]),
                  created=np.str_(datetime.now(timezone.utc).isoformat(timespec="seconds")),
                  motion=np.asarray(dance["motion"], np.float32))
    fields.update({k: np.str_(v) if isinstance(v, str) else v for k, v in dance["meta"].items()})
    if dance["real_mel"] is not None:
        fields["real_mel"] = dance["real_mel"]
    save_npz_atomic(path, **fields)
    return Path(path)


def plot_longform(path, generated, real=None, window_starts=(), joins=(), hop_s=None, start_s=0.0, title=""):
    """A long PNG (lm2a.plots.mel_figure): the generated log-mel above the real one (when given), one
    colour scale, time in song seconds (the mel starts at start_s; hop_s: the mel config's
    hop_seconds); window starts as dashed white lines, joins (where each next window takes over) solid
    cyan. A mel of more than PLOT_MAX_FRAMES frames is drawn from every k-th frame (the PNG has fewer
    pixels than that, and 'nearest' draws one frame per pixel anyway): the figure's memory stays that of
    PLOT_MAX_FRAMES frames however long the dance."""
    if hop_s is None:
        raise ValueError("plot_longform: pass hop_s, the mel config's hop_seconds (the x axis is song time)")
    n_frames = generated.shape[1]
    width = min(4 + 0.3 * n_frames * hop_s, 80)  # about 0.3 inch per second, at most 80 inches
    k = -(-n_frames // PLOT_MAX_FRAMES)  # every k-th frame: the same time axis, k times the hop
    rows = [("generated", [generated[:, ::k]])] + ([("real", [real[:, ::k]])] if real is not None else [])
    marks = ([(s / k, dict(color="white", lw=0.8, ls="--")) for s in window_starts[1:]]
             + [(j / k, dict(color="cyan", lw=0.8)) for j in joins])
    mel_figure(path, rows, title=title, hop_seconds=hop_s * k, start_s=start_s, marks=marks,
               xlabel="song time (s); dashed: window starts, cyan: joins (where the next window takes over)",
               panel_size=(width - 0.4, 2.4), x_frames=n_frames / k)


# ---- clips of any length ------------------------------------------------------------------------
def generate_clips(diffusion, info, items, settings: SamplingConfig = None, config: LongformConfig = None,
                   out_dir=None, png=True, progress=True, step_progress=False, desc="generating"):
    """lm2a.generate.generate_for_items for clips of any length: an item longer than the model's window
    (needs_windows, window_frames of `config`) is generated whole in windows (dance_from_item +
    generate_dances: each window continuing the previous output); the others go through
    generate_for_items exactly as before. With out_dir each clip gets <name>_gen.npz (a windowed one
    also records window_layout) and, with png, <name>.png (a windowed one: generated above real, windows
    marked). -> generate_for_items' list of dict(name, mel (80, T), path, item), in the order of items;
    a windowed clip's dict also holds `plan` (plan_windows)."""
    settings = resolve_precision(settings or SamplingConfig(), diffusion.device)
    config = config or LongformConfig()
    window = window_frames(info.mel_config, config)
    long = [i for i, it in enumerate(items) if needs_windows(it["motion"].shape[0], window)]
    short = sorted(set(range(len(items))) - set(long))
    results = dict(zip(short, generate_for_items(diffusion, info, [items[i] for i in short], settings, out_dir,
                                                 png, progress, step_progress, desc)))
    dances = [dance_from_item(items[i], info, config) for i in long]
    made = generate_dances(diffusion, info, dances, settings, config, progress, step_progress) if dances else []
    for i, dance, res in zip(long, dances, made):
        path = None
        if out_dir is not None:
            path = write_windowed(Path(out_dir), items[i], dance, res, info, settings, config, png)
        results[i] = {"name": dance["name"], "mel": res["mel"], "path": path, "item": items[i], "plan": dance["plan"]}
    return [results[i] for i in range(len(items))]


def write_windowed(out, item, dance, result, info, settings: SamplingConfig, config: LongformConfig, png=True):
    """<name>_gen.npz of a clip generated in windows (lm2a.generate.write_generated's fields plus
    window_layout) and, with png, <name>.png. -> the npz path."""
    out.mkdir(parents=True, exist_ok=True)
    path = write_generated(out / f"{dance['name']}{GEN_SUFFIX}.npz", item, result["mel"], info, settings,
                           extra=window_layout(dance, result, config))
    if png:
        plan = dance["plan"]
        plot_longform(out / f"{dance['name']}.png", result["mel"], dance["real_mel"], plan["starts"], plan["joins"],
                      info.mel_config.hop_seconds, dance["meta"]["start_s"],
                      title=f"{dance['name']}: {len(plan['starts'])} windows of {plan['window']} frames, overlap "
                            f"{config.overlap:g} s; {describe_settings(settings)}, step {info.step} "
                            f"{info.weights_label}")
    return path


# ---- measures -----------------------------------------------------------------------------------
def frame_changes(mel):
    """(80, T) log-mel -> (T - 1,) mean over bands of |mel[:, i] - mel[:, i - 1]|, i = 1..T-1."""
    mel = np.asarray(mel, dtype=np.float64)
    return np.abs(np.diff(mel, axis=1)).mean(axis=0)


def seam_ratio(mel, joins, width=SEAM_WIDTH):
    """Mean frame-to-frame change at the joins / the mean change elsewhere. The join at frame j is
    the transitions i-1 -> i for i in [j - width, j + width]. nan without joins inside the mel."""
    d = frame_changes(mel)
    at = np.zeros(d.shape, bool)
    for j in joins:
        lo, hi = max(j - width, 1), min(j + width, len(d))
        if lo <= hi:
            at[lo - 1:hi] = True  # transition i-1 -> i is d[i - 1]
    if not at.any() or at.all():
        return float("nan")
    return float(d[at].mean() / max(d[~at].mean(), 1e-12))
