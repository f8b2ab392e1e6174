"""Write a small, deterministic dataset in AIST++'s layout whose dances follow their music.

    python sometest/make_aist_data.py --out demo/aist [--genres 10] [--music 2] [--dancers 2]
        [--seconds 24] [--seed 0] [--force]

Layout (as AIST++ is downloaded; lm2a/aistpp.py reads it):
    <out>/aist_plusplus_final/motions/<sequence>.pkl   smpl_poses (F, 72), smpl_trans (F, 3),
                                                        smpl_scaling (1,), smpl_loss at 60 fps
    <out>/aist_plusplus_final/ignore_list.txt          one sequence listed (its pkl is written)
    <out>/aist_plusplus_final/splits/crossmodal_{train,val,test}.txt   sequence lists: every sequence of
                                                        the other music in train; of the held-out music,
                                                        the advanced dances in test, the basic ones in val
    <out>/music/<music id>.wav                          one per music id (one .mp3 where libsndfile can)
    <out>/truth.json                                    ground truth (tempo, beat times); not AIST++'s

Music ids follow AIST++ (m<genre><0-5>): each genre's first music is the one AIST++ holds out for its
test and val sets (lm2a.aistpp.HELD_OUT_MUSIC), so `newsplit_npz.py --preset aistpp` has a test set.
Sequence names follow AIST++ (g<genre>_s<BM|FM>_cAll_d<dancer>_m<music>_ch<n>): dancers alternate
advanced (sFM, the whole music but the last second) and basic (sBM, about half of it) dances.

The music: percussive hits on its beats (make_demo_data's hit layers, their loudness from a reference
dance at the music's tempo), a bass note on every bar and a melody of held harmonic notes from one
pentatonic scale per music, so it has tonal lines. Each dance is make_demo_data's beat-locked dancer at
the music's tempo (every joint stops on each beat), written at 60 fps: the dance follows the music,
and frame 0 is music time 0. AIST++'s pkl stores the root orientation in smpl_poses[:, :3] and the
translation times smpl_scaling; the generator writes both that way.
"""
import argparse
import json
import pickle
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repo root on the path

from lm2a.aistpp import GENRES, HELD_OUT_MUSIC, IGNORE_LIST, MOTIONS, OFFICIAL_LISTS, SPLITS_DIR  # noqa: E402
from lm2a.motion import AIST_SOURCE_FPS  # noqa: E402
from models.layout import JOINT_DIMS, RH, TH  # noqa: E402
from sometest.make_demo_data import (FORMATS, NOISE_FLOOR, PEAK, beat_phase, dance_to_tempo,  # noqa: E402
                                     draw_tempo, render_hits)

# ---- defaults of the command-line flags -------------------------------------------------------
OUT_DIR = "demo/aist"        # writes <out>/aist_plusplus_final/ and <out>/music/ (demo/ is git-ignored)
N_GENRES = 10                # genres (AIST++ order: gBR gPO gLO gMH gLH gHO gWA gKR gJS gJB)
N_MUSIC = 2                  # music ids per genre (the held-out one first)
N_DANCERS = 2                # sequences per music id (sFM, sBM, sFM, ...)
SECONDS = 24.0               # length of every music file
SEED = 0                     # same seed, same files

# ---- fixed properties of the generated data ---------------------------------------------------
SCALING = (85.0, 105.0)      # smpl_scaling range (AIST++ fits a scaled body; trans is in its units)
BASIC_SHARE = 0.5            # a basic dance (sBM) lasts this share of its music
END_MARGIN_S = 1.0           # an advanced dance (sFM) ends this long before its music
SCALE_STEPS = (0, 2, 4, 7, 9)  # major pentatonic, semitones
MELODY_GAIN, BASS_GAIN = 0.25, 0.3


def music_ids(n_genres: int, n_music: int) -> list:
    """[(genre code, music id)] with each genre's held-out music first (mBR0, then mBR1, ...)."""
    out = []
    for code, held in list(zip(GENRES, HELD_OUT_MUSIC))[:n_genres]:
        first = int(held[-1])
        out += [(code, f"m{code[1:]}{(first + k) % 6}") for k in range(n_music)]
    return out


