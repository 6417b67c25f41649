"""What early stopping (`--patience N`) would have given finished runs: a replay of their `metrics.csv`.

    .venv/bin/python benchmarks/patience.py RUN [RUN ...] [--patience 5 10 20]

Training does not depend on the patience until the run stops (the schedule is the same), so a run with
`--patience N` trains exactly the first epochs of the run without it, and its `best` checkpoint is the best of
those. Replaying each run's per-epoch val AP with the trainer's rule (stop after an evaluated epoch N or more epochs
past the best one; `onedet.train.loop.Trainer.fit`) gives, exactly for deterministic runs, where it would have
stopped and the val AP of the `best` it would have kept, against the whole run in the same table: the share of the
epochs it trains and the share of the best val AP it keeps. (Val AP, on which the stop and `best` are chosen: the
test split would need the checkpoints of every epoch.)
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path


def replay(aps: list[float | None], patience: int) -> tuple[int, float]:
    """(epochs trained, best val AP kept) of a run with these per-epoch val APs (None: not evaluated) under
    `patience`."""
    best, best_epoch = -1.0, 0
    for epoch, ap in enumerate(aps, start=1):
        if ap is None:
            continue
        if ap > best:  # an equal AP is no improvement, as in the trainer
            best, best_epoch = ap, epoch
        if epoch < len(aps) and epoch - best_epoch >= patience:
            return epoch, best
    return len(aps), best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--patience", nargs="+", type=int, default=[5, 10, 20])
    args = parser.parse_args()

    from onedet.train.logging import read_metrics

    header = ["run", "epochs", "best epoch", "best val AP"]
    for p in args.patience:
        header += [f"P={p} stops after", f"P={p} epochs / all", f"P={p} best AP / all"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    shares: dict[int, list[tuple[float, float]]] = {p: [] for p in args.patience}
    for run in args.runs:
        rows = read_metrics(run)
        if not rows:
            raise SystemExit(f"{run}: no metrics.csv")
        aps = [row.get("AP") for row in rows]
        epochs, best = replay(aps, patience=len(aps) + 1)  # the whole run: never stops
        best_epoch = aps.index(best) + 1
        cells = [str(run), str(epochs), str(best_epoch), f"{best:.3f}"]
        for p in args.patience:
            stopped, kept = replay(aps, p)
            shares[p].append((stopped / epochs, kept / best))
            cells += [str(stopped), f"{stopped / epochs:.2f}", f"{kept / best:.3f}"]
        print("| " + " | ".join(cells) + " |")
    print()
    print("| patience | runs stopped early | median epochs / all | median best AP / all | lowest best AP / all |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for p, pairs in shares.items():
        stopped = sum(e < 1 for e, _ in pairs)
        print(
            f"| {p} | {stopped} of {len(pairs)} | {statistics.median(e for e, _ in pairs):.2f} | "
            f"{statistics.median(a for _, a in pairs):.3f} | {min(a for _, a in pairs):.3f} |"
        )


if __name__ == "__main__":
    main()
