"""Stage 5's figures (lm2a.evaluation writes them to OUT): mel_pairs.png (real, generated and
unconditional mels of a few clips, lm2a.plots.mel_figure), metrics_bars.png (mean +- std of every
metric per row kind) and hist_metrics.png (per-clip histograms of every metric per row kind)."""
import math

import numpy as np

from lm2a.plots import mel_figure, pyplot

COLORS = {"model": "tab:blue", "uncond": "tab:orange", "chance": "tab:gray", "shuffled": "tab:purple",
          "real": "tab:green"}
PANEL_COLUMNS = 4


def plot_mel_pairs(path, clips, gens, uncond, n):
    """Columns = the first n clips; rows = real, generated and (uncond not None) unconditional;
    one colour scale."""
    shown = clips[:n]
    rows = [("real", [c["mel"] for c in shown]), ("generated", [gens[c["name"]] for c in shown])]
    if uncond:
        rows.append(("uncond", [uncond[c["name"]] for c in shown]))
    mel_figure(path, rows, col_titles=[c["name"] for c in shown], panel_size=(3.6, 2.2))


def _panel_grid(n_panels, panel_height):
    """A figure of PANEL_COLUMNS columns holding n_panels panels -> (plt, fig, axes (flat))."""
    plt = pyplot()
    nrows = math.ceil(n_panels / PANEL_COLUMNS)
    fig, axes = plt.subplots(nrows, PANEL_COLUMNS, figsize=(3.2 * PANEL_COLUMNS, panel_height * nrows),
                             squeeze=False, constrained_layout=True)
    return plt, fig, axes.ravel()


def _save_panels(plt, fig, axes, n_panels, path):
    for ax in axes[n_panels:]:
        ax.axis("off")
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_metric_bars(path, summary_rows, metrics, kinds):
    """One panel per metric of `metrics` present in summary_rows: mean +- std of every row kind of
    `kinds` (lm2a.evaluation.summarize_rows)."""
    panels = [m for m in metrics if any(m in s["metrics"] for s in summary_rows.values())]
    plt, fig, axes = _panel_grid(len(panels), 2.6)
    for ax, metric in zip(axes, panels):
        bars = [(k, summary_rows[k]["metrics"].get(metric)) for k in kinds if k in summary_rows]
        bars = [(k, s) for k, s in bars if s is not None and s["count"] > 0]
        x = np.arange(len(bars))
        ax.bar(x, [s["mean"] for _, s in bars], yerr=[s["std"] for _, s in bars], capsize=3,
               color=[COLORS[k] for k, _ in bars])
        ax.set_xticks(x, [k for k, _ in bars], fontsize=8)
        ax.set_title(metric, fontsize=9)
    _save_panels(plt, fig, axes, len(panels), path)


def _series(rows, metric, kinds):
    """[(row kind, finite per-clip values)] of a metric."""
    out = [(kind, [r[metric] for r in rows if r["row"] == kind and metric in r]) for kind in kinds]
    out = [(k, np.asarray(v, dtype=np.float64)) for k, v in out if v]
    return [(k, v[np.isfinite(v)]) for k, v in out]


def plot_histograms(path, rows, metrics, kinds):
    """One panel per metric of `metrics` present in the rows: histograms of the per-clip values of
    every row kind of `kinds`, overlaid on common bins."""
    panels = [m for m in metrics if any(m in r for r in rows)]
    plt, fig, axes = _panel_grid(len(panels), 2.4)
    for ax, metric in zip(axes, panels):
        series = _series(rows, metric, kinds)
        finite = np.concatenate([v for _, v in series]) if series else np.zeros(0)
        if finite.size:
            bins = np.histogram_bin_edges(finite, bins=20)
            for kind, vals in series:
                if vals.size:
                    ax.hist(vals, bins=bins, alpha=0.5, label=kind, color=COLORS[kind])
        ax.set_title(metric, fontsize=9)
        ax.tick_params(labelsize=7)
        if metric == panels[0]:
            ax.legend(fontsize=7)
    _save_panels(plt, fig, axes, len(panels), path)
