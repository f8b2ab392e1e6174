"""lm2a/rhythm.py: the dance-to-music rhythm scores (D2M-GAN BCS/BHS, LORIS cover/hit/F1 at 1 and 5
bins per second, AIST++ beat alignment), checked on hand-made onset lists and motions whose scores are
worked out by hand below, and onset detection checked against librosa on a click track."""
import math

import numpy as np
import pytest

from lm2a import rhythm as R
from lm2a.melconfig import load_mel_config
from lm2a.vocoder import griffin_lim, vocode_mels
from tests.rhythm_helpers import onset_times_from_audio, rhythm_metrics

SR = 22050
FPS = 30
FRAME_S = R.PAPER_ONSET_HOP / SR          # one onset-envelope frame: 512 / 22050 = 23.2 ms


# --------------------------------------------------------------------------- binned scores by hand

# real onsets 0.5, 1.5, 3.2 s; generated 0.4, 2.5, 3.9 s; a 6 s clip
#   1 s bins (6):    real {0, 1, 3}, generated {0, 2, 3}, both {0, 3}
#                    BCS = 3/3 = 1, BHS = 2/3; cover = 2/3, hit = 2/3, F1 = 2/3
#   0.2 s bins (30): real {2, 7, 16}, generated {2, 12, 19}, both {2}
#                    BCS = 3/3 = 1, BHS = 1/3; cover = 1/3, hit = 1/3, F1 = 1/3
REAL_A, GEN_A = [0.5, 1.5, 3.2], [0.4, 2.5, 3.9]

# real 0.1, 0.3, 2.05, 5.5 s; generated 0.15, 1.0, 1.2, 2.1, 4.0, 4.99 s; 6 s
#   1 s bins:   real {0, 2, 5} (3; 0.1 and 0.3 share bin 0), generated {0, 1, 2, 4} (4), both {0, 2} (2)
#               BCS = 4/3, BHS = 2/3; cover = 2/4, hit = 2/3, F1 = 2 (1/2)(2/3) / (1/2 + 2/3) = 4/7
#   0.2 s bins: real {0, 1, 10, 27} (4), generated {0, 5, 6, 10, 20, 24} (6), both {0, 10} (2)
#               BCS = 6/4, BHS = 2/4; cover = 2/6, hit = 2/4, F1 = 2 (1/3)(1/2) / (1/3 + 1/2) = 2/5
REAL_B, GEN_B = [0.1, 0.3, 2.05, 5.5], [0.15, 1.0, 1.2, 2.1, 4.0, 4.99]


@pytest.mark.parametrize("real, gen, rate, bcs, bhs, cover, hit, f1", [
    (REAL_A, GEN_A, 1, 1.0, 2 / 3, 2 / 3, 2 / 3, 2 / 3),
    (REAL_A, GEN_A, 5, 1.0, 1 / 3, 1 / 3, 1 / 3, 1 / 3),
    (REAL_B, GEN_B, 1, 4 / 3, 2 / 3, 1 / 2, 2 / 3, 4 / 7),
    (REAL_B, GEN_B, 5, 6 / 4, 2 / 4, 2 / 6, 2 / 4, 2 / 5),
])
def test_bin_scores_match_hand_values(real, gen, rate, bcs, bhs, cover, hit, f1):
    assert R.bcs_bhs(real, gen, 6.0, rate) == pytest.approx((bcs, bhs))
    assert R.loris_cover_hit_f1(real, gen, 6.0, rate) == pytest.approx((cover, hit, f1))


def test_bins_count_once_and_span_the_clip():
    # 6 s -> 6 and 30 bins; our 516-frame clip (5.99 s) also has 6 and 30
    assert R.beat_bins([], 6.0, 1).shape == (6,) and R.beat_bins([], 6.0, 5).shape == (30,)
    assert R.beat_bins([], 516 * 256 / SR, 1).shape == (6,)
    assert R.beat_bins([], 516 * 256 / SR, 5).shape == (30,)
    # three onsets in one second are one bin; an onset past the last bin (2.5 s -> 3 bins) is dropped
    assert R.beat_bins([0.1, 0.2, 0.9, 2.9, 3.1], 2.5, 1).tolist() == [True, False, True]
    assert R.bin_counts([0.1, 0.2, 0.9], [0.95, 1.5], 2.0, 1) == (1, 2, 1)


def test_empty_onset_lists_follow_each_script():
    # no real onset: D2M-GAN divides by zero (nan here); LORIS returns 0 for a zero denominator
    assert all(math.isnan(v) for v in R.bcs_bhs([], [1.2, 3.4], 6.0, 1))
    assert R.loris_cover_hit_f1([], [1.2, 3.4], 6.0, 1) == (0.0, 0.0, 0.0)
    # no generated onset: BCS = 0/2, BHS = 0/2; LORIS cover 0 (0 generated bins), hit 0/2
    assert R.bcs_bhs([1.2, 3.4], [], 6.0, 1) == (0.0, 0.0)
    assert R.loris_cover_hit_f1([1.2, 3.4], [], 6.0, 5) == (0.0, 0.0, 0.0)
    # neither
    assert all(math.isnan(v) for v in R.bcs_bhs([], [], 6.0, 5))
    assert R.loris_cover_hit_f1([], [], 6.0, 5) == (0.0, 0.0, 0.0)


