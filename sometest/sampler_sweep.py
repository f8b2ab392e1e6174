"""Quality against sampling steps: every sampler at several step counts (and DDPM-1000), several
sampling seeds, the val.py figures on one split -> a table with the seed-to-seed spread.

    python sometest/sampler_sweep.py --ckpt demo/runs/tiny --npz_dir demo/split/test \
        --out sweep.json [--samplers ddpm,ddim,dpm++,unipc] [--steps 5,10,20,50] [--seeds 0,1,2]

Per setting and seed: mean over clips of MSE, onset F1, beat alignment with the true motion and
with shuffled motion (lm2a.metrics, the functions val.py uses; the shuffled pairing is
lm2a.metrics.chance_pairs with seed 0 for every row, so rows differ only by their audio), and the
Fréchet distance of the generated set. The table gives mean ± std over seeds, and marks the rows
whose every figure lies within the seed-to-seed spread of DDPM-1000: |mean - ref mean| <= 2 x
sqrt(ref std^2 + row std^2), in either direction (few-step samplers can score *better* than the
converged sampler on MSE or Fréchet by being smoother: that is a different distribution, not equal
quality). Writes JSON and prints a markdown table (RESULTS.md / BENCHMARKS.md);
`--table JSON` prints the table of an earlier run.

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

FIGURES = ("mse", "onset_f1", "beat_align", "beat_align_shuffled", "frechet")


def figures(items, mels, pairs):
    """The val.py figures of one generated set: {figure: value}."""
    from lm2a import metrics as M
    per = {k: [] for k in FIGURES[:-1]}
    for i, item in enumerate(items):
        clip = item["clip"]
        sr, hop, fps = int(clip["sr"]), int(clip["hop_length"]), int(clip["fps"])
        m = M.clip_metrics(clip["mel"], mels[item["name"]], clip["motion"], sr, hop, fps)
        per["mse"].append(m["mse"])
        per["onset_f1"].append(m["onset_f1"])
        per["beat_align"].append(m["beat_align"])
        other = items[pairs[i]]["clip"]["motion"]
        per["beat_align_shuffled"].append(
            M.beat_alignment(M.motion_beats(other, fps), M.audio_beats(mels[item["name"]], sr, hop)))
    out = {k: float(np.mean(v)) for k, v in per.items()}
    out["frechet"] = M.frechet_distance([it["clip"]["mel"] for it in items], [mels[it["name"]] for it in items])
    return out


def within(row, ref):
    """Every figure of `row` within the seed-to-seed spread of the reference (module docstring)."""
    return all(abs(row[k]["mean"] - ref[k]["mean"]) <= 2 * np.hypot(row[k]["std"], ref[k]["std"])
               for k in FIGURES)


def table(result):
    """Markdown table of a sweep result (rows in run order, the reference last)."""
    ref = result["rows"][-1]
    ref_name = f"{ref['sampler'].upper()}-{ref['steps']}"
    lines = ["| sampler | steps | precision | " + " | ".join(FIGURES) + " | s/clip | RMS diff vs fp32 "
             f"(seed to seed) | within {ref_name} spread |", "|---|---|---|" + "---|" * (len(FIGURES) + 3)]
    for row in result["rows"]:
        cells = " | ".join(f"{row[k]['mean']:.3f} ± {row[k]['std']:.3f}" for k in FIGURES)
        seed_rms = f" ({row['rms_seed_to_seed']:.3f})" if row.get("rms_seed_to_seed") is not None else ""
        rms = (f"{row['rms_vs_fp32']:.3f}" if row.get("rms_vs_fp32") is not None else "") + seed_rms
        lines.append(f"| {row['sampler']} | {row['steps']} | {row.get('precision', result.get('precision'))} "
                     f"| {cells} | {row['s_per_clip']:.2f} | {rms} | {'yes' if within(row, ref) else 'no'} |")
    return "\n".join(lines)


def rms_between(a, b):
    """RMS difference of two generated sets {name: mel} over all values (log units)."""
    return float(np.sqrt(np.mean([np.mean((a[k] - b[k]) ** 2) for k in a])))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt")
    p.add_argument("--npz_dir")
    p.add_argument("--table", help="print the table of this earlier sweep JSON and exit")
    p.add_argument("--out", default="sweep.json")
    p.add_argument("--samplers", default="ddpm,ddim,dpm++,unipc")
    p.add_argument("--steps", default="5,10,20,50")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--precision", default="fp32", help='"fp32", "bf16" or a list "fp32,bf16"')
    p.add_argument("--device", default="cpu")
    p.add_argument("--reference", default="ddpm:1000", help='the reference row, "sampler:steps" ("" = none)')
    args = p.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return 0
    if not (args.ckpt and args.npz_dir):
        p.error("--ckpt and --npz_dir are needed (or --table JSON)")

    from lm2a.clipio import list_clip_files
    from lm2a.generate import generate_for_items, load_clips, load_model
    from lm2a.metrics import chance_pairs
    from models.diffusion import SamplingConfig

    diffusion, info = load_model(args.ckpt, args.device)
    items, _ = load_clips(list_clip_files(args.npz_dir), info)
    pairs = chance_pairs([it["clip"]["song"] for it in items], seed=0)
    precisions = args.precision.split(",")
    settings = [(s, int(n), prec) for s in args.samplers.split(",") for n in args.steps.split(",")
                for prec in precisions]
    if args.reference:
        name, steps = args.reference.split(":")
        settings.append((name, int(steps), precisions[0]))
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, fp32_mels = [], {}
    for sampler, steps, precision in settings:
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
        if precision == "fp32" and len(precisions) > 1:
            fp32_mels[(sampler, steps)] = mels_by_seed
            if len(seeds) > 1:
                row["rms_seed_to_seed"] = float(np.mean([rms_between(mels_by_seed[0], m)
                                                         for m in mels_by_seed[1:]]))
        if precision != "fp32" and (sampler, steps) in fp32_mels:
            row["rms_vs_fp32"] = float(np.mean([rms_between(m, f) for m, f in
                                                zip(mels_by_seed, fp32_mels[(sampler, steps)])]))
            row["rms_seed_to_seed"] = next(r.get("rms_seed_to_seed") for r in rows if (
                r["sampler"], r["steps"], r["precision"]) == (sampler, steps, "fp32"))
        for k in FIGURES:
            values = [f[k] for f in per_seed]
            row[k] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
        rows.append(row)
        print(f"{sampler}-{steps} {precision}: " + ", ".join(f"{k} {row[k]['mean']:.3f}±{row[k]['std']:.3f}" for k in FIGURES)
              + f", {row['s_per_clip']:.2f} s/clip", flush=True)
    ref = rows[-1]
    for row in rows:
        row["within_ddpm1000_spread"] = bool(within(row, ref))
    result = {"ckpt": info["_path"], "step": info["step"], "npz_dir": args.npz_dir, "clips": len(items),
              "seeds": seeds, "guidance": args.guidance, "precision": args.precision, "rows": rows,
              "command": "python sometest/sampler_sweep.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("\n" + table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
