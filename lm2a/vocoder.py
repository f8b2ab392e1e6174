"""The vocoder: log-mel (80, T) -> waveform (T * hop,), with NVIDIA BigVGAN (PyPI `bigvgan`) or, when
no BigVGAN weights are at hand, Griffin-Lim (librosa) on the same mel definition.

A vocoder is a BigVGAN checkpoint folder `BigVGAN/<name>/` holding `config.json` and
`bigvgan_generator.pt`; the same config.json gives the mel hparams of preprocessing (lm2a.melconfig),
so a mel and a vocoder that disagree are refused by `check_mel_compat` instead of giving noise.
"""
import contextlib
import dataclasses
import io
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from lm2a import REPO_ROOT
from lm2a.melconfig import MelConfig, load_mel_config

WEIGHTS_FILE = "bigvgan_generator.pt"
CONFIG_FILE = "config.json"
BIGVGAN_DIR = REPO_ROOT / "BigVGAN"
CONTEXT_FRAMES = 64  # vocode_long: mel frames vocoded on each side of a chunk and dropped (0.74 s at hop 256)
README_HINT = f"see {BIGVGAN_DIR.relative_to(REPO_ROOT) / 'README.md'} for how to get it"


class VocoderUnavailable(RuntimeError):
    """No usable BigVGAN weights. `.mel_cfg` holds the mel config when a config.json was found
    (so a caller can fall back to Griffin-Lim on the right mel definition), else None."""

    def __init__(self, message, mel_cfg=None):
        super().__init__(message)
        self.mel_cfg = mel_cfg


class MelConfigMismatch(ValueError):
    pass


def is_hub_id(name) -> bool:
    """'nvidia/bigvgan_v2_22khz_80band_256x' looks like a hub id; a local path (existing, absolute,
    './x', 'BigVGAN/x') does not, so a typo in a local name never turns into a download attempt."""
    s = str(name)
    if Path(s).exists() or s.startswith((".", "/", "~")) or s.split("/")[0] == BIGVGAN_DIR.name:
        return False
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", s) is not None


def resolve_vocoder_dir(name_or_dir):
    """A folder as given (relative to the working dir or to the repo root), or a bare name under
    REPO_ROOT/BigVGAN. Returns a Path or None when nothing local matches."""
    p = Path(name_or_dir).expanduser()
    for cand in (p, REPO_ROOT / p, BIGVGAN_DIR / p):
        if cand.is_dir():
            return cand
    return None


def _hub_fetch(hub_id):
    """-> (config path, weights path) through the hub cache; raises VocoderUnavailable on any error."""
    try:
        from huggingface_hub import hf_hub_download  # only a hub id needs the network client
        config = hf_hub_download(repo_id=hub_id, filename=CONFIG_FILE)
        weights = hf_hub_download(repo_id=hub_id, filename=WEIGHTS_FILE)
    except Exception as e:  # offline, unknown repo, auth, disk: all mean "no hub vocoder"
        mel_cfg = _local_twin_mel_cfg(hub_id)
        raise VocoderUnavailable(
            f"{hub_id}: no such local folder, and could not fetch {CONFIG_FILE} + {WEIGHTS_FILE} "
            f"from the Hugging Face hub ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"{README_HINT}",
            mel_cfg) from e
    return Path(config), Path(weights)


def _local_twin_mel_cfg(hub_id):
    """nvidia/<name> -> the mel config of BigVGAN/<name>/config.json when that folder exists."""
    cand = BIGVGAN_DIR / str(hub_id).split("/")[-1] / CONFIG_FILE
    return load_mel_config(cand) if cand.is_file() else None


def _build_generator(config_path, weights_path, device):
    from bigvgan.bigvgan import BigVGAN, load_hparams_from_json  # heavy: only when weights are loaded

    h = load_hparams_from_json(config_path)
    with warnings.catch_warnings():  # bigvgan builds with the deprecated torch weight_norm
        warnings.simplefilter("ignore", FutureWarning)
        model = BigVGAN(h, use_cuda_kernel=False)
    try:
        state = torch.load(weights_path, map_location=device, weights_only=True)["generator"]
    except Exception as e:
        raise VocoderUnavailable(f"{weights_path}: cannot read BigVGAN weights ({type(e).__name__}: "
                                 f"{e}); delete it and download again ({README_HINT})") from e
    quiet = io.StringIO()  # bigvgan's remove_weight_norm prints on every call
    try:
        model.load_state_dict(state)
        with contextlib.redirect_stdout(quiet):
            model.remove_weight_norm()
    except RuntimeError:
        # a checkpoint saved after weight norm was removed (plain `weight` keys)
        with contextlib.redirect_stdout(quiet):
            model.remove_weight_norm()
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise VocoderUnavailable(f"{weights_path}: weights do not fit {config_path} "
                                     f"({str(e).splitlines()[0]})") from e
    return model.eval().to(device)


