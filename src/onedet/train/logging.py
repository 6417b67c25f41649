"""What a training run shows and records: a progress bar, `metrics.csv`, and TensorBoard event files.

Only rank 0 writes (the others get a `RunLog(enabled=False)` whose methods do nothing). The CSV has one row per
epoch (train loss terms averaged over the epoch, learning rate, validation metrics, time), rewritten whole on
each epoch so that its header can grow when new columns appear and a resumed run continues the same file.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from onedet.atomic import write_text

METRICS_CSV = "metrics.csv"


def read_metrics(run: Path) -> list[dict[str, float]]:
    """The rows of `RUN/metrics.csv` as dicts of floats (empty cells dropped); [] when absent."""
    path = Path(run) / METRICS_CSV
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            rows.append({k: float(v) for k, v in row.items() if v not in ("", None)})
    return rows


class RunLog:
    """Progress bar + CSV + TensorBoard for one run folder."""

    def __init__(self, run: Path, *, enabled: bool = True, progress: bool = True) -> None:
        self.run = Path(run)
        self.enabled = enabled
        # Not in a log file or a pipe: there every redraw of the bar would be one more `\r` line.
        self.progress = progress and enabled and sys.stderr.isatty()
        self.rows: list[dict[str, float]] = read_metrics(self.run) if enabled else []
        self._writer: Any = None
        self._bar: tqdm | None = None

    @property
    def writer(self) -> Any:
        if self._writer is None and self.enabled:
            from torch.utils.tensorboard import SummaryWriter  # imported late: it pulls in tensorboard

            self._writer = SummaryWriter(log_dir=str(self.run / "tensorboard"))
        return self._writer

    # --- per step ---------------------------------------------------------------------------------------------

    def start_epoch(self, epoch: int, epochs: int, steps: int, first_step: int = 0) -> None:
        if not self.progress:
            return
        self._bar = tqdm(
            total=steps,
            initial=first_step,
            desc=f"epoch {epoch + 1}/{epochs}",
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
            leave=False,
        )

    def step(self, global_step: int, scalars: dict[str, float]) -> None:
        """Advance the bar (loss and lr shown; tqdm shows the ETA) and log the step's scalars to TensorBoard."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{scalars.get('loss', math.nan):.4f}", lr=f"{scalars.get('lr', 0):.2e}")
            self._bar.update(1)
        writer = self.writer
        for name, value in scalars.items():
            writer.add_scalar(f"train/{name}", value, global_step)

    def end_epoch(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # --- per epoch --------------------------------------------------------------------------------------------

    def epoch(self, row: dict[str, float]) -> None:
        """Record one epoch's row (replacing a row of the same epoch from before a resume) and print it."""
        if not self.enabled:
            return
        self.rows = [r for r in self.rows if r.get("epoch") != row["epoch"]] + [row]
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        text = io.StringIO(newline="")
        out = csv.DictWriter(text, fieldnames=columns)
        out.writeheader()
        out.writerows(self.rows)
        write_text(self.run / METRICS_CSV, text.getvalue())
        for name, value in row.items():
            if name not in ("epoch", "step") and not name.startswith("train/"):
                self.writer.add_scalar(name if "/" in name else f"val/{name}", value, int(row["step"]))
        self.writer.flush()
        shown = " ".join(f"{k}={v:.4g}" for k, v in row.items() if k in _SHOWN)
        print(f"epoch {int(row['epoch'])}: {shown}", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self.enabled:
            (tqdm.write if self._bar is not None else print)(text, file=sys.stderr)

    def close(self) -> None:
        self.end_epoch()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


_SHOWN = ("loss", "lr", "AP", "AP50", "seconds", "images_per_s")


class EpochMeter:
    """One epoch's running sums: step values, steps, images and training seconds (evaluation and checkpoints not
    counted). Saved in `train_state.pt`, so that the row of an epoch resumed half-way counts the whole epoch."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps, self.images, self.seconds = 0, 0, 0.0

    def add(self, values: dict[str, float], images: int) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1
        self.images += images

    def row(self, epoch: int, step: int, lr: float) -> dict[str, float]:
        """The epoch's `metrics.csv` row so far: mean loss and terms (`train/NAME`), lr, seconds, images per s."""
        row: dict[str, float] = {"epoch": epoch, "step": step}
        for k, v in self.sums.items():
            row["loss" if k == "loss" else f"train/{k}"] = v / max(1, self.steps)
        row["lr"] = lr
        row["seconds"] = self.seconds
        row["images_per_s"] = self.images / max(self.seconds, 1e-9)
        return row

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch_sums": dict(self.sums),
            "epoch_steps": self.steps,
            "epoch_images": self.images,
            "epoch_seconds": float(self.seconds),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = {k: float(v) for k, v in state["epoch_sums"].items()}
        self.steps, self.images = int(state["epoch_steps"]), int(state["epoch_images"])
        self.seconds = float(state["epoch_seconds"])
