"""Per-band mean levels of generated clips against the real ones, beside the training set's mean
spectrum: is a level error the model's, or the songs' (a model that knows only the training songs
cannot know an unseen recording's spectrum)?

    python sometest/band_levels.py --ckpt runs/exp1 --npz_dir data/split/val [--seed 0] [--device cpu]

Samples every clip of npz_dir with the default SamplingConfig (and again unconditionally), then prints,
for the guided samples, the unconditional samples and the checkpoint's training mean spectrum
(norm stats mel_mean): the largest and the median |band mean - real band mean| over the 80 bands
(means over all clips and frames, log units), the band where it is largest and how many bands lie
within 1 log unit.
"""
import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from lm2a.clipio import list_clip_files  # noqa: E402
from lm2a.generate import generate_for_items, load_clips  # noqa: E402
from lm2a.trained import load_model  # noqa: E402
from models.diffusion import SamplingConfig  # noqa: E402


def band_errors(real_mean, level):
    """real_mean (80,) and level (80,) -> dict(max, median, argmax, within_1) of |level - real_mean|."""
    err = np.abs(np.asarray(level, dtype=np.float64) - np.asarray(real_mean, dtype=np.float64))
    return {"max": float(err.max()), "median": float(np.median(err)), "argmax": int(err.argmax()),
            "within_1": int((err <= 1.0).sum()), "bands": int(err.size)}


def band_mean(mels):
    """[(80, T_i)] -> (80,) mean level per band over every frame of every clip."""
    return np.concatenate([np.asarray(m, dtype=np.float64) for m in mels], axis=1).mean(axis=1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--npz_dir", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    diffusion, info = load_model(args.ckpt, args.device)
    items, _ = load_clips(list_clip_files(args.npz_dir), info)
    settings = SamplingConfig(seed=args.seed)
    real = band_mean([it["clip"]["mel"] for it in items])
    rows = {
        f"guided ({settings.sampler}-{settings.steps}, guidance {settings.guidance})":
            band_mean([r["mel"] for r in generate_for_items(diffusion, info, items, settings, progress=False)]),
        "unconditional": band_mean([r["mel"] for r in generate_for_items(
            diffusion, info, items, replace(settings, guidance=0.0), progress=False)]),
        "training mean spectrum": diffusion.mel_mean.detach().cpu().numpy(),
    }
    print(f"{len(items)} clips of {args.npz_dir}; checkpoint {info.path} (step {info.step})")
    print("| levels | max band error | band | median band error | bands within 1 log unit |")
    print("|---|---|---|---|---|")
    for name, level in rows.items():
        e = band_errors(real, level)
        print(f"| {name} | {e['max']:.2f} | {e['argmax']} | {e['median']:.2f} | {e['within_1']} / {e['bands']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
