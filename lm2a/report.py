"""report.html for stage 5 (val.py): one self-contained page a researcher can read and listen to.

    OUT/report.html        the page (inline CSS and one small inline script, no external file: it
                           opens from disk; every link relative to OUT)
    OUT/report/mels/       real above generated log-mel of each shown clip, one colour scale
    OUT/report/attention/  cross-attention maps of a few clips
    OUT/report/video/      <clip>.mp4 of the dancer with its audio, where a video writer put one: the
                           page links a clip's video only when the file exists when the page is written
    OUT/audio/             the wav files the page plays (lm2a.evalaudio)

The page: the summary tables with their reference rows and a sentence computed from the numbers
saying how to read them; the music-likeness figures (lm2a/musicality.py) of the real, generated and
unconditional mels side by side with their Fréchet distances; per clip its song, time, lyric line,
audio players (real, generated, unconditional, the chance clip), the dancer, mels and metrics;
cross-attention maps; the settings.

The dancer. Each shown clip has a <canvas> with its stick figure (lm2a.skeleton.joint_positions of the
clip's pose block), seen from the front. The joints are embedded once in a JSON block
(id="lm2a-dancers"): per clip `origin_mm` (3 ints) and `joints_mm`, base64 of little-endian int16
(frames, 24, 3) millimetres relative to the origin (4 * 2 * 72 / 3 = 192 base64 bytes a frame: about
35 kB for a 6-second clip at 30 fps), with the bones once. The script draws frame
floor(currentTime * fps) (clamped) of whichever of the clip's players plays, or was last played or
sought; playing one pauses the clip's others; a URL hash #t=SECONDS sets every figure and player
to that time (screenshots without user input).

Cross-attention maps. A CrossAttentionBlock attends from the mel frames (queries) to two key sets
with two separate softmaxes: the motion frames (at the mel frame rate, positionally encoded) and
the lyric tokens, after a learned null token (key 0, the only key of a dropped lyric).
`record_attention(model, layer)` makes one block store its weights averaged over heads
(models.cross_attention); `attention_maps` runs one forward of the (EMA) network on the clip's
generated mel noised to t = T/2, with the clip's motion and lyrics. The default layer is the first
attention block of the last up level (`up.<levels-1>.attn`): it works at the full mel-frame
resolution (one query per output frame, where the mid blocks see T / 2^(levels-1) frames) and is the
last attention before the output, so its weights are the ones closest to the frames the model writes.
"""
import base64
import contextlib
import functools
import html
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import numpy as np
import torch

from lm2a.clipio import write_text_atomic
from lm2a.data import collate_fn
from lm2a.plots import pyplot
from lm2a.generate import clip_seed
from lm2a.lyrics import MAX_TOKENS, resolve_encoder_path
from lm2a.musicality import CHROMA_WINDOW_S, FIGURES as MUSIC_FIGURES, HPSS_KERNEL, PARTIAL_MIN_FRAMES
from lm2a.plots import mel_figure
from lm2a.rhythm import METRIC_SOURCES, RESOLUTION_NOTE, aist_motion_beats
from lm2a.skeleton import BONES, SIDE_COLOURS, SIDE_NAMES, joint_positions
from models.cross_attention import CrossAttentionBlock
from models.layout import N_JOINTS, POSE, SMPL_JOINTS

REPORT_FILE = "report.html"
ASSET_DIR = "report"
VIDEO_DIR = f"{ASSET_DIR}/video"    # where the report looks for <clip>.mp4 (relative to OUT)
DANCER_SIZE = (240, 300)             # the dancer's canvas, CSS pixels (width, height)
ROW_ORDER = ("model", "uncond", "chance", "shuffled", "real")
ROW_LABELS = {"model": "model (generated vs real)",
              "uncond": "uncond (guidance 0, no conditions)",
              "chance": "chance (another real clip)",
              "shuffled": "shuffled motion (generated vs another clip)",
              "real": "real audio vs its own motion (ceiling)"}
SPECTRAL_COLUMNS = (("mse", "MSE", "lower"), ("lsd_db", "LSD dB", "lower"), ("ssim", "SSIM", "higher"),
                    ("onset_f1", "onset F1 (mel, 50 ms)", "higher"),
                    ("beat_align", "beat align (mel onsets)", "higher"))
RHYTHM_COLUMNS = (("bcs_d2m_1s", "BCS 1 s"), ("bhs_d2m_1s", "BHS 1 s"), ("bcs_d2m_5hz", "BCS 0.2 s"),
                  ("bhs_d2m_5hz", "BHS 0.2 s"), ("cover_loris_1s", "cover 1 s"), ("hit_loris_1s", "hit 1 s"),
                  ("f1_loris_1s", "F1 1 s *"), ("cover_loris_5hz", "cover 0.2 s"),
                  ("hit_loris_5hz", "hit 0.2 s"), ("f1_loris_5hz", "F1 0.2 s *"), ("bas_aist", "BAS"))
