"""The trainer end to end on a tiny synthetic store, and its parts: config/CLI, optimizer, schedule, EMA, AMP plan,
cached features, bad input (non-finite loss, classes that do not match, an occupied run folder)."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from train_helpers import cli_args, make_store, tiny_config

from onedet.checkpoint import load_run
from onedet.data.store import Store
from onedet.errors import OnedetError
from onedet.options import add_arguments, field_docs, from_args
from onedet.train.config import TrainConfig
from onedet.train.ema import WeightEma
from onedet.train.optim import CosineSchedule, build_optimizer, lr_factor, param_groups


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("train-store"))


@pytest.fixture(scope="module")
def trained(store: Path, tmp_path_factory: pytest.TempPathFactory):
    """One short training run through the CLI, shared by the checks on what it writes."""
    from onedet.cli import main

    out = tmp_path_factory.mktemp("runs") / "run"
    # --amp off: the trainer evaluates under its autocast plan and `onedet eval` in fp32, and the eval test
    # compares the two exactly (as the facade test does)
    assert main(cli_args(store, out, "--epochs", "2", "--amp", "off")) == 0
    return out


# --- configuration ---------------------------------------------------------------------------------------------


def test_cli_is_generated_from_the_dataclass() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, TrainConfig)
    args = parser.parse_args(
        [
            "--data",
            "s",
            "--finetune",
            "lora",
            "--lr",
            "3e-4",
            "--no-augment",
            "--max-minutes",
            "2.5",
            "--pretrained",
            "none",
            "--workers",
            "none",
        ]
    )
    cfg = from_args(TrainConfig, args)
    assert cfg == TrainConfig(
        data=Path("s"), finetune="lora", lr=3e-4, augment=False, max_minutes=2.5, pretrained=None, workers=None
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--data", "s", "--finetune", "everything"])
    helps = {a.dest: a.help for a in parser._actions}
    assert "LoRA rank" in helps["lora_rank"] and "%(default)s" in helps["lora_rank"]
    assert set(field_docs(TrainConfig)) == {f for f in TrainConfig.__dataclass_fields__}


def test_model_fields_are_flags_and_a_subclass_of_train_config_gets_its_cli() -> None:
    from dataclasses import dataclass

    @dataclass
    class DistillConfig(TrainConfig):
        teacher: Path | None = None
        """The teacher run folder."""

    parser = argparse.ArgumentParser()
    add_arguments(parser, DistillConfig)
    args = parser.parse_args(
        ["--data", "s", "--teacher", "t", "--model.neck_channels=64", "--model.strides", "8,16", "--model.taps=[1, 3]"]
    )
    cfg = from_args(DistillConfig, args)
    assert cfg.teacher == Path("t") and cfg.lr == TrainConfig.lr
    assert cfg.model == {"neck_channels": 64, "strides": (8, 16), "taps": (1, 3)}
    helps = {a.dest: a.help for a in parser._actions}
    assert "teacher run" in helps["teacher"] and "LoRA rank" in helps["lora_rank"]
    assert "Channels of every pyramid level" in helps["model.neck_channels"]
    assert from_args(TrainConfig, parser.parse_args(["--data", "s"])).model == {}
    for none in ("()", "[]", ""):  # "no global blocks", in each spelling (a student spec writes global_blocks=())
        assert from_args(TrainConfig, parser.parse_args(["--data", "s", f"--model.global_blocks={none}"])).model == {
            "global_blocks": ()
        }
    args = parser.parse_args(["--data", "s", "--model.global_blocks", "(2, 5)"])
    assert from_args(TrainConfig, args).model == {"global_blocks": (2, 5)}


# --- optimizer, schedule, EMA ------------------------------------------------------------------------------------


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.backbone.pos_embed = nn.Parameter(torch.zeros(1, 3, 4))
        self.head = nn.Linear(4, 2)


def test_the_input_size_rounds_up_to_the_overridden_window() -> None:
    """A window override changes the input multiple: `tiny` (256 px, 8 x 8 windows of 16 px patches) with
    window_size=10 on a 300 px store trains at 320 px (was: refused, since 256 is no multiple of 160)."""
    from onedet.train.config import model_config

    cfg = TrainConfig(data=Path("unused"), preset="tiny", model={"window_size": 10})
    assert (model_config(cfg, 300, 3).image_size, model_config(cfg, 320, 3).image_size) == (320, 320)
    assert model_config(TrainConfig(data=Path("unused"), preset="tiny"), 300, 3).image_size == 384
    assert model_config(dataclasses.replace(cfg, image_size=480), 300, 3).image_size == 480


def test_no_weight_decay_on_norms_biases_and_position_embeddings() -> None:
    model = _Toy()
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["name"]: g for g in param_groups(model, lr=1.0, weight_decay=0.1, backbone_lr_scale=0.1)}
    decayed = {names[id(p)] for g in groups.values() if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {"backbone.0.weight", "head.weight"}
    assert groups["backbone_decay"]["lr"] == pytest.approx(0.1) and groups["head_decay"]["lr"] == 1.0
    model.backbone.requires_grad_(False)
    assert [g["name"] for g in param_groups(model, lr=1.0, weight_decay=0.1)] == ["head_no_decay", "head_decay"]
    assert build_optimizer(model, lr=1.0, weight_decay=0.1).param_groups[1]["weight_decay"] == 0.1


@pytest.mark.parametrize("steps_per_epoch", [3, 50])
def test_schedule_is_counted_in_epochs(steps_per_epoch: int) -> None:
    kw = {"steps_per_epoch": steps_per_epoch, "epochs": 10, "warmup_epochs": 2}
    factors = [lr_factor(s, **kw) for s in range(10 * steps_per_epoch)]
    warmup = 2 * steps_per_epoch
    assert all(a < b for a, b in itertools.pairwise(factors[: warmup + 1])), "warm-up rises"
    assert factors[warmup] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[warmup:])), "cosine decays"
    assert factors[-1] == pytest.approx(0.01, abs=0.01)
    # The same fraction of training has the same factor whatever the dataset size.
    assert lr_factor(6 * steps_per_epoch, **kw) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5)))


@pytest.mark.parametrize("new_epochs", [6, 16])
def test_a_refitted_schedule_continues_from_its_rate(new_epochs: int) -> None:
    """A time budget refits the length after an epoch: the rate goes on from where it was (no jump up when the
    schedule grows, none down when it shrinks), decays monotonically and still ends at `final`."""
    kw = {"steps_per_epoch": 5, "warmup_epochs": 1}
    schedule = CosineSchedule(epochs=10, **kw)
    assert [schedule(s) for s in range(50)] == [lr_factor(s, epochs=10, **kw) for s in range(50)], "no refit"
    step = 4 * 5
    before = schedule(step)
    schedule.refit(step, new_epochs)
    after = [schedule(s) for s in range(step, new_epochs * 5)]
    assert after[0] == pytest.approx(before), "no jump at the refit"
    assert all(a > b for a, b in itertools.pairwise(after)), "decays to the end"
    assert schedule(new_epochs * 5) == pytest.approx(0.01), "reaches `final` at the new length"
    # A recomputed cosine would have jumped: that is what the anchor is for.
    assert abs(lr_factor(step, epochs=new_epochs, **kw) - before) > 0.05
    # A second refit anchors at the rate the first one reached.
    schedule.refit(step + 5, new_epochs + 2)
    assert schedule(step + 5) == pytest.approx(after[5])


def test_the_schedule_is_saved_in_the_scheduler_state() -> None:
    """LambdaLR saves a callable object's fields, so a checkpoint keeps the refitted length and its anchor."""
    make = lambda: torch.optim.lr_scheduler.LambdaLR(  # noqa: E731
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0),
        CosineSchedule(steps_per_epoch=5, epochs=10, warmup_epochs=1),
    )
    saved = make()
    saved.lr_lambdas[0].refit(20, 16)
    restored = make()
    restored.load_state_dict(saved.state_dict())
    assert [restored.lr_lambdas[0](s) for s in range(80)] == [saved.lr_lambdas[0](s) for s in range(80)]


