"""Rhythm metrics as the dance-to-music papers compute them, on waveforms (issue 11, part 1).

Pure functions for val.py: it vocodes the real and the generated mels with one vocoder
(lm2a.vocoder.vocode_mels: Griffin-Lim by default, BigVGAN when given) and passes the waveforms here.
Each score reproduces a published evaluation script; the definitions were read from the papers'
public code and re-implemented (METRIC_SOURCES names each one; the function docstrings give details):

- D2M-GAN, BCS / BHS          github.com/L-YeZhu/Beats_Scores  beats_scores.py
  (the tool D2M-GAN's README, github.com/L-YeZhu/D2M-GAN, links for its beat scores)
- LORIS, cover / hit / F1     github.com/OpenGVLab/LORIS  beats_scores.py
  (later tables, MoMu-Diffusion's among them, print LORIS-style cover/hit/F1 under the names
  BCS/BHS/F1; MoMu-Diffusion's evaluation code is not public, so that was not checked)
- 5 bins per second           the LORIS definition with 0.2 s bins; later work (Li et al. 2024,
  arXiv 2401.17800, "Dance-to-Music Generation with Encoder-based Textual Inversion") and the
  LORIS-derived scripts that follow it
- AIST++ beat alignment (BAS) github.com/google-research/mint  tools/calculate_beat_scores.py
  (motion_peak_onehot, alignment_score) with the music beats of tools/preprocessing.py

Onset detection. Every script calls `librosa.onset.onset_detect(y, sr=22050, units='time', **peaks)`
on audio loaded by `librosa.load` (22050 Hz, mono, float32), under librosa 0.7.2 (D2M-GAN) and
0.8.0 (LORIS), whose peak picking gives the same frames as today's (checked on 6000 random envelopes;
the STFT edge padding differs: ONSET_PAD_MODE). That is onset_strength with librosa's
defaults (hop 512, n_fft 2048, 128-band power mel in dB, lag 1, centred), the envelope scaled to
[0, 1], peak picking, no backtracking, frame f -> time f * 512 / 22050. Here librosa computes the
envelope and lm2a.metrics.peak_pick (numpy port of librosa.util.peak_pick; librosa's numba version
once segfaulted in this venv) picks the peaks. D2M-GAN passes pre_avg=post_avg=post_max=wait=1,
delta=0.2 (pre_max stays librosa's default 0.03 * 22050 // 512 = 1); LORIS passes
pre_max=post_max=pre_avg=post_avg=3, wait=1, delta=0.2.

Binning. Onset times go to bins of 1 / bins_per_second seconds: bin = trunc(t * rate), a clip has
ceil(duration * rate) bins, and a bin counts once however many onsets fall in it. A 6-second clip has
only six 1-second bins, so the *_1s scores move in steps of 1/6; the *_5hz variants use 30 bins of
0.2 s. Say so next to the figures (RESOLUTION_NOTE).
"""
import math

import numpy as np
from scipy.signal import argrelextrema

from lm2a.metrics import gaussian_hit_mean, normalized_peaks
from lm2a.motion import AIST_SOURCE_FPS, joint_speed

# The papers' analysis protocol, NOT our mel config: their scripts librosa.load every wav at librosa's
# default 22050 Hz and detect onsets with librosa's default hop 512, whatever the vocoder's rate and hop.
PAPER_SR = 22050          # librosa.load's default rate: every script analyses audio at 22050 Hz
PAPER_ONSET_HOP = 512     # librosa's default hop for onset_strength / onset_detect (23.2 ms at 22050 Hz)
# peak-picking parameters (frames of PAPER_ONSET_HOP) passed to librosa.onset.onset_detect by each script
D2M_PEAKS = dict(pre_max=1, post_max=1, pre_avg=1, post_avg=1, delta=0.2, wait=1)
LORIS_PEAKS = dict(pre_max=3, post_max=3, pre_avg=3, post_avg=3, delta=0.2, wait=1)
# STFT edge padding of the onset envelope: librosa >= 0.10 pads with zeros ("constant"), the librosa
# the papers pinned (D2M-GAN 0.7.2, LORIS 0.8.0) reflected; it only moves the first and last ~2
# envelope frames (a spurious onset at ~0.07 s in 1 of 8 demo clips). "reflect" reproduces their edges.
ONSET_PAD_MODE = "constant"
BIN_RATES = {"1s": 1, "5hz": 5}   # key suffix -> bins per second
MOTION_FPS = 30         # our motion frame rate
AIST_FPS = AIST_SOURCE_FPS  # AIST++ motion (and audio-feature) frame rate, 60
AIST_ORDER = 10         # argrelextrema neighbourhood of AIST++'s motion beats, in 60 fps frames
AIST_HOP = 512          # AIST++ analyses audio at sr = fps * 512 so one audio frame is one motion frame
AIST_TIGHTNESS = 100    # librosa.beat.beat_track tightness in AIST++'s music beats
BAS_SIGMA_FRAMES = 3.0  # Gaussian width of the alignment score, in motion frames (as AIST++)