RHYTHM_GROUPS = (("D2M-GAN", 4), ("LORIS", 6), ("AIST++", 1))
MUSIC_COLUMNS = tuple((f, f.replace("_", " ")) for f in MUSIC_FIGURES)  # lm2a/musicality.py's, in its order
MUSIC_ROW_LABELS = {"real": "real audio (the target)", "model": "generated (model)",
                    "uncond": "unconditional (guidance 0)"}
CLIP_COLUMNS = (("mse", "MSE"), ("onset_f1", "onset F1"), ("beat_align", "beat align"),
                ("bhs_d2m_1s", "BHS 1 s"), ("bhs_d2m_5hz", "BHS 0.2 s"), ("f1_loris_5hz", "F1 0.2 s"),
                ("bas_aist", "BAS")) + MUSIC_COLUMNS
CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1240px;color:#222;padding:0 12px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ccc}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}tr.model td{font-weight:600}
.sd{color:#888;font-size:11px}.reading{background:#fff8e0;border-left:4px solid #e0b000;padding:8px}
.clip{border:1px solid #ddd;border-radius:6px;padding:8px 14px;margin:14px 0}
.players{display:grid;grid-template-columns:repeat(4,1fr);gap:8px}.players div{font-size:12px}
audio{width:100%}img{max-width:100%}.note{color:#555;font-size:12px}code{font-size:12px}
th[colspan]{text-align:center}.side{display:flex;gap:16px;align-items:center}.side img{min-width:0}
pre{background:#f7f7f7;border:1px solid #ddd;padding:8px;overflow-x:auto;font-size:12px}
.dance{display:flex;gap:16px;align-items:flex-start;margin:8px 0}.dance .players{flex:1}
canvas.dancer{border:1px solid #ddd;background:#fcfcfc}.figure{font-size:12px;width:min-content}
"""
# The dancer of each shown clip (module docstring, "The dancer"): data from the JSON block
# id="lm2a-dancers" (dancer_data), one canvas per clip, driven by the clip's players.
DANCER_SCRIPT = r"""(() => {
"use strict";
const spec = JSON.parse(document.getElementById("lm2a-dancers").textContent);
const LEFT = new Set(spec.left), RIGHT = new Set(spec.right);
const colour = j => LEFT.has(j) ? spec.colours.left : RIGHT.has(j) ? spec.colours.right : "#333";
function decode(b64) {                        // little-endian int16, whatever this machine's byte order
  const bin = atob(b64), view = new DataView(new ArrayBuffer(bin.length));
  for (let i = 0; i < bin.length; i++) view.setUint8(i, bin.charCodeAt(i));
  const out = new Int16Array(bin.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = view.getInt16(2 * i, true);
  return out;
}
function dancer(clip) {
  const canvas = document.getElementById(clip.canvas);
  if (!canvas) return null;
  const ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height, n = clip.frames, J = spec.joints;
  const players = clip.players.map(id => document.getElementById(id)).filter(Boolean);
  const mm = decode(clip.joints_mm), lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity];
  for (let i = 0; i < mm.length; i++) { lo[i % 3] = Math.min(lo[i % 3], mm[i]); hi[i % 3] = Math.max(hi[i % 3], mm[i]); }
  // One still camera for the whole clip (the dancer travels in it); the floor is the clip's lowest joint.
  // Front view: the camera stands on +z looking back at the dancer (who faces +z at rest), y up. World +x,
  // the dancer's left, is drawn to the RIGHT: x is not mirrored, so the dancer's left is on the viewer's
  // right, as when facing a person. The canvas's y runs down, so y is flipped.
  const margin = 14, top = 22;
  const s = Math.min((W - 2 * margin) / Math.max(hi[0] - lo[0], 1), (H - top - 2 * margin) / Math.max(hi[1] - lo[1], 1));
  const X = v => W / 2 + (v - (lo[0] + hi[0]) / 2) * s, Y = v => H - margin - (v - lo[1]) * s;
  const width = z => 1.5 + 2.5 * (z - lo[2]) / Math.max(hi[2] - lo[2], 1);   // nearer the camera: thicker
  const at = (f, j, a) => mm[(f * J + j) * 3 + a];
  let active = players[0] || null, raf = 0;
  function draw(t) {
    const f = Math.min(n - 1, Math.max(0, Math.floor(t * clip.fps)));
    ctx.clearRect(0, 0, W, H);
    ctx.strokeStyle = "#aaa"; ctx.lineWidth = 1;
    ctx.beginPath(); ctx.moveTo(0, Y(lo[1])); ctx.lineTo(W, Y(lo[1])); ctx.stroke();
    ctx.lineCap = "round";
    for (const [p, c] of spec.bones) {
      ctx.strokeStyle = colour(c); ctx.lineWidth = width((at(f, p, 2) + at(f, c, 2)) / 2);
      ctx.beginPath(); ctx.moveTo(X(at(f, p, 0)), Y(at(f, p, 1))); ctx.lineTo(X(at(f, c, 0)), Y(at(f, c, 1))); ctx.stroke();
    }
    ctx.fillStyle = "#333"; ctx.beginPath();
    ctx.arc(X(at(f, spec.head, 0)), Y(at(f, spec.head, 1)), Math.max(3, 90 * s), 0, 2 * Math.PI); ctx.fill();
    ctx.font = "12px system-ui, sans-serif"; ctx.fillText(`${t.toFixed(2)} s  (frame ${f} of 0-${n - 1})`, 6, 15);
  }
  const playing = () => players.find(p => !p.paused && !p.ended);
  function follow() { draw(active.currentTime); raf = active.paused ? 0 : requestAnimationFrame(follow); }
  for (const p of players) {
    p.addEventListener("play", () => {
      for (const q of players) if (q !== p && !q.paused) q.pause();      // one player drives the figure
      active = p; cancelAnimationFrame(raf); raf = requestAnimationFrame(follow);
    });
    const stop = () => { if (p === active) { cancelAnimationFrame(raf); raf = 0; draw(p.currentTime); } };
    const moved = () => { if (p === active || !playing()) { active = p; if (!raf) draw(p.currentTime); } };
    for (const e of ["pause", "ended"]) p.addEventListener(e, stop);
    for (const e of ["seeking", "seeked", "loadedmetadata"]) p.addEventListener(e, moved);
  }
  draw(0);
  return t => { for (const p of players) p.currentTime = t; draw(t); };
}
const seekers = spec.clips.map(dancer).filter(Boolean);
function fromHash() {                         // #t=1.5: every figure and player to 1.5 s
  const m = /^#t=(\d+(?:\.\d*)?)$/.exec(location.hash);
  if (m) for (const seek of seekers) seek(parseFloat(m[1]));
}
addEventListener("hashchange", fromHash);
fromHash();
})();"""


# ---- attention recording ----------------------------------------------------------------------
def default_attention_layer(model) -> str:
    """The first attention block of the last up level: full mel-frame resolution, last before the
    output (module docstring)."""
    return f"up.{len(model.up) - 1}.attn"


def attention_block(model, layer_name=None):
    """The CrossAttentionBlock named layer_name (None = default_attention_layer). Raises ValueError
    listing the blocks there are, so a typo fails before any work."""
    layer_name = layer_name or default_attention_layer(model)
    try:
        block = model.get_submodule(layer_name)
    except AttributeError as e:
        names = [n for n, m in model.named_modules() if isinstance(m, CrossAttentionBlock)]
        raise ValueError(f"attention layer {layer_name!r}: no such module (cross-attention blocks: "
                         f"{', '.join(names)})") from e
    if not isinstance(block, CrossAttentionBlock):
        raise ValueError(f"attention layer {layer_name!r} is a {type(block).__name__}, not a "
                         f"CrossAttentionBlock")
    return block


@contextlib.contextmanager
def record_attention(model, layer_name=None):
    """with record_attention(unet, "up.1.attn") as block: unet(...); block.attention_weights ->
    {"motion": (B, T_layer, Tm), "lyrics": (B, T_layer, 1 + L)} averaged over heads. The block's
    outputs are unchanged; recording stops (and the weights are dropped) when the block ends."""
    block = attention_block(model, layer_name)
    block.record_attention = True
    try:
        yield block
    finally:
        block.record_attention = False
        block.attention_weights = None


def attention_maps(diffusion, item, mel, layer=None, t=None, seed=0):
    """One forward of diffusion.model on `mel` (raw log-mel (80, T), e.g. the generated one)
    normalised and noised to timestep t (default T/2, noise from `seed`), with the item's motion and
    lyrics (lm2a.generate.load_clips items) -> dict(lyrics (T_q, 1 + L), motion (T_q, Tm) numpy
    weights averaged over heads, query_stride (mel frames per query), mel_frames (T), layer, t)."""
    model = diffusion.model
    layer = layer or default_attention_layer(model)
    t = diffusion.timesteps // 2 if t is None else int(t)
    device = diffusion.device
    batch = collate_fn([item])
    x0 = diffusion.normalize_mel(torch.as_tensor(np.asarray(mel), dtype=torch.float32)[None].to(device))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(int(seed))).to(device)
    steps = torch.full((1,), t, dtype=torch.long, device=device)
    xt = diffusion.q_sample(x0, steps, noise).to(x0.dtype)                 # (1, 80, T)
    with torch.no_grad(), record_attention(model, layer) as block:
        model(xt, steps, diffusion.motion_input(batch["motion"].to(device)),
              batch["lyrics"].to(device), lyric_pad_mask=batch["lyric_pad_mask"].to(device))
        weights = {k: v[0].float().cpu().numpy() for k, v in block.attention_weights.items()}
    length = x0.shape[-1]
    padded = -(-length // model.length_multiple) * model.length_multiple
    stride = padded // weights["motion"].shape[0]
    keep = -(-length // stride)                              # queries inside the clip (no padding)
    return dict(lyrics=weights["lyrics"][:keep], motion=weights["motion"][:keep], query_stride=stride,
                mel_frames=length, layer=layer, t=t)


@functools.lru_cache(maxsize=4)
def _tokenizer(text_encoder):
    from transformers import AutoTokenizer  # heavy, and only the attention labels need it
    path = resolve_encoder_path(text_encoder)
    if not Path(path).is_dir():        # never download at run time
        return None
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def token_labels(text_encoder, lyric_text, n_tokens):
    """Labels of the lyric keys: "(null)" then the encoder's tokens of the line (special tokens
    included, as preprocess.py encoded them), or "#i" when the tokenizer is not at hand locally or
    its count differs from the clip's n_tokens."""
    tokens = None
    try:
        tok = _tokenizer(str(text_encoder))
        if tok is not None:
            ids = tok(str(lyric_text), truncation=True, max_length=MAX_TOKENS)["input_ids"]
            tokens = tok.convert_ids_to_tokens(ids)
    except (OSError, ValueError, ImportError):   # labels are a courtesy: index labels will do
        tokens = None
    if tokens is None or len(tokens) != n_tokens:
        tokens = [f"#{i}" for i in range(n_tokens)]
    return ["(null)"] + list(tokens)


def plot_attention(path, maps, labels, motion_beat_s, sr, hop, title=""):
    """Two heatmaps over the mel frames (x, seconds): weight on each lyric token (rows labelled
    with `labels`) and on each motion frame (y, seconds; dashed lines = motion beats, dotted = the
    same moment)."""
    plt = pyplot()
    lyr, mot = maps["lyrics"], maps["motion"]                 # (T_q, 1 + L), (T_q, Tm)
    dur = maps["mel_frames"] * hop / sr                       # queries and motion keys span the clip
    fig, axes = plt.subplots(2, 1, figsize=(10, 3.0 + 0.16 * len(labels) + 3.2), constrained_layout=True,
                             gridspec_kw=dict(height_ratios=[0.8 + 0.16 * len(labels), 3.2]))
    im = axes[0].imshow(lyr.T, aspect="auto", cmap="viridis", interpolation="nearest",
                        extent=(0, dur, len(labels) - 0.5, -0.5))
    axes[0].set_yticks(range(len(labels)), labels, fontsize=7)
    axes[0].set_ylabel("lyric key")
    fig.colorbar(im, ax=axes[0], label="weight")
    im = axes[1].imshow(mot.T, aspect="auto", cmap="viridis", interpolation="nearest", origin="lower",
                        extent=(0, dur, 0, dur))
    for b in motion_beat_s:
        axes[1].axhline(b, color="white", lw=0.8, ls="--", alpha=0.8)
    axes[1].plot([0, dur], [0, dur], color="red", lw=0.8, ls=":")
    axes[1].set_ylabel("motion frame time (s)\n-- motion beats")
    axes[1].set_xlabel("mel frame time (s)")
    fig.colorbar(im, ax=axes[1], label="weight")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---- pages ------------------------------------------------------------------------------------
def pick_clips(clips, n):
    """Indices of up to n clips, taking the songs in turn (clip order within a song)."""
    by_song = {}
    for i, c in enumerate(clips):
        by_song.setdefault(c["song"], []).append(i)
    picked, queues = [], list(by_song.values())
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return picked


def rel(out_dir, path):
    """A path as a link relative to out_dir (forward slashes, URL-quoted)."""
    return quote(Path(path).resolve().relative_to(Path(out_dir).resolve()).as_posix())


def encode_joints(joints):
    """Joint positions (frames, 24, 3) in metres -> the page's compact form (module docstring):
    dict(frames, origin_mm [x, y, z] ints, joints_mm base64 of little-endian int16 millimetres
    relative to origin_mm). Rounding to the mm puts every joint within 0.5 mm of where it was."""
    mm = np.rint(np.asarray(joints, dtype=np.float64) * 1000.0)
    origin = np.rint(mm.reshape(-1, 3).mean(0))          # int16 spans +-32 m around the clip's centre
    offsets = np.clip(mm - origin, -32768, 32767).astype("<i2")
    return dict(frames=int(mm.shape[0]), origin_mm=[int(v) for v in origin],
                joints_mm=base64.b64encode(offsets.tobytes()).decode("ascii"))


def video_link(out_dir, name, videos=None):
    """The link to the clip's MP4 (videos: {clip name: path relative to out_dir}; default
    VIDEO_DIR/<name>.mp4), or None when that file does not exist now: the page has no dead link."""
    path = (videos or {}).get(name, f"{VIDEO_DIR}/{name}.mp4")
    return rel(out_dir, Path(out_dir) / path) if (Path(out_dir) / path).is_file() else None


def clip_pages(out_dir, clips, picked, gens, wav_paths=None, pairs=None, seed=None, videos=None):
    """Writes the mel PNG of each picked clip -> list of per-clip dicts for write_report: name,
    song, start_s, seconds, lyric_text, mel_png, audio {real, generated, uncond, chance} (links or
    None), chance_name, clip_seed, fps, dancer (encode_joints of the clip's pose block), video (the
    link of video_link(out_dir, name, videos) or None)."""
    out_dir = Path(out_dir)
    wav_paths = wav_paths or {}
    info = []
    for i in picked:
        c = clips[i]
        name = c["name"]
        other = clips[pairs[i]]["name"] if pairs is not None else None
        png = out_dir / ASSET_DIR / "mels" / f"{name}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        mel_figure(png, [("real", [c["mel"]]), ("generated", [gens[name]])],
                   title=f"{name}: real (top) and generated, one colour scale")

        def link(kind, clip_name):
            path = wav_paths.get(kind, {}).get(clip_name)
            return rel(out_dir, path) if path is not None else None
        info.append(dict(name=name, song=c["song"], start_s=float(c["start_s"]),
                         seconds=c["mel"].shape[1] * int(c["hop_length"]) / int(c["sr"]),
                         lyric_text=str(c.get("lyric_text", "")), mel_png=rel(out_dir, png),
                         audio={"real": link("real", name), "generated": link("generated", name),
                                "uncond": link("uncond", name),
                                "chance": link("real", other) if other else None},
                         chance_name=other, clip_seed=clip_seed(seed, name) if seed is not None else None,
                         fps=int(c["fps"]), dancer=encode_joints(joint_positions(c["motion"][:, POSE])),
                         video=video_link(out_dir, name, videos)))
    return info


def attention_pages(out_dir, diffusion, items, clips, names, layer=None, t=None, seed=0, gens=None):
    """Attention PNGs of the named clips (items: {name: load_clips item}, clips: {name: clip
    dict}, gens: {name: generated mel}) -> list of dict(name, png, layer, t, lyric_text)."""
    out_dir = Path(out_dir)
    out = []
    for name in names:
        clip, item = clips[name], items[name]
        maps = attention_maps(diffusion, item, gens[name], layer, t, seed)
        labels = token_labels(clip.get("text_encoder", ""), clip.get("lyric_text", ""),
                              int(item["lyrics"].shape[0]))
        fps = int(clip["fps"])
        beats = aist_motion_beats(clip["motion"], fps) / fps
        png = out_dir / ASSET_DIR / "attention" / f"{name}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        plot_attention(png, maps, labels, beats, int(clip["sr"]), int(clip["hop_length"]),
                       title=f"{name}: layer {maps['layer']}, t = {maps['t']}, "
                             f"\"{clip.get('lyric_text', '')}\"")
        out.append(dict(name=name, png=rel(out_dir, png), layer=maps["layer"], t=maps["t"],
                        lyric_text=str(clip.get("lyric_text", "")),
                        peak_token=labels[int(maps["lyrics"].mean(0).argmax())]))
    return out


# ---- html -------------------------------------------------------------------------------------
def _num(x, spec=".3f"):
    if x is None or isinstance(x, str):
        return "n/a" if x is None else html.escape(x)
    return format(x, spec) if math.isfinite(x) else ("n/a" if math.isnan(x) else str(x))


def _stat(summary, kind, key):
    try:
        return summary["rows"][kind]["metrics"][key]
    except (KeyError, TypeError):
        return None


def _cell(stat, extra=""):
    if stat is None or not stat.get("count"):
        return "<td>&ndash;</td>"
    return (f"<td>{_num(stat['mean'])}{extra} <span class=sd>&plusmn;{_num(stat['std'], '.2f')}</span></td>")


def _mean(summary, kind, key):
    s = _stat(summary, kind, key)
    return s["mean"] if s and s.get("count") else None


def spectral_table(summary):
    head = "".join(f"<th title='{d} is better'>{html.escape(label)}</th>" for _, label, d in SPECTRAL_COLUMNS)
    lines = [f"<table><tr><th>row</th><th>n</th>{head}<th>Fr&eacute;chet</th></tr>"]
    for kind in ROW_ORDER:
        if kind not in summary.get("rows", {}):
            continue
        cells = "".join(_cell(_stat(summary, kind, k)) for k, _, _ in SPECTRAL_COLUMNS)
        fd = summary.get("frechet", {}).get(kind)
        lines.append(f"<tr class={kind}><td>{ROW_LABELS[kind]}</td><td>{summary['rows'][kind]['n']}</td>"
                     f"{cells}<td>{_num(fd, '.2f') if fd is not None else '&ndash;'}</td></tr>")
    lines.append("</table>")
    return "\n".join(lines)


def music_table(summary):
    """Music-likeness (lm2a/musicality.py) of the real, generated and unconditional mels side by side,
    with the Fréchet distance of each set to the real one (for real: its split-half floor)."""
    table = summary.get("music_likeness") or {}
    if not table:
        return "<p class=note>No music-likeness figures in summary.json.</p>"
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in MUSIC_COLUMNS)
    lines = [f"<table><tr><th>mel</th>{head}<th>Fr&eacute;chet to real</th></tr>"]
    for kind, label in MUSIC_ROW_LABELS.items():
        if kind not in table:
            continue
        cells = "".join(f"<td>{_num(table[kind][k])}</td>" for k, _ in MUSIC_COLUMNS)
        fd = table[kind].get("frechet")
        fd_cell = _num(fd, ".2f") if fd is not None else "&ndash;"
        if kind == "real" and fd is not None:
            fd_cell += " (split halves)"
        other = summary.get("frechet", {}).get("real_other_songs")
        if kind == "real" and other is not None:
            fd_cell += f"; {_num(other, '.2f')} (real clips of other songs)"
        lines.append(f"<tr class={kind}><td>{label}</td>{cells}<td>{fd_cell}</td></tr>")
    lines.append(f"</table><p class=note>Means over clips, each figure in [0, 1], higher = more like music: "
                 f"harmonic share = energy share of the harmonic part (HPSS, {HPSS_KERNEL} x {HPSS_KERNEL} median "
                 f"filters); partials = energy share of spectral peaks held {PARTIAL_MIN_FRAMES} frames or more; "
                 f"chroma concentration = how much of the pitch-class energy sits on a few pitch classes over "
                 f"{CHROMA_WINDOW_S:g} s. "
                 "A noise texture with the real audio's loudness and onsets scores well below real audio on all "
                 "three. The chance row is the real clips in another order: its means are the real row's. "
                 "Definitions: <code>lm2a/musicality.py</code>.</p>")
    return "\n".join(lines)


def rhythm_table(summary):
    rhythm = summary.get("rhythm") or {}
    if not rhythm:
        return "<p class=note>No waveform metrics (val.py --no_audio_metrics).</p>"
    groups = "".join(f"<th colspan={n}>{name}</th>" for name, n in RHYTHM_GROUPS)
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in RHYTHM_COLUMNS)
    lines = [f"<table><tr><th></th>{groups}</tr><tr><th>row</th>{head}</tr>"]
    for kind in ROW_ORDER:
        if kind not in rhythm:
            continue
        cells = []
        for key, _ in RHYTHM_COLUMNS:
            s = rhythm[kind].get(key)
            if s is not None and "of_means" in s:      # LORIS's set F1: of the mean cover and hit
                cells.append(f"<td>{_num(s['of_means'])}</td>" if s.get("count") else "<td>&ndash;</td>")
            else:
                cells.append(_cell(s))
        lines.append(f"<tr class={kind}><td>{ROW_LABELS[kind]}</td>{''.join(cells)}</tr>")
    lines.append("</table><p class=note>Mean &plusmn; std (ddof 1, as LORIS) over clips. * F1 of the "
                 "mean cover and the mean hit, the figure LORIS reports (the mean of per-clip F1 is in "
                 "summary.json).</p>")
    return "\n".join(lines)


