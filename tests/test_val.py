"""val.py (stage 5): rows per clip and kind, summary keys, plots; generated files equal to the real
mels score perfectly while the chance row does not; the uncond row is the guidance-0 generation.
These runs skip the vocoder (--no_audio_metrics); tests/test_report.py runs it and checks
report.html and the waveform metrics."""
import csv
import json
import shutil

import numpy as np
import pytest
import torch

import val
from lm2a.clipio import song_of_clip
from lm2a.device import native_bf16
from lm2a.lyrics import DEFAULT_TEXT_ENCODER
from lm2a.melconfig import load_mel_config
from lm2a.metrics import frechet_distance, mse
from lm2a.musicality import FIGURES as MUSIC_FIGURES, music_figures
from lm2a.trained import load_model
from tests.fakeclips import write_fake_clips
from tests.test_sample import generate_for_files, make_checkpoint

PLOTS = ("mel_pairs.png", "metrics_bars.png", "hist_metrics.png")
FAST = ["--no_audio_metrics", "--report_clips", "1", "--attention_clips", "0"]
KINDS = ("model", "uncond", "chance", "shuffled", "real")


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("val")
    paths = write_fake_clips(root / "test", n=4, mel_frames=64, n_songs=2, seed=7,
                             text_encoder=DEFAULT_TEXT_ENCODER)
    ckpt = make_checkpoint(root / "ckpt" / "step_00000009.pt", root / "test", step=9)
    return {"root": root, "dir": root / "test", "paths": paths, "ckpt": ckpt}


