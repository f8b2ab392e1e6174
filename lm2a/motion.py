"""SMPL motion: parsing EasyMocap smplfull.json and AIST++ motion pkl files, repairing gaps, and the (frames, 234) features.

Feature layout (DESIGN.md): [pose 78 | velocity 78 | acceleration 78], pose = 72 SMPL axis-angles
(24 joints x 3) + Th 3 + Rh 3, lightly smoothed in time; derivatives in units/s and units/s^2.
"""
import io
import json
import pickle
import re
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.spatial.transform import Rotation

from models.layout import JOINT_DIMS, MOTION_DIM, N_JOINTS, POSE_DIM, RH, TH, VELOCITY

SMOOTH_SIGMA = 1.0  # frames; light Gaussian smoothing before differentiating
FEATURE_BLOCK = 8192  # frames whose features SongMotion.span_features computes in one call
# frames of context a block needs each side: the Gaussian's radius (scipy truncates at 4 sigma) and one
# frame for each of the two central differences
FEATURE_HALO = int(4.0 * SMOOTH_SIGMA + 0.5) + 2


# a pose value beyond this is a corrupt file, not a motion (axis-angles in radians, Th in metres); it also
# keeps the float32 features (velocity x fps, acceleration x fps^2) finite
MAX_ABS_POSE = 1e4
JSON_CHUNK = 1 << 22  # characters of smplfull.json read at a time (a long song's file is hundreds of MB)
_JSON_SPACE = re.compile(r"[ \t\n\r]*")


class MotionFileError(ValueError):
    pass


def _has_bool(v, a):
    """Whether the nested list v (read by numpy into a) holds a JSON true/false: numpy reads them as 1/0
    in a list of numbers, so only the 0s and 1s are looked at."""
    hits = np.flatnonzero((a == 0) | (a == 1))
    if hits.size == 0:
        return False
    flat = np.asarray(v, dtype=object).reshape(-1)
    return any(type(flat[i]) is bool for i in hits)


def _first(v, n, what, key, path):
    """EasyMocap stores each vector as [[...]]; accept [[...]] or [...] of n JSON numbers."""
    try:
        a = np.asarray(v)
    except ValueError as e:  # ragged nesting
        raise MotionFileError(f"{path}: frame {key}: '{what}' is not a list of numbers ({e})") from e
    if a.dtype.kind not in "iuf":
        held = {"b": "true/false", "U": "text", "S": "text"}.get(a.dtype.kind, "null or nested lists")
        raise MotionFileError(f"{path}: frame {key}: '{what}' is not a list of numbers (it holds {held})")
    if a.size != n:
        raise MotionFileError(f"{path}: frame {key}: '{what}' has {a.size} values, expected {n}")
    if _has_bool(v, a):
        raise MotionFileError(f"{path}: frame {key}: '{what}' is not a list of numbers (it holds true/false)")
    return a.astype(np.float64).reshape(-1)


def _frame_vector(key, val, path):
    """A frame's value ({"annots": [person, ...]}, a bare list of people, or one person) -> the first
    person's (78,) pose, or None when the frame holds nobody (annots empty or null)."""
    annots = val.get("annots", val) if isinstance(val, dict) else val
    if isinstance(annots, dict):
        annots = [annots]
    if annots is None or annots == []:
        return None
    if not isinstance(annots, list) or not isinstance(annots[0], dict):
        got = type(annots[0] if isinstance(annots, list) else annots).__name__
        raise MotionFileError(f"{path}: frame {key}: expected a list of people (objects with poses, Th and Rh), "
                              f"found a {got}")
    a = annots[0]
    missing = [k for k in ("poses", "Th", "Rh") if k not in a]
    if missing:
        raise MotionFileError(f"{path}: frame {key}: missing {', '.join(missing)}")
    return np.concatenate([_first(a["poses"], JOINT_DIMS, "poses", key, path),
                           _first(a["Th"], TH.stop - TH.start, "Th", key, path),
                           _first(a["Rh"], RH.stop - RH.start, "Rh", key, path)])


def _check_magnitude(values, path, where="frame", limit=MAX_ABS_POSE, block=1 << 14):
    """Raises MotionFileError naming the first frame (row) of values holding a finite value beyond limit
    (block rows at a time: no full-size temporaries)."""
    for first in range(0, len(values), block):
        part = values[first:first + block]
        with np.errstate(invalid="ignore"):
            big = (np.abs(part) > limit) & np.isfinite(part)
        if big.any():
            f, d = np.argwhere(big)[0]
            raise MotionFileError(f"{path}: {where} {first + f}: value {part[f, d]:g} (column {d}) is beyond "
                                  f"+-{limit:g}: not an SMPL motion (axis-angles are radians, translations "
                                  f"metres); a corrupt file")


