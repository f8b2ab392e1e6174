"""Whole sequences (the field's long-clip protocol): a clip longer than the model's window goes through
sample.py / val.py in windows, each continuing the previous output (lm2a.longform.generate_clips), its
_gen.npz records the window layout; val.py scores it per sequence and per window (summary.json's
per_window); a clip at the model's length still takes the one-call path."""
import csv
import json

import numpy as np
import pytest
import torch

import sample
import val
from lm2a import evaluation as E
from lm2a import generate as G
from lm2a import longform as LF
from lm2a.clipio import save_npz_atomic
from lm2a.lyrics import DEFAULT_TEXT_ENCODER
from lm2a.melconfig import load_mel_config
from lm2a.metrics import mse
from lm2a.trained import load_model
from models.diffusion import SamplingConfig
from tests.fakeclips import write_fake_clips
from tests.test_sample import make_checkpoint

CFG = load_mel_config()
W = 516                  # the default 6 s window in mel frames
LONG = 3 * W             # a whole dance of three windows (17.96 s)
SAMPLING = ["--sampler", "ddim", "--steps", "2", "--seed", "3", "--precision", "fp32", "--quiet"]


def write_null_lyric_clip(path):
    """Rewrites a fake clip as AIST++'s whole dances are: no lyric tokens, lyric_text ""."""
    with np.load(path) as z:
        fields = dict(z)
    fields.update(lyrics=np.zeros((0, 384), np.float32), lyrics_pooled=np.zeros(384, np.float32),
                  lyric_text=np.array(""), end_s=np.float64(fields["start_s"] + LONG * 256 / 22050))
    save_npz_atomic(path, **fields)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("whole")
    train = write_fake_clips(root / "train", n=2, mel_frames=W, seed=1, text_encoder=DEFAULT_TEXT_ENCODER)
    ckpt = make_checkpoint(root / "ckpt" / "step_00000003.pt", root / "train", step=3)
    short = write_fake_clips(root / "test", n=2, mel_frames=W, seed=5, text_encoder=DEFAULT_TEXT_ENCODER)
    long = write_fake_clips(root / "test", n=1, mel_frames=LONG, seed=6, text_encoder=DEFAULT_TEXT_ENCODER)[0]
    write_null_lyric_clip(long)
    diffusion, info = load_model(ckpt, "cpu")
    return dict(root=root, ckpt=ckpt, dir=root / "test", short=short, long=long, train=train,
                diffusion=diffusion, info=info)


