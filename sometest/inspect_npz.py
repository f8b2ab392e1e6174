"""Look inside a clip .npz (preprocess.py) or a *_gen.npz (sample.py): keys, dtypes, shapes,
statistics, and pictures of the mel and of the motion features.

    python sometest/inspect_npz.py clips/song__00012000.npz --out_dir inspect

Prints one line per key (strings as text, JSON strings pretty-printed) and writes
<out_dir>/<stem>_mel.png, plus <stem>_motion.png when the file has a 'motion' key.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: lm2a/ lives in the repository root

from lm2a.melconfig import MelConfig, MelConfigError, load_mel_config  # noqa: E402
from lm2a.motion import joint_angular_speeds  # noqa: E402
from lm2a.plots import mel_figure, pyplot  # noqa: E402
from models.layout import ACCELERATION, POSE, POSE_DIM, TH, VELOCITY  # noqa: E402

# ---- defaults of the command-line flags ----
OUT_DIR = "inspect"  # where the PNGs go
DEFAULT_FPS = 30  # motion frame rate when the file has no 'fps'
DPI = 110  # PNG resolution


def _scalar(v):
    return v.item() if isinstance(v, np.ndarray) and v.ndim == 0 else v


def describe_value(key, v) -> str:
    """One line (or a pretty JSON block) describing an npz entry."""
    if v.dtype.kind in "US":
        s = str(_scalar(v)) if v.ndim == 0 else repr(v.tolist())
        if s.lstrip().startswith(("{", "[")):
            try:
                pretty = json.dumps(json.loads(s), indent=2, sort_keys=True)
                return f"{key:<15} {v.dtype.str:<6} json\n" + "\n".join("    " + ln for ln in pretty.splitlines())
            except json.JSONDecodeError:
                pass
        return f"{key:<15} {v.dtype.str:<6} {s!r}"
    if v.ndim == 0:
        return f"{key:<15} {v.dtype.str:<6} = {v.item()!r}"
    if v.size == 0:
        return f"{key:<15} {v.dtype.str:<6} {v.shape} (empty)"
    if v.dtype.kind in "biuf":
        x = v.astype(np.float64)
        finite = np.isfinite(x)
        bad = "" if finite.all() else f"  NON-FINITE: {int((~finite).sum())}"
        x = x[finite] if not finite.all() else x
        if x.size == 0:
            return f"{key:<15} {v.dtype.str:<6} {str(v.shape):<12}{bad}"
        return (f"{key:<15} {v.dtype.str:<6} {str(v.shape):<12} min {x.min():+.4g}  mean {x.mean():+.4g}  "
                f"max {x.max():+.4g}  std {x.std():.4g}{bad}")
    return f"{key:<15} {v.dtype.str:<6} {v.shape}"


def load_npz(path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _time_settings(data):
    """-> (sr, hop, fps) from the file's own keys, else its mel_config, else the default vocoder's."""
    cfg = load_mel_config()
    if "mel_config" in data:
        try:
            cfg = MelConfig.parse(data["mel_config"])
        except MelConfigError:
            pass
    sr, hop = cfg.sampling_rate, cfg.hop_size
    sr = int(_scalar(data["sr"])) if "sr" in data else sr
    hop = int(_scalar(data["hop_length"])) if "hop_length" in data else hop
    fps = float(_scalar(data["fps"])) if "fps" in data else DEFAULT_FPS
    return sr, hop, fps


def _title(data, stem):
    parts = [stem]
    if "lyric_text" in data:
        parts.append(repr(str(_scalar(data["lyric_text"])))[:80])
    return "  ".join(parts)


def plot_mel(data, stem, out_png):
    mel = np.asarray(data["mel"], dtype=np.float32)  # (80, T)
    sr, hop, _ = _time_settings(data)
    mel_figure(out_png, [("", [mel])], title=_title(data, stem) + f"  mel {mel.shape}, {sr} Hz, hop {hop}",
               hop_seconds=hop / sr, xlabel="seconds", panel_size=(13.35, 4.6))  # 1100 x 416 px at mel_figure's 80 dpi
    return out_png


def joint_speeds(motion):
    """(F, 234) -> per-joint angular speed (F, 24) in rad/s and root translation speed (F,)
    from the velocity block (axis-angle rates of the 24 SMPL joints, then Th rate)."""
    th_vel = motion[:, VELOCITY][:, TH]  # (F, 3) root translation rate
    return joint_angular_speeds(motion), np.linalg.norm(th_vel, axis=-1)


def plot_motion(data, stem, out_png):
    plt = pyplot()
    motion = np.asarray(data["motion"], dtype=np.float32)  # (F, 234)
    _, _, fps = _time_settings(data)
    seconds = motion.shape[0] / fps
    blocks = [("pose (rad, Th, Rh)", motion[:, POSE]),
              ("velocity (/s)", motion[:, VELOCITY]),
              ("acceleration (/s²)", motion[:, ACCELERATION])]
    fig, grid = plt.subplots(4, 2, figsize=(10, 10), squeeze=False,
                             gridspec_kw=dict(height_ratios=[1, 1, 1, 0.8], width_ratios=[40, 1]))
    axes, caxes = grid[:, 0], grid[:, 1]  # explicit colour-bar column keeps all x axes aligned
    for ax in axes[1:]:
        ax.sharex(axes[0])
    for ax, cax, (name, block) in zip(axes, caxes, blocks):
        if block.shape[1] == 0:
            ax.set_visible(False)
            cax.set_visible(False)
            continue
        lim = float(np.percentile(np.abs(block), 99)) or 1.0  # robust colour range around 0
        im = ax.imshow(block.T, origin="lower", aspect="auto", cmap="coolwarm", vmin=-lim, vmax=lim,
                       interpolation="nearest", extent=(0.0, seconds, -0.5, block.shape[1] - 0.5))
        fig.colorbar(im, cax=cax)
        ax.set_ylabel(f"{name}\ndim")
        ax.tick_params(labelbottom=False)
    caxes[3].set_visible(False)
    if motion.shape[1] >= 2 * POSE_DIM:
        joints, root = joint_speeds(motion)
        t = np.arange(motion.shape[0]) / fps
        ax = axes[3]
        ax.plot(t, joints, color="tab:blue", alpha=0.12, lw=0.8)
        ax.plot(t, joints.mean(axis=1), color="tab:blue", lw=2, label="mean joint angular speed (rad/s)")
        ax.set_ylabel("joint speed\n(rad/s)")
        ax2 = ax.twinx()
        ax2.plot(t, root, color="tab:green", lw=1.2, label="root translation speed (units/s)")
        ax2.set_ylabel("root speed", color="tab:green")
        ax2.tick_params(axis="y", colors="tab:green")
        ax.legend(handles=ax.get_lines()[-1:] + ax2.get_lines(), loc="upper left", fontsize=8,
                  framealpha=0.85)
        ax.set_xlim(0.0, seconds)
    else:
        axes[3].set_visible(False)
    axes[-1].set_xlabel("seconds")
    axes[-1].tick_params(labelbottom=True)
    axes[0].set_title(_title(data, stem) + f"  motion {motion.shape} at {fps:g} fps", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=DPI)
    plt.close(fig)
    return out_png


def inspect_npz(path, out_dir=OUT_DIR, plots=True):
    """Prints the description of every key; writes PNGs; returns the list of PNG paths."""
    path = Path(path)
    data = load_npz(path)
    print(f"{path}: {len(data)} keys")
    for k in data:
        print("  " + describe_value(k, data[k]))
    written = []
    if plots:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if "mel" in data and np.asarray(data["mel"]).ndim == 2:
            written.append(plot_mel(data, path.stem, out_dir / f"{path.stem}_mel.png"))
        if "motion" in data and np.asarray(data["motion"]).ndim == 2:
            written.append(plot_motion(data, path.stem, out_dir / f"{path.stem}_motion.png"))
    for p in written:
        print(f"wrote {p}")
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("npz", help="a clip .npz or a *_gen.npz")
    ap.add_argument("--out_dir", default=OUT_DIR, help="folder for the PNGs")
    ap.add_argument("--no_plots", action="store_true", help="print only")
    args = ap.parse_args(argv)
    try:
        inspect_npz(args.npz, args.out_dir, plots=not args.no_plots)
    except (OSError, ValueError) as e:
        print(f"inspect_npz: {args.npz}: cannot read ({e})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
