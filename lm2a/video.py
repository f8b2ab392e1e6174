"""Watch and listen (issue 22): an MP4 of the dancer, a stick figure, moving to the audio made for it.

`render_video` draws one frame per motion frame (30 fps: the video is exactly as long as the motion)
with numpy and Pillow, and encodes H.264 (yuv420p) + AAC in an MP4 that browsers play, through the
ffmpeg binary of the `imageio-ffmpeg` wheel (no system ffmpeg needed). A frame holds:

- the stick figure: the 24 joints of lm2a.skeleton.joint_positions on the clip's pose block, the bones
  (lm2a.skeleton.BONES) as lines, seen from the front (the camera looks along -z, so the dancer's left,
  SMPL's +x, is on the viewer's right: x and y are projected as they are); the dancer's left side blue,
  right side red. One framing for the whole dance, so travelling across the floor shows;
- a ground line at the lowest foot height over the dance;
- two markers that flash for FLASH_S: `motion beat` on the kinematic beats that the beat-alignment
  metric uses (lm2a.metrics.motion_beats: speed minima of the summed joint angular speed), `audio
  onset` on the onsets of the waveform as the LORIS scores detect them (lm2a.rhythm.wav_onset_envelope
  + pick_onsets with LORIS_PEAKS, at 22050 Hz);
- a panel with the log-mel of the whole clip (rendered once), motion beats ticked above it, audio
  onsets below, and a cursor moving with time.

The audio must be as long as the motion to within one frame (1/fps s); it is then padded with silence
or trimmed to the motion's length. A longer disagreement raises VideoError naming both sources. The
MP4 is encoded into a scratch file beside the output and published with lm2a.clipio.atomic_file: an
error leaves nothing behind (no scratch file, no half video).
"""
import contextlib
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from lm2a.clipio import ClipFileError, atomic_file, load_clip
from lm2a.metrics import MOTION_FPS, mel_to_db, motion_beats
from lm2a.motion import MotionFileError, read_motion
from lm2a.rhythm import LORIS_PEAKS, PAPER_ONSET_HOP, PAPER_SR, pick_onsets, wav_onset_envelope
from lm2a.skeleton import BONES, SIDE_COLOURS, joint_positions
from models.layout import NUM_MELS, POSE, SMPL_JOINTS

WIDTH, HEIGHT = 640, 480            # pixels; multiples of 16 (H.264 macroblocks, no rescaling)
FIGURE_H = 352                      # the figure's area on top; the mel panel below
TICK_H = 8                          # beat ticks above and onset ticks below the mel
MARGIN = 24                         # pixels around the figure
MIN_SPAN_M = 2.0                    # the framing shows at least this many metres each way
FLASH_S = 0.15                      # a marker stays lit this long after its beat / onset (s)
BONE_PX, HEAD_PX, MARKER_PX = 4, 9, 9
CRF, PRESET = 23, "veryfast"        # libx264 quality and speed
AUDIO_RATE, AUDIO_BITRATE = 44100, "128k"   # AAC frames of 1024 samples: 23 ms, under one video frame
BACKGROUND, GROUND, TEXT = (18, 18, 26), (110, 110, 120), (225, 225, 225)
LEFT, RIGHT, CENTRE = SIDE_COLOURS["left"], SIDE_COLOURS["right"], (235, 235, 235)
BEAT_COLOUR, ONSET_COLOUR, DIM = (255, 215, 0), (0, 230, 200), (55, 55, 65)
COLORMAP = "magma"
MEL_PERCENTILES = (1.0, 99.5)        # the mel panel's colour scale runs between these percentiles
FOOT_JOINTS = tuple(SMPL_JOINTS.index(n) for n in ("left_ankle", "right_ankle", "left_foot", "right_foot"))
HEAD_JOINT = SMPL_JOINTS.index("head")
MOTION_BEATS_SOURCE = "lm2a.metrics.motion_beats (the beat_align metric's motion beats)"
ONSETS_SOURCE = "lm2a.rhythm onsets, LORIS peak picking (the cover/hit/F1 scores' onsets)"


class VideoError(ValueError):
    """A video that cannot be made: the message names the files and the fix."""


