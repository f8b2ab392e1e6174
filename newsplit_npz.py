"""Stage 2: split clips/ into train/ val/ test/, by song by default (no song in two sets).

    python newsplit_npz.py --npz_dir data/lm2a/clips --out_dir data/split

Clips of one song share singer, mix and dance style; splitting clips at random would put near-copies
of training clips in the test set. The split is seeded: the same seed gives the same split. Writes
OUT/{train,val,test}/ (copies by default; --link hard-links, --move moves), OUT/{train,val,test}.txt
and OUT/split.json. Refuses a non-empty OUT without --force.

A clip's song is its npz's `song` key (AIST++: the music id, danced by many sequences), else the
name's part before `__` (JustLMD). AIST++ clips have presets: `--preset aistpp` is the official
music-held-out split (clips of the held-out music ids go to val/test, their sequences divided half
and half, all others to train; --ratios unused); `--preset aistpp-random` is a seeded random split
by sequence with --ratios, as several papers used: music ids leak between sets (split.json counts them).
"""
import argparse
import json
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from tqdm import tqdm

from lm2a.aistpp import HELD_OUT_MUSIC, canonical, find_official_lists, read_official_lists
from lm2a.clipio import clip_sequence, clip_song, list_clip_files

# ---- defaults (edit here or pass --flag) --------------------------------------------------------
NPZ_DIR = "data/lm2a/clips"   # stage-1 clips
OUT_DIR = "data/split"        # train/ val/ test/ go here
BY = "song"                   # "song": no song in two sets; "clip": plain shuffle (leaks songs)
SEED = 42                     # same seed, same split
RATIOS = "0.7,0.2,0.1"        # train, val, test
MODE = "copy"                 # copy | link | move
PRESET = None                 # None | "aistpp" (official music-held-out split) | "aistpp-random"
SEARCH_ORDERS = 256           # seeded song orders tried by the song splitter; the most balanced wins
SETS = ("train", "val", "test")
PRESETS = ("aistpp", "aistpp-random")
SEQUENCE_LISTS = "auto"       # aistpp: folder of crossmodal_{train,val,test}.txt ("auto": the AIST++ root's splits/, "" = the held-out music rule)
LEFT_OUT = -1                 # set index of a clip in no official list
PROGRESS_FROM = 300           # a progress bar while reading more clip files than this


def _deviation(sizes, targets):
    d = np.abs(np.asarray(sizes, float) - targets)
    return (d.max(), (d ** 2).sum())


def split_by_song(songs_sizes, ratios, seed, orders=SEARCH_ORDERS):
    """songs_sizes {song: n_clips} -> {song: set index}. Tries `orders` seeded song orders; in each,
    songs go one by one to the set furthest below its clip target; keeps the assignment whose worst
    set is closest to its target. Every set with a positive ratio gets a song when there are enough."""
    songs = sorted(songs_sizes)
    sizes = np.array([songs_sizes[s] for s in songs])
    ratios = np.asarray(ratios, float) / np.sum(ratios)
    targets = ratios * sizes.sum()
    need = ratios > 0
    rng = np.random.default_rng(seed)
    best, best_dev = None, None
    for _ in range(orders):
        order = rng.permutation(len(songs))
        got = np.zeros(len(ratios))
        assign = np.empty(len(songs), int)
        for k, i in enumerate(order):
            empty = need & (got == 0)
            left = len(order) - k
            if empty.sum() >= left:  # just enough songs left to give each empty set one
                j = int(np.flatnonzero(empty)[0])
            else:
                deficit = np.where(need, targets - got, -np.inf)
                j = int(np.argmax(deficit))
            assign[i] = j
            got[j] += sizes[i]
        dev = _deviation(got, targets)
        if best_dev is None or dev < best_dev:
            best, best_dev = assign.copy(), dev
    return {s: int(j) for s, j in zip(songs, best)}


def split_by_clip(n, ratios, seed):
    """-> set index per clip (plain seeded shuffle, cumulative rounding)."""
    ratios = np.asarray(ratios, float) / np.sum(ratios)
    bounds = np.round(np.cumsum(ratios) * n).astype(int)
    order = np.random.default_rng(seed).permutation(n)
    assign = np.empty(n, int)
    start = 0
    for j, end in enumerate(bounds):
        assign[order[start:end]] = j
        start = end
    return assign


