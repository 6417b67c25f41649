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


def plot_runs(
    runs: list[tuple[Path, str]],
    out: Path,
    x: str = "minutes",
    lines: list[tuple[float, str]] | None = None,
    title: str = "",
) -> list[tuple[Path, str, int, float, float]]:
    """Val AP of each `(run, label)` against `x` ("minutes" or "epoch") into `out`, one colour per label, with
    horizontal `(AP, label)` lines; returns `(run, label, epochs, training minutes, last val AP)` per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from onedet.train.logging import read_metrics

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors: dict[str, tuple] = {}
    table = []
    for run, label in runs:
        rows = read_metrics(Path(run))
        if not rows:
            raise SystemExit(f"{run}: no metrics.csv rows")
        minutes, xs, aps = 0.0, [], []
        for row in rows:
            minutes += row.get("seconds", 0.0) / 60
            if "AP" in row:
                xs.append(minutes if x == "minutes" else row["epoch"])
                aps.append(row["AP"])
        first = label not in colors
        color = colors.setdefault(label, plt.cm.tab10.colors[len(colors) % 10])
        ax.plot(xs, aps, color=color, lw=1.2, alpha=0.85, label=label if first else None)
        table.append((Path(run), label, int(rows[-1]["epoch"]), minutes, aps[-1]))
    for ap, label in lines or []:
        ax.axhline(ap, color="k", ls="--", lw=1, label=label)
    ax.set_xlabel("training minutes (steps only)" if x == "minutes" else "epoch")
    ax.set_ylabel("val AP (after each epoch)")
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=_pair, help="RUN=LABEL: a run folder and its legend entry")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--x", choices=("minutes", "epoch"), default="minutes")
    parser.add_argument("--line", type=_pair, action="append", default=[], help="AP=LABEL: a horizontal line")
    parser.add_argument("--title", default="")
    args = parser.parse_args()

    lines = [(float(ap), label) for ap, label in args.line]
    table = plot_runs([(Path(run), label) for run, label in args.runs], args.out, args.x, lines, args.title)
    print("| run | label | epochs | training minutes | last val AP |\n| --- | --- | ---: | ---: | ---: |")
    for run, label, epochs, minutes, ap in table:
        print(f"| {run} | {label} | {epochs} | {minutes:.1f} | {ap:.3f} |")
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
