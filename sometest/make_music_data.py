"""Write a JustLMD-style development dataset from real, freely licensed music (Debian packages).

    python sometest/make_music_data.py --out data/music/JustLMD [--songs 10] [--seconds 60] [--seed 0] [--force]

Needs (as root):  apt-get install -y --no-install-recommends drascula-music fretsonfire-songs-muldjord asc-music espeak-ng
Not run by the tests. Provenance and licences: sometest/MUSIC_DATA.md and <out>/SOURCES.json.

What is real and what is synthetic:
- Audio: a --seconds segment of a real game-soundtrack recording (resampled to 22050 Hz mono), with
  the song's lyric lines spoken by espeak-ng mixed in at --speech_db relative to the music's RMS.
- Motion (synthetic, 30 fps EasyMocap SMPL): the dancer moves from one key pose to the next, one per
  musical beat (librosa beat tracker; every other beat when the tempo is fast), with a cosine ease, so
  the joint speed has a minimum (kinematic beat) on each musical beat. How far the limbs move into a
  beat follows the music's loudness (RMS, in dB) over that beat and its onset strength on the beat.
- Identity (differs by song, as real dancers do): base pose, root position Th and facing Rh, per-joint
  movement weights, a 4-beat accent groove, the voice that speaks the lyrics. The rhythm rule
  (music -> motion) is the same for every song; the identity features are not.

Layout (DESIGN.md "Input: the JustLMD dataset"):
    <out>/Songs_2020|2021|2022/<song>/audio.wav      22050 Hz mono PCM_16
                                     /sliced.json    "mm:ss.fff" -> lyric line, keys 6.0-6.5 s apart
                                     /smplfull.json  frame 000000 = first lyric key
                                     /beats.json     musical and motion beats (stray file, ignored by stage 1)
    <out>/SOURCES.json   package, version, file, licence, segment, bpm per song
    <out>/_licenses/     the packages' copyright files (ignored by stage 1: name starts with '_')
Songs are whole recordings' segments, so newsplit_npz.py --by song holds out whole songs; segments
cut from one recording (only when --songs exceeds the usable recordings) would share style across sets.
"""
import argparse
import glob
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: reuse the demo generator's lyric and SMPL helpers

from models.layout import JOINT_DIMS, N_JOINTS, POSE_DIM, RH, TH  # noqa: E402
from sometest.make_demo_data import (ARM_JOINTS, LEG_JOINTS, TORSO_JOINTS, add_dataset_flags,  # noqa: E402
                                     format_key, joint_dims, joint_indices, make_lyric_keys, make_lyric_line,
                                     smpl_json, song_vocabulary)

# ---- defaults of the command-line flags -------------------------------------------------------
OUT_DIR = "data/music/JustLMD"  # dataset root to write (data/ is git-ignored)
N_SONGS = 10                 # number of songs (distinct recordings first)
SECONDS = 60.0               # audio length of each song in seconds
SEED = 0                     # master seed: segment choice, dancer style, lyrics, voices
SPEECH_DB = -12.0            # spoken lyrics' RMS relative to the music segment's RMS, dB
PACKAGES = "drascula-music,fretsonfire-songs-muldjord,asc-music"  # Debian packages to draw from

