"""The AIST++ dataset as it is downloaded: sequence names, music ids, genres and the ignore list.

    aist_plusplus_final/motions/<sequence>.pkl     SMPL at 60 fps (lm2a.motion.aist_motion reads it)
    aist_plusplus_final/ignore_list.txt            sequences whose fits are bad, one name per line
    aist_plusplus_final/splits/crossmodal_{train,val,test}.txt   the official sequence lists
    <music folder>/<music id>.wav (or .mp3)        AIST Dance DB music, e.g. mBR0.wav

A sequence name such as gBR_sBM_cAll_d04_mBR0_ch01 holds its genre (gBR), situation (sBM basic,
sFM advanced), camera (cAll), dancer (d04), music id (mBR0) and choreography (ch01). The dance starts
with the music: motion frame 0 is music time 0. There are no lyrics.
"""
import json
import re
from pathlib import Path

# the AIST Dance DB's ten genres (code -> name; the name is the lyric text of --lyric_text genre)
GENRES = {"gBR": "Break", "gPO": "Pop", "gLO": "Lock", "gMH": "Middle Hip-hop", "gLH": "LA style Hip-hop",
          "gHO": "House", "gWA": "Waack", "gKR": "Krump", "gJS": "Street Jazz", "gJB": "Ballet Jazz"}
# AIST++'s music-held-out test/val music (one id per genre; the AIST++ API's split settings, as used by
# FACT, Bailando, EDGE and the dance-to-music papers' crossmodal test set)
HELD_OUT_MUSIC = ("mBR0", "mPO1", "mLO2", "mMH3", "mLH4", "mHO5", "mWA0", "mKR2", "mJS3", "mJB5")
SEQUENCE = re.compile(r"^(?P<genre>g[A-Z]{2})_(?P<situation>s[A-Z]{2})_(?P<camera>c[A-Za-z0-9]+)_"
                      r"(?P<dancer>d\d+)_(?P<music>m[A-Z]{2}\d+)_(?P<choreo>ch\d+)$")
MUSIC_SUFFIXES = (".wav", ".mp3", ".flac", ".ogg")
IGNORE_LIST = "ignore_list.txt"
MOTIONS = "motions"


def parse_sequence(name):
    """'gBR_sBM_cAll_d04_mBR0_ch01' -> dict(genre, situation, camera, dancer, music, choreo); None when the
    name does not follow AIST++'s rule."""
    m = SEQUENCE.match(name)
    return m.groupdict() if m else None


def canonical(name):
    """The sequence name with its camera set to cAll (the ignore list and the motions use cAll; some
    copies of the list name one camera)."""
    info = parse_sequence(name)
    return name if info is None else name.replace(f"_{info['camera']}_", "_cAll_", 1)


def is_aistpp_root(root):
    """True when root looks like aist_plusplus_final/: a motions/ folder with .pkl files."""
    m = Path(root) / MOTIONS
    return m.is_dir() and any(p.suffix == ".pkl" for p in m.iterdir())


def read_ignore_list(root):
    """-> the canonical sequence names of root/ignore_list.txt (empty when there is none)."""
    path = Path(root) / IGNORE_LIST
    if not path.is_file():
        return set()
    text = path.read_text(encoding="utf-8", errors="replace").lstrip("\ufeff")
    return {canonical(line.strip()) for line in text.splitlines() if line.strip() and not line.startswith("#")}


def find_music_dir(root, music_dir=""):
    """The music folder: music_dir when given, else root/music, root/../music or root/../aist_music.
    Raises ValueError naming what was tried."""
    if music_dir:
        if not Path(music_dir).is_dir():
            raise ValueError(f"{music_dir}: --music_dir is not a folder (it should hold mBR0.wav, mPO1.wav, ...)")
        return Path(music_dir)
    tried = [Path(root) / "music", Path(root).parent / "music", Path(root).parent / "aist_music"]
    for d in tried:
        if d.is_dir():
            return d
    raise ValueError(f"{root}: no music folder found (tried {', '.join(map(str, tried))}); download the AIST "
                     f"Dance DB music and pass --music_dir <folder with mBR0.wav, ...>")


def music_files(music_dir):
    """{music id: path} of the audio files in music_dir (the first suffix of MUSIC_SUFFIXES wins)."""
    found = {}
    for suffix in reversed(MUSIC_SUFFIXES):
        for p in Path(music_dir).glob(f"*{suffix}"):
            found[p.stem] = p
    return found


