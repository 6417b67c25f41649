"""`onedet distill` end to end on a tiny synthetic store: a student run folder that eval and export take, an exact
resume mid-distillation (unlabelled loader and projectors included), and clear errors for bad teachers/students."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from run_helpers import make_run
from train_helpers import IMAGE_SIZE, make_store

from onedet.api import OneDet
from onedet.checkpoint import read_train_state, read_weights
from onedet.cli import main
from onedet.data.store import Store
from onedet.errors import OnedetError
from onedet.train.distill import DistillConfig, DistillTrainer
from onedet.train.logging import read_metrics


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("distill-store"), num_images=12)


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of synthetic images without boxes (`onedet prepare DIR --unlabeled`)."""
    from onedet.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("unlabeled")
    make_synthetic(root / "source", num_images=6, image_size=IMAGE_SIZE, seed=1)
    assert main(["prepare", str(root / "source"), "--out", str(root / "store"), "--unlabeled", "--workers", "1",
                 "--image-size", str(IMAGE_SIZE)]) == 0  # fmt: skip
    assert not Store(root / "store" / "unlabeled").read_batch(torch.arange(4).numpy())["valid"].any()
    return root / "store" / "unlabeled"


@pytest.fixture(scope="module")
def teacher(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A teacher run (tiny, 2 blocks, random weights) with the store's classes."""
    train = Store(store / "train")
    return make_run(tmp_path_factory.mktemp("teacher") / "run", list(train.classes), list(train.category_ids))


def _args(store: Path, teacher: Path, out: Path, *extra: str) -> list[str]:
    return [
        "distill",
        "--data",
        str(store),
        "--teacher",
        str(teacher),
        "--out",
        str(out),
        "--student",
        "teacher:depth=2",
        "--batch-size",
        "4",
        "--no-progress",
        "--workers",
        "1",
        *extra,
    ]


def test_distill_cli_writes_a_student_run_that_eval_and_export_take(
    store: Path, teacher: Path, unlabeled: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "student"
    # mixup and mosaic too: the student and the teacher see the mixed mosaics, and the labelled batch has eight
    # times the box slots
    extra = ("--mixup", "0.5", "--mosaic", "1", "--close-mosaic", "0")
    assert main(_args(store, teacher, out, "--epochs", "1", "--unlabeled", str(unlabeled), *extra)) == 0
    config = json.loads((out / "train_config.json").read_text())
    assert (config["mixup"], config["mosaic"]) == (0.5, 1)
    info = json.loads((out / "weights" / "best" / "model.json").read_text())
    assert info["distill"] == {"teacher": str(teacher), "student": "teacher:depth=2"}
    assert info["model"]["depth"] == 2
    row = read_metrics(out)[-1]
    for term in ("kd_cls", "kd_aux_cls", "kd_box_l1", "kd_box_giou", "kd_feat", "focal", "aux_giou", "pseudo_focal"):
        assert f"train/{term}" in row, term
    assert (out / "curves.png").is_file() and (out / "metrics.json").is_file()
    state = read_train_state(out / "weights" / "last")
    assert state["extras"] and "unlabeled" in state["loader"]
    capsys.readouterr()
    assert main(["eval", "--weights", str(out), "--data", str(store / "val"), "--json"]) == 0
    assert "AP50" in json.loads(capsys.readouterr().out)
    assert main(["export", "--weights", str(out), "--out", str(tmp_path / "student.onnx")]) == 0
    assert (tmp_path / "student.onnx").stat().st_size > 0


def test_a_narrower_derived_student_distils_and_loads_as_its_own_model(
    store: Path, teacher: Path, tmp_path: Path
) -> None:
    # half the teacher's widths: its weights are selected from the teacher's, its projectors map 48 -> 96 channels
    spec = "teacher:depth=2,embed_dim=96,neck_channels=48"
    options = {"epochs": 1, "batch_size": 4, "progress": False, "workers": 1}
    student = OneDet.from_run(teacher).distill(store, student=spec, out=tmp_path / "s", **options)
    cfg = student.model.config
    assert (cfg.depth, cfg.embed_dim, cfg.neck_channels, cfg.num_heads) == (2, 96, 48, 3)
    assert "train/kd_feat" in read_metrics(tmp_path / "s")[-1]
    reloaded = OneDet.from_run(tmp_path / "s").model
    assert reloaded.backbone.blocks[0].attn.qkv.weight.shape == (288, 96)


def test_a_folder_of_bare_images_is_prepared_once_as_the_unlabelled_store(
    store: Path, teacher: Path, unlabeled: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    images = unlabeled.parents[1] / "source"  # the folder the fixture's store was prepared from
    out = tmp_path / "student"
    assert main(_args(store, teacher, out, "--epochs", "1", "--unlabeled", str(images))) == 0
    prepared = Store(out / "unlabeled_store" / "unlabeled")
    assert len(prepared) == len(Store(unlabeled)) and prepared.image_size == Store(store / "train").image_size
    assert "unlabeled" in read_train_state(out / "weights" / "last")["loader"]
    assert f"preparing the images under {images}" in capsys.readouterr().out

    assert main(_args(store, teacher, tmp_path / "s", "--epochs", "1", "--unlabeled", str(tmp_path / "none"))) == 2
    assert f"{tmp_path / 'none'}: --unlabeled must be a store split or a folder of images" in capsys.readouterr().err


def _live(out: Path) -> dict[str, torch.Tensor]:
    folder = out / "weights" / "last"
    weights = read_weights(folder)
    state = read_train_state(folder)
    weights.update(state["model"])
    weights.update({f"extras.{k}": v for k, v in state["extras"].items()})
    return weights


def test_an_interrupted_distillation_resumes_exactly(
    store: Path, teacher: Path, unlabeled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = {"epochs": 2, "batch_size": 4, "progress": False, "workers": 1, "checkpoint_every_steps": 1}
    options["unlabeled"], options["unlabeled_batch_size"] = unlabeled, 2  # 5 images: the cycle wraps mid-epoch
    straight = OneDet.from_run(teacher).distill(store, student="teacher:depth=2", out=tmp_path / "a", **options)
    assert straight.model.config.depth == 2

    step = DistillTrainer._step

    def interrupted(self: DistillTrainer, batch: object) -> dict[str, float]:
        if self.global_step == 4:  # epoch 2, step 2 of 3: after the checkpoint of step 4
            raise KeyboardInterrupt
        return step(self, batch)

    monkeypatch.setattr(DistillTrainer, "_step", interrupted)
    args = _args(store, teacher, tmp_path / "b", "--epochs", "2", "--checkpoint-every-steps", "1")
    args += ["--unlabeled", str(unlabeled), "--unlabeled-batch-size", "2"]
    with pytest.raises(KeyboardInterrupt):
        main(args)
    assert read_train_state(tmp_path / "b" / "weights" / "last")["global_step"] == 4
    monkeypatch.setattr(DistillTrainer, "_step", step)
    assert main([*args, "--resume"]) == 0

    expected, got = _live(tmp_path / "a"), _live(tmp_path / "b")
    assert expected.keys() == got.keys() and any(k.startswith("extras.") for k in got)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    assert (
        read_train_state(tmp_path / "b" / "weights" / "last")["loader"]
        == read_train_state(tmp_path / "a" / "weights" / "last")["loader"]
    )
    rows_a, rows_b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [r["epoch"] for r in rows_b] == [1, 2]
    assert rows_b[-1]["loss"] == pytest.approx(rows_a[-1]["loss"], rel=1e-5)


def test_clear_errors(store: Path, teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(_args(store, tmp_path / "nowhere", tmp_path / "s1", "--epochs", "1")) == 2
    assert f"{tmp_path / 'nowhere'}: teacher run not found" in capsys.readouterr().err

    other = make_run(tmp_path / "other-teacher", ["cat", "dog", "bird", "fish"], [1, 2, 3, 4])
    assert main(_args(store, other, tmp_path / "s2", "--epochs", "1")) == 2
    err = capsys.readouterr().err
    assert f"{store / 'train'}: classes" in err and "differ from the teacher's ['cat', 'dog', 'bird', 'fish']" in err

    bad = _args(store, teacher, tmp_path / "s3", "--epochs", "1")
    bad[bad.index("--student") + 1] = "tiny:strides=(16,32)"
    assert main(bad) == 2
    assert "predicts at strides [16, 32], the teacher at [8, 16, 32]" in capsys.readouterr().err

    assert main(_args(store, teacher, tmp_path / "s5", "--label-fraction", "0.5", "--mixup", "0.5")) == 2
    assert "--mixup mixes labelled and unlabelled images" in capsys.readouterr().err
    assert main(_args(store, teacher, tmp_path / "s6", "--label-fraction", "0.5", "--mosaic", "0.5")) == 2
    assert "--mosaic tiles labelled and unlabelled images" in capsys.readouterr().err

    with pytest.raises(OnedetError, match="has no trained weights to teach"):
        OneDet("tiny").distill(store, student="tiny")
    with pytest.raises(OnedetError, match="give them in the student spec"):  # not silently ignored
        OneDet.from_run(teacher).distill(store, student="tiny", out=tmp_path / "s4", model={"depth": 1})


def test_paired_batches_mark_unlabelled_images_and_drop_their_boxes() -> None:
    from onedet.data.loader import Batch
    from onedet.train.distill import PairedLoader

    def batch(index: list[int], boxes: int) -> Batch:
        n = len(index)
        return Batch(
            torch.rand(n, 3, 8, 8),
            torch.rand(n, boxes, 4),
            torch.ones(n, boxes, dtype=torch.long),
            torch.ones(n, boxes, dtype=torch.bool),
            torch.tensor(index),
        )

    class Loader(list):
        epoch = 0

    subset = torch.tensor([True, False, True, False])
    paired = PairedLoader(Loader([batch([0, 1], 3)]), Loader([batch([5], 1)]), labeled_subset=subset)
    (got,) = list(paired)
    assert got.labeled.tolist() == [True, False, False]
    assert got.images.shape[0] == 3 and got.boxes_xyxy.shape == (3, 3, 4)
    assert got.valid.tolist() == [[True, True, True], [False] * 3, [False] * 3]
    with pytest.raises(OnedetError, match="the unlabelled loader yields no batch"):  # not an endless loop
        list(PairedLoader(Loader([batch([0, 1], 3)]), Loader([]), labeled_subset=subset))


def test_a_labels_only_baseline_runs_no_teacher(store: Path, teacher: Path, tmp_path: Path) -> None:
    out = tmp_path / "baseline"
    zero = [a for w in ("cls", "aux-cls", "box-l1", "box-giou", "feat", "pseudo") for a in (f"--kd-{w}-weight", "0")]
    assert main(_args(store, teacher, out, "--epochs", "1", "--label-fraction", "0.5", *zero)) == 0
    row = read_metrics(out)[-1]
    assert "train/focal" in row and not any(k.startswith(("train/kd_", "train/pseudo_")) for k in row)
    assert read_train_state(out / "weights" / "last")["extras"] == {}


def test_pseudo_labels_and_the_teacher_run_only_where_some_images_lack_labels(tmp_path: Path) -> None:
    def config(**fields: object) -> DistillConfig:
        return DistillConfig(data=tmp_path, out=tmp_path / "out", teacher=tmp_path, student="tiny", **fields)

    assert not config().pseudo_labels()  # every image labelled: no teacher detections to decode and match
    assert config(label_fraction=0.5).pseudo_labels() and config(unlabeled=tmp_path).pseudo_labels()
    assert not config(label_fraction=0.5, kd_pseudo_weight=0.0).pseudo_labels()
    zero = {f"kd_{k}_weight": 0.0 for k in ("cls", "aux_cls", "box_l1", "box_giou", "feat")}
    assert not config(**zero).uses_teacher()  # kd_pseudo_weight 1, but nothing to pseudo-label
    assert config(label_fraction=0.5, **zero).uses_teacher()
    assert config(kd_assign=True, **zero).uses_teacher()  # the teacher's predictions assign the labels


def test_per_class_pseudo_thresholds_are_the_teachers_f1_best_scores_on_val(
    store: Path, teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from onedet.checkpoint import load_run, read_info
    from onedet.evaluate import best_f1_scores, evaluate_model
    from onedet.train.distill_config import PSEUDO_THRESHOLD_FALLBACK

    run = load_run(teacher, "best")  # the teacher as inference runs it (the head's peak filter on)
    best = best_f1_scores(evaluate_model(run.model, Store(store / "val"), with_pr=True)["pr"])
    expected = {name: PSEUDO_THRESHOLD_FALLBACK if value is None else value for name, value in best.items()}
    out = tmp_path / "auto"
    assert (
        main(_args(store, teacher, out, "--epochs", "1", "--label-fraction", "0.5", "--kd-pseudo-threshold", "none"))
        == 0
    )
    assert "pseudo-label thresholds (the teacher's F1-best scores on the val split)" in capsys.readouterr().err
    saved = read_info(out / "weights" / "best")["distill"]["pseudo_thresholds"]
    assert saved == {name: value if value != float("inf") else None for name, value in expected.items()}
    assert "train/pseudo_focal" in read_metrics(out)[-1]

    no_val = tmp_path / "no-val"
    (no_val / "train").parent.mkdir()
    (no_val / "train").symlink_to(store / "train")
    args = _args(no_val, teacher, tmp_path / "s", "--epochs", "1", "--label-fraction", "0.5")
    assert main([*args, "--kd-pseudo-threshold", "none"]) == 2
    assert f"{no_val}: no val split" in capsys.readouterr().err


def test_finite_per_class_thresholds_reach_the_loss_and_model_json(
    store: Path, teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A random-weight teacher finds nothing (every threshold inf), so the F1 search is replaced by one that
    returns finite scores and a class without boxes: those scores, the fallback for that class, in class order,
    are the loss's thresholds and model.json's."""
    import onedet.evaluate
    import onedet.train.distill as distill_module
    from onedet.checkpoint import read_info
    from onedet.train.distill_config import PSEUDO_THRESHOLD_FALLBACK

    real = onedet.evaluate.best_f1_scores
    chosen = [0.25, None, 0.6]
    monkeypatch.setattr(
        onedet.evaluate, "best_f1_scores", lambda pr: {n: chosen[i % 3] for i, n in enumerate(real(pr))}
    )
    seen: list[torch.Tensor] = []
    real_loss = distill_module.DistillLoss

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(kwargs["pseudo_threshold"])
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(distill_module, "DistillLoss", spy)
    out = tmp_path / "finite"
    args = _args(store, teacher, out, "--epochs", "1", "--label-fraction", "0.5", "--kd-pseudo-threshold", "none")
    assert main(args) == 0
    saved = read_info(out / "weights" / "best")["distill"]["pseudo_thresholds"]
    expected = [PSEUDO_THRESHOLD_FALLBACK if chosen[i % 3] is None else chosen[i % 3] for i in range(len(saved))]
    assert saved == dict(zip(saved, expected)) and len(saved) >= 2
    assert len(seen) == 1 and torch.equal(seen[0], torch.tensor(expected, dtype=torch.float32))
