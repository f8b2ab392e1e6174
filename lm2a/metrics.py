"""Evaluation metrics for generated log-mel spectrograms (used by val.py).

Every mel here is a BigVGAN log-mel: natural log of the magnitude mel, clamped at 1e-5
(`bigvgan.meldataset.get_mel_spectrogram`), shape (80, T); its rate, hop and STFT size come from the
clip's lm2a.melconfig.MelConfig, which the onset and beat functions take (`mel_config`).
Motion is the stage-1 feature array (F, 234) = [pose 78 | velocity 78 | acceleration 78] at 30 fps.

Per clip (real vs generated mel of the same clip): mse, ssim, cosine_similarity, mean_error,
std_error, snr, log_spectral_distance, onset_f1, and, with the clip's motion, beat_alignment.
Per set: frechet_distance over per-frame mel vectors, chance_pairs for reference rows and
shuffled-motion controls, summarize for mean/std/median tables.

Onset peak picking re-implements `librosa.util.peak_pick` in numpy (same rule, same defaults as
`librosa.onset.onset_detect`): librosa's numba version segfaults with the numba/numpy of this venv.
"""
import math

import numpy as np
from scipy.linalg import sqrtm
from scipy.signal import find_peaks

from lm2a.melconfig import MelConfig
from lm2a.motion import joint_speed

TOP_DB = 80.0           # dB range kept below each mel's maximum before onset analysis (as librosa.power_to_db)
DB_PER_NEPER = 20.0 / math.log(10.0)  # natural-log magnitude -> dB: 20 log10(e) = 8.6859 dB per unit
ONSET_TOL_S = 0.05      # onsets closer than this (seconds) match (mir_eval's default window)
MOTION_FPS = 30         # frame rate of the motion features
SPEED_SMOOTH = 1.0      # Gaussian sigma (motion frames) smoothing the joint speed before beat picking
BEAT_MIN_GAP_S = 0.2    # minimum time between two motion beats (seconds)
BEAT_PROMINENCE = 0.1   # a speed minimum must be this fraction of the clip's speed range deep to be a beat
BEAT_SIGMA_S = 0.1      # beat alignment Gaussian width (seconds, ~3 motion frames at 30 fps)
FRECHET_EPS = 1e-6      # diagonal added to both covariances when sqrtm(S1 S2) is not finite


# ---------------------------------------------------------------------------------------------
# per-clip spectral metrics


def _mel_pair(real, gen):
    """Both mels as float64 (80, T) arrays of equal shape."""
    real = np.asarray(real, dtype=np.float64)
    gen = np.asarray(gen, dtype=np.float64)
    if real.ndim != 2 or real.shape != gen.shape:
        raise ValueError(f"metrics: real mel {real.shape} and generated mel {gen.shape} must be "
                         f"equal (n_mels, T) arrays (crop or regenerate to the clip's length)")
    return real, gen


def mse(real, gen) -> float:
    """Mean squared difference of the log-mel values, in (log units)^2 (nepers^2)."""
    real, gen = _mel_pair(real, gen)
    return float(np.mean((gen - real) ** 2))


def ssim(real, gen) -> float:
    """Structural similarity (scikit-image, 7x7 uniform window) of the two log-mel images, in [-1, 1].
    data_range = real.max() - real.min() (1.0 if the real mel is constant)."""
    from skimage.metrics import structural_similarity  # scikit-image takes a second to import: SSIM only
    real, gen = _mel_pair(real, gen)
    data_range = float(real.max() - real.min())
    return float(structural_similarity(real, gen, data_range=data_range if data_range > 0 else 1.0))


def cosine_similarity(real, gen) -> float:
    """Mean over frames of the cosine between the real and generated 80-d log-mel frame vectors.
    Computed on the raw (negative) log values, so a shared floor pulls it towards 1. A frame whose
    vectors are both zero counts 1, one zero vector counts 0."""
    real, gen = _mel_pair(real, gen)
    dot = np.sum(real * gen, axis=0)                                        # (T,)
    real_norm, gen_norm = np.linalg.norm(real, axis=0), np.linalg.norm(gen, axis=0)
    norms = real_norm * gen_norm                                            # (T,)
    both_zero = (real_norm == 0) & (gen_norm == 0)
    cos = np.divide(dot, norms, out=np.where(both_zero, 1.0, 0.0), where=norms > 0)
    return float(np.mean(cos))


