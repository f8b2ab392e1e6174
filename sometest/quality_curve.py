"""Quality against compute: val.py's music-likeness and Fréchet figures of several runs, against their training time.

    python sometest/quality_curve.py RUN:VAL_DIR [RUN:VAL_DIR ...] --out curve.png [--label steps]

Each argument pairs a train.py --save_dir (its train_log.csv: steps taken and seconds, the time of the
last logged row) with the val.py --out_dir that evaluated its checkpoint (summary.json). The PNG has
three panels against training minutes: harmonic share, partials (the real clips' dashed, issue 20's
targets dotted) and the Fréchet distance with its two references (the real set's split halves, the real
clips of other songs). The table printed is the same in markdown (RESULTS.md, "A 2D band plane").
"""
import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lm2a.clipio import atomic_file  # noqa: E402

TARGETS = {"harmonic_share": 0.55, "partials": 0.39}  # issue 20: halfway from the noise textures to the real clips


def run_point(run_dir, val_dir):
    """(train_log's last row: steps, minutes) and val.py's figures -> one dict."""
    log = Path(run_dir) / "train_log.csv"
    summary = Path(val_dir) / "summary.json"
    for path, what in ((log, "train.py --save_dir"), (summary, "val.py --out_dir")):
        if not path.is_file():
            raise SystemExit(f"quality_curve.py: {path} not found (is {path.parent} a {what}?)")
    with open(log, newline="") as f:
        last = list(csv.DictReader(f))[-1]
    s = json.loads(summary.read_text())
    music, frechet = s["music_likeness"], s["frechet"]
    return {"run": Path(run_dir).name, "steps": int(last["step"]), "minutes": float(last["seconds"]) / 60,
            "harmonic_share": music["model"]["harmonic_share"], "partials": music["model"]["partials"],
            "frechet": frechet["model"], "real_harmonic_share": music["real"]["harmonic_share"],
            "real_partials": music["real"]["partials"], "split_half": frechet["real_split_half"],
            "other_songs": frechet.get("real_other_songs")}


def other_songs(points):
    """The real-clips-of-other-songs reference: the same test set in every summary that has it."""
    return next((p["other_songs"] for p in points if p["other_songs"] is not None), None)


def plot_curve(path, points):
    points = sorted(points, key=lambda p: p["minutes"])
    x = [p["minutes"] for p in points]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key in zip(axes, ("harmonic_share", "partials")):
        ax.plot(x, [p[key] for p in points], "o-", label="generated (guided)")
        ax.axhline(points[0][f"real_{key}"], color="k", ls="--", label="real clips")
        ax.axhline(TARGETS[key], color="grey", ls=":", label="issue 20 target")
        ax.set(title=key.replace("_", " "), ylim=(0, 1))
    ax = axes[2]
    ax.plot(x, [p["frechet"] for p in points], "o-", label="generated (guided)")
    if other_songs(points) is not None:
        ax.axhline(other_songs(points), color="k", ls="--", label="real clips of other songs")
    ax.axhline(points[0]["split_half"], color="grey", ls=":", label="real split halves")
    ax.set(title="Fréchet distance to the real clips", ylim=(0, None))
    for ax in axes:
        for p in points:
            ax.annotate(f"{p['steps']}", (p["minutes"], ax.lines[0].get_ydata()[points.index(p)]),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("training minutes (steps annotated)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def markdown(points):
    lines = ["| run | steps | training min | harmonic share | partials | Fréchet |", "|---|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: p["minutes"]):
        lines.append(f"| {p['run']} | {p['steps']} | {p['minutes']:.1f} | {p['harmonic_share']:.3f} | "
                     f"{p['partials']:.3f} | {p['frechet']:.1f} |")
    p = points[0]
    other = "n/a" if other_songs(points) is None else f"{other_songs(points):.1f}"
    lines.append(f"| real clips | | | {p['real_harmonic_share']:.3f} | {p['real_partials']:.3f} | "
                 f"{p['split_half']:.1f} split halves, {other} other songs |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pairs", nargs="+", help="RUN_DIR:VAL_DIR (train.py --save_dir : val.py --out_dir)")
    p.add_argument("--out", required=True, help="PNG to write")
    args = p.parse_args(argv)
    bad = [a for a in args.pairs if a.count(":") != 1]
    if bad:
        p.error(f"give each run as RUN_DIR:VAL_DIR, got {bad[0]!r}")
    points = [run_point(*a.split(":")) for a in args.pairs]
    plot_curve(args.out, points)
    print(markdown(points))
    print(f"quality_curve.py: {len(points)} runs -> {args.out}")


if __name__ == "__main__":
    main()
