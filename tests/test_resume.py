"""Exact resume: a run killed with SIGKILL mid-epoch and resumed ends with the weights of an uninterrupted run.
The runs train with mosaic, closed for the last epoch: the resumed run must also turn it off at the same epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import cli_args, make_store

from onedet.checkpoint import read_train_state, read_weights
from onedet.train.logging import read_metrics

EPOCHS = 3


def _command(store: Path, out: Path, *extra: str) -> list[str]:
    args = cli_args(store, out, "--epochs", str(EPOCHS), "--checkpoint-every-steps", "1", "--workers", "1", *extra)
    args += ["--mosaic", "1", "--close-mosaic", "1"]
    return [sys.executable, "-m", "onedet", *args]


def _step_of(out: Path) -> int:
    try:
        return int(json.loads((out / "weights" / "last" / "model.json").read_text())["global_step"])
    except (OSError, ValueError, KeyError):
        return -1  # not written yet, or being swapped in


def _live_weights(out: Path) -> dict[str, torch.Tensor]:
    """The un-averaged weights at the end: model.safetensors overlaid with the train state's live tensors."""
    folder = out / "weights" / "last"
    weights = read_weights(folder)
    weights.update(read_train_state(folder)["model"])
    return weights


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path: Path) -> None:
    store = make_store(tmp_path, num_images=24)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    straight_out, killed_out = tmp_path / "straight", tmp_path / "killed"
    log = (tmp_path / "straight.log").open("w")
    straight = subprocess.Popen(_command(store, straight_out), env=env, stdout=log, stderr=subprocess.STDOUT)
    victim = subprocess.Popen(_command(store, killed_out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    steps_per_epoch = 3  # 19 training images, batches of 8
    deadline = time.monotonic() + 300
    while _step_of(killed_out) < steps_per_epoch + 1:  # wait for the first step of epoch 2
        assert victim.poll() is None, victim.stderr.read().decode()
        assert time.monotonic() < deadline, "the run wrote no checkpoint in time"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    stopped_at = _step_of(killed_out)
    assert steps_per_epoch < stopped_at < EPOCHS * steps_per_epoch, "killed mid-run, after epoch 1"

    resumed = subprocess.run(_command(store, killed_out, "--resume"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed {killed_out}" in resumed.stderr
    assert f"epoch {EPOCHS}: mosaic off for the last 1 epochs" in resumed.stderr
    assert straight.wait(timeout=600) == 0, (tmp_path / "straight.log").read_text()

    expected, got = _live_weights(straight_out), _live_weights(killed_out)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    ema_expected, ema_got = (
        read_weights(straight_out / "weights" / "last"),
        read_weights(killed_out / "weights" / "last"),
    )
    for name in ema_expected:
        torch.testing.assert_close(ema_got[name], ema_expected[name], rtol=1e-5, atol=1e-6, msg=name)
    # The metrics file continues: one row per epoch, with the same losses.
    rows_expected, rows_got = read_metrics(straight_out), read_metrics(killed_out)
    assert [r["epoch"] for r in rows_got] == list(range(1, EPOCHS + 1))
    for a, b in zip(rows_expected, rows_got):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["AP"] == pytest.approx(a["AP"], abs=1e-6)
