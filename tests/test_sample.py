"""sample.py (stage 4) and lm2a/conditions.py: one generated npz per clip with the clip's mel shape
and the settings recorded, seeded determinism, samplers, guidance paths, EMA vs raw weights, raw
smplfull.json + lyric input built exactly as stage 1 builds it, refusal of mismatched clips."""
import json

import numpy as np
import pytest
import torch

import sample
from dataset import MelDataset
from lm2a import SCHEMA_VERSION
from lm2a import device as D
from lm2a import generate as G
from lm2a.checkpoint import CHECKPOINT_KIND, save_checkpoint
from lm2a.clipio import json_safe
from lm2a.data import collate_fn
from lm2a.lyrics import DEFAULT_TEXT_ENCODER
from lm2a.melconfig import MelConfig, load_mel_config
from lm2a.trained import load_model
from models.diffusion import SamplingConfig
from models.unet1d_ultimate import UNet1D_ultimate
from tests.fakeclips import write_fake_clips

TINY = dict(mel_dim=80, motion_dim=234, lyric_dim=384, base_dim=16, dim_mults=(1, 2), cond_dim=16,
            time_emb_dim=16, num_res_blocks=1, num_mid_blocks=1, num_heads=2, dropout=0.0)
MEL_FRAMES = 64  # short fake clips keep the tests fast; the raw-input test uses the real 516


