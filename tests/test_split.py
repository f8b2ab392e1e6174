import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import newsplit_npz
from lm2a.clipio import ClipFileError, clip_name, clip_sequence, clip_song, song_of_clip


def make_clips(d, songs):
    """songs {name: n_clips} -> empty-but-named clip files (the splitter reads names only)."""
    d.mkdir(parents=True, exist_ok=True)
    for s, n in songs.items():
        for k in range(n):
            np.savez(d / f"{clip_name(s, k * 6.0)}.npz", x=np.zeros(1))
    np.savez(d / "motion_stats.npz", x=np.zeros(1))  # not a clip
    np.savez(d / "song0__00000000_gen.npz", x=np.zeros(1))  # not a clip
    (d / "notes.txt").write_text("x")


SONGS = {f"song{i}": n for i, n in enumerate([12, 7, 9, 15, 4, 11, 8, 10, 6, 13, 5, 9, 14, 7, 10])}


def read_sets(out):
    return {k: (out / f"{k}.txt").read_text().split() for k in ("train", "val", "test")}


def test_by_song_no_leak_and_sizes(tmp_path):
    make_clips(tmp_path / "clips", SONGS)
    assert newsplit_npz.main(["--npz_dir", str(tmp_path / "clips"), "--out_dir", str(tmp_path / "s")]) == 0
    sets = read_sets(tmp_path / "s")
    song_sets = {k: {song_of_clip(n) for n in v} for k, v in sets.items()}
    assert not (song_sets["train"] & song_sets["val"]) and not (song_sets["train"] & song_sets["test"])
    assert not (song_sets["val"] & song_sets["test"])
    total = sum(SONGS.values())
    assert sum(len(v) for v in sets.values()) == total  # every clip once; non-clips ignored
    for k, r in zip(("train", "val", "test"), (0.7, 0.2, 0.1)):
        assert abs(len(sets[k]) - r * total) <= max(SONGS.values())
        # files really placed, and only clips
        assert sorted(p.name for p in (tmp_path / "s" / k).iterdir()) == sorted(sets[k])


def test_seed_determinism(tmp_path):
    make_clips(tmp_path / "clips", SONGS)
    a = newsplit_npz.make_split(newsplit_npz.list_clip_files(tmp_path / "clips"), "song", (0.7, 0.2, 0.1), 1)
    b = newsplit_npz.make_split(newsplit_npz.list_clip_files(tmp_path / "clips"), "song", (0.7, 0.2, 0.1), 1)
    c = newsplit_npz.make_split(newsplit_npz.list_clip_files(tmp_path / "clips"), "song", (0.7, 0.2, 0.1), 2)
    assert a == b and a != c


def test_refuses_non_empty_and_force(tmp_path, capsys):
    make_clips(tmp_path / "clips", SONGS)
    args = ["--npz_dir", str(tmp_path / "clips"), "--out_dir", str(tmp_path / "s")]
    assert newsplit_npz.main(args) == 0
    assert newsplit_npz.main(args) == 2
    assert "not empty" in capsys.readouterr().err
    assert newsplit_npz.main(args + ["--force", "--seed", "7", "--link"]) == 0
    n = sum(len(v) for v in read_sets(tmp_path / "s").values())
    assert n == sum(SONGS.values())
    assert sum(1 for k in ("train", "val", "test") for _ in (tmp_path / "s" / k).iterdir()) == n


def test_small_dataset_fills_every_set_and_by_clip(tmp_path):
    make_clips(tmp_path / "clips", {"a": 6, "b": 6, "c": 7, "d": 6, "e": 6})
    files = newsplit_npz.list_clip_files(tmp_path / "clips")
    sets = newsplit_npz.make_split(files, "song", (0.7, 0.2, 0.1), 42)
    assert all(len(v) > 0 for v in sets.values())
    by_clip = newsplit_npz.make_split(files, "clip", (0.7, 0.2, 0.1), 42)
    assert [len(v) for v in by_clip.values()] == [22, 6, 3]


def test_move_mode(tmp_path):
    make_clips(tmp_path / "clips", {"a": 3, "b": 3, "c": 3})
    assert newsplit_npz.main(["--npz_dir", str(tmp_path / "clips"), "--out_dir", str(tmp_path / "s"),
                              "--move"]) == 0
    left = sorted(p.name for p in (tmp_path / "clips").iterdir())
    assert left == ["motion_stats.npz", "notes.txt", "song0__00000000_gen.npz"]
    assert sum(len(v) for v in read_sets(tmp_path / "s").values()) == 9


