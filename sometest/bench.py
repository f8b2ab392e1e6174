"""The one place LM2A's speed is measured: preprocessing, data loading, training, sampling.

    python sometest/bench.py [--quick] [--device auto] [--json bench.json] [--sections pre,load,train,sample]

Every figure is the median of repeated runs after a warm-up; versions that are compared (SDPA vs
nn.MultiheadAttention, preloaded vs per-item loader, DDIM-50 vs DDPM-1000, AMP vs fp32) are measured
in the same run, interleaved. Prints a table and writes JSON. On CUDA the training and sampling rows
are taken with fp32 and with AMP bf16, and peak GPU memory is reported.

Training times lm2a.training.train_step, the step train.py takes. Sampling times
GaussianDiffusion.sample, the path sample.py and val.py take: one sampler step is one guided forward
of the doubled batch plus the scheduler update, every step of a sampler costs about the same, so
seconds per clip = median step time (over SAMPLE_STEPS_TIMED steps) x the sampler's steps / batch,
in fp32 and under bf16 autocast.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lm2a import MOTION_DIM, NUM_MELS  # noqa: E402

# ---- defaults (edit here or pass --flag) --------------------------------------------------------
REPEATS = 5            # timed repetitions per figure (median reported); --quick uses 2
TRAIN_BATCHES = (4, 16)  # training batch sizes
SAMPLE_BATCHES = (1, 8)  # sampling batch sizes
SAMPLE_STEPS_TIMED = 5   # sampler steps timed per repetition
SAMPLERS_TIMED = (("ddpm", 1000), ("ddim", 50), ("dpm++", 20), ("unipc", 20))  # (sampler, steps) rows
T_MEL = 516            # mel frames of a 6 s clip
LYRIC_TOKENS = 16      # tokens per lyric line in synthetic batches
LYRIC_DIM = 384        # all-MiniLM-L6-v2
DEMO_SONGS, DEMO_SECONDS = 5, 40.0  # the demo dataset (make demo)


def median_time(fn, repeats, warmup=1, sync=None):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def reset_peak_rss():
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb():
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# ---- sections ------------------------------------------------------------------------------------
def bench_preprocess(args, work):
    """clips/s of preprocess.py on the demo data at 1 and 2 workers, with the time shares."""
    import preprocess
    from sometest.make_demo_data import make_demo_dataset

    root = work / "JustLMD"
    if not root.exists():
        make_demo_dataset(root, DEMO_SONGS, DEMO_SECONDS, seed=0)
    rows = []
    for workers in (1, 2):
        runs = []
        for r in range(1 if args.quick else 3):
            out = work / f"pre_w{workers}_{r}"
            rep = preprocess.run(preprocess.build_parser().parse_args(
                ["--data_root", str(root), "--out_dir", str(out), "--workers", str(workers), "--quiet"]))
            runs.append(rep)
        med = sorted(runs, key=lambda r: r["timings_s"]["total"])[len(runs) // 2]
        tm = med["timings_s"]
        rows.append({"workers": workers, "clips": med["clips_written"], "seconds": tm["total"],
                     "clips_per_s": med["clips_written"] / tm["total"],
                     "text_encoding_s": tm["text_encoding"], "audio_load_s": tm["audio_load"],
                     "mel_s": tm["mel"], "motion_s": tm["motion"], "lines_encoded": med["lyric_lines_encoded"],
                     "runs_s": [r["timings_s"]["total"] for r in runs]})
    return {"preprocess": rows, "clips_dir": str(work / "pre_w1_0" / "clips")}


class PerItemInterpDataset(torch.utils.data.Dataset):
    """The baseline loader: reads the npz on every access and resamples motion one dimension at a
    time with np.interp (the original study's way)."""

    def __init__(self, files):
        self.files = files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        z = np.load(self.files[i])
        mel, motion = z["mel"], z["motion"]
        T = mel.shape[1]
        t_mel = (np.arange(T) * 256 + 128) / 22050
        t_mot = np.arange(motion.shape[0]) / 30
        res = np.stack([np.interp(t_mel, t_mot, motion[:, d]) for d in range(motion.shape[1])], 1)
        return {"mel": torch.from_numpy(mel.T.copy()), "motion": torch.from_numpy(res.astype(np.float32)),
                "lyrics": torch.from_numpy(z["lyrics"]), "name": Path(self.files[i]).stem}


def bench_loading(args, clips_dir):
    from torch.utils.data import DataLoader
    from dataset import MelDataset, collate_fn

    reps = 2 if args.quick else REPEATS
    files = sorted(Path(clips_dir).glob("*.npz"))
    t = time.perf_counter()
    ds = MelDataset(clips_dir)
    load_s = time.perf_counter() - t

    n_batches = 40  # per timed pass, drawn with replacement so a small split still gives many

    def iterate(dataset, bs=16):
        sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=bs * n_batches)
        for _ in DataLoader(dataset, batch_size=bs, sampler=sampler, collate_fn=collate_fn, num_workers=0):
            pass

    t_pre, _ = median_time(lambda: iterate(ds), reps)
    base = PerItemInterpDataset(files)
    t_base, _ = median_time(lambda: iterate(base), reps)
    items = n_batches * 16
    return {"loading": {"clips": len(ds), "preload_s": load_s, "preload_items_per_s": len(ds) / load_s,
                        "batches_per_s": n_batches / t_pre, "items_per_s": items / t_pre,
                        "baseline_per_item_interp_batches_per_s": n_batches / t_base,
                        "baseline_items_per_s": items / t_base, "batch_size": 16}}


