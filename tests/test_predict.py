"""`onedet predict` with a run folder (PyTorch) and with an .onnx file (onnxruntime): files, folders and globs in,
annotated images and COCO-results JSON out; the Python `predict` API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import run_helpers
from PIL import Image
from run_helpers import gradient_image

from onedet.cli import main
from onedet.errors import OnedetError
from onedet.runtime import Detections

CLASSES = ["circle", "square", "triangle"]
CATEGORY_IDS = [1, 2, 4]
KEYS = {"file", "bbox", "score", "category_id", "category"}


def make_run(folder: Path) -> Path:
    return run_helpers.make_run(folder, CLASSES, CATEGORY_IDS, cls_std=0.05, cls_bias=-1.0)


def _image(h: int, w: int, seed: int) -> np.ndarray:
    return gradient_image(h, w, seed, num_rects=3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from onedet.export import export

    root = tmp_path_factory.mktemp("predict")
    run = make_run(root / "run")
    [onnx_file] = export(run, root / "model.onnx")
    (root / "images").mkdir()
    (root / "more").mkdir()
    Image.fromarray(_image(120, 160, 0)).save(root / "images" / "a.png")
    Image.fromarray(_image(300, 90, 1)).save(root / "images" / "b.jpg")
    Image.fromarray(_image(50, 50, 2)[..., 0]).save(root / "more" / "a.png")  # same name, grayscale
    (root / "images" / "notes.txt").write_text("not an image")
    return {"root": root, "run": run, "onnx": onnx_file}


def _predict_cli(model: Path, root: Path, out: Path, capsys: pytest.CaptureFixture) -> list[dict]:
    sources = [str(root / "images"), str(root / "more" / "*.png")]
    code = main(["predict", "--model", str(model), *sources, "--out", str(out), "--threshold", "0.2", "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "detections.json").read_text())
    return printed


def test_predict_cli_onnx_and_run_folder_agree(setup: dict, capsys: pytest.CaptureFixture) -> None:
    root = setup["root"]
    by_model = {}
    for name in ("onnx", "run"):
        out = root / f"out_{name}"
        rows = _predict_cli(setup[name], root, out, capsys)
        assert rows, "no detections at threshold 0.2: the test model should produce some"
        files = {r["file"] for r in rows}
        assert files <= {str(root / "images/a.png"), str(root / "images/b.jpg"), str(root / "more/a.png")}
        assert len(files) == 3
        for r in rows:
            assert set(r) == KEYS
            assert CLASSES[CATEGORY_IDS.index(r["category_id"])] == r["category"]
            assert r["score"] >= 0.2
            x, y, w, h = r["bbox"]
            size = Image.open(r["file"]).size
            assert x >= 0 and y >= 0 and w >= 0 and h >= 0 and x + w <= size[0] + 0.01 and y + h <= size[1] + 0.01
        # One annotated image per source, same size as the source; the two a.png do not overwrite each other.
        written = sorted(p.name for p in out.glob("*.png"))
        assert written == ["a.png", "a_1.png", "b.png"]
        assert Image.open(out / "b.png").size == (90, 300)
        assert Image.open(out / "b.png").format == "PNG"
        by_model[name] = rows
    # PyTorch and onnxruntime give the same detections (scores well apart from the threshold).
    for file in {r["file"] for r in by_model["onnx"]}:
        a = sorted((r for r in by_model["onnx"] if r["file"] == file), key=lambda r: -r["score"])
        b = sorted((r for r in by_model["run"] if r["file"] == file), key=lambda r: -r["score"])
        assert abs(len(a) - len(b)) <= 1  # a score within 1e-4 of the threshold may fall on either side
        assert a[0]["score"] == pytest.approx(b[0]["score"], abs=1e-4)
        assert a[0]["category_id"] == b[0]["category_id"]
        assert a[0]["bbox"] == pytest.approx(b[0]["bbox"], abs=1.0)


def test_predict_cli_errors(setup: dict, capsys: pytest.CaptureFixture) -> None:
    root = setup["root"]
    cases = [
        ([str(root / "missing.jpg")], "no such image"),
        ([str(root / "*.bmp")], "matches no image"),
        ([str(root / "run")], "holds no images"),
    ]
    for sources, message in cases:
        code = main(["predict", "--model", str(setup["onnx"]), *sources, "--out", str(root / "err")])
        assert code == 2
        assert message in capsys.readouterr().err
    code = main(["predict", "--model", str(root / "nothing"), str(root / "images"), "--out", str(root / "err")])
    assert code == 2 and "no such model" in capsys.readouterr().err


def test_unreadable_images_are_skipped_and_reported(setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from onedet.predict import predict_files

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(folder / "good.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    rows = predict_files(setup["onnx"], [folder], tmp_path / "out", threshold=0.0)
    assert {r["file"] for r in rows} == {str(folder / "good.png")}
    assert "broken.jpg" in capsys.readouterr().err
    with pytest.raises(OnedetError, match="none of the 1 images"):
        predict_files(setup["onnx"], [folder / "broken.jpg"], tmp_path / "out2")


def test_predict_python_api(setup: dict) -> None:
    from onedet.predict import predict  # `onedet.predict` is the module once imported (see report)

    image = np.asarray(Image.open(setup["root"] / "images" / "a.png").convert("RGB"))
    one = predict(setup["onnx"], image, threshold=0.0)
    assert isinstance(one, Detections) and len(one) > 0
    many = predict(setup["run"], [image, setup["root"] / "images" / "b.jpg"], threshold=0.0)
    assert isinstance(many, list) and len(many) == 2
    np.testing.assert_allclose(np.sort(many[0].scores), np.sort(one.scores), atol=1e-4)
    assert many[1].boxes_xyxy[:, 2].max() <= 90 and many[1].boxes_xyxy[:, 3].max() <= 300


def _recording(run: Path, folder: Path, thresholds: list) -> Path:
    """A copy of `run` whose best checkpoint records `thresholds` as training does (`update_model_json`)."""
    import shutil

    from onedet.checkpoint import update_model_json
    from onedet.runtime import SCORE_THRESHOLDS_KEY

    copy = Path(shutil.copytree(run, folder))
    update_model_json(copy / "weights" / "best", {SCORE_THRESHOLDS_KEY: thresholds})
    return copy


def test_by_default_each_class_has_its_own_threshold(
    setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A run that records per-class thresholds (training writes each class's best-F1 score on val) predicts with
    them when no threshold is given, in PyTorch and from its exported file; a class without one takes 0.3."""
    from onedet.export import export
    from onedet.predict import TorchDetector
    from onedet.runtime import DEFAULT_THRESHOLD, OnnxDetector

    image = np.asarray(Image.open(setup["root"] / "images" / "a.png").convert("RGB"))
    everything = TorchDetector(setup["run"])(image, threshold=0.0)[0]
    # thresholds that keep about half of the first two classes' detections; the third class records none
    thresholds = [float(np.median(everything.scores[everything.category_ids == cid])) for cid in CATEGORY_IDS[:2]]
    run = _recording(setup["run"], tmp_path / "run", [*thresholds, None])
    limits = dict(zip(CATEGORY_IDS, [*thresholds, DEFAULT_THRESHOLD]))
    [onnx_file] = export(run, tmp_path / "own.onnx")
    for detector in (TorchDetector(run), OnnxDetector(onnx_file)):
        assert detector.score_thresholds == [*thresholds, None]
        every = detector(image, threshold=0.0)[0]
        keep = every.scores >= np.array([limits[int(c)] for c in every.category_ids], dtype=np.float32)
        got = detector(image)[0]
        assert 0 < len(got) < len(every)
        np.testing.assert_array_equal(got.scores, every.scores[keep])
        np.testing.assert_array_equal(got.category_ids, every.category_ids[keep])
        # a threshold given is one for every class
        np.testing.assert_array_equal(detector(image, threshold=0.2)[0].scores, every.scores[every.scores >= 0.2])
    # the CLI says which thresholds it uses
    assert main(["predict", "--model", str(onnx_file), str(setup["root"] / "images" / "a.png"), "--out",
                 str(tmp_path / "out"), "--json"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert f"circle {thresholds[0]:.3g}" in captured.err and "triangle 0.3 (none of its own)" in captured.err
    assert [r["score"] for r in json.loads(captured.out)] == [round(float(s), 5) for s in got.scores]


def test_a_model_without_thresholds_of_its_own_uses_0_3(setup: dict, capsys: pytest.CaptureFixture) -> None:
    from onedet.predict import predict

    image = np.asarray(Image.open(setup["root"] / "images" / "a.png").convert("RGB"))
    for model in (setup["onnx"], setup["run"]):  # written before runs recorded thresholds, as old files are
        np.testing.assert_array_equal(predict(model, image).scores, predict(model, image, threshold=0.3).scores)
    assert main(["predict", "--model", str(setup["onnx"]), str(setup["root"] / "images" / "a.png"), "--out",
                 str(setup["root"] / "out_default")]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "score threshold 0.3 for every class (the model records none of its own)" in captured.err
    # the summary counts each class's detections, most first
    rows = json.loads((setup["root"] / "out_default" / "detections.json").read_text())
    counts = sorted(((sum(r["category"] == c for r in rows), c) for c in {r["category"] for r in rows}), reverse=True)
    assert rows and f"{len(rows)} detections written to" in captured.out
    assert all(f"{n} {name}" in captured.out for n, name in counts)


@pytest.mark.parametrize("bad", [[0.5, 1.5, None], [0.5, 0.5], "0.5", [0.5, True, None]])
def test_bad_recorded_thresholds_are_a_clear_error(setup: dict, tmp_path: Path, bad: object) -> None:
    from onedet.predict import TorchDetector

    run = _recording(setup["run"], tmp_path / "run", bad)  # type: ignore[arg-type]
    with pytest.raises(OnedetError, match=r"model\.json: 'score_thresholds' must be a list of 3 scores in 0\.\.1"):
        TorchDetector(run)


def test_predict_writes_a_yolo_dataset_that_reads_back(
    setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`--dataset`: the images and the detections predict keeps as a YOLO dataset that onedet's own YOLO reader
    (what `onedet prepare` runs) reads back with the same boxes and classes: two files named `a.png` and one
    `a.jpg` keep apart, and a JPEG turned upright by its EXIF orientation is saved upright as PNG."""
    from scipy.optimize import linear_sum_assignment

    from onedet.data.formats.yolo import read_yolo
    from onedet.data.images import load_image
    from onedet.predict import load_predictor, predict_files

    root = setup["root"]
    turned = tmp_path / "a.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter: stored 80 x 120, displayed 120 x 80
    Image.fromarray(_image(80, 120, 4)).save(turned, quality=95, exif=exif.tobytes())
    sources = [root / "images" / "a.png", root / "images" / "b.jpg", root / "more" / "a.png", turned]
    out = tmp_path / "out"
    rows = predict_files(setup["onnx"], sources, out, threshold=0.2, dataset=True)
    assert rows, "the test model finds something at 0.2"
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temporary folder left"
    (split,) = read_yolo(out / "dataset")
    detector = load_predictor(setup["onnx"])
    assert split.name == "train" and split.classes == [detector.names_by_id[c] for c in detector.category_ids]
    names = ["a.png", "b.jpg", "a_1.png", "a_2.png"]  # in the order of `sources`; the turned JPEG as PNG
    by_name = {p.path.name: p for p in split.images}
    assert sorted(by_name) == sorted(names)
    outside = 0
    for source, name in zip(sources, names):
        image, _ = load_image(source)
        (expected,) = detector([image], threshold=0.2)
        got = by_name[name]
        h, w = image.shape[:2]
        assert load_image(got.path)[0].shape == image.shape, "the pixels the boxes were found on"
        clipped = np.clip(expected.boxes_xyxy, 0, [w, h, w, h])
        inside = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        outside += int((~inside).sum())
        clipped, expected_ids = clipped[inside], expected.category_ids[inside]
        assert len(got.boxes_xyxy) == len(clipped)
        # pair them up (YOLO's 6 decimals reorder near ties), then the same boxes and classes
        want = np.array([detector.category_ids.index(int(c)) for c in expected_ids])
        cost = np.abs(clipped[:, None] - got.boxes_xyxy[None]).sum(-1) + 1e4 * (want[:, None] != got.labels[None])
        mine, theirs = linear_sum_assignment(cost)
        np.testing.assert_allclose(got.boxes_xyxy[theirs], clipped[mine], atol=1e-3 * max(w, h))
        assert got.labels[theirs].tolist() == want[mine].tolist()
    assert not any(split.report.items.values()), "nothing for the reader to fix"
    assert f"{outside} boxes wholly outside their image left out" in capsys.readouterr().err


def test_a_failed_run_leaves_no_dataset(setup: dict, tmp_path: Path) -> None:
    from onedet.predict import load_predictor, predict_files

    detector = load_predictor(setup["onnx"])
    run_batch, calls = detector.run_batch, []

    def failing_on_the_second_image(batch: np.ndarray) -> tuple:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the model broke")
        return run_batch(batch)

    detector.run_batch = failing_on_the_second_image  # type: ignore[method-assign]
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="the model broke"):
        predict_files(detector, [setup["root"] / "images"], out, threshold=0.2, dataset=True)
    assert not (out / "dataset").exists() and not [p for p in out.iterdir() if p.name.startswith(".")]
