"""Reading and writing the stage-1 clip files (FORMATS.md, 'Stage 1'), and the file helpers
every stage shares: the clip-name rule, atomic writes, strict JSON."""
import contextlib
import dataclasses
import errno
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from lm2a import MOTION_DIM, NUM_MELS, SCHEMA_VERSION

CLIP_NAME_SEP = "__"  # clip names are <song>__<start_ms>; song names never contain it
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


_UMASK = os.umask(0)  # read once at import: os.umask can only be read by setting it
os.umask(_UMASK)


class ClipFileError(ValueError):
    pass


DISK_FULL_ERRNOS = {errno.ENOSPC: "disk", errno.EDQUOT: "disk quota"}
WRITE_ADVICE = "free space there or write to another folder"


class DiskFullError(OSError):
    """A write that found the disk (or the user's quota) full, raised by atomic_file: the previous
    file is intact and the temp file removed. str() is one line naming the file, the space the write
    needed, the space free and what to do; path, needed, written and free (bytes) for callers."""

    def __init__(self, err, message, path=None, needed=0, written=0, free=None):
        super().__init__(err, message)
        self.message, self.path, self.needed, self.written, self.free = message, path, needed, written, free

    def __str__(self):
        return self.message


def fmt_bytes(n) -> str:
    """12345678 -> '11.8 MiB' (B, KiB, MiB, GiB)."""
    n, unit = float(n), "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            break
        n, unit = n / 1024, bigger
    return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"


def disk_full_cause(exc):
    """The OSError with errno ENOSPC or EDQUOT in `exc` or the exceptions behind it (torch.save
    turns the file's OSError into a RuntimeError 'unexpected pos' whose context it is), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def free_bytes(folder):
    """Free bytes for this user in `folder` (shutil.disk_usage), None where it cannot be read."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def disk_full_error(path, cause, written, expected=None, advice=WRITE_ADVICE) -> DiskFullError:
    """The DiskFullError of a write of `path` that failed with `cause` (ENOSPC/EDQUOT) after `written`
    bytes; expected: the file's expected size in bytes where known."""
    path = Path(path)
    free = free_bytes(path.parent)
    needed = max(expected or 0, written)
    need = f"about {fmt_bytes(needed)}" if expected else f"more than {fmt_bytes(written)}"
    kept = "; the previous file is intact" if path.exists() else ""
    message = (f"{path}: not written, the {DISK_FULL_ERRNOS[cause.errno]} is full ({os.strerror(cause.errno)}): "
               f"the file needs {need} ({fmt_bytes(written)} written when it filled), "
               f"{'?' if free is None else fmt_bytes(free)} free in {path.parent}{kept}; {advice}")
    return DiskFullError(cause.errno, message, path, needed, written, free)


def clip_name(song: str, start_s: float) -> str:
    """'<song>__<start_ms>' with start_ms zero-padded to 8 digits: the stem of the clip's npz."""
    return f"{song}{CLIP_NAME_SEP}{int(round(start_s * 1000)):08d}"


def parse_clip_name(name_or_path) -> tuple:
    """Clip name, file name or path ('<song>__<start_ms>[.npz]') -> (song, start_ms int).
    Raises ValueError when the name does not follow the rule."""
    name = Path(name_or_path).name
    if name.endswith(".npz"):
        name = name[:-len(".npz")]
    song, sep, start_ms = name.rpartition(CLIP_NAME_SEP)
    if not sep or not song or not start_ms.isdigit():
        raise ValueError(f"{name_or_path}: not a clip name '<song>{CLIP_NAME_SEP}<start_ms>'")
    return song, int(start_ms)


def song_of_clip(name_or_path) -> str:
    """The song of a clip name or path (see parse_clip_name)."""
    return parse_clip_name(name_or_path)[0]


