"""Checkpoints: atomic writes that survive failures, weights_only-loadable training state, load_run."""

from __future__ import annotations

import errno
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from onedet import atomic
from onedet.checkpoint import checkpoint_dir, load_run, read_train_state, read_weights
from onedet.errors import OnedetError
from onedet.train import saving
from onedet.train.saving import link_checkpoint, rng_state, set_rng_state, write_checkpoint


def _tiny_config():
    from onedet.config import ModelConfig

    return ModelConfig.from_preset("tiny", num_classes=3, image_size=128)


def _info(cfg) -> dict:
    return {"model": cfg.to_dict(), "classes": ["a", "b", "c"], "category_ids": [1, 2, 5]}


def test_write_read_round_trip_and_train_state_is_weights_only(tmp_path: Path) -> None:
    weights = {"w": torch.randn(3, 4), "b": torch.zeros(4)}
    state = {"step": 3, "nested": {"t": torch.arange(5)}, "values": [1.5, 2.5], "name": "frozen"}
    folder = write_checkpoint(tmp_path / "weights" / "last", weights=weights, info={"x": 1}, train_state=state)
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.safetensors", "train_state.pt"]
    assert torch.equal(read_weights(folder)["w"], weights["w"])
    assert json.loads((folder / "model.json").read_text())["onedet_version"]
    loaded = read_train_state(folder)  # torch.load(weights_only=True) inside
    assert loaded["step"] == 3 and torch.equal(loaded["nested"]["t"], torch.arange(5))
    assert not list((tmp_path / "weights").glob(".*")), "no temporary folders left behind"


def test_best_links_last_without_the_train_state_and_survives_the_next_last(tmp_path: Path) -> None:
    weights = tmp_path / "weights"

    def adapter(folder: Path) -> None:
        (folder / "adapter").mkdir()
        (folder / "adapter" / "a.json").write_text("{}")

    first = {"w": torch.randn(3)}
    write_checkpoint(weights / "last", weights=first, info={"v": 1}, train_state={"s": 1}, write_extra=adapter)
    best = link_checkpoint(weights / "last", weights / "best")
    assert sorted(str(p.relative_to(best)) for p in best.rglob("*")) == [
        "adapter",
        "adapter/a.json",
        "model.json",
        "model.safetensors",
    ]
    assert (best / "model.safetensors").stat().st_ino == (weights / "last" / "model.safetensors").stat().st_ino
    # A new `last` is a new folder: the linked best keeps the weights it had.
    write_checkpoint(weights / "last", weights={"w": torch.zeros(3)}, info={"v": 2}, train_state={"s": 2})
    assert torch.equal(read_weights(best)["w"], first["w"])
    assert json.loads((best / "model.json").read_text())["v"] == 1
    # And a best linked again replaces the old one whole.
    link_checkpoint(weights / "last", best)
    assert torch.equal(read_weights(best)["w"], torch.zeros(3)) and not (best / "adapter").exists()
    assert not list(weights.glob(".*")), "no temporary folders left behind"


def test_a_train_state_holding_arbitrary_objects_is_refused(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "last", weights={"w": torch.ones(1)}, info={})
    torch.save({"evil": Path("/")}, folder / "train_state.pt")  # a pickled object, not a tensor or a number
    with pytest.raises(OnedetError, match="cannot load the training state"):
        read_train_state(folder)


def test_rng_state_round_trips_through_weights_only_load(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(3), expected[2])


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "weights" / "last"
    write_checkpoint(folder, weights={"w": torch.ones(2)}, info={"v": 1})

    def no_space(state, path, metadata=None):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(saving, "save_file", no_space)
    with pytest.raises(OnedetError, match=r"No space left on device.*intact"):
        write_checkpoint(folder, weights={"w": torch.zeros(2)}, info={"v": 2})
    monkeypatch.undo()
    assert torch.equal(read_weights(folder)["w"], torch.ones(2))
    assert json.loads((folder / "model.json").read_text())["v"] == 1
    assert not list(folder.parent.glob(".*")), "the partial checkpoint was removed"


