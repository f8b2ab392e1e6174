"""lm2a/longform.py and sample.py --song / --motion whole-dance mode (issue 12): the window plan, the
lyric line of each window from sliced.json, continuation (held overlap frames equal the previous
window's output), output length, short dances and dances ending mid-window, batch-size invariance,
the seam measure on hand-made mels, and the _full_gen.npz -> one wav through testwav.py."""
import numpy as np
import pytest
import soundfile as sf
import torch

import sample
import testwav
from lm2a import generate as G
from lm2a import longform as LF
from lm2a import vocoder as V
from lm2a.lyrics import DEFAULT_TEXT_ENCODER, LyricEncoder
from lm2a.melconfig import load_mel_config
from lm2a.trained import load_model
from lm2a.motion import clip_motion_features, fill_nearest, load_smpl_json, motion_features, resample_to_mel
from lm2a.vocoder import load_bigvgan, vocode
from models.diffusion import SamplingConfig
from tests.fakeclips import write_fake_clips
from tests.songs import write_song
from tests.test_sample import make_checkpoint
from tests.test_vocoder import tiny_bigvgan

CFG = load_mel_config()
# lyric keys (s) and lines; the last key (16.0 + 6 = 22.0) marks the end. Motion frame 0 is at 1.5 s.
KEYS = [1.5, 4.0, 12.0, 16.0]
LINES = ["la la first", "", "the third line", "the fourth line"]
W = 516        # 6 s windows
O = 86         # 1 s overlap
C = 9          # 0.1 s crossfade


