"""Model conditions (motion features + lyric tokens) for one clip from raw inputs: an EasyMocap
smplfull.json and a lyric line, without a preprocessed clip npz (sample.py --motion/--lyrics).

The features come from the same functions stage 1 uses (lm2a.motion, lm2a.lyrics), applied the
same way: the whole song motion is repaired first (missing or NaN/inf frames filled from the
nearest frame), then the clip's frames are cut out and turned into features.
"""
from pathlib import Path

import numpy as np

from lm2a.motion import clip_frame_range, clip_motion_features, fill_nearest, load_smpl_json


class ConditionError(ValueError):
    pass


def conditions_from_raw(smpl_json_path, lyric_text, start_s, seconds=6.0, fps=30, text_encoder=None,
                        t0_s=0.0, encoder=None) -> dict:
    """Conditions of the clip [start_s, start_s + seconds) in song time, where motion frame 0 of
    `smpl_json_path` is at t0_s seconds (stage 1's MOTION_T0: the first lyric key's time).

    -> dict(motion (frames, 234) float32 at `fps`, lyrics (L, D) float32, lyrics_pooled (D,),
    lyric_text, start_s, end_s, frame_start, frame_end, fps, motion_repaired_frames,
    motion_path, motion_t0, text_encoder (display name), text_dim).
    `encoder`: an lm2a.lyrics.LyricEncoder to reuse; else one is built from `text_encoder`.
    Raises ConditionError when the motion does not cover the clip (MotionFileError on a bad file)."""
    path = Path(smpl_json_path)
    poses, _ = load_smpl_json(path)  # (F, 78), NaN rows for missing frames
    bad_frames = ~np.isfinite(poses).all(axis=1)
    poses, _, _ = fill_nearest(poses)
    frame_start, frame_end = clip_frame_range(start_s, t0_s, seconds, fps)
    n_frames = frame_end - frame_start
    if frame_start < 0:
        raise ConditionError(
            f"{path}: the clip starting at {start_s:.3f} s begins {-frame_start} motion frames before "
            f"motion frame 0 (at --motion_t0 {t0_s:.3f} s); pick a later --start or the right --motion_t0")
    if frame_end > len(poses):
        raise ConditionError(
            f"{path}: motion ends at frame {len(poses)} ({t0_s + len(poses) / fps:.3f} s in song time), "
            f"the clip {start_s:.3f}-{start_s + seconds:.3f} s needs frames {frame_start}-{frame_end}; "
            f"pick an earlier --start or check --motion_t0")
    features, repaired = clip_motion_features(poses, bad_frames, [frame_start], n_frames, fps)

    if encoder is None:
        from lm2a.lyrics import LyricEncoder
        encoder = LyricEncoder(text_encoder)
    tokens, pooled = encoder.encode([str(lyric_text)])
    return {
        "motion": features[0],                      # (frames, 234)
        "lyrics": tokens[0],                        # (L, D)
        "lyrics_pooled": pooled[0],                 # (D,)
        "lyric_text": str(lyric_text),
        "start_s": float(start_s), "end_s": float(start_s) + float(seconds),
        "frame_start": int(frame_start), "frame_end": int(frame_end), "fps": int(fps),
        "motion_repaired_frames": int(repaired[0]),
        "motion_path": str(path), "motion_t0": float(t0_s),
        "text_encoder": encoder.name, "text_dim": int(encoder.dim),
    }
