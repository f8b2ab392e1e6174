"""Bad input tried systematically (issue 23): hypothesis writes random and mutated song files for each
reader (sliced.json, smplfull.json, AIST++ motion pkl, audio.wav) and for stage 1 end to end. Every
input either reads to the values written or raises the reader's own error naming the file; stage 1
skips the bad song with that reason and writes the good ones.

LM2A_HYPOTHESIS_SCALE=10 multiplies every example count (a deeper search than the suite's default)."""
import contextlib
import json
import math
import os
import pickle
import re
import tempfile
from pathlib import Path
from unittest import mock

import librosa
import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import preprocess
from lm2a import audio, motion
from lm2a.audio import AudioFileError, compute_mel, load_audio
from lm2a.clipio import load_clip
from lm2a.lyrics import LyricEncoder
from lm2a.melconfig import load_mel_config
from lm2a.motion import MAX_ABS_POSE, MotionFileError, aist_motion, load_smpl_json, parse_smpl_json, song_motion
from lm2a.timeline import MAX_KEY_SECONDS, read_lyric_timeline
from tests.songs import fmt_time, write_song

SCALE = int(os.environ.get("LM2A_HYPOTHESIS_SCALE", "1"))
BOM = b"\xef\xbb\xbf"


def examples(n):
    return settings(max_examples=n * SCALE, deadline=None, database=None, derandomize=SCALE == 1,
                    suppress_health_check=[HealthCheck.too_slow])


@contextlib.contextmanager
def tmp_dir():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def raises_naming(exc, path, fn, *args):
    """fn(*args) raises exactly `exc` (or a subclass) and its message names `path`."""
    with pytest.raises(exc) as e:
        fn(*args)
    assert str(path) in str(e.value), str(e.value)
    return str(e.value)


def json_object(pairs, indent=False):
    """JSON object text from (key, value) pairs: repeated keys stay repeated; NaN/Infinity as Python writes them."""
    sep = ",\n  " if indent else ","
    body = sep.join(json.dumps(k, ensure_ascii=False) + ": " + json.dumps(v, ensure_ascii=False) for k, v in pairs)
    body = re.sub("[\ud800-\udfff]", lambda m: f"\\u{ord(m.group()):04x}", body)  # lone surrogates as JSON escapes
    return "{" + ("\n  " if indent else "") + body + ("\n}" if indent else "}")


