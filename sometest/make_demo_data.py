"""Write a small, deterministic JustLMD-style dataset whose audio depends on its motion and lyrics.

    python sometest/make_demo_data.py --out demo/JustLMD [--songs 5] [--seconds 40] [--seed 0] [--force]

Layout (as DESIGN.md "Input: the JustLMD dataset"):
    <root>/Songs_2020|2021|2022/<song>/audio.wav     44100 Hz stereo or 22050 Hz mono, PCM_16
                                      /sliced.json   "mm:ss.fff" -> lyric line, keys >= 6 s apart
                                      /smplfull.json EasyMocap SMPL at 30 fps, frame 000000 = first lyric key
                                      /beats.json    ground truth (a stray file the pipeline must ignore)

How the conditions are audible:
- Motion -> percussion. The dancer moves from one "hit pose" to the next, one per beat, with a
  cosine ease so every joint stops exactly on the beat: the joint angular speed has a minimum (zero)
  at each beat, and the audio has a hit there. Leg movement into the beat sets the low thump's
  loudness, arm movement the bright noise burst's loudness, torso movement a darker noise layer.
- Lyrics -> tones. Each lyric line plays as a sequence of harmonic notes, one per word, evenly over
  the 6 s after its key. A word always gets the same pitch and timbre (md5 of the word), in every song.
"""
import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: models/ is in the repo root

from models.layout import JOINT_DIMS, POSE_DIM, RH, SMPL_JOINTS, TH  # noqa: E402

# ---- defaults of the command-line flags -------------------------------------------------------
OUT_DIR = "demo/JustLMD"     # dataset root to write (demo/ is git-ignored)
N_SONGS = 5                  # number of songs
SECONDS = 40.0               # audio length of each song in seconds
SEED = 0                     # master seed: same seed -> byte-identical files

# ---- fixed properties of the generated data ---------------------------------------------------
FPS = 30                     # motion frame rate (EasyMocap smplfull.json)
CLIP_SECONDS = 6.0           # the pipeline cuts this much from every lyric key but the last
KEY_GAP = (6.0, 6.5)         # spacing of lyric keys in seconds (never below CLIP_SECONDS)
FIRST_KEY = (1.5, 3.0)       # time of the first lyric key = time of motion frame 000000
END_MARGIN = 0.25            # the last key stays this far before the end of the audio
BPM_RANGE = (90.0, 140.0)    # per-song dance tempo
TEMPO_DRIFT = 0.04           # relative slow tempo wobble (sinusoidal, period 15-30 s)
PEAK = 0.8                   # peak sample value of every audio.wav
NOISE_FLOOR = 1e-3           # amplitude of the faint background noise (keeps log-mel off its clamp)
YEARS = ("Songs_2020", "Songs_2021", "Songs_2022")
FORMATS = ((44100, 2), (22050, 1))  # (sample rate, channels), alternating over songs

# Lyric vocabulary: short English lines from a few word classes, so words repeat across songs.
SUBJECTS = ["i", "you", "we", "they"]
VERBS = ["dance", "move", "shine", "fly", "run", "sing", "fall", "spin", "burn", "dream", "glow", "jump"]
PREPS = ["under", "into", "through", "across", "with", "over"]
NOUNS = ["night", "light", "fire", "rain", "moon", "sky", "heart", "stars", "sun", "floor", "city", "sea"]
ENDINGS = ["tonight", "again", "forever", "together", "now", "slow"]
TEMPLATES = [
    "{s} {v} {p} the {n}",
    "{s} {v} {p} the {n} {e}",
    "{v} {p} the {n} {e}",
    "{s} {v} {e}",
    "{s} {v} and {v2} {e}",
    "the {n} {v3} {e}",
]



def joint_indices(*names):
    """SMPL joint names -> their indices into the 24 joints of `poses` (models.layout.SMPL_JOINTS)."""
    return [SMPL_JOINTS.index(n) for n in names]


def joint_dims(joints):
    """Joint indices -> their axis-angle columns in a pose (3 per joint, in the order given)."""
    return np.concatenate([np.arange(3 * j, 3 * j + 3) for j in joints])


