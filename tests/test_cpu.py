"""onedet's CPU floating-point mode: denormals flushed to zero, inherited by threads created later."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = """
import threading, torch
{setup}
def denormal_survives():
    return bool((torch.tensor([1e-39]) * 1.0).item() != 0)
main = denormal_survives()
result = []
worker = threading.Thread(target=lambda: result.append(denormal_survives()))
worker.start(); worker.join()
print(main, result[0])
"""


def _run(setup: str, **env: str) -> str:
    code = CHECK.format(setup=setup)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, check=True
    )
    return out.stdout.split()


@pytest.mark.parametrize(
    "setup",
    [
        "from onedet.cpu import flush_denormals; flush_denormals()",
        # The entry points do it themselves, before any torch work.
        "from onedet import from_preset; from onedet.model.detector import Detector; "
        "Detector(from_preset('tiny', pretrained=None))",
    ],
)
def test_denormals_are_flushed_in_this_thread_and_new_ones(setup: str) -> None:
    assert _run("") == ["True", "True"]  # the CPU's default: denormals are kept (the check can fail)
    assert _run(setup) == ["False", "False"]


def test_the_mode_can_be_left_alone() -> None:
    setup = "from onedet.cpu import flush_denormals; assert not flush_denormals()"
    assert _run(setup, ONEDET_KEEP_DENORMALS="1") == ["True", "True"]
