"""Reading and writing the stage-1 clip files (DESIGN.md, 'Stage 1 output') and other npz files."""
import os
import tempfile
from pathlib import Path

import numpy as np

from lm2a import SCHEMA_VERSION

NUM_MELS = 80
MOTION_DIM = 234
# key -> (kind, check) ; check returns an error string or None
CLIP_KEYS = (
    "mel", "motion", "lyrics", "lyrics_pooled", "lyric_text", "song", "year", "start_s", "end_s",
    "frame_start", "frame_end", "sr", "hop_length", "fps", "mel_config", "text_encoder", "schema_version",
)
# keys a training/sampling consumer needs, with the expected rank and fixed trailing size
ARRAY_SHAPES = {
    "mel": (NUM_MELS, None),       # (80, T)
    "motion": (None, MOTION_DIM),  # (frames, 234)
    "lyrics": (None, None),        # (L, D)
}


_UMASK = os.umask(0)
os.umask(_UMASK)


class ClipFileError(ValueError):
    pass


def clip_name(song: str, start_s: float) -> str:
    return f"{song}__{int(round(start_s * 1000)):08d}"


def is_clip_file(path) -> bool:
    """A clip npz: `<song>__<start_ms>.npz` (not a generated `_gen.npz`, not motion_stats.npz)."""
    p = Path(path)
    return (p.suffix == ".npz" and "__" in p.stem and not p.stem.endswith("_gen")
            and not p.name.startswith((".", "_")))


def list_clip_files(directory):
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: not a directory (expected a folder of clip .npz files)")
    return sorted(p for p in d.iterdir() if p.is_file() and is_clip_file(p))


def save_npz_atomic(path, **arrays):
    """Writes `path` through a temp file in the same folder + rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.stem, suffix=".tmp.npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path, text):
    """Text file through a temp file + rename (reports, manifests, csv)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _str(x):
    return str(x.item() if hasattr(x, "item") else x)


def load_clip(path, keys=("mel", "motion", "lyrics"), check_schema=True) -> dict:
    """Loads a clip npz and checks the requested keys' presence and shapes. Errors name the file and
    the key, and say what to do. Arrays come back as float32 numpy arrays; scalars as python values."""
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # zipfile.BadZipFile, OSError, ValueError
        raise ClipFileError(f"{path}: cannot read npz ({e}); delete it and re-run preprocess.py") from e
    with z:
        out = {}
        for k in keys:
            if k not in z.files:
                raise ClipFileError(
                    f"{path}: missing key '{k}' (made by an older preprocess.py? re-run stage 1)")
            v = z[k]
            if k in ARRAY_SHAPES:
                want = ARRAY_SHAPES[k]
                if v.ndim != len(want) or any(w is not None and s != w for s, w in zip(v.shape, want)):
                    shape = "(" + ", ".join("*" if w is None else str(w) for w in want) + ")"
                    raise ClipFileError(f"{path}: key '{k}' has shape {v.shape}, expected {shape} "
                                        f"(re-run preprocess.py)")
                if not np.isfinite(v).all():
                    raise ClipFileError(f"{path}: key '{k}' holds NaN/inf values (re-run preprocess.py)")
                out[k] = v.astype(np.float32, copy=False)
            elif v.dtype.kind in "US":
                out[k] = _str(v)
            elif v.ndim == 0:
                out[k] = v.item()
            else:
                out[k] = v
        if check_schema and "schema_version" in z.files and int(z["schema_version"]) != SCHEMA_VERSION:
            raise ClipFileError(f"{path}: schema_version {int(z['schema_version'])}, this code reads "
                                f"{SCHEMA_VERSION} (re-run preprocess.py)")
    if "lyrics" in out and out["lyrics"].shape[0] == 0:
        raise ClipFileError(f"{path}: key 'lyrics' has no tokens (re-run preprocess.py)")
    return out