def field_table_section(summary):
    """summary["field_table"] (lm2a/fieldtable.py's Markdown, also OUT/field_table.md) as it is, or why
    there is none."""
    text, name = summary.get("field_table"), summary.get("field_table_file")
    if not text:
        reason = summary.get("field_table_skipped") or "no field table in summary.json"
        return f"<p class=note>{html.escape(reason)}.</p>"
    return (f"<p class=note>The rhythm scores as the dance-to-music papers print them, with their protocol: "
            f"Markdown to paste into a paper, also in <a href=\"{quote(name)}\">{html.escape(name)}</a>.</p>"
            f"<pre>{html.escape(text)}</pre>")


def per_window_section(summary):
    """summary["per_window"] (whole sequences scored window by window, lm2a.evaluation.score_windows):
    its rhythm and spectral tables and its field table; '' when no clip is longer than the window."""
    pw = summary.get("per_window")
    if not pw:
        return ""
    table = pw.get("field_table")
    field = (f"<p class=note>The field's table per window, also in <a href=\"{quote(pw['field_table_file'])}\">"
             f"{html.escape(pw['field_table_file'])}</a>.</p><pre>{html.escape(table)}</pre>" if table else "")
    return (f"<h2>Per window</h2><p>{pw['sequences']} of the {pw['clips']} clips are longer than the model's "
            f"window and were generated in windows; the tables above score each clip whole. Here every clip's "
            f"real and generated mels and audio are cut into consecutive {pw['window_s']:.2f} s windows "
            f"({pw['windows']} windows; a last piece shorter than half a window dropped), each scored as a clip "
            f"(rows in per_window.csv).</p>\n<h3>Rhythm, on the waveforms</h3>\n{rhythm_table(pw)}\n"
            f"<h3>Spectral, on the log-mels</h3>\n{spectral_table(pw)}\n{field}")