# ---- AIST++ clips: <sequence>__<start_ms>.npz whose `song` is the music id, shared by many sequences
HELD = newsplit_npz.HELD_OUT_MUSIC


def make_aistpp_clips(d, sequences, clips_per_sequence=3):
    """sequences [(genre, situation, dancer, music, choreo)] -> tiny AIST++ clip files with real keys."""
    d.mkdir(parents=True, exist_ok=True)
    for genre, sit, dancer, music, ch in sequences:
        seq = f"{genre}_{sit}_cAll_{dancer}_{music}_{ch}"
        for k in range(clips_per_sequence):
            np.savez(d / f"{clip_name(seq, k * 6.0)}.npz", mel=np.zeros((80, 8), np.float32),
                     motion=np.zeros((4, 234), np.float32), lyrics=np.zeros((0, 384), np.float32),
                     song=np.array(music), sequence=np.array(seq), genre=np.array(genre),
                     dataset=np.array("aistpp"))
    np.savez(d / "motion_stats.npz", x=np.zeros(1))  # not a clip


# held-out mBR0 danced by 5 sequences (odd: the extra one to test), mPO1 by 4, mLO2 by 1 (lone: test);
# training music mBR1 / mPO2 danced by several dancers too
AIST_SEQS = ([("gBR", "sFM" if i % 2 else "sBM", f"d0{i}", "mBR0", f"ch0{i}") for i in range(1, 6)]
             + [("gPO", "sFM", f"d1{i}", "mPO1", f"ch0{i}") for i in range(1, 5)]
             + [("gLO", "sFM", "d13", "mLO2", "ch01")]
             + [("gBR", "sBM", f"d0{i}", "mBR1", f"ch1{i}") for i in range(1, 7)]
             + [("gPO", "sFM", f"d1{i}", "mPO2", f"ch1{i}") for i in range(1, 5)])


def clip_facts(d):
    """{clip file name: (song, sequence)} from the clips' own keys."""
    return {p.name: (clip_song(p), clip_sequence(p)) for p in newsplit_npz.list_clip_files(d)}


def no_shared(sets):
    tr, va, te = (sets[k] for k in ("train", "val", "test"))
    return not (tr & va) and not (tr & te) and not (va & te)


def test_aistpp_preset_holds_music_out(tmp_path, capsys):
    clips = tmp_path / "clips"
    make_aistpp_clips(clips, AIST_SEQS)
    args = ["--npz_dir", str(clips), "--out_dir", str(tmp_path / "s"), "--preset", "aistpp",
            "--ratios", "0.5,0.3,0.2"]  # unused by the preset, and it says so
    assert newsplit_npz.main(args) == 0
    assert "--ratios 0.5,0.3,0.2 unused" in capsys.readouterr().err
    sets, facts = read_sets(tmp_path / "s"), clip_facts(clips)
    songs = {k: {facts[n][0] for n in v} for k, v in sets.items()}
    seqs = {k: {facts[n][1] for n in v} for k, v in sets.items()}
    assert songs["train"] == {"mBR1", "mPO2"}
    assert songs["val"] == {"mBR0", "mPO1"} and songs["test"] == {"mBR0", "mPO1", "mLO2"}
    assert no_shared(seqs)
    assert sorted(n for v in sets.values() for n in v) == sorted(facts)  # every clip placed once
    # sequences per held-out music: mBR0 5 -> val 2 / test 3, mPO1 4 -> 2 / 2, mLO2 1 -> 0 / 1
    per = {k: Counter(facts[n][0] for n in v) for k, v in sets.items()}
    assert per["val"] == {"mBR0": 2 * 3, "mPO1": 2 * 3}
    assert per["test"] == {"mBR0": 3 * 3, "mPO1": 2 * 3, "mLO2": 3}
    assert len(sets["train"]) == 10 * 3
    meta = json.loads((tmp_path / "s" / "split.json").read_text())
    assert (meta["preset"], meta["by"], meta["ratios"]) == ("aistpp", "sequence", None)
    assert meta["sets"]["test"]["songs"] == ["mBR0", "mLO2", "mPO1"]