def test_loris_set_f1_is_the_f1_of_the_means():
    # clip 1: cover 1/2, hit 1; clip 2: cover 1, hit 1/2. Per-clip F1 = 2/3 both; the means are
    # 3/4 and 3/4, so LORIS's set F1 is 3/4. std (ddof 1) of (1/2, 1) = 0.5 / sqrt(2).
    rows = [dict(cover_loris_1s=0.5, hit_loris_1s=1.0, f1_loris_1s=2 / 3, bcs_d2m_1s=math.nan),
            dict(cover_loris_1s=1.0, hit_loris_1s=0.5, f1_loris_1s=2 / 3, bcs_d2m_1s=2.0)]
    s = R.summarize_rhythm(rows)
    assert s["f1_loris_1s"]["of_means"] == pytest.approx(0.75)
    assert s["f1_loris_1s"]["mean"] == pytest.approx(2 / 3)
    assert s["cover_loris_1s"]["std"] == pytest.approx(0.5 / math.sqrt(2))
    # a nan (no real onset) is counted, not averaged; one finite value has no ddof-1 std
    bcs = s["bcs_d2m_1s"]
    assert (bcs["mean"], bcs["count"], bcs["n_nan"]) == (2.0, 1, 1) and math.isnan(bcs["std"])
    assert set(s) == set(R.RHYTHM_KEYS)


# --------------------------------------------------------------------------- AIST++ beat alignment


def motion_with_speed(speed):
    """(F, 234) features whose summed joint angular speed is `speed` (>= 0): joint 0's x velocity."""
    feats = np.zeros((len(speed), 234), dtype=np.float32)
    feats[:, 78] = speed
    return feats


def test_bas_on_known_beats():
    # speed 2 - cos(2 pi (f - 15) / 30) over 180 frames: strict minima at frames 15, 45, ..., 165
    f = np.arange(180)
    motion = motion_with_speed(2 - np.cos(2 * np.pi * (f - 15) / 30))
    assert R.aist_motion_beats(motion, FPS).tolist() == [15, 45, 75, 105, 135, 165]
    # music beats at 0.5, 1.6, 2.5 s -> frames 15, 48, 75 (and 7.0 s -> frame 210, past the clip: dropped)
    # nearest music beat of each motion beat: d = 0, 3, 0, 30, 60, 90 frames; sigma 3 frames
    # BAS = (1 + e^-0.5 + 1 + e^-50 + e^-200 + e^-450) / 6 = 0.434422
    expected = (2 + math.exp(-0.5) + math.exp(-50) + math.exp(-200) + math.exp(-450)) / 6
    assert R.aist_bas(motion, [0.5, 1.6, 2.5, 7.0], FPS) == pytest.approx(expected)
    assert expected == pytest.approx(0.434422, abs=1e-6)
    # the mean runs over motion beats: extra music beats between them cost nothing
    music = np.arange(15, 180, 10) / FPS          # frames 15, 25, 35, 45, ...: every motion beat hit
    assert R.aist_bas(motion, music, FPS) == pytest.approx(1.0)
    # no music beat -> 0; no motion beat (constant speed) -> 0, as AIST++
    assert R.aist_bas(motion, [], FPS) == 0.0
    assert R.aist_bas(motion_with_speed(np.ones(180)), [0.5], FPS) == 0.0


def test_motion_beat_neighbourhood_is_scaled_to_30_fps():
    # AIST++'s order 10 at 60 fps is 5 frames at 30 fps: a minimum must be the strict minimum of
    # the 5 frames on each side. Dips at 40 (depth 2) and 43 (depth 1): only 40 survives; the dip
    # at 80 (depth 1) is 40 frames away and survives.
    assert R.aist_order(30) == 5 and R.aist_order(60) == 10
    speed = np.full(120, 5.0)
    speed[40], speed[43], speed[80] = 3.0, 4.0, 4.0
    assert R.aist_motion_beats(motion_with_speed(speed), FPS).tolist() == [40, 80]
    # with order 2 (a 24 fps clip) both near dips count
    assert R.aist_motion_beats(motion_with_speed(speed), 12).tolist() == [40, 43, 80]


def test_alignment_score_by_hand():
    # motion beats 10, 20; music 12: d = 2, 8 -> (e^(-4/18) + e^(-64/18)) / 2
    assert R.alignment_score([12], [10, 20], 3) == pytest.approx(
        (math.exp(-4 / 18) + math.exp(-64 / 18)) / 2)
    assert R.alignment_score([12], [], 3) == 0.0