def test_a_failure_while_swapping_restores_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "weights" / "last"
    write_checkpoint(folder, weights={"w": torch.ones(2)}, info={})
    real_replace = atomic.os.replace
    calls = []

    def failing_second_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError(errno.EIO, "I/O error")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", failing_second_rename)
    with pytest.raises(OnedetError, match="I/O error"):
        write_checkpoint(folder, weights={"w": torch.zeros(2)}, info={})
    monkeypatch.undo()
    assert torch.equal(read_weights(folder)["w"], torch.ones(2))


def test_a_crash_between_the_renames_is_recovered(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    write_checkpoint(weights / "last", weights={"w": torch.ones(2)}, info={})
    (weights / "last").rename(weights / ".last.old-123")  # what a kill after the first rename leaves
    assert checkpoint_dir(tmp_path, "last") == weights / "last"
    assert torch.equal(read_weights(weights / "last")["w"], torch.ones(2))


def test_checkpoint_dir_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(OnedetError, match="no such run"):
        checkpoint_dir(tmp_path / "missing")
    with pytest.raises(OnedetError, match="not a onedet run"):
        checkpoint_dir(tmp_path)


def test_an_unwritable_place_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(OnedetError, match="cannot write checkpoint"):
        write_checkpoint(blocker / "weights" / "last", weights={"w": torch.ones(1)}, info={})


def test_load_run_rebuilds_the_saved_detector(tmp_path: Path) -> None:
    from onedet.model.detector import Detector

    cfg = _tiny_config()
    torch.manual_seed(0)
    model = Detector(cfg).eval()
    write_checkpoint(tmp_path / "run" / "weights" / "best", weights=model.state_dict(), info=_info(cfg))
    run = load_run(tmp_path / "run")
    assert run.classes == ["a", "b", "c"] and run.category_ids == [1, 2, 5]
    assert not run.model.training and run.config.num_classes == 3
    images = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(run.model(images).logits, model(images).logits)
    # `best` falls back to `last`, and a checkpoint folder itself is accepted.
    (tmp_path / "run" / "weights" / "best").rename(tmp_path / "run" / "weights" / "last")
    assert load_run(tmp_path / "run" / "weights" / "last").classes == ["a", "b", "c"]


def test_load_run_refuses_weights_of_another_model(tmp_path: Path) -> None:
    cfg = _tiny_config()
    write_checkpoint(tmp_path / "ckpt", weights={"w": torch.ones(1)}, info=_info(cfg))
    with pytest.raises(OnedetError, match="do not match"):
        load_run(tmp_path / "ckpt")


def test_load_run_needs_every_weight_but_the_training_only_aux_branch(tmp_path: Path) -> None:
    from onedet.model.detector import Detector

    cfg = _tiny_config()
    torch.manual_seed(0)
    model = Detector(cfg).eval()
    weights = model.state_dict()
    without_aux = {k: v for k, v in weights.items() if not k.startswith("head.aux_")}
    assert len(without_aux) < len(weights)  # the tiny preset has the aux branch
    write_checkpoint(tmp_path / "no_aux", weights=without_aux, info=_info(cfg))
    images = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(load_run(tmp_path / "no_aux").model(images).logits, model(images).logits)
    # Any other missing weight is an error.
    del without_aux["head.cls_pred.weight"]
    write_checkpoint(tmp_path / "no_cls", weights=without_aux, info=_info(cfg))
    with pytest.raises(OnedetError, match=r"head\.cls_pred\.weight"):
        load_run(tmp_path / "no_cls")


def test_load_run_names_a_tensor_of_another_shape(tmp_path: Path) -> None:
    from onedet.model.detector import Detector

    cfg = _tiny_config()
    weights = Detector(cfg).state_dict()
    weights["head.cls_pred.weight"] = weights["head.cls_pred.weight"][:, :5]  # e.g. an older head
    write_checkpoint(tmp_path / "old", weights=weights, info=_info(cfg))
    with pytest.raises(OnedetError, match=r"head\.cls_pred\.weight is \[3, 5, 1, 1\] in the file"):
        load_run(tmp_path / "old")
