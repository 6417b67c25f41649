"""ONNX export: a valid graph with metadata and no GridSample, onnxruntime == PyTorch predict on images of any
size (synthetic extremes and real photos), and int8 (dynamic, static calibrated on a store) / fp16 files that run.

One tiny run folder is exported once for the module through the real CLI (`onedet export ... --int8
--calibration STORE/val`); the PyTorch reference is the same `EndToEnd` module run eagerly by `TorchDetector`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import run_helpers
import torch
from run_helpers import gradient_image

from onedet import __version__
from onedet.cli import main
from onedet.config import ModelConfig
from onedet.data.images import load_image
from onedet.errors import OnedetError
from onedet.model.detector import Detector, build_detector
from onedet.predict import TorchDetector
from onedet.runtime import OnnxDetector

CLASSES = ["cat", "dog", "fish"]
CATEGORY_IDS = [3, 7, 11]  # not 0..C-1, so a missing id lookup in the graph would show


def make_run(folder: Path, seed: int = 0) -> Path:
    return run_helpers.make_run(folder, CLASSES, CATEGORY_IDS, seed=seed)


def assert_same_detections(ref: tuple, got: tuple, score_tol: float = 1e-4, box_tol: float = 1.0) -> None:
    """Same detections (labels equal, boxes within `box_tol` px, scores within `score_tol`) for one image.

    Near-equal scores may come out of top-k in either order, and at the K-th place a detection may be in one
    list and not the other; so detections are matched one-to-one (not by position), and only those clearly
    above the lowest kept score must match. The sorted score lists must agree everywhere.
    """
    rb, rs, rl = ref
    gb, gs, gl = got
    assert rs.shape == gs.shape and rb.shape == gb.shape
    np.testing.assert_allclose(np.sort(gs), np.sort(rs), atol=score_tol, rtol=0)
    boundary = max(rs.min(), gs.min()) + score_tol
    checked = 0
    for (b1, s1, l1), (b2, s2, l2) in (((rb, rs, rl), (gb, gs, gl)), ((gb, gs, gl), (rb, rs, rl))):
        free = np.ones(len(s2), dtype=bool)
        for i in np.flatnonzero(s1 > boundary):
            close = free & (l2 == l1[i]) & (np.abs(s2 - s1[i]) <= score_tol) & (np.abs(b2 - b1[i]).max(1) <= box_tol)
            assert close.any(), f"no match for label {l1[i]} score {s1[i]:.6f} box {b1[i]}"
            free[np.flatnonzero(close)[0]] = False
            checked += 1
    assert checked >= len(rs), "too few detections above the top-k boundary for a meaningful comparison"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from onedet.data.prepare import prepare
    from onedet.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("export")
    run = make_run(root / "run")
    make_synthetic(root / "synthetic", num_images=10, image_size=128, seed=1)
    prepare(root / "synthetic", root / "store", image_size=128, workers=1, progress=False)
    out = root / "model.onnx"
    assert (
        main(["export", "--weights", str(run), "--out", str(out), "--int8", "--calibration", str(root / "store/val")])
        == 0
    )
    return {"root": root, "run": run, "fp32": out, "int8_static": root / "model.int8-static.onnx"}


def test_graph_is_valid_has_metadata_and_no_grid_sample(exported: dict) -> None:
    for path in (exported["fp32"], exported["int8_static"]):
        onnx.checker.check_model(str(path), full_check=True)
        proto = onnx.load(str(path))
        ops = {n.op_type for n in proto.graph.node}
        # No GridSample, and no Resize (TensorRT 10 lacks its antialias mode): the letterbox is MatMuls.
        assert not ops & {"GridSample", "Resize"}
        assert {"MatMul", "TopK", "Pad"} <= ops  # letterbox and decoding are in the graph
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["onedet_model"] == "1"
        assert meta["onedet_version"] == __version__
        assert json.loads(meta["classes"]) == CLASSES
        assert json.loads(meta["category_ids"]) == CATEGORY_IDS
        assert meta["image_size"] == "128"
        [inp] = proto.graph.input
        assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
        dims = inp.type.tensor_type.shape.dim
        assert [d.dim_param != "" for d in dims] == [True, True, True, False] and dims[3].dim_value == 3
        types = {o.name: o.type.tensor_type.elem_type for o in proto.graph.output}
        assert types == {
            "boxes": onnx.TensorProto.FLOAT,
            "scores": onnx.TensorProto.FLOAT,
            "labels": onnx.TensorProto.INT64,
        }
    assert OnnxDetector(exported["int8_static"]).precision == "int8-static"


@pytest.fixture(scope="module")
def detectors(exported: dict) -> tuple[TorchDetector, OnnxDetector]:
    return TorchDetector(exported["run"], device="cpu"), OnnxDetector(exported["fp32"])


# (h, w): extremes of size and aspect ratio, odd sizes, upscaling and downscaling, the model's own size.
SIZES = [(1, 2000), (2000, 1), (3000, 4000), (37, 91), (480, 640), (256, 256)]


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_onnxruntime_matches_pytorch(detectors: tuple, size: tuple[int, int]) -> None:
    torch_det, onnx_det = detectors
    n = 1 if size[0] * size[1] > 1e6 else 2  # a batch of 2 checks the batch axis (not for 12 Mpx: time)
    batch = np.stack([gradient_image(*size, seed=s) for s in range(1, n + 1)])
    ref = torch_det.run_batch(batch)
    got = onnx_det.run_batch(batch)
    h, w = size
    for b in range(n):
        assert set(got[2][b].tolist()) <= set(CATEGORY_IDS)
        assert (got[0][b][:, [0, 2]] <= w).all() and (got[0][b][:, [1, 3]] <= h).all() and (got[0][b] >= 0).all()
        assert_same_detections(tuple(x[b] for x in ref), tuple(x[b] for x in got))


def test_onnxruntime_matches_pytorch_on_noise(detectors: tuple) -> None:
    """Pure noise, downscaled: the worst case for resize kernels that differ in the last float bits."""
    torch_det, onnx_det = detectors
    image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    ref, got = torch_det.run_batch(image[None]), onnx_det.run_batch(image[None])
    assert_same_detections(tuple(x[0] for x in ref), tuple(x[0] for x in got))


def test_in_graph_letterbox_is_the_store_letterbox() -> None:
    """The graph's float letterbox rounds to exactly the store's uint8 pixels (same size, kernel, placement, pad)."""
    from onedet.data.letterbox import letterbox_float, letterbox_torch

    rng = np.random.default_rng(0)
    for h, w in [(1, 2000), (37, 91), (300, 400), (256, 256), (100, 60)]:
        images = torch.from_numpy(rng.integers(0, 256, (2, 3, h, w), dtype=np.uint8))
        assert torch.equal(letterbox_float(images, 256).round().to(torch.uint8), letterbox_torch(images, 256))


@pytest.mark.parametrize(
    "size", [(1, 2000), (2000, 1), (37, 91), (300, 400), (480, 640), (1000, 700), (50, 40), (1500, 2000)]
)
def test_matmul_resizes_are_torchs_antialiased_bilinear(size: tuple[int, int]) -> None:
    """The export's plain-MatMul resizes (banded, and the dense reference) equal `F.interpolate(antialias=True)`,
    shrinking and enlarging, to one pixel and to sizes that leave a part-filled last band, and so does the store's
    `resize_antialias` (which works around torch's kernel on 1-pixel-wide input)."""
    from onedet.data.letterbox import BAND_ROWS, resize_antialias, resize_banded, resize_separable

    h, w = size
    images = torch.from_numpy(np.random.default_rng(h * w).integers(0, 256, (2, 3, h, w), dtype=np.uint8)).float()
    shrunk = (max(h * 256 // max(h, w), 1), max(w * 256 // max(h, w), 1))
    part_band = (min(h, 3 * BAND_ROWS + 5), min(w, 2 * BAND_ROWS + 1))
    for new_h, new_w in [shrunk, (2 * h, 3 * w) if h * w < 10**5 else (7, 9), (h, w), (1, 1), part_band]:
        # The reference: torch's kernel on channels-last input (the contiguous NCHW kernel is wrong at width 1).
        expected = torch.nn.functional.interpolate(
            images.contiguous(memory_format=torch.channels_last),
            size=(new_h, new_w),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        torch.testing.assert_close(resize_separable(images, new_h, new_w), expected, atol=1e-3, rtol=0)
        torch.testing.assert_close(resize_banded(images, new_h, new_w), expected, atol=1e-3, rtol=0)
        torch.testing.assert_close(resize_antialias(images, new_h, new_w), expected, atol=1e-3, rtol=0)


def test_quantizers_keep_the_letterbox_in_float(exported: dict) -> None:
    """int8 files: the MatMuls that compute the model's input read float pixels, not dequantized int8."""
    from onedet.quantize import preprocessing_nodes, quantize_int8_dynamic

    fp32 = exported["fp32"]
    meta = OnnxDetector(fp32).metadata
    dynamic = quantize_int8_dynamic(fp32, exported["root"] / "keep-float.int8-dynamic.onnx", meta)
    for path in (dynamic, exported["int8_static"]):
        proto = onnx.load(str(path))
        producer = {out: n for n in proto.graph.node for out in n.output}
        pre = set(preprocessing_nodes(proto))
        matmuls = [n for n in proto.graph.node if n.name in pre and n.op_type.startswith("MatMul")]
        assert len(matmuls) == 2 and all(n.op_type == "MatMul" for n in matmuls), path.name
        for node in matmuls:
            inputs = [producer[i].op_type for i in node.input if i in producer]
            assert "DequantizeLinear" not in inputs and "DynamicQuantizeLinear" not in inputs, path.name
        # ... while the model's own MatMuls are quantized.
        assert {n.op_type for n in proto.graph.node} & {"MatMulInteger", "DynamicQuantizeMatMul", "DequantizeLinear"}


def test_onnxruntime_matches_pytorch_on_real_images(detectors: tuple, shared_data: Path) -> None:
    torch_det, onnx_det = detectors
    candidates = [
        *sorted((shared_data / "bccd/BCCD/JPEGImages").glob("*.jpg"))[:1],
        *sorted((shared_data / "aquarium/aquarium_pretrain/valid/images").glob("*.jpg"))[:1],
        *sorted((shared_data / "coco128_coco/train2017").glob("*.jpg"))[:1],
    ]
    if not candidates:
        pytest.skip("no real images found")
    for path in candidates:
        image, _ = load_image(path)
        ref, got = torch_det.run_batch(image[None]), onnx_det.run_batch(image[None])
        assert_same_detections(tuple(x[0] for x in ref), tuple(x[0] for x in got))


def test_parity_check_can_fail() -> None:
    """The comparison used above rejects a box shifted by 2 px, a wrong label and a changed score."""
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 500, (20, 4)).astype(np.float32)
    scores = np.sort(rng.uniform(0.1, 0.9, 20)).astype(np.float32)[::-1].copy()
    labels = rng.integers(0, 3, 20)
    ref = (boxes, scores, labels)
    assert_same_detections(ref, (boxes[::-1] + 0.5, scores[::-1], labels[::-1]))  # order does not matter
    shifted = boxes.copy()
    shifted[3, 2] += 2
    relabelled = labels.copy()
    relabelled[5] = (labels[5] + 1) % 3
    rescored = scores.copy()
    rescored[1] += 5e-4
    for bad in ((shifted, scores, labels), (boxes, scores, relabelled), (boxes, rescored, labels)):
        with pytest.raises(AssertionError):
            assert_same_detections(ref, bad)


@pytest.mark.slow
def test_int8_dynamic_and_fp16_run_and_detect(exported: dict) -> None:
    from onedet.checkpoint import load_run
    from onedet.end_to_end import build_end_to_end
    from onedet.export import export_onnx
    from onedet.quantize import quantize_int8_dynamic
    from onedet.runtime import PRECISION_KEY

    root, fp32 = exported["root"], exported["fp32"]
    meta = OnnxDetector(fp32).metadata
    dynamic = quantize_int8_dynamic(fp32, root / "model.int8-dynamic.onnx", meta)
    module, _, _ = build_end_to_end(load_run(exported["run"]), half=True)
    half = export_onnx(module, root / "model.fp16.onnx", {**meta, PRECISION_KEY: "fp16"})

    image = gradient_image(300, 500, seed=3)
    ref = OnnxDetector(fp32).run_batch(image[None])
    assert fp32.stat().st_size > 3 * dynamic.stat().st_size / 2  # int8 weights: a smaller file
    assert fp32.stat().st_size > 3 * half.stat().st_size / 2
    for path, precision, score_tol in (
        (dynamic, "int8-dynamic", 0.1),
        (exported["int8_static"], "int8-static", 0.1),
        (half, "fp16", 0.01),
    ):
        detector = OnnxDetector(path)
        assert detector.precision == precision
        onnx.checker.check_model(str(path))
        boxes, scores, labels = detector.run_batch(image[None])
        assert boxes.dtype == np.float32 and scores.dtype == np.float32 and labels.dtype == np.int64
        assert boxes.shape == ref[0].shape and np.isfinite(boxes).all()
        assert set(labels[0].tolist()) <= set(CATEGORY_IDS)
        # Quantised models approximate the fp32 one: the best score is close.
        assert abs(float(scores[0, 0]) - float(ref[1][0, 0])) < score_tol
        assert len(detector(image, threshold=0.0)[0]) == scores.shape[1]
    fp16_types = {t.data_type for t in onnx.load(str(half)).graph.initializer}
    assert onnx.TensorProto.FLOAT16 in fp16_types


def test_lora_is_merged_before_export() -> None:
    """A Detector with LoRA adapters is merged (a copy; the caller's model keeps its adapters) and predicts alike."""
    import copy

    from onedet.end_to_end import build_end_to_end
    from onedet.model.lora import apply_lora, has_lora

    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("tiny", num_classes=2, depth=2, global_blocks=(1,), taps=(0, 1), image_size=128)
    model = build_detector(cfg).eval()
    with torch.no_grad():
        model.head.cls_pred.weight.normal_(0.0, 0.03)
        model.head.cls_pred.bias.fill_(-2.0)
    plain_model = copy.deepcopy(model)
    apply_lora(model, rank=4)
    with torch.no_grad():  # peft starts lora_B at zero (no change); make the adapters do something
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    images = torch.from_numpy(gradient_image(100, 150)[None])
    module, _, _ = build_end_to_end(model, classes=["a", "b"])
    assert not has_lora(module.model) and has_lora(model)
    with torch.no_grad():
        merged = module(images)
        module.model = model  # the same pipeline around the un-merged model
        unmerged = module(images)
        module.model = plain_model  # and without the adapters: a different answer
        plain = module(images)
    assert_same_detections(tuple(x[0].numpy() for x in unmerged), tuple(x[0].numpy() for x in merged))
    assert np.abs(plain[1].numpy() - merged[1].numpy()).max() > 1e-3


def test_export_errors(exported: dict, tmp_path: Path) -> None:
    from onedet.export import export

    with pytest.raises(OnedetError, match=r"\.onnx"):
        export(exported["run"], tmp_path / "model.bin")
    with pytest.raises(OnedetError, match="--int8"):
        export(exported["run"], tmp_path / "model.onnx", calibration=tmp_path)
    with pytest.raises(OnedetError, match="no such run"):
        export(tmp_path / "missing", tmp_path / "model.onnx")


@pytest.mark.slow
def test_every_conv_weight_is_an_initializer(tmp_path: Path) -> None:
    """The neck computes its fuse conv's weight from parameters (the tap norms folded in); export folds it into an
    initializer even when it is larger than the exporter's own folding limit (262144 elements), so that the int8
    quantizers, which quantize only convs with initializer weights, see every conv."""
    from onedet.export import export

    torch.manual_seed(0)
    # 4 taps x 192 channels into 384: a 294,912-element fuse weight, over the exporter's limit as base's is.
    cfg = ModelConfig.from_preset("tiny", num_classes=2, image_size=128, taps=(2, 3, 4, 5), neck_channels=384)
    [path] = export(Detector(cfg).eval(), tmp_path / "model.onnx", classes=["a", "b"])
    proto = onnx.load(str(path))
    initializers = {i.name for i in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert convs and all(n.input[1] in initializers for n in convs), [
        n.name for n in convs if n.input[1] not in initializers
    ]


def test_eval_of_the_onnx_file_matches_eval_of_its_run(exported: dict, tmp_path: Path, capsys) -> None:
    """`onedet eval --weights model.onnx` runs the file through onnxruntime on the store's images: the same
    detections as the run's own evaluation (image by image), so the same metrics; and clear errors for another
    dataset's file and for --record, which has no checkpoint to write to."""
    from onedet.data.prepare import prepare
    from onedet.data.store import Store
    from onedet.data.synthetic import make_synthetic
    from onedet.evaluate import detect_split, detect_split_onnx, evaluate_run

    # 160 px photos in a 128 px store: boxes come back to the original pixels through the store's scale
    make_synthetic(tmp_path / "synthetic", num_images=10, image_size=160, seed=3)
    prepare(tmp_path / "synthetic", tmp_path / "store", image_size=128, workers=1, progress=False)
    val = tmp_path / "store" / "val"
    store = Store(val)
    assert store.read_batch([0])["orig_size"][0].tolist() == [160, 160]
    run = run_helpers.make_run(tmp_path / "run", list(store.classes), list(store.category_ids), seed=2)
    onnx_file = tmp_path / "model.onnx"
    assert main(["export", "--weights", str(run), "--out", str(onnx_file)]) == 0
    capsys.readouterr()

    from onedet.checkpoint import load_run

    ref = detect_split(load_run(run).model, store, batch_size=4)
    got = detect_split_onnx(OnnxDetector(onnx_file), store, batch_size=3)  # another batching: same detections
    assert got.image_ids == ref.image_ids and got.orig_sizes == ref.orig_sizes
    for r, g in zip(ref.detections, got.detections):
        assert_same_detections(
            (r["boxes_xyxy"], r["scores"], r["labels"]), (g["boxes_xyxy"], g["scores"], g["labels"]), box_tol=1.0
        )
    expected = evaluate_run(run, val)
    assert main(["eval", "--weights", str(onnx_file), "--data", str(val), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    for key in ("AP", "AP50", "AP75"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-3), key
    assert metrics["confusion"]["matrix"] == expected["confusion"]["matrix"]

    # export --check: every file written, evaluated on the split as eval does it
    second = tmp_path / "checked.onnx"
    checked = ["export", "--weights", str(run), "--out", str(second), "--int8", "--check", str(val), "--no-progress"]
    assert main(checked) == 0
    out = capsys.readouterr().out
    for path in (second, second.with_suffix(".int8-dynamic.onnx")):
        m = evaluate_run(path, val)
        assert f"| {path.name} | {m['AP']:.4f} | {m['AP50']:.4f} |" in out
        row = next(line for line in out.splitlines() if line.startswith(f"| {path.name} |")).split("|")
        assert float(row[5]) == pytest.approx(path.stat().st_size / 1e6, abs=0.06)  # MB
        assert float(row[6]) > 0  # ms: the file was timed
    assert f"| {second.name} | {metrics['AP']:.4f} |" in out
    bad = ["export", "--weights", str(run), "--out", str(tmp_path / "x.onnx"), "--check", str(tmp_path / "nope")]
    assert main(bad) == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists(), "checked before exporting"

    assert main(["eval", "--weights", str(exported["fp32"]), "--data", str(val)]) == 2  # cat, dog, fish
    assert f"the store's classes {list(store.classes)} differ from {exported['fp32']}'s" in capsys.readouterr().err
    assert main(["eval", "--weights", str(onnx_file), "--data", str(val), "--record"]) == 2
    assert "--record writes a checkpoint's model.json" in capsys.readouterr().err


def test_export_check_warns_when_a_variant_loses_accuracy() -> None:
    from onedet.export import format_check

    timing = {"MB": 10.0, "ms": 50.0, "ms_vs_fp32": 1.0}
    rows = [
        {"file": Path("m.onnx"), "AP": 0.400, "AP50": 0.7, "vs_fp32": 1.0, **timing},
        {"file": Path("m.int8-dynamic.onnx"), "AP": 0.398, "AP50": 0.7, "vs_fp32": 0.995, "MB": 3.1, "ms": 40.4,
         "ms_vs_fp32": 0.808},
        {"file": Path("m.fp16.onnx"), "AP": 0.380, "AP50": 0.68, "vs_fp32": 0.95, **timing},
    ]  # fmt: skip
    text = format_check(rows, "store/val")
    assert "| m.int8-dynamic.onnx | 0.3980 | 0.7000 | 0.995 | 3.1 | 40 | 0.81 |" in text
    warnings = [line for line in text.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: m.fp16.onnx keeps 0.950 of the fp32 file's AP")
    zero = format_check([{**rows[0], "AP": 0.0, "vs_fp32": None}, {**rows[1], "vs_fp32": None}], "v")
    assert "| m.onnx | 0.0000 | 0.7000 | - |" in zero and "warning" not in zero


def test_info_describes_the_exported_file_and_its_run(exported: dict, capsys) -> None:
    """`onedet info` on an .onnx file and on the run it came from: the classes with their ids, the input size and
    precision from the file's metadata; the parameter count from the checkpoint's weights."""
    from onedet.checkpoint import load_run

    assert main(["info", str(exported["int8_static"]), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["precision"], d["image_size"]) == ("int8-static", 128)
    assert [(c["id"], c["name"]) for c in d["classes"]] == list(zip(CATEGORY_IDS, CLASSES))
    assert d["input"] == {"images": ["batch", "height", "width", "3"]}
    assert main(["info", str(exported["fp32"])]) == 0
    text = capsys.readouterr().out
    assert "ONNX model, fp32" in text and "letterboxed to 128 px" in text
    assert all(f"{cid}  {name}" in text for cid, name in zip(CATEGORY_IDS, CLASSES))

    assert main(["info", str(exported["run"]), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    model = load_run(exported["run"]).model
    assert d["model"]["parameters"] == sum(t.numel() for t in model.state_dict().values())
    assert (d["model"]["depth"], d["model"]["image_size"]) == (2, 128)
    assert [c["name"] for c in d["classes"]] == CLASSES
    assert d["trained"] is None and d["metrics"] is None  # a checkpoint written without a training run
    assert main(["info", str(exported["run"]), "--plots", "p"]) == 2
    assert "--plots draws a store's boxes; this is a model" in capsys.readouterr().err