# --------------------------------------------------------------------------- onsets on audio


@pytest.fixture(scope="module")
def click_track():
    """6 s at 22050 Hz: librosa's clicks (decaying 1 kHz blips) every 0.5 s from 0.5 s."""
    import librosa
    times = np.arange(0.5, 6.0, 0.5)
    return times, librosa.clicks(times=times, sr=SR, length=6 * SR).astype(np.float32)


@pytest.mark.parametrize("peaks", [R.D2M_PEAKS, R.LORIS_PEAKS], ids=["d2m", "loris"])
def test_click_onsets_equal_librosa(click_track, peaks):
    import librosa
    times, wav = click_track
    ours = onset_times_from_audio(wav, SR, peaks)
    ref = librosa.onset.onset_detect(y=wav, sr=SR, units="time", **peaks)
    np.testing.assert_allclose(ours, ref)
    # one onset per click, never early; librosa's spectral flux peaks up to 1.33 envelope frames
    # (31 ms) after a click at these phases, so the bound is 1.5 frames rather than one
    assert len(ours) == len(times)
    lag = ours - times
    assert np.all(lag >= 0) and np.all(lag <= 1.5 * FRAME_S)


def test_rhythm_metrics_on_click_tracks(click_track):
    times, wav = click_track
    real = R.audio_rhythm(wav, SR, FPS)
    row = R.rhythm_scores(real, real)
    assert tuple(row) == R.RHYTHM_KEYS and set(row) == set(R.METRIC_SOURCES)
    # the real audio against itself: every onset bin is hit
    for res in R.BIN_RATES:
        assert row[f"bcs_d2m_{res}"] == 1.0 and row[f"bhs_d2m_{res}"] == 1.0
        assert row[f"cover_loris_{res}"] == 1.0 and row[f"f1_loris_{res}"] == 1.0
    assert math.isnan(row["bas_aist"])                      # no motion given
    # generated = silence: no onsets -> BCS 0, BHS 0, LORIS all 0
    silent = R.rhythm_scores(real, R.audio_rhythm(np.zeros_like(wav), SR, FPS))
    assert silent["bcs_d2m_1s"] == 0.0 and silent["hit_loris_5hz"] == 0.0 and silent["f1_loris_1s"] == 0.0
    # the click track's music beats: librosa's beat tracker follows the 120 bpm clicks (0.5 s apart)
    beats = real["music_beats_aist"]
    assert len(beats) >= 8 and np.allclose(np.diff(beats), 0.5, atol=2 / FPS)
    # a motion whose speed minima sit on the clicks' frames (15, 30, ..., 165) aligns with them;
    # rhythm_metrics on the waveforms is the same computation
    f = np.arange(180)
    motion = motion_with_speed(2 - np.cos(2 * np.pi * f / 15))
    scored = rhythm_metrics(wav, wav, motion, SR, FPS)
    assert scored["bas_aist"] > 0.8
    assert {k: v for k, v in scored.items() if k != "bas_aist"} == {
        k: v for k, v in row.items() if k != "bas_aist"}


def test_other_sample_rates_are_analysed_at_22050(click_track):
    import librosa
    times, wav = click_track
    wav_16k = librosa.resample(wav, orig_sr=SR, target_sr=16000)
    onsets = onset_times_from_audio(wav_16k, 16000, R.D2M_PEAKS)
    assert len(onsets) == len(times) and np.all(np.abs(onsets - times) <= 2 * FRAME_S)


def test_vocode_mels_griffin_lim_matches_single_calls():
    cfg = load_mel_config()
    rng = np.random.default_rng(0)
    mels = [rng.uniform(-8, -2, (80, 20)).astype(np.float32), rng.uniform(-8, -2, (80, 12)).astype(np.float32)]
    wavs = vocode_mels(mels, cfg, n_iter=4)
    assert [w.shape for w in wavs] == [(20 * 256,), (12 * 256,)]
    np.testing.assert_array_equal(wavs[1], griffin_lim(mels[1], cfg, n_iter=4))


def test_vocode_mels_batches_equal_lengths_in_order():
    import torch

    class Fake(torch.nn.Module):
        """Stands in for BigVGAN: (B, 80, T) -> (B, 1, T * 4), each sample = its frame's band 0."""
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))
            self.batches = []

        def forward(self, mel):
            self.batches.append(mel.shape[0])
            return (mel[:, :1, :] * self.w).repeat_interleave(4, dim=2)

    mels = [np.full((80, t), i, dtype=np.float32) for i, t in enumerate([5, 7, 5, 5, 7])]
    model = Fake()
    wavs = vocode_mels(mels, model=model, batch_size=2)
    assert [w.shape[0] for w in wavs] == [20, 28, 20, 20, 28]
    assert [float(w[0]) for w in wavs] == [0, 1, 2, 3, 4]
    assert sorted(model.batches) == [1, 2, 2]
