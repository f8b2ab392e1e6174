"""SMPL motion: parsing EasyMocap smplfull.json and AIST++ motion pkl files, repairing gaps, and the (frames, 234) features.

Feature layout (DESIGN.md): [pose 78 | velocity 78 | acceleration 78], pose = 72 SMPL axis-angles
(24 joints x 3) + Th 3 + Rh 3, lightly smoothed in time; derivatives in units/s and units/s^2.
"""
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.spatial.transform import Rotation

from models.layout import JOINT_DIMS, MOTION_DIM, N_JOINTS, POSE_DIM, RH, TH, VELOCITY

SMOOTH_SIGMA = 1.0  # frames; light Gaussian smoothing before differentiating


class MotionFileError(ValueError):
    pass


def _first(v, n, what, key, path):
    """EasyMocap stores each vector as [[...]]; accept [[...]] or [...]."""
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    if a.size != n:
        raise MotionFileError(f"{path}: frame {key}: '{what}' has {a.size} values, expected {n}")
    return a


def parse_smpl_json(data, path="smplfull.json"):
    """EasyMocap dict {"000000": {"annots": [{"poses": [[72]], "Th": [[3]], "Rh": [[3]]}]}} (also a
    bare list of annots per frame) -> (poses (F, 78) float64 with NaN rows for missing frames,
    n_missing). Frame keys are integers; frames between the first (0) and the last key that are absent
    or have no person are missing. Non-integer keys are ignored."""
    if not isinstance(data, dict):
        raise MotionFileError(f"{path}: expected a JSON object of frames, got {type(data).__name__}")
    frames = {}
    for key, val in data.items():
        try:
            idx = int(key)
        except (TypeError, ValueError):
            continue
        if idx < 0:
            continue
        annots = val.get("annots", val) if isinstance(val, dict) else val
        if isinstance(annots, dict):
            annots = [annots]
        if not annots:
            continue
        a = annots[0]
        try:
            vec = np.concatenate([_first(a["poses"], JOINT_DIMS, "poses", key, path),
                                  _first(a["Th"], TH.stop - TH.start, "Th", key, path),
                                  _first(a["Rh"], RH.stop - RH.start, "Rh", key, path)])
        except (KeyError, TypeError) as e:
            raise MotionFileError(f"{path}: frame {key}: missing or malformed {e}") from e
        frames[idx] = vec
    if not frames:
        raise MotionFileError(f"{path}: no motion frames found")
    n = max(frames) + 1
    poses = np.full((n, POSE_DIM), np.nan)
    idx = np.fromiter(frames.keys(), dtype=np.int64)
    poses[idx] = np.stack(list(frames.values()))
    n_missing = int(n - len(frames))
    return poses, n_missing


def load_smpl_json(path):
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise MotionFileError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from e
    return parse_smpl_json(data, path)


def fill_nearest(x):
    """Replaces non-finite entries of x (F, D), per dimension, by the nearest finite frame's value
    (earlier frame on ties). Returns (filled, n_frames_repaired, n_values_repaired). Vectorised."""
    x = np.array(x, dtype=np.float64, copy=True)
    bad = ~np.isfinite(x)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return x, 0, 0
    n_frames_bad = int(bad.any(axis=1).sum())
    F = x.shape[0]
    frame_idx = np.arange(F)[:, None]
    good = ~bad
    # index of the last good frame at or before f, and of the first at or after f
    prev = np.where(good, frame_idx, -1)
    prev = np.maximum.accumulate(prev, axis=0)
    nxt = np.where(good, frame_idx, F)
    nxt = np.minimum.accumulate(nxt[::-1], axis=0)[::-1]
    has_prev, has_next = prev >= 0, nxt < F
    if not (has_prev | has_next).all():
        raise MotionFileError("a motion dimension has no finite value at all")
    d_prev = np.where(has_prev, frame_idx - prev, np.iinfo(np.int64).max)
    d_next = np.where(has_next, nxt - frame_idx, np.iinfo(np.int64).max)
    src = np.where(d_prev <= d_next, prev, nxt)
    cols = np.broadcast_to(np.arange(x.shape[1]), x.shape)
    x[bad] = x[src[bad], cols[bad]]
    return x, n_frames_bad, n_bad


