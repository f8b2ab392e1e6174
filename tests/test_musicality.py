"""lm2a/musicality.py: each music-likeness figure is clearly higher for a music clip than for its
noise-texture twin (the same clip's coarse-band envelopes filled with noise, sometest/noise_twin.py),
both made here as 6 s of audio and turned into log-mels by the project's own mel function; the
definitions on hand-made mels (peaks, tracks, the ceiling); edge cases (silence, a constant mel,
random mels) give finite values in [0, 1]."""
import math

import numpy as np
import pytest

from lm2a import musicality as MU
from lm2a.audio import compute_mel
from lm2a.melconfig import load_mel_config
from sometest.noise_twin import band_envelope_twin

CFG = load_mel_config()            # the default vocoder's mel: 22050 Hz, hop 256, n_fft 1024, 80 bands
SR = CFG.sampling_rate
SECONDS = 6.0
N = int(SECONDS * SR)
T = CFG.n_frames(N)                # 516
CHORDS = ((130.81, 164.81, 196.00), (174.61, 220.00, 261.63), (196.00, 246.94, 293.66), (130.81, 164.81, 196.00))
MELODY = (523.25, 587.33, 659.26, 698.46, 783.99, 698.46, 659.26, 587.33) * 2     # C5 D5 E5 F5 G5 ...


def harmonic_tone(f0, n, partials=6):
    """(n,) a tone of `partials` harmonics of f0 with amplitudes 1/h."""
    t = np.arange(n) / SR
    h = np.arange(1, partials + 1)[:, None]
    return (np.sin(2 * np.pi * f0 * h * t) / h).sum(axis=0)


def music_clip(seed=0):
    """6 s at the mel's rate: sustained triads (C F G C, 1.5 s each, 6 partials per note), a melody
    of 16 decaying notes (4 partials) over them, and a noise-burst hit every 0.5 s; peak 0.8."""
    rng = np.random.default_rng(seed)
    out = np.zeros(N)
    seg = N // len(CHORDS)
    ramp = np.minimum(1.0, np.arange(seg) / (0.02 * SR)) * np.minimum(1.0, (seg - np.arange(seg)) / (0.02 * SR))
    for i, chord in enumerate(CHORDS):
        out[i * seg:(i + 1) * seg] += 0.25 * sum(harmonic_tone(f, seg) for f in chord) * ramp
    note = N // len(MELODY)
    decay = np.minimum(1.0, np.arange(note) / (0.01 * SR)) * np.exp(-np.arange(note) / SR / 0.6)
    for i, f in enumerate(MELODY):
        out[i * note:(i + 1) * note] += 0.4 * harmonic_tone(f, note, 4) * decay
    hit_len = int(0.08 * SR)
    hit = rng.standard_normal(hit_len) * np.exp(-np.arange(hit_len) / SR / 0.015)
    for start in (np.arange(0.0, SECONDS, 0.5) * SR).astype(int):
        out[start:start + hit_len] += 0.8 * hit[:N - start]
    return (0.8 * out / np.abs(out).max()).astype(np.float32)


@pytest.fixture(scope="module")
def pair():
    """Log-mels (80, T) of the music clip and of its band-envelope noise twin."""
    clip = music_clip()
    twin = band_envelope_twin(clip, SR)
    music_mel, twin_mel = compute_mel(np.stack([clip, twin]), CFG)
    return {"clip": clip, "twin": twin, "music": music_mel, "noise": twin_mel}


