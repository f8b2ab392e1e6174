"""report.html (lm2a/report.py, written by val.py) and the waveform metrics behind it: every file the
page links exists, every wav has its clip's length, the summary table holds the reference rows, the
attention maps exist; the rhythm scores in per_clip.csv are those of the wav files val.py wrote (so
anyone can recompute them from OUT/audio/); recording attention leaves the network's output as it is."""
import html
import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import soundfile as sf
import torch

import val
from lm2a import fieldtable as FT
from lm2a import report as REP
from lm2a import rhythm as R
from lm2a.lyrics import DEFAULT_TEXT_ENCODER
from models.cross_attention import SDPAAttention, attention_weights
from models.unet1d_ultimate import UNet1D_ultimate
from tests.fakeclips import write_fake_clips
from tests.rhythm_helpers import rhythm_metrics
from tests.test_sample import TINY, make_checkpoint
from tests.test_val import read_rows
from tests.test_vocoder import tiny_bigvgan

MEL_FRAMES, HOP, SR = 64, 256, 22050


def _single_threaded_blas():
    """Griffin-Lim's small matrix products crawl when BLAS threads fight over 2 busy cores."""
    try:  # optional: without it the test is slower, not wrong
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(1)


class Links(HTMLParser):
    """Every src / href of a page, and the text of its table cells."""

    def __init__(self):
        super().__init__()
        self.links, self.cells, self.audio, self.images = [], [], [], []
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if attrs.get(key):
                self.links.append(attrs[key])
        if tag == "audio" and attrs.get("src"):
            self.audio.append(attrs["src"])
        if tag == "img":
            self.images.append(attrs["src"])
        self._in_cell = tag in ("td", "th")

    def handle_data(self, data):
        if self._in_cell and data.strip():
            self.cells.append(data.strip())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    limits = _single_threaded_blas()
    root = tmp_path_factory.mktemp("report")
    paths = write_fake_clips(root / "test", n=4, mel_frames=MEL_FRAMES, n_songs=2, seed=5,
                             text_encoder=DEFAULT_TEXT_ENCODER)
    ckpt = make_checkpoint(root / "ckpt" / "step_00000003.pt", root / "test", step=3)
    out = root / "val"
    rc = val.main(["--ckpt", str(ckpt), "--npz_dir", str(root / "test"), "--out_dir", str(out),
                   "--sampler", "ddim", "--steps", "2", "--seed", "1", "--gl_iters", "2", "--report_clips", "3",
                   "--attention_clips", "1", "--quiet"])
    assert rc == 0
    yield {"root": root, "out": out, "paths": paths, "ckpt": ckpt}
    if limits is not None:
        limits.restore_original_limits()


def test_every_link_exists_and_every_wav_has_the_clip_length(run):
    out = run["out"]
    page = Links()
    page.feed((out / "report.html").read_text(encoding="utf-8"))
    assert page.links, "the page links nothing"
    for link in page.links:
        assert not link.startswith(("http:", "https:", "/", "file:")), f"{link}: not a relative link"
        assert (out / unquote(link)).is_file(), f"report.html links {link}, which does not exist"
    # 3 clips shown, 4 players each (real, generated, uncond, chance)
    assert len(page.audio) == 12
    wavs = sorted((out / "audio").rglob("*.wav"))
    assert len(wavs) == 12                      # 4 clips x real, generated, uncond
    for wav in wavs:
        info = sf.info(str(wav))
        assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
        assert abs(info.frames - MEL_FRAMES * HOP) < HOP
    for link in page.audio:
        assert unquote(link).startswith("audio/") and unquote(link).endswith(".wav")
    # the chance player plays another clip's real audio
    names = {p.stem for p in run["paths"]}
    chance = [unquote(a) for a in page.audio if "/real/" in a]
    assert len(chance) == 6 and {Path(c).stem for c in chance} <= names


def test_summary_table_holds_the_reference_rows_and_a_reading_sentence(run):
    out = run["out"]
    text = (out / "report.html").read_text(encoding="utf-8")
    page = Links()
    page.feed(text)
    for kind in REP.ROW_ORDER:
        assert sum(cell == REP.ROW_LABELS[kind] for cell in page.cells) == 2, kind  # rhythm and spectral
    assert "must score above the shuffled-motion, chance and unconditional rows" in text
    # the settings table says which arithmetic ran (precision auto, resolved for this CPU)
    ran = json.loads((out / "summary.json").read_text())["settings"]["precision"]
    assert ran in ("fp32", "bf16") and f"<td>precision</td><td style='text-align:left'><code>{ran}</code>" in text
    summary = json.loads((out / "summary.json").read_text())
    bas = {k: summary["rhythm"][k]["bas_aist"]["mean"] for k in ("model", "shuffled")}
    # the sentence quotes the numbers
    quoted = f"BAS (AIST++) {bas['model']:.3f} ({bas['model'] - bas['shuffled']:+.3f} vs shuffled motion"
    assert quoted in text
    assert "ddim" in text and str(run["ckpt"].resolve()) in text and "step_00000003" in text  # settings
    # music-likeness: real, generated and uncond side by side, with the Fréchet distances
    music = summary["music_likeness"]
    assert all(label in page.cells for label in REP.MUSIC_ROW_LABELS.values())
    row = "".join(f"<td>{music['model'][k]:.3f}</td>" for k, _ in REP.MUSIC_COLUMNS)
    assert f"<td>{REP.MUSIC_ROW_LABELS['model']}</td>{row}<td>{music['model']['frechet']:.2f}</td>" in text
    for name in ("fake lyric line", "fakesong5_0"):
        assert name in text


