"""The one mel figure: a grid of log-mel panels on one colour scale, written to a PNG.

    mel_figure("x.png", [("real", [real]), ("generated", [gen])], title="clip 3")

Rows are kinds (real, generated, unconditional ...), columns are clips; every figure of a mel in the
pipeline (sample.py's PNGs, training-time samples, val.py's pairs, whole-dance plots) is drawn here.
"""
import numpy as np


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib  # heavy, and only the plotting stages need it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def mel_figure(path, rows, title="", col_titles=None, hop_seconds=None, start_s=0.0, marks=(),
               xlabel=None, panel_size=(10.0, 2.6), x_frames=None, return_image=False):
    """rows: [(label, [mel (n_mels, T), ...])], every row with the same number of columns.
    hop_seconds: the x axis in seconds from start_s (else mel frames). marks: [(frame, line style
    dict)] vertical lines on every panel. x_frames: every panel's x axis spans this many frames (panels
    of different lengths on one time axis; default: each its own). -> the RGB image (H, W, 3) with return_image, else None."""
    plt = pyplot()
    n_rows, n_cols = len(rows), len(rows[0][1])
    mels = [m for _, row in rows for m in row]
    vmin = min(float(np.min(m)) for m in mels)
    vmax = max(float(np.max(m)) for m in mels)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(panel_size[0] * n_cols + 0.4, panel_size[1] * n_rows + 0.6),
                             squeeze=False, constrained_layout=True)
    to_x = (lambda f: start_s + f * hop_seconds) if hop_seconds else (lambda f: f)
    for r, (label, row) in enumerate(rows):
        for c, mel in enumerate(row):
            ax = axes[r, c]
            im = ax.imshow(mel, origin="lower", aspect="auto", vmin=vmin, vmax=vmax, cmap="magma",
                           interpolation="nearest", extent=(to_x(0), to_x(mel.shape[1]), 0, mel.shape[0]))
            for frame, style in marks:
                ax.axvline(to_x(frame), **style)
            if x_frames:
                ax.set_xlim(to_x(0), to_x(x_frames))
            if r == 0 and col_titles:
                ax.set_title(col_titles[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{label}\nmel bin" if label else "mel bin")
            if r == n_rows - 1:
                ax.set_xlabel(xlabel or ("time (s)" if hop_seconds else "mel frame"))
    fig.colorbar(im, ax=axes.ravel().tolist(), label="log-mel (ln)", fraction=0.02 if n_cols == 1 else 0.05)
    if title:
        fig.suptitle(title, fontsize=9)
    image = None
    if return_image:
        fig.canvas.draw()
        image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return image