# ---- sources: Debian packages that carry music recordings (licences from their copyright files) -
SOURCES = {
    "drascula-music": {
        "prefix": "drascula",
        "pattern": "/usr/share/scummvm/drascula/audio/track*.ogg",
        "licence": "Drascula-License (BSD-like freeware licence, DFSG-free; Debian main)",
        "copyright": "1996-2008 Alcachofa Soft S.L.",
        "notices": ["/usr/share/doc/drascula-music/copyright", "/usr/share/doc/drascula-music/readme_audio.txt"],
    },
    "fretsonfire-songs-muldjord": {
        "prefix": "muldjord",
        "pattern": "/usr/share/games/fretsonfire/data/songs/muldjord/*/song.ogg",
        "stems": ["guitar.ogg"],  # the guitar is a separate stem beside song.ogg: mixed back in
        "licence": "CC-BY-SA-3.0",
        "copyright": "2009 El Senator (Muldjord, www.muldjord.com)",
        "notices": ["/usr/share/doc/fretsonfire-songs-muldjord/copyright"],
    },
    "asc-music": {
        "prefix": "asc",
        "pattern": "/usr/share/games/asc/music/*.mp3",
        "licence": "GPL-2+",
        "copyright": "2002 Michael Kievernagel",
        "notices": ["/usr/share/doc/asc-music/copyright"],
    },
}
MODIFIED_NOTICE = ("Modified versions: segments cut from the original recordings, mixed to mono, resampled to "
                   "22050 Hz, with synthetic speech (espeak-ng) mixed in; motion and lyrics are synthetic.")

# ---- fixed properties of the generated data ---------------------------------------------------
SR = 22050                   # rate of the audio.wav written (a dataset format, not the mel config) and of analysis
FPS = 30                     # motion frame rate (EasyMocap smplfull.json)
HOP = 256                    # this generator's beat-analysis hop (the mel hop comes from the vocoder config)
SCAN_HOP = 512               # coarser hop for scanning whole recordings
SCAN_STEP_S = 2.0            # grid of candidate segment starts, seconds
MIN_PULSE = 0.3              # recordings whose best segment has a weaker pulse than this are not used
PULSE_LAGS_S = (0.25, 1.5)   # beat periods searched by the pulse-clarity score
NEAR_BEST = 0.9              # a segment start is drawn among windows scoring >= NEAR_BEST x the best
MIN_STEP_S = 0.36            # beats closer than this (> ~167 BPM) -> the dancer steps on every other beat
LOUD_RANGE_DB = 30.0         # loudness 1 at the segment's 95th-percentile RMS, floor LOUD_FLOOR 30 dB below
LOUD_FLOOR = 0.1             # smallest movement energy (quiet passages still move a little)
ACCENT_SHARE = 0.4           # part of a beat's energy set by the onset strength on that beat
YEARS = ("Songs_2020", "Songs_2021", "Songs_2022")

# Dancer: radians a limb group moves into a beat at energy 1, before the per-joint style weights.
GROUP_AMPLITUDE = {"legs": 0.6, "torso": 0.3, "arms": 1.0}
JOINT_WEIGHT_SIGMA = 0.6     # per-song per-joint weights are lognormal(0, this): which joints a dancer uses
BASE_POSE_SIGMA = 0.15       # per-song base pose: normal(0, this) on joints 1-23
TH_RANGE = ((-1.5, 1.5), (0.75, 1.05), (2.0, 5.0))  # per-song root position (m), uniform per axis
SWAY_RAD = 0.03              # slow spine sway not tied to the beat (rad), 0.15-0.35 Hz per song

# Lyrics: one chorus line per song every CHORUS_EVERY-th key, fresh verse lines otherwise.
CHORUS_EVERY = 3
VOICES = ["en-us+m3", "en-us+f3", "en-gb+m1", "en-gb+f2", "en-us+m7", "en-gb+f4", "en-us+f5", "en-gb+m5"]
SPEECH_WPM = (135, 170)      # espeak-ng speed range (words per minute), per song
SPEECH_PITCH = (30, 70)      # espeak-ng pitch range (0-99), per song
SPEECH_DELAY_S = (0.3, 1.0)  # speech starts this long after its lyric key
SPEECH_MAX_S = 5.0           # longer speech is faded out (clips are 6 s)
PEAK = 0.99                  # mixes louder than this are scaled down


# ---- checks -----------------------------------------------------------------------------------

def install_hint(packages) -> str:
    return f"apt-get install -y --no-install-recommends {' '.join(packages)}"