def test_attention_maps_are_drawn(run):
    out = run["out"]
    pngs = sorted((out / "report" / "attention").glob("*.png"))
    assert len(pngs) == 1 and pngs[0].stat().st_size > 5000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["attention"]["layer"] == "up.1.attn" and summary["attention"]["t"] == 25
    assert summary["attention"]["clips"] == [pngs[0].stem]
    assert len(list((out / "report" / "mels").glob("*.png"))) == 3


def test_rhythm_rows_are_those_of_the_written_wavs(run):
    """Every rhythm score in per_clip.csv equals lm2a.rhythm on the wav files: model = generated vs
    real (own motion), chance = the other clip's real audio vs this one, shuffled = the generated
    audio vs the other clip (its real audio and motion), real = real vs itself (own motion)."""
    out = run["out"]
    rows = read_rows(out / "per_clip.csv")
    kinds = ("model", "uncond", "chance", "shuffled", "real")
    assert sorted({r["row"] for r in rows}) == sorted(kinds) and len(rows) == 4 * 5
    clips = {p.stem: np.load(p) for p in run["paths"]}

    def wav(kind, name):
        data, sr = sf.read(str(out / "audio" / kind / f"{name}.wav"), dtype="float32")
        return data

    for r in rows:
        name, other = r["name"], r["paired_with"]
        real, motion = wav("real", name), clips[name]["motion"]
        expected = {"model": (real, wav("generated", name), motion),
                    "uncond": (real, wav("uncond", name), motion),
                    "chance": (real, wav("real", other) if other else None, motion),
                    "shuffled": (wav("real", other) if other else None, wav("generated", name),
                                 clips[other]["motion"] if other else None),
                    "real": (real, real, motion)}[r["row"]]
        scores = rhythm_metrics(*expected, sr=SR)
        for key in R.RHYTHM_KEYS:
            if np.isnan(scores[key]):
                assert r[key] == "nan", (r["row"], key)
            else:
                assert float(r[key]) == pytest.approx(scores[key], rel=1e-5, abs=1e-6), (r["row"], key)
    model = {r["name"]: r for r in rows if r["row"] == "model"}
    for r in rows:   # the model row's beat_align_* columns are the shuffled and real rows' beat_align
        if r["row"] in ("shuffled", "real"):
            assert model[r["name"]][f"beat_align_{r['row']}"] == r["beat_align"]

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["rhythm"]) == set(kinds)
    assert summary["rhythm_sources"] == R.METRIC_SOURCES
    assert summary["rhythm_resolution_note"] == R.RESOLUTION_NOTE
    assert summary["audio"]["vocoder"] == "griffin-lim" and summary["audio"]["gl_iters"] == 2
    f1 = summary["rhythm"]["model"]["f1_loris_5hz"]
    cover = np.mean([float(r["cover_loris_5hz"]) for r in model.values()])
    hit = np.mean([float(r["hit_loris_5hz"]) for r in model.values()])
    assert f1["of_means"] == pytest.approx(R.f1(cover, hit))
    assert summary["counts"]["rows"] == {k: 4 for k in kinds}


def test_field_table_is_written_beside_summary_and_shown(run):
    """OUT/field_table.md is summary.json's "field_table" (lm2a/fieldtable.py, tests/test_fieldtable.py),
    with a row per reference row and the protocol of this run; report.html shows it and the summary
    line names it."""
    out = run["out"]
    summary = json.loads((out / "summary.json").read_text())
    text = (out / FT.FIELD_TABLE_FILE).read_text(encoding="utf-8")
    assert text == summary["field_table"] and summary["field_table_file"] == FT.FIELD_TABLE_FILE
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0][2:] for line in lines[1:]] == list(FT.ROWS.values())
    model = lines[1].strip("| ").split(" | ")
    assert model[-1] == f"{summary['rhythm']['model']['bas_aist']['mean']:.4f}"
    assert model[7] == f"{100 * summary['rhythm']['model']['f1_loris_1s']['of_means']:.1f}"
    assert f"{MEL_FRAMES * HOP / SR:.2f} s each ({MEL_FRAMES} mel frames" in text
    assert "Split: unknown split (no split.json above the `test` folder)" in text
    assert "Griffin-Lim (2 iterations, seed 0)" in text
    assert summary["field_protocol"]["split"]["set"] == "test"
    assert html.escape(text) in (out / "report.html").read_text(encoding="utf-8")
    assert val.summary_line(summary, out).endswith(f", {out / FT.FIELD_TABLE_FILE} (the papers' table)")