def synthetic_batch(B, T=T_MEL, seed=0):
    """A collate_fn-layout batch (mel (B, T, 80), motion (B, T, 234)) of random clips on the CPU."""
    g = torch.Generator().manual_seed(seed)
    lyr = torch.randn(B, LYRIC_TOKENS, LYRIC_DIM, generator=g)
    pad = torch.zeros(B, LYRIC_TOKENS, dtype=torch.bool)
    pad[B // 2:, LYRIC_TOKENS // 2:] = True
    return {"mel": torch.randn(B, T, NUM_MELS, generator=g) - 5,
            "motion": torch.randn(B, T, MOTION_DIM, generator=g), "lyrics": lyr, "lyric_pad_mask": pad}


def unit_stats():
    return {"mel_mean": torch.zeros(NUM_MELS), "mel_std": torch.ones(NUM_MELS),
            "motion_mean": torch.zeros(MOTION_DIM), "motion_std": torch.ones(MOTION_DIM)}


def bench_training(args, device):
    """Median time of train.py's own step (lm2a.training.train_step: loss, backward, clipping, Adan,
    EMA update, LR schedule) at the default model size."""
    from lm2a.training import TrainConfig, build_parts, train_step
    from models.diffusion import DiffusionConfig
    from models.unet1d_ultimate import UNetConfig

    reps = 2 if args.quick else 3
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    amps = ("off", "bf16") if device.type == "cuda" else ("off",)
    rows = []
    for B in (TRAIN_BATCHES[:1] if args.quick else TRAIN_BATCHES):
        batch = synthetic_batch(B)
        for amp in amps:
            for impl in ("sdpa", "mha"):
                compiled = args.compile and impl == "sdpa"
                parts = build_parts(UNetConfig(lyric_dim=LYRIC_DIM, attn_impl=impl), DiffusionConfig(),
                                    TrainConfig(batch_size=B, amp=amp, lr=1e-4), unit_stats(), device,
                                    total_steps=1000, net_wrapper=torch.compile if compiled else None)
                counter = iter(range(10 ** 6))

                def step():
                    train_step(parts, batch, next(counter))

                reset_peak_rss()
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                med, times = median_time(step, reps, warmup=1 if not compiled else 2, sync=sync)
                mem = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else peak_rss_mb())
                rows.append({"batch": B, "amp": "fp32" if amp == "off" else amp,
                             "attn": impl + ("+compile" if compiled else ""),
                             "step_s": med, "samples_per_s": B / med, "peak_mem_mb": mem,
                             "params": sum(p.numel() for p in parts.model.parameters()), "times": times})
                parts = None  # frees the model before the next one is built
    return {"training": rows}


