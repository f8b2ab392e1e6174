"""AIST++ as downloaded: the motion pkl reader, the layout, stage 1 on sometest/make_aist_data.py's
dataset (issue 21)."""
import json
import os
import pickle

import numpy as np
import pytest
import soundfile as sf
from scipy.spatial.transform import Rotation

import newsplit_npz
import preprocess
from lm2a.aistpp import HELD_OUT_MUSIC, canonical, find_sequences, parse_sequence
from lm2a.audio import compute_mel, load_audio
from lm2a.melconfig import load_mel_config
from lm2a.motion import (MotionFileError, aist_motion, aist_poses, motion_features, read_aist_pkl,
                         resample_poses)
from models.layout import JOINT_DIMS, RH, TH
from sometest.make_aist_data import make_aist_dataset
from sometest.make_demo_data import motion_beat_times


def _pkl(path, **data):
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)
    return path


def _motion(frames=12, seed=0):
    rng = np.random.default_rng(seed)
    return dict(smpl_poses=rng.normal(0, 0.3, (frames, 72)).astype(np.float32),
                smpl_trans=rng.normal(0, 50, (frames, 3)).astype(np.float32),
                smpl_scaling=np.array([92.5], np.float32), smpl_loss=np.float32(0.1))


def test_pkl_becomes_easymocap_layout(tmp_path):
    data = _motion()
    poses = aist_poses(read_aist_pkl(_pkl(tmp_path / "a.pkl", **data)), "a.pkl")
    assert poses.shape == (12, 78)
    np.testing.assert_allclose(poses[:, RH], data["smpl_poses"][:, :3], rtol=1e-6)   # root orientation -> Rh
    assert np.all(poses[:, :3] == 0)                                                  # as EasyMocap's poses[:3]
    np.testing.assert_allclose(poses[:, 3:JOINT_DIMS], data["smpl_poses"][:, 3:], rtol=1e-6)
    np.testing.assert_allclose(poses[:, TH], data["smpl_trans"] / 92.5, rtol=1e-5)   # metres


def test_resampling_keeps_frames_on_the_grid_and_slerps_between():
    rng = np.random.default_rng(1)
    poses = rng.normal(0, 0.4, (61, 78))
    half = resample_poses(poses, 60, 30)
    assert half.shape == (31, 78)
    np.testing.assert_array_equal(half, poses[::2])                 # 60 -> 30 fps: every other frame, untouched
    # 60 -> 40 fps: target frame 1 lies half way between source frames 1 and 2
    x = np.zeros((3, 78))
    x[1, 3:6], x[2, 3:6] = [0, 0, 0.2], [0, 0, 0.6]                # one joint turning about z
    x[1, TH], x[2, TH] = [0, 1, 0], [0, 3, 0]
    y = resample_poses(x, 60, 40)
    assert y.shape == (2, 78)
    np.testing.assert_allclose(y[1, 3:6], [0, 0, 0.4], atol=1e-9)
    np.testing.assert_allclose(y[1, TH], [0, 2, 0], atol=1e-12)
    # a general pair: the slerped rotation is half the relative rotation away from each end
    a, b = Rotation.from_rotvec(rng.normal(0, 1, 3)), Rotation.from_rotvec(rng.normal(0, 1, 3))
    x = np.zeros((3, 78))
    x[1, 6:9], x[2, 6:9] = a.as_rotvec(), b.as_rotvec()
    mid = Rotation.from_rotvec(resample_poses(x, 60, 40)[1, 6:9])
    assert np.isclose((a.inv() * mid).magnitude(), (mid.inv() * b).magnitude(), atol=1e-9)


