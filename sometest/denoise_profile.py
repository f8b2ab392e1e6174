"""Where along the noise levels does a trained model fail? One-step denoising of real clips, per timestep.

    python sometest/denoise_profile.py --ckpt runs/x/last.pt --npz_dir data/music26/split/test [--max_clips 8]

Each clip's mel is noised to timestep t (q_sample, one seeded noise per clip and t), the model (EMA
weights, both conditions given) predicts, and its x0 prediction is compared with the clip:

    x0_mse     mean squared error of the predicted x0, in the normalised units the model sees
    v_loss     the training loss at that t (the v or eps target)
    roughness  std of the frame-to-frame difference of the predicted log-mel (ln units), the grain of
               a noise texture, beside the real clips' own (rough_real). The MMSE estimate of x0 is a
               blur: a prediction rougher than the real clip still holds the noise it was given.
    harmonic_share, partials   lm2a.musicality of the predicted x0 (the real clips' in the first line)

A model that denoises well has x0_mse rising with t and roughness at or below the real clips'; issue
20's first models had x0_mse falling from t=300 to t=500 and roughness 2.7 times the real clips' at
t=200, which the sampler turns into a grainy noise texture (RESULTS.md, "A 2D band plane").
Writes denoise_profile.csv and denoise_profile.png into --out_dir (default: beside the checkpoint)
and prints the table.
"""
import argparse
import csv
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lm2a.clipio import atomic_file  # noqa: E402
from lm2a.data import collate_fn  # noqa: E402
from lm2a.generate import load_clips  # noqa: E402
from lm2a.musicality import mean_music_figures  # noqa: E402
from lm2a.trained import load_model  # noqa: E402

TIMESTEPS = (20, 50, 100, 200, 300, 500, 700, 900, 999)
MAX_CLIPS = 8     # clips taken evenly over the folder's sorted files
SEED = 0
COLUMNS = ("t", "sigma", "v_loss", "x0_mse", "roughness", "rough_real", "harmonic_share", "partials")


def roughness(log_mel) -> float:
    """Std of the frame-to-frame difference of log-mels (B, bands, T), in ln units."""
    return float((log_mel[..., 1:] - log_mel[..., :-1]).std())


def music_means(log_mels, mel_config):
    figures = mean_music_figures(np.asarray(log_mels, dtype=np.float32), mel_config)
    return {k: float(figures[k]) for k in ("harmonic_share", "partials")}


@torch.no_grad()
def denoise_profile(diffusion, batch, mel_config, timesteps=TIMESTEPS, seed=SEED):
    """One row per timestep (COLUMNS) for a collate_fn batch of real clips; row 0 (t = -1) is the
    real clips' own figures."""
    mel = batch["mel"].transpose(1, 2).to(diffusion.device)  # (B, bands, T) RAW log-mel
    x0 = diffusion.normalize_mel(mel)
    motion = diffusion.motion_input(batch["motion"].to(diffusion.device))
    rough_real = roughness(mel)
    rows = [dict(t=-1, sigma=0.0, v_loss=0.0, x0_mse=0.0, roughness=rough_real, rough_real=rough_real,
                 **music_means(mel.cpu().numpy(), mel_config))]
    for t in timesteps:
        g = torch.Generator().manual_seed(seed * 100003 + int(t))
        noise = torch.randn(x0.shape, generator=g).to(x0.device)
        tt = torch.full((x0.shape[0],), int(t), device=x0.device, dtype=torch.long)
        xt = diffusion.q_sample(x0, tt, noise)
        out = diffusion.model(xt, tt, motion, batch["lyrics"].to(x0.device),
                              lyric_pad_mask=batch["lyric_pad_mask"].to(x0.device)).float()
        target = noise if diffusion.objective == "eps" else diffusion.v_target(x0, tt, noise)
        x0_pred = diffusion.predict_eps_x0(out, xt, tt)[1].float()
        pred = diffusion.unnormalize_mel(x0_pred)
        rows.append(dict(t=int(t), sigma=float(diffusion.sqrt_one_minus_alphas_cumprod[int(t)]),
                         v_loss=float(((out - target) ** 2).mean()), x0_mse=float(((x0_pred - x0) ** 2).mean()),
                         roughness=roughness(pred), rough_real=rough_real,
                         **music_means(pred.cpu().numpy(), mel_config)))
    return rows


def plot_profile(path, rows, title):
    model_rows = [r for r in rows if r["t"] >= 0]
    t = [r["t"] for r in model_rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].plot(t, [r["x0_mse"] for r in model_rows], "o-")
    axes[0].set(ylabel="x0 MSE (normalised)", title="error of the x0 prediction")
    axes[1].plot(t, [r["roughness"] for r in model_rows], "o-", label="predicted x0")
    axes[1].axhline(rows[0]["rough_real"], color="k", ls="--", label="real clips")
    axes[1].set(ylabel="frame-to-frame std (ln)", title="roughness (grain)")
    axes[1].legend()
    for key, style in (("harmonic_share", "o-"), ("partials", "s-")):
        line, = axes[2].plot(t, [r[key] for r in model_rows], style, label=key)
        axes[2].axhline(rows[0][key], color=line.get_color(), ls="--")
    axes[2].set(ylabel="figure", title="music-likeness of x0 (dashed: real)")
    axes[2].legend()
    for ax in axes:
        ax.set_xlabel("timestep t")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def write_csv(path, rows):
    with atomic_file(path, "w", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()} for r in rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="checkpoint file or folder (its newest)")
    p.add_argument("--npz_dir", required=True, help="real clips (a split folder)")
    p.add_argument("--max_clips", type=int, default=MAX_CLIPS)
    p.add_argument("--timesteps", type=int, nargs="+", default=list(TIMESTEPS))
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--out_dir", default=None, help="default: the checkpoint's folder")
    args = p.parse_args(argv)
    start = time.time()
    diffusion, model = load_model(args.ckpt)
    paths = sorted(Path(args.npz_dir).glob("*.npz"))
    if not paths:
        sys.exit(f"denoise_profile.py: no clip npz files in {args.npz_dir}: give a split folder (stage 2 output)")
    pick = np.unique(np.linspace(0, len(paths) - 1, min(args.max_clips, len(paths))).round().astype(int))
    items, skipped = load_clips([paths[i] for i in pick], model)
    if not items:
        sys.exit(f"denoise_profile.py: none of the clips in {args.npz_dir} fits this checkpoint: {skipped[0][1]}")
    rows = denoise_profile(diffusion, collate_fn(items), model.mel_config, args.timesteps, args.seed)
    out_dir = Path(args.out_dir or Path(model.path).parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "denoise_profile.csv", rows)
    plot_profile(out_dir / "denoise_profile.png", rows, f"{model.path} (step {model.step}), {len(items)} clips "
                                                         f"of {args.npz_dir}")
    print("| t | sigma | x0 MSE | v loss | roughness (real %.3f) | harmonic share | partials |" % rows[0]["roughness"])
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {'real' if r['t'] < 0 else r['t']} | {r['sigma']:.3f} | {r['x0_mse']:.3f} | {r['v_loss']:.3f} | "
              f"{r['roughness']:.3f} | {r['harmonic_share']:.3f} | {r['partials']:.3f} |")
    print(f"denoise_profile.py: {len(items)} clips ({len(skipped)} skipped), {len(args.timesteps)} timesteps -> "
          f"{out_dir / 'denoise_profile.csv'}, .png; {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