def bench_sampling(args, device):
    """Seconds per clip of each sampler at its step count, through GaussianDiffusion.sample (the path
    sample.py and val.py take): a few steps of the sampler are timed and scaled to the full count
    (every step is one guided forward of the doubled batch plus the update)."""
    from models.diffusion import GaussianDiffusion, SamplingConfig
    from models.unet1d_ultimate import UNet1D_ultimate

    reps = 2 if args.quick else 3
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    torch.manual_seed(0)
    diff = GaussianDiffusion(UNet1D_ultimate(lyric_dim=LYRIC_DIM)).to(device).eval()
    rows = []
    for B in SAMPLE_BATCHES:
        batch = synthetic_batch(B)
        for precision in ("fp32", "bf16"):
            for sampler, total_steps in SAMPLERS_TIMED:
                settings = SamplingConfig(sampler=sampler, steps=SAMPLE_STEPS_TIMED, guidance=2.0,
                                          precision=precision)

                def run():
                    diff.sample(batch["motion"], batch["lyrics"], batch["lyric_pad_mask"], settings=settings,
                                generator=[torch.Generator().manual_seed(i) for i in range(B)])

                med, _ = median_time(run, reps, sync=sync)
                per_step = med / SAMPLE_STEPS_TIMED
                rows.append({"sampler": f"{sampler.upper()}-{total_steps}", "batch": B, "amp": precision,
                             "guidance": 2.0, "step_s": per_step, "s_per_clip": per_step * total_steps / B})
    return {"sampling": rows, "sampling_default": default_sampling(device)}


def default_sampling(device):
    """What sample.py / val.py run by default on `device`: {"sampler": "UNIPC-20", "amp": resolved
    precision}, the row the "default" ratio picks."""
    import sample as sample_script
    from lm2a.generate import resolve_precision
    from models.diffusion import SamplingConfig
    d = resolve_precision(SamplingConfig(sampler=sample_script.SAMPLER, steps=sample_script.STEPS,
                                         precision=sample_script.PRECISION), device)
    return {"sampler": f"{d.sampler.upper()}-{d.steps}", "amp": d.precision,
            "precision_setting": sample_script.PRECISION}


