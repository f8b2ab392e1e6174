"""Plot train and validation loss of a training run (train_log.csv written by train.py).

    python sometest/plot_losses.py runs/demo                 # RUN_DIR holding train_log.csv
    python sometest/plot_losses.py runs/demo/train_log.csv --out loss.png --smooth 0.95

train_log.csv columns: epoch, step, train_loss, val_loss, val_loss_uncond, lr, seconds (validation
columns empty on rows without validation; any further val_loss_* column, e.g. val_loss_motion_only,
is drawn too). Raw losses are drawn faint, EMA-smoothed ones solid, on a log y axis; the learning
rate goes on a second y axis. A panel below shows the conditioning gap val_loss_uncond - val_loss:
above zero, the model predicts better when it sees motion and lyrics.
"""
import argparse
import csv
import math
import sys
from pathlib import Path

import numpy as np

# ---- defaults of the command-line flags ----
LOG_NAME = "train_log.csv"  # file looked for inside a run directory
OUT = None  # output PNG; None -> <csv folder>/loss.png
SMOOTH = 0.9  # EMA factor for the solid curves (0 = no smoothing, 0.99 = heavy)
DPI = 120  # PNG resolution


def find_log(path) -> Path:
    """A csv as given, or RUN_DIR/train_log.csv, or the newest train_log.csv below RUN_DIR."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        if (p / LOG_NAME).is_file():
            return p / LOG_NAME
        found = sorted(p.rglob(LOG_NAME), key=lambda q: q.stat().st_mtime)
        if found:
            return found[-1]
        raise FileNotFoundError(f"{p}: no {LOG_NAME} in this folder or below (is it a train.py run dir?)")
    raise FileNotFoundError(f"{p}: no such file or folder")


def _float(s):
    try:
        v = float(s)
    except (TypeError, ValueError):
        return math.nan
    return v


def read_log(csv_path) -> dict:
    """-> dict column -> float64 array (empty cells -> NaN). 'step' falls back to the row number."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{csv_path}: no rows (training has not logged anything yet?)")
    cols = {k.strip(): np.array([_float(r.get(k)) for r in rows]) for k in rows[0] if k is not None}
    if "train_loss" not in cols and "val_loss" not in cols:
        raise ValueError(f"{csv_path}: neither 'train_loss' nor 'val_loss' column; found {sorted(cols)}")
    if "step" not in cols or np.isnan(cols["step"]).all():
        cols["step"] = np.arange(len(rows), dtype=np.float64)
    return cols


def ema(values, smooth):
    """Debiased exponential moving average (as TensorBoard draws it); NaNs are skipped."""
    values = np.asarray(values, dtype=np.float64)
    out = np.full_like(values, np.nan)
    acc, weight = 0.0, 0.0
    for i, v in enumerate(values):
        if np.isnan(v):
            continue
        acc = smooth * acc + (1.0 - smooth) * v
        weight = smooth * weight + (1.0 - smooth)
        out[i] = acc / weight if weight > 0 else v
    return out


# loss columns drawn in the loss panel, in this order: (column, colour, legend label); any other
# val_loss_* column a later train.py adds is drawn too, in a colour of EXTRA_COLORS
LOSS_SERIES = (("train_loss", "tab:blue", "train"),
               ("val_loss", "tab:orange", "validation"),
               ("val_loss_uncond", "tab:red", "validation, conditions dropped"),
               ("val_loss_motion_only", "tab:green", "validation, motion only"),
               ("val_loss_lyrics_only", "tab:purple", "validation, lyrics only"))
EXTRA_COLORS = ("tab:brown", "tab:pink", "tab:olive", "tab:cyan")
GAP_LABEL = "conditioning gap (positive = conditions help)"


# the training-time sample figures drawn in the bottom panel (train.py --sample_every; all in [0, 1])
SAMPLE_SERIES = (("sample_beat_align", "tab:green", "beat alignment with own motion"),
                 ("sample_beat_align_shuffled", "tab:purple", "beat alignment with shuffled motion"),
                 ("sample_onset_f1", "tab:blue", "onset F1 vs real"),
                 ("sample_clip_share", "tab:red", "share of values at the x0 clip"))


def loss_series(log):
    """[(column, colour, label)] of the loss columns present in `log` with at least one value."""
    known = [k for k, _, _ in LOSS_SERIES]
    extra = sorted(k for k in log if k.startswith("val_loss_") and k not in known)
    series = list(LOSS_SERIES) + [(k, EXTRA_COLORS[i % len(EXTRA_COLORS)],
                                   "validation, " + k[len("val_loss_"):].replace("_", " "))
                                  for i, k in enumerate(extra)]
    return [(k, c, lab) for k, c, lab in series if k in log and not np.isnan(log[k]).all()]


def step_spacing(x) -> float:
    """Median distance in steps between the points of a curve (1 for a single point)."""
    return float(np.median(np.diff(x))) if len(x) > 1 else 1.0


def _plot_smoothed(ax, x, y, smooth, base_spacing, color, label, marker=None):
    """y raw (faint) and EMA-smoothed (solid). The EMA factor is raised to spacing / base_spacing so
    every curve has the same time constant in steps: sparse validation points get a smaller factor,
    else 0.9 over a dozen points would lag far behind them."""
    spacing = step_spacing(x)
    factor = smooth ** max(1.0, spacing / base_spacing) if spacing > 0 else smooth
    ax.plot(x, y, color=color, alpha=0.25, lw=1, marker=marker, ms=3)
    ax.plot(x, ema(y, factor), color=color, lw=2,
            label=f"{label} (EMA {factor:.3g}; last {y[-1]:.4g}, min {y.min():.4g})")