def test_aist_motion_repairs_and_refuses(tmp_path):
    data = _motion(frames=20)
    data["smpl_poses"][6, 10] = np.nan
    m = aist_motion(_pkl(tmp_path / "nan.pkl", **data), fps=30)
    assert len(m) == 10 and np.isfinite(m.poses).all()
    assert m.bad_frames.tolist() == [i == 3 for i in range(10)]     # source frame 6 = target frame 3
    assert m.nonfinite_values == 1

    no_poses = {k: v for k, v in _motion().items() if k != "smpl_poses"}
    with pytest.raises(MotionFileError, match=r"nopose\.pkl: no 'smpl_poses'"):
        aist_motion(_pkl(tmp_path / "nopose.pkl", **no_poses))
    with pytest.raises(MotionFileError, match=r"rate\.pkl: states 30 fps .*mixed frame rates.*--source_fps 30"):
        aist_motion(_pkl(tmp_path / "rate.pkl", fps=30, **_motion()))
    (tmp_path / "text.pkl").write_text("not a pickle")
    with pytest.raises(MotionFileError, match=r"text\.pkl: cannot read"):
        aist_motion(tmp_path / "text.pkl")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned > " + str(tmp_path / "owned"),))
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"smpl_poses": Evil()}, f)
    with pytest.raises(MotionFileError, match="refusing to load"):
        aist_motion(tmp_path / "evil.pkl")
    assert not (tmp_path / "owned").exists()


def test_sequence_names():
    info = parse_sequence("gBR_sBM_c06_d04_mBR0_ch01")
    assert info == dict(genre="gBR", situation="sBM", camera="c06", dancer="d04", music="mBR0", choreo="ch01")
    assert canonical("gBR_sBM_c06_d04_mBR0_ch01") == "gBR_sBM_cAll_d04_mBR0_ch01"
    assert parse_sequence("demo00_city") is None


@pytest.fixture(scope="module")
def aist(tmp_path_factory):
    out = tmp_path_factory.mktemp("aist")
    root, music_dir, truth = make_aist_dataset(out, n_genres=2, n_music=2, n_dancers=2, seconds=10.0, seed=3)
    return out, root, music_dir, truth


def test_generated_dances_follow_their_music(aist):
    _, root, _, truth = aist
    for name, seq in list(truth["sequences"].items())[:3]:
        with open(root / "motions" / f"{name}.pkl", "rb") as f:
            d = pickle.load(f)
        x = np.concatenate([d["smpl_poses"], d["smpl_trans"] / d["smpl_scaling"][0]], axis=1)
        got = motion_beat_times(x, fps=60)
        beats = np.array(truth["music"][seq["music"]]["beat_times_s"])
        beats = beats[(beats > got.min() - 0.05) & (beats < got.max() + 0.05)]
        assert len(got) == len(beats) and np.abs(got - beats).max() < 0.02


def test_layout_ignore_list_and_missing_music(aist, tmp_path):
    _, root, music_dir, truth = aist
    seqs, skipped, mdir = find_sequences(root)
    assert mdir == music_dir                                          # found beside aist_plusplus_final
    assert {s["song"] for s in seqs} == set(truth["sequences"]) - set(truth["ignored"])
    assert [s["kind"] for s in skipped] == ["ignore_list"]
    lone = tmp_path / "music"
    lone.mkdir()
    (lone / "mBR0.wav").symlink_to(next(music_dir.glob("mBR0.*")))
    seqs, skipped, _ = find_sequences(root, lone)
    assert {s["music"] for s in seqs} == {"mBR0"}
    missing = [s for s in skipped if s["kind"] == "no_music"]
    assert missing and all("not found" in s["reason"] and str(lone) in s["reason"] for s in missing)