# ---- report ----------------------------------------------------------------------------------------
def table(res):
    lines = []
    if "preprocess" in res:
        lines += ["| preprocessing (demo data) | clips | s | clips/s | text enc. s | audio s | mel s | motion s |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in res["preprocess"]:
            lines.append(f"| --workers {r['workers']} | {r['clips']} | {r['seconds']:.2f} | {r['clips_per_s']:.2f} | "
                         f"{r['text_encoding_s']:.2f} | {r['audio_load_s']:.2f} | {r['mel_s']:.2f} | {r['motion_s']:.2f} |")
        lines.append("")
    if "loading" in res:
        L = res["loading"]
        lines += ["| data loading (batch 16) | batches/s | items/s |", "|---|---|---|",
                  f"| MelDataset preloaded (this code) | {L['batches_per_s']:.1f} | {L['items_per_s']:.0f} |",
                  f"| per-item npz read + np.interp per dim (baseline) | {L['baseline_per_item_interp_batches_per_s']:.1f} | {L['baseline_items_per_s']:.0f} |",
                  f"| preload (one-off) | | {L['preload_items_per_s']:.0f} |", ""]
    if "training" in res:
        lines += ["| training step (default size) | batch | amp | s/step | samples/s | peak mem MB |",
                  "|---|---|---|---|---|---|"]
        for r in res["training"]:
            lines.append(f"| {r['attn']} | {r['batch']} | {r['amp']} | {r['step_s']:.3f} | {r['samples_per_s']:.2f} | {r['peak_mem_mb']:.0f} |")
        lines.append("")
    if "sampling" in res:
        lines += ["| sampling, guidance 2 (doubled batch) | batch | amp | s/step | s/clip |", "|---|---|---|---|---|"]
        for r in res["sampling"]:
            lines.append(f"| {r['sampler']} | {r['batch']} | {r['amp']} | {r['step_s']:.3f} | {r['s_per_clip']:.2f} |")
        d = res.get("sampling_default")
        if d:
            lines.append(f"\nsample.py's defaults on this device: {d['sampler']} {d['amp']} "
                         f"(precision {d['precision_setting']!r})")
        lines.append("")
    return "\n".join(lines)


def ratios(res):
    out = {}
    if "training" in res:
        for B in {r["batch"] for r in res["training"]}:
            for amp in {r["amp"] for r in res["training"]}:
                rows = {r["attn"].split("+")[0]: r for r in res["training"] if r["batch"] == B and r["amp"] == amp}
                if {"sdpa", "mha"} <= set(rows):
                    out[f"train_mha_over_sdpa_b{B}_{amp}"] = rows["mha"]["step_s"] / rows["sdpa"]["step_s"]
    if "sampling" in res:  # seconds per clip of DDPM-1000 fp32 over each row's, same batch, same run
        for r in res["sampling"]:
            base = next((b for b in res["sampling"] if b["batch"] == r["batch"] and b["amp"] == "fp32"
                         and b["sampler"] == "DDPM-1000"), None)
            if base is not None and r is not base:
                out[f"ddpm1000_fp32_over_{r['sampler'].lower()}_{r['amp']}_b{r['batch']}"] = \
                    base["s_per_clip"] / r["s_per_clip"]
                d = res.get("sampling_default") or {}
                if (r["sampler"], r["amp"]) == (d.get("sampler"), d.get("amp")):  # sample.py's defaults here
                    out[f"ddpm1000_fp32_over_default_b{r['batch']}"] = base["s_per_clip"] / r["s_per_clip"]
    if "loading" in res and "training" in res:
        fp32 = [r for r in res["training"] if r["amp"] == "fp32" and r["attn"] == "sdpa" and r["batch"] == 16] or \
               [r for r in res["training"] if r["amp"] == "fp32" and r["attn"] == "sdpa"]
        if fp32:
            out["loader_batches_per_train_step"] = res["loading"]["batches_per_s"] * fp32[0]["step_s"]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats, batch 4 only, 1 preprocessing run")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--sections", default="pre,load,train,sample")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile for training (sdpa)")
    p.add_argument("--work_dir", default=None, help="where demo data and clips go (default: a temp dir)")
    args = p.parse_args(argv)
    from lm2a import pick_device
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    sections = set(args.sections.split(","))
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="lm2a_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit, "device": str(device),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "quick": args.quick, "command": "python sometest/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    t0 = time.perf_counter()
    clips_dir = None
    if "pre" in sections or "load" in sections:
        r = bench_preprocess(args, work)
        clips_dir = r.pop("clips_dir")
        if "pre" in sections:
            res.update(r)
    if "load" in sections:
        res.update(bench_loading(args, clips_dir))
    if "train" in sections:
        res.update(bench_training(args, device))
    if "sample" in sections:
        res.update(bench_sampling(args, device))
    res["ratios"] = ratios(res)
    res["seconds"] = time.perf_counter() - t0
    print(table(res))
    for k, v in res["ratios"].items():
        print(f"{k}: {v:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    print(f"bench: {len(sections)} sections on {res['device']} ({res['threads']} threads) in {res['seconds']:.0f} s"
          + (f" -> {args.json}" if args.json else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