def test_generates_and_writes_rows_summary_and_plots(clips, capsys):
    out = clips["root"] / "val"
    rc = val.main(["--ckpt", str(clips["ckpt"]), "--npz_dir", str(clips["dir"]), "--out_dir", str(out),
                   "--sampler", "ddim", "--steps", "2", "--batch_size", "3", "--seed", "4", "--quiet"] + FAST)
    assert rc == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("val.py: evaluated 4 clips") and "beat alignment model" in line
    assert "music-likeness (harmonic share / partials / chroma) real " in line and ", uncond " in line
    assert line.endswith("; no field table: --no_audio_metrics (it needs the waveform metrics)")
    assert not (out / "field_table.md").exists()

    rows = read_rows(out / "per_clip.csv")
    assert len(rows) == 4 * 5
    names = sorted(p.stem for p in clips["paths"])
    for kind in KINDS:
        assert sorted(r["name"] for r in rows if r["row"] == kind) == names
    for r in rows:
        if r["row"] == "real":  # the ceiling row holds beat scores only
            assert r["mse"] == "" and 0 <= float(r["beat_align"]) <= 1
            continue
        assert np.isfinite(float(r["mse"])) and float(r["mse"]) > 0
        assert -1 <= float(r["ssim"]) <= 1 and 0 <= float(r["onset_f1"]) <= 1
        assert r["bas_aist"] == ""  # --no_audio_metrics
    songs = {p.stem: song_of_clip(p) for p in clips["paths"]}
    by_key = {(r["row"], r["name"]): r for r in rows}
    for r in rows:
        if r["row"] in ("chance", "shuffled"):  # 2 songs x 2 clips: every clip pairs with another song
            assert songs[r["paired_with"]] != songs[r["name"]]
        if r["row"] == "model":
            shuffled, real = by_key["shuffled", r["name"]], by_key["real", r["name"]]
            assert r["paired_with"] == shuffled["paired_with"] == by_key["chance", r["name"]]["paired_with"]
            assert r["beat_align_shuffled"] == shuffled["beat_align"] != ""
            assert r["beat_align_real"] == real["beat_align"] != ""

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= {"settings", "counts", "rows", "frechet", "beat_alignment", "seconds"}
    s = summary["settings"]
    assert (s["sampler"], s["steps"], s["eta"], s["guidance"], s["seed"]) == ("ddim", 2, 0.0, 2.0, 4)
    assert s["ckpt_step"] == 9 and s["ckpt_path"].endswith("step_00000009.pt") and s["chance_seed"] == 4
    assert s["uncond"]["guidance"] == 0.0 and s["uncond"]["seed"] == 4 and s["uncond"]["steps"] == 2
    assert summary["counts"]["clips_evaluated"] == 4 and summary["counts"]["rows"] == {k: 4 for k in KINDS}
    assert summary["rhythm"] is None and summary["audio"] is None and summary["report"] == "report.html"
    assert summary["field_table"] is None and summary["field_table_file"] is None
    assert "no field table" in summary["field_table_skipped"]
    for kind in ("model", "uncond", "chance"):
        m = summary["rows"][kind]["metrics"]
        for metric in ("mse", "ssim", "cosine", "mean_error", "std_error", "snr_db", "lsd_db",
                       "onset_f1", "beat_align"):
            assert set(m[metric]) >= {"mean", "std", "median"}
        vals = [float(r["mse"]) for r in rows if r["row"] == kind]
        assert m["mse"]["mean"] == pytest.approx(np.mean(vals), rel=1e-4)
    assert summary["frechet"]["model"] > 0 and summary["frechet"]["uncond"] > 0
    assert summary["frechet"]["real_split_half"] is not None and summary["frechet"]["chance"] is None
    assert set(summary["beat_alignment"]) == {"model", "uncond", "chance", "shuffled", "real"}
    assert summary["beat_alignment"]["shuffled"] == pytest.approx(
        summary["rows"]["shuffled"]["metrics"]["beat_align"]["mean"])
    for name in PLOTS:
        assert (out / name).stat().st_size > 1000
    check_music_figures(out, rows, summary, clips["paths"])

    # the model and uncond rows are sample.py's generations with the same seed and batches
    diffusion, model = load_model(clips["ckpt"], "cpu")
    ran = "bf16" if native_bf16("cpu") else "fp32"  # val.py's default precision "auto" on this CPU
    assert s["precision"] == s["uncond"]["precision"] == ran
    kw = dict(sampler="ddim", steps=2, eta=0.0, seed=4, batch_size=3, precision=ran)
    for folder, guidance in (("generated", 2.0), ("generated_uncond", 0.0)):
        results, _ = generate_for_files(diffusion, model, clips["paths"], guidance=guidance, **kw)
        for r in results:
            with np.load(out / folder / f"{r['name']}_gen.npz") as g:
                np.testing.assert_array_equal(g["mel"], r["mel"])
    first_clip = clips["paths"][0]
    with np.load(first_clip) as c, np.load(out / "generated_uncond" / f"{first_clip.stem}_gen.npz") as g:
        row = next(r for r in rows if r["row"] == "uncond" and r["name"] == first_clip.stem)
        assert float(row["mse"]) == pytest.approx(mse(c["mel"], g["mel"]), rel=1e-4)

    # reading those files back with --gen_dir gives the same rows: the uncond row takes the
    # recorded sampler and steps (not the default 50), and a clip's noise depends only on (seed, name)
    out2 = clips["root"] / "val_gen_dir"
    assert val.main(["--ckpt", str(clips["ckpt"]), "--npz_dir", str(clips["dir"]), "--gen_dir",
                     str(out / "generated"), "--out_dir", str(out2), "--batch_size", "4", "--seed", "4",
                     "--quiet"] + FAST) == 0  # --seed 4: the same chance pairs
    again = read_rows(out2 / "per_clip.csv")
    key = lambda r: (r["row"], r["name"])  # noqa: E731
    assert sorted(map(key, again)) == sorted(map(key, rows))
    first = {key(r): r for r in rows}
    for r in again:
        for metric in ("mse", "ssim", "onset_f1", "beat_align") if r["row"] != "real" else ("beat_align",):
            assert float(r[metric]) == pytest.approx(float(first[key(r)][metric]), rel=1e-3, abs=1e-6)


