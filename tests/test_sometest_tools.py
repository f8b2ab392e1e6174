"""sometest/plot_losses.py and sometest/inspect_npz.py on small files written here."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

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


def write_log(path, n_steps=60, val_every=10):
    rows = ["epoch,step,train_loss,val_loss,lr,seconds"]
    for s in range(1, n_steps + 1):
        train = 1.0 / s ** 0.5 + 0.05 * ((s * 7919) % 13) / 13
        val = f"{1.1 / s ** 0.5:.6f}" if s % val_every == 0 else ""
        rows.append(f"{(s - 1) // 20},{s},{train:.6f},{val},{1e-3 * min(1.0, s / 10):.6g},{s * 0.5:.1f}")
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
