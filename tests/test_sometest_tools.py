"""sometest/plot_losses.py, inspect_npz.py, runs_table.py and band_levels.py on small files written
here."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset import MelDataset
from lm2a import device as D
from lm2a.data import collate_fn
from lm2a.generate import load_clips
from lm2a.lyrics import DEFAULT_TEXT_ENCODER
from lm2a.melconfig import load_mel_config
from lm2a.training import train_step
from models.diffusion import GaussianDiffusion
from models.unet1d_ultimate import UNet1D_ultimate
from tests.fakeclips import write_fake_clips
from tests.test_sample import TINY as SAMPLE_TINY
from tests.test_sample import make_checkpoint as make_sample_checkpoint

REPO = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"sometest_{name}", REPO / "sometest" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


plot_losses = load_script("plot_losses")
inspect_npz = load_script("inspect_npz")


def png_shape(path):
    import matplotlib.image
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(str(path)).shape


def write_log(path, n_steps=60, val_every=10, extra_columns=()):
    """train.py's train_log.csv; validation every val_every steps, the conditions-dropped loss 0.2
    above the conditional one; extra_columns (e.g. val_loss_motion_only) hold val_loss + 0.1."""
    rows = [",".join(["epoch", "step", "train_loss", "val_loss", "val_loss_uncond", "lr", "seconds",
                      *extra_columns])]
    for s in range(1, n_steps + 1):
        train = 1.0 / s ** 0.5 + 0.05 * ((s * 7919) % 13) / 13
        is_val = s % val_every == 0
        val, uncond = (f"{1.1 / s ** 0.5:.6f}", f"{1.1 / s ** 0.5 + 0.2:.6f}") if is_val else ("", "")
        extra = [f"{1.1 / s ** 0.5 + 0.1:.6f}" if is_val else "" for _ in extra_columns]
        rows.append(",".join([str((s - 1) // 20), str(s), f"{train:.6f}", val, uncond,
                              f"{1e-3 * min(1.0, s / 10):.6g}", f"{s * 0.5:.1f}", *extra]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


def test_ema_is_debiased_and_skips_nan():
    out = plot_losses.ema([2.0, np.nan, 4.0], 0.5)
    assert out[0] == pytest.approx(2.0)  # debiased: first value is the value itself
    assert np.isnan(out[1])
    assert out[2] == pytest.approx((0.25 * 2.0 + 0.5 * 4.0) / 0.75)
    assert np.allclose(plot_losses.ema([1.0, 3.0], 0.0), [1.0, 3.0])


def test_plot_losses_from_run_dir_and_csv(tmp_path, capsys):
    csv_path = write_log(tmp_path / "run" / "train_log.csv")
    log = plot_losses.read_log(csv_path)
    assert log["step"].shape == (60,)
    assert np.isnan(log["val_loss"]).sum() == 54 and log["val_loss"][9] == pytest.approx(1.1 / 10 ** 0.5, abs=1e-6)

    assert plot_losses.main([str(tmp_path / "run")]) == 0
    h, w, _ = png_shape(tmp_path / "run" / "loss.png")
    assert w > 800 and h > 400
    assert plot_losses.main([str(csv_path), "--out", str(tmp_path / "x.png"), "--smooth", "0.5"]) == 0
    assert (tmp_path / "x.png").stat().st_size > 10_000
    assert plot_losses.main([str(tmp_path / "nothing_here")]) == 1
    assert "no such file" in capsys.readouterr().err


def line_labels(ax):
    return [ln.get_label() for ln in ax.get_lines() if not ln.get_label().startswith("_")]


def test_plot_losses_draws_uncond_extra_columns_and_conditioning_gap(tmp_path):
    import matplotlib.pyplot as plt
    csv_path = write_log(tmp_path / "train_log.csv",
                         extra_columns=("val_loss_motion_only", "val_loss_new_probe"))
    fig = plot_losses.loss_figure(plot_losses.read_log(csv_path), "run")
    loss_ax, gap_ax = fig.axes[0], fig.axes[1]
    labels = line_labels(loss_ax)
    assert [lab.split(" (EMA")[0] for lab in labels] == [
        "train", "validation", "validation, conditions dropped", "validation, motion only",
        "validation, new probe"]
    uncond = next(ln for ln in loss_ax.get_lines() if ln.get_label().startswith("validation, conditions"))
    np.testing.assert_allclose(uncond.get_xdata(), np.arange(10, 61, 10))
    assert "last 0.342" in uncond.get_label()  # 1.1 / sqrt(60) + 0.2
    gap_line = next(ln for ln in gap_ax.get_lines() if ln.get_label().startswith(plot_losses.GAP_LABEL))
    assert plot_losses.GAP_LABEL == "conditioning gap (positive = conditions help)"
    raw_gap = [ln for ln in gap_ax.get_lines() if ln.get_color() == gap_line.get_color()][0]
    np.testing.assert_allclose(raw_gap.get_ydata(), 0.2, atol=2e-6)
    assert any(np.all(np.asarray(ln.get_ydata()) == 0.0) for ln in gap_ax.get_lines())  # zero line
    plt.close(fig)
    out = plot_losses.plot_losses(csv_path, tmp_path / "loss.png")
    h, w, _ = png_shape(out)
    assert w > 800 and h > 600  # two panels


def test_plot_losses_without_validation_has_no_gap_panel(tmp_path):
    import matplotlib.pyplot as plt
    path = tmp_path / "train_log.csv"
    path.write_text("epoch,step,train_loss,val_loss,lr,seconds\n" +
                    "".join(f"0,{s},{1 / s:.5f},,0.001,{s}\n" for s in range(1, 30)))
    fig = plot_losses.loss_figure(plot_losses.read_log(path))
    assert len([ax for ax in fig.axes if ax.get_ylabel() != "learning rate"]) == 1
    assert [lab.split(" (EMA")[0] for lab in line_labels(fig.axes[0])] == ["train"]
    plt.close(fig)


def clip_arrays(frames=120, motion_frames=60):
    rng = np.random.default_rng(0)
    t = np.arange(motion_frames) / 30.0
    pose = 0.3 * np.sin(2 * np.pi * 1.5 * t[:, None] + np.arange(78)[None] * 0.1)
    vel = np.gradient(pose, 1 / 30.0, axis=0)
    acc = np.gradient(vel, 1 / 30.0, axis=0)
    cfg = {"n_fft": 1024, "num_mels": 80, "sampling_rate": 22050, "hop_size": 256, "win_size": 1024,
           "fmin": 0, "fmax": None, "fmax_resolved": 11025.0, "name": "bigvgan_v2_22khz_80band_256x"}
    return dict(mel=(rng.normal(size=(80, frames)) - 5).astype(np.float32),
                motion=np.concatenate([pose, vel, acc], axis=1).astype(np.float32),
                lyrics=rng.normal(size=(4, 384)).astype(np.float32), lyric_text=np.array("hello world"),
                song=np.array("demo_song"), start_s=np.float64(6.0), sr=np.int64(22050),
                hop_length=np.int64(256), fps=np.int64(30), mel_config=np.array(json.dumps(cfg)),
                schema_version=np.int64(1))


def test_inspect_clip_npz_prints_and_plots(tmp_path, capsys):
    np.savez(tmp_path / "demo_song__00006000.npz", **clip_arrays())
    assert inspect_npz.main([str(tmp_path / "demo_song__00006000.npz"), "--out_dir", str(tmp_path / "png")]) == 0
    out = capsys.readouterr().out
    assert "(80, 120)" in out and "(60, 234)" in out and "(4, 384)" in out
    assert "'hello world'" in out and '"fmax_resolved": 11025.0' in out  # string as text, JSON pretty
    mel_line = next(ln for ln in out.splitlines() if ln.strip().startswith("mel "))
    assert "min" in mel_line and "mean" in mel_line and "max" in mel_line and "std" in mel_line
    assert "= 22050" in out
    assert png_shape(tmp_path / "png" / "demo_song__00006000_mel.png")[1] > 800
    assert png_shape(tmp_path / "png" / "demo_song__00006000_motion.png")[0] > 800

    joints, root = inspect_npz.joint_speeds(clip_arrays()["motion"])
    assert joints.shape == (60, 24) and root.shape == (60,) and (joints >= 0).all()


def test_inspect_gen_npz_has_mel_png_only(tmp_path, capsys):
    arrays = clip_arrays(frames=50)
    np.savez(tmp_path / "x_gen.npz", mel=arrays["mel"], mel_config=arrays["mel_config"],
             sampler=np.array("ddim"), steps=np.int64(50))
    written = inspect_npz.inspect_npz(tmp_path / "x_gen.npz", tmp_path / "png")
    assert [p.name for p in written] == ["x_gen_mel.png"]
    out = capsys.readouterr().out
    assert "(80, 50)" in out and "'ddim'" in out and "= 50" in out


def test_runs_table_rows_from_train_logs(tmp_path, capsys):
    runs_table = load_script("runs_table")
    run = tmp_path / "runA"
    run.mkdir()
    (run / "train_log.csv").write_text(
        "epoch,step,train_loss,val_loss,val_loss_uncond,val_loss_motion_only,val_loss_lyrics_only,cond_gap,"
        "sample_mse,sample_uncond_mse,sample_beat_align,sample_beat_align_shuffled,sample_out_of_range,"
        "sample_band_level_err,sample_band_level_err_train,sample_harmonic_share,sample_partials,"
        "sample_chroma_concentration,sample_real_harmonic_share,sample_real_partials,sample_real_chroma_concentration\n"
        "0,0,,1.0,1.0,1.0,1.0,0.0,,,,,,,,,,,,,\n"
        "1,250,0.9,0.90,0.912,0.905,0.911,0.012,5.0,4.0,0.95,0.90,0.002,3.1,2.9,0.3,0.2,0.01,0.77,0.5,0.08\n"
        "2,400,0.8,,,,,,,,,,,,,,,,,,\n"
        "3,500,0.8,0.80,0.797,0.79,0.81,-0.003,4.5,4.2,0.97,0.93,0.0125,2.5,2.9,0.444,0.31,0.025,0.77,0.5,0.08\n")
    old = tmp_path / "old"  # a log from before the sample columns existed
    old.mkdir()
    (old / "train_log.csv").write_text("epoch,step,train_loss,val_loss,val_loss_uncond\n0,0,,1.0,1.0\n1,10,0.5,,\n")
    assert runs_table.main([str(run), str(old), "--names", "A", "old"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[1].startswith("|---|")
    assert lines[2] == ("| A | 500 | +12 -3 | 0.8000 | 0.7970 | 0.7900 | 0.8100 | 4.50 / 4.20 | 0.970 / 0.930 "
                        "| 1.25 % | 2.50 (2.90) | 0.44 / 0.31 / 0.03 (0.77 / 0.50 / 0.08) |")
    assert lines[3].startswith("| old | 10 |  | 1.0000 | 1.0000 |  |  |") and lines[3].endswith("|  |")
    with pytest.raises(SystemExit, match="train_log.csv not found"):
        runs_table.main([str(tmp_path / "missing")])


def test_band_levels_errors_per_band():
    band_levels = load_script("band_levels")
    real = [np.zeros((80, 10)), np.full((80, 30), 2.0)]       # band means 1.5 (frames weighted)
    assert band_levels.band_mean(real).tolist() == [1.5] * 80
    level = np.full(80, 1.5)
    level[78] = -1.5   # 3 log units off in one band
    level[:10] = 2.25  # 0.75 off in ten bands
    e = band_levels.band_errors(band_levels.band_mean(real), level)
    assert e == {"max": 3.0, "median": 0.0, "argmax": 78, "within_1": 79, "bands": 80}


def test_bench_ratios_pick_sample_py_defaults_as_resolved_here(monkeypatch):
    bench = load_script("bench")
    rows = [{"sampler": s, "batch": b, "amp": a, "step_s": 1.0, "s_per_clip": t}
            for b in (1, 8) for s, a, t in (("DDPM-1000", "fp32", 600.0), ("DPM++-20", "fp32", 12.0),
                                            ("DPM++-20", "bf16", 8.0), ("UNIPC-20", "bf16", 8.0))]
    for flags, amp in ((frozenset({"avx512_bf16"}), "bf16"), (frozenset({"avx2"}), "fp32")):
        monkeypatch.setattr(D, "cpu_flags", lambda flags=flags: flags)
        default = bench.default_sampling(torch.device("cpu"))
        assert default == {"sampler": "DPM++-20", "amp": amp, "precision_setting": "auto"}
        r = bench.ratios({"sampling": rows, "sampling_default": default})
        want = 600.0 / (8.0 if amp == "bf16" else 12.0)
        assert r["ddpm1000_fp32_over_default_b1"] == r["ddpm1000_fp32_over_default_b8"] == pytest.approx(want)
        assert r["ddpm1000_fp32_over_unipc-20_bf16_b8"] == pytest.approx(75.0)
        assert f"DPM++-20 {amp} (precision 'auto')" in bench.table({"sampling": rows, "sampling_default": default})


def test_bench_training_rows_against_the_step_before_issue_19(tmp_path, monkeypatch, capsys):
    """The training section times the baseline (fp32, SDPA, Adan's loop), the fused Adan and bf16 in
    one interleaved run, marks the variant train.py takes by default and puts every row over the baseline."""
    bench = load_script("bench")
    monkeypatch.setattr(D, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.setattr(bench, "DEMO_UNET", dict(base_dim=8, dim_mults=(1, 2), cond_dim=8, time_emb_dim=8,
                                                 num_heads=2, num_res_blocks=1, num_mid_blocks=1))
    monkeypatch.setattr(bench, "T_MEL", 24)
    monkeypatch.setattr(bench, "TRAIN_BATCHES", (2,))
    kernels = []
    monkeypatch.setattr(bench, "train_step", lambda parts, batch, step: (
        kernels.append(parts.optimizer.param_groups[0]["fused"]), train_step(parts, batch, step))[1])
    out_json = tmp_path / "bench.json"
    assert bench.main(["--quick", "--sections", "train", "--train_size", "demo", "--mha", "--device", "cpu",
                       "--threads", "1", "--json", str(out_json), "--work_dir", str(tmp_path / "w")]) == 0
    res = json.loads(out_json.read_text())
    rows = {(r["amp"], r["attn"], r["adan"]): r for r in res["training"]}
    assert set(rows) == {("fp32", "sdpa", "loop"), ("fp32", "sdpa", "fused"), ("bf16", "sdpa", "loop"),
                         ("bf16", "sdpa", "fused"), ("fp32", "mha", "loop")}
    # base_dim 8 is under AUTO_BF16_MIN_WIDTH: train.py's default here is fp32 with the fused Adan
    assert [k for k, r in rows.items() if r["default"]] == [("fp32", "sdpa", "fused")]
    assert kernels.count(True) == kernels.count(False) * 2 // 3 > 0  # 2 fused variants, 3 loop ones
    base = rows["fp32", "sdpa", "loop"]["step_s"]
    assert res["ratios"]["train_baseline_over_default_b2"] == pytest.approx(base / rows["fp32", "sdpa", "fused"]["step_s"])
    assert res["ratios"]["train_baseline_over_bf16_sdpa_loop_b2"] == pytest.approx(
        base / rows["bf16", "sdpa", "loop"]["step_s"])
    assert res["ratios"]["train_baseline_over_mha_b2"] == pytest.approx(base / rows["fp32", "mha", "loop"]["step_s"])
    assert all(len(r["times"]) == 2 and r["step_s"] > 0 and r["params"] > 0 for r in rows.values())
    assert "| sdpa (train.py's default) | 2 | fp32 | fused |" in capsys.readouterr().out


def test_bench_adan_section_times_the_three_kernels(monkeypatch):
    bench = load_script("bench")
    monkeypatch.setattr(bench, "DEMO_UNET", dict(base_dim=8, dim_mults=(1, 2), cond_dim=8, time_emb_dim=8,
                                                 num_heads=2, num_res_blocks=1, num_mid_blocks=1))
    args = type("Args", (), {"quick": True, "repeats": 3, "train_size": "demo"})()
    res = bench.bench_adan(args, torch.device("cpu"))
    rows = {r["kernel"]: r for r in res["adan"]}
    assert list(rows) == ["loop", "foreach", "fused"]
    n = sum(p.numel() for p in bench.UNet1D_ultimate(bench.UNetConfig(lyric_dim=bench.LYRIC_DIM,
                                                                      **bench.DEMO_UNET)).parameters())
    assert all(len(r["times"]) == 3 and r["step_s"] > 0 and r["params"] == n for r in rows.values())
    r = bench.ratios(res)
    assert r["adan_loop_over_fused"] == pytest.approx(rows["loop"]["step_s"] / rows["fused"]["step_s"])
    assert "| fused |" in bench.table(res) and "adan_loop_over_foreach" in r


def test_bench_plane_section_times_the_step_with_and_without_the_band_plane(monkeypatch):
    bench = load_script("bench")
    monkeypatch.setattr(bench, "DEMO_UNET", dict(base_dim=8, dim_mults=(1, 2), cond_dim=8, time_emb_dim=8,
                                                 num_heads=2, num_res_blocks=1, num_mid_blocks=1))
    monkeypatch.setattr(bench, "PLANE_BATCH", 2)
    args = type("Args", (), {"quick": True, "repeats": 2, "train_size": "demo"})()
    res = bench.bench_plane(args, torch.device("cpu"))
    rows = {r["stem_channels"]: r for r in res["plane"]}
    assert list(rows) == [0, bench.UNetConfig().stem_channels] and bench.UNetConfig().stem_channels > 0
    for stem, r in rows.items():
        n = sum(p.numel() for p in bench.UNet1D_ultimate(bench.UNetConfig(
            lyric_dim=bench.LYRIC_DIM, **dict(bench.DEMO_UNET, stem_channels=stem))).parameters())
        assert r["params"] == n and len(r["times"]) == 2 and r["step_s"] > 0 and (r["batch"], r["base_dim"]) == (2, 8)
    assert rows[16]["params"] > rows[0]["params"]
    text = bench.table(res)
    assert "| with the band plane | 16 | 2 |" in text and "| without | 0 | 2 |" in text and "| 1.00x |" in text


FAKE_ORIGINAL_EMBEDDING = '''import torch
from torch import nn

MARK = "fake original"


class TimestepEmbedding(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Linear(1, dim)

    def forward(self, t):
        return self.proj(t.float()[:, None] / 1000)


class CondProjection(nn.Module):
    def __init__(self, motion_dim=78*3, text_dim=768, out_dim=128):
        super().__init__()
        self.motion_proj = nn.Linear(motion_dim, out_dim)
        self.text_proj = nn.Linear(text_dim, out_dim)

    def forward(self, motion, lyrics):
        return self.motion_proj(motion), self.text_proj(lyrics)
'''

FAKE_ORIGINAL_UNET = '''import torch
from torch import nn

from .embedding import TimestepEmbedding  # relative, as theirs
import models.embedding as absolute_embedding  # an absolute `models.` import resolves to this checkout

assert absolute_embedding.MARK == "fake original"


class UNet1D_ultimate(nn.Module):
    def __init__(self, in_dim=80, base_dim=128, dim_mults=(1, 2, 4), cond_dim=128, time_emb_dim=256,
                 num_res_blocks=2, mid_blocks=3, attn_heads=4):
        super().__init__()
        self.time_embedding = TimestepEmbedding(time_emb_dim)
        self.t_proj = nn.Linear(time_emb_dim, base_dim)
        self.inp = nn.Conv1d(in_dim, base_dim, 3, padding=1)
        self.cond = nn.Linear(cond_dim, base_dim)
        self.out = nn.Conv1d(base_dim, in_dim, 1)

    def forward(self, x, t, motion_f=None, text_f=None):
        h = self.inp(x) + self.t_proj(self.time_embedding(t))[:, :, None]
        h = h + self.cond(motion_f + text_f).transpose(1, 2)
        return self.out(torch.tanh(h))
'''


FAKE_ORIGINAL_DIFFUSION = '''import torch


class GaussianDiffusion:
    def __init__(self, model, timesteps=1000, device="cuda", dataset_mean=0.0, dataset_std=1.0):
        self.model, self.T = model, timesteps

    def loss(self, x0, motion_f, text_f):
        t = torch.randint(0, self.T, (x0.shape[0],))
        noise = torch.randn_like(x0)
        return torch.mean((noise - self.model(x0 + noise, t, motion_f, text_f)) ** 2)
'''

FAKE_ORIGINAL_ADAN = '''import torch
from torch.optim import Optimizer


class Adan(Optimizer):  # a plain SGD step: the bench only times it
    def __init__(self, params, lr=1e-3, betas=(0.02, 0.08, 0.01), eps=1e-8, weight_decay=0):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])
'''


def fake_original_repo(root):
    (root / "models").mkdir(parents=True)
    (root / "models" / "__init__.py").write_text("")
    (root / "models" / "embedding.py").write_text(FAKE_ORIGINAL_EMBEDDING)
    (root / "models" / "unet1d_ultimate.py").write_text(FAKE_ORIGINAL_UNET)
    (root / "models" / "diffusion.py").write_text(FAKE_ORIGINAL_DIFFUSION)
    (root / "models" / "adan.py").write_text(FAKE_ORIGINAL_ADAN)
    return root


def test_bench_original_section_needs_the_checkout(tmp_path, capsys):
    bench = load_script("bench")
    with pytest.raises(SystemExit):
        bench.main(["--sections", "original", "--work_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert "--original_repo" in err and "Bokway/LM2A-lyrics-and-motion-to-audio-with-diffusion-model" in err
    (tmp_path / "empty" / "models").mkdir(parents=True)
    (tmp_path / "empty" / "models" / "embedding.py").write_text("")
    with pytest.raises(SystemExit, match="models/unet1d_ultimate.py not found"):
        bench.main(["--sections", "original", "--original_repo", str(tmp_path / "empty"),
                    "--work_dir", str(tmp_path)])


def test_bench_original_section_on_a_fake_checkout(tmp_path, monkeypatch, capsys):
    import math
    import sys
    bench = load_script("bench")
    monkeypatch.setattr(D, "cpu_flags", lambda: frozenset({"avx512_bf16"}))  # default: DPM++-20 bf16
    monkeypatch.setattr(bench, "ORIGINAL_UNET", dict(bench.ORIGINAL_UNET, base_dim=8, cond_dim=8, time_emb_dim=8))
    monkeypatch.setattr(bench, "OUR_UNET", dict(base_dim=8, dim_mults=(1, 2), cond_dim=8, time_emb_dim=8,
                                                num_heads=2, num_res_blocks=1, num_mid_blocks=1))
    monkeypatch.setattr(bench, "T_MEL", 24)
    monkeypatch.setattr(bench, "SAMPLE_STEPS_TIMED", 2)
    monkeypatch.setattr(bench, "SAMPLE_BATCHES", (1, 2))
    repo = fake_original_repo(tmp_path / "orig")
    out_json = tmp_path / "bench.json"
    assert bench.main(["--quick", "--sections", "original", "--original_repo", str(repo), "--device", "cpu",
                       "--threads", "1", "--json", str(out_json), "--work_dir", str(tmp_path / "w")]) == 0
    res = json.loads(out_json.read_text())
    o = res["original"]
    assert o["our_default"] == {"sampler": "DPM++-20", "amp": "bf16"}
    assert o["params_original"] == o["params_original_unet"] + o["params_original_cond_proj"] > 0
    assert o["params_original_cond_proj"] == (234 + 1) * 8 + (768 + 1) * 8 and o["params_ours"] > 0
    assert [r["batch"] for r in o["rows"]] == [1, 2]
    for r in o["rows"]:
        B = r["batch"]
        for key in ("original_step_s", "ours_step_s", "ours_default_step_s", "ours_default_s_per_clip"):
            assert math.isfinite(r[key]) and r[key] > 0, key
        assert {k: len(v) for k, v in r["times"].items()} == {"original": 2, "ours": 2, "ours_default": 2}
        assert r["ours_default_source"] == "this section"
        assert r["original_ddpm1000_s_per_clip"] == pytest.approx(r["original_step_s"] * 1000 / B)
        assert r["ours_ddpm1000_s_per_clip"] == pytest.approx(r["ours_step_s"] * 1000 / B)
        assert r["ours_default_s_per_clip"] == pytest.approx(r["ours_default_step_s"] * 20 / B)
        assert r["original_step_over_ours"] == pytest.approx(r["original_step_s"] / r["ours_step_s"])
        assert res["ratios"][f"original_step_over_ours_b{B}"] == pytest.approx(r["original_step_over_ours"])
        assert res["ratios"][f"original_ddpm1000_over_our_default_b{B}"] == pytest.approx(
            r["original_ddpm1000_s_per_clip"] / r["ours_default_s_per_clip"])
    # the training rows: their loop body against train_step in fp32 and as train.py runs here
    tr = o["training"]
    assert tr["ours_default"] == {"amp": "fp32", "adan": "fused"}  # base_dim 8: auto stays fp32 on a CPU
    assert tr["train_settings"] == bench.ORIGINAL_TRAIN and [r["batch"] for r in tr["rows"]] == [4]
    r = tr["rows"][0]
    assert r["params_original"] == o["params_original"] and r["params_ours"] == o["params_ours"]
    assert {k: len(v) for k, v in r["times"].items()} == {"ours_fp32": 2, "ours_default": 2, "original": 2}
    for key in ("original_step_s", "ours_fp32_step_s", "ours_default_step_s"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert res["ratios"]["original_train_over_ours_fp32_b4"] == pytest.approx(r["original_step_s"] / r["ours_fp32_step_s"])
    assert res["ratios"]["original_train_over_ours_default_b4"] == pytest.approx(r["original_over_ours_default"])
    printed = capsys.readouterr().out
    assert "| original (their train.py's loop body, fp32) | 4 |" in printed
    assert "| ours as train.py runs here (fp32, fused Adan) | 4 |" in printed
    assert "| original (their sample.py settings) | 2 |" in printed and "ours DPM++-20 bf16 s/clip" in printed
    assert "original_ddpm1000_over_our_default_b2:" in printed

    # our `models` package is still the one imported, theirs only under its own name
    import models
    from models.unet1d_ultimate import UNetConfig
    assert Path(models.__file__).resolve().parent == REPO / "models" and UNetConfig().num_heads == 8
    assert all(Path(m.__file__).resolve().is_relative_to(REPO) for k, m in sys.modules.items()
               if (k == "models" or k.startswith("models.")) and getattr(m, "__file__", None))
    assert Path(sys.modules["orig_lm2a_models.unet1d_ultimate"].__file__).parent == repo / "models"

    # with the sample section's rows, our default's seconds per clip are taken from them
    monkeypatch.setattr(bench, "SAMPLE_BATCHES", (1,))
    rows = [{"sampler": "DPM++-20", "batch": 1, "amp": "bf16", "step_s": 0.5, "s_per_clip": 10.0}]
    args = type("Args", (), {"quick": True, "original_repo": str(repo)})()
    o = bench.bench_original(args, torch.device("cpu"), rows)["original"]
    r = o["rows"][0]
    assert r["ours_default_s_per_clip"] == 10.0 and r["ours_default_source"] == "sample section"
    assert set(r["times"]) == {"original", "ours"}
    assert r["original_ddpm1000_over_our_default"] == pytest.approx(r["original_step_s"] * 1000 / 10.0)


def test_denoise_profile_of_a_model_that_predicts_nothing(tmp_path, capsys):
    """A fresh network outputs zero (zero-initialised output convs): with the v objective its x0
    prediction is sqrt(ab) x_t, so its error is (1 - ab)^2 E[x0^2] + ab (1 - ab) E[noise^2], known
    for every t; the CSV, the PNG and the printed table are written."""
    profile = load_script("denoise_profile")
    torch.set_num_threads(1)
    paths = write_fake_clips(tmp_path / "clips", n=4, mel_frames=64, seed=2, text_encoder=DEFAULT_TEXT_ENCODER)
    stats = MelDataset(tmp_path / "clips").stats()
    diffusion = GaussianDiffusion(UNet1D_ultimate(**dict(SAMPLE_TINY, stem_channels=4)).eval(), objective="v",
                                  motion_features="raw",
                                  timesteps=100, **{k: stats[k] for k in ("mel_mean", "mel_std", "motion_mean",
                                                                           "motion_std")})
    items, _ = load_clips(paths)
    batch = collate_fn(items)
    rows = profile.denoise_profile(diffusion, batch, load_mel_config(), timesteps=(5, 50, 99))
    x0 = diffusion.normalize_mel(batch["mel"].transpose(1, 2))
    assert [r["t"] for r in rows] == [-1, 5, 50, 99]
    real_rough = float((batch["mel"][:, 1:] - batch["mel"][:, :-1]).std())
    assert rows[0]["roughness"] == pytest.approx(real_rough, rel=1e-5) and rows[0]["x0_mse"] == 0
    for r in rows[1:]:
        ab = float(diffusion.alphas_cumprod[r["t"]])
        assert r["sigma"] == pytest.approx((1 - ab) ** 0.5, rel=1e-6)
        want = (1 - ab) ** 2 * float((x0 ** 2).mean()) + ab * (1 - ab)
        assert r["x0_mse"] == pytest.approx(want, rel=0.05, abs=1e-4)
        assert 0 <= r["harmonic_share"] <= 1 and 0 <= r["partials"] <= 1
    assert rows[1]["x0_mse"] < rows[2]["x0_mse"] < rows[3]["x0_mse"]
    # little noise: about the clip itself; all noise: sqrt(ab) x_t ~ 0, the mean mel, flat along time
    assert rows[1]["roughness"] == pytest.approx(rows[0]["roughness"], rel=0.1)
    assert rows[3]["roughness"] < 0.05 * rows[0]["roughness"]

    make_sample_checkpoint(tmp_path / "ckpt" / "step_00000007.pt", tmp_path / "clips")
    profile.main(["--ckpt", str(tmp_path / "ckpt"), "--npz_dir", str(tmp_path / "clips"), "--max_clips", "3",
                  "--timesteps", "10", "40", "--out_dir", str(tmp_path / "out")])
    lines = (tmp_path / "out" / "denoise_profile.csv").read_text().splitlines()
    assert lines[0].split(",") == list(profile.COLUMNS) and len(lines) == 4
    assert [line.split(",")[0] for line in lines[1:]] == ["-1", "10", "40"]
    assert png_shape(tmp_path / "out" / "denoise_profile.png")[1] == 1300
    out = capsys.readouterr().out
    assert "| real |" in out and "3 clips (0 skipped), 2 timesteps" in out


def fake_val_summary(path, harmonic, partials, frechet, other=140.5):
    path.mkdir(parents=True)
    music = {"real": {"harmonic_share": 0.77, "partials": 0.48, "chroma_concentration": 0.08, "frechet": 8.1},
             "model": {"harmonic_share": harmonic, "partials": partials, "chroma_concentration": 0.05,
                       "frechet": frechet}}
    (path / "summary.json").write_text(json.dumps({"music_likeness": music, "frechet": {
        "model": frechet, "real_split_half": 8.1, "real_other_songs": other}}))


def test_quality_curve_pairs_runs_with_their_evaluations(tmp_path, capsys):
    curve = load_script("quality_curve")
    pairs = []
    for name, steps, figures in (("long", 1600, (0.70, 0.45, 150.0)), ("short", 400, (0.60, 0.35, 190.0))):
        write_log(tmp_path / name / "train_log.csv", n_steps=steps, val_every=steps)  # 0.5 s per step
        fake_val_summary(tmp_path / f"val_{name}", *figures, other=None if name == "long" else 140.5)
        pairs.append(f"{tmp_path / name}:{tmp_path / f'val_{name}'}")
    curve.main(pairs + ["--out", str(tmp_path / "curve.png")])
    out = capsys.readouterr().out.splitlines()
    assert out[2] == "| short | 400 | 3.3 | 0.600 | 0.350 | 190.0 |"   # sorted by training time
    assert out[3] == "| long | 1600 | 13.3 | 0.700 | 0.450 | 150.0 |"
    assert out[4] == "| real clips | | | 0.770 | 0.480 | 8.1 split halves, 140.5 other songs |"
    assert png_shape(tmp_path / "curve.png")[1] == 1300
    with pytest.raises(SystemExit, match="val_none/summary.json not found"):
        curve.main([f"{tmp_path / 'long'}:{tmp_path / 'val_none'}", "--out", str(tmp_path / "x.png")])