def check_music_figures(out, rows, summary, paths):
    """Each row's music-likeness figures are those of its own mel (generated, unconditional, the
    paired real clip, the real clip; none for shuffled), and summary.json's table holds their means
    beside the Fréchet distances."""
    cfg = load_mel_config()
    real = {p.stem: np.load(p)["mel"] for p in paths}
    mels = {"model": {n: np.load(out / "generated" / f"{n}_gen.npz")["mel"] for n in real},
            "uncond": {n: np.load(out / "generated_uncond" / f"{n}_gen.npz")["mel"] for n in real}}
    for r in rows:
        if r["row"] == "shuffled":
            assert all(r[f] == "" for f in MUSIC_FIGURES)
            continue
        mel = mels[r["row"]][r["name"]] if r["row"] in mels else real[r["paired_with"] or r["name"]]
        expected = music_figures(mel, cfg)
        for f in MUSIC_FIGURES:
            assert float(r[f]) == pytest.approx(expected[f], rel=1e-4, abs=1e-6), (r["row"], f)
    table = summary["music_likeness"]
    assert set(table) == {"real", "model", "uncond", "chance"}
    for kind in table:
        for f in MUSIC_FIGURES:
            kind_rows = [float(r[f]) for r in rows if r["row"] == kind]
            assert table[kind][f] == pytest.approx(np.mean(kind_rows), rel=1e-4)
    assert table["chance"]["harmonic_share"] == pytest.approx(table["real"]["harmonic_share"])
    assert table["model"]["frechet"] == summary["frechet"]["model"]
    assert table["real"]["frechet"] == summary["frechet"]["real_split_half"] and table["chance"]["frechet"] is None


def test_gen_dir_equal_to_real_scores_perfectly(clips, tmp_path, capsys):
    real = write_fake_clips(tmp_path / "test", n=6, mel_frames=516, n_songs=3, seed=2,
                            text_encoder=DEFAULT_TEXT_ENCODER)
    gen_dir = tmp_path / "gen"
    gen_dir.mkdir()
    for p in real[:-1]:  # the last clip has no generated file: skipped
        with np.load(p) as z:
            np.savez(gen_dir / f"{p.stem}_gen.npz", mel=z["mel"], mel_config=z["mel_config"],
                     sampler=np.str_("ddpm"), steps=np.int64(17), seed=np.int64(3))
    out = tmp_path / "val"
    rc = val.main(["--npz_dir", str(tmp_path / "test"), "--gen_dir", str(gen_dir), "--out_dir", str(out),
                   "--ckpt", str(tmp_path / "no_such_ckpt"), "--quiet"] + FAST)
    assert rc == 0
    err = capsys.readouterr().err
    assert "uncond row skipped" in err and "no generated file" in err

    rows = read_rows(out / "per_clip.csv")
    model = [r for r in rows if r["row"] == "model"]
    chance = [r for r in rows if r["row"] == "chance"]
    assert len(model) == len(chance) == 5 and not [r for r in rows if r["row"] == "uncond"]
    assert len([r for r in rows if r["row"] == "shuffled"]) == len([r for r in rows if r["row"] == "real"]) == 5
    for r in model:
        assert float(r["mse"]) == 0 and float(r["ssim"]) == pytest.approx(1.0)
        assert float(r["onset_f1"]) == 1 and float(r["lsd_db"]) == 0 and r["snr_db"] == "inf"
        assert r["beat_align"] == r["beat_align_real"]  # same audio, same motion
    summary = json.loads((out / "summary.json").read_text())
    rows_s = summary["rows"]
    assert rows_s["model"]["metrics"]["mse"]["mean"] == 0
    assert rows_s["chance"]["metrics"]["mse"]["mean"] > 0.1
    assert rows_s["chance"]["metrics"]["ssim"]["mean"] < 0.9
    assert rows_s["chance"]["metrics"]["onset_f1"]["mean"] < 1.0
    assert rows_s["model"]["metrics"]["snr_db"]["n_inf"] == 5
    assert summary["frechet"]["model"] == pytest.approx(0.0, abs=1e-6)
    music = summary["music_likeness"]
    assert set(music) == {"real", "model", "chance"}       # no uncond row without a checkpoint
    for f in MUSIC_FIGURES:  # the generated files are the real mels: the same figures
        assert music["model"][f] == pytest.approx(music["real"][f]) and 0 < music["real"][f] < 1
    assert summary["counts"] == {"clips_listed": 6, "clips_evaluated": 5, "clips_skipped": 1, "songs": 3,
                                 "rows": {"model": 5, "chance": 5, "shuffled": 5, "real": 5},
                                 "other_songs": {"dir": None, "clips": 0, "songs": 0}}  # no train folder beside
    s = summary["settings"]  # as the generated files record them; what they do not say is None
    assert (s["sampler"], s["steps"], s["seed"], s["guidance"], s["uncond"]) == ("ddpm", 17, 3, None, None)
    for name in PLOTS:
        assert (out / name).is_file()

    # --no_references: model rows only
    out2 = tmp_path / "val2"
    assert val.main(["--npz_dir", str(tmp_path / "test"), "--gen_dir", str(gen_dir), "--out_dir", str(out2),
                     "--no_references", "--max_samples", "3", "--quiet"] + FAST) == 0
    rows = read_rows(out2 / "per_clip.csv")
    assert [r["row"] for r in rows] == ["model"] * 3 and rows[0]["beat_align_shuffled"] == ""
    music = json.loads((out2 / "summary.json").read_text())["music_likeness"]
    assert set(music) == {"real", "model"} and music["real"]["frechet"] is not None  # the real row stays