def motion_features(poses, fps=30, sigma=SMOOTH_SIGMA):
    """poses (..., F, 78), finite -> (..., F, 234) float32 [pose | velocity /s | acceleration /s^2].
    Smoothing: Gaussian in time (sigma in frames, edges 'nearest'); derivatives by central
    differences inside and one-sided at the ends (numpy.gradient). A leading batch axis (clips)
    is processed in the same vectorised calls."""
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim < 2 or poses.shape[-1] != POSE_DIM:
        raise ValueError(f"poses must be (..., frames, {POSE_DIM}), got {poses.shape}")
    if poses.shape[-2] < 3:
        raise ValueError(f"need at least 3 frames for derivatives, got {poses.shape[-2]}")
    smooth = gaussian_filter1d(poses, sigma, axis=-2, mode="nearest") if sigma > 0 else poses
    dt = 1.0 / fps
    vel = np.gradient(smooth, dt, axis=-2)
    acc = np.gradient(vel, dt, axis=-2)
    return np.concatenate([smooth, vel, acc], axis=-1).astype(np.float32)


def mel_frame_times(n_frames, sr, hop):
    """Centre time (s) of each mel frame of bigvgan's mel: frame i starts at sample
    i*hop - (n_fft-hop)/2 (reflect padding) and spans n_fft samples, so its centre is i*hop + hop/2
    whatever n_fft is."""
    return (np.arange(n_frames) * hop + hop / 2.0) / sr


def resample_to_mel(motion, fps, n_mel_frames, sr, hop):
    """motion (F, D) at `fps` -> (n_mel_frames, D) by linear interpolation at the mel frame centres
    (vectorised; times past the last frame hold the last frame)."""
    motion = np.asarray(motion)
    F = motion.shape[0]
    pos = np.clip(mel_frame_times(n_mel_frames, sr, hop) * fps, 0, F - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, F - 1)
    w = (pos - i0).astype(motion.dtype)[:, None]
    return motion[i0] * (1 - w) + motion[i1] * w


def joint_angular_speeds(motion_feats):
    """(..., F, 234) features -> (..., F, 24) angular speed of each SMPL joint in rad/s: the norm of
    the joint's 3-d axis-angle velocity (velocity block columns 78:150), in the input's dtype."""
    motion_feats = np.asarray(motion_feats)
    if motion_feats.ndim < 2 or motion_feats.shape[-1] < 2 * POSE_DIM:
        raise ValueError(f"motion features must be (frames, {MOTION_DIM}), got {motion_feats.shape}")
    vel = motion_feats[..., VELOCITY][..., :JOINT_DIMS]  # (..., F, 72) joint axis-angle rates
    return np.linalg.norm(vel.reshape(*vel.shape[:-1], N_JOINTS, 3), axis=-1)


def joint_speed(motion_feats, smooth=0.0):
    """(..., F, 234) features -> (..., F) summed angular speed of the 24 SMPL joints in rad/s,
    Gaussian-smoothed in time over `smooth` frames (0 = none, edges 'nearest')."""
    speed = joint_angular_speeds(np.asarray(motion_feats, dtype=np.float64)).sum(axis=-1)
    if smooth > 0 and speed.shape[-1] > 1:
        speed = gaussian_filter1d(speed, smooth, axis=-1, mode="nearest")
    return speed


def clip_frame_range(start_s, t0_s, seconds, fps):
    """Motion frames [frame_start, frame_end) of a clip starting at start_s in song time, when motion
    frame 0 is at t0_s."""
    frame_start = int(round((start_s - t0_s) * fps))
    return frame_start, frame_start + int(round(seconds * fps))


def clip_motion_features(poses_filled, bad_frames, frame_starts, n_frames, fps):
    """Cuts clips out of a repaired song motion and computes their features in one batched call.
    poses_filled (F, 78) finite; bad_frames (F,) bool (frames that were missing or held NaN/inf);
    frame_starts (N,) ints with 0 <= s and s + n_frames <= F.
    -> (features (N, n_frames, 234) float32, repaired frames per clip (N,) int)."""
    idx = np.asarray(frame_starts, dtype=np.int64)[:, None] + np.arange(n_frames)[None, :]
    return motion_features(poses_filled[idx], fps), bad_frames[idx].sum(1)


