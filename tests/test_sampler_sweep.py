"""sometest/sampler_sweep.py on a tiny checkpoint and fake clips: rows with mean ± std over seeds,
the reference row and the `within` column, the JSON written after every row so that a stopped sweep
resumes without recomputing, several sweeps merged into one table, and the plot."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lm2a import generate as G
from lm2a.lyrics import DEFAULT_TEXT_ENCODER
from tests.fakeclips import write_fake_clips
from tests.test_sample import make_checkpoint

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("sometest_sampler_sweep", REPO / "sometest" / "sampler_sweep.py")
sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sweep")
    write_fake_clips(root / "test", n=3, mel_frames=64, n_songs=2, seed=3, text_encoder=DEFAULT_TEXT_ENCODER)
    ckpt = make_checkpoint(root / "ckpt" / "step_00000005.pt", root / "test", step=5)
    return {"root": root, "clips": str(root / "test"), "ckpt": str(ckpt)}


def args(setup, out, steps="2,3", seeds="0,1", extra=()):
    return ["--ckpt", setup["ckpt"], "--npz_dir", setup["clips"], "--out", str(out), "--samplers", "ddim,unipc",
            "--steps", steps, "--seeds", seeds, "--reference", "ddpm:4", "--batch_size", "2", *extra]


GENERATE = G.generate_for_items


class Stopped(Exception):
    """Stands for Ctrl-C in the middle of a sweep."""


def counting(monkeypatch, fail_after=None):
    """Counts generate_for_items calls (one per setting and seed); raises after `fail_after`."""
    calls = []
    real = GENERATE

    def wrapped(*a, **k):
        if fail_after is not None and len(calls) >= fail_after:
            raise Stopped
        calls.append(a[3].sampler if len(a) > 3 else k["cfg"].sampler)
        return real(*a, **k)
    monkeypatch.setattr(sweep, "generate_for_items", wrapped)  # the name sampler_sweep.py calls
    return calls


def test_rows_reference_table_and_plot(setup, tmp_path, capsys):
    out = tmp_path / "sweep.json"
    assert sweep.main(args(setup, out, extra=["--plot", str(tmp_path / "sweep.png")])) == 0
    res = json.loads(out.read_text())
    assert res["complete"] is True and res["clips"] == 3 and res["seeds"] == [0, 1] and res["step"] == 5
    keys = [(r["sampler"], r["steps"], r["precision"]) for r in res["rows"]]
    assert keys == [("ddim", 2, "fp32"), ("ddim", 3, "fp32"), ("unipc", 2, "fp32"), ("unipc", 3, "fp32"),
                    ("ddpm", 4, "fp32")]
    for row in res["rows"]:
        assert len(row["per_seed"]) == 2 and row["s_per_clip"] > 0
        for k in sweep.FIGURES:
            values = [s[k] for s in row["per_seed"]]
            assert np.isfinite(values).all()
            assert row[k]["mean"] == pytest.approx(np.mean(values))
            assert row[k]["std"] == pytest.approx(np.std(values, ddof=1))
        assert row["mse"]["mean"] > 0 and 0 <= row["onset_f1"]["mean"] <= 1
    ref = res["rows"][-1]
    assert ref["within_reference_spread"] is True  # a row is within its own spread
    assert [r["within_reference_spread"] for r in res["rows"]] == [sweep.within(r, ref) for r in res["rows"]]
    # two seeds give different samples: the spread is real, not zero
    assert all(r["mse"]["std"] > 0 for r in res["rows"])

    printed = capsys.readouterr().out
    table = [ln for ln in printed.splitlines() if ln.startswith("|")]
    assert len(table) == 2 + 5 and table[0].endswith("within DDPM-4 spread |")
    assert table[-1].startswith("| ddpm | 4 | fp32 |") and table[-1].endswith("| yes |")
    import matplotlib.image
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(str(tmp_path / "sweep.png")).shape[:2] == (700, 1300)


def test_refuses_a_folder_without_usable_clips(setup, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no clip .*empty"):
        sweep.main(["--ckpt", setup["ckpt"], "--npz_dir", str(tmp_path / "empty"), "--out", str(tmp_path / "x.json")])


def test_within_uses_both_spreads():
    ref = {k: {"mean": 1.0, "std": 0.3} for k in sweep.FIGURES}
    row = {k: {"mean": 1.0 + 2 * 0.5 - 1e-9, "std": 0.4} for k in sweep.FIGURES}  # hypot(0.3, 0.4) = 0.5
    assert sweep.within(row, ref)
    row["frechet"]["mean"] = 1.0 - 1.0 - 1e-6  # one figure outside, below: not within
    assert not sweep.within(row, ref)


def test_stopped_sweep_resumes_from_its_json(setup, tmp_path, monkeypatch, capsys):
    out = tmp_path / "sweep.json"
    counting(monkeypatch, fail_after=5)  # stops during the third setting
    with pytest.raises(Stopped):
        sweep.main(args(setup, out))
    partial = json.loads(out.read_text())
    assert partial["complete"] is False and len(partial["rows"]) == 2
    first_rows = partial["rows"]

    calls = counting(monkeypatch)
    assert sweep.main(args(setup, out)) == 0
    assert len(calls) == 3 * 2  # unipc-2, unipc-3, ddpm-4: the two finished rows were reused
    res = json.loads(out.read_text())
    assert res["complete"] is True and len(res["rows"]) == 5
    assert [{k: v for k, v in r.items() if k != "within_reference_spread"} for r in res["rows"][:2]] == first_rows
    assert "ddim-2 fp32: reused from" in capsys.readouterr().out

    calls = counting(monkeypatch)  # other seeds: nothing in the file applies
    sweep.main(args(setup, out, steps="2", seeds="0,2"))
    assert len(calls) == 3 * 2
    calls = counting(monkeypatch)  # --force recomputes
    sweep.main(args(setup, out, steps="2", seeds="0,2", extra=["--force"]))
    assert len(calls) == 3 * 2


def test_tables_of_several_sweeps_merge(setup, tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    sweep.main(args(setup, a, steps="2", extra=["--reference", ""]))
    sweep.main(["--ckpt", setup["ckpt"], "--npz_dir", setup["clips"], "--out", str(b), "--samplers", "ddpm",
                "--steps", "4", "--seeds", "0,1", "--reference", "", "--batch_size", "3"])
    res_a = json.loads(a.read_text())
    assert res_a["reference"] is None and all(r["within_reference_spread"] is None for r in res_a["rows"])
    capsys.readouterr()
    assert sweep.main(["--table", str(a), str(b), "--reference", "ddpm:4", "--plot", str(tmp_path / "m.png")]) == 0
    table = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("|")]
    assert [ln.split(" | ")[0] for ln in table[2:]] == ["| ddim", "| unipc", "| ddpm"]
    assert table[-1].endswith("| yes |") and (tmp_path / "m.png").stat().st_size > 10_000
    # the merged reference row is b's, so ddim-2's verdict is the one within() gives against it
    ddim = res_a["rows"][0]
    ref = json.loads(b.read_text())["rows"][0]
    assert table[2].endswith(("| yes |" if sweep.within(ddim, ref) else "| no |"))