RESOLUTION_NOTE = ("*_1s: 1-second bins (the papers' setting); a 6 s clip has only 6 bins, so a "
                   "clip's score moves in steps of 1/6. *_5hz: 0.2 s bins (30 per clip), the finer "
                   "setting of later work.")

_D2M = "github.com/L-YeZhu/Beats_Scores beats_scores.py (D2M-GAN)"
_LORIS = "github.com/OpenGVLab/LORIS beats_scores.py"
_AIST = "github.com/google-research/mint tools/calculate_beat_scores.py + tools/preprocessing.py (AIST++/FACT)"
_D2M_ONSETS = "librosa onset_detect(pre_max=1, post_max=1, pre_avg=1, post_avg=1, delta=0.2, wait=1)"
_LORIS_ONSETS = "librosa onset_detect(pre_max=3, post_max=3, pre_avg=3, post_avg=3, delta=0.2, wait=1)"
_BINS = {"1s": "1 s bins", "5hz": "0.2 s bins (5 per second, later work's finer variant)"}

METRIC_SOURCES = {}
for _res, _bins in _BINS.items():
    _d2m_bins = _bins + ("; the published 5-per-second code scores LORIS's definition, this applies "
                         "the same bins to D2M-GAN's" if _res == "5hz" else "")
    METRIC_SOURCES.update({
        f"bcs_d2m_{_res}": f"{_D2M}: beat coverage = onset bins of generated / onset bins of real; "
                           f"{_D2M_ONSETS}, {_d2m_bins}; nan when the real clip has no onset",
        f"bhs_d2m_{_res}": f"{_D2M}: beat hit = bins with an onset in both / onset bins of real; "
                           f"{_D2M_ONSETS}, {_d2m_bins}; nan when the real clip has no onset",
        f"cover_loris_{_res}": f"{_LORIS}: cover = bins with an onset in both / onset bins of generated; "
                               f"{_LORIS_ONSETS}, {_bins}; 0 when generated has no onset",
        f"hit_loris_{_res}": f"{_LORIS}: hit = bins with an onset in both / onset bins of real; "
                             f"{_LORIS_ONSETS}, {_bins}; 0 when real has no onset",
        f"f1_loris_{_res}": f"{_LORIS}: harmonic mean of cover and hit (per clip; the set's figure, "
                            f"as LORIS prints it, is the F1 of the mean cover and mean hit: "
                            f"summarize_rhythm's 'of_means'); {_bins}",
    })
METRIC_SOURCES["bas_aist"] = (
    f"{_AIST}: mean over motion beats of exp(-d^2 / (2 * 3^2)), d = frames to the nearest music beat; "
    f"motion beats = scipy argrelextrema(summed joint speed, np.less, order=10 at 60 fps -> 5 at 30 fps), "
    f"music beats = librosa beat_track(tightness=100) of the audio resampled to fps * 512 Hz; "
    f"sigma 3 frames = 0.1 s at our 30 fps (0.05 s at AIST++'s 60 fps); 0 without motion beats")
RHYTHM_KEYS = tuple(METRIC_SOURCES)     # the per-clip keys, in per_clip.csv column order
del _res, _bins, _d2m_bins


