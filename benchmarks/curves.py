"""Val AP of finished runs on one plot, against the epoch or against the training time: whether a recipe wins per
epoch or per minute (distillation runs a teacher in every step, so its epochs cost more).

    .venv/bin/python benchmarks/curves.py RUN=LABEL [RUN=LABEL ...] --out PNG [--x minutes|epoch]
        [--line AP=LABEL ...] [--title TEXT]

Runs with the same LABEL (seeds) share a colour. Minutes are the sum of each epoch's `seconds` in `metrics.csv`
(training steps only; evaluation and checkpoints left out), so compare runs timed on the same machine and load.
A table of each run's epochs, training minutes and last val AP is printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _pair(text: str) -> tuple[str, str]:
    key, sep, label = text.partition("=")
    if not sep or not key or not label:
        raise argparse.ArgumentTypeError(f"expected VALUE=LABEL, got {text!r}")
    return key, label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=_pair, help="RUN=LABEL: a run folder and its legend entry")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--x", choices=("minutes", "epoch"), default="minutes")
    parser.add_argument("--line", type=_pair, action="append", default=[], help="AP=LABEL: a horizontal line")
    parser.add_argument("--title", default="")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from onedet.train.logging import read_metrics

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors: dict[str, tuple] = {}
    print("| run | label | epochs | training minutes | last val AP |\n| --- | --- | ---: | ---: | ---: |")
    for run, label in args.runs:
        rows = read_metrics(Path(run))
        if not rows:
            raise SystemExit(f"{run}: no metrics.csv rows")
        minutes, xs, aps = 0.0, [], []
        for row in rows:
            minutes += row.get("seconds", 0.0) / 60
            if "AP" in row:
                xs.append(minutes if args.x == "minutes" else row["epoch"])
                aps.append(row["AP"])
        first = label not in colors
        color = colors.setdefault(label, plt.cm.tab10.colors[len(colors) % 10])
        ax.plot(xs, aps, color=color, lw=1.2, alpha=0.85, label=label if first else None)
        print(f"| {run} | {label} | {int(rows[-1]['epoch'])} | {minutes:.1f} | {aps[-1]:.3f} |")
    for ap, label in args.line:
        ax.axhline(float(ap), color="k", ls="--", lw=1, label=label)
    ax.set_xlabel("training minutes (steps only)" if args.x == "minutes" else "epoch")
    ax.set_ylabel("val AP (after each epoch)")
    ax.set_title(args.title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    plt.close(fig)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