# ---- sliced.json --------------------------------------------------------------------------------
def time_key(ms, form):
    """A key for ms milliseconds in one of the forms sliced.json uses, and the seconds it stands for."""
    s = ms / 1000
    if form == "mm:ss.fff":
        return fmt_time(s), s
    if form == "hh:mm:ss.fff":
        h, rest = divmod(s, 3600)
        return f"{int(h)}:{fmt_time(rest)}", s
    if form == "seconds":
        return f"{s:.3f}", s
    return f"{ms // 1000}", float(ms // 1000)  # whole seconds


JUNK_KEYS = ["chorus", "00:61.000", "1:75:00", "1.5:00", "-1", "1e3", "9" * 400, "100000", "", "1:2:3:4",
             "٣:00", "00:01.000x"]
lyric_values = st.one_of(st.text(max_size=12), st.sampled_from(["a\ud800b", "\udfff"]), st.none(), st.integers(),
                         st.floats(), st.booleans(), st.lists(st.text(max_size=3), max_size=2),
                         st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
timed_pairs = st.lists(st.tuples(st.one_of(st.integers(0, 600_000), st.integers(0, 99_999_999)),
                                 st.sampled_from(["mm:ss.fff", "hh:mm:ss.fff", "seconds", "whole"]), lyric_values),
                       max_size=12)


def expected_timeline(pairs):
    """What read_lyric_timeline must give for (key, value, ms or None) pairs in file order."""
    entries, n_skipped, seen = [], 0, set()
    for _, value, ms in pairs:
        if ms is None or ms in seen:
            n_skipped += 1
            continue
        seen.add(ms)
        lone = isinstance(value, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in value)
        n_skipped += lone or not (isinstance(value, str) or value is None)
        text = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value) if isinstance(value, str) else ""
        entries.append((ms, text))
    unsorted = any(b[0] < a[0] for a, b in zip(entries, entries[1:]))
    return sorted(entries, key=lambda e: e[0]), n_skipped + unsorted, unsorted


@examples(80)
@given(timed=timed_pairs, junk=st.lists(st.tuples(st.sampled_from(JUNK_KEYS), lyric_values), max_size=3),
       dup=st.lists(st.integers(0, 20), max_size=2), order=st.randoms(use_true_random=False), bom=st.booleans(),
       indent=st.booleans(), pad=st.booleans())
def test_sliced_json_reads_the_keys_written(timed, junk, dup, order, bom, indent, pad):
    pairs = []
    for ms, form, value in timed:
        key, seconds = time_key(ms, form)
        pairs.append((f" {key} " if pad else key, value, round(seconds * 1000)))
    pairs += [(k, v, None) for k, v in junk]
    pairs += [pairs[i % len(pairs)] for i in dup] if pairs else []  # the same key twice
    order.shuffle(pairs)
    text = json_object([(k, v) for k, v, _ in pairs], indent)
    want, n_skipped, unsorted = expected_timeline(pairs)
    with tmp_dir() as d:
        path = d / "sliced.json"
        path.write_bytes((BOM if bom else b"") + text.encode("utf-8"))
        entries, skipped = read_lyric_timeline(path)
    assert [round(t * 1000) for t, _ in entries] == [ms for ms, _ in want]
    assert all(math.isclose(t, ms / 1000, rel_tol=1e-12, abs_tol=1e-9) for (t, _), (ms, _) in zip(entries, want))
    assert [text for _, text in entries] == [text for _, text in want]
    assert len(skipped) == n_skipped and (unsorted == any("not in time order" in s for s in skipped))
    for key, _ in junk:
        assert any(repr(key) in s for s in skipped)


def mutate_bytes(data, kind, where, blob):
    """A valid file's bytes broken in one way."""
    cut = int(where * len(data))
    return {"truncate": data[:cut], "insert": data[:cut] + blob + data[cut:], "replace": blob,
            "latin1": data[:cut] + b'"\xe9t\xe9"' + data[cut:], "bom_twice": BOM + BOM + data,
            "deep": b"[" * 100_000 + b"]" * 100_000, "empty": b"", "top_level": blob.join([b"[", b"]"]),
            "trailing": data + b" x"}[kind]


BYTE_MUTATIONS = ["truncate", "insert", "replace", "latin1", "bom_twice", "deep", "empty", "top_level", "trailing"]


def json_object_or_none(data):
    """The pairs of data when it is UTF-8 (BOM allowed) JSON whose top level is an object, else None."""
    try:
        value = json.loads(data.decode("utf-8-sig"), object_pairs_hook=lambda p: ("object", p))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value[1] if isinstance(value, tuple) else None


@examples(80)
@given(kind=st.sampled_from(BYTE_MUTATIONS), where=st.floats(0, 1), blob=st.binary(max_size=24))
def test_sliced_json_broken_bytes_raise_naming_the_file(kind, where, blob):
    good = json_object([("00:01.000", "one"), ("00:07.000", "two"), ("00:13.000", "")]).encode()
    data = mutate_bytes(good, kind, where, blob)
    with tmp_dir() as d:
        path = d / "sliced.json"
        path.write_bytes(data)
        if json_object_or_none(data) is None:
            raises_naming(ValueError, path, read_lyric_timeline, path)
            return
        entries, _ = read_lyric_timeline(path)  # still an object: what it holds is read
    times = [t for t, _ in entries]
    assert times == sorted(times) and all(0 <= t <= MAX_KEY_SECONDS for t in times)
    assert len({round(t * 1000) for t in times}) == len(times) and all(isinstance(s, str) for _, s in entries)


# ---- smplfull.json ------------------------------------------------------------------------------
def person(vec, flat):
    p = {"id": 0, "poses": vec[:72], "Th": vec[72:75], "Rh": vec[75:], "shapes": [[0.0] * 10]}
    return p if flat else {k: [v] if k in ("poses", "Th", "Rh") else v for k, v in p.items()}


def frame_value(vec, layout, flat):
    """One frame in the layouts EasyMocap files come in (the first person counts, a second is ignored)."""
    first, second = person(vec, flat), person([0.5] * 78, flat)
    return {"annots": {"annots": [first]}, "bare": [first], "one": first, "two": {"annots": [first, second]}}[layout]


smpl_songs = st.fixed_dictionaries({
    "frames": st.integers(1, 30), "seed": st.integers(0, 2**32 - 1),
    "missing": st.sets(st.integers(0, 29), max_size=6), "nobody": st.sets(st.integers(0, 29), max_size=3),
    "nonfinite": st.lists(st.tuples(st.integers(0, 29), st.integers(0, 77),
                                    st.sampled_from([math.nan, math.inf, -math.inf, 1e400])), max_size=8),
    "layout": st.sampled_from(["annots", "bare", "one", "two"]), "flat": st.booleans(),
    "digits": st.sampled_from(["%06d", "%d"]), "shuffle": st.randoms(use_true_random=False),
    "junk": st.lists(st.sampled_from(["meta", "-1", "1.5", "0x1", "1_0", " 2", "٣"]), max_size=3, unique=True),
    "decimals": st.sampled_from([None, 0, 3]), "bom": st.booleans(), "indent": st.booleans(),
    "chunk": st.sampled_from([None, 1, 7, 64, 1000])})


def smpl_file(spec):
    """(file text, expected poses (F, 78) with NaN rows for absent frames, n_missing) of a generated song."""
    rng = np.random.default_rng(spec["seed"])
    F = spec["frames"]
    poses = rng.uniform(-4, 4, (F, 78))
    if spec["decimals"] is not None:
        poses = np.round(poses, spec["decimals"])
    for f, d, v in spec["nonfinite"]:
        poses[f % F, d] = v
    absent = {f for f in spec["missing"] | spec["nobody"] if f < F - 1}  # the last frame stays: it sets F
    pairs = []
    for f in range(F):
        key = spec["digits"] % f
        if f in spec["nobody"] and f in absent:
            pairs.append((key, {"annots": []}))
        elif f not in absent:
            vec = [int(v) if spec["decimals"] == 0 and np.isfinite(v) else float(v) for v in poses[f]]
            pairs.append((key, frame_value(vec, spec["layout"], spec["flat"])))
    spec["shuffle"].shuffle(pairs)
    pairs += [(k, {"note": "not a frame"}) for k in spec["junk"]]
    want = poses.copy()
    want[sorted(absent)] = np.nan
    return json_object(pairs, spec["indent"]), want, len(absent)


def chunked(chunk):
    """smplfull.json read `chunk` characters at a time (None: the default chunk)."""
    return mock.patch.object(motion, "JSON_CHUNK", chunk) if chunk else contextlib.nullcontext()


def nearest_fill(x):
    """fill_nearest's rule written out frame by frame: each non-finite value from the nearest finite frame
    of its dimension, the earlier one on a tie."""
    out = x.copy()
    for f, d in zip(*np.nonzero(~np.isfinite(x))):
        good = np.flatnonzero(np.isfinite(x[:, d]))
        out[f, d] = x[good[np.argmin(np.abs(good - f))], d]  # argmin takes the first (earlier) on ties
    return out


@examples(80)
@given(spec=smpl_songs)
def test_smplfull_json_reads_the_poses_written(spec):
    text, want, n_missing = smpl_file(spec)
    no_data_dim = (~np.isfinite(want)).all(axis=0).any()
    with tmp_dir() as d, chunked(spec["chunk"]):
        path = d / "smplfull.json"
        path.write_bytes((BOM if spec["bom"] else b"") + text.encode("utf-8"))
        if 2 * n_missing > len(want):  # more frames missing than present: the keys are suspect
            assert "more than half missing" in raises_naming(MotionFileError, path, song_motion, path)
            return
        if no_data_dim:  # a dimension NaN/inf in every frame: nothing to repair it from
            assert "no finite value" in raises_naming(MotionFileError, path, song_motion, path)
            return
        poses, missing = load_smpl_json(path)
        m = song_motion(path)
    np.testing.assert_array_equal(poses, want)  # NaN where NaN or absent, inf where inf, else the numbers
    assert missing == n_missing == m.missing_frames
    np.testing.assert_array_equal(parse_smpl_json(json.loads(text))[0], want)  # the dict path agrees
    bad = ~np.isfinite(want).all(axis=1)
    np.testing.assert_array_equal(m.bad_frames, bad)
    assert m.frames_repaired == bad.sum() and m.nonfinite_values == (~np.isfinite(want)).sum() - 78 * n_missing
    np.testing.assert_array_equal(m.poses, nearest_fill(want))
    if len(m) >= 3:
        feats, repaired = m.clip_features([0], len(m), 30)
        assert np.isfinite(feats).all() and repaired[0] == bad.sum()


def set_vector(frames, what, value):
    frames[0][1]["annots"][0][what] = value


def good_frames(n=4):
    return [("%06d" % f, {"annots": [person([0.1 * f + 0.01 * k for k in range(78)], False)]}) for f in range(n)]


# each breaks a good file in one way that must be refused (applied to the (key, value) pairs)
SMPL_BREAKS = {
    "poses_text": lambda fr: set_vector(fr, "poses", "abc"),
    "poses_number": lambda fr: set_vector(fr, "poses", 5),
    "poses_null": lambda fr: set_vector(fr, "poses", None),
    "poses_empty": lambda fr: set_vector(fr, "poses", []),
    "poses_ragged": lambda fr: set_vector(fr, "poses", [[0.0] * 36, [0.0] * 35]),
    "poses_short": lambda fr: set_vector(fr, "poses", [[0.0] * 71]),
    "poses_bools": lambda fr: set_vector(fr, "poses", [[True] * 72]),
    "poses_one_bool": lambda fr: set_vector(fr, "poses", [[0.5] * 71 + [True]]),
    "poses_one_string": lambda fr: set_vector(fr, "poses", [[0.5] * 71 + ["1.5"]]),
    "poses_one_null": lambda fr: set_vector(fr, "poses", [[0.5] * 71 + [None]]),
    "poses_object": lambda fr: set_vector(fr, "poses", {"x": 1}),
    "th_huge": lambda fr: set_vector(fr, "Th", [[0.0, 10 * MAX_ABS_POSE, 0.0]]),
    "rh_1e300": lambda fr: set_vector(fr, "Rh", [[1e300, 0.0, 0.0]]),
    "no_poses": lambda fr: fr[0][1]["annots"][0].pop("poses"),
    "no_rh": lambda fr: fr[1][1]["annots"][0].pop("Rh"),
    "frame_number": lambda fr: fr.__setitem__(0, (fr[0][0], 5)),
    "frame_false": lambda fr: fr.__setitem__(0, (fr[0][0], False)),
    "frame_text": lambda fr: fr.__setitem__(1, (fr[1][0], "person")),
    "frame_empty_object": lambda fr: fr.__setitem__(1, (fr[1][0], {})),
    "annots_number": lambda fr: fr[0][1].__setitem__("annots", 7),
    "annots_list_of_null": lambda fr: fr[0][1].__setitem__("annots", [None]),
    "annots_list_of_lists": lambda fr: fr[0][1].__setitem__("annots", [[1, 2]]),
    "duplicate_key": lambda fr: fr.append(fr[1]),
    "aliased_key": lambda fr: fr.append(("2", fr[2][1])),
    "huge_frame_key": lambda fr: fr.append(("99999999", fr[0][1])),
    "nan_dimension": lambda fr: [set_vector([f], "Th", [[math.nan, 0.0, 0.0]]) for f in fr],
}
SMPL_TEXT_BREAKS = ["truncate", "insert_nonutf8", "top_list", "top_number", "top_null", "empty", "extra_data",
                    "missing_comma", "deep"]


def break_smpl_text(text, kind, where):
    data = text.encode()
    cut = max(1, min(int(where * len(data)), len(data) - 1))
    return {"truncate": data[:cut], "insert_nonutf8": data.replace(b'"id"', b'"i\xff\xfed"', 1),
            "top_list": b"[" + data + b"]", "top_number": b"12", "top_null": b"null", "empty": b"  \n",
            "extra_data": data + b"\n{}", "missing_comma": data.replace(b'},"', b'}"', 1),
            "deep": data[:-1] + b', "deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"}[kind]


@examples(80)
@given(kind=st.sampled_from(sorted(SMPL_BREAKS) + SMPL_TEXT_BREAKS), where=st.floats(0, 1),
       chunk=st.sampled_from([None, 3, 50, 4096]))
def test_smplfull_json_broken_raises_naming_the_file(kind, where, chunk):
    frames = good_frames()
    if kind in SMPL_BREAKS:
        SMPL_BREAKS[kind](frames)
        data = json_object(frames).encode()
    else:
        data = break_smpl_text(json_object(frames), kind, where)
    with tmp_dir() as d, chunked(chunk):
        path = d / "smplfull.json"
        path.write_bytes(data)
        raises_naming(MotionFileError, path, song_motion, path)


def test_smplfull_json_read_in_chunks_holds_one_chunk(tmp_path):
    """A 3000-frame file read 4096 characters at a time: the same poses as one read, and the reader never
    holds much more than a chunk (its buffer is measured at every pair)."""
    rng = np.random.default_rng(3)
    want = rng.uniform(-3, 3, (3000, 78))
    path = tmp_path / "smplfull.json"
    path.write_text(json_object([("%06d" % f, {"annots": [person(list(want[f]), False)]}) for f in range(3000)]))
    sizes, pairs = [], motion._JsonObjectReader.pairs

    def watched(self):
        for pair in pairs(self):
            sizes.append(len(self.buf))
            yield pair
    with mock.patch.object(motion, "JSON_CHUNK", 4096), mock.patch.object(motion._JsonObjectReader, "pairs", watched):
        poses, missing = load_smpl_json(path)
    np.testing.assert_array_equal(poses, want)
    assert missing == 0 and len(sizes) == 3000 and max(sizes) < 2 * 4096 + 4000 < path.stat().st_size / 100


# ---- AIST++ motion pkl --------------------------------------------------------------------------
aist_songs = st.fixed_dictionaries({
    "frames": st.integers(1, 40), "seed": st.integers(0, 2**32 - 1), "dtype": st.sampled_from(["f4", "f8", "list"]),
    "scaling": st.sampled_from([1.0, 93.5, np.array([93.5]), np.float32(0.5), [[2.0]]]),
    "fps": st.sampled_from([None, 60, 60.0, np.array([60])]),
    "nonfinite": st.lists(st.tuples(st.integers(0, 39), st.integers(0, 74), st.sampled_from([math.nan, math.inf])),
                          max_size=5),
    "extra": st.booleans()})


def aist_data(spec):
    rng = np.random.default_rng(spec["seed"])
    F = spec["frames"]
    poses, trans = rng.uniform(-3, 3, (F, 72)), rng.uniform(-200, 200, (F, 3))
    for f, d, v in spec["nonfinite"]:
        (poses if d < 72 else trans)[f % F, d % 72 if d < 72 else d - 72] = v
    cast = (lambda a: a.tolist()) if spec["dtype"] == "list" else (lambda a: a.astype(spec["dtype"]))
    data = {"smpl_poses": cast(poses), "smpl_trans": cast(trans), "smpl_scaling": spec["scaling"]}
    if spec["fps"] is not None:
        data["fps"] = spec["fps"]
    if spec["extra"]:
        data["smpl_loss"] = np.float64(0.25)
    return data


def aist_expected(data):
    """The (F, 78) EasyMocap layout of the numbers written: root rotation in Rh, zeros in poses[:3]."""
    poses = np.asarray(data["smpl_poses"], np.float64)
    scaling = float(np.asarray(data["smpl_scaling"], np.float64).reshape(-1)[0])
    want = np.concatenate([poses, np.asarray(data["smpl_trans"], np.float64) / scaling, poses[:, :3]], axis=1)
    want[:, :3] = 0.0
    return want


@examples(80)
@given(spec=aist_songs)
def test_aist_pkl_reads_the_poses_written(spec):
    data = aist_data(spec)
    want = aist_expected(data)
    with tmp_dir() as d:
        path = d / "gBR_sBM_cAll_d04_mBR0_ch01.pkl"
        path.write_bytes(pickle.dumps(data, protocol=spec["seed"] % 5 + 1))
        if (~np.isfinite(want)).all(axis=0).any():
            raises_naming(MotionFileError, path, aist_motion, path, 60, 60)
            return
        at60, at30 = aist_motion(path, fps=60, source_fps=60), aist_motion(path, fps=30, source_fps=60)
    bad = ~np.isfinite(want).all(axis=1)
    np.testing.assert_array_equal(at60.poses[~bad], want[~bad])
    np.testing.assert_array_equal(at60.poses, nearest_fill(want))
    np.testing.assert_array_equal(at60.bad_frames, bad)
    assert at60.nonfinite_values == (~np.isfinite(np.concatenate([data["smpl_poses"], data["smpl_trans"]], 1))).sum()
    np.testing.assert_array_equal(at30.poses, at60.poses[::2])  # 60 -> 30 fps: every other frame, unchanged
    np.testing.assert_array_equal(at30.bad_frames, bad[::2])


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _aist_break(kind):
    good = {"smpl_poses": np.zeros((5, 72)), "smpl_trans": np.zeros((5, 3)), "smpl_scaling": np.array([1.0])}
    broken = {
        "no_poses": lambda d: d.pop("smpl_poses"), "no_scaling": lambda d: d.pop("smpl_scaling"),
        "poses_71": lambda d: d.__setitem__("smpl_poses", np.zeros((5, 71))),
        "poses_1d": lambda d: d.__setitem__("smpl_poses", np.zeros(72)),
        "poses_empty": lambda d: d.__setitem__("smpl_poses", np.zeros((0, 72))),
        "trans_frames": lambda d: d.__setitem__("smpl_trans", np.zeros((4, 3))),
        "poses_text": lambda d: d.__setitem__("smpl_poses", np.full((5, 72), "a")),
        "poses_object": lambda d: d.__setitem__("smpl_poses", np.array([[None] * 72] * 5, dtype=object)),
        "poses_complex": lambda d: d.__setitem__("smpl_poses", np.ones((5, 72)) * 1j),
        "poses_bool": lambda d: d.__setitem__("smpl_poses", np.ones((5, 72), bool)),
        "poses_ragged": lambda d: d.__setitem__("smpl_poses", [[0.0] * 72, [0.0] * 3]),
        "poses_huge": lambda d: d["smpl_poses"].__setitem__((2, 7), 1e300),
        "trans_huge": lambda d: d["smpl_trans"].__setitem__((1, 0), 1e308),
        "nan_dimension": lambda d: d["smpl_trans"].__setitem__((slice(None), 1), np.nan),
        "scaling_zero": lambda d: d.__setitem__("smpl_scaling", 0.0),
        "scaling_nan": lambda d: d.__setitem__("smpl_scaling", np.nan),
        "scaling_pair": lambda d: d.__setitem__("smpl_scaling", [1.0, 2.0]),
        "scaling_text": lambda d: d.__setitem__("smpl_scaling", "1.0"),
        "fps_30": lambda d: d.__setitem__("fps", 30), "fps_nan": lambda d: d.__setitem__("fps", float("nan")),
        "fps_text": lambda d: d.__setitem__("fps", "sixty"), "fps_zero": lambda d: d.__setitem__("frame_rate", 0),
        "fps_pair": lambda d: d.__setitem__("fps", [60, 30]), "fps_none": lambda d: d.__setitem__("fps", None),
        "evil": lambda d: d.__setitem__("smpl_loss", _Evil()),
    }
    if kind in broken:
        broken[kind](good)
        return pickle.dumps(good)
    return {"list": pickle.dumps([good]), "array": pickle.dumps(np.zeros((5, 72))), "empty": b"",
            "truncate": pickle.dumps(good)[:40], "text": b"smpl_poses: [0, 0, 0]\n"}[kind]


AIST_BREAKS = ["no_poses", "no_scaling", "poses_71", "poses_1d", "poses_empty", "trans_frames", "poses_text",
               "poses_object", "poses_complex", "poses_bool", "poses_ragged", "poses_huge", "trans_huge",
               "nan_dimension", "scaling_zero", "scaling_nan", "scaling_pair", "scaling_text", "fps_30", "fps_nan",
               "fps_text", "fps_zero", "fps_pair", "fps_none", "evil", "list", "array", "empty", "truncate", "text"]


@examples(60)
@given(kind=st.sampled_from(AIST_BREAKS))
def test_aist_pkl_broken_raises_naming_the_file(kind):
    with tmp_dir() as d:
        path = d / "gBR_sBM_cAll_d04_mBR0_ch01.pkl"
        path.write_bytes(_aist_break(kind))
        raises_naming(MotionFileError, path, aist_motion, path)


@examples(100)
@given(blob=st.binary(max_size=200), prefix=st.sampled_from([b"", b"\x80\x04", b"\x80\x02}q\x00("]))
def test_aist_pkl_random_bytes_raise_naming_the_file(blob, prefix):
    with tmp_dir() as d:
        path = d / "gBR_sBM_cAll_d04_mBR0_ch01.pkl"
        path.write_bytes(prefix + blob)
        try:
            m = aist_motion(path)
        except MotionFileError as e:
            assert str(path) in str(e)
        else:  # bytes that happen to be a good pkl
            assert np.isfinite(m.poses).all()


# ---- audio.wav ----------------------------------------------------------------------------------
SUBTYPES = {"PCM_U8": 4 / 255, "PCM_16": 1e-4, "PCM_24": 1e-6, "PCM_32": 1e-6, "FLOAT": 1e-6, "DOUBLE": 1e-6}
RATES = [8000, 11025, 16000, 22050, 32000, 44100, 48000, 88200, 96000]
tones = st.fixed_dictionaries({
    "sr": st.sampled_from(RATES), "target": st.sampled_from([16000, 22050, 24000]),
    "channels": st.integers(1, 6), "subtype": st.sampled_from(sorted(SUBTYPES)),
    "seconds": st.sampled_from([0.0, 1e-4, 0.01, 0.3, 1.2]), "freq": st.floats(0.02, 0.3),
    "gains": st.lists(st.floats(0.05, 0.9), min_size=6, max_size=6), "block": st.sampled_from([None, 1, 1000, 4096])})


def block_size(block):
    return mock.patch.object(audio, "AUDIO_BLOCK", block) if block else contextlib.nullcontext()


@examples(80)
@given(spec=tones)
def test_audio_reads_the_tone_written(spec):
    """A tone at freq x the lower rate, one gain per channel: the mono file is the mean tone, resampled with
    librosa's soxr_hq to ceil(n * target / sr) samples, equal to the tone at the new rate inside."""
    sr, target, ch = spec["sr"], spec["target"], spec["channels"]
    n = int(round(spec["seconds"] * sr))
    f = spec["freq"] * min(sr, target)
    gains = np.asarray(spec["gains"][:ch])
    x = np.sin(2 * np.pi * f * np.arange(n) / sr)[:, None] * gains[None, :]
    with tmp_dir() as d, block_size(spec["block"]):
        path = d / "audio.wav"
        sf.write(path, x, sr, subtype=spec["subtype"])
        if n == 0:
            assert "no samples" in raises_naming(AudioFileError, path, load_audio, path, target)
            return
        wav, sr_read = load_audio(path, target)
        written = sf.read(path, dtype="float32")[0].reshape(n, ch).mean(axis=1)
    m = -(-n * target // sr)  # ceil(n * target / sr), exactly
    assert sr_read == sr and wav.dtype == np.float32 and wav.shape == (m,)
    ref = written if sr == target else librosa.resample(written, orig_sr=sr, target_sr=target, res_type="soxr_hq")
    assert len(ref) - m in (0, 1)  # librosa's float ratio can round up one sample more
    np.testing.assert_allclose(wav, np.clip(ref[:m], -1, 1), atol=1e-6)  # librosa's one-shot result, block by block
    edge = int(0.02 * target)  # the resampling filter's edges
    inner = np.arange(edge, m - edge)
    tone = gains.mean() * np.sin(2 * np.pi * f * inner / target)
    np.testing.assert_allclose(wav[inner], tone, atol=SUBTYPES[spec["subtype"]] + 2e-3 * (sr != target))


@examples(40)
@given(kind=st.sampled_from(["nan", "inf", "random", "text", "header_only", "truncated"]),
       blob=st.binary(min_size=1, max_size=64), where=st.floats(0, 1))
def test_audio_broken_raises_naming_the_file(kind, blob, where):
    with tmp_dir() as d:
        path = d / "audio.wav"
        x = 0.1 * np.ones((2000, 2))
        if kind in ("nan", "inf"):
            x[int(where * 1999), 1] = np.nan if kind == "nan" else np.inf
            sf.write(path, x, 22050, subtype="FLOAT")
        else:
            sf.write(path, x, 22050, subtype="PCM_16")
            data = path.read_bytes()
            path.write_bytes({"random": blob, "text": b"RIFF? no: " + blob, "header_only": data[:44],
                              "truncated": data[:44 + int(where * 7999)]}[kind])
        if kind == "truncated":  # what is there is read, or refused
            try:
                wav, _ = load_audio(path, 22050)
            except AudioFileError as e:
                assert str(path) in str(e)
            else:
                np.testing.assert_allclose(wav, sf.read(path, dtype="float32")[0].mean(axis=1), atol=1e-6)
            return
        raises_naming(AudioFileError, path, load_audio, path, 22050)


# ---- stage 1 end to end -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def encoder_once():
    """preprocess.LyricEncoder loaded once for every example (the real encoder)."""
    made = {}

    def cached(name, **kwargs):
        if name not in made:
            made[name] = LyricEncoder(name, **kwargs)
        return made[name]
    with mock.patch.object(preprocess, "LyricEncoder", cached):
        yield


def _smpl_edit(path, edit):
    frames = json.loads(path.read_text())
    edit(frames)
    path.write_text(json.dumps(frames))


def _audio_rewrite(path, nan=False):
    """The song's audio as 6 channels of 8-bit at 96 kHz (or float with one NaN sample)."""
    x, sr = sf.read(path)
    x = np.repeat(librosa.resample(x, orig_sr=sr, target_sr=96000)[:, None], 6, axis=1)
    if nan:
        x[len(x) // 2, 3] = np.nan
    sf.write(path, x, 96000, subtype="FLOAT" if nan else "PCM_U8")


def _set_poses(frames, value):
    frames["000003"]["annots"][0]["poses"] = value


# (file, how it is broken, whether the song must be skipped): stage 1 skips a broken song naming the file,
# and reads a repairable one (its clips written, the repair in the report)
SONG_BREAKS = {
    "audio_random": ("audio.wav", lambda p, blob, w: p.write_bytes(blob), True),
    "audio_empty": ("audio.wav", lambda p, blob, w: sf.write(p, np.zeros((0, 1)), 22050), True),
    "audio_header_only": ("audio.wav", lambda p, blob, w: p.write_bytes(p.read_bytes()[:44]), True),
    "audio_nan": ("audio.wav", lambda p, blob, w: _audio_rewrite(p, nan=True), True),
    "audio_6ch_u8_96k": ("audio.wav", lambda p, blob, w: _audio_rewrite(p), False),
    "sliced_not_utf8": ("sliced.json", lambda p, blob, w: p.write_bytes(b"\xff" + blob), True),
    "sliced_list": ("sliced.json", lambda p, blob, w: p.write_text("[]"), True),
    "sliced_one_key": ("sliced.json", lambda p, blob, w: p.write_text('{"00:01.000": "only one"}'), True),
    "sliced_truncated": ("sliced.json", lambda p, blob, w: p.write_bytes(p.read_bytes()[:int(w * 30)]), True),
    "sliced_bom_junk_surrogate": ("sliced.json", lambda p, blob, w: p.write_bytes(
        BOM + b'{"00:01.000": "a \\ud800 b", "chorus": 1, "00:07.000": null, "00:13.000": ""}'), False),
    "smpl_truncated": ("smplfull.json", lambda p, blob, w: p.write_bytes(p.read_bytes()[:int(w * 5000)]), True),
    "smpl_poses_text": ("smplfull.json", lambda p, blob, w: _smpl_edit(p, lambda f: _set_poses(f, "abc")), True),
    "smpl_poses_huge": ("smplfull.json", lambda p, blob, w: _smpl_edit(p, lambda f: _set_poses(f, [[1e300] * 72])),
                        True),
    "smpl_nan_value": ("smplfull.json", lambda p, blob, w: _smpl_edit(
        p, lambda f: _set_poses(f, [[math.nan] + [0.0] * 71])), False),
}


@pytest.mark.parametrize("kind", sorted(SONG_BREAKS))
@examples(2)
@given(where=st.floats(0.01, 0.99), blob=st.binary(max_size=40), bad=st.sampled_from(["a", "b", "c"]))
def test_stage1_skips_the_broken_song_and_writes_the_others(encoder_once, kind, where, blob, bad):
    which, breaks, fatal = SONG_BREAKS[kind]
    with tmp_dir() as d:
        root = d / "JustLMD"
        for seed, name in enumerate("abc"):
            write_song(root / "Songs_2020" / name, [1.0, 7.0], seed=seed)
        broken = root / "Songs_2020" / bad / which
        breaks(broken, blob, where)
        rc = preprocess.main(["--data_root", str(root), "--out_dir", str(d / "out"), "--quiet"])
        report = json.loads((d / "out" / "preprocess_report.json").read_text())
        written = sorted(p.stem for p in (d / "out" / "clips").glob("*.npz"))
        clip = d / "out" / "clips" / f"{bad}__00001000.npz"
        lyric = None if fatal else load_clip(clip, keys=("lyric_text",))["lyric_text"]
    assert rc == 0
    skipped = {s["song"]: s["reason"] for s in report["songs_skipped"]}
    songs = [s for s in "abc" if s != bad or not fatal]
    assert written == [f"{s}__{ms}" for s in songs for ms in ("00001000", "00007000")]
    if fatal:
        assert list(skipped) == [bad] and str(broken) in skipped[bad]
        return
    assert skipped == {}
    if kind.startswith("sliced"):
        assert lyric == "a \ufffd b" and len(report["lyric_keys_skipped"]) == 2  # surrogate, "chorus" (null: no lyric)
    if kind == "smpl_nan_value":
        assert report["motion_repairs"]["nonfinite_values"] == 1


def test_write_clips_computes_mels_in_chunks(encoder_once, tmp_path, monkeypatch):
    """A song of 5 clips with CLIP_CHUNK 2: mels in batches of 2, 2 and 1, each clip's mel and motion those
    of its own samples and frames (bigvgan's mel of the clip's audio, the features of its frames)."""
    song = write_song(tmp_path / "root" / "Songs_2021" / "five", [0.5, 2.5, 4.5, 6.5, 8.5], seed=4)
    batches = []

    def counted(wavs, cfg, device="cpu"):
        batches.append(len(wavs))
        return compute_mel(wavs, cfg, device)
    monkeypatch.setattr(preprocess, "CLIP_CHUNK", 2)
    monkeypatch.setattr(preprocess, "compute_mel", counted)
    assert preprocess.main(["--data_root", str(tmp_path / "root"), "--out_dir", str(tmp_path / "out"),
                            "--clip_seconds", "2", "--quiet"]) == 0
    assert batches == [2, 2, 1]
    cfg = load_mel_config()
    wav, _ = load_audio(tmp_path / "root" / "Songs_2021" / "five" / "audio.wav", cfg.sampling_rate)
    for k, start in enumerate([0.5, 2.5, 4.5, 6.5, 8.5]):
        clip = load_clip(tmp_path / "out" / "clips" / f"five__{int(start * 1000):08d}.npz")
        a = int(round(start * cfg.sampling_rate))
        np.testing.assert_allclose(clip["mel"], compute_mel(wav[a:a + 2 * cfg.sampling_rate], cfg), atol=1e-5)
        feats = motion.motion_features(song["poses"][None, 60 * k:60 * k + 60])[0]
        np.testing.assert_allclose(clip["motion"], feats, atol=1e-4)


def test_long_input_is_computed_in_blocks_with_the_same_numbers(monkeypatch):
    """Whole-dance conditions and the reference mel of a long song are computed a block at a time (bounded
    memory): the same numbers as one call over everything, block edges and signal ends included."""
    rng = np.random.default_rng(5)
    poses = np.cumsum(rng.standard_normal((700, 78)) * 0.01, axis=0)
    m = motion.SongMotion(path=Path("x"), poses=poses, bad_frames=np.zeros(700, bool), missing_frames=0,
                          frames_repaired=0, nonfinite_values=0)
    whole = motion.motion_features(poses)
    monkeypatch.setattr(motion, "FEATURE_BLOCK", 64)
    for a, b in [(0, 700), (5, 695), (0, 3), (697, 700), (63, 130)]:
        np.testing.assert_array_equal(m.span_features(a, b, 30)[0], whole[a:b])
    # motion at 30 fps -> mel frames, 100 output frames a block: linear interpolation at the frame centres
    got = motion.resample_to_mel(whole, 30, 2000, 22050, 256, block=100)
    pos = np.clip((np.arange(2000) * 256 + 128) / 22050 * 30, 0, 699)
    i0 = np.floor(pos).astype(int)
    w = (pos - i0)[:, None]
    np.testing.assert_allclose(got, whole[i0] * (1 - w) + whole[np.minimum(i0 + 1, 699)] * w, atol=1e-6)
    cfg = load_mel_config()
    wav = (0.3 * np.sin(np.arange(60_000) * 0.05) + 0.1 * rng.standard_normal(60_000)).astype(np.float32)
    one = compute_mel(wav, cfg)
    assert one.shape == (80, 60_000 // 256)
    for chunk in (3, 37, 100):
        np.testing.assert_allclose(audio.compute_mel_long(wav, cfg, chunk_frames=chunk), one, atol=1e-5)
