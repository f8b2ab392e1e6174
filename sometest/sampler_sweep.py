"""Quality against sampling steps: every sampler at several step counts (and DDPM-1000), several
sampling seeds, the val.py figures on one split -> a table with the seed-to-seed spread.

    python sometest/sampler_sweep.py --ckpt demo/runs/tiny --npz_dir demo/split/test \
        --out sweep.json [--samplers ddpm,ddim,dpm++,unipc] [--steps 5,10,20,50] [--seeds 0,1,2] \
        [--plot sweep.png]
    python sometest/sampler_sweep.py --table sweep.json [more.json ...] [--plot sweep.png]

Per setting and seed: mean over clips of MSE, onset F1, beat alignment with the true motion and
with shuffled motion (lm2a.metrics, the functions val.py uses; the shuffled pairing is
lm2a.metrics.chance_pairs with seed 0 for every row, so rows differ only by their audio), and the
Fréchet distance of the generated set. The table gives mean ± std over seeds, and marks the rows
whose every figure lies within the seed-to-seed spread of DDPM-1000: |mean - ref mean| <= 2 x
sqrt(ref std^2 + row std^2), in either direction (few-step samplers can score *better* than the
converged sampler on MSE or Fréchet by being smoother: that is a different distribution, not equal
quality). Writes JSON and prints a markdown table (RESULTS.md / BENCHMARKS.md);
`--table JSON [JSON ...]` prints the table of earlier runs (rows of several files together, the
`--reference` row among them as the reference) and `--plot PNG` draws each figure against steps.

A long sweep (DDPM-1000 on a larger model takes hours on a CPU) loses nothing when stopped: the JSON
is rewritten after every row, and a rerun with the same `--out`, checkpoint, clips, seeds and
guidance reuses the rows already there (`--force` recomputes them).

`--precision fp32,bf16` runs every setting in both (the reference in the first): bf16 rows add the
RMS difference of their mels from the fp32 mels of the same sampler, steps and seed (log units),
beside the seed-to-seed RMS difference of the fp32 mels (seed 0 vs each other seed) for scale.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from lm2a import metrics as M  # noqa: E402
from lm2a.clipio import atomic_file, list_clip_files  # noqa: E402
from lm2a.generate import generate_for_items, load_clips  # noqa: E402
from lm2a.plots import pyplot  # noqa: E402
from lm2a.trained import load_model  # noqa: E402
from models.diffusion import SamplingConfig  # noqa: E402

FIGURES = ("mse", "onset_f1", "beat_align", "beat_align_shuffled", "frechet")


def figures(items, mels, pairs):
    """The val.py figures of one generated set: {figure: value}."""
    per = {k: [] for k in FIGURES[:-1]}
    for i, item in enumerate(items):
        clip, cfg = item["clip"], item["mel_config"]  # the clip's MelConfig (lm2a.data.item_from_clip)
        fps = int(clip["fps"])
        m = M.clip_metrics(clip["mel"], mels[item["name"]], cfg, clip["motion"], fps)
        per["mse"].append(m["mse"])
        per["onset_f1"].append(m["onset_f1"])
        per["beat_align"].append(m["beat_align"])
        other = items[pairs[i]]["clip"]["motion"]
        per["beat_align_shuffled"].append(
            M.beat_alignment(M.motion_beats(other, fps), M.audio_beats(mels[item["name"]], cfg)))
    out = {k: float(np.mean(v)) for k, v in per.items()}
    out["frechet"] = M.frechet_distance([it["clip"]["mel"] for it in items], [mels[it["name"]] for it in items])
    return out


def within(row, ref):
    """Every figure of `row` within the seed-to-seed spread of the reference (module docstring)."""
    return all(abs(row[k]["mean"] - ref[k]["mean"]) <= 2 * np.hypot(row[k]["std"], ref[k]["std"])
               for k in FIGURES)


def row_key(row, result=None):
    """(sampler, steps, precision) of a row; rows of old sweeps carry the precision at the top."""
    return row["sampler"], int(row["steps"]), row.get("precision", (result or {}).get("precision", "fp32"))


def parse_reference(reference):
    """"sampler:steps" -> (sampler, steps)."""
    name, steps = reference.split(":")
    return name, int(steps)


def find_reference(rows, reference):
    """The row named by `reference` ("sampler:steps", fp32 preferred), or None."""
    if not reference:
        return None
    hits = [r for r in rows if (r["sampler"], int(r["steps"])) == parse_reference(reference)]
    return next((r for r in hits if r.get("precision", "fp32") == "fp32"), hits[0] if hits else None)


def merge(results):
    """Rows of several sweep results of one model and clip set, in file order; a later file's row
    replaces an earlier one with the same (sampler, steps, precision)."""
    rows = {}
    for res in results:
        for row in res["rows"]:
            key = row_key(row, res)
            rows[key] = {**row, "precision": key[2]}
    first = results[0]
    return {**{k: v for k, v in first.items() if k != "rows"}, "rows": list(rows.values()),
            "sources": [r.get("command", "") for r in results]}


def table(result, reference="ddpm:1000"):
    """Markdown table of a sweep result (rows in run order; with a `reference` row, a column saying
    whether each row lies within its seed-to-seed spread)."""
    ref = find_reference(result["rows"], reference)
    head = ["sampler", "steps", "precision", *FIGURES, "s/clip", "RMS diff vs fp32 (seed to seed)"]
    if ref is not None:
        head.append(f"within {ref['sampler'].upper()}-{ref['steps']} spread")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        cells = [row["sampler"], str(row["steps"]), row_key(row, result)[2]]
        cells += [f"{row[k]['mean']:.3f} ± {row[k]['std']:.3f}" for k in FIGURES]
        seed_rms = f" ({row['rms_seed_to_seed']:.3f})" if row.get("rms_seed_to_seed") is not None else ""
        cells += [f"{row['s_per_clip']:.2f}",
                  (f"{row['rms_vs_fp32']:.3f}" if row.get("rms_vs_fp32") is not None else "") + seed_rms]
        if ref is not None:
            cells.append("yes" if within(row, ref) else "no")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result, path, reference="ddpm:1000"):
    """Each figure (and seconds per clip) against sampler steps: one line per sampler and precision,
    error bars = seed-to-seed std, the reference row as a band (mean ± 2 std)."""
    plt = pyplot()
    import matplotlib.ticker  # with pyplot: only when a figure is drawn
    ref = find_reference(result["rows"], reference)
    lines = {}
    for row in result["rows"]:
        if row is not ref:
            lines.setdefault((row["sampler"], row_key(row, result)[2]), []).append(row)
    panels = [*FIGURES, "s_per_clip"]
    steps = sorted({int(r["steps"]) for rows in lines.values() for r in rows})
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, k in zip(axes.flat, panels):
        for (sampler, precision), rows in lines.items():
            rows = sorted(rows, key=lambda r: int(r["steps"]))
            x = [int(r["steps"]) for r in rows]
            label = sampler if len({p for _, p in lines}) == 1 else f"{sampler} {precision}"
            if k == "s_per_clip":
                ax.plot(x, [r[k] for r in rows], marker="o", label=label)
            else:
                ax.errorbar(x, [r[k]["mean"] for r in rows], yerr=[r[k]["std"] for r in rows],
                            marker="o", capsize=3, label=label)
        if ref is not None:
            name = f"{ref['sampler'].upper()}-{ref['steps']}"
            if k == "s_per_clip":
                ax.axhline(ref[k], color="k", ls="--", label=name)
            else:
                m, sd = ref[k]["mean"], ref[k]["std"]
                ax.axhspan(m - 2 * sd, m + 2 * sd, color="0.85", zorder=0)
                ax.axhline(m, color="k", ls="--", label=f"{name} (band ± 2 std)")
        ax.set_xscale("log")
        ax.set_xticks(steps, [str(n) for n in steps], minor=False)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_yscale("log" if k == "s_per_clip" else "linear")
        ax.set_xlabel("sampler steps")
        ax.set_title(k.replace("_", " ") + (" (lower is better)" if k in ("mse", "frechet") else ""))
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{Path(result.get('ckpt', '')).parent.name} step {result.get('step')}: "
                 f"{result.get('clips')} clips, seeds {result.get('seeds')}, guidance {result.get('guidance')}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def reusable_rows(path, header):
    """Rows of an earlier (possibly unfinished) sweep at `path` made with the same `header`
    (checkpoint, clips, seeds, guidance), keyed by (sampler, steps, precision)."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    if any(old.get(k) != v for k, v in header.items()):
        return {}
    return {row_key(r, old): r for r in old.get("rows", [])}


