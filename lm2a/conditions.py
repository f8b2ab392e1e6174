"""Model conditions (motion features + lyric tokens) for one clip from raw inputs: an EasyMocap
smplfull.json and a lyric line, without a preprocessed clip npz (sample.py --motion/--lyrics).

The features come from the same functions stage 1 uses (lm2a.motion, lm2a.lyrics), applied the
same way: the whole song motion is repaired first (missing or NaN/inf frames filled from the
nearest frame), then the clip's frames are cut out and turned into features.
"""
from pathlib import Path

from lm2a.lyrics import LyricEncoder
from lm2a.motion import clip_frame_range, read_motion


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
    motion = read_motion(path, fps)  # smplfull.json or an AIST++ pkl
    frame_start, frame_end = clip_frame_range(start_s, t0_s, seconds, fps)
    problem = motion.span_problem(frame_start, frame_end, t0_s, fps)
    if problem:
        raise ConditionError(f"{path}: the clip {start_s:.3f}-{start_s + seconds:.3f} s {problem}; pick "
                             f"another --start or check --motion_t0 (the song time of motion frame 0)")
    features, repaired = motion.clip_features([frame_start], frame_end - frame_start, fps)
    encoder = encoder or LyricEncoder(text_encoder)
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