def reading_sentence(summary):
    """One sentence computed from the numbers: which rows the model must beat, and by how much it
    does on the scores that can separate rows."""
    rhythm = summary.get("rhythm") or {}

    def value(kind, key):
        if rhythm:
            s = rhythm.get(kind, {}).get(key)
            if s and "of_means" in s:
                return s["of_means"]
            return s["mean"] if s and s.get("count") else None
        return _mean(summary, kind, key)
    keys = ((("bas_aist", "BAS (AIST++)"), ("f1_loris_5hz", "LORIS F1 at 0.2 s"),
             ("bhs_d2m_5hz", "BHS at 0.2 s")) if rhythm else (("beat_align", "beat alignment"), ("onset_f1", "onset F1")))
    labels = {"shuffled": "shuffled motion", "chance": "chance", "uncond": "uncond"}
    parts = []
    for key, label in keys:
        m = value("model", key)
        if m is None or not math.isfinite(m):
            continue
        refs = [(k, value(k, key)) for k in labels]
        refs = [(k, v) for k, v in refs if v is not None and math.isfinite(v)]
        if not refs:
            continue
        beaten = [labels[k] for k, v in refs if m > v]
        verdict = ("above all of them" if len(beaten) == len(refs) else
                   "above none of them" if not beaten else "above " + " and ".join(beaten) + " only")
        diffs = ", ".join(f"{m - v:+.3f} vs {labels[k]}" for k, v in refs)
        real = value("real", key)
        ceiling = f", real audio {real:.3f}" if real is not None and math.isfinite(real) else ""
        parts.append(f"{label} {m:.3f} ({diffs}{ceiling}): {verdict}")
    if not parts:
        return "No reference rows: run val.py without --no_references to read the numbers against them."
    sentence = ("Higher is better (BCS: nearest 1, it counts onset density, not timing); the model "
                "must score above the shuffled-motion, chance and unconditional rows, real audio being "
                "the ceiling; model " + "; ".join(parts))
    if rhythm:
        sentence += ("; the 1 s columns (the papers' setting) move in steps of 1/6 on 6-second clips and "
                     "hardly separate the rows")
    return sentence + "."