def test_recording_attention_leaves_outputs_unchanged():
    torch.manual_seed(0)
    model = UNet1D_ultimate(**TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, motion = torch.randn(2, 80, 31), torch.randn(2, 31, 234)
    lyrics = torch.randn(2, 5, 384)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    args = (x, torch.tensor([3, 40]), motion, lyrics)
    with torch.no_grad():
        before = model(*args, lyric_pad_mask=pad)
        layer = REP.default_attention_layer(model)
        assert layer == "up.1.attn"
        with REP.record_attention(model, layer) as block:
            during = model(*args, lyric_pad_mask=pad)
            weights = block.attention_weights
        after = model(*args, lyric_pad_mask=pad)
    assert torch.equal(before, during) and torch.equal(before, after)
    assert block.record_attention is False and block.attention_weights is None
    # full resolution at level 0: 32 queries (31 frames padded to a multiple of 2); keys: 31 motion
    # frames, null token + 5 lyric tokens; rows sum to 1; padded tokens get no weight
    assert weights["motion"].shape == (2, 32, 31) and weights["lyrics"].shape == (2, 32, 6)
    for w in weights.values():
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:2]))
    assert torch.all(weights["lyrics"][1, :, 4:] == 0) and torch.all(weights["lyrics"][0, :, 4:] > 0)
    with pytest.raises(ValueError, match="no such module"):
        with REP.record_attention(model, "up.9.attn"):
            pass


def test_recorded_weights_reproduce_the_attention_output():
    """The weights are the ones the attention uses: weights @ V, projected, is its output."""
    torch.manual_seed(1)
    attn = SDPAAttention(16, 8, num_heads=1)
    x, ctx = torch.randn(2, 7, 16), torch.randn(2, 5, 8)
    mask = torch.tensor([[False] * 5, [False, False, True, True, True]])
    w = attention_weights(attn, x, ctx, mask)                           # (B, T, S), one head
    expected = attn.to_out(w @ attn.to_v(ctx))
    torch.testing.assert_close(attn(x, ctx, mask), expected, rtol=1e-5, atol=1e-5)


def test_bigvgan_vocoder_and_no_audio(run, tmp_path):
    """--vocoder with a BigVGAN folder vocodes real and generated alike (wavs of the clip's length);
    --no_audio_metrics writes no audio and a report without players."""
    voc = tiny_bigvgan(tmp_path / "tiny_bigvgan")
    out = tmp_path / "val"
    assert val.main(["--npz_dir", str(run["root"] / "test"), "--gen_dir", str(run["out"] / "generated"),
                     "--out_dir", str(out), "--vocoder", str(voc), "--no_references", "--max_samples", "2",
                     "--report_clips", "1", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["audio"]["vocoder"] == "bigvgan" and set(summary["rhythm"]) == {"model"}
    wavs = sorted((out / "audio").rglob("*.wav"))
    assert [w.parent.name for w in wavs] == ["generated"] * 2 + ["real"] * 2
    assert all(sf.info(str(w)).frames == MEL_FRAMES * HOP for w in wavs)
    assert "no attention maps" in (out / "report.html").read_text(encoding="utf-8")

    out2 = tmp_path / "val_no_audio"
    assert val.main(["--npz_dir", str(run["root"] / "test"), "--gen_dir", str(run["out"] / "generated"),
                     "--out_dir", str(out2), "--no_audio_metrics", "--no_references", "--max_samples", "2",
                     "--report_clips", "1", "--quiet"]) == 0
    assert not (out2 / "audio").exists()
    text = (out2 / "report.html").read_text(encoding="utf-8")
    assert "<audio" not in text and "no waveform metrics" in text.lower()
    assert "no field table: --no_audio_metrics" in text and not (out2 / FT.FIELD_TABLE_FILE).exists()
    assert json.loads((out2 / "summary.json").read_text())["rhythm"] is None


def test_shown_clips_get_a_dance_video_linked_in_the_page(run):
    """val.py renders report/video/<name>.mp4 of each shown clip (lm2a/video.py) and the page links it."""
    out = run["out"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["report_videos"]["videos"] == 3 and summary["report_videos"]["failed"] == []
    videos = sorted((out / "report" / "video").glob("*.mp4"))
    assert len(videos) == 3 and all(v.stat().st_size > 1000 for v in videos)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert all(f"report/video/{v.name}" in page for v in videos)