def _collect_frames(pairs, path):
    """(key, value) pairs of an EasyMocap file -> (poses (F, 78) with NaN rows for missing frames, n_missing).
    Keys of ASCII digits are frame numbers (others are ignored); a number given twice is an error."""
    idx, values, seen = [], array("d"), set()
    for key, val in pairs:
        if not (isinstance(key, str) and key.isascii() and key.isdigit()):
            continue
        i = int(key)
        if i in seen:
            raise MotionFileError(f"{path}: frame {i} is given twice (key {key!r}); keep one")
        seen.add(i)
        vec = _frame_vector(key, val, path)
        if vec is not None:
            idx.append(i)
            values.frombytes(vec.tobytes())
    if not idx:
        raise MotionFileError(f"{path}: no motion frames found")
    n = max(idx) + 1
    if n - len(idx) > len(idx):  # also keeps a typo such as "9999999" from allocating gigabytes
        raise MotionFileError(f"{path}: frame numbers run to {n - 1} but only {len(idx)} frames hold a person "
                              f"(more than half missing); check the frame keys")
    read = np.frombuffer(values, dtype=np.float64).reshape(-1, POSE_DIM)  # no copy
    idx = np.asarray(idx, dtype=np.int64)
    if len(idx) == n and (idx == np.arange(n)).all():
        poses = read  # every frame, in order: the values as read (memory: the poses once)
    else:
        poses = np.full((n, POSE_DIM), np.nan)
        poses[idx] = read
    _check_magnitude(poses, path)
    return poses, int(n - len(idx))


def parse_smpl_json(data, path="smplfull.json"):
    """EasyMocap dict {"000000": {"annots": [{"poses": [[72]], "Th": [[3]], "Rh": [[3]]}]}} (also a
    bare list of annots per frame) -> (poses (F, 78) float64 with NaN rows for missing frames,
    n_missing). Frame keys are integers; frames between the first (0) and the last key that are absent
    or have no person are missing. Non-integer keys are ignored. Raises MotionFileError naming the file."""
    if not isinstance(data, dict):
        raise MotionFileError(f"{path}: expected a JSON object of frames, got {type(data).__name__}")
    return _collect_frames(data.items(), path)


class _JsonObjectReader:
    """The top-level object of a JSON file, pair by pair, with about JSON_CHUNK characters in memory at
    a time (one value at most more): a 2-hour smplfull.json is never read whole."""

    def __init__(self, f, path):
        self.f, self.path, self.buf, self.pos, self.line, self.eof = f, path, "", 0, 1, False
        self.decoder = json.JSONDecoder()

    def _more(self):
        """Appends the next chunk (at least as long as what is held: a huge value costs O(n)); False at EOF."""
        chunk = "" if self.eof else self.f.read(max(JSON_CHUNK, len(self.buf) - self.pos))
        if not chunk:
            self.eof = True
            return False
        self.line += self.buf.count("\n", 0, self.pos)
        self.buf, self.pos = self.buf[self.pos:] + chunk, 0
        return True

    def error(self, msg, pos=None):
        pos = self.pos if pos is None else pos
        line = self.line + self.buf.count("\n", 0, pos)
        return MotionFileError(f"{self.path}: invalid JSON ({msg} at line {line})")

    def peek(self):
        """The next character after whitespace ('' at the end of the file)."""
        while True:
            self.pos = _JSON_SPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or not self._more():
                return self.buf[self.pos:self.pos + 1]

    def expect(self, chars, what):
        c = self.peek()
        if not c or c not in chars:
            raise self.error(f"Expecting {what}")
        self.pos += 1
        return c

    def value(self):
        self.peek()
        while True:
            try:
                v, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                if self._more():
                    continue  # the value may go on in the next chunk
                raise self.error(e.msg, e.pos) from e
            except RecursionError as e:
                raise self.error("nested too deeply") from e
            if end < len(self.buf) or not self._more():  # a number at the end of the chunk may go on
                self.pos = end
                return v

    def pairs(self):
        if self.peek() != "{":
            raise MotionFileError(f"{self.path}: expected a JSON object of frames ('{{' first), found "
                                  f"{self.peek() or 'nothing'!r}")
        self.pos += 1
        if self.peek() == "}":
            self.pos += 1
        else:
            while True:
                if self.peek() != '"':
                    raise self.error("Expecting property name enclosed in double quotes")
                key = self.value()
                self.expect(":", "':' delimiter")
                yield key, self.value()
                if self.expect(",}", "',' delimiter") == "}":
                    break
        if self.peek():
            raise self.error("Extra data")