# ---------------------------------------------------------------------------------------------
# onsets


def _mono(wav) -> np.ndarray:
    """(n,) or (channels, n) -> float32 (n,), as librosa.load(mono=True) gives it."""
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim == 2:
        wav = wav.mean(axis=0)
    if wav.ndim != 1:
        raise ValueError(f"rhythm: a waveform must be (samples,) or (channels, samples), got {wav.shape}")
    return wav


def to_paper_rate(wav, sr: int) -> np.ndarray:
    """Mono float32 waveform at PAPER_SR (resampled with librosa's default when sr differs), the
    signal every script analyses (they read their wav files with librosa.load's 22050 Hz default)."""
    wav = _mono(wav)
    if int(sr) != PAPER_SR:
        import librosa  # heavy (numba): only when audio is scored
        wav = librosa.resample(wav, orig_sr=int(sr), target_sr=PAPER_SR).astype(np.float32)
    return wav


def wav_onset_envelope(wav, sr: int = PAPER_SR, pad_mode: str = ONSET_PAD_MODE) -> np.ndarray:
    """Onset strength of a waveform (not a log-mel: lm2a.metrics.mel_onset_envelope):
    librosa.onset.onset_strength(y, sr=22050) with librosa's defaults (hop 512, n_fft 2048,
    128-band mel in dB, lag 1, centred; STFT edges padded with `pad_mode`, see ONSET_PAD_MODE):
    (1 + n_samples // 512,) float32; frame f is at f * 512 / 22050 s."""
    import librosa  # heavy (numba): only when audio is scored
    y = to_paper_rate(wav, sr)
    return librosa.onset.onset_strength(y=y, sr=PAPER_SR, hop_length=PAPER_ONSET_HOP, pad_mode=pad_mode)


def pick_onsets(envelope, peaks: dict) -> np.ndarray:
    """Onset frames of an onset-strength envelope as librosa.onset.onset_detect(onset_envelope=...,
    normalize=True, backtrack=False, **peaks) finds them (lm2a.metrics.normalized_peaks: the envelope
    scaled to [0, 1], then peak_pick with the given pre_max, post_max, pre_avg, post_avg, delta, wait).
    No onsets for an empty, flat or non-finite envelope (librosa's rule)."""
    return normalized_peaks(envelope, **peaks)


# ---------------------------------------------------------------------------------------------
# binned beat scores


def beat_bins(onset_times, duration_s: float, bins_per_second: float = 1) -> np.ndarray:
    """(ceil(duration_s * rate),) bool: True where a bin of 1/rate seconds holds an onset;
    bin = trunc(t * rate), as both scripts' beat_detect. Onsets past the last bin are dropped
    (LORIS truncates the real clip's bins to the generated clip's count; D2M-GAN asserts equal counts)."""
    n_bins = int(math.ceil(duration_s * bins_per_second))
    idx = np.trunc(np.asarray(onset_times, dtype=np.float64) * bins_per_second).astype(np.int64)
    occupied = np.zeros(max(n_bins, 0), dtype=bool)
    occupied[idx[(idx >= 0) & (idx < n_bins)]] = True
    return occupied


def bin_counts(real_onsets, gen_onsets, duration_s: float, bins_per_second: float = 1):
    """-> (real bins with an onset, generated bins with an onset, bins with an onset in both)."""
    real = beat_bins(real_onsets, duration_s, bins_per_second)
    gen = beat_bins(gen_onsets, duration_s, bins_per_second)
    return int(real.sum()), int(gen.sum()), int((real & gen).sum())


def bcs_bhs(real_onsets, gen_onsets, duration_s: float, bins_per_second: float = 1):
    """D2M-GAN's beat coverage and beat hit scores (github.com/L-YeZhu/Beats_Scores beats_scores.py,
    beat_scores): BCS = generated onset bins / real onset bins (can exceed 1: it rewards onset density,
    not timing), BHS = bins with an onset in both / real onset bins. -> (bcs, bhs); both nan when the
    real clip has no onset bin (the script divides by zero there)."""
    n_real, n_gen, n_hit = bin_counts(real_onsets, gen_onsets, duration_s, bins_per_second)
    if n_real == 0:
        return math.nan, math.nan
    return n_gen / n_real, n_hit / n_real