def test_ema_follows_the_trainable_weights_and_restores() -> None:
    model = _Toy()
    model.backbone.requires_grad_(False)
    ema = WeightEma(model, decay=0.5, warmup_power=1.0)
    assert set(ema.shadow) == {"head.weight", "head.bias"}, "frozen weights are not copied"
    start = model.head.weight.detach().clone()
    with torch.no_grad():
        model.head.weight.add_(1.0)
    ema.update(model)  # warm-up decay 1 - 2**-1 = 0.5
    assert torch.allclose(ema.shadow["head.weight"], start + 0.5)
    live = model.head.weight.detach().clone()
    with ema.applied(model):
        assert torch.allclose(model.head.weight, start + 0.5)
    assert torch.equal(model.head.weight, live)
    copy = WeightEma(model, decay=0.5)
    copy.load_state_dict(ema.state_dict())
    assert copy.num_updates == 1 and torch.equal(copy.shadow["head.weight"], ema.shadow["head.weight"])


def test_amp_plan() -> None:
    from onedet.train import amp

    cpu = torch.device("cpu")
    assert amp.plan("off", cpu, True) is None
    assert amp.plan("bf16", cpu, False) == torch.bfloat16
    native = torch.bfloat16 if amp.cpu_bf16_supported() else None
    assert amp.plan("auto", cpu, True) == native, "a frozen backbone: bf16 where the CPU has it"
    assert amp.plan("auto", cpu, False) is None, "a trainable backbone stays fp32 on the CPU"


