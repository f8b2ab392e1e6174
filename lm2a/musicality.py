"""Music-likeness of one log-mel: tonal lines that hold, or a noise texture with onset stripes?

Three figures in [0, 1], computed from the mel alone and the same way for real, generated,
unconditional and chance mels (val.py's rows, the training-time samples):

    harmonic_share        share of the clip's energy that librosa's harmonic/percussive separation calls harmonic
    partials              share of the clip's energy in spectral peaks that hold for PARTIAL_MIN_FRAMES frames
    chroma_concentration  how much of the pitch-class energy sits on a few pitch classes, over 0.5 s

Input: a BigVGAN log-mel (n_mels, T), the natural log of the magnitude mel clamped at 1e-5
(`bigvgan.meldataset.get_mel_spectrogram`, lm2a.audio.compute_mel), and its MelConfig. "Power" here
is the squared magnitude mel, P = exp(2 log_mel), per band and frame ("energy" = a sum of P); dB are
10 log10 P. Before anything else the log-mel is limited, band by band, to the largest value a
waveform in [-1, 1] can give (`mel_ceiling`: the band's filter weights times the window's sum, about
log 24 = 3.2 at 22050 Hz, n_fft 1024): a no-op for any real clip, while a generated bin at log 9
(e^12 times the power any audio can have there) would otherwise decide the clip's energy shares alone.
A clip whose every value sits at or below the floor (silence) has no music: every figure is 0.

- `harmonic_share`: librosa.decompose.hpss(P, kernel_size=HPSS_KERNEL) (median filters over 17 frames
  for the harmonic part, over 17 bands for the percussive part, soft masks of power 2, margin 1);
  sum H / sum (H + P_perc) over the clip. Sustained tones are smooth along time (harmonic), hits and
  noise bursts along frequency (percussive); a stationary noise texture splits about evenly (~0.5).
- `partials`: a *peak* is a band b of a frame t whose dB level is higher than band b-1's and at
  least band b+1's (so never the lowest or the highest band, which have one neighbour), and no more
  than PEAK_FLOOR_DB below the frame's loudest band. Peaks are joined into tracks across frames: a peak at (b, t) continues into
  the peak at (b', t+1) when each is the other's nearest peak (a tie goes to the lower band) and
  |b' - b| <= PARTIAL_BAND_STEP, so a track never branches. A peak is a *partial* when its track
  spans at least PARTIAL_MIN_FRAMES consecutive frames (8 frames = 93 ms at hop 256). (Without the
  one-to-one rule, chains through random peaks percolate: about a third of the bands of a noise
  frame are peaks, and a chain allowed to branch nearly always finds one within +-1 band.)
  The figure: sum of P over the partial peaks / sum of P over the clip. One bin per peak counts (not
  its neighbours): a pure tone spreads over ~2-3 mel bands, so even a single sine scores below 1.
- `chroma_concentration`: the pitch content. Each mel band's power is spread over the STFT bins of
  its triangle (librosa.filters.mel, the same basis BigVGAN's mel uses, each band normalised to sum
  1) and mapped to 12 pitch classes with librosa.filters.chroma (its default Gaussian octave
  weighting around 880 Hz, 2 octaves wide) -> chroma (12, T); summed over a CHROMA_WINDOW_S moving
  window (scipy uniform filter, edges repeated); per frame the distance of the normalised chroma q
  from uniform, ||q - 1/12||_2 / sqrt(11/12) (0 = all pitch classes alike, 1 = one pitch class),
  averaged over the frames weighted by the windowed chroma's energy.
  Why this one: at 80 mel bands a band is ~1.5 semitones wide above 1 kHz and several semitones
  below it, so per-frame chroma of any sound is blurred and its entropy sits near the maximum for
  music and noise alike (measured: 0.01-0.2 for music, hardly above noise); a pitch-salience
  (harmonic comb) measure on the mel did not rank real recordings above their noise twins
  reliably. A note or chord holds its pitch classes for half a second, while the random peaks of
  noise move from frame to frame, so the windowed chroma keeps the first and averages the second
  out; the L2 distance (not 1 - entropy) keeps small concentrations readable. On 15 real game and
  rock recordings against their band-envelope noise twins (sometest/noise_twin.py): median 0.081
  against 0.020, every recording above its twin (RESULTS.md, "Music-likeness figures").
"""
import functools
import math

import librosa
import numpy as np
from scipy.ndimage import uniform_filter1d

from lm2a.melconfig import MelConfig
from lm2a.metrics import DB_PER_NEPER