def load_smpl_json(path):
    """smplfull.json -> parse_smpl_json's (poses, n_missing), read in chunks (memory: the poses, not the
    file). A UTF-8 BOM is allowed. Raises MotionFileError naming the file."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            return _collect_frames(_JsonObjectReader(f, path).pairs(), path)
    except UnicodeDecodeError as e:
        raise MotionFileError(f"{path}: not UTF-8 text ({e}); save it as UTF-8") from e
    except OSError as e:
        raise MotionFileError(f"{path}: cannot read ({e.strerror or e})") from e


def fill_nearest(x, path=None):
    """Replaces non-finite entries of x (F, D), per dimension, by the nearest finite frame's value
    (earlier frame on ties). Returns (filled, n_frames_repaired, n_values_repaired). One dimension at a
    time over its bad values (memory: the copy of x and O(F) per dimension, even on a 2-hour motion).
    Raises MotionFileError (naming `path` when given) when a dimension has no finite value."""
    x = np.array(x, dtype=np.float64, copy=True)
    bad = ~np.isfinite(x)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return x, 0, 0
    n_frames_bad = int(bad.any(axis=1).sum())
    for dim in np.flatnonzero(bad.any(axis=0)):
        good, holes = np.flatnonzero(~bad[:, dim]), np.flatnonzero(bad[:, dim])
        if good.size == 0:
            raise MotionFileError(f"{path + ': ' if path else ''}motion dimension {dim} has no finite value in "
                                  f"any frame (NaN/inf or missing everywhere): nothing to repair it from")
        k = np.searchsorted(good, holes)  # good[k - 1] < hole < good[k]
        prev, nxt = good[np.maximum(k - 1, 0)], good[np.minimum(k, good.size - 1)]
        use_prev = (k > 0) & ((k == good.size) | (holes - prev <= nxt - holes))
        x[holes, dim] = x[np.where(use_prev, prev, nxt), dim]
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


def mel_frame_times(n_frames, sr, hop, first=0):
    """Centre time (s) of each mel frame (first, first + 1, ...) of bigvgan's mel: frame i starts at sample
    i*hop - (n_fft-hop)/2 (reflect padding) and spans n_fft samples, so its centre is i*hop + hop/2
    whatever n_fft is."""
    return (np.arange(first, first + n_frames) * hop + hop / 2.0) / sr


def resample_to_mel(motion, fps, n_mel_frames, sr, hop, block=1 << 14):
    """motion (F, D) at `fps` -> (n_mel_frames, D) by linear interpolation at the mel frame centres
    (vectorised, `block` output frames at a time: no whole-dance temporaries; times past the last frame
    hold the last frame)."""
    motion = np.asarray(motion)
    F = motion.shape[0]
    out = np.empty((n_mel_frames,) + motion.shape[1:], dtype=motion.dtype)
    for first in range(0, n_mel_frames, block):
        n = min(block, n_mel_frames - first)
        pos = np.clip(mel_frame_times(n, sr, hop, first) * fps, 0, F - 1)
        i0 = np.floor(pos).astype(np.int64)
        i1 = np.minimum(i0 + 1, F - 1)
        w = (pos - i0).astype(motion.dtype)[:, None]
        out[first:first + n] = motion[i0] * (1 - w) + motion[i1] * w
    return out


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
        one derivative, no clip edges: whole-dance generation), FEATURE_BLOCK frames at a time with
        FEATURE_HALO frames of context each side: the same numbers as one call over all frames, without
        whole-motion float64 temporaries. -> (features (frames, 234) float32, repaired frames in the span)."""
        out = np.empty((frame_end - frame_start, MOTION_DIM), np.float32)
        for a in range(frame_start, frame_end, FEATURE_BLOCK):
            b = min(a + FEATURE_BLOCK, frame_end)
            lo, hi = max(0, a - FEATURE_HALO), min(len(self), b + FEATURE_HALO)
            out[a - frame_start:b - frame_start] = motion_features(self.poses[lo:hi], fps)[a - lo:b - lo]
        return out, int(self.bad_frames[frame_start:frame_end].sum())