def split_aistpp(songs, sequences, seed, held_out=HELD_OUT_MUSIC, where="clips"):
    """AIST++'s music-held-out split. songs, sequences: one per clip -> set index per clip. Clips of a
    held-out music id go to val or test, the others to train; the sequences of each held-out music id
    are divided, seeded, half to val and half to test (the odd one, or a lone one, to test)."""
    held = sorted({(m, q) for m, q in zip(songs, sequences) if m in held_out})
    if not held:
        found = sorted(set(songs))
        shown = ", ".join(found[:10]) + (f", ... ({len(found)} in all)" if len(found) > 10 else "")
        raise ValueError(f"{where}: --preset aistpp found no clip of a held-out AIST++ music id "
                         f"({' '.join(held_out)}), only songs {shown}: not AIST++ clips? split them "
                         f"without --preset")
    rng = np.random.default_rng(seed)
    seq_set = {}
    for music in sorted({m for m, _ in held}):
        seqs = [q for m, q in held if m == music]
        for k, i in enumerate(rng.permutation(len(seqs))):
            seq_set[(music, seqs[i])] = 1 if k < len(seqs) // 2 else 2
    return [seq_set.get((m, q), 0) for m, q in zip(songs, sequences)]


def split_by_lists(sequences, lists):
    """The official split: each clip to the set whose list names its sequence (camera-independent),
    LEFT_OUT when no list does (the official lists leave some sequences out)."""
    index = {q: k for k, name in enumerate(SETS) for q in lists[name]}
    return [index.get(canonical(q), LEFT_OUT) for q in sequences]


def official_lists(args):
    """--sequence_lists resolved: (folder or None, {set: names} or None)."""
    if args.preset != "aistpp" or not args.sequence_lists:
        return None, None
    folder = find_official_lists(args.npz_dir) if args.sequence_lists == "auto" else Path(args.sequence_lists)
    return (folder, read_official_lists(folder)) if folder is not None else (None, None)


def split_by_group(groups, ratios, seed):
    """groups: one name per clip -> set index per clip; whole groups shuffled (split_by_clip on them)."""
    names = sorted(set(groups))
    group_set = dict(zip(names, split_by_clip(len(names), ratios, seed)))
    return [int(group_set[g]) for g in groups]


def make_split(files, by="song", ratios=(0.7, 0.2, 0.1), seed=SEED, preset=None, songs=None, lists=None):
    """-> {set name: [paths]}. `songs` {path: clip_song(path)} when already read; `preset` overrides `by`;
    `lists` (aistpp): the official sequence lists {set: names}, used instead of the held-out music rule."""
    songs = songs if songs is not None else read_songs(files)
    song_list = [songs[p] for p in files]
    if preset == "aistpp" and lists is not None:
        idx = split_by_lists([clip_sequence(p) for p in files], lists)
    elif preset == "aistpp":
        idx = split_aistpp(song_list, [clip_sequence(p) for p in files], seed,
                           where=Path(files[0]).parent if files else "clips")
    elif preset == "aistpp-random":
        idx = split_by_group([clip_sequence(p) for p in files], ratios, seed)
    elif preset is not None:
        raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    elif by == "song":
        song_set = split_by_song(Counter(song_list), ratios, seed)
        idx = [song_set[s] for s in song_list]
    elif by == "clip":
        idx = split_by_clip(len(files), ratios, seed)
    else:
        raise ValueError(f"--by must be 'song' or 'clip', got {by!r}")
    return {name: [p for p, j in zip(files, idx) if j == k] for k, name in enumerate(SETS)}


def read_songs(files):
    """{path: clip_song(path)}, each file read once (a progress bar for many files)."""
    bar = tqdm(files, desc="songs", unit="clip", disable=len(files) <= PROGRESS_FROM, leave=False)
    return {p: clip_song(p) for p in bar}


def song_leaks(sets, songs):
    """Number of songs with clips in more than one set."""
    where = Counter(s for paths in sets.values() for s in {songs[p] for p in paths})
    return sum(1 for n in where.values() if n > 1)


def place(src, dst, mode):
    if mode == "copy":
        shutil.copy2(src, dst)
    elif mode == "link":
        try:
            os.link(src, dst)
        except OSError:  # other filesystem: fall back to a symbolic link
            os.symlink(Path(src).resolve(), dst)
    elif mode == "move":
        shutil.move(src, dst)
    else:
        raise ValueError(mode)