# ---- what goes in ----------------------------------------------------------------------------------
def fit_audio(wav, sr, n_frames, fps=MOTION_FPS, where=""):
    """Mono float32 `wav` padded with silence or trimmed to n_frames / fps seconds. Raises VideoError
    (naming `where`) when it differs from that by more than one frame (1 / fps s)."""
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim == 2:
        wav = wav.mean(axis=1)
    want = int(round(n_frames * sr / fps))
    if abs(len(wav) - want) > sr / fps:
        raise VideoError(f"{where}: the audio lasts {len(wav) / sr:.3f} s but the motion {n_frames} frames = "
                         f"{n_frames / fps:.3f} s at {fps:g} fps: they differ by more than one frame "
                         f"(1/{fps:g} s); generate the mel for this motion (sample.py) or pair the right files")
    return np.pad(wav[:want], (0, max(0, want - len(wav))))


def _scalar(z, key, default=None):
    if key not in z.files:
        return default
    v = z[key]
    return v.item() if v.ndim == 0 else v


def _motion_from_clip(npz, source):
    """(features, real mel) of the clip npz at `source` (a _gen.npz's source_npz)."""
    if not Path(source).is_file():
        raise VideoError(f"{npz}: its motion source {source} (source_npz) does not exist; put the clips back "
                         f"there or generate again from where they are now (sample.py)")
    try:
        clip = load_clip(source, keys=("mel", "motion"))
    except ClipFileError as e:
        raise VideoError(f"{npz}: cannot read its motion source: {e}") from e
    return clip["motion"], clip["mel"]


def _motion_from_file(npz, z, fps):
    """Features of the span recorded in a _full_gen.npz (or a raw clip's _gen.npz): lm2a.motion.read_motion
    on motion_path, frames [frame_start, frame_end) featurised over the whole motion (span_features)."""
    source = str(_scalar(z, "motion_path"))
    if not Path(source).is_file():
        raise VideoError(f"{npz}: its motion source {source} (motion_path) does not exist; put the motion "
                         f"file back there or generate again (sample.py)")
    start, end = int(_scalar(z, "frame_start", -1)), int(_scalar(z, "frame_end", -1))
    try:
        motion = read_motion(source, fps)
    except (MotionFileError, OSError, ValueError) as e:
        raise VideoError(f"{npz}: cannot read its motion source: {e}") from e
    problem = motion.span_problem(start, end, float(_scalar(z, "motion_t0", 0.0)), fps)
    if problem is not None or end - start < 3:
        raise VideoError(f"{npz}: the recorded span [{start}, {end}) of {source}: {problem or 'under 3 frames'}; "
                         f"the motion file changed since generation: generate again (sample.py)")
    return motion.span_features(start, end, fps)[0]


def dance_of(npz_path):
    """What a video of a mel npz shows: dict(features (F, 234) at fps, fps, source (the motion's file),
    real_mel (80, T) or None). A clip _gen.npz: the clip at `source_npz` (its motion and real mel); a
    whole dance _full_gen.npz or a raw clip: `motion_path` and the recorded span (read_motion), real mel
    `real_mel` when stored; a stage-1 clip npz: its own motion (it is the real one: no real_mel).
    Raises VideoError naming the file when the motion source is missing or unreadable."""
    npz = Path(npz_path)
    try:
        with np.load(npz, allow_pickle=False) as z:
            fps = int(_scalar(z, "fps", MOTION_FPS))
            source = str(_scalar(z, "source_npz", "") or "")
            if source:
                features, real = _motion_from_clip(npz, source)
            elif str(_scalar(z, "motion_path", "") or ""):
                features, real, source = _motion_from_file(npz, z, fps), _scalar(z, "real_mel"), str(z["motion_path"])
            elif "motion" in z.files and "source_npz" not in z.files:
                features, real, source = load_clip(npz, keys=("motion",))["motion"], None, str(npz)
            else:
                raise VideoError(f"{npz}: no motion source (no source_npz, no motion_path, not a clip); "
                                 f"make it with sample.py, which records one")
    except VideoError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:  # a broken npz
        raise VideoError(f"{npz}: cannot read it ({type(e).__name__}: {e})") from e
    return dict(features=np.asarray(features, np.float32), fps=fps, source=source,
                real_mel=None if real is None else np.asarray(real, np.float32))


def audio_onsets(wav, sr):
    """Onset times (s) of a waveform as the LORIS scores find them (lm2a.rhythm, at 22050 Hz)."""
    return pick_onsets(wav_onset_envelope(wav, sr), LORIS_PEAKS) * (PAPER_ONSET_HOP / PAPER_SR)