def package_version(package: str) -> str:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def check_requirements(packages) -> None:
    """Raise RuntimeError naming the apt-get command when a source package or espeak-ng is missing."""
    unknown = [p for p in packages if p not in SOURCES]
    if unknown:
        raise ValueError(f"unknown package(s) {', '.join(unknown)}; known: {', '.join(SOURCES)}")
    missing = [p for p in packages if not glob.glob(SOURCES[p]["pattern"])]
    if shutil.which("espeak-ng") is None:
        missing.append("espeak-ng")
    if missing:
        raise RuntimeError(f"missing Debian package(s) {', '.join(missing)} (no music files / no espeak-ng "
                           f"binary found); install them as root with:\n    {install_hint(missing)}")


# ---- recordings -------------------------------------------------------------------------------

def load_recording(path: str, stems=()) -> np.ndarray:
    """A whole recording (plus stems beside it, summed) as float32 mono at SR, (N,)."""
    import librosa
    mix = None
    for p in [Path(path)] + [Path(path).parent / s for s in stems]:
        y, sr = sf.read(p, dtype="float32", always_2d=True)
        y = y.mean(axis=1)
        if sr != SR:
            y = librosa.resample(y, orig_sr=sr, target_sr=SR, res_type="soxr_hq")
        mix = y if mix is None else mix[:min(len(mix), len(y))] + y[:min(len(mix), len(y))]
    return mix


def window_scores(y: np.ndarray, seconds: float) -> tuple:
    """Pulse clarity of every SCAN_STEP_S-spaced window of `seconds`: the highest normalised
    autocorrelation of the onset envelope at a beat period in PULSE_LAGS_S, times the fraction of the
    window that is not near-silent. Returns (starts_s (W,), scores (W,))."""
    import librosa
    fps = SR / SCAN_HOP
    env = librosa.onset.onset_strength(y=y, sr=SR, hop_length=SCAN_HOP)
    rms = librosa.feature.rms(y=y, hop_length=SCAN_HOP)[0]
    rms_db = 20 * np.log10(rms + 1e-9)
    audible = rms_db > np.percentile(rms_db, 95) - LOUD_RANGE_DB
    n_win = int(round(seconds * fps))
    lo, hi = int(PULSE_LAGS_S[0] * fps), int(PULSE_LAGS_S[1] * fps)
    starts, scores = [], []
    for s in range(0, len(env) - n_win + 1, max(1, int(round(SCAN_STEP_S * fps)))):
        if (s + n_win) / fps * SR > len(y):
            break
        e = env[s:s + n_win] - env[s:s + n_win].mean()
        ac = np.correlate(e, e, "full")[n_win - 1:n_win - 1 + hi + 1]
        pulse = float(ac[lo:hi + 1].max() / (ac[0] + 1e-9))
        starts.append(s / fps)
        scores.append(pulse * float(audible[s:s + n_win].mean()))
    return np.array(starts), np.array(scores)


def scan_recordings(packages, seconds: float, progress: bool) -> list:
    """Every recording of the packages that is at least `seconds` long, with its window scores."""
    paths = [(pkg, p) for pkg in packages for p in sorted(glob.glob(SOURCES[pkg]["pattern"]))]
    found = []
    for pkg, path in tqdm(paths, desc="scan recordings", unit="file", disable=not progress):
        if sf.info(path).duration < seconds:
            continue
        y = load_recording(path, SOURCES[pkg].get("stems", ()))
        starts, scores = window_scores(y, seconds)
        if len(starts):
            found.append({"package": pkg, "file": path, "duration_s": len(y) / SR,
                          "starts": starts, "scores": scores, "best": float(scores.max())})
    return found


def recording_name(rec: dict) -> str:
    path = Path(rec["file"])
    stem = path.parent.name if path.name == "song.ogg" else path.stem  # Frets on Fire: one folder per song
    return f"{SOURCES[rec['package']]['prefix']}-{stem}"