# --- the split forward and cached features ---------------------------------------------------------------------


def test_forward_features_then_forward_head_equals_forward() -> None:
    from onedet.config import ModelConfig
    from onedet.model.detector import Detector

    torch.manual_seed(0)
    model = Detector(ModelConfig.from_preset("tiny", num_classes=4, image_size=128)).eval()
    images = torch.rand(2, 3, 100, 120)  # padded inside
    with torch.no_grad():
        whole, split = model(images), model.forward_head(model.forward_features(images))
    assert torch.equal(whole.logits, split.logits) and torch.equal(whole.boxes_xyxy, split.boxes_xyxy)


@pytest.mark.slow
def test_cached_features_train_and_evaluate_like_the_model(store: Path, tmp_path: Path) -> None:
    from onedet.train.features import CachedFeatureModel, FeatureCache
    from onedet.train.loop import Trainer

    trainer = Trainer(tiny_config(store, tmp_path / "run", cache_features=True, amp="off"))
    try:
        cache = trainer.val_cache
        assert cache is not None and cache.array.dtype.name == "float16"
        val = Store(store / "val")
        images = torch.as_tensor(val.read_batch([0, 1])["images"]).float() / 255
        model = trainer.detector.eval()
        model.head.use_peak_filter = False  # a discontinuous step: float16 rounding may move a tie between cells
        with torch.no_grad():
            direct = model(images)
            cached = CachedFeatureModel(model, cache)(images)
            flipped = model(images.flip(-1))
            features = cache.read(torch.tensor([0, 1]), torch.tensor([1, 1]))
            from_flip = model.forward_head(features)
        # float16 features: close, not equal
        assert torch.allclose(cached.logits, direct.logits, atol=0.05)
        assert torch.allclose(from_flip.logits, flipped.logits, atol=0.05), "the flipped image's own features"
        model.head.use_peak_filter = True
        result = trainer.fit()
        assert result.metrics is not None and (tmp_path / "run" / "weights" / "best" / "model.safetensors").exists()
        # The same backbone over the same store finds its cache again instead of recomputing it.
        again = FeatureCache.build(
            model, val, tmp_path / "run" / "cache", "val", batch_size=8, device=torch.device("cpu"), dtype=None
        )
        assert again.meta["key"] == cache.meta["key"]
    finally:
        trainer.close()


# --- end to end ------------------------------------------------------------------------------------------------


def test_training_writes_the_run_folder(trained: Path) -> None:
    from onedet.train.logging import read_metrics

    names = ("curves.png", "pr.png", "f1.png", "confusion_matrix.png", "predictions.png", "metrics.csv", "metrics.json")
    for name in (*names, "train_config.json"):
        assert (trained / name).stat().st_size > 0, name
    assert list((trained / "tensorboard").glob("events.out.tfevents.*"))
    for which in ("last", "best"):
        folder = trained / "weights" / which
        assert (folder / "model.safetensors").is_file() and (folder / "model.json").is_file()
    assert (trained / "weights" / "last" / "train_state.pt").is_file()
    assert not (trained / "weights" / "best" / "train_state.pt").exists()
    rows = read_metrics(trained)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) and 0 <= r["AP50"] <= 1 and r["lr"] > 0 for r in rows)
    info = json.loads((trained / "weights" / "best" / "model.json").read_text())
    assert info["classes"] and info["model"]["num_classes"] == len(info["classes"])
    # each class's own score threshold for predict: its best-F1 score on val, from which metrics.json's confusion
    # matrix counted its detections (None where F1 chose none: a class never found, or without val boxes)
    counted = json.loads((trained / "metrics.json").read_text())["confusion"]["thresholds"]
    assert info["score_thresholds"] == [counted[name] for name in info["classes"]]
    assert load_run(trained).score_thresholds == info["score_thresholds"]