# ---- a song's motion, read once: the one path from smplfull.json to clip features ---------------
@dataclass(frozen=True)
class SongMotion:
    """A song's motion as every stage reads it (stage 1, sample.py --motion, whole dances)."""
    path: Path
    poses: np.ndarray        # (F, 78) float64, finite: missing / NaN frames filled from the nearest
    bad_frames: np.ndarray   # (F,) bool: frames that were missing or held NaN/inf (counted per clip)
    missing_frames: int      # frame numbers absent from the file (or with no person)
    frames_repaired: int     # frames filled (missing ones included)
    nonfinite_values: int    # NaN/inf values in the frames present

    def __len__(self):
        return len(self.poses)

    def span_problem(self, frame_start, frame_end, t0_s, fps):
        """Why motion frames [frame_start, frame_end) are not all in this motion (None when they are);
        the caller names the clip and adds its own hint. Motion frame 0 is at t0_s in song time."""
        if frame_start < 0:
            return (f"starts {-frame_start} motion frames before motion frame 0 (at {t0_s:.3f} s in "
                    f"song time)")
        if frame_end > len(self):
            return (f"needs motion frames {frame_start}-{frame_end} but motion ends at frame {len(self)} "
                    f"({t0_s + len(self) / fps:.3f} s in song time)")
        return None

    def clip_features(self, frame_starts, n_frames, fps):
        """Clips of n_frames at frame_starts (each inside the motion), featurised on their own frames
        as stage 1 does. -> (features (N, n_frames, 234) float32, repaired frames per clip (N,) int)."""
        return clip_motion_features(self.poses, self.bad_frames, frame_starts, n_frames, fps)

    def span_features(self, frame_start, frame_end, fps):
        """Features of frames [frame_start, frame_end) computed over the WHOLE motion (one smoothing and
        one derivative, no clip edges: whole-dance generation). -> (features (frames, 234) float32,
        repaired frames in the span)."""
        features = motion_features(self.poses, fps)[frame_start:frame_end]
        return features, int(self.bad_frames[frame_start:frame_end].sum())


def song_motion(path) -> SongMotion:
    """smplfull.json -> its SongMotion: parsed, missing or non-finite frames marked and repaired.
    Raises MotionFileError naming the file."""
    poses, n_missing = load_smpl_json(path)  # (F, 78), NaN rows for missing frames
    bad_frames = ~np.isfinite(poses).all(axis=1)
    filled, frames_fixed, values_fixed = fill_nearest(poses)
    return SongMotion(path=Path(path), poses=filled, bad_frames=bad_frames, missing_frames=n_missing,
                      frames_repaired=frames_fixed, nonfinite_values=values_fixed - n_missing * POSE_DIM)


# ---- AIST++ motion (motions/<sequence>.pkl) -------------------------------------------------------
AIST_SOURCE_FPS = 60   # AIST++'s SMPL fits are at 60 fps (the pkl files do not say so)
AIST_PKL_KEYS = ("smpl_poses", "smpl_trans", "smpl_scaling")
_FPS_KEYS = ("fps", "frame_rate", "mocap_framerate")  # a frame rate some re-exports add to the pkl
# what a motion pkl may hold: numpy arrays and plain Python values, nothing that runs code on load
_SAFE_PICKLE = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
                ("numpy._core.numeric", "_frombuffer"), ("collections", "OrderedDict")}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _SAFE_PICKLE:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (a motion pkl holds arrays only)")