def find_sequences(root, music_dir=""):
    """-> (sequences [dict(song=sequence name, music, genre, situation, dancer, motion, audio, year)],
    skipped [dict(path, reason, kind: stray | ignore_list | no_music)], music folder). Sequences in the
    ignore list, with a name outside AIST++'s rule or without a music file are skipped with their reason. Raises ValueError when
    root has no motions/ or nothing is usable."""
    root = Path(root)
    if not (root / MOTIONS).is_dir():
        raise ValueError(f"{root}: no {MOTIONS}/ folder; pass --data_root aist_plusplus_final (the folder "
                         f"holding {MOTIONS}/ and {IGNORE_LIST})")
    mdir = find_music_dir(root, music_dir)
    music, ignore = music_files(mdir), read_ignore_list(root)
    sequences, skipped = [], []
    for p in sorted((root / MOTIONS).iterdir()):
        info = parse_sequence(p.stem) if p.suffix == ".pkl" else None
        if p.suffix != ".pkl" or p.name.startswith((".", "_")):
            skipped.append({"path": str(p), "reason": "not a motion .pkl", "kind": "stray"})
        elif info is None:
            skipped.append({"path": str(p), "reason": "name is not an AIST++ sequence name "
                                                      "(g<genre>_s<situation>_c<camera>_d<dancer>_m<music>_ch<n>)",
                            "kind": "stray"})
        elif canonical(p.stem) in ignore:
            skipped.append({"path": str(p), "reason": f"in {root / IGNORE_LIST}", "kind": "ignore_list"})
        elif info["music"] not in music:
            skipped.append({"path": str(p), "reason": f"music {info['music']} not found: no "
                            f"{info['music']}{{{','.join(MUSIC_SUFFIXES)}}} in {mdir}", "kind": "no_music",
                            "song": p.stem})
        else:
            sequences.append(dict(song=p.stem, music=info["music"], genre=info["genre"],
                                  situation=info["situation"], dancer=info["dancer"], motion=str(p),
                                  audio=str(music[info["music"]]), year="", dir=str(p)))
    if not sequences:
        reasons = sorted({s["reason"] for s in skipped})[:3]
        raise ValueError(f"{root}: no usable AIST++ sequence ({len(skipped)} skipped: {'; '.join(reasons)})")
    return sequences, skipped, mdir


def genre_text(genre):
    """The lyric text of a genre code (--lyric_text genre): e.g. 'gBR' -> 'Break'."""
    return GENRES.get(genre, genre)


# ---- the official sequence lists (aist_plusplus_final/splits/crossmodal_{train,val,test}.txt) -------
SPLITS_DIR = "splits"
OFFICIAL_LISTS = {"train": "crossmodal_train.txt", "val": "crossmodal_val.txt", "test": "crossmodal_test.txt"}
PREPROCESS_REPORT = "preprocess_report.json"   # stage 1's report beside clips/: names the data root


def read_official_lists(folder):
    """{train|val|test: set of canonical sequence names} from folder/crossmodal_*.txt. Raises ValueError
    naming a missing file or a sequence listed in two sets."""
    out = {}
    for name, fname in OFFICIAL_LISTS.items():
        path = Path(folder) / fname
        if not path.is_file():
            raise ValueError(f"{path}: missing; --sequence_lists needs {', '.join(OFFICIAL_LISTS.values())} "
                             f"(aist_plusplus_final/{SPLITS_DIR}/)")
        text = path.read_text(encoding="utf-8", errors="replace").lstrip("\ufeff")
        out[name] = {canonical(line.strip()) for line in text.splitlines() if line.strip()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = out[a] & out[b]
        if both:
            raise ValueError(f"{folder}: {len(both)} sequence(s) in both {OFFICIAL_LISTS[a]} and "
                             f"{OFFICIAL_LISTS[b]} (e.g. {sorted(both)[0]})")
    return out


def find_official_lists(npz_dir):
    """The splits/ folder of the AIST++ root the clips of npz_dir came from (stage 1's report beside
    clips/ names it), or None when there is no report, it is not AIST++ or the root has no splits/."""
    report = Path(npz_dir).resolve().parent / PREPROCESS_REPORT
    try:
        data = json.loads(report.read_text())
    except (OSError, ValueError):
        return None
    folder = Path(data.get("data_root", "")) / SPLITS_DIR
    ok = data.get("format") == "aistpp" and all((folder / f).is_file() for f in OFFICIAL_LISTS.values())
    return folder if ok else None