def naive_joins(n_frames, window):
    """The joins of independently sampled windows butted together (overlap 0, no crossfade)."""
    return LF.plan_windows(n_frames, window, 0, 0)["joins"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("longform")
    write_fake_clips(root / "clips", n=2, mel_frames=64, seed=3, text_encoder=DEFAULT_TEXT_ENCODER)
    ckpt = make_checkpoint(root / "ckpt" / "step_00000007.pt", root / "clips", step=7)
    song = root / "JustLMD" / "Songs_2021" / "longsong"
    write_song(song, KEYS, lyrics=LINES, seed=4)  # motion 1.5 .. 22.5 s, audio 0 .. 22.5 s
    diffusion, info = load_model(ckpt, "cpu")
    return dict(root=root, ckpt=ckpt, song=song, diffusion=diffusion, info=info,
                encoder=LyricEncoder(DEFAULT_TEXT_ENCODER))


def dance(setup, **kw):
    s = setup["song"]
    d = LF.load_dance(setup["info"], s / "smplfull.json", lyrics_json=s / "sliced.json", config=FADE, **kw)
    return LF.encode_window_lyrics([d], setup["info"], encoder=setup["encoder"])[0]


FADE = LF.LongformConfig(crossfade=0.1)  # 9 frames of crossfade: the tests exercise it


def generate(setup, dances, sampling, config=FADE):
    return LF.generate_dances(setup["diffusion"], setup["info"], dances, sampling, config, progress=False,
                              encoder=setup["encoder"])


def settings(**kw):
    return SamplingConfig(**dict(dict(sampler="ddim", steps=2, guidance=2.0, seed=0, batch_size=4, precision="fp32"), **kw))


def test_plan_windows_by_hand():
    plan = LF.plan_windows(1805, W, O, C)  # 1805 frames = 3 strides of 430 + 516 - 1
    assert plan["starts"] == [0, 430, 859, 1289]  # the fewest windows, spread evenly: 1289 / 3 apart
    assert plan["shared"] == [0, 86, 87, 86]      # >= the overlap asked for
    assert plan["fade"] == [0, 9, 9, 9] and plan["held"] == [0, 77, 78, 77]
    assert plan["joins"] == [430 + 77 + 4, 859 + 78 + 4, 1289 + 77 + 4]  # the middle of each fade
    assert LF.plan_windows(300, W, O, C)["starts"] == [0]            # shorter than one window
    assert LF.plan_windows(W, W, O, C)["starts"] == [0]              # exactly one window
    assert LF.plan_windows(W + 1, W, O, C)["shared"] == [0, W - 1]   # one frame more: a second window
    assert LF.plan_windows(946, W, O, C)["starts"] == [0, 430]       # 946 = 430 + 516: two windows
    assert LF.plan_windows(947, W, O, C)["starts"] == [0, 216, 431]  # one frame more: three
    assert naive_joins(1200, W) == [516, 858]                      # butted windows [0, 342, 684]
    plan = LF.plan_windows(1805, W, O, 0)
    assert plan["joins"] == [516, 946, 1375] and plan["held"] == plan["shared"]


def test_join_window_crossfades_inside_the_overlap():
    out = np.zeros((2, 12), np.float32)
    out[:, :8] = 1.0                                   # the output so far: frames 0-7
    y = np.full((2, 8), 3.0, np.float32)               # the next window, frames 4-11
    LF.join_window(out, y, start=4, shared=4, fade=2)  # frames 4-5 held, 6-7 mixed, 8-11 new
    np.testing.assert_allclose(out[0], [1, 1, 1, 1, 1, 1, 1.5, 2.5, 3, 3, 3, 3])


def test_seam_ratio_on_a_hand_made_mel():
    mel = np.tile(np.arange(100, dtype=np.float64), (80, 1))  # every frame +1: change 1 everywhere
    assert LF.seam_ratio(mel, [40], width=0) == pytest.approx(1.0)
    mel[:, 40:] += 4.0                                          # a jump of 4 more at the join 39 -> 40
    assert LF.seam_ratio(mel, [40], width=0) == pytest.approx(5.0)
    assert LF.seam_ratio(mel, [40], width=1) == pytest.approx((1 + 5 + 1) / 3)
    assert LF.seam_ratio(mel, [70], width=0) == pytest.approx(1.0 / (102 / 98))  # jump counted elsewhere
    assert np.isnan(LF.seam_ratio(mel, []))
    np.testing.assert_allclose(LF.frame_changes(mel[:, 38:42]), [1, 5, 1])


def test_lyric_lines_mapped_to_windows_from_sliced_json(setup):
    d = dance(setup)
    # windows (song time): [1.5, 7.49) [5.25, 11.24) [9.0, 14.99) [12.75, 18.74) [16.5, 22.49)
    assert d["plan"]["starts"] == [0, 323, 646, 969, 1292]
    assert d["window_texts"] == ["la la first",                     # 2.5 s of it
                                 "",                                # the blank gap: null lyric
                                 "the third line",                  # 3 s of it
                                 "the third line the fourth line",  # both sung in it
                                 "the fourth line"]
    assert d["window_lyrics"][1].shape == (0, 384) and d["window_lyrics"][0].shape[1] == 384
    lines = LF.sung_lines([(1.0, "a"), (2.0, " "), (3.0, "c"), (5.0, "")])
    assert lines == [(1.0, 2.0, "a"), (3.0, 5.0, "c")]
    assert LF.window_lyrics(lines, [(0.0, 1.2), (0.0, 1.6), (4.8, 6.0), (3.5, 3.7)], min_s=0.5) == \
        ["", "a", "", "c"]  # a window shorter than min_s takes a line sung over all of it
    assert LF.window_lyrics(lines, [(1.5, 3.6), (0.5, 4.0)], pick="longest") == ["c", "a"]  # 0.6 s vs 0.5 s; tie
    one = LF.load_dance(setup["info"], setup["song"] / "smplfull.json", lyric_text="only line")
    assert set(one["window_texts"]) == {"only line"} and one["meta"]["motion_t0"] == 0.0


def test_null_lyric_is_the_dropped_lyric(setup):
    """A window where nothing is sung: all lyric tokens are padding, which is what drop_lyrics does."""
    net = setup["diffusion"].model
    torch.manual_seed(0)
    x, motion, lyrics = torch.randn(2, 80, 64), torch.randn(2, 64, 234), torch.randn(2, 3, 384)
    t = torch.tensor([10, 40])
    all_pad = torch.ones(2, 3, dtype=torch.bool)
    dropped = net(x, t, motion, lyrics, drop_lyrics=torch.ones(2, dtype=torch.bool))
    torch.testing.assert_close(net(x, t, motion, lyrics, lyric_pad_mask=all_pad), dropped)
    empty, pad = LF._lyric_batch([np.zeros((0, 384), np.float32)] * 2)
    torch.testing.assert_close(net(x, t, motion, empty, lyric_pad_mask=pad), dropped)


def test_motion_features_over_the_whole_dance(setup):
    d = dance(setup)
    poses, _ = load_smpl_json(setup["song"] / "smplfull.json")
    poses, _, _ = fill_nearest(poses)
    whole = motion_features(poses)
    np.testing.assert_array_equal(d["motion"], whole)  # the span is the whole motion here
    np.testing.assert_allclose(d["motion_mel"], resample_to_mel(whole, 30, d["n_frames"], 22050, 256), atol=1e-6)
    # stage 1 computes a clip's features on its own 180 frames: equal away from the clip's edges
    clip, _ = clip_motion_features(poses, np.zeros(len(poses), bool), [75], 180, 30)
    np.testing.assert_allclose(clip[0][6:-6], whole[75:255][6:-6], atol=1e-4)  # smoothing 4 + 2 differences
    assert not np.allclose(clip[0][:1, 78:], whole[75:76, 78:], atol=1e-4)  # the edges differ a little


def test_continuation_holds_the_overlap_and_covers_the_dance(setup):
    d = dance(setup)
    assert d["n_frames"] == CFG.frames_for_seconds(21.0) == 1808  # motion: 21 s
    res = generate(setup, [d], settings())[0]
    mel, win, plan = res["mel"], res["windows"], d["plan"]
    assert mel.shape == (80, 1808) and np.isfinite(mel).all() and len(win) == 5
    assert plan["held"] == [0, 184, 184, 184, 184]
    for k in range(1, 5):
        s, prev, held, shared = plan["starts"][k], plan["starts"][k - 1], plan["held"][k], plan["shared"][k]
        # the held overlap frames of window k are window k-1's output there (before the crossfade)
        np.testing.assert_array_equal(win[k][:, :held], win[k - 1][:, s - prev:s - prev + held])
        np.testing.assert_array_equal(mel[:, s:s + held], win[k][:, :held])
        assert not np.allclose(win[k][:, held:shared], win[k - 1][:, s - prev + held:W])  # the fade mixes
        end = s + W if k == 4 else plan["starts"][k + 1] + plan["held"][k + 1]  # up to the next fade
        np.testing.assert_array_equal(mel[:, s + shared:end], win[k][:, shared:end - s])     # then window k
    assert plan["starts"][-1] + W == 1808  # the last window ends with the dance
    # sample() itself holds the known frames (up to normalisation round-off), and only those
    motion = torch.from_numpy(LF._window_motion(d, 1))[None]
    lyrics, pad = LF._lyric_batch([d["window_lyrics"][1]])
    known = torch.from_numpy(mel[None, :, 323:323 + W].copy())
    mask = torch.arange(W)[None] < 184
    y = setup["diffusion"].sample(motion, lyrics, pad, settings=settings(), generator=[G.make_generator(1)],
                                  known=known, known_mask=mask).numpy()
    np.testing.assert_allclose(y[0, :, :184], mel[:, 323:507], atol=1e-4)
    assert np.abs(y[0, :, 184:] - mel[:, 507:839]).max() > 0.1
    # independent windows butted together: the naive concatenation
    naive_cfg = LF.LongformConfig(overlap=0, crossfade=0, continuation=False)
    naive = generate(setup, [d], settings(), naive_cfg)[0]
    nplan = LF.plan_windows(1808, W, 0, 0)
    assert naive["mel"].shape == (80, 1808) and len(naive["windows"]) == len(nplan["starts"]) == 4
    np.testing.assert_array_equal(naive["windows"][0], win[0])  # the first window is sampled as a clip
    s, shared = nplan["starts"][1], nplan["shared"][1]
    assert not np.allclose(naive["windows"][1][:, :shared], win[0][:, s:])  # not held
    np.testing.assert_array_equal(naive["mel"][:, s + shared:s + W], naive["windows"][1][:, shared:])  # no fade


def test_short_dance_and_batch_size_invariance(setup):
    dances = [dance(setup), dance(setup, start_s=2.0, end_s=5.0, name="short"),
              dance(setup, start_s=4.0, end_s=14.5, name="middle")]
    assert dances[1]["n_frames"] == 258 and dances[1]["plan"]["starts"] == [0]
    assert dances[2]["plan"]["starts"] == [0, 388] and dances[2]["plan"]["shared"] == [0, 128]
    short = generate(setup, dances[1:2], settings())[0]
    assert short["mel"].shape == (80, 258) and short["windows"][0].shape == (80, W)  # padded, then cut
    np.testing.assert_array_equal(short["mel"], short["windows"][0][:, :258])
    # 2 s windows keep this fast: 9, 1 and 5 windows
    cfg = settings(sampler="ddpm", steps=3)  # per-step noise: each window's own generator
    small = LF.LongformConfig(window=2.0, overlap=0.5, crossfade=0.1)
    together = generate(setup, dances, cfg, small)
    assert [len(r["windows"]) for r in together] == [14, 2, 7]
    by_two = generate(setup, dances, SamplingConfig(**dict(cfg.__dict__, batch_size=2)), small)  # [0, 1], [2]
    for a, b in zip(together, by_two):
        np.testing.assert_allclose(a["mel"], b["mel"], atol=1e-3)  # float round-off, over chained windows
    # a window's noise is seeded by (seed, name, window)
    assert together[0]["seeds"][0] == LF.window_seed(0, "longsong", 0) != LF.window_seed(0, "longsong", 1)


def test_sample_song_writes_full_gen_and_testwav_makes_one_wav(setup, capsys, monkeypatch):
    monkeypatch.setattr("lm2a.lyrics.LyricEncoder", lambda *a, **kw: setup["encoder"])  # loaded once
    out = setup["root"] / "gen"
    rc = sample.main(["--ckpt", str(setup["ckpt"]), "--song", str(setup["song"]), "--out_dir", str(out),
                      "--sampler", "ddim", "--steps", "2", "--start", "2.0", "--end", "14.0", "--crossfade", "0.1",
                      "--quiet"])
    assert rc == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "whole dance: 1 dance(s), 12.0 s of mel, 3 windows" in line and "s/window" in line
    path = out / "longsong_full_gen.npz"
    with np.load(path) as z:
        assert z["mel"].shape == (80, 1033) and z["mel"].dtype == np.float32
        assert z["real_mel"].shape == (80, 1033)  # audio covers the span
        assert list(z["window_starts"]) == [0, 258, 517] and int(z["window_frames"]) == W
        assert list(z["held_frames"]) == [0, 249, 248] and list(z["crossfade_frames"]) == [0, 9, 9]
        assert list(z["window_lyric_texts"]) == ["la la first", "", "the third line"]
        assert float(z["overlap"]) == 1.0 and bool(z["continuation"]) and str(z["sampler"]) == "ddim"
        assert float(z["start_s"]) == 2.0 and float(z["end_s"]) == 14.0 and float(z["motion_t0"]) == 1.5
        assert str(z["motion_t0_rule"]) == "first_lyric" and int(z["frame_start"]) == 15
        assert z["motion"].shape == (360, 234) and int(z["ckpt_step"]) == 7
        assert len(z["window_seeds"]) == 3 and str(z["audio_path"]).endswith("audio.wav")
    assert (out / "longsong_full.png").stat().st_size > 2000
    # one wav for the whole dance (a tiny BigVGAN; 4 s chunks: 345 + 345 + 343 frames)
    rc = testwav.main(["--npz", str(path), "--out_dir", str(setup["root"] / "wav"), "--vocoder",
                       str(tiny_bigvgan(setup["root"] / "voc")), "--chunk_seconds", "4", "--device", "cpu"])
    assert rc == 0
    info = sf.info(str(setup["root"] / "wav" / "longsong_full_gen.wav"))
    assert info.frames == 1033 * 256 and info.samplerate == 22050

    # the raw form: a span past the end of the motion is refused with the motion's end
    rc = sample.main(["--ckpt", str(setup["ckpt"]), "--motion", str(setup["song"] / "smplfull.json"),
                      "--lyrics_json", str(setup["song"] / "sliced.json"), "--end", "40", "--out_dir", str(out),
                      "--quiet"])
    assert rc == 2 and "motion ends at frame 630 (22.500 s" in capsys.readouterr().err


def test_testwav_vocodes_a_long_mel_in_chunks(tmp_path):
    model, _ = load_bigvgan(tiny_bigvgan(tmp_path / "voc"), "cpu")
    mel = (np.random.default_rng(0).normal(size=(80, 200)) - 5.0).astype(np.float32)
    whole = vocode(mel[None], model)[0]
    chunked = V.vocode_long(mel, model, chunk_frames=50, context_frames=V.CONTEXT_FRAMES)
    assert chunked.shape == whole.shape == (200 * 256,)
    np.testing.assert_allclose(chunked, whole, atol=1e-5 * np.abs(whole).max() + 1e-7)
