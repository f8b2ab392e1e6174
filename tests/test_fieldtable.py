"""lm2a/fieldtable.py: the field's table from a summary built here out of hand-made onsets (lm2a.rhythm
scores them as val.py does): one row per reference row present, cells equal to the summary's means in
percent (BAS with 4 decimals), F1 = the F1 of the mean cover and hit, nan as a dash, the real row's
onset cells marked, and the protocol naming the clip length and the split read from split.json."""
import json
import math

import numpy as np
import pytest

from lm2a import fieldtable as FT
from lm2a.clipio import json_safe
from lm2a.rhythm import f1, rhythm_scores, summarize_rhythm

HOP, SR, FPS, MEL_FRAMES = 256, 22050, 30, 516


def sound(onsets, duration=6.0):
    """An audio_rhythm dict (lm2a.rhythm) with the same onsets for D2M-GAN's and LORIS's picking."""
    onsets = np.asarray(onsets, dtype=float)
    return dict(duration_s=duration, onsets_d2m=onsets, onsets_loris=onsets, music_beats_aist=np.zeros(0))


REAL = [sound([0.5, 1.2, 2.7, 4.1]), sound([0.3, 3.3, 5.5]), sound([1.1, 2.2, 3.3, 4.4, 5.5])]
GEN = [sound([0.55, 2.9, 4.6, 5.1]), sound([0.31, 1.5]), sound([1.05, 2.25, 3.9])]
BAS = {"model": [0.21, 0.25, 0.30], "chance": [0.18, 0.2, 0.19], "shuffled": [0.17, 0.22, 0.2],
       "real": [0.26, 0.27, 0.31]}


def rows_of(kind):
    """Per-clip rows as lm2a.evaluation.clip_rows pairs them (BAS given: no motion here)."""
    n = len(REAL)
    pairs = {"model": [(REAL[i], GEN[i]) for i in range(n)],
             "chance": [(REAL[i], REAL[(i + 1) % n]) for i in range(n)],
             "shuffled": [(REAL[(i + 1) % n], GEN[i]) for i in range(n)],
             "real": [(REAL[i], REAL[i]) for i in range(n)],
             "uncond": [(sound([]), GEN[0])]}[kind]   # one clip whose real audio has no onset
    rows = [rhythm_scores(real, gen) for real, gen in pairs]
    for row, bas in zip(rows, BAS.get(kind, [])):
        row["bas_aist"] = bas
    return rows


@pytest.fixture
def summary():
    return {"rhythm": {k: summarize_rhythm(rows_of(k)) for k in ("model", "uncond", "chance", "shuffled", "real")},
            "counts": {"clips_evaluated": 3, "songs": 2},
            "audio": {"vocoder": "griffin-lim", "gl_iters": 64, "gl_seed": 0, "sample_rate": SR}}


def clips(n=3):
    return [dict(mel=np.zeros((80, MEL_FRAMES), np.float32), hop_length=HOP, sr=SR, fps=FPS) for _ in range(n)]


def split_dir(root, split=None):
    """root/split/test, with split.json beside it when given."""
    test = root / "split" / "test"
    test.mkdir(parents=True)
    if split is not None:
        (root / "split" / "split.json").write_text(json.dumps(split))
    return test


