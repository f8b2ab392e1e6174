"""Noise-texture twins of recordings, and the music-likeness figures of both (lm2a/musicality.py).

    python sometest/noise_twin.py a.ogg b.wav ... [--seconds 6] [--at 0.33 ...] [--bands 16] [--seed 0]

A twin keeps what a noise texture with onset stripes keeps and nothing else: the coarse spectral
envelope and each coarse band's temporal envelope (so the same loudness, colour and onsets), with
noise in place of the fine structure (so no partials, no pitch). How: the STFT power of the clip
(n_fft 1024, hop 256, Hann) is averaged within BANDS triangular mel bands (librosa.filters.mel, unit
peaks) per frame, spread back to the STFT bins by the same triangles, and imposed on the STFT of
white Gaussian noise; the inverse STFT, scaled to the clip's RMS (or to peak 1 if that is less), is
the twin. A phase-randomised twin would not do: randomising the phases of the whole clip keeps its
long-term spectrum, so a held note's partials stay where they were.

For each file and each --at (a fraction of the recording's length), a --seconds clip starting there
and its twin become log-mels with the project's mel function (lm2a.audio.compute_mel, the default
vocoder config); the script prints a markdown table of their figures and the median of each column.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import librosa  # noqa: E402
import numpy as np  # noqa: E402
from scipy.signal import istft, stft  # noqa: E402

from lm2a.audio import compute_mel, load_audio, peak_limited  # noqa: E402
from lm2a.melconfig import load_mel_config  # noqa: E402
from lm2a.musicality import FIGURES, music_figures  # noqa: E402

BANDS = 16          # coarse bands of the twin's envelope (each ~5 of the 80 mel bands)
N_FFT = 1024        # STFT of the envelope analysis and of the noise
HOP = 256
SECONDS = 6.0       # clip length (the project's clips)
AT = (0.33,)        # where the clips start, as fractions of the recording
SEED = 0


def band_envelope_twin(wav, sr, bands=BANDS, seed=SEED):
    """(N,) float32 noise with the coarse-band envelopes of `wav` (module docstring), same length and
    RMS (scaled down where that would put its peak above 1)."""
    wav = np.asarray(wav, dtype=np.float64)
    stft_kw = dict(fs=sr, window="hann", nperseg=N_FFT, noverlap=N_FFT - HOP)
    _, _, spec = stft(wav, **stft_kw)                                          # (N_FFT/2+1, frames)
    triangles = librosa.filters.mel(sr=sr, n_fft=N_FFT, n_mels=bands, norm=None).astype(np.float64)
    band_power = triangles @ np.abs(spec) ** 2 / np.maximum(triangles.sum(axis=1, keepdims=True), 1e-12)
    envelope = triangles.T @ band_power / np.maximum(triangles.sum(axis=0)[:, None], 1e-12)
    _, _, noise = stft(np.random.default_rng(seed).standard_normal(len(wav)), **stft_kw)
    noise /= np.sqrt(np.mean(np.abs(noise) ** 2))
    _, twin = istft(noise * np.sqrt(envelope), **stft_kw)
    twin = twin[:len(wav)]
    rms_in, rms_out = np.sqrt(np.mean(wav ** 2)), np.sqrt(np.mean(twin ** 2))
    return peak_limited(twin * (rms_in / rms_out if rms_out > 0 else 0.0))


def clip_of(path, sr, seconds, at):
    """A `seconds` long mono clip of the recording at `sr`, from `at` x its length, peak at most 1."""
    wav, _ = load_audio(path, sr)
    n = int(round(seconds * sr))
    start = min(int(at * len(wav)), max(len(wav) - n, 0))
    clip = wav[start:start + n]
    return clip / max(1.0, float(np.abs(clip).max()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", help="recordings (any format soundfile reads)")
    p.add_argument("--seconds", type=float, default=SECONDS)
    p.add_argument("--at", type=float, nargs="+", default=AT, help="clip starts as fractions of the recording")
    p.add_argument("--bands", type=int, default=BANDS, help="coarse bands of the twin's envelope")
    p.add_argument("--seed", type=int, default=SEED)
    args = p.parse_args(argv)
    cfg = load_mel_config()
    head = " | ".join(f"{f} real / twin" for f in FIGURES)
    print(f"| recording | {head} |\n|---|{'---|' * len(FIGURES)}")
    rows = []
    for path in args.files:
        for at in args.at:
            clip = clip_of(path, cfg.sampling_rate, args.seconds, at)
            twin = band_envelope_twin(clip, cfg.sampling_rate, args.bands, args.seed)
            real_mel, twin_mel = compute_mel(np.stack([clip, twin]), cfg)
            rows.append((music_figures(real_mel, cfg), music_figures(twin_mel, cfg)))
            cells = " | ".join(f"{rows[-1][0][f]:.3f} / {rows[-1][1][f]:.3f}" for f in FIGURES)
            print(f"| {Path(path).parent.name}/{Path(path).name} at {at:g} | {cells} |")
    medians = " | ".join(f"**{np.median([r[f] for r, _ in rows]):.3f} / {np.median([t[f] for _, t in rows]):.3f}**"
                         for f in FIGURES)
    print(f"| median of {len(rows)} | {medians} |")
    above = ", ".join(f"{f} {sum(r[f] > t[f] for r, t in rows)}" for f in FIGURES)
    print(f"noise_twin.py: clips above their twin: {above} (of {len(rows)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
