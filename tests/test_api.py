"""The top-level API: `import onedet` stays torch-free, the lazy names do not collide with the submodules, and the
`OneDet` facade trains, predicts, evaluates and exports through the same functions as the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from train_helpers import IMAGE_SIZE, make_store

import onedet
from onedet.errors import OnedetError


def _modules_imported(code: str, package: str) -> list[str]:
    """The modules of `package` (itself included) in `sys.modules` after running `code` in a fresh interpreter."""
    match = f"m == {package!r} or m.startswith({package + '.'!r})"
    code += f"\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if {match})))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_import_onedet_and_facade_are_torch_free() -> None:
    code = "import onedet\nonedet.OneDet, onedet.OnnxDetector, onedet.Detections, onedet.ModelConfig"
    assert _modules_imported(code, "torch") == []


def test_inference_modules_do_not_import_the_training_package() -> None:
    code = "import onedet.evaluate, onedet.export, onedet.predict, onedet.api"
    assert _modules_imported(code, "onedet.train") == []


def test_submodule_names_resolve_to_modules_in_any_import_order() -> None:
    code = (
        "import types, onedet\n"
        "assert isinstance(onedet.predict, types.ModuleType)\n"  # before the submodule was imported
        "import onedet.predict, onedet.export\n"
        "assert isinstance(onedet.export, types.ModuleType) and callable(onedet.predict.predict)\n"
        "assert onedet.OneDet('tiny').preset == 'tiny'\n"
        "from onedet.train import train\n"
        "assert callable(train) and onedet.OneDet.__module__ == 'onedet.api'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    import onedet.predict

    assert onedet.OneDet("tiny").preset == "tiny"
    assert set(onedet.__all__) <= set(dir(onedet))
    with pytest.raises(AttributeError):
        onedet.no_such_name  # noqa: B018


def test_bad_preset_and_untrained_use_are_clear_errors() -> None:
    with pytest.raises(OnedetError, match="unknown model preset"):
        onedet.OneDet("huge")
    with pytest.raises(OnedetError, match="no trained weights"):
        onedet.OneDet("tiny").predict(np.zeros((32, 32, 3), np.uint8))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[onedet.OneDet, Path, object]:
    root = tmp_path_factory.mktemp("api")
    store = make_store(root, num_images=10)
    model = onedet.OneDet("tiny", pretrained=None, image_size=IMAGE_SIZE)
    # amp="off": the trainer evaluates under its autocast plan and `evaluate` in fp32; the test compares the two
    # exactly (bf16 would move this near-random model's scores, and its tiny AP, in the last bits).
    result = model.train(store, root / "run", epochs=1, batch_size=4, progress=False, workers=2, amp="off")
    return model, store, result


@pytest.mark.slow
def test_facade_trains_predicts_evaluates_and_exports(trained, tmp_path: Path) -> None:
    from onedet.checkpoint import load_run
    from onedet.data.store import Store

    model, store, result = trained
    assert model.run_dir == Path(result.run) and (Path(result.run) / "weights").is_dir()
    # The object holds the run's best weights, as load_run reads them.
    reference = load_run(result.run)
    for key, value in reference.model.state_dict().items():
        assert np.array_equal(model.model.state_dict()[key].cpu().numpy(), value.numpy()), key
    assert model.classes == list(Store(store / "val").classes)

    val = Store(store / "val")
    image = val.read_batch(np.arange(1))["images"][0].permute(1, 2, 0).numpy()
    eager = model.predict(image, threshold=0.0)
    assert len(eager) > 0 and isinstance(model.predict([image, image]), list)

    metrics = model.evaluate(store / "val", plots=tmp_path / "plots")
    # The same weights on the same split as the trainer's own evaluation of its best checkpoint.
    assert metrics["AP"] == pytest.approx(result.metrics["AP"]) and metrics["AP50"] == pytest.approx(
        result.metrics["AP50"]
    )
    assert metrics["confusion"] == result.metrics["confusion"]
    assert (tmp_path / "plots" / "confusion_matrix.png").stat().st_size > 0

    (path,) = model.export(tmp_path / "model.onnx")
    runtime = onedet.OnnxDetector(path)(image, threshold=0.0)[0]
    assert runtime.class_names[:1] == eager.class_names[:1]
    np.testing.assert_array_equal(runtime.category_ids[:5], eager.category_ids[:5])
    np.testing.assert_allclose(runtime.scores[:5], eager.scores[:5], atol=1e-3)
    np.testing.assert_allclose(runtime.boxes_xyxy[:5], eager.boxes_xyxy[:5], atol=0.5)


@pytest.mark.slow
def test_from_run_matches_and_only_resumes(trained) -> None:
    model, _, result = trained
    loaded = onedet.OneDet.from_run(result.run)
    image = np.random.default_rng(0).integers(0, 256, (100, 140, 3), dtype=np.uint8)
    a, b = model.predict(image, threshold=0.0), loaded.predict(image, threshold=0.0)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.boxes_xyxy, b.boxes_xyxy)
    with pytest.raises(OnedetError, match="resume=True"):
        loaded.train(result.run, epochs=1)
    with pytest.raises(OnedetError, match="differ"):
        loaded.evaluate(_other_store(result.run.parent))


def _other_store(root: Path) -> Path:
    from onedet.data.prepare import prepare
    from onedet.data.synthetic import make_synthetic

    # Same images, one class renamed: the store's classes no longer match the model's.
    source = make_synthetic(root / "other-source", num_images=5, image_size=64, seed=1)
    for ann in source.rglob("*.json"):
        data = json.loads(ann.read_text())
        data["categories"][0]["name"] += "-renamed"
        ann.write_text(json.dumps(data))
    prepare(source, root / "other-store", image_size=64, progress=False, workers=1)
    return root / "other-store" / "val"
