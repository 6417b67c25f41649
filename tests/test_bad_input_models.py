"""Bad input to `onedet train`, `eval`, `export` and `predict`, through the CLI: damaged runs and checkpoints, stores
that do not fit, predict sources with non-images and symlink loops, unusable output folders. Each ends in one error
line naming the file and what is wrong, or a counted, listed skip; never a traceback. docs/bad_input.md tables them.

One tiny run is trained once for the module (64 px, ten synthetic images, one epoch: seconds on a CPU); a test that
damages it damages a copy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_bad_input import cli_error, read_only_folder
from train_helpers import cli_args

from onedet.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")
SIZE = 64


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from onedet.data.prepare import prepare
    from onedet.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("bad-models")
    make_synthetic(root / "source", num_images=10, image_size=SIZE, seed=0)
    prepare(root / "source", root / "store", image_size=SIZE, progress=False, workers=1)
    assert main(cli_args(root / "store", root / "run", "--epochs", "1", "--workers", "1")) == 0
    (root / "images").mkdir()
    Image.fromarray(np.full((40, 56, 3), 90, np.uint8)).save(root / "images" / "a.png")
    return {"root": root, "store": root / "store", "run": root / "run", "images": root / "images"}


@pytest.fixture
def run_copy(trained: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained["run"], tmp_path / "run"))


def _uses(trained: dict[str, Path], run: Path, tmp_path: Path) -> list[list[str]]:
    """eval, export and predict of `run`: the three commands that load a checkpoint."""
    return [
        ["eval", "--weights", str(run), "--data", str(trained["store"] / "val")],
        ["export", "--weights", str(run), "--out", str(tmp_path / "model.onnx")],
        ["predict", "--model", str(run), str(trained["images"]), "--out", str(tmp_path / "out")],
    ]


# --- damaged checkpoints (eval, export, predict) -------------------------------------------------------------


def test_truncated_weights(trained, run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    weights = run_copy / "weights" / "best" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # the best's own file: last keeps its (hard-linked) bytes
    for args in _uses(trained, run_copy, tmp_path):
        cli_error(capsys, args, "best/model.safetensors: cannot read the weights")
    assert not (tmp_path / "model.onnx").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("edit", "what"),
    [
        (lambda text: text[: len(text) // 2], "model.json: cannot read the checkpoint description"),
        (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "classes"}), "missing 'classes'"),
        (
            lambda text: json.dumps({**json.loads(text), "model": {**json.loads(text)["model"], "wings": 2}}),
            "model.json: 'model' is not a valid model config (unknown model config keys ['wings']",
        ),
        (
            lambda text: json.dumps({**json.loads(text), "model": {**json.loads(text)["model"], "depth": "two"}}),
            "model.json: ",
        ),
        (lambda text: "[]", "model.json: "),
    ],
    ids=["cut-short", "no-classes", "unknown-key", "wrong-type", "not-an-object"],
)
def test_edited_model_json(trained, run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture, edit, what) -> None:
    for which in ("best", "last"):
        path = run_copy / "weights" / which / "model.json"
        text = path.read_text()
        path.unlink()  # hard-linked between best and last: write a new file, not through the link
        path.write_text(edit(text))
    for args in _uses(trained, run_copy, tmp_path):
        cli_error(capsys, args, what)


def test_missing_or_empty_weights_folder(trained, run_copy: Path, tmp_path: Path, capsys) -> None:
    shutil.rmtree(run_copy / "weights" / "best")
    shutil.rmtree(run_copy / "weights" / "last")
    for args in _uses(trained, run_copy, tmp_path):
        cli_error(capsys, args, "weights: no complete checkpoint")
    shutil.rmtree(run_copy / "weights")
    for args in _uses(trained, run_copy, tmp_path):
        cli_error(capsys, args, f"{run_copy}: not a onedet run (no weights/ folder)")


# --- train ---------------------------------------------------------------------------------------------------


def test_train_on_a_store_without_train_split(trained, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store = tmp_path / "store"
    shutil.copytree(trained["store"] / "val", store / "val")
    cli_error(capsys, cli_args(store, tmp_path / "out"), f"{store / 'train'}: no such store")
    cli_error(capsys, cli_args(trained["root"] / "source", tmp_path / "out2"), "source/train: not a onedet store")


def test_train_and_distill_on_a_split_instead_of_the_store(trained, tmp_path: Path, capsys) -> None:
    split, what = trained["store"] / "train", f"is a store split; pass the store folder {trained['store']} (which"
    cli_error(capsys, cli_args(split, tmp_path / "out"), f"{split}: {what}")
    distill = ["distill", "--data", str(split), "--teacher", str(trained["run"]), "--student", "teacher:depth=1"]
    cli_error(capsys, [*distill, "--out", str(tmp_path / "student"), "--no-progress"], f"{split}: {what}")


def test_train_with_val_classes_other_than_train(trained, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store = Path(shutil.copytree(trained["store"], tmp_path / "store"))
    meta = json.loads((store / "val" / "meta.json").read_text())
    meta["classes"] = list(reversed(meta["classes"]))
    (store / "val" / "meta.json").write_text(json.dumps(meta))
    cli_error(capsys, cli_args(store, tmp_path / "out"), f"{store / 'val'}: classes", "differ from the train split's")


def _cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("damage", "what"),
    [
        (
            lambda run: (run / "weights/last/train_state.pt").write_bytes(b"\x80\x02 cut"),
            "cannot load the training state",
        ),
        (lambda run: _cut_in_half(run / "weights/last/train_state.pt"), "cannot load the training state"),
        (lambda run: (run / "weights/last/train_state.pt").unlink(), "train_state.pt: missing"),
        (lambda run: (run / "train_config.json").write_text('{"data": '), "train_config.json: cannot resume"),
        (lambda run: (run / "train_config.json").write_text('{"wings": 2}'), "train_config.json: cannot resume"),
        (lambda run: (run / "train_config.json").unlink(), "train_config.json: cannot resume"),
    ],
    ids=["garbage-state", "half-state", "no-state", "cut-short-config", "unknown-key-config", "no-config"],
)
def test_resume_of_a_damaged_run(trained, run_copy: Path, capsys: pytest.CaptureFixture, damage, what) -> None:
    damage(run_copy)
    cli_error(capsys, cli_args(trained["store"], run_copy, "--resume"), what)


@pytest.mark.parametrize(
    ("edit", "what"),
    [
        (lambda info: {**info, "model": {**info["model"], "wings": 2}}, "unknown model config keys ['wings']"),
        (lambda info: {**info, "model": {**info["model"], "depth": "two"}}, "'model' is not a valid model config"),
        (lambda info: {k: v for k, v in info.items() if k != "classes"}, "missing 'classes'"),
    ],
    ids=["unknown-key", "wrong-type", "no-classes"],
)
def test_resume_with_an_edited_model_json(trained, run_copy: Path, capsys: pytest.CaptureFixture, edit, what) -> None:
    path = run_copy / "weights" / "last" / "model.json"
    info = json.loads(path.read_text())
    path.unlink()  # hard-linked with best's: write a new file, not through the link
    path.write_text(json.dumps(edit(info)))
    cli_error(capsys, cli_args(trained["store"], run_copy, "--resume"), f"{path}: ", what)


def test_resume_of_nothing(trained, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cli_error(capsys, cli_args(trained["store"], tmp_path / "empty", "--resume"), "empty: nothing to resume")


# --- eval ----------------------------------------------------------------------------------------------------


def test_eval_on_a_store_that_does_not_fit(trained, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = str(trained["run"])
    cli_error(
        capsys, ["eval", "--weights", run, "--data", str(trained["store"])], "a store with splits ['train', 'val']"
    )
    store = Path(shutil.copytree(trained["store"] / "val", tmp_path / "val"))
    meta = json.loads((store / "meta.json").read_text())
    meta["classes"] = ["a", "b", "c", "d"]
    (store / "meta.json").write_text(json.dumps(meta))
    cli_error(capsys, ["eval", "--weights", run, "--data", str(store)], f"{store}: the store's classes", "differ")


# --- export and predict outputs ------------------------------------------------------------------------------


def test_outputs_that_are_files(trained, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    taken = tmp_path / "taken"
    taken.write_text("mine")
    run, images = str(trained["run"]), str(trained["images"])
    cli_error(capsys, ["predict", "--model", run, images, "--out", str(taken)], "taken: exists and is not a folder")
    cli_error(capsys, ["export", "--weights", run, "--out", str(taken / "m.onnx")], "taken: exists and is not a folder")
    (tmp_path / "dir.onnx").mkdir()
    cli_error(capsys, ["export", "--weights", run, "--out", str(tmp_path / "dir.onnx")], "dir.onnx: is a folder")
    assert taken.read_text() == "mine"


def test_predict_into_a_read_only_folder(trained, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    """A read-only --out (`test_bad_input.read_only_folder`): the error names it."""
    locked = read_only_folder(tmp_path / "locked", monkeypatch)
    args = ["predict", "--model", str(trained["run"]), str(trained["images"]), "--out", str(locked / "out")]
    cli_error(capsys, args, "Permission denied", str(locked / "out"))
    locked.chmod(0o755)


# --- predict sources -----------------------------------------------------------------------------------------


def test_predict_lists_the_non_images_it_skips(trained, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(np.full((40, 56, 3), 90, np.uint8)).save(folder / "a.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "labels.json").write_text("{}")
    os.symlink("loop.jpg", folder / "loop.jpg")  # a link to itself
    (folder / "sub").mkdir()  # folders are not searched (not recursive): not a skip
    code = main(["predict", "--model", str(trained["run"]), str(folder), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "skipped 3 non-image file(s)" in err
    for name in ("notes.txt", "labels.json", "loop.jpg"):
        assert name in err
    assert "sub" not in err.replace("skipped", "")
    rows = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert {r["file"] for r in rows} <= {str(folder / "a.png")}
    assert (tmp_path / "out" / "a.png").is_file()


def test_predict_on_a_symlink_loop(trained, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    os.symlink("loop", tmp_path / "loop")
    args = ["predict", "--model", str(trained["run"]), str(tmp_path / "loop"), "--out", str(tmp_path / "out")]
    cli_error(capsys, args, "loop: a symbolic link that loops or points nowhere")
    folder = tmp_path / "only-loops"
    folder.mkdir()
    os.symlink("x.jpg", folder / "x.jpg")
    args = ["predict", "--model", str(trained["run"]), str(folder), "--out", str(tmp_path / "out")]
    cli_error(capsys, args, "only-loops: folder holds no images")
    assert not (tmp_path / "out").exists()


# --- options out of range ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "what"),
    [
        (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["--epochs", "0"], "--epochs must be at least 1, got 0"),
        (["--lr", "-1"], "--lr must be positive, got -1.0"),
        (["--lr", "nan"], "--lr must be positive, got nan"),
        (["--ema-decay", "1"], "--ema-decay must be in [0, 1), got 1.0"),
        (["--mixup", "1.5"], "--mixup must be a probability, in [0, 1], got 1.5"),
        (["--mixup", "0.5", "--cache-features"], "--mixup blends augmented images: it does not apply with --cache"),
        (["--mixup", "0.5", "--no-augment"], "--mixup blends augmented images: it does not apply with --no-augment"),
        (["--mosaic", "-0.1"], "--mosaic must be a probability, in [0, 1], got -0.1"),
        (["--mosaic", "1", "--cache-features"], "--mosaic tiles augmented images: it does not apply with --cache"),
        (["--mosaic", "1", "--epochs", "10"], "--mosaic with --close-mosaic 10 and --epochs 10: every epoch would"),
        (["--close-mosaic", "-1"], "--close-mosaic must be 0 or more, got -1"),
    ],
    ids=[
        "batch-0",
        "epochs-0",
        "lr-negative",
        "lr-nan",
        "ema-1",
        "mixup-1.5",
        "mixup-cached",
        "mixup-no-augment",
        "mosaic-negative",
        "mosaic-cached",
        "mosaic-never",
        "close-mosaic-negative",
    ],
)
def test_train_option_out_of_range(trained, tmp_path: Path, capsys, option: list[str], what: str) -> None:
    cli_error(capsys, [*cli_args(trained["store"], tmp_path / "out"), *option], what)
    assert not (tmp_path / "out" / "weights").exists()


def test_eval_and_predict_options_out_of_range(trained, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run, val = str(trained["run"]), str(trained["store"] / "val")
    cli_error(capsys, ["eval", "--weights", run, "--data", val, "--batch-size", "0"], "--batch-size must be at least 1")
    for threshold in ("nan", "2", "-0.1"):
        args = ["predict", "--model", run, str(trained["images"]), "--out", str(tmp_path / "out"), "--threshold"]
        cli_error(capsys, [*args, threshold], f"threshold must be a score in 0..1, got {float(threshold)}")
        assert not (tmp_path / "out").exists()  # checked before anything is written


# --- ONNX files and OnnxDetector -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_file(trained: dict[str, Path]) -> Path:
    from onedet.export import export

    [path] = export(trained["run"], trained["root"] / "model.onnx")
    return path


def test_predict_with_a_damaged_or_foreign_onnx_file(trained, onnx_file: Path, tmp_path: Path, capsys) -> None:
    import onnx
    from onnx import TensorProto, helper

    cut = tmp_path / "cut.onnx"
    cut.write_bytes(onnx_file.read_bytes()[:5000])
    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y"))
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "other.onnx")
    for model, what in [(cut, "cut.onnx: onnxruntime cannot load this file"), (tmp_path / "other.onnx",
                        "other.onnx: not a onedet model")]:  # fmt: skip
        args = ["predict", "--model", str(model), str(trained["images"]), "--out", str(tmp_path / "out")]
        cli_error(capsys, args, what)


@pytest.mark.parametrize(
    ("images", "what"),
    [
        (
            [np.zeros((20, 30, 3), np.uint8), np.zeros((20, 30, 3), np.int64)],
            "image 1: expected dtype uint8, got int64",
        ),
        (np.zeros((20, 30, 3), bool), "image 0: expected dtype uint8, got bool"),
        (np.zeros((1, 2, 20, 30, 3), np.uint8), "image 0: expected 3 dimensions"),
        (np.zeros((0, 20, 30, 3), np.uint8), "no images given"),
        ([np.zeros((20, 30, 3), np.uint8), "a.jpg"], "image 1: expected a numpy uint8 array"),
    ],
    ids=["int64-in-a-list", "bool", "5-d", "empty-batch", "path-in-a-list"],
)
def test_onnx_detector_refuses_other_arrays(onnx_file: Path, images, what: str) -> None:
    from onedet.errors import OnedetError
    from onedet.runtime import OnnxDetector

    with pytest.raises(OnedetError, match=re.escape(what)):
        OnnxDetector(onnx_file, threads=1)(images)