def test_aistpp_preset_seeded(tmp_path):
    make_aistpp_clips(tmp_path / "clips", AIST_SEQS, clips_per_sequence=1)
    files = newsplit_npz.list_clip_files(tmp_path / "clips")
    runs = [newsplit_npz.make_split(files, preset="aistpp", seed=s) for s in (3, 3, 4, 5, 6)]
    assert runs[0] == runs[1]
    assert any(r != runs[0] for r in runs[2:])  # 10 * 6 = 60 ways to divide mBR0 and mPO1
    assert all(r["train"] == runs[0]["train"] for r in runs)  # train never depends on the seed


def test_aistpp_random_reports_leaks_keeps_sequences(tmp_path, capsys):
    clips = tmp_path / "clips"
    make_aistpp_clips(clips, AIST_SEQS)
    args = ["--npz_dir", str(clips), "--out_dir", str(tmp_path / "s"), "--preset", "aistpp-random",
            "--ratios", "0.6,0.2,0.2", "--by", "clip"]  # the preset overrides --by
    assert newsplit_npz.main(args) == 0
    sets, facts = read_sets(tmp_path / "s"), clip_facts(clips)
    seqs = {k: {facts[n][1] for n in v} for k, v in sets.items()}
    assert no_shared(seqs)
    assert [len(seqs[k]) for k in ("train", "val", "test")] == [12, 4, 4]  # 20 sequences, 0.6/0.2/0.2
    assert sorted(n for v in sets.values() for n in v) == sorted(facts)
    songs = {k: {facts[n][0] for n in v} for k, v in sets.items()}
    leaks = sum(1 for m in {"mBR0", "mPO1", "mLO2", "mBR1", "mPO2"} if sum(m in songs[k] for k in songs) > 1)
    assert leaks > 0
    meta = json.loads((tmp_path / "s" / "split.json").read_text())
    assert (meta["preset"], meta["by"], meta["ratios"]) == ("aistpp-random", "sequence", [0.6, 0.2, 0.2])
    assert meta["leaks"]["songs_in_several_sets"] == leaks and meta["leaks"]["note"]
    assert f"{leaks} songs (music ids) in several sets" in capsys.readouterr().out


def test_by_song_on_aistpp_groups_by_music_id(tmp_path):
    make_aistpp_clips(tmp_path / "clips", AIST_SEQS)
    files = newsplit_npz.list_clip_files(tmp_path / "clips")
    sets = newsplit_npz.make_split(files, "song", (0.6, 0.2, 0.2), 42)
    facts = clip_facts(tmp_path / "clips")
    songs = {k: {facts[p.name][0] for p in v} for k, v in sets.items()}
    assert set().union(*songs.values()) == {"mBR0", "mPO1", "mLO2", "mBR1", "mPO2"}  # music ids, not names
    assert no_shared(songs)
    assert all(songs.values()) and sum(len(v) for v in sets.values()) == len(AIST_SEQS) * 3


def test_aistpp_preset_refuses_other_clips(tmp_path, capsys):
    make_clips(tmp_path / "clips", {"a": 3, "b": 3, "c": 3})
    out = tmp_path / "s"
    args = ["--npz_dir", str(tmp_path / "clips"), "--out_dir", str(out), "--preset", "aistpp"]
    assert newsplit_npz.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("newsplit_npz: error: ") and len(err.splitlines()) == 1
    assert str(tmp_path / "clips") in err and "no clip of a held-out AIST++ music id" in err
    assert "mBR0" in err and "only songs a, b, c" in err and "without --preset" in err
    assert not out.exists()


def test_clip_song_and_sequence_read_the_keys(tmp_path):
    make_aistpp_clips(tmp_path, [("gBR", "sBM", "d04", "mBR0", "ch01")], clips_per_sequence=1)
    make_clips(tmp_path, {"justsong": 1})
    aist, just = tmp_path / "gBR_sBM_cAll_d04_mBR0_ch01__00000000.npz", tmp_path / "justsong__00000000.npz"
    assert (clip_song(aist), clip_sequence(aist)) == ("mBR0", "gBR_sBM_cAll_d04_mBR0_ch01")
    assert (clip_song(just), clip_sequence(just)) == ("justsong", "justsong")
    bad = tmp_path / "broken__00000000.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ClipFileError, match="broken__00000000.npz: cannot read npz"):
        clip_song(bad)
    np.savez(bad, song=np.zeros(2))
    with pytest.raises(ClipFileError, match="key 'song' is float64"):
        clip_song(bad)