def choose_segments(recordings: list, n_songs: int, seconds: float, rng: np.random.Generator) -> list:
    """n_songs (recording, start_s, name) picks. Distinct recordings first, taken round-robin over the
    packages in order of pulse clarity; only when those run out, further non-overlapping segments of
    the longest recordings. Within a recording the start is drawn among near-best windows."""
    usable = [r for r in recordings if r["best"] >= MIN_PULSE]
    queues = {pkg: sorted([r for r in usable if r["package"] == pkg], key=lambda r: -r["best"])
              for pkg in dict.fromkeys(r["package"] for r in usable)}
    order = []
    while any(queues.values()):
        for q in queues.values():
            if q:
                order.append(q.pop(0))
    picks, used = [], {}

    def pick_window(rec):
        taken = used.setdefault(rec["file"], [])
        free = np.array([all(abs(s - t) >= seconds for t in taken) for s in rec["starts"]])
        if not free.any():
            return None
        best = rec["scores"][free].max()
        ok = np.flatnonzero(free & (rec["scores"] >= NEAR_BEST * best))
        start = float(rec["starts"][rng.choice(ok)])
        taken.append(start)
        return start

    for rec in order[:n_songs]:
        picks.append((rec, pick_window(rec), recording_name(rec)))
    segment = 2
    while len(picks) < n_songs:
        added = False
        for rec in sorted(usable, key=lambda r: -r["duration_s"]):
            if len(picks) == n_songs:
                break
            start = pick_window(rec)
            if start is not None:
                picks.append((rec, start, f"{recording_name(rec)}-seg{segment}"))
                added = True
        if not added:
            raise ValueError(f"only {len(picks)} non-overlapping {seconds:g} s segments with a clear pulse "
                             f"in {', '.join(queues)}: ask for fewer --songs or shorter --seconds")
        segment += 1
    return picks


# ---- music analysis ---------------------------------------------------------------------------

def analyse_music(y: np.ndarray) -> dict:
    """Beats (s), tempo, onset envelope and loudness (0..1) of a segment, (HOP-spaced curves)."""
    import librosa
    env = librosa.onset.onset_strength(y=y, sr=SR, hop_length=HOP)
    tempo, beats = librosa.beat.beat_track(onset_envelope=env, sr=SR, hop_length=HOP, units="time")
    rms_db = 20 * np.log10(librosa.feature.rms(y=y, frame_length=2048, hop_length=HOP)[0] + 1e-9)
    loud = np.clip(1.0 + (rms_db - np.percentile(rms_db, 95)) / LOUD_RANGE_DB, LOUD_FLOOR, 1.0)
    n = min(len(env), len(loud))
    return {"beats": np.asarray(beats, dtype=np.float64), "bpm": float(np.atleast_1d(tempo)[0]),
            "onset": env[:n], "loud": loud[:n], "curve_t": np.arange(n) * HOP / SR}


def motion_beat_grid(music: dict, t_start: float, t_end: float) -> tuple:
    """Times of the dancer's steps, covering [t_start, t_end] with one step beyond each end:
    the musical beats (every other one when they are closer than MIN_STEP_S, keeping the parity with
    the stronger onsets), gaps of the beat tracker filled evenly, the ends extended at the median
    period. Returns (grid (K,), stride 1 or 2, period_s)."""
    beats = music["beats"]
    if len(beats) < 4:  # no usable beat track: a plain grid at the tempo estimate
        period = 60.0 / max(music["bpm"], 60.0)
        beats = np.arange(0.0, t_end + period, period)
    period, stride = float(np.median(np.diff(beats))), 1
    if period < MIN_STEP_S:
        strength = [np.interp(beats[p::2], music["curve_t"], music["onset"]).sum() for p in (0, 1)]
        beats, period, stride = beats[int(np.argmax(strength))::2], 2 * period, 2
    grid = [beats[0]]
    for b in beats[1:]:
        n_missing = int(round((b - grid[-1]) / period)) - 1
        if n_missing > 0 and b - grid[-1] > 1.5 * period:
            grid.extend(np.linspace(grid[-1], b, n_missing + 2)[1:-1])
        grid.append(b)
    grid = list(grid)
    while grid[0] > t_start - 1e-6:
        grid.insert(0, grid[0] - period)
    while grid[-1] < t_end + 1e-6:
        grid.append(grid[-1] + period)
    return np.asarray(grid), stride, period