def _plot_lr(ax, step, lr):
    """The learning rate on a second y axis of `ax`. -> its legend handles."""
    ax2 = ax.twinx()
    ok = ~np.isnan(lr)
    ax2.plot(step[ok], lr[ok], color="tab:gray", lw=1, ls="--", label="learning rate")
    ax2.set_ylabel("learning rate", color="tab:gray")
    ax2.tick_params(axis="y", colors="tab:gray")
    ax2.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    return ax2.get_lines()[:1]


def _plot_gap(ax, step, gap, smooth, base_spacing):
    """val_loss_uncond - val_loss around a zero line."""
    ok = ~np.isnan(gap)
    ax.axhline(0.0, color="black", lw=0.8)
    _plot_smoothed(ax, step[ok], gap[ok], smooth, base_spacing, "tab:red", GAP_LABEL,
                   marker="o" if ok.sum() < 50 else None)
    ax.set_ylabel("uncond - cond\nval loss")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)


def _plot_samples(ax, step, log, samples):
    """The training-time sample figures ([(key, colour, label)]) in [0, 1]."""
    for key, color, label in samples:
        ok = ~np.isnan(log[key])
        ax.plot(step[ok], log[key][ok], color=color, marker="o", ms=3, label=label)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("training-time\nsamples")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=7, ncol=2)


def loss_figure(log, title="", smooth=SMOOTH):
    """matplotlib Figure of a read_log() dict: every loss column on a log axis with the learning rate
    on a second axis, and, when the log has val_loss and val_loss_uncond, a panel below with their
    difference (val_loss_uncond - val_loss) around a zero line."""
    import matplotlib  # heavy: only when a figure is drawn
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step = log["step"]
    gap = (log["val_loss_uncond"] - log["val_loss"]
           if "val_loss" in log and "val_loss_uncond" in log else np.full_like(step, np.nan))
    has_gap = not np.isnan(gap).all()
    samples = [(k, c, lab) for k, c, lab in SAMPLE_SERIES if k in log and not np.isnan(log[k]).all()]
    ratios = [3] + [1.3] * has_gap + [1.6] * bool(samples)
    fig, axes = plt.subplots(len(ratios), 1, figsize=(9, 5 + 2 * (len(ratios) - 1)), sharex=True,
                             gridspec_kw=dict(height_ratios=ratios), squeeze=False)
    ax = axes[0, 0]
    ax_gap = axes[1, 0] if has_gap else None
    ax_samples = axes[-1, 0] if samples else None
    all_losses, base_spacing = [], None
    for key, color, label in loss_series(log):
        ok = ~np.isnan(log[key])
        x, y = step[ok], log[key][ok]
        all_losses.append(y)
        base_spacing = base_spacing or step_spacing(x)  # the first curve (train when present) sets it
        sparse = key != "train_loss" and len(x) < 50
        _plot_smoothed(ax, x, y, smooth, base_spacing, color, label, marker="o" if sparse else None)
    if all_losses and np.concatenate(all_losses).min() > 0:
        ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if "lr" in log and not np.isnan(log["lr"]).all():
        handles += _plot_lr(ax, step, log["lr"])
        labels += ["learning rate"]
    if has_gap:
        _plot_gap(ax_gap, step, gap, smooth, base_spacing)
    if samples:
        _plot_samples(ax_samples, step, log, samples)
    axes[-1, 0].set_xlabel("step")
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    if title:
        ax.set_title(title)
    legend_rows = (len(labels) + 1) // 2
    fig.tight_layout(rect=(0, (0.15 + 0.17 * legend_rows) / fig.get_figheight(), 1, 1))  # room for the legend
    return fig


def plot_losses(csv_path, out_png, smooth=SMOOTH):
    """train_log.csv -> PNG (see loss_figure); returns the PNG path."""
    import matplotlib.pyplot as plt

    log = read_log(csv_path)
    title = Path(csv_path).parent.name or str(csv_path)
    if "epoch" in log and not np.isnan(log["epoch"]).all():
        title += f"  (epoch {int(np.nanmax(log['epoch']))}, step {int(np.nanmax(log['step']))})"
    fig = loss_figure(log, title, smooth)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=DPI)
    plt.close(fig)
    return out_png


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="run directory (holding train_log.csv) or the csv itself")
    ap.add_argument("--out", default=OUT, help="output PNG (default: <csv folder>/loss.png)")
    ap.add_argument("--smooth", type=float, default=SMOOTH, help="EMA factor in [0, 1)")
    args = ap.parse_args(argv)
    if not 0.0 <= args.smooth < 1.0:
        print("plot_losses: --smooth must be in [0, 1)", file=sys.stderr)
        return 1
    try:
        csv_path = find_log(args.run)
        out = Path(args.out) if args.out else csv_path.parent / "loss.png"
        plot_losses(csv_path, out, args.smooth)
    except (FileNotFoundError, ValueError) as e:
        print(f"plot_losses: {e}", file=sys.stderr)
        return 1
    print(f"plot_losses: {csv_path} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