def _clip_str(path, key):
    """The clip npz's string member `key` (only that member is read), or None when it has none."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            v = z[key] if key in z.files else None
    except Exception as e:  # zipfile.BadZipFile, OSError, ValueError
        raise ClipFileError(f"{path}: cannot read npz ({e}); delete it and re-run preprocess.py") from e
    if v is None:
        return None
    if v.dtype.kind not in "US" or v.size != 1 or not str(v.reshape(()).item()):
        raise ClipFileError(f"{path}: key '{key}' is {v.dtype} {v.shape}, expected a non-empty string "
                            f"(re-run preprocess.py)")
    return str(v.reshape(()).item())


def clip_song(path) -> str:
    """The clip's song: its npz's `song` key when present (AIST++: the music id, shared by many
    sequences), else the name's part before `__` (song_of_clip). Errors name the file."""
    song = _clip_str(path, "song")
    return song if song is not None else song_of_clip(path)


def clip_sequence(path) -> str:
    """The clip's sequence: its npz's `sequence` key when present (AIST++: one dancer dancing one
    piece), else the name's part before `__` (JustLMD: one sequence per song). Errors name the file."""
    seq = _clip_str(path, "sequence")
    return seq if seq is not None else song_of_clip(path)


def is_clip_file(path) -> bool:
    """A clip npz: `<song>__<start_ms>.npz` (not a generated `_gen.npz`, not motion_stats.npz, not a
    hidden or temporary file)."""
    p = Path(path)
    if p.suffix != ".npz" or p.name.startswith((".", "_")):
        return False
    try:
        parse_clip_name(p)
    except ValueError:
        return False
    return True


def list_clip_files(directory):
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: not a directory (expected a folder of clip .npz files)")
    return sorted(p for p in d.iterdir() if p.is_file() and is_clip_file(p))


@contextlib.contextmanager
def atomic_file(path, mode="wb", encoding=None, expected_size=None, advice=WRITE_ADVICE):
    """Opens a temp file beside `path` for writing and yields it; when the block ends without an
    exception the file is flushed, fsync'ed, given the usual permissions (0o666 & ~umask; mkstemp
    makes 0600) and renamed onto `path` (os.replace). On any exception the temp file is removed
    and `path` is left as it was: a reader never sees half a file. Creates missing folders. A full
    disk or quota (ENOSPC, EDQUOT) raises DiskFullError (one line: the file, the space it needed,
    `expected_size` where given, the space free, then `advice`: what to do).

        with atomic_file(path) as f:              # binary
            np.savez(f, **arrays)
        with atomic_file(path, "w", encoding="utf-8") as f:
            f.write(text)
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException as e:
        written = _remove_temp(tmp)
        cause = disk_full_cause(e)
        if cause is not None:
            raise disk_full_error(path, cause, written, expected_size, advice) from e
        raise


def _remove_temp(tmp) -> int:
    """Deletes atomic_file's temp file (if any) -> the bytes it held."""
    if tmp is None:
        return 0
    written = 0
    with contextlib.suppress(OSError):
        written = os.stat(tmp).st_size
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    return written


def save_npz_atomic(path, **arrays):
    """np.savez through atomic_file: a crash never leaves half a file."""
    expected = sum(np.asarray(a).nbytes for a in arrays.values())
    with atomic_file(path, "wb", expected_size=expected) as f:
        np.savez(f, **arrays)


def write_text_atomic(path, text):
    """UTF-8 text file through atomic_file (reports, manifests, csv)."""
    with atomic_file(path, "w", encoding="utf-8", expected_size=len(text.encode("utf-8"))) as f:
        f.write(text)


def json_safe(x):
    """Any mix of dicts, lists, tuples, dataclasses, Paths, numpy scalars/arrays and floats -> plain
    values json.dumps writes as strict JSON: dict keys -> str, tuples/arrays -> lists, Path -> str,
    numpy -> python, dataclass instances -> dicts (dataclasses.asdict), NaN -> None,
    +-inf -> "inf"/"-inf". Anything else is returned as it is."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        x = dataclasses.asdict(x)
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, Path):
        return str(x)
    return x


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
        null_lyric = "lyric_text" in z.files and _str(z["lyric_text"]) == ""
    # no tokens is the null lyric of a clip without lyrics (AIST++: lyric_text ""), else a broken file
    if "lyrics" in out and out["lyrics"].shape[0] == 0 and not null_lyric:
        raise ClipFileError(f"{path}: key 'lyrics' has no tokens (re-run preprocess.py)")
    return out