def left_right(*parts):
    """("hip",) -> ["left_hip", "right_hip"]."""
    return [f"{side}_{p}" for p in parts for side in ("left", "right")]


# SMPL joint groups: which limbs drive which hit layer.
LEG_JOINTS = joint_indices(*left_right("hip", "knee", "ankle", "foot"))                  # 1, 2, 4, 5, 7, 8, 10, 11
TORSO_JOINTS = joint_indices("spine1", "spine2", "spine3", "neck", "head")              # 3, 6, 9, 12, 15
ARM_JOINTS = joint_indices(*left_right("collar", "shoulder", "elbow", "wrist", "hand"))  # 13, 14, 16..23
GROUP_AMPLITUDE = {"legs": 0.7, "torso": 0.35, "arms": 1.1}  # radians moved into a beat at energy 1

# Musical scale for lyric notes: A minor pentatonic from A2 (110 Hz) to A5 (880 Hz).
PENTATONIC_MIDI = [m for m in range(45, 82) if (m - 45) % 12 in (0, 3, 5, 7, 10)]
MAX_PARTIAL_HZ = 7500.0      # harmonics above this are dropped (sound stays in 60-8000 Hz)


# ---- lyrics -----------------------------------------------------------------------------------

def _word_hash(word: str) -> int:
    return int(hashlib.md5(word.lower().encode("utf-8")).hexdigest(), 16)


def word_note(word: str) -> dict:
    """Pitch and timbre of a lyric word: the same in every song (md5 of the lower-cased word)."""
    h = _word_hash(word.strip(".,!?'\"").lower())
    midi = PENTATONIC_MIDI[h % len(PENTATONIC_MIDI)]
    return {
        "f0_hz": 440.0 * 2.0 ** ((midi - 69) / 12.0),
        "n_harmonics": 2 + (h >> 8) % 7,               # 2..8 partials
        "rolloff": 0.6 + 0.3 * ((h >> 16) % 5),        # partial k has amplitude 1 / k**rolloff
        "odd_only": bool((h >> 24) & 1),               # clarinet-like timbre
    }


def song_vocabulary(rng: np.random.Generator) -> dict:
    """A song's own subset of the vocabulary (songs differ, words still repeat across songs)."""
    pick = lambda words, n: [str(w) for w in rng.choice(words, size=n, replace=False)]  # noqa: E731
    return {"s": pick(SUBJECTS, 3), "v": pick(VERBS, 6), "p": pick(PREPS, 3),
            "n": pick(NOUNS, 5), "e": pick(ENDINGS, 3)}


def make_lyric_line(rng: np.random.Generator, vocab: dict) -> str:
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    v, v2 = rng.choice(vocab["v"], size=2, replace=False)
    v3 = v[:-1] + "ies" if v.endswith("y") else v + "s"                  # third person: flies, sings
    line = template.format(s=rng.choice(vocab["s"]), v=v, v2=v2, v3=v3, p=rng.choice(vocab["p"]),
                           n=rng.choice(vocab["n"]), e=rng.choice(vocab["e"]))
    return line[0].upper() + line[1:]


def format_key(t: float) -> str:
    """Seconds -> 'mm:ss.fff'."""
    ms = int(round(t * 1000))
    return f"{ms // 60000:02d}:{(ms % 60000) // 1000:02d}.{ms % 1000:03d}"


def make_lyric_keys(rng: np.random.Generator, seconds: float) -> list:
    """Key times in seconds (whole milliseconds): first at 1.5-3 s, then every 6.0-6.5 s."""
    keys = [round(rng.uniform(*FIRST_KEY), 3)]
    while True:
        nxt = round(keys[-1] + rng.uniform(*KEY_GAP), 3)
        if nxt > seconds - END_MARGIN:
            break
        keys.append(nxt)
    if len(keys) < 2:
        raise ValueError(f"{seconds} s is too short for one {CLIP_SECONDS:g} s clip: "
                         f"use at least {FIRST_KEY[1] + KEY_GAP[1] + END_MARGIN:g} s")
    return keys


# ---- motion -----------------------------------------------------------------------------------