# ---- motion -----------------------------------------------------------------------------------

def make_style(rng: np.random.Generator) -> dict:
    """A dancer's identity: base pose, root position and facing, joint weights, accent groove, sway."""
    base = np.zeros(POSE_DIM)
    base[3:JOINT_DIMS] = rng.normal(0, BASE_POSE_SIGMA, JOINT_DIMS - 3)  # every joint but the pelvis
    arm_down = rng.uniform(0.7, 1.3)
    left_shoulder, right_shoulder = joint_indices("left_shoulder", "right_shoulder")
    base[3 * left_shoulder + 2], base[3 * right_shoulder + 2] = -arm_down, arm_down  # arms down (A-pose-ish)
    base[TH] = [rng.uniform(*r) for r in TH_RANGE]                       # Th (m)
    yaw = rng.uniform(-np.pi, np.pi)
    base[RH] = [0.0, yaw, 0.0]                                            # Rh: facing (axis-angle, yaw)
    joint_weight = rng.lognormal(0.0, JOINT_WEIGHT_SIGMA, N_JOINTS)
    groove = rng.uniform(0.5, 1.0, 4)
    groove[0] = 1.0                                                       # the downbeat is the strongest
    return {"base": base, "yaw": yaw, "joint_weight": joint_weight, "groove": groove,
            "step_m": rng.uniform(0.02, 0.08), "bounce_m": rng.uniform(0.02, 0.06),
            "yaw_swing": rng.uniform(0.1, 0.35), "sway_hz": rng.uniform(0.15, 0.35),
            "sway_phase": rng.uniform(0, 2 * np.pi), "shapes": rng.normal(0, 0.5, 10)}


def beat_energy(music: dict, grid: np.ndarray, groove: np.ndarray) -> np.ndarray:
    """Movement energy into each step k (K,): loudness over (grid[k-1], grid[k]] and onset strength on
    grid[k] (relative to the segment's 95th percentile), times the dancer's groove. energy[0] = 0."""
    t, onset, loud = music["curve_t"], music["onset"], music["loud"]
    accent = np.clip(np.interp(grid, t, onset) / (np.percentile(onset, 95) + 1e-9), 0.0, 1.0)
    energy = np.zeros(len(grid))
    for k in range(1, len(grid)):
        inside = (t > grid[k - 1]) & (t <= grid[k])
        level = loud[inside].mean() if inside.any() else np.interp(grid[k], t, loud)
        energy[k] = level * (1 - ACCENT_SHARE + ACCENT_SHARE * accent[k]) * groove[k % 4]
    return energy