def player_id(index, kind):
    """The id of the index-th shown clip's player of `kind` (real, generated, uncond, chance)."""
    return f"a{index}-{kind}"


def dancer_id(index):
    return f"dancer{index}"


def lyric_html(text):
    """The clip's lyric line quoted, or what stands for none (AIST++ clips: the learned null lyric)."""
    return f"&ldquo;{html.escape(text)}&rdquo;" if text else "none (the null lyric)"


def dancer_figure(c, index):
    """The clip's dancer canvas (drawn by DANCER_SCRIPT) and, when there is one, its MP4 link."""
    video = f"<br><a href=\"{c['video']}\">video (MP4)</a>" if c.get("video") else ""
    width, height = DANCER_SIZE
    return (f"<div class=figure><canvas class=dancer id={dancer_id(index)} width={width} height={height}>"
            f"(the dancer needs JavaScript)</canvas><br><span class=note>front view: the dancer's left "
            f"({SIDE_NAMES['left']}) is on your right; the figure follows the player that plays</span>{video}</div>")


def clip_section(c, rows, index=0):
    title = (f"{html.escape(c['name'])} &mdash; song <b>{html.escape(c['song'])}</b>, "
             f"{c['start_s']:.2f}&ndash;{c['start_s'] + c['seconds']:.2f} s")
    players = []
    for kind, label in (("real", "real"), ("generated", "generated"), ("uncond", "unconditional"),
                        ("chance", f"chance: {c['chance_name']}" if c["chance_name"] else "chance")):
        src = c["audio"].get(kind)
        player = (f"<audio id={player_id(index, kind)} controls preload=metadata src=\"{src}\"></audio>"
                  if src else "<span class=note>no audio</span>")
        players.append(f"<div>{html.escape(label)}<br>{player}</div>")
    figure = dancer_figure(c, index) if c.get("dancer") else ""
    mine = {r["row"]: r for r in rows if r["name"] == c["name"]}
    head = "".join(f"<th>{label}</th>" for _, label in CLIP_COLUMNS)
    body = "".join(f"<tr class={k}><td>{k}</td>" + "".join(
        f"<td>{_num(mine[k][m]) if m in mine[k] and isinstance(mine[k][m], (int, float)) else '&ndash;'}</td>"
        for m, _ in CLIP_COLUMNS) + "</tr>" for k in ROW_ORDER if k in mine)
    seed = f" &middot; noise seed {c['clip_seed']}" if c.get("clip_seed") is not None else ""
    return (f"<div class=clip id=\"{html.escape(c['name'])}\"><h3>{title}</h3>"
            f"<p>lyric: {lyric_html(c['lyric_text'])}{seed}</p>"
            f"<div class=dance>{figure}<div class=players>{''.join(players)}</div></div>"
            f"<div class=side><img src=\"{c['mel_png']}\" alt=\"mels of {html.escape(c['name'])}\">"
            f"<table><tr><th>row</th>{head}</tr>{body}</table></div></div>")