def beat_phase(t: np.ndarray, bpm: float, phase0: float, drift_period: float, drift_phase: float):
    """Beat phase (beats counted since t=0) of a tempo bpm * (1 + TEMPO_DRIFT * sin(...)), exact integral."""
    w = 2 * np.pi / drift_period
    return phase0 + bpm / 60.0 * (t + TEMPO_DRIFT / w * (np.cos(drift_phase) - np.cos(w * t + drift_phase)))


def draw_tempo(rng: np.random.Generator) -> tuple:
    """A song's tempo: (bpm, drift_period, drift_phase, phase0) for beat_phase."""
    bpm = float(rng.uniform(*BPM_RANGE))
    drift_period, drift_phase, phase0 = rng.uniform(15, 30), rng.uniform(0, 2 * np.pi), rng.uniform(0, 1)
    return bpm, drift_period, drift_phase, phase0


def make_motion(rng: np.random.Generator, t0: float, seconds: float):
    """Beat-locked SMPL motion from t0 to the end of the audio, at a tempo drawn here (dance_to_tempo)."""
    return dance_to_tempo(rng, draw_tempo(rng), t0, seconds)


def dance_to_tempo(rng: np.random.Generator, tempo: tuple, t0: float, seconds: float, fps: float = FPS):
    """Beat-locked SMPL motion from t0 to `seconds` at `tempo` (draw_tempo), `fps` frames per second.

    Returns (frames (F, 78) = [poses 72 | Th 3 | Rh 3], shapes (10,), beats dict). Pose k is reached
    exactly at beat k with zero velocity (cosine ease between hit poses), so speed minima = beats.
    """
    bpm, drift_period, drift_phase, phase0 = tempo
    n_frames = int(np.floor((seconds - t0) * fps)) + 1
    frame_t = t0 + np.arange(n_frames) / fps
    phase = beat_phase(frame_t, bpm, phase0, drift_period, drift_phase)     # (F,)
    k_first, k_last = int(np.floor(phase[0])), int(np.floor(phase[-1])) + 1
    n_poses = k_last - k_first + 1

    # Per-song groove: energy of each limb group on each beat of a 4-beat bar, plus a little jitter.
    groove = {g: rng.uniform(0.25, 1.0, 4) for g in GROUP_AMPLITUDE}
    groove["legs"][0] = 1.0                                               # downbeat is a leg beat
    energy = {g: np.clip(groove[g][(np.arange(k_first, k_last + 1)) % 4]
                         + rng.normal(0, 0.08, n_poses), 0.2, 1.0) for g in GROUP_AMPLITUDE}

    base = np.zeros(POSE_DIM)
    base[3:JOINT_DIMS] = rng.normal(0, 0.1, JOINT_DIMS - 3)               # every joint but the pelvis
    left_shoulder, right_shoulder = joint_indices("left_shoulder", "right_shoulder")
    base[3 * left_shoulder + 2], base[3 * right_shoulder + 2] = -1.0, 1.0  # arms down (A-pose)
    base[TH] = [0.0, 0.9, 3.0]                                            # Th (m)
    groups = {"legs": LEG_JOINTS, "torso": TORSO_JOINTS, "arms": ARM_JOINTS}
    dims = {g: joint_dims(js) for g, js in groups.items()}

    poses = np.empty((n_poses, POSE_DIM))
    poses[0] = base
    for k in range(1, n_poses):
        pose = poses[k - 1].copy()
        for g, d in dims.items():
            amp = GROUP_AMPLITUDE[g]
            # random direction, pulled back towards the base pose so the dancer does not drift away
            direction = rng.normal(0, 1, d.size) - 1.5 * (pose[d] - base[d]) / amp
            pose[d] += energy[g][k] * amp * direction / np.linalg.norm(direction)
        sign = 1.0 if (k_first + k) % 2 else -1.0
        pose[TH] = base[TH] + [0.04 * sign * energy["torso"][k], -0.06 * energy["legs"][k], 0.0]
        pose[RH] = [0.0, 0.25 * sign * energy["torso"][k], 0.0]          # Rh: small yaw swings
        poses[k] = pose

    idx = np.floor(phase).astype(int) - k_first                           # (F,) pose before the frame
    ease = (0.5 - 0.5 * np.cos(np.pi * (phase - np.floor(phase))))[:, None]  # zero slope at beats
    frames = poses[idx] + (poses[idx + 1] - poses[idx]) * ease             # (F, 78)

    # Beats inside the motion span and what moved into each of them (this drives the hit sound).
    ks = np.arange(k_first + 1, int(np.floor(phase[-1])) + 1)            # beats after frame 0
    grid = np.linspace(t0, seconds, int((seconds - t0) * 2000) + 1)
    beat_t = np.interp(ks, beat_phase(grid, bpm, phase0, drift_period, drift_phase), grid)
    moved = {g: np.linalg.norm(poses[ks - k_first][:, d] - poses[ks - k_first - 1][:, d], axis=1)
             / GROUP_AMPLITUDE[g] for g, d in dims.items()}
    shapes = rng.normal(0, 0.5, 10)
    return frames, shapes, {"bpm": bpm, "times": beat_t, **moved}