def test_eval_cli_uses_the_run(trained: Path, store: Path, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    from onedet.cli import main

    plots = tmp_path / "plots"
    assert main(["eval", "--weights", str(trained), "--data", str(store / "val"), "--json", "--plots", str(plots)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class", "confusion"}
    assert "pr" not in metrics, "the curves go to pr.png, as the run's metrics.json leaves them out"
    saved = json.loads((trained / "metrics.json").read_text())
    assert metrics["AP"] == pytest.approx(saved["AP"], abs=1e-6), "eval of `best` equals the trainer's"
    assert metrics["confusion"] == saved["confusion"]
    matrix = np.asarray(saved["confusion"]["matrix"])
    val = Store(store / "val")
    objects = int(sum(np.asarray(val.read_batch(np.arange(len(val)))["valid"]).sum(-1)))
    assert matrix[:, :-1].sum() == objects, "every object is found as some class or missed, once"
    for name in ("pr.png", "f1.png", "confusion_matrix.png"):
        assert (plots / name).stat().st_size > 0, name


def test_eval_shows_a_progress_bar_on_a_terminal(
    trained: Path, store: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from onedet.cli import main

    args = ["eval", "--weights", str(trained), "--data", str(store / "val"), "--batch-size", "2", "--json"]
    assert main(args) == 0
    assert "eval val" not in capsys.readouterr().err, "no bar in a log"
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(args) == 0
    assert "eval val" in capsys.readouterr().err
    assert main([*args, "--no-progress"]) == 0
    assert "eval val" not in capsys.readouterr().err


def test_info_on_a_run_says_how_it_was_trained(trained: Path, capsys: pytest.CaptureFixture) -> None:
    from onedet.cli import main

    assert main(["info", str(trained), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    saved = json.loads((trained / "metrics.json").read_text())
    info = json.loads((trained / "weights" / "best" / "model.json").read_text())
    assert d["metrics"]["AP"] == saved["AP"] and d["trained"]["epochs"] == 2 and d["trained"]["preset"] == "tiny"
    assert [c["threshold"] for c in d["classes"]] == info["score_thresholds"]
    assert d["checkpoint"] == str(trained / "weights" / "best")
    assert main(["info", str(trained)]) == 0
    assert f"val split: AP {saved['AP']:.3f}" in capsys.readouterr().out


def test_eval_records_thresholds_for_a_run_without_them(
    trained: Path, store: Path, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    """`onedet eval --record` gives a run that records no thresholds (as runs trained before they were recorded)
    those training records: each class's best-F1 score on val. On `last` it records last's own and leaves best's;
    `OneDet.evaluate(record=True)` predicts with them at once."""
    import shutil

    from onedet import OneDet
    from onedet.cli import main
    from onedet.predict import predict

    run = Path(shutil.copytree(trained, tmp_path / "run"))
    best, last = (run / "weights" / which / "model.json" for which in ("best", "last"))

    def forget() -> list:
        info = json.loads(best.read_text())
        own = info.pop("score_thresholds")
        best.write_text(json.dumps(info))
        assert load_run(run).score_thresholds is None
        return own

    expected = forget()
    assert main(["eval", "--weights", str(run), "--data", str(store / "val"), "--record"]) == 0
    assert f"recorded in {best}" in capsys.readouterr().out
    assert load_run(run).score_thresholds == expected
    assert "score_thresholds" not in json.loads(last.read_text())
    assert main(["eval", "--weights", str(run / "weights" / "last"), "--data", str(store / "val"), "--record",
                 "--json"]) == 0  # fmt: skip
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["recorded"] == {
        "file": str(last),
        "score_thresholds": list(metrics["confusion"]["thresholds"].values()),
    }
    assert load_run(run, "last").score_thresholds == metrics["recorded"]["score_thresholds"]
    assert load_run(run).score_thresholds == expected, "best keeps its own"
    from onedet.evaluate import evaluate_run

    with pytest.raises(OnedetError, match="record: these weights were not read from a checkpoint folder"):
        evaluate_run(load_run(run)._replace(folder=None), store / "val", record=True)

    forget()
    detector = OneDet.from_run(run)
    image = np.ascontiguousarray(Store(store / "val").read_batch(np.array([0]))["images"][0].permute(1, 2, 0))
    before = detector.predict(image)
    detector.evaluate(store / "val", record=True)
    assert detector.run.score_thresholds == expected == load_run(run).score_thresholds
    after, every = detector.predict(image), detector.predict(image, threshold=0.0)
    for got, own in ((before, [None] * len(expected)), (after, expected)):  # 0.3 for all, then the recorded ones
        limits = {cid: 0.3 if t is None else t for cid, t in zip(detector.run.category_ids, own)}
        keep = every.scores >= np.array([limits[int(c)] for c in every.category_ids], dtype=np.float32)
        np.testing.assert_array_equal(got.scores, every.scores[keep])
    np.testing.assert_array_equal(after.scores, predict(run, image).scores)  # as a new load of the run predicts
    assert len(after.scores) != len(before.scores), "the case tells the recorded thresholds from 0.3"


def test_an_occupied_run_folder_needs_resume(trained: Path, store: Path) -> None:
    from onedet.train import train

    with pytest.raises(OnedetError, match="already holds a run"):
        train(tiny_config(store, trained))


def test_resume_refuses_a_store_with_other_classes(trained: Path, store: Path, tmp_path: Path) -> None:
    import shutil

    from onedet.train import train

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    model_json = run / "weights" / "last" / "model.json"
    info = json.loads(model_json.read_text())
    info["classes"] = list(reversed(info["classes"]))
    model_json.write_text(json.dumps(info))
    with pytest.raises(OnedetError, match="do not match the checkpoint"):
        train(tiny_config(store, run, resume=True))


def test_resume_of_weights_from_another_architecture_is_a_clear_error(
    trained: Path, store: Path, tmp_path: Path
) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    from onedet.train import train

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    weights_file = run / "weights" / "last" / "model.safetensors"
    weights = load_file(weights_file)
    weights["head.cls_pred.weight"] = weights["head.cls_pred.weight"][:, :5].contiguous()  # e.g. an older head
    save_file(weights, weights_file)
    with pytest.raises(OnedetError, match=r"cannot resume.*head\.cls_pred\.weight"):
        train(tiny_config(store, run, resume=True))


@pytest.mark.slow
def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onedet.model.loss
    from onedet.checkpoint import read_train_state
    from onedet.train import train

    real = onedet.model.loss.weighted_total
    calls = []

    def explode_on_third_step(terms, weights=None):
        calls.append(1)
        total = real(terms, weights)
        return total * float("nan") if len(calls) == 3 else total

    monkeypatch.setattr(onedet.model.loss, "weighted_total", explode_on_third_step)
    out = tmp_path / "run"
    with pytest.raises(OnedetError, match=r"non-finite loss at epoch 1, step 3.*last good checkpoint"):
        train(tiny_config(store, out, checkpoint_every_steps=1, epochs=2))
    assert read_train_state(out / "weights" / "last")["global_step"] == 2


def test_an_unwritable_run_folder_is_a_clear_error(store: Path, tmp_path: Path) -> None:
    from onedet.train import train

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OnedetError, match="not writable"):
        train(tiny_config(store, blocker / "run"))


@pytest.mark.slow
def test_a_spent_time_budget_stops_after_the_epoch(store: Path, tmp_path: Path) -> None:
    from onedet.train import train
    from onedet.train.logging import read_metrics

    result = train(tiny_config(store, tmp_path / "run", epochs=5, max_minutes=1e-4, augment=False))
    assert [r["epoch"] for r in read_metrics(result.run)] == [1], "stopped after the first epoch"
    assert result.metrics is not None, "the last epoch is evaluated and `best` written"


def test_patience_stops_when_val_ap_stops_improving(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Val AP (scripted) improves until epoch 2, then not: with --patience 2 the run stops after epoch 4, `best` is
    epoch 2's, and a resume counts from that best (so it stops after one more epoch without improvement, and goes on
    with a larger patience). Without a val split --patience is a clear error."""
    from onedet.train import loop, train
    from onedet.train.logging import read_metrics

    scripted = iter([0.1, 0.3, 0.2, 0.3, 0.25, 0.2, 0.1])
    evaluate = loop.Trainer._evaluate

    def scripted_ap(self, with_pr=False, model=None):
        metrics = evaluate(self, with_pr=with_pr, model=model)
        return metrics if with_pr else {**metrics, "AP": next(scripted)}  # the end-of-run evaluation is real

    monkeypatch.setattr(loop.Trainer, "_evaluate", scripted_ap)
    cfg = tiny_config(store, tmp_path / "run", epochs=8, patience=2, augment=False)
    result = train(cfg)
    assert [r["AP"] for r in read_metrics(result.run)] == [0.1, 0.3, 0.2, 0.3], "an equal AP is no improvement"
    assert "val AP has not improved for 2 epochs (--patience 2); the best, AP 0.3000, is epoch 2's" in (
        capsys.readouterr().err
    )
    best = torch.load(result.run / "weights" / "last" / "train_state.pt", weights_only=True)
    assert (best["best_ap"], best["best_epoch"]) == (0.3, 2)
    result = train(dataclasses.replace(cfg, resume=True))  # epoch 5: 0.25, stale since epoch 2
    assert [r["AP"] for r in read_metrics(result.run)] == [0.1, 0.3, 0.2, 0.3, 0.25]
    assert "val AP has not improved for 3 epochs" in capsys.readouterr().err
    result = train(dataclasses.replace(cfg, resume=True, patience=5))  # 0.2, 0.1: stale 5 epochs after epoch 7
    assert [r["epoch"] for r in read_metrics(result.run)] == [1, 2, 3, 4, 5, 6, 7]

    no_val = tmp_path / "no_val"
    no_val.mkdir()
    (no_val / "train").symlink_to(store / "train", target_is_directory=True)
    with pytest.raises(OnedetError, match="--patience stops when val AP stops improving, but there is no val split"):
        train(tiny_config(no_val, tmp_path / "run2", patience=2))
    with pytest.raises(OnedetError, match="--patience must be at least 1"):
        tiny_config(store, tmp_path / "run3", patience=0)


@pytest.mark.slow
def test_a_subclass_trains_extra_modules_through_the_seams(tmp_path: Path) -> None:
    """`build_criterion` adds a term, `trainable_extras` gives it parameters: optimised, saved under "extras" in
    train_state.pt, and restored on resume (the seam a distillation trainer builds on)."""
    from onedet.checkpoint import read_train_state
    from onedet.train.loop import Trainer

    class ExtraTrainer(Trainer):
        def trainable_extras(self) -> torch.nn.Module:
            self.scale = torch.nn.Linear(1, 1)
            return self.scale

        def build_criterion(self):
            base = super().build_criterion()

            def criterion(output, batch):
                terms = base(output, batch)
                terms["extra"] = (self.scale(output.logits.float().mean().reshape(1, 1)) - 1).square().sum()
                return terms

            return criterion

    from onedet.config import ModelConfig

    weights = {**ModelConfig().loss_weights, "extra": 1.0}
    store = make_store(tmp_path, num_images=12)
    cfg = tiny_config(store, tmp_path / "run", amp="off", ema_decay=0, model={"loss_weights": weights})
    trainer = ExtraTrainer(cfg)
    try:
        start = trainer.scale.weight.detach().clone()
        assert any(p is trainer.scale.weight for g in trainer.optimizer.param_groups for p in g["params"])
        trainer.fit()
        trained = {k: v.detach().clone() for k, v in trainer.scale.state_dict().items()}
    finally:
        trainer.close()
    assert not torch.equal(trained["weight"], start), "the extra module trained"
    state = read_train_state(tmp_path / "run" / "weights" / "last")
    torch.testing.assert_close(state["extras"]["weight"], trained["weight"])
    resumed = ExtraTrainer(dataclasses.replace(cfg, resume=True, epochs=1))
    try:
        torch.testing.assert_close(resumed.scale.weight.detach(), trained["weight"])
    finally:
        resumed.close()


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Under capsys stderr is not a terminal: the epoch's progress bar is not drawn (its `\r` redraws would fill a
    log), while the epoch line still is."""
    from onedet.train.logging import RunLog

    log = RunLog(tmp_path, progress=True)
    log.start_epoch(0, 1, steps=3)
    for step in range(3):
        log.step(step + 1, {"loss": 1.0})
    log.end_epoch()
    log.epoch({"epoch": 1, "step": 3, "loss": 1.0})
    log.close()
    err = capsys.readouterr().err
    assert "\r" not in err and "epoch 1" in err