def make_motion(music: dict, style: dict, t0: float, seconds: float, rng: np.random.Generator) -> dict:
    """Beat-following SMPL motion from t0 to `seconds`: key pose k is reached at grid[k] with zero
    velocity (cosine ease), so speed minima sit on the steps. Returns frames (F, 78) and the grid."""
    grid, stride, period = motion_beat_grid(music, t0, seconds)
    energy = beat_energy(music, grid, style["groove"])
    base = style["base"]
    groups = {"legs": LEG_JOINTS, "torso": TORSO_JOINTS, "arms": ARM_JOINTS}
    poses = np.empty((len(grid), POSE_DIM))
    poses[0] = base
    for k in range(1, len(grid)):
        pose = poses[k - 1].copy()
        for g, joints in groups.items():
            d = joint_dims(joints)
            weight = np.repeat(style["joint_weight"][joints], 3)
            amp = GROUP_AMPLITUDE[g]
            # the dancer's favourite joints move most; pulled back to the base pose so it does not drift
            direction = weight * rng.normal(0, 1, d.size) - 1.5 * (pose[d] - base[d]) / amp
            pose[d] += energy[k] * amp * direction / np.linalg.norm(direction)
        side = 1.0 if k % 2 else -1.0
        pose[TH] = base[TH] + [side * style["step_m"] * energy[k], -style["bounce_m"] * energy[k], 0.0]
        pose[RH] = base[RH] + [0.0, side * style["yaw_swing"] * energy[k], 0.0]
        poses[k] = pose

    n_frames = int(np.floor((seconds - t0) * FPS)) + 1
    frame_t = t0 + np.arange(n_frames) / FPS
    phase = np.interp(frame_t, grid, np.arange(len(grid), dtype=np.float64))  # (F,) steps since grid[0]
    idx = np.minimum(np.floor(phase).astype(int), len(grid) - 2)
    ease = (0.5 - 0.5 * np.cos(np.pi * (phase - idx)))[:, None]            # zero slope on each step
    frames = poses[idx] + (poses[idx + 1] - poses[idx]) * ease             # (F, 78)
    sway = SWAY_RAD * np.sin(2 * np.pi * style["sway_hz"] * frame_t + style["sway_phase"])
    for j in joint_indices("spine1", "spine2", "spine3"):                 # spine: a slow off-beat sway
        frames[:, 3 * j + 2] += sway
    inside = (grid > t0) & (grid < seconds)
    return {"frames": frames, "grid": grid[inside], "energy": energy[inside], "stride": stride,
            "period_s": period}


# ---- lyrics and speech ------------------------------------------------------------------------

def make_lines(rng: np.random.Generator, n_keys: int) -> list:
    """Lyric lines of one song: a chorus line on every CHORUS_EVERY-th key, fresh verses elsewhere."""
    vocab = song_vocabulary(rng)
    chorus = make_lyric_line(rng, vocab)
    return [chorus if i % CHORUS_EVERY == CHORUS_EVERY - 1 else make_lyric_line(rng, vocab)
            for i in range(n_keys)]


def speak(text: str, voice: str, wpm: int, pitch: int, workdir: Path) -> np.ndarray:
    """espeak-ng's rendering of `text` as float32 mono at SR, (N,)."""
    import librosa
    wav = workdir / "speech.wav"
    cmd = ["espeak-ng", "-v", voice, "-s", str(wpm), "-p", str(pitch), "-w", str(wav), text]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"espeak-ng failed on {text!r} with voice {voice}: {done.stderr.strip()}")
    y, sr = sf.read(wav, dtype="float32", always_2d=True)
    y = y.mean(axis=1)
    return librosa.resample(y, orig_sr=sr, target_sr=SR) if sr != SR else y


def render_speech(n_samples: int, keys: list, lines: list, voice: dict, music_rms: float,
                  speech_db: float, rng: np.random.Generator, workdir: Path) -> tuple:
    """All lyric lines but the last (the end marker) spoken after their keys, (N,), and placements."""
    out = np.zeros(n_samples, dtype=np.float64)
    placed, cache = [], {}
    for key, line in zip(keys[:-1], lines[:-1]):
        if line not in cache:
            cache[line] = speak(line, voice["voice"], voice["wpm"], voice["pitch"], workdir)
        y = cache[line].astype(np.float64)
        n_max = int(SPEECH_MAX_S * SR)
        if len(y) > n_max:
            y = y[:n_max] * np.minimum(1.0, (n_max - np.arange(n_max)) / (0.1 * SR))
        active = np.abs(y) > 0.01 * np.abs(y).max()
        gain = music_rms * 10 ** (speech_db / 20) / (np.sqrt(np.mean(y[active] ** 2)) + 1e-12)
        start = int(round((key + rng.uniform(*SPEECH_DELAY_S)) * SR))
        end = min(n_samples, start + len(y))
        out[start:end] += gain * y[:end - start]
        placed.append({"line": line, "start_s": round(start / SR, 3), "end_s": round(end / SR, 3)})
    return out, placed


# ---- one song ---------------------------------------------------------------------------------