def test_the_twin_keeps_the_clips_loudness_and_coarse_spectrum(pair):
    """The twin is a fair control: same length, loudness and coarse spectrum, so the figures below
    separate structure, not level. Levels: log of the mean power, per band and per group of 5 bands
    (16 groups, about the twin's coarse bands)."""
    clip, twin = pair["clip"], pair["twin"]
    assert twin.shape == clip.shape and twin.dtype == np.float32 and np.abs(twin).max() <= 1.0
    assert np.sqrt(np.mean(twin ** 2)) == pytest.approx(np.sqrt(np.mean(clip ** 2)), rel=0.02)
    power = {k: MU.mel_power(pair[k], CFG) for k in ("music", "noise")}

    def gap(grouped):
        return np.abs(0.5 * np.log(grouped(power["music"]) / grouped(power["noise"])))
    per_band = gap(lambda p: p.mean(axis=1))                                    # (80,) log units
    per_group = gap(lambda p: p.reshape(16, 5, -1).mean(axis=(1, 2)))          # (16,)
    # measured: median 0.25 per band, at most 0.46 per group
    assert np.median(per_band) < 0.4 and per_group.max() < 0.6


def test_every_figure_separates_music_from_its_noise_twin(pair):
    music, noise = MU.music_figures(pair["music"], CFG), MU.music_figures(pair["noise"], CFG)
    # measured: harmonic share 0.888 vs 0.550, partials 0.502 vs 0.263, chroma concentration 0.137 vs 0.037
    assert set(music) == set(noise) == set(MU.FIGURES)
    assert music["harmonic_share"] > 0.8 and noise["harmonic_share"] < 0.62
    assert music["harmonic_share"] - noise["harmonic_share"] > 0.25
    assert music["partials"] > 0.45 and noise["partials"] < 0.32
    assert music["partials"] - noise["partials"] > 0.18
    assert music["chroma_concentration"] > 0.1 and noise["chroma_concentration"] < 0.06
    assert music["chroma_concentration"] > 2.5 * noise["chroma_concentration"]


def test_a_held_sine_is_one_partial_on_its_pitch_class():
    a4 = (0.5 * np.sin(2 * np.pi * 440.0 * np.arange(N) / SR)).astype(np.float32)
    mel = compute_mel(a4, CFG)
    figures = MU.music_figures(mel, CFG)
    assert figures["harmonic_share"] > 0.99
    assert figures["partials"] > 0.7                 # its peak band; the rest spreads over the neighbours
    assert figures["chroma_concentration"] > 0.4
    chroma = MU.mel_to_chroma(CFG) @ MU.mel_power(mel, CFG)                     # (12, T)
    assert int(chroma.sum(axis=1).argmax()) == 9     # C C# D D# E F F# G G# A: A
    peaks = MU.partial_map(mel)
    assert set(np.flatnonzero(peaks.any(axis=1))) == {int(mel.mean(axis=1).argmax())}


def test_tracks_last_eight_frames_move_one_band_and_never_branch():
    mel = np.full((80, 40), -8.0)
    mel[20, 0:8] = 0.0                                # 8 frames: a partial
    mel[40, 0:7] = 0.0                                # 7 frames: not
    for t in range(10):                               # a glide of one band per frame: a partial
        mel[50 + t, 20 + t] = 0.0
    for t in range(10):                               # two bands per frame: 10 one-frame peaks
        mel[5 + (2 * t) % 12, 20 + t] = 0.0
    partial = MU.partial_map(mel)
    assert partial[20, 0:8].all() and not partial[40].any()
    assert all(partial[50 + t, 20 + t] for t in range(10))
    assert MU.track_lengths(MU.spectral_peaks(mel))[40, 0] == 7
    assert partial.sum() == 8 + 10
    # one-to-one: a peak that two peaks of the next frame could continue into takes only its nearest
    fork = np.full((80, 3), -8.0)
    fork[30, 0] = 0.0
    fork[29, 1], fork[31, 1] = 0.0, 0.0
    links = MU.peak_links(MU.spectral_peaks(fork))
    assert links[30, 0] == 29 and (links[:, 1] == -1).all()