def f1(cover: float, hit: float) -> float:
    """Harmonic mean 2 c h / (c + h); 0 when both are 0."""
    return 0.0 if cover + hit == 0 else 2.0 * cover * hit / (cover + hit)


def loris_cover_hit_f1(real_onsets, gen_onsets, duration_s: float, bins_per_second: float = 1):
    """LORIS's beat scores (github.com/OpenGVLab/LORIS beats_scores.py, beat_scores): cover = bins with
    an onset in both / generated onset bins (a precision), hit = bins with an onset in both / real
    onset bins (a recall), each 0 when its denominator is 0 (the script's rule), and this clip's F1 of
    the two (0 when both are 0). -> (cover, hit, f1). LORIS's reported F1 is over the set: the F1 of
    the mean cover and the mean hit (summarize_rhythm)."""
    n_real, n_gen, n_hit = bin_counts(real_onsets, gen_onsets, duration_s, bins_per_second)
    cover = n_hit / n_gen if n_gen else 0.0
    hit = n_hit / n_real if n_real else 0.0
    return cover, hit, f1(cover, hit)


# ---------------------------------------------------------------------------------------------
# AIST++ beat alignment


def aist_order(fps: float = MOTION_FPS) -> int:
    """AIST++'s argrelextrema order (10 frames at 60 fps = 1/6 s) at `fps`: 5 at our 30 fps."""
    return max(1, int(round(AIST_ORDER * fps / AIST_FPS)))


def aist_motion_beats(motion_features, fps: float = MOTION_FPS) -> np.ndarray:
    """Motion beat frames as AIST++'s motion_peak_onehot (google-research/mint
    tools/calculate_beat_scores.py): strict local minima of the summed joint speed,
    scipy.signal.argrelextrema(speed, np.less, order) (edges clipped: frame 0 and the last frame never
    qualify). Deviations: the speed is lm2a.motion.joint_speed (summed angular speed of the 24 SMPL
    joints from the feature's velocity block, unsmoothed) where AIST++ sums 3-D joint position
    speeds from SMPL forward kinematics, and the order is scaled from 10 at 60 fps (aist_order)."""
    speed = joint_speed(motion_features)                                     # (F,)
    if speed.size < 3:
        return np.zeros(0, dtype=np.int64)
    return argrelextrema(speed, np.less, order=aist_order(fps))[0].astype(np.int64)


def aist_music_beats(wav, sr: int = PAPER_SR, fps: float = MOTION_FPS) -> np.ndarray:
    """Music beat times (s) as AIST++ computes them (google-research/mint tools/preprocessing.py):
    the audio resampled to fps * 512 Hz so that one onset-envelope frame (hop 512) is one motion
    frame, librosa.onset.onset_strength with its defaults, librosa.beat.beat_track(onset_envelope,
    hop_length=512, tightness=100). Returns beat frame / fps. Deviation: AIST++ passes start_bpm from
    the AIST music name; a generated clip's tempo is unknown, so librosa's default (120) is used."""
    import librosa  # heavy (numba): only when audio is scored
    beat_sr = int(round(fps * AIST_HOP))
    y = librosa.resample(_mono(wav), orig_sr=int(sr), target_sr=beat_sr)
    env = librosa.onset.onset_strength(y=y, sr=beat_sr, hop_length=AIST_HOP, pad_mode=ONSET_PAD_MODE)
    if env.size == 0 or not np.any(env > 0):
        return np.zeros(0)
    _, beats = librosa.beat.beat_track(onset_envelope=env, sr=beat_sr, hop_length=AIST_HOP,
                                       tightness=AIST_TIGHTNESS)
    return np.asarray(beats, dtype=np.float64) / fps


