"""`onedet.runtime`: runs an exported file without torch, explains bad inputs and foreign files, returns
structured detections (and supervision's when installed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onedet.errors import OnedetError
from onedet.runtime import Detections, OnnxDetector

CLASSES = ["red", "green"]
CATEGORY_IDS = [5, 2]


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from onedet.config import ModelConfig
    from onedet.export import export
    from onedet.model.detector import build_detector

    torch.manual_seed(0)
    # A cut-down tiny model (2 blocks, 128 px): this module tests the runtime, not the model.
    cfg = ModelConfig.from_preset("tiny", num_classes=2, depth=2, global_blocks=(1,), taps=(0, 1), image_size=128)
    model = build_detector(cfg)
    with torch.no_grad():  # spread the scores (a fresh head predicts ~0.01 everywhere)
        model.head.cls_pred.weight.normal_(0.0, 0.05)
        model.head.cls_pred.bias.fill_(-1.0)
    [path] = export(
        model, tmp_path_factory.mktemp("runtime") / "model.onnx", classes=CLASSES, category_ids=CATEGORY_IDS
    )
    return path


@pytest.fixture(scope="module")
def detector(onnx_file: Path) -> OnnxDetector:
    return OnnxDetector(onnx_file, threads=1)


def test_runtime_never_imports_torch(onnx_file: Path, tmp_path: Path) -> None:
    """The runtime, `onedet predict` on an .onnx file (with `--dataset`), `onedet info` on it and tracking (where
    trackers is installed) work in a process where torch is never imported."""
    from PIL import Image

    Image.fromarray(np.full((40, 90, 3), 200, np.uint8)).save(tmp_path / "a.png")
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from onedet.runtime import OnnxDetector
        from onedet.cli import main

        result = OnnxDetector({str(onnx_file)!r})(np.zeros((50, 70, 3), np.uint8), threshold=0.0)
        assert len(result) == 1 and len(result[0]) > 0
        try:
            import trackers
        except ImportError:
            pass
        else:
            from onedet.track import Tracker

            Tracker(0.0).update(result[0])
        assert main(["predict", "--model", {str(onnx_file)!r}, {str(tmp_path / "a.png")!r}, "--out",
                     {str(tmp_path / "out")!r}, "--dataset"]) == 0
        assert main(["info", {str(onnx_file)!r}]) == 0
        loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        assert not loaded, loaded
        print("torch-free")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "torch-free" in proc.stdout
    assert (tmp_path / "out" / "detections.json").is_file()
    assert (tmp_path / "out" / "dataset" / "data.yaml").is_file(), "--dataset too, without torch"


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((20, 30, 3), np.float32), "dtype uint8, got float32"),
        (np.zeros((20, 30), np.uint8), "3 dimensions"),
        (np.zeros((20, 30, 4), np.uint8), "3 channels"),
        (np.zeros((3, 20, 30), np.uint8), "channels first"),
        (np.zeros((0, 30, 3), np.uint8), "empty image"),
        (np.zeros((20, 0, 3), np.uint8), "empty image"),
        ([[1, 2, 3]], "numpy uint8 array"),
        ([], "no images"),
    ],
    ids=["float", "rank2", "rgba", "chw", "zero-height", "zero-width", "list", "empty-list"],
)
def test_bad_inputs_raise_clear_errors(detector: OnnxDetector, image: object, message: str) -> None:
    with pytest.raises(OnedetError, match=message):
        detector(image)


def test_files_that_are_not_onedet_models(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "other.onnx")
    with pytest.raises(OnedetError, match="not a onedet model"):
        OnnxDetector(tmp_path / "other.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"this is not protobuf")
    with pytest.raises(OnedetError, match="cannot load"):
        OnnxDetector(tmp_path / "junk.onnx")
    with pytest.raises(OnedetError, match="not found"):
        OnnxDetector(tmp_path / "missing.onnx")


def test_images_of_any_size_batches_and_pillow(detector: OnnxDetector) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, size, dtype=np.uint8) for size in [(60, 80, 3), (1, 300, 3), (60, 80, 3), (500, 7, 3)]
    ]
    together = detector(images, threshold=0.0)
    alone = [detector(im, threshold=0.0)[0] for im in images]
    assert len(together) == len(images)
    for a, b in zip(together, alone):  # grouping equal sizes into one batch changes nothing, order is kept
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
        np.testing.assert_allclose(a.boxes_xyxy, b.boxes_xyxy, atol=1e-3)
    batch = detector(np.stack([images[0], images[2]]), threshold=0.0)  # a [B, H, W, 3] array
    np.testing.assert_allclose(batch[1].scores, alone[2].scores, atol=1e-6)
    from_pil = detector(Image.fromarray(images[0]).convert("L"), threshold=0.0)[0]  # converted to RGB
    assert len(from_pil) == len(alone[0])
    for det, im in zip(together, images):  # boxes are in the original image's pixels
        h, w = im.shape[:2]
        assert (det.boxes_xyxy >= 0).all() and (det.boxes_xyxy[:, [0, 2]] <= w).all()
        assert (det.boxes_xyxy[:, [1, 3]] <= h).all()


def test_spinning_off_reaches_the_session_and_changes_no_output(onnx_file: Path, detector: OnnxDetector) -> None:
    from onedet.runtime import SPINNING_KEY

    quiet = OnnxDetector(onnx_file, threads=1, spinning=False)
    assert quiet.session.get_session_options().get_session_config_entry(SPINNING_KEY) == "0"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # unset: onnxruntime's default, spin
        detector.session.get_session_options().get_session_config_entry(SPINNING_KEY)
    image = np.random.default_rng(2).integers(0, 256, (70, 50, 3), dtype=np.uint8)
    a, b = quiet(image, threshold=0.0)[0], detector(image, threshold=0.0)[0]
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.boxes_xyxy, b.boxes_xyxy)


def test_detections_fields_threshold_and_coco_rows(detector: OnnxDetector) -> None:
    assert detector.classes == CLASSES and detector.category_ids == CATEGORY_IDS and detector.image_size == 128
    image = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    everything = detector(image, threshold=0.0)[0]
    assert isinstance(everything, Detections)
    assert everything.boxes_xyxy.dtype == np.float32 and everything.boxes_xyxy.shape == (len(everything), 4)
    assert everything.scores.dtype == np.float32 and everything.category_ids.dtype == np.int64
    assert np.all(np.diff(everything.scores) <= 0)  # best first
    assert set(everything.category_ids.tolist()) <= set(CATEGORY_IDS)
    names = dict(zip(CATEGORY_IDS, CLASSES))
    assert everything.class_names == [names[int(c)] for c in everything.category_ids]
    threshold = float(np.median(everything.scores))
    kept = detector(image, threshold=threshold)[0]
    assert 0 < len(kept) < len(everything) and (kept.scores >= threshold).all()
    assert len(kept) == int((everything.scores >= threshold).sum())
    rows = kept.to_coco("img.jpg")
    assert set(rows[0]) == {"file", "bbox", "score", "category_id", "category"}
    x0, y0, x1, y1 = kept.boxes_xyxy[0].tolist()
    assert rows[0]["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=0.01)
    assert rows[0]["category"] == names[rows[0]["category_id"]]


def test_to_supervision(detector: OnnxDetector) -> None:
    sv = pytest.importorskip("supervision")
    det = detector(np.full((64, 64, 3), 90, np.uint8), threshold=0.0)[0]
    converted = det.to_supervision()
    assert isinstance(converted, sv.Detections) and len(converted) == len(det)
    np.testing.assert_array_equal(converted.xyxy, det.boxes_xyxy)
    np.testing.assert_array_equal(converted.class_id, det.category_ids)
    assert list(converted.data["class_name"]) == det.class_names