def tone(f0: float, n: int, sr: int, n_harmonics: int = 6) -> np.ndarray:
    """A held harmonic note of n samples: partials 1/k, 30 ms attack, 80 ms release."""
    t = np.arange(n) / sr
    k = np.arange(1, n_harmonics + 1)[:, None]
    keep = (k[:, 0] * f0 < 0.45 * sr)
    wave = (np.sin(2 * np.pi * f0 * k[keep] * t) / k[keep]).sum(0)
    env = np.minimum(1.0, t / 0.03) * np.minimum(1.0, (t[-1] - t) / 0.08 + 1e-9) * np.exp(-t / 2.0)
    return wave * env / (1.0 / k[keep]).sum()


def render_lines(n: int, sr: int, beat_times: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Melody (one note per 1-2 beats, a random walk on the music's pentatonic scale) and a bass note
    on every 4th beat, both starting on beats."""
    root = 48 + int(rng.integers(0, 12))                                 # MIDI C3..B3
    scale = np.array([root + 12 * o + s for o in (1, 2) for s in SCALE_STEPS])
    out, step, k = np.zeros(n), int(rng.integers(len(scale))), 0
    while k < len(beat_times) - 1:
        length = int(rng.choice([1, 2]))
        a = int(beat_times[k] * sr)
        b = int(beat_times[min(k + length, len(beat_times) - 1)] * sr)
        step = int(np.clip(step + rng.integers(-2, 3), 0, len(scale) - 1))
        out[a:b] += MELODY_GAIN * tone(440.0 * 2 ** ((scale[step] - 69) / 12), b - a, sr)
        k += length
    for k in range(0, len(beat_times) - 4, 4):
        a, b = int(beat_times[k] * sr), int(beat_times[k + 4] * sr)
        out[a:b] += BASS_GAIN * tone(440.0 * 2 ** ((root - 12 - 69) / 12), b - a, sr, n_harmonics=3)
    return out[:n]


def beat_times_of(tempo: tuple, seconds: float) -> np.ndarray:
    """Times of the integer beat phases of `tempo` in [0, seconds]."""
    grid = np.linspace(0, seconds, int(seconds * 2000) + 1)
    phase = beat_phase(grid, tempo[0], tempo[3], tempo[1], tempo[2])
    ks = np.arange(int(np.ceil(phase[0])), int(np.floor(phase[-1])) + 1)
    return np.interp(ks, phase, grid)


def write_music(path: Path, tempo: tuple, seconds: float, sr: int, channels: int, rng) -> dict:
    """The music of one id: hits on its beats (loudness from a reference dance), bass and melody."""
    _, _, beats = dance_to_tempo(rng, tempo, 0.0, seconds)
    n = int(round(seconds * sr))
    mix = render_hits(n, sr, beats, rng) + render_lines(n, sr, beats["times"], rng)
    mix = np.stack([mix] * channels, axis=1) + NOISE_FLOOR * rng.normal(0, 1, (n, channels))
    mix *= PEAK / np.abs(mix).max()
    if path.suffix == ".mp3":
        sf.write(path, mix.astype(np.float32), sr, format="MP3")
    else:
        sf.write(path, mix.astype(np.float32), sr, subtype="PCM_16")
    return {"bpm": round(tempo[0], 3), "beat_times_s": np.round(beats["times"], 4).tolist(), "sr": sr}


def aist_pkl(frames: np.ndarray, scaling: float) -> dict:
    """(F, 78) [poses 72 | Th | Rh] -> AIST++'s pkl dict: the root orientation in smpl_poses[:, :3],
    the translation in the scaled body's units."""
    poses = frames[:, :JOINT_DIMS].copy()
    poses[:, :3] = frames[:, RH]
    return {"smpl_poses": poses.astype(np.float32), "smpl_trans": (frames[:, TH] * scaling).astype(np.float32),
            "smpl_scaling": np.array([scaling], np.float32), "smpl_loss": np.float32(0.01)}


def sequence_name(genre: str, situation: str, dancer: int, music: str, choreo: int) -> str:
    return f"{genre}_{situation}_cAll_d{dancer:02d}_{music}_ch{choreo:02d}"


def write_sequences(motions: Path, genre_index: int, genre: str, music: str, tempo: tuple, seconds: float,
                    n_dancers: int, seed_seq) -> list:
    """The dances of one music (sFM, sBM, ...) as pkl files; returns their names."""
    names = []
    for j in range(n_dancers):
        rng = np.random.default_rng([*seed_seq, j])
        advanced = j % 2 == 0
        length = seconds - END_MARGIN_S if advanced else BASIC_SHARE * seconds
        frames, _, _ = dance_to_tempo(rng, tempo, 0.0, length, fps=AIST_SOURCE_FPS)
        name = sequence_name(genre, "sFM" if advanced else "sBM", 3 * genre_index + j % 3 + 1, music, j // 3 + 1)
        with open(motions / f"{name}.pkl", "wb") as f:
            pickle.dump(aist_pkl(frames, float(rng.uniform(*SCALING))), f, protocol=4)
        names.append(name)
    return names


def write_lists(folder: Path, sequences: dict) -> None:
    """The official-style sequence lists of the generated sequences (see the module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    sets = {"train": [], "val": [], "test": []}
    for name, seq in sorted(sequences.items()):
        held = seq["music"] in HELD_OUT_MUSIC
        sets["train" if not held else "test" if "_sFM_" in name else "val"].append(name)
    for key, fname in OFFICIAL_LISTS.items():
        (folder / fname).write_text("".join(f"{n}\n" for n in sets[key]))


def make_aist_dataset(out, n_genres: int = N_GENRES, n_music: int = N_MUSIC, n_dancers: int = N_DANCERS,
                      seconds: float = SECONDS, seed: int = SEED, force: bool = False, progress: bool = False):
    """Writes the dataset under out; returns (aist_plusplus_final folder, music folder, truth dict)."""
    out = Path(out)
    root, music_dir = out / "aist_plusplus_final", out / "music"
    if (root.exists() or music_dir.exists()) and not force:
        raise FileExistsError(f"{out}: already holds a dataset (pass --force to overwrite)")
    for d in (root, music_dir):
        shutil.rmtree(d, ignore_errors=True)
    (root / MOTIONS).mkdir(parents=True)
    music_dir.mkdir(parents=True)
    truth = {"note": "ground truth of sometest/make_aist_data.py, not part of AIST++", "music": {}, "sequences": {}}
    mp3 = "MP3" in sf.available_formats()
    ids = music_ids(n_genres, n_music)
    for i, (genre, music) in enumerate(tqdm(ids, desc="music", unit="music", disable=not progress)):
        rng = np.random.default_rng([seed, i])
        tempo = draw_tempo(rng)
        sr, channels = FORMATS[i % len(FORMATS)]
        suffix = ".mp3" if mp3 and i == 1 else ".wav"
        truth["music"][music] = write_music(music_dir / f"{music}{suffix}", tempo, seconds, sr, channels, rng)
        for name in write_sequences(root / MOTIONS, i // n_music, genre, music, tempo, seconds, n_dancers,
                                    [seed, i, 7]):
            truth["sequences"][name] = {"music": music, "genre": genre}
    write_lists(root / SPLITS_DIR, truth["sequences"])
    ignored = sorted(truth["sequences"])[-1]
    (root / IGNORE_LIST).write_text(f"{ignored}\n")
    truth["ignored"] = [ignored]
    (out / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    return root, music_dir, truth


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=OUT_DIR, help="writes OUT/aist_plusplus_final and OUT/music")
    p.add_argument("--genres", type=int, default=N_GENRES, help=f"genres (1-{len(GENRES)})")
    p.add_argument("--music", type=int, default=N_MUSIC, help="music ids per genre (1-6)")
    p.add_argument("--dancers", type=int, default=N_DANCERS, help="sequences per music id")
    p.add_argument("--seconds", type=float, default=SECONDS, help="length of every music file")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--force", action="store_true", help="overwrite an existing dataset under --out")
    args = p.parse_args(argv)
    if not (1 <= args.genres <= len(GENRES) and 1 <= args.music <= 6 and args.dancers >= 1 and args.seconds >= 4):
        p.exit(2, "make_aist_data.py: need 1-10 genres, 1-6 music per genre, >= 1 dancer, >= 4 seconds\n")
    t0 = time.time()
    try:
        root, music_dir, truth = make_aist_dataset(args.out, args.genres, args.music, args.dancers, args.seconds,
                                                   args.seed, args.force, progress=True)
    except FileExistsError as e:
        p.exit(1, f"make_aist_data.py: {e}\n")
    print(f"make_aist_data: wrote {len(truth['sequences'])} sequences ({len(truth['ignored'])} in the ignore list) "
          f"over {len(truth['music'])} music files of {args.seconds:g} s -> {root} and {music_dir} "
          f"in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
