"""lm2a/video.py and testwav.py --video: MP4s of a small dance made here, read back with the ffmpeg binary
of imageio-ffmpeg (frames, codecs, stream lengths, pixels where the figure should be)."""
import json
import re
import subprocess

import imageio_ffmpeg
import numpy as np
import pytest

import testwav
from lm2a import video
from lm2a.clipio import save_npz_atomic
from lm2a.melconfig import load_mel_config
from lm2a.motion import motion_features, read_motion
from lm2a.skeleton import joint_positions
from models.layout import POSE, SMPL_JOINTS, TH

FPS = 30
N_FRAMES = 60                                   # a 2 s dance
CFG = load_mel_config()
MEL_FRAMES = CFG.frames_for_seconds(N_FRAMES / FPS)   # 172: 1.997 s of audio, within a frame of 2 s
LEFT_HAND, RIGHT_HAND = SMPL_JOINTS.index("left_hand"), SMPL_JOINTS.index("right_hand")
FAR_RIGHT, FAR_LEFT = 15, 45                    # frames where the dancer stands furthest to +x / -x


def dance_poses(n=N_FRAMES):
    """(n, 78): a T-pose travelling 0.8 m to +x and back to -x (period 2 s), the left arm waving at 2 Hz."""
    t = np.arange(n) / FPS
    poses = np.zeros((n, 78))
    poses[:, TH] = np.stack([0.8 * np.sin(np.pi * t), np.full(n, 0.2), np.zeros(n)], axis=1)
    poses[:, 3 * SMPL_JOINTS.index("left_shoulder") + 2] = 0.6 * np.sin(4 * np.pi * t)
    return poses


def pulse_mel(n=MEL_FRAMES):
    """(80, n) log-mel with a broadband hit every 0.5 s over a quiet floor."""
    mel = np.full((80, n), -7.0, np.float32)
    hits = np.round(np.arange(0.1, n * CFG.hop_seconds, 0.5) / CFG.hop_seconds).astype(int)
    mel[:, hits[hits < n]] = -1.0
    return mel


def make_clip_and_gen(root, gen_mel_frames=MEL_FRAMES, name="dance__00000000", source=None):
    """A stage-1 clip (motion of dance_poses) and a _gen.npz pointing at it -> (clip path, gen path)."""
    clip = root / "clips" / f"{name}.npz"
    save_npz_atomic(clip, mel=pulse_mel(), motion=motion_features(dance_poses(), FPS),
                    lyrics=np.zeros((1, 4), np.float32), mel_config=np.str_(CFG.to_json()), fps=np.int64(FPS))
    gen = root / "gen" / f"{name}_gen.npz"
    save_npz_atomic(gen, mel=pulse_mel(gen_mel_frames), source_npz=np.str_(str(source or clip.resolve())),
                    name=np.str_(name), mel_config=np.str_(CFG.to_json()))
    return clip, gen