def read_aist_pkl(path):
    """The dict of an AIST++ motion pkl, loaded without running code from the file (numpy arrays and
    plain values only). Raises MotionFileError naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError) as e:
        raise MotionFileError(f"{path}: cannot read as an AIST++ motion pkl ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict):
        raise MotionFileError(f"{path}: expected a pickled dict with {', '.join(AIST_PKL_KEYS)}, "
                              f"got {type(data).__name__}")
    return data


def _aist_array(data, key, cols, path):
    if key not in data:
        raise MotionFileError(f"{path}: no '{key}' (keys: {', '.join(map(str, data)) or 'none'}); an AIST++ "
                              f"motion pkl holds {', '.join(AIST_PKL_KEYS)}")
    try:
        a = np.asarray(data[key], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise MotionFileError(f"{path}: '{key}' is not numeric ({e})") from e
    if cols is None:
        if a.size != 1:
            raise MotionFileError(f"{path}: '{key}' has {a.size} values, expected 1")
        return float(a.reshape(-1)[0])
    if a.ndim != 2 or a.shape[1] != cols or a.shape[0] == 0:
        raise MotionFileError(f"{path}: '{key}' has shape {a.shape}, expected (frames, {cols})")
    return a


def declared_fps(data, path):
    """The frame rate a pkl states (None when it states none, as AIST++'s own files)."""
    for k in _FPS_KEYS:
        if k in data:
            try:
                return float(np.asarray(data[k]).reshape(-1)[0])
            except (TypeError, ValueError, IndexError) as e:
                raise MotionFileError(f"{path}: '{k}' is not a frame rate ({e})") from e
    return None


def aist_poses(data, path):
    """An AIST++ pkl dict -> (F, 78) poses in EasyMocap's layout at the file's own rate: the 72 joint
    axis-angles with the root's (SMPL joint 0, `smpl_poses[:, :3]`) moved to Rh, as EasyMocap keeps the
    global orientation in Rh and zeros in poses[:3]; Th = smpl_trans / smpl_scaling (AIST++ fits a
    scaled body: dividing gives metres). NaN/inf are kept (the caller repairs and counts them)."""
    poses = _aist_array(data, "smpl_poses", JOINT_DIMS, path)
    trans = _aist_array(data, "smpl_trans", 3, path)
    scaling = _aist_array(data, "smpl_scaling", None, path)
    if len(trans) != len(poses):
        raise MotionFileError(f"{path}: smpl_poses has {len(poses)} frames but smpl_trans {len(trans)}")
    if not np.isfinite(scaling) or scaling <= 0:
        raise MotionFileError(f"{path}: smpl_scaling is {scaling}; it must be a positive number")
    out = np.empty((len(poses), POSE_DIM))
    out[:, :JOINT_DIMS] = poses
    out[:, :3] = 0.0
    out[:, RH] = poses[:, :3]
    out[:, TH] = trans / scaling
    return out


def resample_poses(poses, src_fps, dst_fps):
    """(F, 78) poses at src_fps -> (F', 78) at dst_fps, frame 0 kept at time 0, F' = the frames whose
    time is inside the source. Frames that fall on a source frame take its values unchanged (60 -> 30
    fps is every other frame); between frames the 24 joint rotations and Rh are slerped and Th is
    interpolated linearly. NaN rows stay NaN (repaired later)."""
    poses = np.asarray(poses, dtype=np.float64)
    if src_fps == dst_fps:
        return poses.copy()
    n = int(np.floor((len(poses) - 1) * dst_fps / src_fps + 1e-9)) + 1
    pos = np.arange(n) * (src_fps / dst_fps)
    i0 = np.floor(pos + 1e-9).astype(np.int64)
    w = pos - i0
    out = poses[i0].copy()
    between = w > 1e-9
    if between.any():
        a, b, wb = poses[i0[between]], poses[np.minimum(i0[between] + 1, len(poses) - 1)], w[between]
        out[between, TH] = a[:, TH] * (1 - wb[:, None]) + b[:, TH] * wb[:, None]
        rot = np.r_[np.arange(JOINT_DIMS), np.arange(RH.start, RH.stop)]
        ra = Rotation.from_rotvec(a[:, rot].reshape(-1, 3))
        rb = Rotation.from_rotvec(b[:, rot].reshape(-1, 3))
        step = (ra.inv() * rb).as_rotvec() * np.repeat(wb, len(rot) // 3)[:, None]
        out[np.ix_(np.flatnonzero(between), rot)] = (ra * Rotation.from_rotvec(step)).as_rotvec().reshape(len(wb), -1)
    return out


def aist_motion(path, fps=30, source_fps=AIST_SOURCE_FPS) -> SongMotion:
    """An AIST++ motion pkl -> its SongMotion at `fps` (repaired like smplfull.json's). A pkl that states
    a frame rate other than `source_fps` is refused: mixing rates in one dataset would mislabel time."""
    data = read_aist_pkl(path)
    stated = declared_fps(data, path)
    if stated is not None and abs(stated - source_fps) > 1e-6:
        raise MotionFileError(f"{path}: states {stated:g} fps but the dataset is read at {source_fps:g} fps "
                              f"(mixed frame rates); convert the file, or pass --source_fps {stated:g} if "
                              f"every file is at {stated:g} fps")
    raw = aist_poses(data, path)
    bad_src = ~np.isfinite(raw).all(axis=1)
    filled_src, _, _ = fill_nearest(raw)
    poses = resample_poses(filled_src, source_fps, fps)
    # a target frame is bad when a source frame it is made from was bad
    pos = np.arange(len(poses)) * (source_fps / fps)
    lo, hi = np.floor(pos + 1e-9).astype(np.int64), np.minimum(np.ceil(pos - 1e-9).astype(np.int64), len(raw) - 1)
    bad = bad_src[lo] | bad_src[hi]
    return SongMotion(path=Path(path), poses=poses, bad_frames=bad, missing_frames=0,
                      frames_repaired=int(bad.sum()), nonfinite_values=int((~np.isfinite(raw)).sum()))


def read_motion(path, fps=30, source_fps=AIST_SOURCE_FPS) -> SongMotion:
    """Any motion file the pipeline reads: an EasyMocap smplfull.json (JustLMD, 30 fps) or an AIST++
    motions/*.pkl (resampled from source_fps to fps)."""
    if Path(path).suffix.lower() == ".pkl":
        return aist_motion(path, fps, source_fps)
    return song_motion(path)