def test_the_window_and_when_a_clip_needs_it():
    assert LF.window_frames(CFG, LF.LongformConfig()) == W
    assert [LF.needs_windows(n, W) for n in (64, W, W + 1, W + LF.WINDOW_SLACK_FRAMES, W + 5, LONG)] == \
        [False, False, False, False, True, True]
    assert E.window_spans(LONG, W) == [(0, W), (W, 2 * W), (2 * W, LONG)]
    assert E.window_spans(LONG + W // 2, W)[-1] == (LONG, LONG + W // 2)   # half a window is kept
    assert E.window_spans(LONG + W // 2 - 1, W) == E.window_spans(LONG, W)  # less is dropped
    assert E.window_spans(64, W) == []


def test_sample_py_generates_a_long_clip_in_windows(setup, capsys):
    out = setup["root"] / "sample"
    assert sample.main(["--ckpt", str(setup["ckpt"]), "--npz_dir", str(setup["dir"]), "--out_dir", str(out),
                        "--batch_size", "2"] + SAMPLING) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("sample.py: read 3 clips, wrote 3, skipped 0; 1 clip(s) longer than the 516-frame "
                           "window generated in 4 windows (overlap 1 s); ddim 2 steps")
    name = setup["long"].stem
    plan = LF.plan_windows(LONG, W, 86, 0)
    assert plan["starts"] == [0, 344, 688, 1032]   # 4 windows: overlaps of 172 >= the asked 86 frames
    with np.load(out / f"{name}_gen.npz") as g:
        assert g["mel"].shape == (80, LONG) and np.isfinite(g["mel"]).all()
        assert g["window_starts"].tolist() == plan["starts"] and int(g["window_frames"]) == W
        assert g["held_frames"].tolist() == plan["held"] and g["join_frames"].tolist() == plan["joins"]
        assert g["window_lyric_texts"].tolist() == ["", "", "", ""]             # the null lyric
        assert g["window_seeds"].tolist() == [LF.window_seed(3, name, k) for k in range(4)]
        assert (float(g["window"]), float(g["overlap"]), bool(g["continuation"])) == (6.0, 1.0, True)
        assert str(g["lyric_text"]) == "" and str(g["sampler"]) == "ddim" and int(g["ckpt_step"]) == 3
        windowed = g["mel"]
    assert (out / f"{name}.png").stat().st_size > 1000

    # the whole-dance code on the clip's own motion (resampled as lm2a.data does) and its null lyric
    items, _ = G.load_clips([setup["long"]], setup["info"])
    settings = SamplingConfig(sampler="ddim", steps=2, seed=3, precision="fp32")
    dance = LF.dance_from_item(items[0], setup["info"], LF.LongformConfig())
    assert dance["motion_mel"].shape == (LONG, 234) and dance["window_lyrics"][0].shape == (0, 384)
    again = LF.generate_dances(setup["diffusion"], setup["info"], [dance], settings, progress=False)[0]
    np.testing.assert_array_equal(again["mel"], windowed)
    # continuation: each window's held frames are the output so far
    for k in range(1, 4):
        s, held = plan["starts"][k], plan["held"][k]
        np.testing.assert_array_equal(again["windows"][k][:, :held], windowed[:, s:s + held])

    # a clip of the model's length: one network call, as before, no window layout
    old = G.generate_for_items(setup["diffusion"], setup["info"], G.load_clips(setup["short"], setup["info"])[0],
                               settings, progress=False)
    for r in old:
        with np.load(out / f"{r['name']}_gen.npz") as g:
            assert "window_starts" not in g.files and g["mel"].shape == (80, W)
            np.testing.assert_array_equal(g["mel"], r["mel"])


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_val_py_scores_per_sequence_and_per_window(setup, capsys):
    out = setup["root"] / "val"
    assert val.main(["--ckpt", str(setup["ckpt"]), "--npz_dir", str(setup["dir"]), "--out_dir", str(out),
                     "--other_songs_dir", "", "--gl_iters", "2", "--report_clips", "1", "--attention_clips", "0"]
                    + SAMPLING) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "; per window (5.99 s, 5 windows of 3 clips, 1 longer than a window): MSE model " in line
    assert "LORIS F1 (0.2 s) model " in line
    name = setup["long"].stem
    summary = json.loads((out / "summary.json").read_text())
    # per sequence: one row of each kind per clip, the long clip scored whole
    assert summary["counts"]["rows"] == {k: 3 for k in E.ROW_KINDS}
    per_clip = read_rows(out / "per_clip.csv")
    assert {r["name"] for r in per_clip if r["row"] == "model"} == {p.stem for p in setup["short"]} | {name}
    with np.load(out / "generated" / f"{name}_gen.npz") as g, np.load(setup["long"]) as c:
        assert g["mel"].shape == (80, LONG) and len(g["window_starts"]) == 4
        gen, real = g["mel"], c["mel"]
    row = next(r for r in per_clip if r["row"] == "model" and r["name"] == name)
    assert float(row["mse"]) == pytest.approx(mse(real, gen), rel=1e-4)
    with np.load(out / "generated_uncond" / f"{name}_gen.npz") as g:
        assert len(g["window_starts"]) == 4 and float(g["guidance"]) == 0.0
    for p in setup["short"]:
        with np.load(out / "generated" / f"{p.stem}_gen.npz") as g:
            assert "window_starts" not in g.files

    # per window: 3 windows of the long clip + 1 of each clip of the model's length
    pw = summary["per_window"]
    assert (pw["windows"], pw["sequences"], pw["clips"], pw["window_frames"]) == (5, 1, 3, W)
    assert pw["window_s"] == pytest.approx(W * 256 / 22050)
    assert pw["counts"] == {k: 5 for k in E.ROW_KINDS}
    rows = read_rows(out / "per_window.csv")
    assert sorted(r["name"] for r in rows if r["row"] == "model") == sorted(
        [f"{name}#w{k}" for k in range(3)] + [p.stem + "#w0" for p in setup["short"]])
    second = next(r for r in rows if r["row"] == "model" and r["name"] == f"{name}#w1")
    assert float(second["mse"]) == pytest.approx(mse(real[:, W:2 * W], gen[:, W:2 * W]), rel=1e-4)
    assert float(second["start_s"]) == pytest.approx(1.0 + W * 256 / 22050)
    assert pw["rows"]["model"]["metrics"]["mse"]["mean"] == pytest.approx(
        np.mean([float(r["mse"]) for r in rows if r["row"] == "model"]), rel=1e-4)
    # a clip of the model's length is its own single window: the same scores as per sequence
    short = setup["short"][0].stem
    assert next(r for r in rows if r["row"] == "model" and r["name"] == short + "#w0")["mse"] == \
        next(r for r in per_clip if r["row"] == "model" and r["name"] == short)["mse"]
    assert set(pw["rhythm"]) == set(E.ROW_KINDS) and pw["rhythm"]["model"]["bas_aist"]["count"] == 5
    assert summary["rhythm"]["model"]["bas_aist"]["count"] == 3
    assert pw["field_table"].startswith("Per window: each of 3 sequences cut into consecutive")
    assert "on 5 clips of 5.99 s" in pw["field_table"] and "| LM2A |" in pw["field_table"]
    assert (out / "field_table_per_window.md").read_text() == pw["field_table"]
    assert summary["settings"]["longform"]["window"] == 6.0
    assert "<h2>Per window</h2>" in (out / "report.html").read_text()

    # the files read back (--gen_dir): the same per-window model scores
    again = setup["root"] / "val_again"
    assert val.main(["--npz_dir", str(setup["dir"]), "--gen_dir", str(out / "generated"), "--out_dir", str(again),
                     "--no_references", "--no_audio_metrics", "--report_clips", "0", "--quiet"]) == 0
    pw2 = json.loads((again / "summary.json").read_text())["per_window"]
    assert pw2["counts"] == {"model": 5} and pw2["rhythm"] is None
    assert pw2["rows"]["model"]["metrics"]["mse"]["mean"] == pytest.approx(
        pw["rows"]["model"]["metrics"]["mse"]["mean"], rel=1e-6)
    assert not (again / "field_table_per_window.md").exists()


def test_no_per_window_when_every_clip_fits_the_window(setup):
    out = setup["root"] / "val_short"
    assert val.main(["--ckpt", str(setup["ckpt"]), "--npz_dir", str(setup["root"] / "train"), "--out_dir", str(out),
                     "--no_audio_metrics", "--no_references", "--report_clips", "0", "--attention_clips", "0"]
                    + SAMPLING) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["per_window"] is None and not (out / "per_window.csv").exists()
    for p in setup["train"]:
        with np.load(out / "generated" / f"{p.stem}_gen.npz") as g:
            assert "window_starts" not in g.files