def mean_error(real, gen) -> float:
    """Mean of (gen - real) over all bins and frames, log units; > 0 means generated is too loud."""
    real, gen = _mel_pair(real, gen)
    return float(np.mean(gen - real))


def std_error(real, gen) -> float:
    """Population standard deviation (ddof 0) of (gen - real) over all bins and frames, log units."""
    real, gen = _mel_pair(real, gen)
    return float(np.std(gen - real))


def snr(real, gen) -> float:
    """Signal-to-noise ratio in dB on the log-mel arrays themselves (the study's definition):
    10 log10(sum(real^2) / sum((real - gen)^2)). inf when identical. Because log-mels sit around
    -5..-11, 'signal' is dominated by the floor: read it as a relative error of the log values,
    not as an audio SNR."""
    real, gen = _mel_pair(real, gen)
    signal = float(np.sum(real ** 2))
    noise = float(np.sum((real - gen) ** 2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def log_spectral_distance(real, gen) -> float:
    """Log-spectral distance in dB: both natural-log magnitude mels become dB (x * 20 log10 e);
    per frame the RMS over the 80 bins of the dB difference; the mean over frames."""
    real, gen = _mel_pair(real, gen)
    diff_db = DB_PER_NEPER * (gen - real)                       # (80, T)
    return float(np.mean(np.sqrt(np.mean(diff_db ** 2, axis=0))))


# ---------------------------------------------------------------------------------------------
# onsets


def mel_to_db(log_mel, top_db: float = TOP_DB) -> np.ndarray:
    """Natural-log magnitude mel (80, T) -> dB (20 log10 |mel|), floored top_db below its maximum
    (the same range limit librosa.power_to_db applies)."""
    db = DB_PER_NEPER * np.asarray(log_mel, dtype=np.float64)
    if top_db is not None and db.size:
        db = np.maximum(db, db.max() - top_db)
    return db


def mel_onset_envelope(log_mel, mel_config: MelConfig) -> np.ndarray:
    """Spectral-flux onset strength (T,) of a log-mel (not a waveform: lm2a.rhythm.wav_onset_envelope):
    librosa.onset.onset_strength on the dB mel (mean over bins of the positive frame-to-frame dB
    increase), shifted by n_fft // (2 hop) frames (center=True) so that envelope frame i belongs to
    time i * hop / sr. With the vocoder's n_fft=1024, hop 256 that shift puts onsets of real drum hits
    within ~2 ms of their sample time."""
    import librosa  # heavy (numba): only the onset metrics need it
    db = mel_to_db(log_mel)
    return librosa.onset.onset_strength(S=db, sr=mel_config.sampling_rate, hop_length=mel_config.hop_size,
                                        n_fft=mel_config.n_fft, center=True)


def peak_pick(x, pre_max: int, post_max: int, pre_avg: int, post_avg: int, delta: float,
              wait: int) -> np.ndarray:
    """librosa.util.peak_pick in numpy: frame n is a peak when x[n] == max(x[n-pre_max : n+post_max]),
    x[n] >= mean(x[n-pre_avg : n+post_avg]) + delta (windows cut at the edges), and it comes more
    than `wait` frames after the previously accepted peak. Returns peak frame indices."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    pre_max, post_max, pre_avg, post_avg, wait = (int(math.ceil(v)) for v in
                                                  (pre_max, post_max, pre_avg, post_avg, wait))
    padded = np.pad(x, (pre_max, post_max - 1), constant_values=-np.inf)
    local_max = np.lib.stride_tricks.sliding_window_view(padded, pre_max + post_max).max(axis=1)
    idx = np.arange(n)
    lo = np.maximum(idx - pre_avg, 0)
    hi = np.minimum(idx + post_avg, n)
    csum = np.concatenate([[0.0], np.cumsum(x)])
    local_mean = (csum[hi] - csum[lo]) / (hi - lo)
    candidates = np.flatnonzero((x == local_max) & (x >= local_mean + delta))
    peaks = []
    next_allowed = 0
    for c in candidates:                      # a few dozen candidates, not frames
        if c >= next_allowed:
            peaks.append(c)
            next_allowed = c + wait + 1
    return np.asarray(peaks, dtype=np.int64)


def normalized_peaks(envelope, **peaks) -> np.ndarray:
    """Peak frames of an onset-strength envelope as librosa.onset.onset_detect(normalize=True,
    backtrack=False) finds them: the envelope shifted to a minimum of 0 and scaled to a maximum of 1,
    then peak_pick(**peaks). No peaks for an empty, flat or non-finite envelope (librosa's rule)."""
    env = np.asarray(envelope, dtype=np.float64)
    if env.size == 0 or not np.all(np.isfinite(env)):
        return np.zeros(0, dtype=np.int64)
    env = env - env.min()
    env = env / (env.max() + np.finfo(np.float64).tiny)
    if not env.any():
        return np.zeros(0, dtype=np.int64)
    return peak_pick(env, **peaks)


def detect_onsets(envelope, mel_config: MelConfig) -> np.ndarray:
    """librosa.onset.onset_detect(onset_envelope=envelope, units='frames') with its defaults:
    envelope scaled to [0, 1], 30 ms local-max window, 100 ms mean window, delta 0.07, 30 ms wait
    (in frames of the mel's hop)."""
    sr, hop = mel_config.sampling_rate, mel_config.hop_size
    return normalized_peaks(envelope, pre_max=0.03 * sr // hop, post_max=0.00 * sr // hop + 1,
                            pre_avg=0.10 * sr // hop, post_avg=0.10 * sr // hop + 1,
                            delta=0.07, wait=0.03 * sr // hop)


def onset_frames(log_mel, mel_config: MelConfig) -> np.ndarray:
    """Onset frame indices (int) of a log-mel (80, T); time of frame i is i * hop / sr seconds."""
    return detect_onsets(mel_onset_envelope(log_mel, mel_config), mel_config)


def onset_times(log_mel, mel_config: MelConfig) -> np.ndarray:
    """Onset times (s) of a log-mel (80, T): onset_frames * hop / sr."""
    return onset_frames(log_mel, mel_config) * mel_config.hop_size / mel_config.sampling_rate


def match_events(ref_times, est_times, tol_s: float = ONSET_TOL_S) -> int:
    """Size of a maximum one-to-one matching between two event lists where a pair matches when
    |ref - est| <= tol_s (the count mir_eval.util.match_events gives). Greedy over sorted lists is
    optimal here: each reference takes the earliest unused estimate inside its window."""
    ref = np.sort(np.asarray(ref_times, dtype=np.float64))
    est = np.sort(np.asarray(est_times, dtype=np.float64))
    tol = tol_s + 1e-9                          # times computed from frames: forgive rounding
    matched, j = 0, 0
    for r in ref:
        while j < len(est) and est[j] < r - tol:
            j += 1
        if j < len(est) and est[j] <= r + tol:
            matched += 1
            j += 1
    return matched


def prf(ref_times, est_times, tol_s: float = ONSET_TOL_S) -> dict:
    """precision = matched / n_est, recall = matched / n_ref, f1 their harmonic mean.
    Both lists empty -> all 1.0 (nothing to find, nothing invented); one empty -> all 0.0."""
    n_ref, n_est = len(ref_times), len(est_times)
    if n_ref == 0 and n_est == 0:
        return dict(precision=1.0, recall=1.0, f1=1.0)
    if n_ref == 0 or n_est == 0:
        return dict(precision=0.0, recall=0.0, f1=0.0)
    matched = match_events(ref_times, est_times, tol_s)
    precision, recall = matched / n_est, matched / n_ref
    f1 = 0.0 if matched == 0 else 2 * precision * recall / (precision + recall)
    return dict(precision=precision, recall=recall, f1=f1)


def onset_f1(real, gen, mel_config: MelConfig, tol_s: float = ONSET_TOL_S) -> dict:
    """Onset agreement of the generated mel with the real one: onsets of both (onset_times),
    matched one-to-one within tol_s seconds; dict(precision, recall, f1) with the real onsets as
    reference."""
    real, gen = _mel_pair(real, gen)
    return prf(onset_times(real, mel_config), onset_times(gen, mel_config), tol_s)


# ---------------------------------------------------------------------------------------------
# beats


def motion_beats(motion, fps: int = MOTION_FPS, min_gap_s: float = BEAT_MIN_GAP_S,
                 prominence: float = BEAT_PROMINENCE, smooth: float = SPEED_SMOOTH) -> np.ndarray:
    """Motion beat times (s from the clip's first motion frame): local minima of the joint speed
    (lm2a.motion.joint_speed: summed joint angular speed, smoothed over `smooth` frames) that
    are at least min_gap_s apart and at least `prominence` x (max - min speed) deep
    (scipy.signal.find_peaks on -speed; the first and last frame are never beats)."""
    speed = joint_speed(motion, smooth)
    speed_range = float(speed.max() - speed.min()) if speed.size else 0.0
    if speed_range <= 0:
        return np.zeros(0)
    frames, _ = find_peaks(-speed, distance=max(1, int(round(min_gap_s * fps))),
                           prominence=prominence * speed_range)
    return frames / float(fps)


def audio_beats(gen_log_mel, mel_config: MelConfig) -> np.ndarray:
    """The audio beats of the beat alignment: the onset times (s) of a log-mel (80, T)."""
    return onset_times(gen_log_mel, mel_config)


def gaussian_hit_mean(points, targets, sigma: float) -> float:
    """Mean over `points` of exp(-d^2 / (2 sigma^2)), d = distance to the nearest of `targets`
    (same unit as sigma). Both must be non-empty."""
    points = np.asarray(points, dtype=np.float64).ravel()
    targets = np.sort(np.asarray(targets, dtype=np.float64).ravel())
    pos = np.searchsorted(targets, points)
    left = targets[np.clip(pos - 1, 0, targets.size - 1)]
    right = targets[np.clip(pos, 0, targets.size - 1)]
    d = np.minimum(np.abs(points - left), np.abs(right - points))
    return float(np.mean(np.exp(-d ** 2 / (2.0 * sigma ** 2))))


def beat_alignment(motion_beat_times, audio_beat_times, sigma_s: float = BEAT_SIGMA_S) -> float:
    """Mean over motion beats of exp(-d^2 / (2 sigma^2)), d = distance (s) to the nearest audio
    beat; 1 = every motion beat has an audio beat on it. 0 with no audio beats, nan with no motion
    beats (undefined, left out by summarize)."""
    if np.size(motion_beat_times) == 0:
        return math.nan
    if np.size(audio_beat_times) == 0:
        return 0.0
    return gaussian_hit_mean(motion_beat_times, audio_beat_times, sigma_s)


# ---------------------------------------------------------------------------------------------
# one clip, all metrics


def clip_metrics(real, gen, mel_config: MelConfig, motion=None, fps: int = MOTION_FPS) -> dict:
    """All per-clip metrics of a generated log-mel against the real one (both of `mel_config`) and
    the clip's motion: mse, ssim, cosine, mean_error, std_error, snr_db, lsd_db, onset_precision,
    onset_recall, onset_f1, and beat_align (motion beats vs onsets of the generated mel) when motion
    is given."""
    real, gen = _mel_pair(real, gen)
    gen_onsets = onset_times(gen, mel_config)
    onsets = prf(onset_times(real, mel_config), gen_onsets)
    row = dict(mse=mse(real, gen), ssim=ssim(real, gen), cosine=cosine_similarity(real, gen),
               mean_error=mean_error(real, gen), std_error=std_error(real, gen),
               snr_db=snr(real, gen), lsd_db=log_spectral_distance(real, gen),
               onset_precision=onsets["precision"], onset_recall=onsets["recall"],
               onset_f1=onsets["f1"])
    if motion is not None:
        row["beat_align"] = beat_alignment(motion_beats(motion, fps), gen_onsets)
    return row


# ---------------------------------------------------------------------------------------------
# set-level


def _pool_frames(mels) -> np.ndarray:
    """List of (80, T_i) mels, an (N, 80, T) array or one (80, T) mel -> (sum T_i, 80) frames."""
    if isinstance(mels, np.ndarray) and mels.ndim == 2:
        mels = [mels]
    frames = [np.asarray(m, dtype=np.float64).T for m in mels]                # each (T_i, 80)
    if not frames:
        raise ValueError("metrics: no mels given")
    return np.concatenate(frames, axis=0)


def mel_statistics(mels):
    """Mean (80,) and covariance (80, 80) of the per-frame mel vectors pooled over all clips."""
    frames = _pool_frames(mels)
    if len(frames) < 2:
        raise ValueError(f"metrics: need at least 2 mel frames for a covariance, got {len(frames)}")
    return frames.mean(axis=0), np.cov(frames, rowvar=False)


def frechet_from_stats(mu1, sigma1, mu2, sigma2, eps: float = FRECHET_EPS) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)); the real part of sqrtm is used, eps I is
    added to both covariances when sqrtm is not finite; clipped at 0 (rounding)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    covmean = sqrtm(sigma1 @ sigma2)
    if not np.all(np.isfinite(covmean)):
        offset = np.eye(len(sigma1)) * eps
        covmean = sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def frechet_distance(real_mels, gen_mels, eps: float = FRECHET_EPS) -> float:
    """Fréchet distance (log units^2) between Gaussians fitted to the per-frame 80-d log-mel vectors
    of the real set and of the generated set (frames pooled over clips; a 'frame-level FAD' on
    mels rather than on a pretrained embedding)."""
    return frechet_from_stats(*mel_statistics(real_mels), *mel_statistics(gen_mels), eps=eps)


def chance_pairs(n_or_songs, seed: int = 0) -> np.ndarray:
    """A permutation p with p[i] != i for all i (a derangement): clip i is paired with clip p[i].
    Given a list of song labels instead of a count, p[i] is from another song for every i whenever
    no song has more than half of the clips, and otherwise for as many clips as possible
    (2 x the clips outside the largest song); the rest stay within their song but never on themselves.
    Construction: clips in random order grouped by song (random song order), each paired with the
    clip max_song_size positions further on (cyclically)."""
    rng = np.random.default_rng(seed)
    if isinstance(n_or_songs, (int, np.integer)):
        songs = np.arange(int(n_or_songs))          # every clip its own 'song'
    else:
        songs = np.asarray([str(s) for s in n_or_songs])
    n = len(songs)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n == 1:
        raise ValueError("metrics: chance_pairs needs at least 2 clips")
    labels, inverse, counts = np.unique(songs, return_inverse=True, return_counts=True)
    song_order = rng.permutation(len(labels))       # random rank of each song
    # order: by song rank, random within a song
    order = np.lexsort((rng.random(n), song_order[inverse]))
    shift = min(int(counts.max()), n - 1)
    if shift < 1:
        shift = 1
    pairs = np.empty(n, dtype=np.int64)
    pairs[order] = order[(np.arange(n) + shift) % n]
    return pairs


def summarize(rows) -> dict:
    """Per numeric metric over rows (list of dicts): {metric: dict(mean, std, median, count, n_nan,
    n_inf)}. mean/std (ddof 0)/median use the finite values only (count of them); NaN and +-inf
    values are counted, not averaged. Non-numeric fields (names, strings, bools) are skipped."""
    keys = []
    for row in rows:
        for k, v in row.items():
            if k not in keys and isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_)):
                keys.append(k)
    out = {}
    for k in keys:
        vals = np.array([float(r[k]) for r in rows
                         if isinstance(r.get(k), (int, float, np.number)) and not isinstance(r.get(k), (bool, np.bool_))],
                        dtype=np.float64)
        finite = vals[np.isfinite(vals)]
        out[k] = dict(mean=float(finite.mean()) if finite.size else math.nan,
                      std=float(finite.std()) if finite.size else math.nan,
                      median=float(np.median(finite)) if finite.size else math.nan,
                      count=int(finite.size), n_nan=int(np.isnan(vals).sum()),
                      n_inf=int(np.isinf(vals).sum()))
    return out