def load_bigvgan(name_or_dir, device="cpu"):
    """-> (model in eval mode without weight norm, mel_cfg as lm2a.melconfig.load_mel_config gives it).
    `name_or_dir`: a folder with config.json + bigvgan_generator.pt, a bare name under BigVGAN/, or a
    hub id such as 'nvidia/bigvgan_v2_22khz_80band_256x' (fetched with hf_hub_download). Raises
    VocoderUnavailable (with `.mel_cfg` when a config was found) when the weights are missing."""
    local = resolve_vocoder_dir(name_or_dir)
    if local is not None:
        config = local / CONFIG_FILE
        if not config.is_file():
            raise VocoderUnavailable(f"{local}: no {CONFIG_FILE} (not a BigVGAN folder; {README_HINT})")
        mel_cfg = load_mel_config(config)
        weights = local / WEIGHTS_FILE
        if not weights.is_file():
            how = (f" (e.g. hf download nvidia/{local.name} {WEIGHTS_FILE} "
                   f"--local-dir {local})" if local.name.startswith("bigvgan") else "")
            raise VocoderUnavailable(f"{weights}: BigVGAN weights missing; {README_HINT}{how}", mel_cfg)
    elif is_hub_id(name_or_dir):
        config, weights = _hub_fetch(str(name_or_dir))
        mel_cfg = dataclasses.replace(load_mel_config(config), name=str(name_or_dir))
    else:
        raise VocoderUnavailable(
            f"{name_or_dir}: no such BigVGAN folder (looked in ./ and {BIGVGAN_DIR}) and not a hub id "
            f"like nvidia/bigvgan_v2_22khz_80band_256x; {README_HINT}")
    return _build_generator(config, weights, device), mel_cfg


def vocode(mel_batch, model):
    """(B, 80, T) log-mel (numpy or tensor) -> float32 numpy (B, T * hop) in [-1, 1]."""
    device = next(model.parameters()).device
    mel = torch.as_tensor(np.asarray(mel_batch) if not torch.is_tensor(mel_batch) else mel_batch,
                          dtype=torch.float32, device=device)
    if mel.ndim == 2:
        mel = mel[None]
    with torch.inference_mode():
        wav = model(mel)  # (B, 1, T * hop)
    return wav.squeeze(1).float().cpu().numpy()


def vocode_long(mel, model, chunk_frames, context_frames=CONTEXT_FRAMES):
    """(80, T) log-mel -> (T * hop,) float32 wav through BigVGAN, `chunk_frames` at a time (each with
    context_frames of mel on both sides, vocoded and dropped: BigVGAN is convolutional, its receptive
    field is far shorter than the context, so the joins are inaudible and memory stays that of one
    chunk); one call when T <= chunk_frames."""
    n_frames = mel.shape[1]
    if chunk_frames <= 0 or n_frames <= chunk_frames:
        return vocode(mel[None], model)[0]
    pieces = []
    for a in range(0, n_frames, chunk_frames):
        b = min(a + chunk_frames, n_frames)
        lo, hi = max(a - context_frames, 0), min(b + context_frames, n_frames)
        wav = vocode(mel[None, :, lo:hi], model)[0]
        hop = len(wav) // (hi - lo)
        pieces.append(wav[(a - lo) * hop:(b - lo) * hop])
    return np.concatenate(pieces)


def batches_by_length(items, batch_size):
    """items: an iterable of (key, mel (80, T)) -> yields lists of up to batch_size of them with one T
    (equal lengths batch without padding), in input order within a length; a batch is yielded as soon
    as it is full, the partial ones at the end, so at most batch_size mels per length are held."""
    buckets = {}
    for key, mel in items:
        bucket = buckets.setdefault(mel.shape[-1], [])
        bucket.append((key, mel))
        if len(bucket) >= batch_size:
            yield buckets.pop(mel.shape[-1])
    yield from buckets.values()


def mel_filterbank(mel_cfg):
    """The filterbank of bigvgan.meldataset.mel_spectrogram: librosa slaney mel, fmax None -> sr/2."""
    import librosa  # heavy (numba): only Griffin-Lim needs it
    cfg = MelConfig.parse(mel_cfg)
    return librosa.filters.mel(sr=cfg.sampling_rate, n_fft=cfg.n_fft, n_mels=cfg.num_mels, fmin=cfg.fmin,
                               fmax=cfg.fmax)