HPSS_KERNEL = 17            # median filter length (frames for the harmonic part, bands for the percussive part)
PEAK_FLOOR_DB = 40.0        # a spectral peak more than this below its frame's loudest band is not a peak
PARTIAL_BAND_STEP = 1       # a peak continues into the next frame's peak within +-this many bands
PARTIAL_MIN_FRAMES = 8      # a track of peaks this many frames long (93 ms at hop 256) is a partial
CHROMA_WINDOW_S = 0.5       # chroma summed over this long a window before its concentration
N_CHROMA = 12               # pitch classes
MEL_FLOOR = math.log(1e-5)  # BigVGAN's log-mel clamp (clip_val): a clip at or below it everywhere is silence
FIGURES = ("harmonic_share", "partials", "chroma_concentration")


@functools.lru_cache(maxsize=4)
def _mel_basis(mel_config: MelConfig) -> np.ndarray:
    """(n_mels, n_fft/2+1) float64: the filters BigVGAN's mel applies (librosa.filters.mel, slaney)."""
    cfg = mel_config
    return librosa.filters.mel(sr=cfg.sampling_rate, n_fft=cfg.n_fft, n_mels=cfg.num_mels, fmin=cfg.fmin,
                               fmax=cfg.fmax_resolved).astype(np.float64)


def mel_ceiling(mel_config: MelConfig) -> np.ndarray:
    """(n_mels, 1): per band the largest log-mel a waveform in [-1, 1] can give: every STFT magnitude
    is at most the window's sum (win_size / 2 for BigVGAN's periodic Hann), so band b's magnitude mel
    is at most that times the sum of its filter weights."""
    cfg = MelConfig.parse(mel_config)
    return np.log(_mel_basis(cfg).sum(axis=1, keepdims=True) * cfg.win_size / 2.0)


def limited(log_mel, mel_config: MelConfig) -> np.ndarray:
    """The log-mel (n_mels, T) as float64, limited band by band to mel_ceiling."""
    return np.minimum(np.asarray(log_mel, dtype=np.float64), mel_ceiling(mel_config))


def mel_power(log_mel, mel_config: MelConfig) -> np.ndarray:
    """Squared magnitude mel (n_mels, T) float64 of a natural-log magnitude mel limited to mel_ceiling."""
    return np.exp(2.0 * limited(log_mel, mel_config))


def _fraction(part, whole) -> float:
    whole = float(np.sum(whole))
    return float(np.sum(part)) / whole if whole > 0 else 0.0


def harmonic_share(log_mel, mel_config: MelConfig) -> float:
    """Energy of the harmonic part over the energy of both parts: HPSS with HPSS_KERNEL x HPSS_KERNEL
    median filters on the mel power (module docstring)."""
    harmonic, percussive = librosa.decompose.hpss(mel_power(log_mel, mel_config), kernel_size=HPSS_KERNEL)
    return _fraction(harmonic, harmonic + percussive)


def spectral_peaks(log_mel, floor_db: float = PEAK_FLOOR_DB) -> np.ndarray:
    """(n_mels, T) bool: local maxima over the bands of each frame (higher than the band below, at
    least the band above), at most floor_db below the frame's loudest band. The two edge bands are
    never peaks: a peak must stand out from a band on each side. (When the lowest band could be a
    peak by rising above its one neighbour, samples of a model that puts a third to a half of the
    clip's energy into a sub-30 Hz rumble scored 0.45-0.70 partials, as much as real music, with no
    tonal line in them; without it 0.12-0.43, the real clips unchanged: RESULTS.md.)"""
    db = DB_PER_NEPER * np.asarray(log_mel, dtype=np.float64)
    peaks = np.zeros(db.shape, dtype=bool)
    inner = db[1:-1]
    peaks[1:-1] = (inner > db[:-2]) & (inner >= db[2:]) & (inner >= db.max(axis=0) - floor_db)
    return peaks


def _nearest(bands, others) -> np.ndarray:
    """Index into the sorted `others` of the nearest to each of `bands` (a tie goes to the lower band)."""
    i = np.searchsorted(others, bands)
    below, above = np.clip(i - 1, 0, len(others) - 1), np.clip(i, 0, len(others) - 1)
    return np.where(np.abs(others[below] - bands) <= np.abs(others[above] - bands), below, above)


def peak_links(peaks, step: int = PARTIAL_BAND_STEP) -> np.ndarray:
    """(n_mels, T) int: for each peak (b, t) the band of the peak of frame t+1 it continues into, -1
    for none. Two peaks of consecutive frames are linked when each is the other's nearest peak and
    they are at most `step` bands apart: a peak has at most one link forward and one back."""
    links = np.full(peaks.shape, -1, dtype=np.int64)
    bands = [np.flatnonzero(peaks[:, t]) for t in range(peaks.shape[1])]
    for t in range(peaks.shape[1] - 1):
        here, there = bands[t], bands[t + 1]
        if here.size == 0 or there.size == 0:
            continue
        forward = _nearest(here, there)                     # each peak's nearest in the next frame
        mutual = here[_nearest(there, here)[forward]] == here
        linked = mutual & (np.abs(there[forward] - here) <= step)
        links[here[linked], t] = there[forward[linked]]
    return links