def test_bad_inputs_fail_with_a_message(tmp_path, capsys):
    assert val.main(["--npz_dir", str(tmp_path / "missing"), "--out_dir", str(tmp_path / "v"), "--quiet"]) == 2
    assert "missing" in capsys.readouterr().err


def test_unknown_attention_layer_fails_before_the_vocoder(clips, capsys):
    """lm2a.report.attention_block checks --attention_layer as soon as the model is loaded: a typo
    costs one generation, not a vocoding run."""
    out = clips["root"] / "val_bad_layer"
    rc = val.main(["--ckpt", str(clips["ckpt"]), "--npz_dir", str(clips["dir"]), "--out_dir", str(out),
                   "--sampler", "ddim", "--steps", "1", "--max_samples", "1", "--attention_layer", "up.9.attn",
                   "--no_references", "--quiet"])
    assert rc == 2
    assert "up.9.attn" in capsys.readouterr().err and not (out / "audio").exists()


def test_real_clips_of_other_songs_are_the_frechet_reference_on_held_out_songs(clips, capsys):
    """--other_songs_dir auto takes the train folder beside --npz_dir, leaves out its clips of the
    evaluated songs, and puts the Fréchet distance of the rest to the real set in summary.json, the
    summary line and the report; "" turns it off."""
    split = clips["root"] / "split"
    shutil.copytree(clips["dir"], split / "test")
    other = write_fake_clips(split / "train", n=6, mel_frames=64, n_songs=3, seed=11, text_encoder=DEFAULT_TEXT_ENCODER)
    shutil.copy(clips["paths"][0], split / "train")  # a clip of an evaluated song: left out
    out = clips["root"] / "val_other"
    args = ["--ckpt", str(clips["ckpt"]), "--npz_dir", str(split / "test"), "--sampler", "ddim", "--steps", "2",
            "--quiet", "--no_references"] + FAST
    assert val.main(args + ["--out_dir", str(out)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads((out / "summary.json").read_text())
    real = [np.load(p)["mel"] for p in clips["paths"]]
    want = frechet_distance(real, [np.load(p)["mel"] for p in other])
    assert summary["frechet"]["real_other_songs"] == pytest.approx(want, rel=1e-9)
    assert want > 2 * summary["frechet"]["real_split_half"]  # other songs sound unlike these
    assert summary["counts"]["other_songs"] == {"dir": str((split / "train").resolve()), "clips": 6, "songs": 3}
    assert f"real clips of other songs {want:.2f}" in line
    assert f"{want:.2f} (real clips of other songs)" in (out / "report.html").read_text()

    assert val.main(args + ["--out_dir", str(out), "--other_songs_dir", ""]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frechet"]["real_other_songs"] is None and summary["counts"]["other_songs"]["clips"] == 0
    assert "other songs" not in capsys.readouterr().out