def test_stage1_on_aist_layout(aist, tmp_path):
    out, root, music_dir, truth = aist
    report = preprocess.run(preprocess.build_parser().parse_args(
        ["--data_root", str(root), "--out_dir", str(tmp_path / "pp"), "--clip_seconds", "2", "--quiet"]))
    assert report["format"] == "aistpp" and report["songs_skipped"] == []
    assert [i["reason"] for i in report["ignored"]] == [f"in {root / 'ignore_list.txt'}"]
    clips = sorted((tmp_path / "pp" / "clips").glob("*.npz"))
    # sFM dances last 9 s (4 clips of 2 s), sBM 5 s (2 clips); the ignored sequence has none
    expect = sum(4 if "_sFM_" in n else 2 for n in truth["sequences"] if n not in truth["ignored"])
    assert len(clips) == report["clips_written"] == expect
    assert not any(p.name.startswith(truth["ignored"][0]) for p in clips)

    name = next(n for n in sorted(truth["sequences"]) if "_sFM_" in n and n not in truth["ignored"])
    with np.load(tmp_path / "pp" / "clips" / f"{name}__00002000.npz") as z:
        clip = {k: z[k] for k in z.files}
    music = truth["sequences"][name]["music"]
    assert (str(clip["song"]), str(clip["sequence"]), str(clip["dataset"])) == (music, name, "aistpp")
    assert clip["lyrics"].shape == (0, 384) and str(clip["lyric_text"]) == ""
    assert clip["motion"].shape == (60, 234) and clip["mel"].shape[1] == 172 and int(clip["fps"]) == 30
    # frame 0 = music time 0: the clip at 2 s is music 2-4 s and 60 fps motion frames 120-238
    cfg = load_mel_config(preprocess.VOCODER_CONFIG)
    wav, _ = load_audio(next(music_dir.glob(f"{music}.*")), cfg.sampling_rate)
    a = 2 * cfg.sampling_rate
    np.testing.assert_allclose(clip["mel"], compute_mel(wav[a:a + 2 * cfg.sampling_rate], cfg), atol=1e-5)
    poses = aist_poses(read_aist_pkl(root / "motions" / f"{name}.pkl"), name)
    np.testing.assert_allclose(clip["motion"], motion_features(poses[120:240:2][None])[0], atol=1e-4)


def test_genre_lyrics_missing_music_and_short_dances(aist, tmp_path):
    _, root, music_dir, truth = aist
    lone = tmp_path / "music"
    lone.mkdir()
    for p in music_dir.iterdir():
        if not p.stem.startswith("mBR1"):
            (lone / p.name).symlink_to(p)
    report = preprocess.run(preprocess.build_parser().parse_args(
        ["--data_root", str(root), "--music_dir", str(lone), "--out_dir", str(tmp_path / "pp"),
         "--clip_seconds", "6", "--lyric_text", "genre", "--quiet"]))
    reasons = {s["song"]: s["reason"] for s in report["songs_skipped"]}
    br1 = {n for n in truth["sequences"] if "_mBR1_" in n and n not in truth["ignored"]}
    assert br1 <= set(reasons) and all("music mBR1 not found" in reasons[n] for n in br1)
    basic = {n for n in truth["sequences"] if "_sBM_" in n and n not in set(truth["ignored"]) | br1}
    assert all("shorter than one clip of 6 s" in reasons[n] for n in basic)
    assert report["clips_written"] == len([n for n in truth["sequences"]
                                           if n not in set(truth["ignored"]) | br1 | basic])
    clip = next((tmp_path / "pp" / "clips").glob("gBR_*.npz"))
    with np.load(clip) as z:
        assert str(z["lyric_text"]) == "Break" and z["lyrics"].shape[0] > 2


def test_split_preset_keeps_held_out_music_out_of_train(aist, tmp_path):
    _, root, _, truth = aist
    preprocess.run(preprocess.build_parser().parse_args(
        ["--data_root", str(root), "--out_dir", str(tmp_path / "pp"), "--clip_seconds", "2", "--quiet"]))
    assert newsplit_npz.main(["--npz_dir", str(tmp_path / "pp" / "clips"), "--out_dir", str(tmp_path / "split"),
                              "--preset", "aistpp"]) == 0
    split = json.loads((tmp_path / "split" / "split.json").read_text())
    assert not set(split["sets"]["train"]["songs"]) & set(HELD_OUT_MUSIC)
    assert set(split["sets"]["test"]["songs"]) == {"mBR0", "mPO1"}
    names = [p.name for s in ("train", "val", "test") for p in (tmp_path / "split" / s).iterdir()]
    assert len(names) == len(set(names)) and not any(n.startswith(truth["ignored"][0]) for n in names)


def test_unreadable_music_is_skipped_with_its_name(tmp_path):
    root, music = tmp_path / "aist_plusplus_final", tmp_path / "music"
    (root / "motions").mkdir(parents=True)
    music.mkdir()
    _pkl(root / "motions" / "gBR_sBM_cAll_d01_mBR0_ch01.pkl", **_motion(frames=600))
    _pkl(root / "motions" / "gBR_sBM_cAll_d01_mBR1_ch01.pkl", **_motion(frames=600))
    (music / "mBR0.wav").write_bytes(b"RIFF0000WAVEjunk")
    sf.write(music / "mBR1.wav", np.zeros(22050 * 8, np.float32), 22050)
    report = preprocess.run(preprocess.build_parser().parse_args(
        ["--data_root", str(root), "--out_dir", str(tmp_path / "pp"), "--quiet"]))
    (bad,) = report["songs_skipped"]
    assert bad["song"] == "gBR_sBM_cAll_d01_mBR0_ch01" and "mBR0.wav: cannot read audio" in bad["reason"]
    assert report["clips_written"] == 1


