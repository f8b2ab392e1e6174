"""The demo-data generator writes a JustLMD-style dataset whose audio follows its motion and lyrics."""
import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sometest.make_demo_data import (FPS, main, make_demo_dataset, motion_beat_times,  # noqa: E402
                                     smpl_frames, word_note)

SECONDS = 14.0
KEY_RE = re.compile(r"^(\d\d):(\d\d\.\d\d\d)$")


def key_seconds(key: str) -> float:
    m = KEY_RE.match(key)
    assert m, f"lyric key {key!r} is not mm:ss.fff"
    return int(m.group(1)) * 60 + float(m.group(2))


def file_hashes(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "JustLMD"
    song_dirs = make_demo_dataset(root, n_songs=2, seconds=SECONDS, seed=0)
    return root, song_dirs


def test_layout_audio_and_json_formats(demo):
    root, song_dirs = demo
    assert [d.parent.name for d in song_dirs] == ["Songs_2020", "Songs_2021"]
    assert sorted(p.relative_to(root).parent.as_posix() for p in root.rglob("audio.wav")) == \
        sorted(d.relative_to(root).as_posix() for d in song_dirs)
    for d, (sr, channels) in zip(song_dirs, [(44100, 2), (22050, 1)]):
        assert sorted(p.name for p in d.iterdir()) == ["audio.wav", "beats.json", "sliced.json", "smplfull.json"]
        info = sf.info(d / "audio.wav")
        assert (info.samplerate, info.channels, info.subtype) == (sr, channels, "PCM_16")
        assert info.duration == pytest.approx(SECONDS, abs=1e-3)
        audio, _ = sf.read(d / "audio.wav")
        assert 0.7 < np.abs(audio).max() <= 0.81

        sliced = json.loads((d / "sliced.json").read_text())
        keys = [key_seconds(k) for k in sliced]
        assert len(keys) >= 2 and 1.5 <= keys[0] <= 3.0
        assert np.all(np.diff(keys) >= 6.0) and keys[-1] <= SECONDS
        assert all(isinstance(v, str) and 3 <= len(v.split()) <= 7 for v in sliced.values())

        smpl = json.loads((d / "smplfull.json").read_text())
        n_frames = len(smpl)
        assert list(smpl) == [f"{i:06d}" for i in range(n_frames)]
        annot = smpl["000000"]["annots"][0]
        assert annot["id"] == 0
        assert [len(annot[k][0]) for k in ("poses", "Th", "Rh", "shapes")] == [72, 3, 3, 10]
        # frame 0 is the first lyric key; motion reaches the last key and the end of the audio
        assert (n_frames - 1) / FPS >= keys[-1] - keys[0]
        assert n_frames == int((SECONDS - keys[0]) * FPS) + 1
        frames = smpl_frames(smpl)
        assert frames.shape == (n_frames, 78) and np.isfinite(frames).all()
        assert frames[:, :75].std(axis=0).max() > 0.1            # the dancer really moves


def test_same_seed_same_bytes_other_seed_differs(demo, tmp_path):
    root, _ = demo
    make_demo_dataset(tmp_path / "again", n_songs=2, seconds=SECONDS, seed=0)
    make_demo_dataset(tmp_path / "other", n_songs=2, seconds=SECONDS, seed=1)
    ref = file_hashes(root)
    assert len(ref) == 8 and file_hashes(tmp_path / "again") == ref
    other = file_hashes(tmp_path / "other")
    assert len(other) == 8
    for name in ("audio.wav", "sliced.json", "smplfull.json"):
        assert {h for k, h in other.items() if k.endswith(name)}.isdisjoint(
            {h for k, h in ref.items() if k.endswith(name)})


def test_audio_hits_fall_on_motion_speed_minima(demo):
    import librosa
    _, song_dirs = demo
    for d in song_dirs:
        truth = json.loads((d / "beats.json").read_text())
        t0 = key_seconds(next(iter(json.loads((d / "sliced.json").read_text()))))
        assert truth["motion_t0_s"] == pytest.approx(t0)
        smpl = json.loads((d / "smplfull.json").read_text())
        motion_beats = motion_beat_times(smpl, FPS) + t0
        gt_beats = np.array(truth["beat_times_s"])
        assert 60 / 140 * 0.9 < np.median(np.diff(motion_beats)) < 60 / 90 * 1.1
        # every speed minimum is a true beat; every true beat not on the first/last frame is found
        assert np.abs(motion_beats[:, None] - gt_beats[None]).min(axis=1).max() < 0.02
        inner = gt_beats[(gt_beats > t0 + 1.5 / FPS) & (gt_beats < t0 + (len(smpl) - 2.5) / FPS)]
        assert len(inner) >= 15 and np.abs(inner[:, None] - motion_beats[None]).min(axis=1).max() < 0.02

        y, sr = librosa.load(d / "audio.wav", sr=22050, mono=True)
        onsets = librosa.onset.onset_detect(y=y, sr=sr, hop_length=128, units="time")
        onsets = onsets[onsets > t0 + 0.1]                      # hits exist only where there is motion
        recall = (np.abs(motion_beats[:, None] - onsets[None]).min(axis=1) < 0.05).mean()
        precision = (np.abs(onsets[:, None] - motion_beats[None]).min(axis=1) < 0.05).mean()
        assert recall >= 0.9 and precision >= 0.8, (d.name, recall, precision)

        # hit loudness follows leg movement: strong leg beats have more low-frequency energy
        spec = np.abs(librosa.stft(y, n_fft=1024, hop_length=128))
        low = spec[(librosa.fft_frequencies(sr=sr, n_fft=1024) < 100)].sum(axis=0)
        frames = np.round((gt_beats + 0.02) * sr / 128).astype(int)
        legs = np.array(truth["hit_energy"]["legs"])
        assert np.corrcoef(legs, low[frames])[0, 1] > 0.8


def test_lyric_words_set_the_pitch(demo):
    _, song_dirs = demo
    checked = 0
    for d in song_dirs:
        truth = json.loads((d / "beats.json").read_text())
        sliced = json.loads((d / "sliced.json").read_text())
        assert [n["word"] for n in truth["lyric_notes"]] == " ".join(sliced.values()).lower().split()
        audio, sr = sf.read(d / "audio.wav")
        mono = audio.mean(axis=1) if audio.ndim == 2 else audio
        freqs = np.fft.rfftfreq(8192, 1 / sr)
        band = (freqs > 100) & (freqs < 1000)
        for note in truth["lyric_notes"]:
            assert note["f0_hz"] == pytest.approx(word_note(note["word"])["f0_hz"], abs=1e-3)
            mid = int((note["start_s"] + note["end_s"]) / 2 * sr)
            if mid + 4096 > len(mono) or note["end_s"] - note["start_s"] < 0.5:
                continue
            spectrum = np.abs(np.fft.rfft(mono[mid - 4096: mid + 4096] * np.hanning(8192)))
            # the word's fundamental is (nearly) the strongest line of the 100-1000 Hz band
            at_f0 = spectrum[np.abs(freqs / note["f0_hz"] - 1) < 0.03].max()
            assert at_f0 > 0.5 * spectrum[band].max() and at_f0 > 10 * np.median(spectrum[band]), note
            checked += 1
    assert checked >= 10


def test_refuses_existing_songs_and_too_short_songs(demo, tmp_path, capsys):
    root, _ = demo
    with pytest.raises(FileExistsError, match="already exists"):
        make_demo_dataset(root, n_songs=2, seconds=SECONDS, seed=0)
    with pytest.raises(ValueError, match="too short"):
        make_demo_dataset(tmp_path / "short", n_songs=1, seconds=5.0, seed=0)
    main(["--out", str(tmp_path / "cli"), "--songs", "1", "--seconds", "12"])
    assert re.search(r"wrote 1 songs \(12\.0 s of audio, 1 clips expected\)", capsys.readouterr().out)
    main(["--out", str(tmp_path / "cli"), "--songs", "1", "--seconds", "12", "--force"])