def smpl_json(frames: np.ndarray, shapes: np.ndarray) -> dict:
    """(F, 78) -> EasyMocap smplfull dict {"000000": {"annots": [{id, poses, Th, Rh, shapes}]}, ...}."""
    frames = np.round(frames, 5)
    shapes = np.round(shapes, 5).tolist()
    return {f"{i:06d}": {"annots": [{"id": 0, "poses": [row[:JOINT_DIMS]], "Th": [row[TH]],
                                     "Rh": [row[RH]], "shapes": [shapes]}]}
            for i, row in enumerate(frames.tolist())}


def smpl_frames(smpl: dict) -> np.ndarray:
    """EasyMocap smplfull dict -> (F, 78) [poses 72 | Th 3 | Rh 3] in frame-number order."""
    keys = sorted(smpl, key=int)
    return np.array([smpl[k]["annots"][0]["poses"][0] + smpl[k]["annots"][0]["Th"][0]
                     + smpl[k]["annots"][0]["Rh"][0] for k in keys], dtype=np.float64)


def motion_speed(motion, fps: float = FPS) -> np.ndarray:
    """(F,) speed of the whole raw pose: norm of the time derivative of the 72 axis-angles + Th
    together, per second, unsmoothed. Not lm2a.motion.joint_speed (per-joint norms summed over the
    24 joints of the smoothed stage-1 features, root excluded): the generator checks its own raw
    output, where both vanish on the beats but differ in between."""
    x = smpl_frames(motion) if isinstance(motion, dict) else np.asarray(motion, dtype=np.float64)
    return np.linalg.norm(np.gradient(x[:, :TH.stop], axis=0), axis=1) * fps  # joints and Th


def motion_beat_times(motion, fps: float = FPS, window_s: float = 0.2) -> np.ndarray:
    """Times (s after frame 0) of the clear local minima of the motion speed: the dance's beats.

    motion: smplfull dict or an array (F, >=75) of [poses 72 | Th 3 | ...]. A minimum counts when it is
    below half of the largest speed within +-window_s; its time is refined by a parabola.
    """
    speed = motion_speed(motion, fps)
    s_prev, s_mid, s_next = speed[:-2], speed[1:-1], speed[2:]
    w = max(1, int(round(window_s * fps)))
    padded = np.pad(speed, w, mode="edge")
    local_max = np.lib.stride_tricks.sliding_window_view(padded, 2 * w + 1).max(axis=1)[1:-1]
    is_min = (s_mid < s_prev) & (s_mid <= s_next) & (s_mid < 0.5 * local_max)
    i = np.nonzero(is_min)[0]
    a, b, c = s_prev[i], s_mid[i], s_next[i]
    curvature = a - 2 * b + c
    offset = np.clip(np.where(curvature > 0, 0.5 * (a - c) / np.maximum(curvature, 1e-12), 0.0), -0.5, 0.5)
    return (i + 1 + offset) / fps


# ---- audio ------------------------------------------------------------------------------------

