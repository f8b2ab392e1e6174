"""lm2a/metrics.py: per-clip mel metrics, onsets, motion beats, beat alignment, Fréchet distance,
chance pairs and summaries, checked against hand-computed values."""
import json
import math

import numpy as np
import pytest

from lm2a import DEFAULT_VOCODER_CONFIG
from lm2a import metrics as M
from lm2a.melconfig import load_mel_config

CFG = load_mel_config()     # the default vocoder's mel: 22050 Hz, hop 256, n_fft 1024
SR, HOP, FPS = CFG.sampling_rate, CFG.hop_size, 30
T = 516                     # mel frames of a 6 s clip
FLOOR = -8.0                # log-mel floor of the synthetic mels (about -69 dB)
CENTER_SHIFT = CFG.n_fft // (2 * HOP)   # onset frames land this many frames after a stripe (centred flux)


def striped_mel(frames, rng, n_frames=T, floor=FLOOR, noise=0.05, level=0.0):
    """(80, n_frames) log-mel: a noisy low floor with broadband vertical stripes at `frames`."""
    mel = floor + noise * rng.standard_normal((80, n_frames))
    mel[:, np.asarray(frames, dtype=int)] = level
    return mel


def random_mel(rng, n_frames=T):
    """A smooth, mel-like (80, T) array with a few onsets."""
    base = np.linspace(-2.0, -9.0, 80)[:, None]
    texture = np.cumsum(0.3 * rng.standard_normal((80, n_frames)), axis=1) * 0.1
    mel = base + texture
    mel[:, 40::70] += 3.0
    return mel


# --------------------------------------------------------------------------- spectral metrics

def test_identical_mels_give_perfect_scores():
    mel = random_mel(np.random.default_rng(0))
    row = M.clip_metrics(mel, mel.copy(), CFG)
    assert row["mse"] == 0.0
    assert row["ssim"] == pytest.approx(1.0)
    assert row["cosine"] == pytest.approx(1.0)
    assert row["lsd_db"] == 0.0
    assert row["mean_error"] == 0.0 and row["std_error"] == 0.0
    assert row["snr_db"] == math.inf
    assert row["onset_f1"] == 1.0 and row["onset_precision"] == 1.0 and row["onset_recall"] == 1.0
    assert len(M.onset_frames(mel, CFG)) > 0          # the 1.0 is earned, not the 'both empty' rule
    assert set(row) == {"mse", "ssim", "cosine", "mean_error", "std_error", "snr_db", "lsd_db",
                        "onset_precision", "onset_recall", "onset_f1"}


def test_constant_offset_gives_known_values():
    real = random_mel(np.random.default_rng(1))
    gen = real + 0.5
    assert M.mse(real, gen) == pytest.approx(0.25)
    assert M.mean_error(real, gen) == pytest.approx(0.5)
    assert M.std_error(real, gen) == pytest.approx(0.0, abs=1e-12)
    # 0.5 nepers of magnitude = 0.5 * 20 log10(e) dB in every bin and frame
    assert M.log_spectral_distance(real, gen) == pytest.approx(0.5 * 20 / math.log(10))
    assert M.snr(real, gen) == pytest.approx(10 * math.log10(np.sum(real ** 2) / (real.size * 0.25)))


def test_alternating_error_gives_known_values():
    real = random_mel(np.random.default_rng(2))
    sign = np.where(np.arange(T) % 2 == 0, 1.0, -1.0)[None, :] * np.ones((80, 1))
    gen = real + 0.3 * sign
    assert M.mean_error(real, gen) == pytest.approx(0.0, abs=1e-12)
    assert M.std_error(real, gen) == pytest.approx(0.3)
    assert M.mse(real, gen) == pytest.approx(0.09)
    # cosine of a frame with itself shifted: check against the direct formula on two frames
    cos = [np.dot(real[:, i], gen[:, i]) / np.linalg.norm(real[:, i]) / np.linalg.norm(gen[:, i])
           for i in range(T)]
    assert M.cosine_similarity(real, gen) == pytest.approx(np.mean(cos))
    assert M.ssim(real, gen) < 1.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="must be equal"):
        M.mse(np.zeros((80, 10)), np.zeros((80, 11)))


# --------------------------------------------------------------------------- onsets

STRIPES = np.arange(20, 500, 40)          # 12 stripes, 40 frames (0.46 s) apart


def test_onsets_found_at_stripes():
    mel = striped_mel(STRIPES, np.random.default_rng(3))
    np.testing.assert_array_equal(M.onset_frames(mel, CFG), STRIPES + CENTER_SHIFT)