def dancer_data(clips_info):
    """What DANCER_SCRIPT draws: the bones and joint sides once, and per shown clip with a dancer its
    canvas id, its players' ids, fps and encode_joints fields."""
    clips = [dict(canvas=dancer_id(i), players=[player_id(i, k) for k, src in c["audio"].items() if src],
                  fps=c["fps"], **c["dancer"]) for i, c in enumerate(clips_info) if c.get("dancer")]
    return dict(joints=N_JOINTS, bones=[list(b) for b in BONES], clips=clips,
                left=[j for j, n in enumerate(SMPL_JOINTS) if n.startswith("left_")],
                right=[j for j, n in enumerate(SMPL_JOINTS) if n.startswith("right_")],
                head=SMPL_JOINTS.index("head"),
                colours={side: "#%02x%02x%02x" % rgb for side, rgb in SIDE_COLOURS.items()})


def dancer_scripts(clips_info):
    """The JSON block of dancer_data and DANCER_SCRIPT, or "" when no clip has a dancer."""
    data = dancer_data(clips_info)
    if not data["clips"]:
        return ""
    text = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")   # never ends the block early
    return (f"<script type=application/json id=lm2a-dancers>{text}</script>\n"
            f"<script>{DANCER_SCRIPT}</script>")


def settings_table(summary):
    s = summary.get("settings", {})
    keys = ("ckpt_path", "ckpt_step", "use_ema", "sampler", "steps", "eta", "guidance", "clip_x0", "precision",
            "seed", "batch_size", "chance_seed", "npz_dir", "gen_dir", "device")
    rows = [(k, s.get(k)) for k in keys if k in s]
    uncond = s.get("uncond")
    if uncond:
        rows.append(("uncond row", f"guidance {uncond.get('guidance')}, seed {uncond.get('seed')}, "
                                   f"{uncond.get('sampler')} {uncond.get('steps')} steps"))
    for k, v in (summary.get("audio") or {}).items():
        rows.append((f"audio: {k}", v))
    for k, v in (summary.get("attention") or {}).items():
        rows.append((f"attention: {k}", v))
    body = "".join(f"<tr><td>{html.escape(str(k))}</td><td style='text-align:left'>"
                   f"<code>{html.escape(str(v))}</code></td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def attention_section(summary, attention):
    """The cross-attention maps with how to read them, the reason there are none, or ""."""
    if attention:
        first = attention[0]
        return (f"<h2>Cross-attention</h2><p>Layer <code>{html.escape(first['layer'])}</code> at diffusion "
                f"step t = {first['t']} (the generated mel noised half-way), weights averaged over heads. "
                f"Top: for each mel frame (x), the weight on each lyric token (row 0 is the learned null "
                f"token); bottom: the weight on each motion frame (y), dashed lines at the motion's beats, "
                f"the dotted diagonal where motion time equals mel time.</p>"
                + "".join(f"<h3>{html.escape(a['name'])}: &ldquo;{html.escape(a['lyric_text'])}&rdquo;</h3>"
                          f"<img src=\"{a['png']}\" alt=\"attention of {html.escape(a['name'])}\">"
                          for a in attention))
    if summary.get("attention", {}).get("skipped"):
        return f"<h2>Cross-attention</h2><p class=note>{html.escape(summary['attention']['skipped'])}</p>"
    return ""


def write_report(out_dir, summary, rows, clips_info, attention=(), plots=()):
    """Writes OUT/report.html (summary with reference rows and a reading sentence, per-clip
    sections, attention maps, plots, settings) -> its path. Every link is relative to out_dir."""
    out_dir = Path(out_dir)
    n = summary.get("counts", {})
    audio = summary.get("audio") or {}
    vocoder = audio.get("vocoder", "none (no waveform metrics)")
    sources = "".join(f"<li><code>{k}</code>: {html.escape(v)}</li>" for k, v in METRIC_SOURCES.items())
    notes = "".join(f"<li>{html.escape(x)}</li>" for x in summary.get("notes", []))
    att = attention_section(summary, attention)
    plot_html = "".join(f"<img src=\"{quote(p)}\" alt=\"{html.escape(p)}\">" for p in plots
                        if (out_dir / p).is_file())
    npz_dir = html.escape(str(summary.get("settings", {}).get("npz_dir", "")))
    page = f"""<!DOCTYPE html>
<html lang=en><head><meta charset=utf-8><title>LM2A evaluation: {npz_dir}</title>
<style>{CSS}</style></head><body>
<h1>LM2A evaluation</h1>
<p>{n.get('clips_evaluated', '?')} clips of {n.get('songs', '?')} songs from
<code>{npz_dir}</code>; audio vocoded with <b>{html.escape(str(vocoder))}</b> (the same vocoder for
real and generated). Mean &plusmn; std over clips.</p>
<h2>Summary</h2>
<h3>Rhythm, on the waveforms</h3>
{rhythm_table(summary)}
<h3>Spectral, on the log-mels</h3>
{spectral_table(summary)}
<p class=reading>{html.escape(reading_sentence(summary))}</p>
<p class=note>{html.escape(RESOLUTION_NOTE)}</p>
<details><summary>Where each rhythm score comes from</summary><ul>{sources}</ul></details>
<h3>The field's table</h3>
{field_table_section(summary)}
<h3>Music-likeness: real / generated / uncond</h3>
{music_table(summary)}
{f'<ul class=note>{notes}</ul>' if notes else ''}
{per_window_section(summary)}
<h2>Clips</h2>
{chr(10).join(clip_section(c, rows, i) for i, c in enumerate(clips_info))}
{dancer_scripts(clips_info)}
{att}
<h2>Plots</h2>{plot_html}
<h2>Settings</h2>
{settings_table(summary)}
<p class=note>written {datetime.now(timezone.utc).isoformat(timespec='seconds')} by val.py</p>
</body></html>
"""
    path = out_dir / REPORT_FILE
    write_text_atomic(path, page)
    return path
