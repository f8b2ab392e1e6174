"""The dancer of report.html (lm2a/report.py, "The dancer"): one canvas per shown clip, the embedded
joints decode to lm2a.skeleton.joint_positions of the clip's pose block within 1 mm, the script's data
names the clip's players, the MP4 link appears only when the file exists; and, where chromium is
installed, a headless browser draws the figure at the frame of the player's time (seeking a player,
playing one pauses the others, the #t= hash)."""
import base64
import json
import os
import shutil
import subprocess
import time
from html.parser import HTMLParser

import numpy as np
import pytest
import soundfile as sf

from lm2a import report as REP
from lm2a.skeleton import BONES, SIDE_COLOURS, joint_positions
from models.layout import JOINT_DIMS, N_JOINTS, POSE_DIM, SMPL_JOINTS, TH

FPS, SR, HOP, FRAMES = 30, 22050, 256, 60
MEL_FRAMES = FRAMES * SR // (FPS * HOP)          # 172 mel frames: the clip's 2 s
LEFT, RIGHT, HEAD = SIDE_COLOURS["left"], SIDE_COLOURS["right"], (51, 51, 51)   # the script's colours
J = {n: i for i, n in enumerate(SMPL_JOINTS)}


def clip_motion(k):
    """(FRAMES, 234) features of a T-posed dancer who walks 1 m to their left (+x) over the clip; in clip
    0 the left arm is raised on odd frames (a frame off shows), clip 1 bends the left elbow and bobs."""
    pose = np.zeros((FRAMES, POSE_DIM))
    t = np.arange(FRAMES) / FPS
    pose[:, TH.start] = np.linspace(0.0, 1.0, FRAMES)
    if k == 0:
        pose[1::2, 3 * J["left_shoulder"] + 2] = 1.2
    else:
        pose[:, 3 * J["left_elbow"] + 1] = 1.2 * np.sin(2 * np.pi * t)
        pose[:, TH.start + 1] = 0.1 * np.sin(4 * np.pi * t)
    return np.concatenate([pose, np.zeros_like(pose), np.zeros_like(pose)], axis=1).astype(np.float32)