def write_song(song_dir: Path, rec: dict, start_s: float, seconds: float, speech_db: float, seed: int,
               workdir: Path) -> dict:
    """Write audio.wav, sliced.json, smplfull.json and beats.json of one song; return its SOURCES row."""
    rng = np.random.default_rng(seed)
    song_dir.mkdir(parents=True, exist_ok=True)
    whole = load_recording(rec["file"], SOURCES[rec["package"]].get("stems", ()))
    n = int(round(seconds * SR))
    a = int(round(start_s * SR))
    music = whole[a:a + n].astype(np.float64)
    music = np.pad(music, (0, n - len(music)))                            # never shorter than asked

    analysis = analyse_music(music.astype(np.float32))
    keys = make_lyric_keys(rng, seconds)
    lines = make_lines(rng, len(keys))
    style = make_style(rng)
    motion = make_motion(analysis, style, keys[0], seconds, rng)

    voice = {"voice": VOICES[rng.integers(len(VOICES))], "wpm": int(rng.integers(*SPEECH_WPM)),
             "pitch": int(rng.integers(*SPEECH_PITCH))}
    music_rms = float(np.sqrt(np.mean(music ** 2)))
    speech, placed = render_speech(n, keys, lines, voice, music_rms, speech_db, rng, workdir)
    mix = music + speech
    peak = np.abs(mix).max()
    if peak > PEAK:
        mix *= PEAK / peak
    sf.write(song_dir / "audio.wav", mix.astype(np.float32), SR, subtype="PCM_16")
    (song_dir / "sliced.json").write_text(
        json.dumps({format_key(k): line for k, line in zip(keys, lines)}, indent=1) + "\n")
    (song_dir / "smplfull.json").write_text(
        json.dumps(smpl_json(motion["frames"], style["shapes"]), separators=(",", ":")))
    truth = {
        "note": "ground truth of make_music_data.py, not part of JustLMD; the pipeline ignores it",
        "sr": SR, "fps": FPS, "motion_t0_s": keys[0], "bpm": round(analysis["bpm"], 2),
        "music_beat_times_s": np.round(analysis["beats"], 4).tolist(),
        "motion_step_times_s": np.round(motion["grid"], 4).tolist(),
        "motion_step_energy": np.round(motion["energy"], 3).tolist(),
        "steps_per_beat": 1.0 / motion["stride"], "speech": placed, **voice,
    }
    (song_dir / "beats.json").write_text(json.dumps(truth, indent=1) + "\n")
    src = SOURCES[rec["package"]]
    return {
        "song": song_dir.name, "year_dir": song_dir.parent.name, "package": rec["package"],
        "version": package_version(rec["package"]), "file": rec["file"],
        "stems": [str(Path(rec["file"]).parent / s) for s in src.get("stems", ())],
        "licence": src["licence"], "copyright": src["copyright"],
        "segment_start_s": round(start_s, 3), "segment_end_s": round(start_s + seconds, 3),
        "recording_s": round(rec["duration_s"], 2), "pulse_clarity": round(float(
            rec["scores"][np.argmin(np.abs(rec["starts"] - start_s))]), 3),
        "bpm": round(analysis["bpm"], 2), "music_beats": int(len(analysis["beats"])),
        "motion_steps": int(len(motion["grid"])), "steps_per_beat": 1.0 / motion["stride"],
        "clips": len(keys) - 1, "chorus_line": lines[CHORUS_EVERY - 1] if len(lines) >= CHORUS_EVERY else None,
        "dancer": {"Th": np.round(style["base"][TH], 3).tolist(), "yaw_rad": round(style["yaw"], 3)},
        **voice,
    }


# ---- the dataset ------------------------------------------------------------------------------

