"""Plot train and validation loss of a training run (train_log.csv written by train.py).

    python sometest/plot_losses.py runs/demo                 # RUN_DIR holding train_log.csv
    python sometest/plot_losses.py runs/demo/train_log.csv --out loss.png --smooth 0.95

train_log.csv columns: epoch, step, train_loss, val_loss, lr, seconds (val_loss empty on rows without
validation). Raw losses are drawn faint, EMA-smoothed ones solid, on a log y axis; the learning rate
goes on a second y axis.
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


def plot_losses(csv_path, out_png, smooth=SMOOTH):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = read_log(csv_path)
    step = log["step"]
    fig, ax = plt.subplots(figsize=(9, 5))
    all_losses, train_spacing = [], None
    for key, color, label in (("train_loss", "tab:blue", "train"), ("val_loss", "tab:orange", "validation")):
        if key not in log:
            continue
        ok = ~np.isnan(log[key])
        if not ok.any():
            continue
        x, y = step[ok], log[key][ok]
        all_losses.append(y)
        spacing = float(np.median(np.diff(x))) if len(x) > 1 else 1.0
        train_spacing = train_spacing or spacing
        # the same time constant in steps for both curves: sparse validation points get a
        # smaller factor, else 0.9 over a dozen points would lag far behind them
        factor = smooth ** max(1.0, spacing / train_spacing) if spacing > 0 else smooth
        marker = "o" if key == "val_loss" and ok.sum() < 50 else None
        ax.plot(x, y, color=color, alpha=0.25, lw=1, marker=marker, ms=3)
        ax.plot(x, ema(y, factor), color=color, lw=2,
                label=f"{label} (EMA {factor:.3g}; last {y[-1]:.4g}, min {y.min():.4g})")
    if all_losses and np.concatenate(all_losses).min() > 0:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if "lr" in log and not np.isnan(log["lr"]).all():
        ax2 = ax.twinx()
        ok = ~np.isnan(log["lr"])
        ax2.plot(step[ok], log["lr"][ok], color="tab:gray", lw=1, ls="--")
        ax2.set_ylabel("learning rate", color="tab:gray")
        ax2.tick_params(axis="y", colors="tab:gray")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        handles += ax2.get_lines()[:1]
        labels += ["learning rate"]
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, fontsize=8,
              frameon=False)
    title = Path(csv_path).parent.name or str(csv_path)
    if "epoch" in log and not np.isnan(log["epoch"]).all():
        title += f"  (epoch {int(np.nanmax(log['epoch']))}, step {int(np.nanmax(step))})"
    ax.set_title(title)
    fig.tight_layout()
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