def hit_kernels(sr: int, rng: np.random.Generator) -> dict:
    """Three 120 ms percussive layers (peak ~1): low thump, bright noise burst, dark noise burst."""
    n = int(0.12 * sr)
    t = np.arange(n) / sr
    attack = np.minimum(1.0, t / 0.001)                                   # 1 ms: sharp onset
    sweep = 55.0 + 70.0 * np.exp(-t / 0.02)                               # 125 -> 55 Hz pitch drop
    thump = np.sin(2 * np.pi * np.cumsum(sweep) / sr) * np.exp(-t / 0.035) * attack
    noise = rng.normal(0, 1, (2, n))
    bright = signal.sosfilt(signal.butter(4, [3000, 7500], "bandpass", fs=sr, output="sos"), noise[0])
    dark = signal.sosfilt(signal.butter(4, [700, 2500], "bandpass", fs=sr, output="sos"), noise[1])
    bright *= np.exp(-t / 0.018) * attack
    dark *= np.exp(-t / 0.03) * attack
    return {"legs": thump / np.abs(thump).max(), "arms": bright / np.abs(bright).max(),
            "torso": dark / np.abs(dark).max()}


HIT_GAIN = {"legs": 0.8, "arms": 0.45, "torso": 0.3}  # loudness of each layer at movement energy 1


def render_hits(n_samples: int, sr: int, beats: dict, rng: np.random.Generator) -> np.ndarray:
    """One hit per beat, each layer scaled by how much its limb group moved into the beat, (N,)."""
    out = np.zeros(n_samples)
    pos = np.round(beats["times"] * sr).astype(int)
    ok = pos < n_samples
    for layer, kernel in hit_kernels(sr, rng).items():
        impulses = np.zeros(n_samples)
        np.add.at(impulses, pos[ok], HIT_GAIN[layer] * beats[layer][ok])
        out += signal.fftconvolve(impulses, kernel)[:n_samples]
    return out


def render_tones(n_samples: int, sr: int, keys: list, lines: list) -> tuple:
    """Lyric notes: each line's words in sequence over CLIP_SECONDS after its key. Returns (wave, notes)."""
    out = np.zeros(n_samples)
    notes = []
    for key, line in zip(keys, lines):
        words = line.split()
        span = min(CLIP_SECONDS, n_samples / sr - key)
        for j, word in enumerate(words):
            start, end = key + j * span / len(words), key + (j + 1) * span / len(words)
            a, b = int(round(start * sr)), int(round(end * sr))
            t = np.arange(b - a) / sr
            spec = word_note(word)
            partials = np.arange(1, spec["n_harmonics"] + 1)
            if spec["odd_only"]:
                partials = 2 * partials - 1
            partials = partials[partials * spec["f0_hz"] < MAX_PARTIAL_HZ]
            amps = 1.0 / partials ** spec["rolloff"]
            wave = (amps[:, None] * np.sin(2 * np.pi * spec["f0_hz"] * partials[:, None] * t)).sum(0)
            # soft 40 ms attack (no sharp onsets that would compete with the hits), 80 ms release
            env = np.minimum(1.0, t / 0.04) * np.minimum(1.0, (t[-1] - t) / 0.08 + 1e-9)
            env *= 1.0 - 0.3 * t / max(t[-1], 1e-9)                         # gentle decay over the note
            out[a:b] += 0.22 * wave / amps.sum() * env
            notes.append({"word": word.lower(), "start_s": round(start, 4), "end_s": round(end, 4),
                          "f0_hz": round(spec["f0_hz"], 3), "partials": partials.tolist()})
    return out, notes