def rms_between(a, b):
    """RMS difference of two generated sets {name: mel} over all values (log units)."""
    return float(np.sqrt(np.mean([np.mean((a[k] - b[k]) ** 2) for k in a])))


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt")
    p.add_argument("--npz_dir")
    p.add_argument("--table", nargs="+", help="print the table of these earlier sweep JSONs and exit")
    p.add_argument("--plot", help="also draw the figures against steps into this PNG")
    p.add_argument("--force", action="store_true", help="recompute rows already in --out")
    p.add_argument("--out", default="sweep.json")
    p.add_argument("--samplers", default="ddpm,ddim,dpm++,unipc")
    p.add_argument("--steps", default="5,10,20,50")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--precision", default="fp32", help='"fp32", "bf16" or a list "fp32,bf16"')
    p.add_argument("--device", default="cpu")
    p.add_argument("--reference", default="ddpm:1000", help='the reference row, "sampler:steps" ("" = none)')
    return p


def sweep_row(diffusion, info, items, pairs, setting, seeds, args):
    """One setting (sampler, steps, precision) at every seed -> (row with the per-seed figures and
    seconds per clip, the generated mels of each seed)."""
    sampler, steps, precision = setting
    per_seed, seconds, mels_by_seed = [], [], []
    for seed in seeds:
        cfg = SamplingConfig(sampler=sampler, steps=steps, guidance=args.guidance, seed=seed,
                             batch_size=args.batch_size, precision=precision)
        t = time.perf_counter()
        results = generate_for_items(diffusion, info, items, cfg, progress=False)
        seconds.append((time.perf_counter() - t) / len(items))
        mels = {r["name"]: r["mel"] for r in results}
        mels_by_seed.append(mels)
        per_seed.append(figures(items, mels, pairs))
    row = {"sampler": sampler, "steps": steps, "precision": precision,
           "s_per_clip": statistics.median(seconds), "per_seed": per_seed}
    return row, mels_by_seed