def griffin_lim(log_mel, mel_cfg, n_iter=64, seed=0, nnls_refine=50):
    """Inverts a bigvgan log-mel (80, T) (natural log of the magnitude mel) -> float32 (T * hop,).
    BigVGAN frames a signal by reflect-padding (n_fft - hop) / 2 on both sides and an uncentred STFT,
    so frame t covers padded samples [t * hop, t * hop + n_fft); we run Griffin-Lim uncentred on that
    padded time axis and cut the pad off, which puts every frame back where it came from."""
    import librosa  # heavy (numba): only Griffin-Lim needs it

    cfg = MelConfig.parse(mel_cfg)
    log_mel = np.asarray(log_mel, dtype=np.float32)
    n_fft, hop, win = cfg.n_fft, cfg.hop_size, cfg.win_size
    frames = log_mel.shape[-1]
    mel_mag = np.exp(log_mel)  # (80, T) magnitude mel
    stft_mag = librosa.feature.inverse.mel_to_stft(
        mel_mag, sr=cfg.sampling_rate, n_fft=n_fft, power=1.0,
        fmin=cfg.fmin, fmax=cfg.fmax, htk=False, norm="slaney")  # (n_fft/2+1, T)
    # librosa's NNLS stops early (mean log-mel residual ~0.2 on a tonal test signal); a few
    # multiplicative NNLS updates bring it to ~0.02 and cut the final audio's mel error by ~40%
    fb = mel_filterbank(cfg).astype(np.float32)
    stft_mag = np.maximum(stft_mag, 1e-6)  # updates are multiplicative: no exact zeros
    target = fb.T @ mel_mag
    for _ in range(nnls_refine):
        stft_mag *= target / np.maximum(fb.T @ (fb @ stft_mag), 1e-12)
    pad = (n_fft - hop) // 2
    padded = librosa.griffinlim(stft_mag, n_iter=n_iter, hop_length=hop, win_length=win, n_fft=n_fft,
                                window="hann", center=False, random_state=seed)
    wav = padded[pad:pad + frames * hop]
    if wav.shape[0] < frames * hop:
        wav = np.pad(wav, (0, frames * hop - wav.shape[0]))
    return wav.astype(np.float32)


def check_mel_compat(npz_mel_cfg, vocoder_mel_cfg, npz_name="clip", vocoder_name=None):
    """Raises MelConfigMismatch naming every differing value, e.g.
    'fmax: 8000.0 (clip) vs 11025.0 (vocoder BigVGAN/bigvgan_v2_22khz_80band_256x)'.
    Either config: a MelConfig or anything MelConfig.parse reads."""
    clip, vocoder = MelConfig.parse(npz_mel_cfg, where=npz_name), MelConfig.parse(vocoder_mel_cfg)
    vname = vocoder_name or f"BigVGAN/{vocoder.name or '?'}"
    diffs = clip.differences(vocoder, "clip", f"vocoder {vname}")
    if diffs:
        raise MelConfigMismatch(
            f"{npz_name}: mel config made with '{clip.name or '?'}' does not match the "
            f"vocoder {vname}: " + "; ".join(diffs)
            + " (vocode with the matching BigVGAN folder, or re-run preprocess.py with this vocoder's config)")


def vocode_mels(mels, mel_cfg=None, model=None, n_iter=64, seed=0, batch_size=8):
    """Log-mels -> waveforms with one vocoder for all of them (so real and generated sets compare
    fairly): `mels` is (B, 80, T) or a list of (80, T_i); returns a list of float32 (T_i * hop,).
    BigVGAN `model` (from load_bigvgan): mels of equal length go through `vocode` in batches of
    batch_size. model None: griffin_lim on `mel_cfg` (the default vocoder config when None), n_iter
    iterations, the same seed for every mel."""
    mels = [np.asarray(m, dtype=np.float32) for m in mels]
    if model is None:
        if mel_cfg is None:
            mel_cfg = load_mel_config()
        return [griffin_lim(m, mel_cfg, n_iter=n_iter, seed=seed) for m in mels]
    wavs = [None] * len(mels)
    for batch in batches_by_length(enumerate(mels), batch_size):
        for (i, _), wav in zip(batch, vocode(np.stack([m for _, m in batch]), model)):
            wavs[i] = wav
    return wavs