def test_peaks_need_a_rise_and_stay_within_the_floor_of_their_frame():
    mel = np.full((80, 1), -5.0)
    mel[0, 0] = -4.0                                  # the lowest band, above its one neighbour: an edge, no peak
    mel[79, 0] = -4.5                                 # the highest band likewise
    mel[10, 0] = 0.0
    mel[60, 0] = 0.0 - (MU.PEAK_FLOOR_DB + 1) / (20 / math.log(10))   # 41 dB below the frame's top: no
    mel[61, 0] = mel[60, 0] - 0.1
    mel[59, 0] = mel[60, 0] - 0.1
    assert list(np.flatnonzero(MU.spectral_peaks(mel)[:, 0])) == [10]


def test_a_loud_lowest_band_over_noise_is_no_partial():
    """A noise texture whose lowest band is its loudest all through (what an undertrained model made:
    a third to a half of the energy in a sub-30 Hz rumble) is no music: its partials stay low."""
    rng = np.random.default_rng(0)
    mel = rng.normal(-6.0, 1.5, size=(80, 516)) - np.linspace(0, 4, 80)[:, None]
    mel[0] = 2.0 + rng.normal(0, 0.1, 516)
    power = np.exp(2 * mel)
    assert power[0].sum() / power.sum() > 0.5
    assert MU.partials(mel, CFG) < 0.05


def test_values_no_waveform_can_make_are_cut_to_the_ceiling(pair):
    """A full-scale square wave stays under the ceiling (so the limit is a no-op for real audio);
    a mel with a few bins at log 9 scores as if they sat at the ceiling."""
    square = np.sign(np.sin(2 * np.pi * 440.0 * np.arange(SR) / SR)).astype(np.float32)
    ceiling = MU.mel_ceiling(CFG)
    assert ceiling.shape == (80, 1) and 3.1 < float(ceiling.min()) <= float(ceiling.max()) < 3.25
    assert (compute_mel(square, CFG) <= ceiling).all()
    assert MU.music_figures(pair["music"], CFG) == MU.music_figures(np.minimum(pair["music"], ceiling), CFG)
    blown = pair["noise"].copy()
    blown[3, 100:104] = 9.0
    at_ceiling = pair["noise"].copy()
    at_ceiling[3, 100:104] = ceiling[3, 0]
    assert MU.music_figures(blown, CFG) == MU.music_figures(at_ceiling, CFG)


def test_silence_constant_and_random_mels_give_finite_values_in_range():
    silence = np.full((80, T), MU.MEL_FLOOR)
    assert MU.music_figures(silence, CFG) == dict.fromkeys(MU.FIGURES, 0.0)
    constant = MU.music_figures(np.full((80, T), -5.0), CFG)
    assert constant["harmonic_share"] == pytest.approx(0.5)    # equal medians: the soft masks split evenly
    assert constant["partials"] == 0.0                        # no band rises above its neighbours
    assert 0.0 <= constant["chroma_concentration"] < 0.02      # a flat spectrum: nearly uniform chroma
    rng = np.random.default_rng(0)
    for mel in (-5.0 + rng.standard_normal((80, T)), rng.uniform(-12, 4, (80, 50)), np.zeros((80, 1))):
        figures = MU.music_figures(mel, CFG)
        assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in figures.values()), figures
    white = MU.music_figures(-5.0 + rng.standard_normal((80, T)), CFG)
    assert abs(white["harmonic_share"] - 0.5) < 0.05 and white["chroma_concentration"] < 0.1


def test_bad_input_is_refused_and_sets_average(pair):
    for bad in (np.zeros(80), np.zeros((64, 10)), np.full((80, 10), np.nan)):
        with pytest.raises(ValueError, match="log-mel"):
            MU.music_figures(bad, CFG)
    both = MU.mean_music_figures([pair["music"], pair["noise"]], CFG)
    one, other = MU.music_figures(pair["music"], CFG), MU.music_figures(pair["noise"], CFG)
    assert both == {k: pytest.approx((one[k] + other[k]) / 2) for k in MU.FIGURES}
    assert all(math.isnan(v) for v in MU.mean_music_figures([], CFG).values())
