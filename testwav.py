"""Stage 6: log-mel npz files (clip npz from preprocess.py, *_gen.npz or *_full_gen.npz from sample.py) -> .wav.

    python testwav.py --npz_dir generated --out_dir wav
    python testwav.py --npz clips/song__00012000.npz --out_dir wav --vocoder griffinlim
    python testwav.py --npz generated/song_full_gen.npz --out_dir wav      # a whole dance: one wav
    python testwav.py --npz_dir generated --out_dir wav --video --with_real  # + <stem>.mp4, <stem>_real.mp4

The vocoder is a BigVGAN folder (config.json + bigvgan_generator.pt), a bare name under BigVGAN/, a
Hugging Face hub id, or `griffinlim`. A mel whose mel_config differs from the vocoder's config.json is
refused. Without BigVGAN weights the script falls back to Griffin-Lim and says so. A mel longer than
--chunk_seconds (a whole dance, sample.py --song) goes through BigVGAN in chunks, each with
lm2a.vocoder.CONTEXT_FRAMES of mel on both sides that are vocoded and dropped, so memory stays that of one chunk
and the joins are inaudible (BigVGAN is convolutional: its receptive field is far shorter than the context).
--video also writes <stem>.mp4 beside each wav: the dancer as a stick figure moving to that wav, beat and
onset markers, the mel with a cursor (lm2a.video); the motion comes from the clip at `source_npz` (clips) or
from `motion_path` and the recorded span (whole dances). --with_real adds <stem>_real.mp4: the same dance
with the real mel (the clip's, or the dance's `real_mel`) through the same vocoder.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from lm2a.audio import write_wav
from lm2a.clipio import ClipFileError, load_clip
from lm2a.device import pick_device
from lm2a.melconfig import MelConfig, load_mel_config
from lm2a.video import VideoError, dance_of, render_video
from lm2a.vocoder import (MelConfigMismatch, VocoderUnavailable, batches_by_length, check_mel_compat, griffin_lim,
                          load_bigvgan, resolve_vocoder_dir, vocode, vocode_long)

# ---- defaults of the command-line flags ----
NPZ = None  # one .npz file to vocode (or give NPZ_DIR)
NPZ_DIR = None  # a folder of clip .npz / *_gen.npz files
OUT_DIR = "wav"  # where <stem>.wav files are written
VOCODER = "BigVGAN/bigvgan_v2_22khz_80band_256x"  # BigVGAN folder, bare name, hub id, or "griffinlim"
DEVICE = "auto"  # auto -> cuda when present, else cpu
BATCH_SIZE = 8  # mels of equal length vocoded together by BigVGAN
GL_ITERS = 64  # Griffin-Lim iterations (explicit griffinlim or fallback)
CHUNK_SECONDS = 30.0  # BigVGAN: longer mels are vocoded in chunks of this length (0 = never)
MAX_LISTED = 10  # refused files listed one per line before "... and N more"
VIDEO = False  # also write <stem>.mp4: the dance (stick figure) with the wav just written (lm2a.video)
WITH_REAL = False  # also write <stem>_real.mp4: the same dance with the real mel vocoded (implies VIDEO)

GRIFFINLIM = "griffinlim"




class UsageError(Exception):
    """Bad input files or flags: main prints the message and returns 1."""


class Refused(Exception):
    """Mels whose mel_config does not match the vocoder: main lists them and returns 2."""

    def __init__(self, mismatches):
        super().__init__(f"{len(mismatches)} mel config mismatches")
        self.mismatches = mismatches


def list_mel_files(npz_dir):
    d = Path(npz_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: not a directory (expected clip .npz or *_gen.npz files)")
    return sorted(p for p in d.glob("*.npz") if p.is_file() and not p.name.startswith((".", "_")))


def input_files(args):
    """The .npz files of --npz / --npz_dir. Raises UsageError naming the file or folder."""
    if args.batch_size < 1:
        raise UsageError("--batch_size must be >= 1")
    if args.npz:
        if not Path(args.npz).is_file():
            raise UsageError(f"{args.npz}: no such file")
        return [Path(args.npz)]
    if not args.npz_dir:
        raise UsageError("give --npz FILE or --npz_dir DIR (or set NPZ / NPZ_DIR at the top)")
    try:
        files = list_mel_files(args.npz_dir)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from e
    if not files:
        raise UsageError(f"{args.npz_dir}: no .npz files")
    return files


def read_mel_config(path):
    """-> the MelConfig stored in the npz, or None when the file carries none or cannot be read
    (an unreadable file is reported when its mel is read)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "mel_config" not in z.files:
                return None
            return MelConfig.parse(z["mel_config"], where=f"{path}: mel_config")
    except Exception:
        return None


def read_mel(path):
    """-> (80, T) float32 log-mel; raises ClipFileError naming the file and what is wrong."""
    return load_clip(path, keys=("mel",))["mel"]


