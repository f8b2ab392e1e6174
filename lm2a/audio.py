"""Audio loading and the one mel function (bigvgan's own)."""
from pathlib import Path

import numpy as np
import soundfile as sf

from lm2a.clipio import atomic_file
from lm2a.melconfig import MelConfig


class AudioFileError(ValueError):
    pass


def load_audio(path, target_sr):
    """-> (float32 mono wav in [-1, 1] at target_sr, original sr). Loaded once per song; averaged over
    channels; resampled with soxr (librosa's default high-quality resampler)."""
    path = Path(path)
    try:
        wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile.LibsndfileError, RuntimeError
        raise AudioFileError(f"{path}: cannot read audio ({e})") from e
    if wav.shape[0] == 0:
        raise AudioFileError(f"{path}: no samples")
    wav = wav.mean(axis=1)
    if sr != target_sr:
        import librosa  # heavy (numba): only when a file is not at the mel's rate
        wav = librosa.resample(wav, orig_sr=sr, target_sr=target_sr, res_type="soxr_hq")
    if not np.isfinite(wav).all():
        raise AudioFileError(f"{path}: NaN/inf samples")
    # resampling can overshoot a full-scale signal by a hair; bigvgan's mel expects [-1, 1]
    np.clip(wav, -1.0, 1.0, out=wav)
    return wav.astype(np.float32, copy=False), sr


def compute_mel(wavs, cfg, device="cpu"):
    """wavs (B, N) or (N,) float32 -> log-mel (B, num_mels, frames) float32 numpy, computed by
    bigvgan.meldataset.get_mel_spectrogram with the hparams of `cfg` (a MelConfig; one batched call)."""
    # torch and bigvgan are heavy: stage 1's worker processes import them once, other users never
    import torch
    from bigvgan.meldataset import get_mel_spectrogram

    x = torch.as_tensor(np.asarray(wavs, dtype=np.float32), device=device)
    squeeze = x.ndim == 1
    if squeeze:
        x = x[None]
    with torch.inference_mode():
        mel = get_mel_spectrogram(x, MelConfig.parse(cfg).hparams()).cpu().numpy()
    return mel[0] if squeeze else mel


def peak_limited(wav):
    """float32 wav scaled down to peak 1 when it overshoots (Griffin-Lim can): scaling, not
    clipping into crackle."""
    wav = np.asarray(wav, dtype=np.float32)
    peak = float(np.abs(wav).max()) if wav.size else 0.0
    return wav / peak if peak > 1.0 else wav


def write_wav(path, wav, sr):
    """16-bit PCM wav of peak_limited(wav), written atomically -> path."""
    with atomic_file(path) as f:
        sf.write(f, np.clip(peak_limited(wav), -1.0, 1.0), int(sr), subtype="PCM_16", format="WAV")
    return Path(path)