def song_motion(path) -> SongMotion:
    """smplfull.json -> its SongMotion: parsed, missing or non-finite frames marked and repaired.
    Raises MotionFileError naming the file."""
    poses, n_missing = load_smpl_json(path)  # (F, 78), NaN rows for missing frames
    bad_frames = ~np.isfinite(poses).all(axis=1)
    filled, frames_fixed, values_fixed = fill_nearest(poses, str(path))
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
                ("numpy._core.numeric", "_frombuffer"), ("collections", "OrderedDict"),
                ("_codecs", "encode")}  # protocol 0-2 pickles written by Python 3 store bytes as _codecs.encode(str)


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
        raw = path.read_bytes()  # a few MB; unpickling from memory never trusts a length in the file
    except OSError as e:
        raise MotionFileError(f"{path}: cannot read ({e.strerror or e})") from e
    try:
        data = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as e:  # random bytes raise nearly anything: UnpicklingError, EOFError, OverflowError...
        raise MotionFileError(f"{path}: cannot read as an AIST++ motion pkl ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict):
        raise MotionFileError(f"{path}: expected a pickled dict with {', '.join(AIST_PKL_KEYS)}, "
                              f"got {type(data).__name__}")
    return data


def _numeric(value, what, path):
    """value as a float64 array; MotionFileError unless it holds only (real) numbers."""
    try:
        a = np.asarray(value)
    except (TypeError, ValueError) as e:
        raise MotionFileError(f"{path}: '{what}' is not numeric ({e})") from e
    if a.dtype.kind not in "iuf":
        raise MotionFileError(f"{path}: '{what}' is not numeric (dtype {a.dtype})")
    return a.astype(np.float64)


def _aist_array(data, key, cols, path):
    if key not in data:
        raise MotionFileError(f"{path}: no '{key}' (keys: {', '.join(map(str, data)) or 'none'}); an AIST++ "
                              f"motion pkl holds {', '.join(AIST_PKL_KEYS)}")
    a = _numeric(data[key], key, path)
    if cols is None:
        if a.size != 1:
            raise MotionFileError(f"{path}: '{key}' has {a.size} values, expected 1")
        return float(a.reshape(-1)[0])
    if a.ndim != 2 or a.shape[1] != cols or a.shape[0] == 0:
        raise MotionFileError(f"{path}: '{key}' has shape {a.shape}, expected (frames, {cols})")
    return a


def declared_fps(data, path):
    """The frame rate a pkl states (None when it states none, as AIST++'s own files). Raises
    MotionFileError when it is not one positive number."""
    for k in _FPS_KEYS:
        if k in data:
            a = _numeric(data[k], k, path).reshape(-1)
            if a.size != 1 or not np.isfinite(a[0]) or a[0] <= 0:
                raise MotionFileError(f"{path}: '{k}' is {data[k]!r}: not a frame rate (one positive number)")
            return float(a[0])
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
    _check_magnitude(poses, path, "smpl_poses frame")
    _check_magnitude(trans, path, f"smpl_trans (scaling {scaling:g}) frame", MAX_ABS_POSE * scaling)
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


def aist_source_poses(path, source_fps=AIST_SOURCE_FPS):
    """An AIST++ motion pkl -> its (F, 78) poses at the file's own rate (aist_poses). A pkl that states a
    frame rate other than `source_fps` is refused: mixing rates in one dataset would mislabel time."""
    data = read_aist_pkl(path)
    stated = declared_fps(data, path)
    if stated is not None and abs(stated - source_fps) > 1e-6:
        raise MotionFileError(f"{path}: states {stated:g} fps but the dataset is read at {source_fps:g} fps "
                              f"(mixed frame rates); convert the file, or pass --source_fps {stated:g} if "
                              f"every file is at {stated:g} fps")
    return aist_poses(data, path)


def aist_motion(path, fps=30, source_fps=AIST_SOURCE_FPS) -> SongMotion:
    """An AIST++ motion pkl -> its SongMotion at `fps` (repaired like smplfull.json's)."""
    raw = aist_source_poses(path, source_fps)
    bad_src = ~np.isfinite(raw).all(axis=1)
    filled_src, _, _ = fill_nearest(raw, str(path))
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
