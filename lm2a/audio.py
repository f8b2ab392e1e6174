"""Audio loading and the one mel function (bigvgan's own)."""
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from lm2a.clipio import atomic_file
from lm2a.melconfig import MelConfig


class AudioFileError(ValueError):
    pass


AUDIO_BLOCK = 1 << 18  # frames read (and resampled) at a time: memory holds the output, not the file


def load_audio(path, target_sr):
    """-> (float32 mono wav in [-1, 1] at target_sr, original sr). Loaded once per song, block by block
    (memory: the output alone, whatever the file's rate and channels); averaged over channels;
    resampled with soxr's HQ stream (librosa's default resampler, res_type soxr_hq), length
    ceil(frames * target_sr / sr) (librosa.resample's, computed exactly). Raises AudioFileError naming the file."""
    path = Path(path)
    try:
        f = sf.SoundFile(str(path))
    except Exception as e:  # soundfile.LibsndfileError, RuntimeError
        raise AudioFileError(f"{path}: cannot read audio ({e})") from e
    with f:
        sr, frames = int(f.samplerate), int(f.frames)
        if frames <= 0:
            raise AudioFileError(f"{path}: no samples")
        try:
            wav = _read_mono(f, path, target_sr)
        except (RuntimeError, sf.LibsndfileError) as e:
            raise AudioFileError(f"{path}: cannot read audio ({e})") from e
        except MemoryError as e:  # a header claiming more frames than memory holds
            raise AudioFileError(f"{path}: {frames} frames at {sr} Hz do not fit in memory") from e
    # resampling can overshoot a full-scale signal by a hair; bigvgan's mel expects [-1, 1]
    np.clip(wav, -1.0, 1.0, out=wav)
    return wav, sr


def _read_mono(f, path, target_sr):
    """The open SoundFile f, block by block: mixed to mono, checked for NaN/inf, resampled to target_sr
    into one preallocated float32 array (cut to the frames actually read)."""
    sr = int(f.samplerate)
    stream = soxr.ResampleStream(sr, target_sr, 1, dtype="float32", quality="HQ") if sr != target_sr else None
    out = np.empty(_resampled_length(f.frames, sr, target_sr), np.float32)
    n_in = n_out = 0
    while True:
        block = f.read(AUDIO_BLOCK, dtype="float32", always_2d=True)
        last = len(block) < AUDIO_BLOCK
        mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
        if not np.isfinite(mono).all():
            raise AudioFileError(f"{path}: NaN/inf samples (near {n_in / sr:.3f} s)")
        n_in += len(block)
        y = mono if stream is None else stream.resample_chunk(mono, last=last)
        y = y[:max(0, len(out) - n_out)]
        out[n_out:n_out + len(y)] = y
        n_out += len(y)
        if last:
            break
    n_want = _resampled_length(n_in, sr, target_sr)
    out[n_out:n_want] = 0.0  # soxr's stream can end a sample short of librosa's length: zero-padded as librosa does
    return out[:n_want]


def _resampled_length(frames, sr, target_sr):
    """ceil(frames * target_sr / sr) in integers (librosa's float ratio can add a sample: 441 at 44.1 kHz
    -> 241 at 24 kHz; exactly 240)."""
    return -(-int(frames) * int(target_sr) // int(sr))


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


MEL_CHUNK_FRAMES = 4096  # mel frames per call of compute_mel_long (about 48 s at 22.05 kHz, hop 256)


def compute_mel_long(wav, cfg, device="cpu", chunk_frames=None):
    """(N,) float32 -> the log-mel (num_mels, frames) of compute_mel(wav, cfg), computed chunk_frames
    (MEL_CHUNK_FRAMES) frames at a time: memory holds one chunk's STFT, not the whole signal's (a
    20-minute song's STFT alone is about 0.4 GB). Each chunk is bigvgan's own function on the samples its
    frames cover plus whole hops of margin, so only the signal's first and last frames see reflection
    padding, as in one call."""
    cfg = MelConfig.parse(cfg)
    wav = np.asarray(wav, dtype=np.float32)
    hop, pad, chunk = cfg.hop_size, (cfg.n_fft - cfg.hop_size) // 2, int(chunk_frames or MEL_CHUNK_FRAMES)
    margin = -(-pad // hop)  # frames of margin before a chunk: its first frame's window starts inside the chunk
    n_frames = (len(wav) + 2 * pad - cfg.n_fft) // hop + 1
    if n_frames <= chunk + margin:
        return compute_mel(wav, cfg, device)
    out = np.empty((cfg.num_mels, n_frames), np.float32)
    for a in range(0, n_frames, chunk):
        b = min(a + chunk, n_frames)
        m = min(margin, a)  # the first chunk starts with the signal: its padding is the signal's own
        end = b * hop - pad + cfg.n_fft  # past the window of frame b - 1
        mel = compute_mel(wav[(a - m) * hop:end if end < len(wav) and b < n_frames else len(wav)], cfg, device)
        out[:, a:b] = mel[:, m:m + b - a]
    return out


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