def track_lengths(peaks, step: int = PARTIAL_BAND_STEP) -> np.ndarray:
    """(n_mels, T) int: the number of frames of the track (peaks joined by peak_links) each peak
    belongs to; 0 where there is no peak."""
    links = peak_links(peaks, step)
    lengths = peaks.astype(np.int64)                        # frames so far, counted forward
    for t in range(peaks.shape[1] - 1):
        src = np.flatnonzero(links[:, t] >= 0)
        lengths[links[src, t], t + 1] = lengths[src, t] + 1
    for t in range(peaks.shape[1] - 2, -1, -1):             # each track's final count, back to its start
        src = np.flatnonzero(links[:, t] >= 0)
        lengths[src, t] = lengths[links[src, t], t + 1]
    return lengths


def partial_map(log_mel, min_frames: int = PARTIAL_MIN_FRAMES, step: int = PARTIAL_BAND_STEP) -> np.ndarray:
    """(n_mels, T) bool: the peaks (spectral_peaks) whose track lasts at least min_frames frames."""
    return track_lengths(spectral_peaks(log_mel), step) >= min_frames


def partials(log_mel, mel_config: MelConfig) -> float:
    """Share of the clip's energy in its partials (partial_map of the limited log-mel; module docstring)."""
    power = mel_power(log_mel, mel_config)
    return _fraction(power[partial_map(limited(log_mel, mel_config))], power)


@functools.lru_cache(maxsize=4)
def mel_to_chroma(mel_config: MelConfig) -> np.ndarray:
    """(12, n_mels): the share of each mel band's power that goes to each pitch class (module
    docstring): librosa's chroma filters averaged over each band's triangle."""
    cfg = mel_config
    basis = _mel_basis(cfg)
    basis = basis / np.maximum(basis.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)
    chroma = librosa.filters.chroma(sr=cfg.sampling_rate, n_fft=cfg.n_fft, n_chroma=N_CHROMA).astype(np.float64)
    return chroma @ basis.T


def chroma_concentration(log_mel, mel_config: MelConfig) -> float:
    """Mean over frames, weighted by energy, of the 0.5 s windowed chroma's distance from uniform
    (module docstring), in [0, 1]."""
    cfg = MelConfig.parse(mel_config)
    chroma = mel_to_chroma(cfg) @ mel_power(log_mel, cfg)                          # (12, T)
    window = max(1, int(round(CHROMA_WINDOW_S * cfg.frame_rate)))
    chroma = uniform_filter1d(chroma, window, axis=1, mode="nearest")
    energy = chroma.sum(axis=0)                                                     # (T,)
    q = np.divide(chroma, energy, out=np.full_like(chroma, 1.0 / N_CHROMA), where=energy > 0)
    distance = np.linalg.norm(q - 1.0 / N_CHROMA, axis=0) / math.sqrt((N_CHROMA - 1) / N_CHROMA)
    return min(_fraction(energy * distance, energy), 1.0)


def music_figures(log_mel, mel_config: MelConfig) -> dict:
    """All figures (FIGURES) of one log-mel (n_mels, T) of `mel_config` -> {figure: float in [0, 1]};
    all 0 for silence (every value at or below MEL_FLOOR)."""
    log_mel = np.asarray(log_mel, dtype=np.float64)
    cfg = MelConfig.parse(mel_config)
    if log_mel.ndim != 2 or log_mel.shape[0] != cfg.num_mels or not np.all(np.isfinite(log_mel)):
        raise ValueError(f"musicality: expected a finite ({cfg.num_mels}, T) log-mel, got shape {log_mel.shape}")
    if log_mel.max() <= MEL_FLOOR:
        return dict.fromkeys(FIGURES, 0.0)
    return {"harmonic_share": harmonic_share(log_mel, cfg), "partials": partials(log_mel, cfg),
            "chroma_concentration": chroma_concentration(log_mel, cfg)}


def mean_music_figures(log_mels, mel_config: MelConfig) -> dict:
    """The mean of each figure over a set of log-mels -> {figure: float}; nan for an empty set."""
    rows = [music_figures(m, mel_config) for m in log_mels]
    return {k: float(np.mean([r[k] for r in rows])) if rows else math.nan for k in FIGURES}