def test_onset_f1_all_matched_within_tolerance():
    rng = np.random.default_rng(4)
    real = striped_mel(STRIPES, rng)
    assert M.onset_f1(real, striped_mel(STRIPES, rng), CFG)["f1"] == 1.0           # other floor noise
    assert M.onset_f1(real, striped_mel(STRIPES + 4, rng), CFG)["f1"] == 1.0       # 46.4 ms late
    assert M.onset_f1(real, striped_mel(STRIPES - 4, rng), CFG)["f1"] == 1.0


def test_onset_f1_shift_of_100ms_matches_nothing():
    rng = np.random.default_rng(5)
    real = striped_mel(STRIPES, rng)
    result = M.onset_f1(real, striped_mel(STRIPES + 9, rng), CFG)                   # 104.5 ms late
    assert result == dict(precision=0.0, recall=0.0, f1=0.0)


def test_onset_f1_half_matched():
    rng = np.random.default_rng(6)
    real = striped_mel(STRIPES, rng)
    gen_frames = np.concatenate([STRIPES[:6], STRIPES[6:] + 9])
    result = M.onset_f1(real, striped_mel(gen_frames, rng), CFG)
    assert result["precision"] == 0.5 and result["recall"] == 0.5 and result["f1"] == 0.5
    # 6 of 12 real onsets found, 6 extra ones invented elsewhere: P = 6/8, R = 6/12
    extra = np.concatenate([STRIPES[:6], [270, 350]])
    result = M.onset_f1(real, striped_mel(extra, rng), CFG)
    assert result["precision"] == pytest.approx(6 / 8)
    assert result["recall"] == pytest.approx(6 / 12)
    assert result["f1"] == pytest.approx(2 * 0.75 * 0.5 / 1.25)


def test_onset_f1_empty_cases():
    flat = np.full((80, T), FLOOR)
    striped = striped_mel(STRIPES, np.random.default_rng(7))
    assert M.onset_f1(flat, flat, CFG)["f1"] == 1.0
    assert M.onset_f1(flat, striped, CFG) == dict(precision=0.0, recall=0.0, f1=0.0)
    assert M.onset_f1(striped, flat, CFG) == dict(precision=0.0, recall=0.0, f1=0.0)


def test_match_events_is_a_maximum_matching():
    # nearest-pair-first greedy would pair 0.06 with 0.04 and leave 0.0 and 0.1 single
    assert M.match_events([0.0, 0.06], [0.04, 0.1], 0.05) == 2
    assert M.match_events([1.0, 2.0], [1.05, 2.0501], 0.05) == 1    # 50.1 ms is outside
    assert M.match_events([1.0], [0.96, 1.01], 0.05) == 1            # one-to-one


def _librosa_peak_pick_loop(x, pre_max, post_max, pre_avg, post_avg, delta, wait):
    """librosa 0.11 util.__peak_pick, transcribed frame by frame (the reference)."""
    peaks = np.zeros(len(x), dtype=bool)
    peaks[0] = x[0] >= np.max(x[:min(post_max, len(x))])
    peaks[0] &= x[0] >= np.mean(x[:min(post_avg, len(x))]) + delta
    n = wait + 1 if peaks[0] else 1
    while n < len(x):
        peaks[n] = x[n] == np.max(x[max(0, n - pre_max):min(n + post_max, len(x))])
        if peaks[n]:
            peaks[n] &= x[n] >= np.mean(x[max(0, n - pre_avg):min(n + post_avg, len(x))]) + delta
        n += wait + 1 if peaks[n] else 1
    return np.flatnonzero(peaks)


def test_peak_pick_matches_librosa_rule():
    rng = np.random.default_rng(8)
    for k in range(60):
        x = rng.random(int(rng.integers(1, 400))) ** 3
        params = (2, 1, 8, 9, 0.07, 2) if k % 2 else (
            int(rng.integers(0, 5)), int(rng.integers(1, 5)), int(rng.integers(0, 10)),
            int(rng.integers(1, 10)), 0.05, int(rng.integers(0, 5)))
        np.testing.assert_array_equal(M.peak_pick(x, *params), _librosa_peak_pick_loop(x, *params))


def test_onset_times_of_real_clicks_through_bigvgan_mel():
    """Percussive hits in audio -> bigvgan mel -> onset times within 12 ms of the hit times."""
    import torch
    from bigvgan.env import AttrDict
    from bigvgan.meldataset import get_mel_spectrogram
    from pathlib import Path
    h = AttrDict(json.loads(Path(DEFAULT_VOCODER_CONFIG).read_text()))  # shipped in BigVGAN/
    rng = np.random.default_rng(9)
    y = 0.001 * rng.standard_normal(3 * SR)
    hits = np.array([0.31, 0.77, 1.2, 1.64, 2.13, 2.6])
    decay = np.exp(-np.arange(int(0.08 * SR)) / (0.015 * SR))
    for t in hits:
        s = int(t * SR)
        y[s:s + len(decay)] += 0.3 * rng.standard_normal(len(decay)) * decay
    mel = get_mel_spectrogram(torch.tensor(y, dtype=torch.float32)[None], h).numpy()[0]
    times = M.audio_beats(mel, CFG)
    assert len(times) == len(hits)
    assert np.max(np.abs(times - hits)) < 0.012