def probe(path):
    """-> (codec names of the streams, video frames, decoded audio seconds)."""
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    info = subprocess.run([exe, "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    codecs = re.findall(r"Stream #\S+: (?:Video|Audio): (\w+)", info)
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    pcm = subprocess.run([exe, "-v", "error", "-i", str(path), "-map", "0:a:0", "-f", "s16le", "-ac", "1",
                          "-ar", "44100", "-"], capture_output=True, check=True).stdout
    return codecs, frames, len(pcm) / 2 / 44100


def decoded_frames(path):
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    return np.stack([np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in gen])


def patch(frame, xy, r=2):
    x, y = int(round(xy[0])), int(round(xy[1]))
    return frame[y - r:y + r + 1, x - r:x + r + 1].astype(float)


def test_testwav_video_of_a_clip(tmp_path, capsys):
    clip, gen = make_clip_and_gen(tmp_path)
    out = tmp_path / "wav"
    rc = testwav.main(["--npz_dir", str(gen.parent), "--out_dir", str(out), "--vocoder", "griffinlim",
                       "--gl_iters", "2", "--video", "--with_real"])
    assert rc == 0
    assert "videos 2 (0 skipped" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["dance__00000000_gen.mp4", "dance__00000000_gen.wav",
                                                     "dance__00000000_gen_real.mp4"]
    for mp4 in ("dance__00000000_gen.mp4", "dance__00000000_gen_real.mp4"):
        codecs, frames, audio_s = probe(out / mp4)
        assert codecs == ["h264", "aac"]
        assert frames == N_FRAMES
        assert abs(audio_s - N_FRAMES / FPS) <= 1 / FPS
    frames = decoded_frames(out / "dance__00000000_gen.mp4")
    assert frames.shape == (N_FRAMES, video.HEIGHT, video.WIDTH, 3)
    px, _ = video.figure_pixels(joint_positions(np.load(clip)["motion"][:, POSE]))
    # front view: the dancer's left (+x) on the viewer's right; travelling to +x moves the figure right
    assert np.all(px[:, LEFT_HAND, 0] > px[:, RIGHT_HAND, 0])
    assert px[FAR_RIGHT, LEFT_HAND, 0] - px[FAR_LEFT, LEFT_HAND, 0] > 150
    for hand, here, gone in ((LEFT_HAND, FAR_RIGHT, FAR_LEFT), (RIGHT_HAND, FAR_LEFT, FAR_RIGHT)):
        drawn, empty = patch(frames[here], px[here, hand]), patch(frames[gone], px[here, hand])
        assert drawn.max() > 150                                      # the limb's colour
        assert np.abs(empty - video.BACKGROUND).max() < 30            # background where it was
    assert np.abs(frames[FAR_RIGHT].astype(int) - frames[FAR_LEFT]).max(axis=2).astype(bool).mean() > 0.005


def test_length_mismatch_and_missing_motion_are_skipped_cleanly(tmp_path, capsys):
    make_clip_and_gen(tmp_path, gen_mel_frames=MEL_FRAMES + 6, name="long__00000000")   # 70 ms too long
    make_clip_and_gen(tmp_path, name="lost__00000000", source=tmp_path / "moved" / "lost__00000000.npz")
    out = tmp_path / "wav"
    rc = testwav.main(["--npz_dir", str(tmp_path / "gen"), "--out_dir", str(out), "--vocoder", "griffinlim",
                       "--gl_iters", "2", "--video"])
    text = capsys.readouterr().out
    assert rc == 0 and "wrote 2" in text and "videos 0 (2 skipped" in text
    long_line = next(line for line in text.splitlines() if "long__00000000_gen.wav" in line)
    assert "skip video" in long_line and "clips/long__00000000.npz" in long_line
    assert "2.067 s" in long_line and "60 frames = 2.000 s" in long_line and "more than one frame" in long_line
    assert f"{tmp_path / 'moved' / 'lost__00000000.npz'} (source_npz) does not exist" in text
    assert sorted(p.name for p in out.iterdir()) == ["long__00000000_gen.wav", "lost__00000000_gen.wav"]


def test_an_error_while_encoding_leaves_nothing(tmp_path, monkeypatch):
    features = motion_features(dance_poses(), FPS)
    wav = np.sin(np.arange(2 * 22050) * 0.05).astype(np.float32) * 0.3
    drawn = []

    def broken(*a, **k):
        drawn.append(1)
        if len(drawn) == 10:
            raise RuntimeError("disk full")
        return np.zeros((video.HEIGHT, video.WIDTH, 3), np.uint8)

    monkeypatch.setattr(video, "draw_frame", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        video.render_video(tmp_path / "a.mp4", features, wav, 22050, pulse_mel(), progress=False)
    with pytest.raises(video.VideoError, match=r"x\.wav: the audio lasts 1\.900 s but the motion 60 frames"):
        video.render_video(tmp_path / "a.mp4", features, wav[:int(1.9 * 22050)], 22050, pulse_mel(),
                           where="x.wav", progress=False)
    assert list(tmp_path.iterdir()) == []
    fitted = video.fit_audio(wav[:-300], 22050, N_FRAMES, FPS)        # 14 ms short: padded with silence
    assert fitted.shape == (2 * 22050,) and not fitted[-300:].any()


def test_whole_dance_motion_comes_from_motion_path_and_span(tmp_path):
    poses = dance_poses(90)
    frames = {f"{i:06d}": {"annots": [{"poses": [p[:72].tolist()], "Th": [p[72:75].tolist()],
                                       "Rh": [p[75:].tolist()]}]} for i, p in enumerate(poses)}
    motion = tmp_path / "song" / "smplfull.json"
    motion.parent.mkdir()
    motion.write_text(json.dumps(frames))
    full = tmp_path / "song_full_gen.npz"
    save_npz_atomic(full, mel=pulse_mel(), motion_path=np.str_(str(motion)), frame_start=np.int64(20),
                    frame_end=np.int64(80), fps=np.int64(FPS), motion_t0=np.float64(0.0),
                    real_mel=pulse_mel() - 1.0)
    dance = video.dance_of(full)
    expected = read_motion(motion, FPS).span_features(20, 80, FPS)[0]
    assert dance["fps"] == FPS and dance["source"] == str(motion)
    np.testing.assert_array_equal(dance["features"], expected)
    np.testing.assert_allclose(dance["features"][0, TH], motion_features(poses, FPS)[20, TH], atol=1e-6)
    np.testing.assert_array_equal(dance["real_mel"], pulse_mel() - 1.0)
    save_npz_atomic(full, mel=pulse_mel(), motion_path=np.str_(str(motion)), frame_start=np.int64(60),
                    frame_end=np.int64(120), fps=np.int64(FPS))
    with pytest.raises(video.VideoError,
                       match=r"song_full_gen\.npz: the recorded span \[60, 120\).*motion ends at frame 90"):
        video.dance_of(full)
