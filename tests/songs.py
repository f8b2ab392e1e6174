"""Writes tiny JustLMD-layout songs for tests: sine+click audio, smooth random motion, lyric keys."""
import json
from pathlib import Path

import numpy as np
import soundfile as sf


def fmt_time(t):
    m, s = divmod(t, 60)
    return f"{int(m):02d}:{s:06.3f}"


def write_song(song_dir, starts, lyrics=None, audio_seconds=None, motion_seconds=None, sr=22050,
               channels=1, fps=30, seed=0, end_pad=6.0, keys=None):
    """starts: lyric key times (s); the last key is added at starts[-1] + end_pad.
    audio covers audio_seconds (default: to the end key), motion covers from the first key for
    motion_seconds (default: to the end key). Returns dict with the arrays used."""
    d = Path(song_dir)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    end = starts[-1] + end_pad
    lyrics = lyrics or [f"line {i} of song {d.name}" for i in range(len(starts))]
    if keys is None:
        keys = {fmt_time(t): text for t, text in zip(starts, lyrics)}
        keys[fmt_time(end)] = ""
    (d / "sliced.json").write_text(json.dumps(keys))
    audio_seconds = end + 0.5 if audio_seconds is None else audio_seconds
    n = int(audio_seconds * sr)
    tt = np.arange(n) / sr
    wav = 0.3 * np.sin(2 * np.pi * (220 + 50 * seed) * tt) + 0.05 * rng.standard_normal(n)
    wav = np.stack([wav] * channels, 1) if channels > 1 else wav
    sf.write(d / "audio.wav", wav.astype(np.float32), sr, subtype="PCM_16")
    motion_seconds = (end - starts[0]) + 0.5 if motion_seconds is None else motion_seconds
    F = int(motion_seconds * fps)
    poses = np.cumsum(rng.standard_normal((F, 78)) * 0.01, axis=0)
    frames = {f"{i:06d}": {"annots": [{"id": 0, "poses": [poses[i, :72].tolist()],
                                       "Th": [poses[i, 72:75].tolist()], "Rh": [poses[i, 75:].tolist()],
                                       "shapes": [[0.0] * 10]}]} for i in range(F)}
    (d / "smplfull.json").write_text(json.dumps(frames))
    return {"poses": poses, "wav": wav, "sr": sr}