def make_music_dataset(root, n_songs: int = N_SONGS, seconds: float = SECONDS, seed: int = SEED,
                       force: bool = False, packages=None, speech_db: float = SPEECH_DB,
                       progress: bool = False) -> dict:
    """Write n_songs songs under root (spread over Songs_2020/2021/2022) and root/SOURCES.json.
    A song folder of the same name (under any year) is an error unless force=True (then it is replaced;
    nothing else under root is touched but SOURCES.json and _licenses/)."""
    root = Path(root)
    packages = list(packages or PACKAGES.split(","))
    check_requirements(packages)
    if n_songs < 1:
        raise ValueError(f"--songs must be at least 1, got {n_songs}")
    make_lyric_keys(np.random.default_rng(0), seconds)                   # raises when too short for a clip
    recordings = scan_recordings(packages, seconds, progress)
    picks = choose_segments(recordings, n_songs, seconds, np.random.default_rng([seed, 7]))
    # years balanced but shuffled: the round-robin pick order would otherwise tie year to package
    years = np.random.default_rng([seed, 11]).permutation([YEARS[i % len(YEARS)] for i in range(len(picks))])
    song_dirs = [root / year / name for year, (_, _, name) in zip(years, picks)]
    existing = [d for name in (d.name for d in song_dirs) for d in sorted(root.glob(f"Songs_*/{name}"))]
    if existing and not force:
        raise FileExistsError(f"{existing[0]}: already exists (pass --force to overwrite)")
    for d in existing:                                                    # also under another year
        shutil.rmtree(d)
    rows = []
    with tempfile.TemporaryDirectory(prefix="make_music_data_") as tmp:
        for i, ((rec, start, _), song_dir) in enumerate(tqdm(list(zip(picks, song_dirs)), desc="songs",
                                                             unit="song", disable=not progress)):
            song_seed = int(np.random.default_rng([seed, i]).integers(2**31))
            rows.append(write_song(song_dir, rec, start, seconds, speech_db, song_seed, Path(tmp)))
    licence_dir = root / "_licenses"
    licence_dir.mkdir(parents=True, exist_ok=True)
    for pkg in dict.fromkeys(r["package"] for r in rows):
        for notice in SOURCES[pkg]["notices"]:
            if Path(notice).is_file():
                shutil.copyfile(notice, licence_dir / f"{pkg}.{Path(notice).name}")
    sources = {
        "generator": "sometest/make_music_data.py", "seed": seed, "seconds": seconds,
        "speech_db": speech_db, "sr": SR, "fps": FPS, "modified": MODIFIED_NOTICE,
        "packages": {pkg: {"version": package_version(pkg), "licence": SOURCES[pkg]["licence"],
                           "copyright": SOURCES[pkg]["copyright"], "notices": SOURCES[pkg]["notices"]}
                     for pkg in dict.fromkeys(r["package"] for r in rows)},
        "espeak-ng": package_version("espeak-ng"),
        "songs": rows,
    }
    (root / "SOURCES.json").write_text(json.dumps(sources, indent=1) + "\n")
    return sources


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_dataset_flags(parser, OUT_DIR, N_SONGS, SECONDS, SEED)
    parser.add_argument("--packages", default=PACKAGES, help="comma-separated Debian packages to draw music from")
    parser.add_argument("--speech_db", type=float, default=SPEECH_DB,
                        help="spoken lyrics' RMS relative to the music's RMS, dB")
    args = parser.parse_args(argv)
    t_start = time.time()
    try:
        sources = make_music_dataset(args.out, args.songs, args.seconds, args.seed, args.force,
                                     [p.strip() for p in args.packages.split(",") if p.strip()],
                                     args.speech_db, progress=True)
    except (FileExistsError, ValueError, RuntimeError) as err:
        parser.exit(1, f"make_music_data.py: {err}\n")
    rows = sources["songs"]
    n_files = len({r["file"] for r in rows})
    per_pkg = ", ".join(f"{pkg} {sum(r['package'] == pkg for r in rows)}" for pkg in sources["packages"])
    print(f"wrote {len(rows)} songs from {n_files} recordings ({per_pkg}; "
          f"{sum(r['clips'] for r in rows)} clips expected, {len(rows) * args.seconds:.0f} s of audio) "
          f"to {args.out} in {time.time() - t_start:.1f} s")


if __name__ == "__main__":
    main()