def add_seed_spread(row):
    """row[figure] = {mean, std (ddof 1; 0 for one seed)} over the row's seeds."""
    for k in FIGURES:
        values = [f[k] for f in row["per_seed"]]
        row[k] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def add_precision_rms(row, mels_by_seed, fp32_mels, rows, several_precisions):
    """With several precisions: an fp32 row keeps its mels and gets the seed-to-seed RMS; another
    precision gets its RMS difference from the fp32 mels of the same sampler, steps and seed."""
    key = (row["sampler"], row["steps"])
    if row["precision"] == "fp32" and several_precisions:
        fp32_mels[key] = mels_by_seed
        if len(mels_by_seed) > 1:
            row["rms_seed_to_seed"] = float(np.mean([rms_between(mels_by_seed[0], m) for m in mels_by_seed[1:]]))
    if row["precision"] != "fp32" and key in fp32_mels:
        row["rms_vs_fp32"] = float(np.mean([rms_between(m, f) for m, f in zip(mels_by_seed, fp32_mels[key])]))
        row["rms_seed_to_seed"] = next(r.get("rms_seed_to_seed") for r in rows if row_key(r) == (*key, "fp32"))


def load_sweep_inputs(args):
    """-> (diffusion, TrainedModel, usable clip items, shuffled-motion pairs). Exits naming the folder
    when no clip fits the checkpoint."""
    diffusion, info = load_model(args.ckpt, args.device)
    items, skipped = load_clips(list_clip_files(args.npz_dir), info)
    if not items:
        reasons = "; ".join(f"{Path(p).name}: {why}" for p, why in skipped[:3])
        raise SystemExit(f"sampler_sweep.py: no clip in {args.npz_dir} that this checkpoint can use"
                         + (f" ({reasons})" if reasons else " (no .npz files: pass a split folder, "
                            "e.g. demo/split/test)"))
    return diffusion, info, items, M.chance_pairs([it["clip"]["song"] for it in items], seed=0)


def sweep_settings(args, reference):
    """[(sampler, steps, precision)] of the flags, the reference (in the first precision) added."""
    precisions = args.precision.split(",")
    settings = [(s, int(n), prec) for s in args.samplers.split(",") for n in args.steps.split(",")
                for prec in precisions]
    if reference and (*parse_reference(reference), precisions[0]) not in settings:
        settings.append((*parse_reference(reference), precisions[0]))
    return settings


def run_sweep(args, reference, argv):
    """Every setting at every seed; the JSON is rewritten after each row. -> the result dict."""
    diffusion, info, items, pairs = load_sweep_inputs(args)
    seeds = [int(s) for s in args.seeds.split(",")]
    header = {"ckpt": info.path, "step": info.step, "npz_dir": args.npz_dir, "clips": len(items),
              "seeds": seeds, "guidance": args.guidance}
    done = {} if args.force else reusable_rows(args.out, header)
    command = "python sometest/sampler_sweep.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows, fp32_mels = [], {}

    def write(complete):
        result = {**header, "precision": args.precision, "reference": reference, "complete": complete,
                  "rows": rows, "command": command}
        with atomic_file(args.out, "w", encoding="utf-8") as f:  # a stop mid-write leaves the last rows
            f.write(json.dumps(result, indent=2))
        return result

    for setting in sweep_settings(args, reference):
        if setting in done:
            rows.append(done[setting])
            print(f"{setting[0]}-{setting[1]} {setting[2]}: reused from {args.out}", flush=True)
            continue
        row, mels_by_seed = sweep_row(diffusion, info, items, pairs, setting, seeds, args)
        add_precision_rms(row, mels_by_seed, fp32_mels, rows, "," in args.precision)
        add_seed_spread(row)
        rows.append(row)
        write(complete=False)
        print(f"{setting[0]}-{setting[1]} {setting[2]}: "
              + ", ".join(f"{k} {row[k]['mean']:.3f}±{row[k]['std']:.3f}" for k in FIGURES)
              + f", {row['s_per_clip']:.2f} s/clip", flush=True)
    ref = find_reference(rows, reference)
    for row in rows:
        row["within_reference_spread"] = None if ref is None else bool(within(row, ref))
    return write(complete=True)


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    reference = args.reference or None
    if args.table:
        result = merge([json.loads(Path(f).read_text()) for f in args.table])
    elif not (args.ckpt and args.npz_dir):
        p.error("--ckpt and --npz_dir are needed (or --table JSON)")
    else:
        result = run_sweep(args, reference, argv)
        print()
    print(table(result, reference))
    if args.plot:
        print("wrote", plot(result, args.plot, reference))
    return 0


if __name__ == "__main__":
    sys.exit(main())