def find_mismatches(files, vocoder_cfg, vocoder_name):
    """-> list of messages for files whose mel_config differs from the vocoder's config.json."""
    out, unchecked = [], 0
    for f in files:
        cfg = read_mel_config(f)
        if cfg is None:
            unchecked += 1
            continue
        try:
            check_mel_compat(cfg, vocoder_cfg, npz_name=str(f), vocoder_name=vocoder_name)
        except MelConfigMismatch as e:
            out.append(str(e))
    if unchecked:
        print(f"testwav: {unchecked} file(s) carry no readable mel_config: not checked against the vocoder")
    return out


def _check(files, vocoder_cfg, vocoder_name):
    mismatches = find_mismatches(files, vocoder_cfg, vocoder_name)
    if mismatches:
        raise Refused(mismatches)


def open_vocoder(args, files, device):
    """-> (BigVGAN model or None for Griffin-Lim, the vocoder's MelConfig or None, label for the
    summary). Missing weights fall back to Griffin-Lim and say so. Raises Refused when a file's
    mel_config differs from the vocoder's (checked before loading weights when the config is local)."""
    if args.vocoder == GRIFFINLIM:
        return None, None, GRIFFINLIM
    local = resolve_vocoder_dir(args.vocoder)
    checked = local is not None and (local / "config.json").is_file()
    if checked:  # refuse a mismatch before spending seconds on loading the weights
        _check(files, load_mel_config(local), args.vocoder)
    try:
        model, vocoder_cfg = load_bigvgan(args.vocoder, device)
        label = f"BigVGAN {args.vocoder} on {device}"
    except VocoderUnavailable as e:
        model, vocoder_cfg = None, e.mel_cfg
        label = f"{GRIFFINLIM} (fallback: no weights for {args.vocoder})"
        print(f"testwav: {e}")
        print(f"testwav: falling back to Griffin-Lim ({args.gl_iters} iterations): expect phasey, "
              f"metallic audio; with BigVGAN weights the same mels sound right")
    if vocoder_cfg is not None and not checked:
        _check(files, vocoder_cfg, args.vocoder)
    return model, vocoder_cfg, label


def griffin_lim_file(path, mel, vocoder_cfg, out_dir, gl_iters):
    """One mel through Griffin-Lim on the vocoder's mel config, else the file's, else the default."""
    cfg = vocoder_cfg or read_mel_config(path)
    if cfg is None:
        cfg = load_mel_config()
        tqdm.write(f"{path}: no mel_config key; inverting with the default {cfg.name} settings")
    write_wav(out_dir / f"{path.stem}.wav", griffin_lim(mel, cfg, n_iter=gl_iters), cfg.sampling_rate)


def chunk_frames_of(vocoder_cfg, args):
    """--chunk_seconds in mel frames of the vocoder's config (0: no chunks, or no BigVGAN)."""
    if vocoder_cfg is None:
        return 0
    return int(round(args.chunk_seconds * vocoder_cfg.sampling_rate / vocoder_cfg.hop_size))


def to_wav(path, mel, model, vocoder_cfg, args):
    """One mel (80, T) of file `path` -> (waveform, sr) through this run's vocoder, as vocode_files
    would vocode it (Griffin-Lim without a model; BigVGAN, in chunks past --chunk_seconds)."""
    if model is None:
        cfg = vocoder_cfg or read_mel_config(path) or load_mel_config()
        return griffin_lim(mel, cfg, n_iter=args.gl_iters), cfg.sampling_rate
    chunk_frames = chunk_frames_of(vocoder_cfg, args)
    if 0 < chunk_frames < mel.shape[1]:
        return vocode_long(mel, model, chunk_frames), vocoder_cfg.sampling_rate
    return vocode(mel[None], model)[0], vocoder_cfg.sampling_rate


def vocode_files(files, model, vocoder_cfg, out_dir, args, written=None):
    """Writes <stem>.wav of every readable file: BigVGAN mels of equal length in batches
    (lm2a.vocoder.batches_by_length), a mel longer than --chunk_seconds alone in chunks, Griffin-Lim
    one by one. Appends (npz path, wav path) of each wav written to the list `written` when given.
    -> (read, wrote, skipped)."""
    counts = {"read": 0, "wrote": 0, "skipped": 0}
    written = [] if written is None else written
    chunk_frames = chunk_frames_of(vocoder_cfg, args)

    def batchable():  # yields the mels for batched BigVGAN; writes the others on the way
        for path in tqdm(files, desc="testwav", unit="file"):
            try:
                mel = read_mel(path)  # (80, T)
            except ClipFileError as e:
                tqdm.write(f"skip {e}")
                counts["skipped"] += 1
                continue
            counts["read"] += 1
            if model is None:
                griffin_lim_file(path, mel, vocoder_cfg, out_dir, args.gl_iters)
            elif 0 < chunk_frames < mel.shape[1]:  # a whole dance: alone, in chunks
                write_wav(out_dir / f"{path.stem}.wav", vocode_long(mel, model, chunk_frames),
                          vocoder_cfg.sampling_rate)
            else:
                yield path, mel
                continue
            counts["wrote"] += 1
            written.append((path, out_dir / f"{path.stem}.wav"))

    for batch in batches_by_length(batchable(), args.batch_size):
        wavs = vocode(np.stack([m for _, m in batch]), model)  # (B, T * hop)
        for (path, _), wav in zip(batch, wavs):
            write_wav(out_dir / f"{path.stem}.wav", wav, vocoder_cfg.sampling_rate)
            counts["wrote"] += 1
            written.append((path, out_dir / f"{path.stem}.wav"))
    return counts["read"], counts["wrote"], counts["skipped"]