def make_checkpoint(path, clip_dir, step=7, seed=0):
    """A tiny checkpoint with norm stats of the clips in clip_dir. The weights are perturbed so the
    untrained network (zero-initialised output conv) says something that depends on its inputs;
    the EMA weights are a different perturbation, so EMA and raw weights generate differently."""
    torch.manual_seed(seed)
    model = UNet1D_ultimate(**TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ema = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v.clone()
           for k, v in model.state_dict().items()}
    stats = MelDataset(clip_dir).stats()
    ckpt = {
        "schema_version": SCHEMA_VERSION, "kind": CHECKPOINT_KIND, "model_class": "UNet1D_ultimate",
        "model_config": json_safe(model.config),
        "diffusion_config": {"timesteps": 50, "beta_schedule": "linear", "objective": "eps"},
        "norm_stats": {k: torch.from_numpy(stats[k]) for k in ("mel_mean", "mel_std", "motion_mean",
                                                                "motion_std")},
        "mel_config": load_mel_config().to_dict(), "text_encoder": {"name": DEFAULT_TEXT_ENCODER, "dim": 384},
        "step": step, "epoch": 1, "model": model.state_dict(), "ema": ema, "optimizer": {},
        "scheduler": {}, "scaler": None, "rng": {}, "train_args": {}, "val_loss": None,
        "best_val_loss": None, "created": "2025-01-01T00:00:00+00:00", "torch_version": str(torch.__version__),
    }
    return save_checkpoint(ckpt, path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sample")
    clips = write_fake_clips(root / "clips", n=3, mel_frames=MEL_FRAMES, n_songs=2, seed=3,
                             text_encoder=DEFAULT_TEXT_ENCODER)
    ckpt_dir = root / "ckpts"
    make_checkpoint(ckpt_dir / "step_00000005.pt", root / "clips", step=5, seed=1)
    ckpt = make_checkpoint(ckpt_dir / "step_00000007.pt", root / "clips", step=7)
    return {"root": root, "clips": clips, "clip_dir": root / "clips", "ckpt": ckpt, "ckpt_dir": ckpt_dir}


def generate_for_files(diffusion, info, paths, **settings):
    """load_clips + generate_for_items with SamplingConfig(**settings) -> (results, skipped)."""
    items, skipped = G.load_clips(paths, info)
    return G.generate_for_items(diffusion, info, items, SamplingConfig(**settings), progress=False), skipped


def gen_mels(setup, use_ema=True, **kw):
    diffusion, info = load_model(setup["ckpt"], "cpu", use_ema=use_ema)
    kw = dict(dict(sampler="ddim", steps=3, eta=0.0, guidance=2.0, seed=0, batch_size=2), **kw)
    results, skipped = generate_for_files(diffusion, info, setup["clips"], **kw)
    assert skipped == []
    return np.stack([r["mel"] for r in results])


def test_writes_one_gen_npz_and_png_per_clip(setup, capsys):
    out = setup["root"] / "gen"
    rc = sample.main(["--ckpt", str(setup["ckpt_dir"]), "--npz_dir", str(setup["clip_dir"]), "--out_dir",
                      str(out), "--steps", "3", "--batch_size", "2", "--seed", "11", "--guidance", "1.5",
                      "--quiet"])
    assert rc == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "read 3 clips, wrote 3, skipped 0" in line and "dpm++ 3 steps" in line and "s/clip" in line
    for clip in setup["clips"]:
        with np.load(out / f"{clip.stem}_gen.npz") as g, np.load(clip) as c:
            assert g["mel"].shape == c["mel"].shape == (80, MEL_FRAMES)
            assert g["mel"].dtype == np.float32 and np.isfinite(g["mel"]).all()
            assert str(g["sampler"]) == "dpm++" and int(g["steps"]) == 3 and float(g["eta"]) == 0.0
            assert float(g["guidance"]) == 1.5 and int(g["seed"]) == 11 and bool(g["use_ema"])
            # the default precision "auto" is recorded as what ran on this CPU
            assert str(g["precision"]) == ("bf16" if D.native_bf16("cpu") else "fp32")
            assert int(g["ckpt_step"]) == 7  # the folder's newest checkpoint
            assert str(g["ckpt_path"]).endswith("step_00000007.pt")
            assert str(g["source_npz"]) == str(clip.resolve())
            assert str(g["song"]) == str(c["song"]) and float(g["start_s"]) == float(c["start_s"])
            assert str(g["lyric_text"]) == str(c["lyric_text"])
            assert MelConfig.parse(g["mel_config"]) == MelConfig.parse(c["mel_config"])
            assert int(g["sr"]) == 22050 and int(g["hop_length"]) == 256
            # the log-mel convention: raw values around the clips' own range, not normalised ones
            assert abs(float(g["mel"].mean()) - float(c["mel"].mean())) < 5.0
        assert (out / f"{clip.stem}.png").stat().st_size > 1000


def test_seeded_and_every_setting_changes_the_output(setup):
    base = gen_mels(setup)
    assert np.array_equal(base, gen_mels(setup))                     # same seed: identical
    assert not np.allclose(base, gen_mels(setup, seed=1))           # another seed: different
    ddpm = gen_mels(setup, sampler="ddpm")
    assert np.isfinite(ddpm).all() and not np.allclose(base, ddpm)
    assert np.array_equal(ddpm, gen_mels(setup, sampler="ddpm"))     # DDPM noise is seeded too
    eta1 = gen_mels(setup, eta=1.0)
    assert not np.allclose(base, eta1)
    by_guidance = {w: gen_mels(setup, guidance=w) for w in (0.0, 1.0)}
    by_guidance[2.0] = base
    for a, b in ((0.0, 1.0), (0.0, 2.0), (1.0, 2.0)):
        assert not np.allclose(by_guidance[a], by_guidance[b]), (a, b)
    assert not np.allclose(base, gen_mels(setup, use_ema=False))    # --no_ema: raw weights
    # a clip's noise is its own: batch size and the other clips do not change its mel
    np.testing.assert_allclose(base, gen_mels(setup, batch_size=3), atol=1e-4)
    diffusion, info = load_model(setup["ckpt"], "cpu")
    alone, _ = generate_for_files(diffusion, info, setup["clips"][1:2], sampler="ddim", steps=3, seed=0)
    np.testing.assert_allclose(alone[0]["mel"], base[1], atol=1e-4)
    # the per-clip loop is GaussianDiffusion.sample with per-clip noise: identical for one clip
    batch = collate_fn(G.load_clips(setup["clips"][:1], info)[0])
    for sampler, eta in (("ddpm", 0.0), ("ddim", 0.5)):
        cfg = SamplingConfig(sampler=sampler, steps=4, eta=eta, guidance=2.0, precision="fp32")
        ours = G.generate(diffusion, batch, cfg, [G.make_generator(5)])
        ref = diffusion.sample(batch["motion"], batch["lyrics"], batch["lyric_pad_mask"], settings=cfg,
                               generator=G.make_generator(5))
        np.testing.assert_allclose(ours, ref.numpy(), atol=1e-5)
    # unconditional: the conditions are dropped, so swapping them between clips changes nothing
    diffusion, info = load_model(setup["ckpt"], "cpu")
    items, _ = G.load_clips(setup["clips"][:2], info)
    swapped = [dict(items[0], motion=items[1]["motion"], lyrics=items[1]["lyrics"]), items[1]]
    cfg = SamplingConfig(steps=3, guidance=0.0, seed=0, batch_size=2)
    a = np.stack([r["mel"] for r in G.generate_for_items(diffusion, info, items, cfg, progress=False)])
    b = np.stack([r["mel"] for r in G.generate_for_items(diffusion, info, swapped, cfg, progress=False)])
    np.testing.assert_allclose(a, b, atol=1e-5)
    cfg = SamplingConfig(steps=3, guidance=1.0, seed=0, batch_size=2)
    a = np.stack([r["mel"] for r in G.generate_for_items(diffusion, info, items, cfg, progress=False)])
    b = np.stack([r["mel"] for r in G.generate_for_items(diffusion, info, swapped, cfg, progress=False)])
    assert not np.allclose(a[0], b[0])


def test_precision_auto_is_bf16_only_where_the_device_has_it(setup, monkeypatch):
    auto = SamplingConfig(precision="auto", sampler="ddim", steps=2, guidance=2.0, seed=0, batch_size=2)
    monkeypatch.setattr(D, "cpu_flags", lambda: frozenset({"fpu", "avx2", "avx512_bf16"}))
    assert D.native_bf16("cpu") and D.resolve_precision(auto, "cpu").precision == "bf16"
    monkeypatch.setattr(D, "cpu_flags", lambda: frozenset({"fpu", "avx2", "avx512f"}))
    assert not D.native_bf16("cpu") and D.resolve_precision(auto, "cpu").precision == "fp32"
    for fixed in ("fp32", "bf16"):  # an explicit choice is kept
        assert D.resolve_precision(SamplingConfig(precision=fixed), "cpu").precision == fixed
    assert D.resolve_precision(auto, "cpu").steps == 2
    with pytest.raises(ValueError, match="unknown precision"):
        SamplingConfig(precision="fp16")
    diffusion, info = load_model(setup["ckpt"], "cpu")
    batch = collate_fn(G.load_clips(setup["clips"][:1], info)[0])
    with pytest.raises(ValueError, match='resolves "auto"'):  # the model never guesses the device's
        diffusion.sample(batch["motion"], batch["lyrics"], batch["lyric_pad_mask"], settings=auto)
    # through generate_for_items auto runs (as fp32 here, the flags say no bf16) and records fp32
    out = G.generate_for_items(diffusion, info, G.load_clips(setup["clips"][:1], info)[0], auto,
                               out_dir=setup["root"] / "auto", png=False, progress=False)
    with np.load(out[0]["path"]) as g:
        assert str(g["precision"]) == "fp32"
    fp32, bf16 = gen_mels(setup, steps=2)[0], gen_mels(setup, steps=2, precision="bf16")[0]
    np.testing.assert_allclose(out[0]["mel"], fp32, atol=1e-3)  # fp32 (batched alone: float noise only)
    assert np.abs(bf16 - fp32).max() > 1e-2                      # which bf16 is not


def test_no_ema_flag_and_max_clips(setup):
    out = setup["root"] / "gen_noema"
    assert sample.main(["--ckpt", str(setup["ckpt"]), "--npz", str(setup["clips"][0]), "--out_dir", str(out),
                        "--steps", "3", "--no_ema", "--quiet", "--no_png"]) == 0
    with np.load(out / f"{setup['clips'][0].stem}_gen.npz") as g:
        assert not bool(g["use_ema"])
    assert not (out / f"{setup['clips'][0].stem}.png").exists()
    out2 = setup["root"] / "gen_max"
    assert sample.main(["--ckpt", str(setup["ckpt"]), "--npz_dir", str(setup["clip_dir"]), "--out_dir",
                        str(out2), "--steps", "2", "--max_clips", "2", "--quiet", "--no_png"]) == 0
    assert len(list(out2.glob("*_gen.npz"))) == 2


def test_clips_of_other_lengths_get_their_own_batches(setup, tmp_path):
    short = write_fake_clips(tmp_path, n=2, mel_frames=32, seed=9, text_encoder=DEFAULT_TEXT_ENCODER)
    diffusion, info = load_model(setup["ckpt"], "cpu")
    paths = [setup["clips"][0], short[0], short[1], setup["clips"][1]]
    results, _ = generate_for_files(diffusion, info, paths, steps=2, batch_size=8)
    assert [r["mel"].shape[1] for r in results] == [MEL_FRAMES, 32, 32, MEL_FRAMES]
    assert [len(b) for b in G.make_batches([r["item"] for r in results], 8)] == [1, 2, 1]


def test_refuses_clips_of_another_mel_config_or_text_encoder(setup, tmp_path, capsys):
    other_cfg = dict(load_mel_config().to_dict(), fmax=8000, fmax_resolved=8000.0, name="fmax8k")
    bad = write_fake_clips(tmp_path / "bad", n=1, mel_frames=MEL_FRAMES, seed=5, mel_config=other_cfg,
                           text_encoder=DEFAULT_TEXT_ENCODER)[0]
    out = tmp_path / "gen"
    rc = sample.main(["--ckpt", str(setup["ckpt"]), "--npz", str(bad), "--out_dir", str(out), "--steps", "2",
                      "--quiet"])
    err = capsys.readouterr().err
    assert rc != 0
    assert str(bad) in err and str(setup["ckpt"]) in err  # names both files
    assert "fmax: 8000.0 (clip) vs 11025.0 (checkpoint)" in err
    assert not out.exists() or not list(out.glob("*_gen.npz"))

    _, info = load_model(setup["ckpt"], "cpu")
    problems = G.compatibility_problems("x.npz", load_mel_config().to_json(), "roberta-base",
                                             768, info)
    assert len(problems) == 1 and "'roberta-base' (768-dim) (clip)" in problems[0]
    assert G.compatibility_problems("x.npz", load_mel_config(), DEFAULT_TEXT_ENCODER, 384, info) == []


def test_raw_input_matches_stage1_features(setup, tmp_path, capsys):
    import preprocess
    from lm2a.conditions import ConditionError, conditions_from_raw
    from lm2a.lyrics import LyricEncoder
    from lm2a.motion import clip_motion_features, fill_nearest, load_smpl_json
    from tests.songs import write_song

    song = tmp_path / "JustLMD" / "Songs_2021" / "rawsong"
    write_song(song, [1.5, 7.5], lyrics=["first line here", "we dance until the morning"], seed=2)
    smpl = song / "smplfull.json"
    frames = json.loads(smpl.read_text())
    for k in ("000200", "000201", "000250"):  # gaps inside the second clip: repaired as in stage 1
        del frames[k]
    smpl.write_text(json.dumps(frames))
    assert preprocess.main(["--data_root", str(tmp_path / "JustLMD"), "--out_dir", str(tmp_path / "pre"),
                            "--quiet"]) == 0
    capsys.readouterr()
    with np.load(tmp_path / "pre" / "clips" / "rawsong__00007500.npz") as z:
        clip = {k: z[k] for k in z.files}

    encoder = LyricEncoder(DEFAULT_TEXT_ENCODER)
    cond = conditions_from_raw(smpl, "we dance until the morning", 7.5, t0_s=1.5, encoder=encoder)
    assert cond["motion"].shape == (180, 234) and cond["lyrics"].shape[1] == 384
    assert (cond["frame_start"], cond["frame_end"]) == (180, 360)
    assert cond["motion_repaired_frames"] == 3 == int(clip["motion_repaired_frames"])
    poses, _ = load_smpl_json(smpl)
    bad = ~np.isfinite(poses).all(axis=1)
    filled, _, _ = fill_nearest(poses)
    feats, _ = clip_motion_features(filled, bad, [180], 180, 30)
    np.testing.assert_array_equal(cond["motion"], feats[0])
    np.testing.assert_array_equal(cond["motion"], clip["motion"])  # what stage 1 wrote
    np.testing.assert_allclose(cond["lyrics"], clip["lyrics"], atol=1e-4)
    with pytest.raises(ConditionError, match="motion ends at frame"):
        conditions_from_raw(smpl, "x", 12.0, t0_s=1.5, encoder=encoder)
    with pytest.raises(ConditionError, match="before motion frame 0"):
        conditions_from_raw(smpl, "x", 1.0, t0_s=1.5, encoder=encoder)

    out = tmp_path / "gen"
    rc = sample.main(["--ckpt", str(setup["ckpt"]), "--motion", str(smpl), "--lyrics",
                      "we dance until the morning", "--start", "7.5", "--motion_t0", "1.5", "--out_dir",
                      str(out), "--steps", "2", "--quiet"])
    assert rc == 0
    with np.load(out / "raw_00007500_gen.npz") as g:
        assert g["mel"].shape == clip["mel"].shape == (80, 516) and np.isfinite(g["mel"]).all()
        np.testing.assert_array_equal(g["motion"], clip["motion"])
        assert int(g["frame_start"]) == 180 and str(g["source_npz"]) == ""
        assert str(g["lyric_text"]) == "we dance until the morning"
    assert (out / "raw_00007500.png").is_file()

    rc = sample.main(["--ckpt", str(setup["ckpt"]), "--motion", str(smpl), "--lyrics", "x", "--start", "30",
                      "--out_dir", str(out), "--quiet"])
    assert rc == 2 and "motion ends at frame" in capsys.readouterr().err