def alignment_score(music_beat_frames, motion_beat_frames, sigma_frames: float = BAS_SIGMA_FRAMES) -> float:
    """AIST++'s alignment_score: mean over MOTION beats of exp(-d^2 / (2 sigma^2)), d = distance in
    frames to the nearest music beat. 0 without motion beats (as AIST++); 0 without music beats
    (AIST++'s code raises there). Bailando's utils/beat_align_score.py averages the other way, over
    music beats; this is AIST++'s direction."""
    if np.size(motion_beat_frames) == 0 or np.size(music_beat_frames) == 0:
        return 0.0
    return gaussian_hit_mean(motion_beat_frames, music_beat_frames, sigma_frames)


def aist_bas(motion_features, music_beat_times, fps: float = MOTION_FPS,
             sigma_frames: float = BAS_SIGMA_FRAMES) -> float:
    """AIST++ beat alignment score of a clip: aist_motion_beats(motion_features (F, 234) at fps) against
    music beats given in seconds (aist_music_beats), placed on motion frames (round(t * fps); beats
    outside [0, F) are dropped, as AIST++ cuts the audio features to the motion's length)."""
    n_frames = len(motion_features)
    music = np.round(np.asarray(music_beat_times, dtype=np.float64).ravel() * fps)
    music = music[(music >= 0) & (music < n_frames)]
    return alignment_score(music, aist_motion_beats(motion_features, fps), sigma_frames)


# ---------------------------------------------------------------------------------------------
# one clip, every variant


def audio_rhythm(wav, sr: int = PAPER_SR, fps: float = MOTION_FPS) -> dict:
    """What the scores need from one waveform, computed once (a real clip serves several reference
    rows): duration_s (at 22050 Hz), onsets_d2m and onsets_loris (s), music_beats_aist (s)."""
    y = to_paper_rate(wav, sr)
    env = wav_onset_envelope(y, PAPER_SR)
    to_s = PAPER_ONSET_HOP / PAPER_SR
    return dict(duration_s=len(y) / PAPER_SR,
                onsets_d2m=pick_onsets(env, D2M_PEAKS) * to_s,
                onsets_loris=pick_onsets(env, LORIS_PEAKS) * to_s,
                music_beats_aist=aist_music_beats(y, PAPER_SR, fps))


def rhythm_scores(real: dict, gen: dict, motion=None, fps: float = MOTION_FPS) -> dict:
    """Every RHYTHM_KEYS score of a generated clip against the real one, from two audio_rhythm dicts
    (and the clip's motion features (F, 234) for bas_aist, nan without). The bins span the shorter of
    the two clips."""
    duration = min(real["duration_s"], gen["duration_s"])
    row = {}
    for res, rate in BIN_RATES.items():
        row[f"bcs_d2m_{res}"], row[f"bhs_d2m_{res}"] = bcs_bhs(
            real["onsets_d2m"], gen["onsets_d2m"], duration, rate)
        row[f"cover_loris_{res}"], row[f"hit_loris_{res}"], row[f"f1_loris_{res}"] = loris_cover_hit_f1(
            real["onsets_loris"], gen["onsets_loris"], duration, rate)
    row["bas_aist"] = (aist_bas(motion, gen["music_beats_aist"], fps) if motion is not None else math.nan)
    return {k: row[k] for k in RHYTHM_KEYS}


def summarize_rhythm(rows) -> dict:
    """Set-level figures as the scripts print them: {key: dict(mean, std, count, n_nan)} over the clips'
    finite values, std with ddof=1 (LORIS's CSD/HSD; nan for fewer than 2 clips); f1_loris_* also get
    'of_means' = F1 of the mean cover and mean hit, the F1 LORIS reports."""
    out = {}
    for key in RHYTHM_KEYS:
        vals = np.array([float(r[key]) for r in rows if key in r], dtype=np.float64)
        finite = vals[np.isfinite(vals)]
        out[key] = dict(mean=float(finite.mean()) if finite.size else math.nan,
                        std=float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
                        count=int(finite.size), n_nan=int(np.isnan(vals).sum()))
    for res in BIN_RATES:
        cover, hit = out[f"cover_loris_{res}"]["mean"], out[f"hit_loris_{res}"]["mean"]
        out[f"f1_loris_{res}"]["of_means"] = (f1(cover, hit) if math.isfinite(cover) and math.isfinite(hit)
                                              else math.nan)
    return out