# --------------------------------------------------------------------------- motion beats

def sine_motion(bpm, rng, frames=180, noise=0.0):
    """Motion features whose 24 joint angular velocities have norm |sin(pi t bpm / 60)| * w_j."""
    t = np.arange(frames) / FPS
    motion = rng.standard_normal((frames, 234))                    # pose / root / acc: irrelevant
    directions = rng.standard_normal((24, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    weights = rng.uniform(0.5, 2.0, 24)
    envelope = np.abs(np.sin(np.pi * t * bpm / 60.0))
    vel = envelope[:, None, None] * weights[None, :, None] * directions[None]   # (F, 24, 3)
    vel += noise * rng.standard_normal(vel.shape)
    motion[:, 78:150] = vel.reshape(frames, 72)
    return motion


@pytest.mark.parametrize("bpm", [100.0, 120.0, 130.0])
def test_motion_beats_at_velocity_zeros(bpm):
    rng = np.random.default_rng(int(bpm))
    period = 60.0 / bpm
    expected = np.arange(1, 100) * period
    expected = expected[expected < 179 / FPS - 1 / FPS]             # interior zeros of the clip
    for noise in (0.0, 0.01):
        beats = M.motion_beats(sine_motion(bpm, rng, noise=noise))
        assert len(beats) == len(expected), (bpm, noise, beats)
        assert np.max(np.abs(beats - expected)) <= 1.0 / FPS + 1e-9


def test_motion_beats_none_for_constant_speed():
    motion = np.zeros((180, 234))
    motion[:, 78:150] = 0.7
    assert len(M.motion_beats(motion)) == 0


def test_joint_speed_sums_joint_norms():
    motion = np.zeros((5, 234))
    motion[:, 78:81] = [3.0, 4.0, 0.0]          # joint 0 speed 5
    motion[:, 147:150] = [0.0, 0.0, 2.0]        # joint 23 speed 2
    motion[:, 150:156] = 100.0                  # Th/Rh velocity and acceleration: not joints
    np.testing.assert_allclose(M.joint_speed(motion, smooth=0), 7.0)


# --------------------------------------------------------------------------- beat alignment

def test_beat_alignment_exact_values():
    motion_beats = [1.0, 2.0, 3.0]
    audio_beats = [2.3, 1.05]                   # unsorted on purpose
    d = np.array([0.05, 0.3, 0.7])
    expected = np.mean(np.exp(-d ** 2 / (2 * 0.1 ** 2)))
    assert M.beat_alignment(motion_beats, audio_beats) == pytest.approx(expected)
    assert M.beat_alignment([0.5], [0.5]) == 1.0
    assert M.beat_alignment([0.5], [0.4], sigma_s=0.05) == pytest.approx(math.exp(-2.0))
    assert M.beat_alignment([1.0, 2.0], []) == 0.0
    assert math.isnan(M.beat_alignment([], [1.0]))


def test_clip_metrics_beat_align_with_matching_onsets():
    rng = np.random.default_rng(10)
    motion = sine_motion(120.0, rng)
    beats = M.motion_beats(motion)
    frames = np.round(beats * SR / HOP).astype(int) - CENTER_SHIFT
    gen = striped_mel(frames, rng)
    row = M.clip_metrics(striped_mel(frames, rng), gen, CFG, motion=motion)
    assert row["beat_align"] > 0.98
    # onsets on the off-beats: half a period (0.25 s) away from every motion beat
    off = striped_mel(np.round((beats + 0.25) * SR / HOP).astype(int) - CENTER_SHIFT, rng)
    assert M.clip_metrics(gen, off, CFG, motion=motion)["beat_align"] < 0.05


# --------------------------------------------------------------------------- set level

def test_mel_statistics_pool_frames():
    rng = np.random.default_rng(11)
    mels = [rng.standard_normal((80, n)) for n in (30, 50, 70)]
    mu, sigma = M.mel_statistics(mels)
    frames = np.concatenate([m.T for m in mels])
    np.testing.assert_allclose(mu, frames.mean(axis=0))
    np.testing.assert_allclose(sigma, np.cov(frames, rowvar=False))
    stacked = rng.standard_normal((4, 80, 20))
    np.testing.assert_allclose(M.mel_statistics(stacked)[0], stacked.transpose(0, 2, 1).reshape(-1, 80).mean(0))


def test_frechet_distance_values():
    rng = np.random.default_rng(12)
    a = rng.standard_normal((80, 80)) / 10
    cov = a @ a.T + 0.2 * np.eye(80)
    chol = np.linalg.cholesky(cov)
    mels = [(chol @ rng.standard_normal((80, 500))) - 5.0 for _ in range(20)]
    delta = rng.standard_normal(80)
    delta *= 5.0 / np.linalg.norm(delta)                          # |delta|^2 = 25
    assert M.frechet_distance(mels, [m.copy() for m in mels]) == pytest.approx(0.0, abs=1e-6)
    shifted = [m + delta[:, None] for m in mels]                  # same covariance exactly
    assert M.frechet_distance(mels, shifted) == pytest.approx(25.0, rel=1e-6)
    independent = [(chol @ rng.standard_normal((80, 500))) - 5.0 + delta[:, None] for _ in range(20)]
    assert M.frechet_distance(mels, independent) == pytest.approx(25.0, abs=1.0)
    # diagonal covariances: closed form sum (sqrt(a) - sqrt(b))^2 + |dmu|^2
    va, vb = rng.uniform(0.5, 2, 80), rng.uniform(0.5, 2, 80)
    expected = np.sum((np.sqrt(va) - np.sqrt(vb)) ** 2) + 4.0
    value = M.frechet_from_stats(np.zeros(80), np.diag(va), np.full(80, 2 / np.sqrt(80)), np.diag(vb))
    assert value == pytest.approx(expected, rel=1e-8)


def test_frechet_singular_covariance_is_finite():
    rng = np.random.default_rng(13)
    low_rank = rng.standard_normal((80, 3)) @ rng.standard_normal((3, 400))   # rank-3 covariance
    assert np.isfinite(M.frechet_distance([low_rank], [low_rank + 1.0]))
    assert M.frechet_distance([low_rank], [low_rank + 1.0]) == pytest.approx(80.0, rel=1e-3)


def test_chance_pairs_derangement_from_count():
    pairs = M.chance_pairs(50, seed=3)
    assert sorted(pairs) == list(range(50))
    assert np.all(pairs != np.arange(50))
    np.testing.assert_array_equal(pairs, M.chance_pairs(50, seed=3))
    assert not np.array_equal(pairs, M.chance_pairs(50, seed=4))
    assert sorted(M.chance_pairs(2, seed=0)) == [0, 1] and list(M.chance_pairs(2, seed=0)) == [1, 0]
    with pytest.raises(ValueError):
        M.chance_pairs(1)


def test_chance_pairs_prefers_other_songs():
    songs = ["a"] * 3 + ["b"] * 4 + ["c"] * 2 + ["d"] * 5 + ["e"] * 6
    rng = np.random.default_rng(0)
    songs = list(np.array(songs)[rng.permutation(len(songs))])
    for seed in range(5):
        pairs = M.chance_pairs(songs, seed=seed)
        assert sorted(pairs) == list(range(len(songs)))
        assert all(songs[i] != songs[j] for i, j in enumerate(pairs))
    # one song holds 8 of 11 clips: the best possible is 2 x 3 = 6 cross-song pairs
    songs = ["big"] * 8 + ["x", "x", "y"]
    pairs = M.chance_pairs(songs, seed=1)
    assert sorted(pairs) == list(range(11)) and np.all(pairs != np.arange(11))
    assert sum(songs[i] != songs[j] for i, j in enumerate(pairs)) == 6
    single_song = M.chance_pairs(["s"] * 4, seed=2)
    assert np.all(single_song != np.arange(4))


def test_summarize_ignores_nan_and_counts():
    rows = [dict(name="a", mse=1.0, snr_db=10.0, beat_align=0.5, ok=True),
            dict(name="b", mse=2.0, snr_db=math.inf, beat_align=math.nan, ok=False),
            dict(name="c", mse=6.0, snr_db=20.0, beat_align=1.0)]
    summary = M.summarize(rows)
    assert set(summary) == {"mse", "snr_db", "beat_align"}
    assert summary["mse"]["mean"] == pytest.approx(3.0)
    assert summary["mse"]["std"] == pytest.approx(np.std([1.0, 2.0, 6.0]))
    assert summary["mse"]["median"] == 2.0 and summary["mse"]["count"] == 3
    assert summary["snr_db"]["mean"] == 15.0 and summary["snr_db"]["n_inf"] == 1
    assert summary["snr_db"]["count"] == 2
    assert summary["beat_align"]["mean"] == 0.75 and summary["beat_align"]["n_nan"] == 1