def parse_ratios(text):
    try:
        r = [float(x) for x in str(text).split(",")]
    except ValueError:
        r = []
    if len(r) != 3 or any(x < 0 for x in r) or sum(r) <= 0:
        raise ValueError(f"--ratios must be three non-negative numbers like 0.7,0.2,0.1, got {text!r}")
    return r


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--npz_dir", default=NPZ_DIR)
    p.add_argument("--out_dir", default=OUT_DIR)
    p.add_argument("--by", choices=("song", "clip"), default=BY, help="ignored with --preset")
    p.add_argument("--preset", choices=PRESETS, default=PRESET,
                   help="AIST++ splits: aistpp = official music-held-out split (ignores --ratios), "
                        "aistpp-random = seeded split by sequence with --ratios (music ids leak)")
    p.add_argument("--sequence_lists", default=SEQUENCE_LISTS,
                   help="--preset aistpp: folder of AIST++'s crossmodal_{train,val,test}.txt (auto: the splits/ "
                        "folder of the AIST++ root the clips came from; '' = the held-out music rule)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--ratios", default=RATIOS, help="train,val,test (unused by --preset aistpp)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--link", dest="mode", action="store_const", const="link", help="hard-link files")
    g.add_argument("--move", dest="mode", action="store_const", const="move", help="move files")
    p.set_defaults(mode=MODE)
    p.add_argument("--force", action="store_true", help="write into a non-empty out_dir (replaces sets)")
    return p


def prepare_out(out, force):
    """Refuses a non-empty `out` unless `force`; with it, removes the old split's sets and lists."""
    if out.exists() and any(out.iterdir()):
        if not force:
            raise ValueError(f"{out}: not empty; pass --force to replace its split, or choose another --out_dir")
        for name in SETS:
            shutil.rmtree(out / name, ignore_errors=True)
            (out / f"{name}.txt").unlink(missing_ok=True)


def write_split(sets, songs, out, args, ratios, lists_dir=None, left_out=0):
    """Places the files, writes the lists and split.json; -> the summary dict."""
    by = "sequence" if args.preset else args.by
    summary = {"npz_dir": str(Path(args.npz_dir).resolve()), "preset": args.preset, "by": by,
               "seed": args.seed, "ratios": None if args.preset == "aistpp" else ratios,
               "mode": args.mode, "sets": {}}
    if args.preset == "aistpp":
        summary["held_out_music"] = list(HELD_OUT_MUSIC)
        summary["sequence_lists"] = str(lists_dir) if lists_dir else None
        summary["rule"] = ("the official sequence lists" if lists_dir else
                           "held-out music: its sequences halved between val and test, all other music in train")
        summary["left_out"] = left_out
    if args.preset == "aistpp-random":
        summary["leaks"] = {"songs_in_several_sets": song_leaks(sets, songs),
                            "note": "split by sequence at random: one music id can be in train and "
                                    "val/test (as several papers did); --preset aistpp holds music out"}
    for name, paths in sets.items():
        (out / name).mkdir(parents=True, exist_ok=True)
        for p in paths:
            place(p, out / name / p.name, args.mode)
        (out / f"{name}.txt").write_text("".join(f"{p.name}\n" for p in paths))
        summary["sets"][name] = {"clips": len(paths), "songs": sorted({songs[p] for p in paths})}
    (out / "split.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv=None):
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    out = Path(args.out_dir)
    try:
        ratios = parse_ratios(args.ratios)
        files = list_clip_files(args.npz_dir)
        if not files:
            raise ValueError(f"{args.npz_dir}: no clip .npz files (<song>__<start_ms>.npz); run preprocess.py")
        songs = read_songs(files)
        lists_dir, lists = official_lists(args)
        sets = make_split(files, args.by, ratios, args.seed, args.preset, songs, lists)
        prepare_out(out, args.force)  # after the split: a failed one leaves the old split as it was
    except (ValueError, FileNotFoundError) as e:
        print(f"newsplit_npz: error: {e}", file=sys.stderr)
        return 2
    if args.preset == "aistpp" and args.ratios != RATIOS:
        print(f"newsplit_npz: note: --ratios {args.ratios} unused: --preset aistpp sizes val/test by the "
              f"held-out music", file=sys.stderr)
    n_other = sum(1 for p in Path(args.npz_dir).iterdir() if p.is_file()) - len(files)
    left_out = len(files) - sum(len(v) for v in sets.values())
    summary = write_split(sets, songs, out, args, ratios, lists_dir, left_out)
    desc = ", ".join(f"{k} {v['clips']} clips/{len(v['songs'])} songs" for k, v in summary["sets"].items())
    how = f"preset {args.preset}" if args.preset else f"by {args.by}"
    if args.preset == "aistpp":
        how += (f" from the official lists in {lists_dir} ({left_out} clips in no list left out)" if lists_dir
                else " by the held-out music rule (no official lists: pass --sequence_lists aist_plusplus_final/splits)")
    leak = (f"; {summary['leaks']['songs_in_several_sets']} songs (music ids) in several sets"
            if "leaks" in summary else "")
    print(f"newsplit_npz: read {len(files)} clips ({n_other} other files ignored), wrote {desc} "
          f"{how} (seed {args.seed}, {args.mode}){leak} -> {out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