def write_videos(written, model, vocoder_cfg, args):
    """<stem>.mp4 beside each wav written (lm2a.video.render_video: the dance of the npz, lm2a.video.dance_of,
    with that wav), and with --with_real <stem>_real.mp4 (the real mel through the same vocoder). A file
    whose motion cannot be read, or whose audio and motion differ by more than a frame, is skipped with
    its reason. -> (videos written, skipped, seconds)."""
    counts, t0 = {"made": 0, "skipped": 0}, time.time()
    for npz, wav_path in tqdm(written, desc="video", unit="file"):
        try:
            dance = dance_of(npz)
            wav, sr = sf.read(wav_path, dtype="float32")
            kind = "real" if dance["source"] == str(npz) else "generated"   # a stage-1 clip is the real thing
            render_video(wav_path.with_suffix(".mp4"), dance["features"], wav, sr, read_mel(npz), dance["fps"],
                         title=f"{npz.stem}  {kind}", where=f"{wav_path} (from {npz}) with motion {dance['source']}")
            counts["made"] += 1
            if args.with_real and dance["real_mel"] is None:
                tqdm.write(f"{npz}: no real mel (none recorded, or the file is a real clip): no {npz.stem}_real.mp4")
            elif args.with_real:
                real, sr = to_wav(npz, dance["real_mel"], model, vocoder_cfg, args)
                render_video(wav_path.with_name(f"{wav_path.stem}_real.mp4"), dance["features"], real, sr,
                             dance["real_mel"], dance["fps"], title=f"{npz.stem}  real",
                             where=f"the real mel of {npz} with motion {dance['source']}")
                counts["made"] += 1
        except (VideoError, ClipFileError) as e:
            tqdm.write(f"skip video {e}")
            counts["skipped"] += 1
    return counts["made"], counts["skipped"], time.time() - t0


def build_parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--npz", default=NPZ, help="one .npz file (key 'mel', (80, T) log-mel)")
    src.add_argument("--npz_dir", default=NPZ_DIR, help="folder of .npz files")
    ap.add_argument("--out_dir", default=OUT_DIR, help="output folder for <stem>.wav")
    ap.add_argument("--vocoder", default=VOCODER,
                    help="BigVGAN/<name> folder, bare name, hub id (nvidia/...), or 'griffinlim'")
    ap.add_argument("--device", default=DEVICE, help="auto, cpu, cuda, cuda:1, ...")
    ap.add_argument("--batch_size", type=int, default=BATCH_SIZE, help="equal-length mels per BigVGAN call")
    ap.add_argument("--gl_iters", type=int, default=GL_ITERS, help="Griffin-Lim iterations")
    ap.add_argument("--chunk_seconds", type=float, default=CHUNK_SECONDS,
                    help="BigVGAN: mels longer than this are vocoded in chunks (0 = never)")
    ap.add_argument("--video", action=argparse.BooleanOptionalAction, default=VIDEO,
                    help="also write <stem>.mp4: the dance as a stick figure with the wav (H.264 + AAC)")
    ap.add_argument("--with_real", action=argparse.BooleanOptionalAction, default=WITH_REAL,
                    help="also write <stem>_real.mp4 with the real mel vocoded the same way (implies --video)")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    t0 = time.time()
    try:
        files = input_files(args)
        device = pick_device(args.device)
        model, vocoder_cfg, vocoder_label = open_vocoder(args, files, device)
    except UsageError as e:
        print(f"testwav: {e}", file=sys.stderr)
        return 1
    except Refused as e:
        return _refuse(e.mismatches)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    n_read, n_wrote, n_skipped = vocode_files(files, model, vocoder_cfg, out_dir, args, written)
    videos = ""
    if args.video or args.with_real:
        n_videos, n_no_video, video_s = write_videos(written, model, vocoder_cfg, args)
        videos = f", videos {n_videos} ({n_no_video} skipped, {video_s:.1f} s)"
    print(f"testwav: read {n_read}, wrote {n_wrote}, skipped {n_skipped}{videos}, vocoder {vocoder_label}, "
          f"{time.time() - t0:.1f} s -> {out_dir}")
    return 0 if n_wrote > 0 else 1


def _refuse(mismatches):
    print(f"testwav: refusing: {len(mismatches)} file(s) have a mel config that does not match the vocoder",
          file=sys.stderr)
    for m in mismatches[:MAX_LISTED]:
        print(f"  {m}", file=sys.stderr)
    if len(mismatches) > MAX_LISTED:
        print(f"  ... and {len(mismatches) - MAX_LISTED} more", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