def parse_table(text):
    """The Markdown table -> (header cells, {row label: cells})."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    return cells[0], {row[0]: row[1:] for row in cells[1:]}


def number(cell):
    return float(cell.rstrip(FT.BY_CONSTRUCTION))


def test_cells_are_the_summary_means_as_the_papers_print_them(summary, tmp_path):
    npz = split_dir(tmp_path, {"preset": "aistpp", "by": "sequence", "seed": 42,
                               "sets": {"test": {"clips": 10, "songs": ["mBR0", "mPO1"]}}})
    text = FT.field_table(summary, FT.protocol_from(npz, clips(), summary))
    head, rows = parse_table(text)
    assert head == ["Row"] + [h for _, _, h in FT.COLUMNS]
    assert head[1:8] == ["BCS", "BHS", "Cover", "CSD", "Hit", "HSD", "F1"] and head[-1] == "BAS"
    assert list(rows) == list(FT.ROWS.values())          # every reference row, in order
    rhythm = summary["rhythm"]
    for kind, label in FT.ROWS.items():
        for (key, statistic, header), got in zip(FT.COLUMNS, rows[label]):
            want = rhythm[kind][key][statistic]
            if math.isnan(want):
                assert got == FT.UNDEFINED, (kind, header)
                continue
            scale, digits = (1, 4) if key == "bas_aist" else (100, 1)
            assert number(got) == pytest.approx(scale * want, abs=0.5 * 10 ** -digits), (kind, header)
            assert len(got.rstrip(FT.BY_CONSTRUCTION).split(".")[1]) == digits
            assert got.endswith(FT.BY_CONSTRUCTION) == (kind == "real" and key != "bas_aist")
    model = dict(zip(head[1:], rows["LM2A"]))
    assert model["BAS"] == f"{np.mean(BAS['model']):.4f}"
    # F1 is LORIS's: of the mean cover and mean hit, not the mean of the clips' F1
    m = rhythm["model"]
    of_means = f1(m["cover_loris_1s"]["mean"], m["hit_loris_1s"]["mean"])
    assert number(model["F1"]) == pytest.approx(100 * of_means, abs=0.05)
    assert model["F1"] != f"{100 * m['f1_loris_1s']['mean']:.1f}"    # 64.2, the clips' mean F1 63.3
    real = dict(zip(head[1:], rows["real audio"]))
    assert real["BCS"] == real["Hit"] == "100.0" + FT.BY_CONSTRUCTION and real["CSD"] == "0.0" + FT.BY_CONSTRUCTION
    # uncond: one clip whose real audio has no onset: BCS/BHS undefined, no std of one clip, no BAS
    uncond = dict(zip(head[1:], rows["LM2A, unconditional (guidance 0)"]))
    assert [uncond[h] for h in ("BCS", "BHS", "CSD", "HSD", "BAS")] == [FT.UNDEFINED] * 5
    assert uncond["Cover"] == uncond["Hit"] == uncond["F1"] == "0.0"
    assert f"\n\n{FT.UNDEFINED} undefined" in text and f"\n\n{FT.BY_CONSTRUCTION} The real row" in text
    # summary.json holds None for nan: the same table
    assert FT.field_table(json.loads(json.dumps(json_safe(summary))), FT.protocol_from(npz, clips(), summary)) == text


def test_protocol_names_clip_length_split_vocoder_and_onsets(summary, tmp_path):
    npz = split_dir(tmp_path, {"preset": "aistpp", "by": "sequence", "seed": 42,
                               "sets": {"test": {"clips": 10, "songs": ["mBR0", "mPO1"]}}})
    protocol = FT.protocol_from(npz, clips(), summary)
    assert protocol["clip_seconds"] == [MEL_FRAMES * HOP / SR] * 2 and protocol["split"]["preset"] == "aistpp"
    text = FT.field_table(summary, protocol)
    top = text.split("\n| ")[0]                               # the lines above the table
    assert "3 clips of 2 songs from the `test` folder, 5.99 s each (516 mel frames, hop 256 at 22050 Hz)" in top
    assert ("Split: AIST++ music-held-out test set, no test music in training (split.json: preset aistpp, "
            "by sequence, seed 42, its `test` set holds 10 clips of 2 songs)") in top
    assert "Griffin-Lim (64 iterations, seed 0)" in top
    assert "at 22050 Hz, hop 512" in top and "pre_max=1, post_max=1" in top and "pre_max=3, post_max=3" in top
    assert "0.2 s bins" in top and "nothing from another protocol shares a column" in top
    assert json.loads(json.dumps(protocol)) == protocol        # JSON-able: summary.json keeps it

    other = tmp_path / "other"
    random_split = {"preset": "aistpp-random", "by": "sequence", "seed": 3, "sets": {},
                    "leaks": {"songs_in_several_sets": 3}}  # newsplit_npz.py counts them
    text = FT.field_table(summary, FT.protocol_from(split_dir(other, random_split), clips(1), summary))
    assert "AIST++ random sequences, music ids leak between train and test" in text
    assert "3 songs in several sets" in text and "seed 3" in text
    text = FT.field_table(summary, FT.protocol_from(split_dir(tmp_path / "none"), clips(), summary))
    assert "Split: unknown split (no split.json above the `test` folder)" in text


def test_rows_present_only_and_no_table_without_rhythm(summary, tmp_path):
    """A model row alone (val.py --no_references); a fourth clip whose real audio has no onset leaves
    BCS/BHS over 3 of 4 clips, and the note says so."""
    npz = split_dir(tmp_path)
    silent = dict(rhythm_scores(sound([]), GEN[0]), bas_aist=0.2)
    only = {"rhythm": {"model": summarize_rhythm(rows_of("model") + [silent])}, "counts": summary["counts"],
            "audio": summary["audio"]}
    text = FT.field_table(only, FT.protocol_from(npz, clips(), only))
    head, rows = parse_table(text)
    assert list(rows) == ["LM2A"] and FT.UNDEFINED not in "".join(rows["LM2A"])
    assert number(dict(zip(head[1:], rows["LM2A"]))["BCS"]) == pytest.approx(
        100 * summary["rhythm"]["model"]["bcs_d2m_1s"]["mean"], abs=0.05)   # the silent clip left out
    assert "LM2A BCS over 3 of 4 clips, LM2A BHS over 3 of 4 clips." in text
    assert FT.BY_CONSTRUCTION not in text and f"\n{FT.UNDEFINED} " not in text
    with pytest.raises(ValueError, match="no field table"):
        FT.field_table({"rhythm": None}, FT.protocol_from(npz, clips(), only))