def make_report(out, videos=None, mp4=()):
    """A report of two clips with real, generated and uncond wavs (2 s sines); `mp4`: clip names whose
    report/video/<name>.mp4 exists before the page is written."""
    rng = np.random.default_rng(0)
    clips, gens, wavs = [], {}, {"real": {}, "generated": {}, "uncond": {}}
    for k in range(2):
        name = f"song{k}__{1000 * (k + 1):08d}"
        clips.append(dict(name=name, song=f"song{k}", start_s=1.0, mel=rng.normal(-5, 1, (80, MEL_FRAMES)),
                          hop_length=HOP, sr=SR, fps=FPS, lyric_text=f"line {k}", motion=clip_motion(k)))
        gens[name] = clips[-1]["mel"] + 0.1
        for i, kind in enumerate(wavs):
            wavs[kind][name] = out / "audio" / kind / f"{name}.wav"
            wavs[kind][name].parent.mkdir(parents=True, exist_ok=True)
            tone = 0.1 * np.sin(2 * np.pi * 220 * (i + 1) * np.arange(FRAMES * SR // FPS) / SR)
            sf.write(str(wavs[kind][name]), tone.astype(np.float32), SR, subtype="PCM_16")
    for name in mp4:
        (out / REP.VIDEO_DIR).mkdir(parents=True, exist_ok=True)
        (out / REP.VIDEO_DIR / f"{name}.mp4").write_bytes(b"\0")
    info = REP.clip_pages(out, clips, [0, 1], gens, wavs, pairs=[1, 0], videos=videos)
    return clips, REP.write_report(out, {}, [], info).read_text(encoding="utf-8")


class Page(HTMLParser):
    """The canvases, the audio ids of each clip section, the links and the dancer data of a page."""

    def __init__(self, text):
        super().__init__()
        self.canvases, self.audio, self.links, self.scripts, self.data = [], {}, [], [], None
        self._clip, self._json = None, False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and attrs.get("class") == "clip":
            self._clip = attrs["id"]
        elif tag == "canvas":
            self.canvases.append((self._clip, attrs["id"], int(attrs["width"]), int(attrs["height"])))
        elif tag == "audio":
            self.audio.setdefault(self._clip, []).append(attrs["id"])
        elif tag == "a":
            self.links.append(attrs["href"])
        elif tag == "script":
            self.scripts.append(attrs)
            self._json = attrs.get("id") == "lm2a-dancers"

    def handle_data(self, data):
        if self._json:
            self.data, self._json = json.loads(data), False


def decode(clip):
    """The page's joints of one clip in metres, (frames, 24, 3)."""
    mm = np.frombuffer(base64.b64decode(clip["joints_mm"]), dtype="<i2").reshape(clip["frames"], N_JOINTS, 3)
    return (mm + np.asarray(clip["origin_mm"])) / 1000.0


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    out = tmp_path_factory.mktemp("dancer")
    clips, text = make_report(out)
    return dict(out=out, clips=clips, text=text, page=Page(text))


def test_one_canvas_per_clip_with_its_joints_and_players(page):
    p, clips = page["page"], page["clips"]
    assert [(c, w, h) for c, _, w, h in p.canvases] == [(c["name"], *REP.DANCER_SIZE) for c in clips]
    data = p.data
    assert data["bones"] == [list(b) for b in BONES] and data["joints"] == N_JOINTS
    assert [SMPL_JOINTS[j] for j in data["left"]][:2] == ["left_hip", "left_knee"] and len(data["right"]) == 9
    assert [d["canvas"] for d in data["clips"]] == [canvas for _, canvas, _, _ in p.canvases]
    for c, d in zip(clips, data["clips"]):
        expected = joint_positions(c["motion"][:, :POSE_DIM])
        assert d["frames"] == FRAMES and d["fps"] == FPS
        np.testing.assert_allclose(decode(d), expected, atol=0.5e-3 + 1e-9)       # within 1 mm
        # the walk is there: the pelvis ends 1 m to the dancer's left of where it starts
        assert decode(d)[-1, 0, 0] - decode(d)[0, 0, 0] == pytest.approx(1.0, abs=1e-3)
        # the script's players are the clip's own: real, generated, uncond and the chance player
        assert d["players"] == p.audio[c["name"]] == [REP.player_id(clips.index(c), k)
                                                      for k in ("real", "generated", "uncond", "chance")]
        # 72 int16 a frame in base64: 192 bytes a frame
        assert len(d["joints_mm"]) == FRAMES * JOINT_DIMS * 2 * 4 // 3 == 192 * FRAMES
    # one inline script and the JSON block, no external file
    assert [s.get("src") for s in p.scripts] == [None, None] and "http" not in page["text"].split("<h2>Clips")[1]
    assert not p.links                                   # no video: no link


def test_video_link_only_when_the_file_exists(tmp_path):
    names = ("song0__00001000", "song1__00002000")
    _, text = make_report(tmp_path / "a", mp4=names[:1])
    assert Page(text).links == [f"{REP.VIDEO_DIR}/{names[0]}.mp4"]
    # a mapping {clip: path relative to OUT}: linked where that file exists, never the default's
    (tmp_path / "b" / "vids").mkdir(parents=True)
    (tmp_path / "b" / "vids" / "one.mp4").write_bytes(b"\0")
    _, text = make_report(tmp_path / "b", videos={names[0]: "vids/one.mp4", names[1]: "vids/missing.mp4"},
                          mp4=names)
    assert Page(text).links == ["vids/one.mp4"]


def test_drawing_matches_the_projection_in_python(page):
    """Front view, x not mirrored: the dancer's left wrist (+x) is right of the right wrist on screen."""
    d = page["page"].data["clips"][0]
    pts = projected(d, 0)
    assert pts["left_wrist"][0] > pts["head"][0] > pts["right_wrist"][0]
    assert pts["head"][1] < pts["pelvis"][1] < pts["left_ankle"][1]          # y up: the head on top


def projected(clip, frame, size=REP.DANCER_SIZE):
    """Canvas pixel (x, y) of each joint at `frame`, as the script projects them: the clip's whole x and
    y range fitted into the canvas (14 px margins, 22 px for the time at the top), the lowest joint
    14 px above the bottom, x as it is (the dancer's left on the viewer's right), y flipped."""
    w, h = size
    mm = np.frombuffer(base64.b64decode(clip["joints_mm"]), dtype="<i2").reshape(-1, N_JOINTS, 3).astype(float)
    lo, hi = mm.reshape(-1, 3).min(0), mm.reshape(-1, 3).max(0)
    s = min((w - 28) / max(hi[0] - lo[0], 1), (h - 22 - 28) / max(hi[1] - lo[1], 1))
    x = w / 2 + (mm[frame, :, 0] - (lo[0] + hi[0]) / 2) * s
    y = h - 14 - (mm[frame, :, 1] - lo[1]) * s
    return {n: (x[j], y[j]) for n, j in J.items()}


# ---- in a browser -----------------------------------------------------------------------------
class Chromium:
    """Headless chromium driven over the DevTools protocol on a pipe (fds 3 and 4: no websocket)."""

    def __init__(self, exe):
        cmd_r, self._cmd = os.pipe()
        self._reply, reply_w = os.pipe()

        def fds():
            a, b = os.dup(cmd_r), os.dup(reply_w)
            os.dup2(a, 3)
            os.dup2(b, 4)
        self.proc = subprocess.Popen([exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--mute-audio",
                                      "--remote-debugging-pipe", "--autoplay-policy=no-user-gesture-required"],
                                     close_fds=False, preexec_fn=fds, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(reply_w)
        self.n, self.buf, self.session = 0, b"", None

    def send(self, method, **params):
        self.n += 1
        msg = dict(id=self.n, method=method, params=params, **({"sessionId": self.session} if self.session else {}))
        os.write(self._cmd, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self.buf:
                chunk = os.read(self._reply, 1 << 16)
                assert chunk, "chromium closed the pipe"
                self.buf += chunk
            raw, self.buf = self.buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.n:
                assert "error" not in reply, reply["error"]
                return reply["result"]

    def open(self, url):
        target = self.send("Target.createTarget", url=url)["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def js(self, expr):
        result = self.send("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def close(self):
        self.session = None
        self.send("Browser.close")
        self.proc.wait(20)
        os.close(self._cmd)
        os.close(self._reply)


def wait_for(browser, expr, timeout=20.0):
    end = time.monotonic() + timeout
    while not browser.js(expr):
        assert time.monotonic() < end, f"timed out waiting for {expr}"
        time.sleep(0.05)


def colours_at(browser, canvas, points):
    """The colours of canvas `canvas` at each (x, y): the 3 x 3 pixels around it, RGB."""
    got = browser.js(f"""(() => {{ const c = document.getElementById("{canvas}").getContext("2d");
        return {json.dumps([[int(x), int(y)] for x, y in points])}.map(([x, y]) =>
            Array.from(c.getImageData(x - 1, y - 1, 3, 3).data)); }})()""")
    return [np.asarray(px).reshape(9, 4)[:, :3] for px in got]


def shows_frame(browser, clip, frame):
    """The canvas has the head, the left wrist and the right wrist of `frame` where the script projects
    them, in their colours."""
    pts = projected(clip, frame)
    near = [colours_at(browser, clip["canvas"], [pts[n]])[0] for n in ("head", "left_wrist", "right_wrist")]
    return all(np.abs(px - np.asarray(rgb)).sum(1).min() < 60 for px, rgb in zip(near, (HEAD, LEFT, RIGHT)))


def seek(browser, player, t):
    browser.js(f"""new Promise(r => {{ const a = document.getElementById("{player}");
        a.addEventListener("seeked", () => setTimeout(r, 50), {{once: true}}); a.currentTime = {t}; }})""")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium (apt-get install chromium)")
def test_in_headless_chromium(page):
    browser = Chromium(shutil.which("chromium"))
    try:
        browser.open((page["out"] / REP.REPORT_FILE).as_uri())
        wait_for(browser, "location.protocol === 'file:' && document.readyState === 'complete'")  # not about:blank
        wait_for(browser, "[...document.querySelectorAll('audio')].every(a => a.readyState >= 1)")
        first, second = page["page"].data["clips"]
        assert shows_frame(browser, first, 0) and shows_frame(browser, second, 0)
        seek(browser, "a0-generated", 1.5)                       # a paused player sought: it drives
        assert shows_frame(browser, first, 45) and not shows_frame(browser, first, 0)
        assert shows_frame(browser, second, 0)                   # the other clip's figure stays
        seek(browser, "a0-uncond", 0.56)                         # another player: frame floor(0.56 * 30)
        assert shows_frame(browser, first, 16) and not shows_frame(browser, first, 17)
        seek(browser, "a0-real", 9.0)                            # past the end: the last frame
        assert shows_frame(browser, first, FRAMES - 1)
        # playing one player pauses the clip's others; paused, the figure is at the player's frame
        t = browser.js("""(async () => { const [g, r] = ["a0-generated", "a0-real"].map(i => document.getElementById(i));
            await g.play(); await new Promise(ok => setTimeout(ok, 300)); r.currentTime = 0.2; await r.play();
            await new Promise(ok => setTimeout(ok, 300)); const gPaused = g.paused; r.pause();
            await new Promise(ok => setTimeout(ok, 100)); return [gPaused, r.currentTime]; })()""")
        assert t[0] is True
        assert shows_frame(browser, first, min(FRAMES - 1, int(t[1] * FPS)))
        browser.js("location.hash = '#t=1.0'")                   # the hash: every figure to 1.0 s
        wait_for(browser, f"document.getElementById('a1-real').currentTime === 1")
        time.sleep(0.2)
        assert shows_frame(browser, first, 30) and shows_frame(browser, second, 30)
    finally:
        browser.close()