def test_bad_sequences_are_named_on_the_terminal(tmp_path, capsys):
    root, music = tmp_path / "aist_plusplus_final", tmp_path / "music"
    (root / "motions").mkdir(parents=True)
    music.mkdir()
    sf.write(music / "mBR0.wav", np.zeros(22050 * 8, np.float32), 22050)
    good = _motion(frames=600)
    _pkl(root / "motions" / "gBR_sBM_cAll_d01_mBR0_ch01.pkl", **good)
    _pkl(root / "motions" / "gBR_sBM_cAll_d01_mBR0_ch02.pkl", **{k: v for k, v in good.items() if k != "smpl_poses"})
    _pkl(root / "motions" / "gBR_sBM_cAll_d01_mBR0_ch03.pkl", **_motion(frames=200))       # 3.3 s of dance
    _pkl(root / "motions" / "gBR_sBM_cAll_d01_mBR9_ch01.pkl", **good)                      # no mBR9 music
    assert preprocess.main(["--data_root", str(root), "--out_dir", str(tmp_path / "pp"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"skipped gBR_sBM_cAll_d01_mBR0_ch02: {root / 'motions' / 'gBR_sBM_cAll_d01_mBR0_ch02.pkl'}: no 'smpl_poses'" in out
    assert "skipped gBR_sBM_cAll_d01_mBR0_ch03: " in out and "shorter than one clip of 6 s; pass a shorter --clip_seconds" in out
    assert f"skipped gBR_sBM_cAll_d01_mBR9_ch01: music mBR9 not found" in out
    assert "read 4 sequences (3 skipped), wrote 1 clips of 6 s" in out
    assert preprocess.main(["--data_root", str(root), "--out_dir", str(tmp_path / "pp2"), "--clip_seconds", "0",
                            "--format", "justlmd"]) == 2
    assert "no song folder found" in capsys.readouterr().err


def test_split_follows_the_official_lists_when_the_root_has_them(aist, tmp_path):
    _, root, _, truth = aist
    preprocess.run(preprocess.build_parser().parse_args(
        ["--data_root", str(root), "--out_dir", str(tmp_path / "pp"), "--clip_seconds", "2", "--quiet"]))
    clips = str(tmp_path / "pp" / "clips")
    assert newsplit_npz.main(["--npz_dir", clips, "--out_dir", str(tmp_path / "split"), "--preset", "aistpp"]) == 0
    split = json.loads((tmp_path / "split" / "split.json").read_text())
    assert split["rule"] == "the official sequence lists" and split["sequence_lists"] == str(root / "splits")
    for name in ("train", "val", "test"):
        listed = set((root / "splits" / f"crossmodal_{name}.txt").read_text().split())
        got = {p.name.split("__")[0] for p in (tmp_path / "split" / name).iterdir()}
        assert got == listed - set(truth["ignored"])
    # without the lists: the held-out music rule
    assert newsplit_npz.main(["--npz_dir", clips, "--out_dir", str(tmp_path / "rule"), "--preset", "aistpp",
                              "--sequence_lists", ""]) == 0
    assert json.loads((tmp_path / "rule" / "split.json").read_text())["sequence_lists"] is None
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ("train", "val", "test"):
        (bad / f"crossmodal_{f}.txt").write_text((root / "splits" / f"crossmodal_{f}.txt").read_text())
    first_test = (bad / "crossmodal_test.txt").read_text().split()[0]
    (bad / "crossmodal_val.txt").write_text(first_test + "\n")
    assert newsplit_npz.main(["--npz_dir", clips, "--out_dir", str(tmp_path / "b"), "--preset", "aistpp",
                              "--sequence_lists", str(bad)]) == 2