def write_song(song_dir, seconds: float, sr: int, channels: int, seed: int) -> dict:
    """Write audio.wav, sliced.json, smplfull.json and beats.json of one song; return its summary."""
    song_dir = Path(song_dir)
    song_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    vocab = song_vocabulary(rng)
    keys = make_lyric_keys(rng, seconds)
    lines = [make_lyric_line(rng, vocab) for _ in keys]
    frames, shapes, beats = make_motion(rng, keys[0], seconds)

    n = int(round(seconds * sr))
    hits = render_hits(n, sr, beats, rng)
    tones, notes = render_tones(n, sr, keys, lines)
    pan = rng.uniform(-0.3, 0.3)                                          # tones slightly off-centre
    gains = [1.0 - max(pan, 0.0), 1.0 + min(pan, 0.0)] if channels == 2 else [1.0]
    mix = np.stack([hits + g * tones for g in gains], axis=1)             # (N, C)
    mix += NOISE_FLOOR * rng.normal(0, 1, mix.shape)
    mix *= PEAK / np.abs(mix).max()
    sf.write(song_dir / "audio.wav", mix.astype(np.float32), sr, subtype="PCM_16")

    (song_dir / "sliced.json").write_text(
        json.dumps({format_key(k): line for k, line in zip(keys, lines)}, indent=1) + "\n")
    (song_dir / "smplfull.json").write_text(json.dumps(smpl_json(frames, shapes), separators=(",", ":")))
    truth = {
        "note": "ground truth of the demo generator, not part of JustLMD; the pipeline must ignore it",
        "sr": sr, "channels": channels, "fps": FPS, "motion_t0_s": keys[0], "bpm": round(beats["bpm"], 3),
        "beat_times_s": np.round(beats["times"], 4).tolist(),
        "hit_energy": {g: np.round(beats[g], 3).tolist() for g in GROUP_AMPLITUDE},
        "lyric_notes": notes,
    }
    (song_dir / "beats.json").write_text(json.dumps(truth, indent=1) + "\n")
    return {"song_dir": song_dir, "seconds": seconds, "clips": len(keys) - 1, "beats": len(beats["times"])}


def song_name(i: int, seed: int) -> str:
    noun = NOUNS[np.random.default_rng([seed, i, 1]).integers(len(NOUNS))]
    return f"demo{i:02d}_{noun}"


def make_demo_dataset(root, n_songs: int = N_SONGS, seconds: float = SECONDS, seed: int = SEED,
                      force: bool = False, progress: bool = False) -> list:
    """Write n_songs songs under root (spread over Songs_2020/2021/2022); return their folders.

    Song i is 44100 Hz stereo when i is even, 22050 Hz mono when odd. An existing song folder is an
    error unless force=True (then only that folder is replaced; nothing else under root is touched).
    """
    root = Path(root)
    song_dirs = [root / YEARS[i % len(YEARS)] / song_name(i, seed) for i in range(n_songs)]
    existing = [d for d in song_dirs if d.exists()]
    if existing and not force:
        raise FileExistsError(f"{existing[0]}: already exists (pass --force / force=True to overwrite)")
    for i, song_dir in enumerate(tqdm(song_dirs, desc="songs", unit="song", disable=not progress)):
        if song_dir.exists():
            shutil.rmtree(song_dir)
        sr, channels = FORMATS[i % len(FORMATS)]
        write_song(song_dir, seconds, sr, channels, seed=int(np.random.default_rng([seed, i]).integers(2**31)))
    return song_dirs


def count_clips(song_dirs) -> int:
    return sum(len(json.loads((Path(d) / "sliced.json").read_text())) - 1 for d in song_dirs)


def add_dataset_flags(parser, out_dir, n_songs, seconds, seed):
    """The flags every dataset generator here takes (this one and make_music_data.py)."""
    parser.add_argument("--out", default=out_dir, help="dataset root to write")
    parser.add_argument("--songs", type=int, default=n_songs, help="number of songs")
    parser.add_argument("--seconds", type=float, default=seconds, help="length of each song in seconds")
    parser.add_argument("--seed", type=int, default=seed, help="master seed (same seed, same files)")
    parser.add_argument("--force", action="store_true", help="overwrite existing song folders")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_dataset_flags(parser, OUT_DIR, N_SONGS, SECONDS, SEED)
    args = parser.parse_args(argv)
    t_start = time.time()
    try:
        song_dirs = make_demo_dataset(args.out, args.songs, args.seconds, args.seed, args.force, progress=True)
    except (FileExistsError, ValueError) as err:
        parser.exit(1, f"make_demo_data.py: {err}\n")
    print(f"wrote {len(song_dirs)} songs ({len(song_dirs) * args.seconds:.1f} s of audio, "
          f"{count_clips(song_dirs)} clips expected) to {args.out} in {time.time() - t_start:.1f} s")


if __name__ == "__main__":
    main()