# ---- drawing -----------------------------------------------------------------------------------------
def figure_pixels(joints):
    """(F, 24, 3) joint positions (m) -> ((F, 24, 2) float pixel coordinates in the figure area, ground
    line's pixel row). One framing for the whole dance: the joints' x range and the height from the
    lowest foot to the highest joint, at least MIN_SPAN_M, fitted inside MARGIN; the ground (lowest
    foot height) on the figure area's bottom margin. Front view: pixel x grows with +x (the dancer's
    left on the viewer's right), pixel y with -y."""
    x, y = joints[..., 0], joints[..., 1]
    ground = float(joints[:, FOOT_JOINTS, 1].min())
    x_mid = 0.5 * float(x.min() + x.max())
    span_x = max(float(x.max() - x.min()), MIN_SPAN_M)
    span_y = max(float(y.max()) - ground, MIN_SPAN_M)
    scale = min((WIDTH - 2 * MARGIN) / span_x, (FIGURE_H - 3 * MARGIN) / span_y)
    ground_px = FIGURE_H - MARGIN
    px = np.stack([WIDTH / 2 + scale * (x - x_mid), ground_px - scale * (y - ground)], axis=-1)
    return px, ground_px


def _font(size):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):       # a Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def mel_panel(mel, beats, onsets, duration):
    """(HEIGHT - FIGURE_H, WIDTH, 3) uint8: the log-mel in dB (colour scale between its MEL_PERCENTILES, so
    a few outliers do not darken the rest) stretched over the video's duration, low bands at the bottom,
    motion beats ticked above it and audio onsets below."""
    import matplotlib  # only its colour table, once per video
    db = mel_to_db(np.asarray(mel, np.float64), top_db=None)     # no floor under an outlier peak
    lo, hi = np.percentile(db, MEL_PERCENTILES)
    level = np.clip((db - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    lut = (matplotlib.colormaps[COLORMAP](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    img = lut[np.round(255 * level).astype(np.int64)[::-1]]                          # (80, T, 3)
    h = HEIGHT - FIGURE_H
    panel = np.zeros((h, WIDTH, 3), np.uint8)
    panel[TICK_H:h - TICK_H] = np.asarray(Image.fromarray(img).resize((WIDTH, h - 2 * TICK_H), Image.BILINEAR))
    for times, rows, colour in ((beats, slice(0, TICK_H), BEAT_COLOUR), (onsets, slice(h - TICK_H, h), ONSET_COLOUR)):
        cols = np.clip(np.round(np.asarray(times) / duration * (WIDTH - 1)).astype(np.int64), 0, WIDTH - 1)
        for dx in (0, 1):
            panel[rows, np.clip(cols + dx, 0, WIDTH - 1)] = colour
    return panel


def background(panel, ground_px, title):
    """The still part of every frame: figure area, ground line, title, marker labels, mel panel."""
    img = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    img.paste(Image.fromarray(panel), (0, FIGURE_H))
    d = ImageDraw.Draw(img)
    d.line([(MARGIN // 2, ground_px), (WIDTH - MARGIN // 2, ground_px)], fill=GROUND, width=2)
    d.text((8, 6), title, fill=TEXT, font=_font(14))
    small = _font(12)
    for row, label in ((0, "motion beat"), (1, "audio onset")):
        d.text((WIDTH - 118, 26 + 22 * row), label, fill=TEXT, font=small)
    return img


def flash(times, frame_times):
    """(F,) in [0, 1]: 1 on the frame of an event, fading to 0 over FLASH_S after it."""
    times = np.sort(np.asarray(times, np.float64))
    if times.size == 0:
        return np.zeros(len(frame_times))
    i = np.searchsorted(times, frame_times + 1e-9) - 1
    age = np.where(i >= 0, frame_times - times[np.maximum(i, 0)], np.inf)
    return np.clip(1.0 - age / FLASH_S, 0.0, 1.0)


def _mix(colour, level):
    return tuple(int(round(d + (c - d) * level)) for c, d in zip(colour, DIM))


BONE_COLOURS = tuple(LEFT if SMPL_JOINTS[j].startswith("left") else RIGHT if SMPL_JOINTS[j].startswith("right")
                     else CENTRE for _, j in BONES)


def draw_frame(base, px, beat_level, onset_level, cursor_x, clock):
    """One frame: `base` (background) with the figure at pixel joints px (24, 2), the two markers lit at
    their levels, the mel cursor at column cursor_x and the clock text. -> (HEIGHT, WIDTH, 3) uint8."""
    img = base.copy()
    d = ImageDraw.Draw(img)
    for (p, j), colour in zip(BONES, BONE_COLOURS):
        d.line([tuple(px[p]), tuple(px[j])], fill=colour, width=BONE_PX)
    hx, hy = px[HEAD_JOINT]
    d.ellipse([hx - HEAD_PX, hy - HEAD_PX, hx + HEAD_PX, hy + HEAD_PX], outline=CENTRE, width=2)
    for row, (colour, level) in enumerate(((BEAT_COLOUR, beat_level), (ONSET_COLOUR, onset_level))):
        cx, cy = WIDTH - 134, 33 + 22 * row
        d.ellipse([cx - MARKER_PX, cy - MARKER_PX, cx + MARKER_PX, cy + MARKER_PX], fill=_mix(colour, level))
    d.line([(cursor_x, FIGURE_H), (cursor_x, HEIGHT - 1)], fill=(255, 255, 255), width=2)
    d.text((WIDTH - 118, 6), clock, fill=TEXT, font=_font(12))
    return np.asarray(img)


# ---- encoding ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def _scratch(path, suffix):
    """A scratch file path beside `path` (hidden: '.<name>.*'), removed on the way out whatever happens."""
    fd, tmp = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=suffix, dir=Path(path).parent)
    os.close(fd)
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _encode(mp4, wav_path, frames, size, fps):
    """Frames (an iterable of (H, W, 3) uint8) + the wav file -> H.264 yuv420p + AAC MP4 at `mp4`."""
    import imageio_ffmpeg  # the wheel's own ffmpeg binary
    out = ["-crf", str(CRF), "-preset", PRESET, "-ar", str(AUDIO_RATE), "-b:a", AUDIO_BITRATE,
           "-movflags", "+faststart", "-f", "mp4"]
    writer = imageio_ffmpeg.write_frames(mp4, size, fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=None,
                                         macro_block_size=16, ffmpeg_log_level="error", output_params=out,
                                         audio_path=wav_path, audio_codec="aac")
    writer.send(None)
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()


def render_video(path, features, wav, sr, mel, fps=MOTION_FPS, title="", where="", progress=True):
    """MP4 at `path` of the dance `features` (F, 234) (pose block: models.layout.POSE) with the audio `wav`
    at `sr` and its log-mel `mel` (80, T) in the panel; F frames at `fps`, the audio fitted to them
    (fit_audio: VideoError naming `where` when they differ by more than a frame). Written through a
    scratch file and lm2a.clipio.atomic_file; nothing stays behind on error.
    -> dict(path, frames, seconds, render_s, motion_beats, audio_onsets)."""
    t0 = time.time()
    features = np.asarray(features, np.float32)
    mel = np.asarray(mel, np.float32)
    if features.ndim != 2 or len(features) < 3 or mel.ndim != 2 or mel.shape[0] != NUM_MELS:
        raise VideoError(f"{where}: need motion features (frames >= 3, 234) and a mel ({NUM_MELS}, T); "
                         f"got {features.shape} and {mel.shape}")
    n, duration = len(features), len(features) / fps
    wav = fit_audio(wav, sr, n, fps, where)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    beats, onsets = motion_beats(features, fps), audio_onsets(wav, sr)
    px, ground_px = figure_pixels(joint_positions(features[:, POSE]))
    base = background(mel_panel(mel, beats, onsets, duration), ground_px, title)
    times = np.arange(n) / fps
    beat_level, onset_level = flash(beats, times), flash(onsets, times)
    cursor = np.round(times / duration * (WIDTH - 1)).astype(int)
    frames = (draw_frame(base, px[f], beat_level[f], onset_level[f], cursor[f], f"{times[f]:5.1f} / {duration:.1f} s")
              for f in tqdm(range(n), desc=f"video {Path(path).name}", unit="frame", leave=False, disable=not progress))
    path = Path(path)
    with _scratch(path, ".tmp.wav") as wav_tmp, _scratch(path, ".tmp.mp4") as mp4_tmp:
        sf.write(wav_tmp, np.clip(wav, -1.0, 1.0), int(sr), subtype="PCM_16", format="WAV")
        _encode(mp4_tmp, wav_tmp, frames, (WIDTH, HEIGHT), fps)
        with open(mp4_tmp, "rb") as src, atomic_file(path) as dst:
            shutil.copyfileobj(src, dst)
    return dict(path=path, frames=n, seconds=duration, render_s=time.time() - t0,
                motion_beats=beats, audio_onsets=onsets)
