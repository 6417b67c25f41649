"""Bad input to `onedet prepare` and `onedet info`, through the CLI: every case ends in one error line naming the
file (and line) and what is wrong, or in a counted, listed fix or skip in the store's report; never a traceback,
never a store that opens as complete. docs/bad_input.md tables these cases with the older tests that cover more.

The train / eval / export / predict cases are in test_bad_input_models.py.
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import onedet.data.prepare as prepare_module
from onedet.cli import COMMANDS, main
from onedet.data.store import Store
from onedet.errors import OnedetError

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")
SIZE = 64
COMMAND_NAMES = {command.name for command in COMMANDS}


def cli_error(capsys: pytest.CaptureFixture, args: list[str], *needles: str) -> str:
    """Run `onedet ARGS`; assert exit code 2 and one error line `onedet <cmd>: error: ...` holding every needle.

    On a terminal, prepare's progress bar redraws itself with carriage returns on the same line before the error,
    so what counts is the text after the last carriage return: one line, as a terminal shows it.
    """
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.rstrip("\n").split("\n")
    assert len(lines) == 1, err
    line = lines[0].split("\r")[-1]
    assert line.startswith(f"onedet {args[0]}: error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def _png_bytes(w: int, h: int, pixels: bytes = b"") -> bytes:
    """A PNG whose header claims w x h RGB pixels, with `pixels` (possibly far fewer) as its compressed data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(pixels)) + chunk(b"IEND", b"")


def _rgb(h: int = 40, w: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def coco_source(root: Path, files: dict[str, object], anns: list[dict] | None = None, cats=None) -> Path:
    """A COCO dataset: `train/` images (name -> array, Pillow image or raw bytes), a one-image, one-box `val`, and their
    instances JSONs. Every image is declared 48 x 40 with one box, unless `anns` are given."""
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    (root / "annotations").mkdir()
    Image.fromarray(_rgb(seed=9)).save(root / "val" / "v.png")
    for name, content in files.items():
        if isinstance(content, bytes):
            (root / "train" / name).write_bytes(content)
        elif isinstance(content, Image.Image):
            content.save(root / "train" / name)
        else:
            Image.fromarray(content).save(root / "train" / name)
    images = [{"id": i + 1, "file_name": n, "width": 48, "height": 40} for i, n in enumerate(files)]
    if anns is None:
        anns = [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [2, 3, 20, 10]} for i in range(len(files))]
    cats = cats or [{"id": 1, "name": "thing"}]
    train = {"images": images, "annotations": anns, "categories": cats}
    val = {"images": [{"id": 1, "file_name": "v.png", "width": 48, "height": 40}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": cats[0]["id"], "bbox": [2, 3, 20, 10]}],
           "categories": cats}  # fmt: skip
    (root / "annotations" / "instances_train.json").write_text(json.dumps(train))
    (root / "annotations" / "instances_val.json").write_text(json.dumps(val))
    return root


def read_only_folder(locked: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder made read-only (chmod 0o555). That stops everyone but root, and the tests may run as root, so
    creating anything in it is also made to fail as the kernel fails it for other users (EACCES), through
    `Path.mkdir`; `monkeypatch.undo()` lifts that."""
    locked.mkdir()
    locked.chmod(0o555)
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args, **kwargs) -> None:
        if self.parent == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    return locked


def prepare_args(source: Path, out: Path, *extra: str) -> list[str]:
    return ["prepare", str(source), "--out", str(out), "--image-size", str(SIZE), "--workers", "1", *extra]


def prepared_report(capsys: pytest.CaptureFixture, source: Path, out: Path, *extra: str) -> dict:
    """Prepare through the CLI (it must succeed) and return the train split's report from `info --json`."""
    assert main(prepare_args(source, out, *extra)) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    return json.loads(capsys.readouterr().out)["train"]["report"]


def assert_no_store(out: Path) -> None:
    """Nothing under `out` opens as a complete store (no split, no leftover temporary folder)."""
    assert not out.exists() or [p.name for p in out.iterdir()] in ([], ["val"])
    with pytest.raises(OnedetError):
        Store(out / "train")


# --- images --------------------------------------------------------------------------------------------------


def _truncated(fmt: str) -> bytes:
    """The first half of a 64 x 64 noise image in `fmt` (noise: the pixel data is most of the file)."""
    buffer = io.BytesIO()
    Image.fromarray(_rgb(64, 64, 1)).save(buffer, format=fmt)
    data = buffer.getvalue()
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["distill", "--teacher", "t"], "onedet distill: error: the following arguments are required: --data, --stud"),
        (["train", "--data", "s", "--finetune", "all"], "onedet train: error: argument --finetune: invalid choice"),
        (["train", "--data", "s", "--finetune", "lroa"], "onedet train: error: argument --finetune: invalid choice"),
        (["trian"], "onedet: error: argument command: invalid choice: 'trian'"),
        # an option the command does not take is the command's error (argparse's points at `onedet --help`)
        (["eval", "--weights", "w", "--data", "d", "--workers", "1"], "onedet eval: error: unrecognized arguments"),
        (["train", "--data", "s", "--batchsize", "3"], "onedet train: error: unrecognized arguments: --batchsize 3"),
    ],
)
def test_a_usage_error_is_one_line_and_a_pointer_to_help(capsys: pytest.CaptureFixture, args, what) -> None:
    # argparse's default prints the whole usage first: for distill, 25 lines above the one that matters.
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.splitlines()[0].startswith(what), err
    assert len(err.splitlines()) == 2 and "usage:" not in err, err
    where = f"onedet {args[0]}" if args[0] in COMMAND_NAMES else "onedet"
    assert f"(`{where} --help` lists the options)" in err
    # a misspelling gets the nearest choice or option; a word near none gets no guess
    suggestion = {"lroa": "lora", "trian": "train", "3": "--batch-size"}.get(args[-1])
    assert err.splitlines()[0].endswith(f"; did you mean {suggestion!r}?") if suggestion else "did you mean" not in err


@pytest.mark.parametrize(
    ("name", "content", "what"),
    [
        ("zero.jpg", b"", "not a readable image"),
        ("half.jpg", "JPEG", "cannot decode image"),
        ("half.png", "PNG", "cannot decode image"),
        ("text.jpg", b"these are notes, not pixels\n", "not a readable image"),
    ],
    ids=["zero-byte", "truncated-jpeg", "truncated-png", "text-named-jpg"],
)
def test_unreadable_image_fails_naming_it_then_skip_bad_counts_it(
    tmp_path: Path, capsys: pytest.CaptureFixture, name: str, content: bytes | str, what: str
) -> None:
    data = content if isinstance(content, bytes) else _truncated(content)
    source = coco_source(tmp_path / "src", {"good.png": _rgb(), name: data})
    out = tmp_path / "store"
    cli_error(capsys, prepare_args(source, out), f"{name}: {what}", "--skip-bad")
    assert_no_store(out)
    report = prepared_report(capsys, source, out, "--skip-bad")
    assert report["unreadable_images"]["count"] == 1
    assert [Path(f).name for f in report["unreadable_images"]["files"]] == [name]
    assert len(Store(out / "train")) == 1


def test_16bit_cmyk_and_transparent_palette_images_are_counted_fixes(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sixteen = Image.fromarray((np.arange(40 * 48, dtype=np.uint16).reshape(40, 48) * 30).astype(np.uint16))
    cmyk = Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 48, 4), dtype=np.uint8), "CMYK")
    palette = Image.new("P", (48, 40))
    palette.putpalette([0, 0, 0, 250, 10, 10] + [0] * (256 * 3 - 6))
    palette.paste(1, (10, 10, 30, 30))
    palette.info["transparency"] = 0
    (tmp_path / "p").mkdir()
    cmyk.save(tmp_path / "p" / "cmyk.jpg")
    files = {"deep.png": sixteen, "cmyk.jpg": (tmp_path / "p" / "cmyk.jpg").read_bytes(), "pal.png": palette}
    source = coco_source(tmp_path / "src", files)
    assert Image.open(source / "train" / "pal.png").info.get("transparency") is not None
    report = prepared_report(capsys, source, tmp_path / "store")
    for kind, name in [
        ("converted_16bit", "deep.png"),
        ("converted_cmyk", "cmyk.jpg"),
        ("converted_palette", "pal.png"),
    ]:
        assert report[kind]["count"] == 1 and [Path(f).name for f in report[kind]["files"]] == [name], kind
    assert len(Store(tmp_path / "store" / "train")) == 3


@pytest.mark.parametrize("side", [50000, 10000], ids=["bomb-error", "bomb-warning"])
def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path, capsys: pytest.CaptureFixture, side: int):
    """50000^2 pixels is over twice Pillow's MAX_IMAGE_PIXELS (an error in Pillow); 10000^2 is between once and
    twice (Pillow only warns, then would allocate 300 MB for a file of a few bytes). Both are onedet errors."""
    source = coco_source(tmp_path / "src", {"good.png": _rgb(), "bomb.png": _png_bytes(side, side, b"\0" * 64)})
    with _no_warning():
        cli_error(
            capsys,
            prepare_args(source, tmp_path / "store"),
            "bomb.png",
            "decompression bomb",
            f"({side * side} pixels)",
        )
    assert_no_store(tmp_path / "store")
    report = prepared_report(capsys, source, tmp_path / "store", "--skip-bad")
    assert [Path(f).name for f in report["unreadable_images"]["files"]] == ["bomb.png"]


class _no_warning:
    """Fails when a DecompressionBombWarning escapes (it would be printed as a second stderr line)."""

    def __enter__(self) -> None:
        import warnings

        self._catch = warnings.catch_warnings(record=True)
        self.records = self._catch.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc) -> None:
        self._catch.__exit__(*exc)
        bombs = [w for w in self.records if issubclass(w.category, Image.DecompressionBombWarning)]
        assert not bombs, bombs


# --- annotations ---------------------------------------------------------------------------------------------


def _voc_source(root: Path, xml: str) -> Path:
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    Image.fromarray(_rgb()).save(root / "JPEGImages" / "a.jpg")
    (root / "Annotations" / "a.xml").write_text(xml)
    return root


_OBJECT = "<object><name>cat</name><bndbox>{}</bndbox></object>"


@pytest.mark.parametrize(
    ("bndbox", "what"),
    [
        (None, "object 0 has no numeric bndbox/xmin (got None)"),
        (
            "<xmin>1</xmin><ymin>2</ymin><xmax>ten</xmax><ymax>9</ymax>",
            "object 0 has no numeric bndbox/xmax (got 'ten')",
        ),
        ("<xmin>1</xmin><ymin>2</ymin><xmax>10</xmax>", "object 0 has no numeric bndbox/ymax (got None)"),
    ],
    ids=["no-bndbox", "non-numeric", "missing-ymax"],
)
def test_voc_object_without_a_numeric_box_names_the_xml(
    tmp_path: Path, capsys: pytest.CaptureFixture, bndbox: str | None, what: str
) -> None:
    obj = "<object><name>cat</name></object>" if bndbox is None else _OBJECT.format(bndbox)
    source = _voc_source(tmp_path / "voc", f"<annotation><filename>a.jpg</filename>{obj}</annotation>")
    cli_error(capsys, prepare_args(source, tmp_path / "store"), f"a.xml: {what}")
    assert_no_store(tmp_path / "store")


@pytest.mark.parametrize("line", ["0 nan 0.5 0.2 0.2", "0 0.5 0.5 inf 0.2"], ids=["nan", "inf"])
def test_yolo_nan_coordinate_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture, line: str) -> None:
    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.fromarray(_rgb()).save(root / "images" / "a.jpg")
    (root / "labels" / "a.txt").write_text(f"0 0.5 0.5 0.2 0.2\n{line}\n")
    cli_error(capsys, prepare_args(root, tmp_path / "store"), "a.txt:2: ", "is not a finite number", repr(line))
    assert_no_store(tmp_path / "store")


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = coco_source(tmp_path / "coco", {"a.png": _rgb()})
    assert main(prepare_args(source, tmp_path / "store")) == 0
    assert "\r" not in capsys.readouterr().err  # capsys's stderr is not a tty: no bar redraws filling a log


def _write_train_json(source: Path, edit) -> None:
    path = source / "annotations" / "instances_train.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("edit", "what"),
    [
        (lambda d: d["images"].append(dict(d["images"][0])), "image entry {'id': 1, "),
        (lambda d: d["categories"].append({"id": 1, "name": "again"}), "has a missing or repeated integer id"),
        (lambda d: d.pop("categories"), "no 'categories' list"),
        (lambda d: d["images"][1].pop("id"), "needs a unique integer 'id' and a 'file_name'"),
    ],
    ids=["duplicate-image-id", "duplicate-category-id", "no-categories", "image-without-id"],
)
def test_coco_structure_errors_name_the_json(tmp_path: Path, capsys: pytest.CaptureFixture, edit, what) -> None:
    source = coco_source(tmp_path / "src", {"a.png": _rgb(), "b.png": _rgb(seed=1)})
    _write_train_json(source, edit)
    cli_error(capsys, prepare_args(source, tmp_path / "store"), "instances_train.json: ", what)
    assert_no_store(tmp_path / "store")


def test_coco_file_that_is_not_json_or_has_no_images(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = coco_source(tmp_path / "src", {"a.png": _rgb()})
    path = source / "annotations" / "instances_train.json"
    path.write_text(path.read_text()[:40])  # cut short, as by a failed download
    cli_error(capsys, prepare_args(source, tmp_path / "store"), "instances_train.json: not a readable JSON file")
    path.write_text(json.dumps({"annotations": [], "categories": [{"id": 1, "name": "thing"}]}))
    cli_error(capsys, prepare_args(path, tmp_path / "store"), "instances_train.json: not a COCO instances file")
    assert_no_store(tmp_path / "store")


def test_coco_bad_annotations_are_counted_skips(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 20, 10]},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [2, 3, 20]},  # three numbers
        {"id": 3, "image_id": 1, "category_id": 1},  # no bbox at all
        {"id": 4, "image_id": 77, "category_id": 1, "bbox": [2, 3, 20, 10]},  # no image 77
    ]
    source = coco_source(tmp_path / "src", {"a.png": _rgb()}, anns)
    report = prepared_report(capsys, source, tmp_path / "store")
    assert report["annotations_without_bbox"]["count"] == 2
    assert report["annotations_without_image"]["count"] == 1
    assert {Path(f).name for k in ("annotations_without_bbox", "annotations_without_image")
            for f in report[k]["files"]} == {"instances_train.json"}  # fmt: skip
    assert Store(tmp_path / "store" / "train").meta["num_boxes"] == 1


def test_coco_category_name_unknown_to_the_other_split(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = coco_source(tmp_path / "src", {"a.png": _rgb()})
    path = source / "annotations" / "instances_val.json"
    data = json.loads(path.read_text())
    data["categories"] = [{"id": 1, "name": "thingy"}]  # the same id, another (unknown) class name
    path.write_text(json.dumps(data))
    cli_error(capsys, prepare_args(source, tmp_path / "store"), "instances_val.json: its categories differ")
    assert_no_store(tmp_path / "store")


# --- the output folder ---------------------------------------------------------------------------------------


def test_output_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = coco_source(tmp_path / "src", {"a.png": _rgb()})
    (tmp_path / "taken").write_text("my notes")
    cli_error(capsys, prepare_args(source, tmp_path / "taken"), "taken: exists and is not a folder")
    assert (tmp_path / "taken").read_text() == "my notes"


def test_read_only_output_folder(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    """A read-only --out (`read_only_folder`): one error naming the split's store, nothing left in the folder."""
    source = coco_source(tmp_path / "src", {"a.png": _rgb()})
    locked = read_only_folder(tmp_path / "locked", monkeypatch)
    cli_error(capsys, prepare_args(source, locked), f"{locked / 'train'}: cannot write the store", "Permission denied")
    monkeypatch.undo()
    locked.chmod(0o755)
    assert list(locked.iterdir()) == []


def test_full_disk_leaves_no_store_and_keeps_the_previous_one(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    """ENOSPC while the tensors are written (a tmpfs needs a mount, which tests do not do): the half-written split
    is removed, an earlier store of it stays as it was, and the message says which store and why."""
    source = coco_source(tmp_path / "src", {"a.png": _rgb()})
    out = tmp_path / "store"

    def no_space(*args, **kwargs) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prepare_module, "save_tensordict", no_space)
    cli_error(capsys, prepare_args(source, out), f"{out / 'train'}: cannot write the store", "No space left")
    assert_no_store(out)
    monkeypatch.undo()
    prepared_report(capsys, source, out)
    before = Store(out / "train").meta
    monkeypatch.setattr(prepare_module, "save_tensordict", no_space)
    cli_error(capsys, prepare_args(source, out), "No space left")
    assert sorted(p.name for p in out.iterdir()) == ["train", "val"]  # no temporary folder left
    assert Store(out / "train").meta == before


# --- info and damaged stores ---------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path, capsys: pytest.CaptureFixture) -> Path:
    source = coco_source(tmp_path / "src", {"a.png": _rgb(), "b.png": _rgb(seed=1)})
    prepared_report(capsys, source, tmp_path / "store")
    return tmp_path / "store"


def test_info_on_a_folder_that_is_not_a_store(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"")
    cli_error(capsys, ["info", str(tmp_path / "photos")], "photos: not a onedet store")
    cli_error(capsys, ["info", str(tmp_path / "photos" / "a.jpg")], "a.jpg: not a onedet store")


@pytest.mark.parametrize(
    ("edit", "what"),
    [
        (lambda text: text[: len(text) // 2], "meta.json: unreadable store metadata"),
        (lambda text: "[1, 2]", "meta.json: not a onedet store's metadata"),
        (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "classes"}), "lacks ['classes']"),
        (lambda text: json.dumps({**json.loads(text), "num_images": "two"}), "'num_images'"),
    ],
    ids=["cut-short", "not-an-object", "no-classes", "non-numeric-count"],
)
def test_info_on_a_store_with_damaged_metadata(store: Path, capsys: pytest.CaptureFixture, edit, what) -> None:
    meta = store / "train" / "meta.json"
    meta.write_text(edit(meta.read_text()))
    cli_error(capsys, ["info", str(store)], what)
    cli_error(capsys, ["info", str(store / "train")], what)


def test_store_with_a_truncated_tensor_file(store: Path, capsys: pytest.CaptureFixture) -> None:
    labels = store / "train" / "td" / "labels.memmap"
    labels.write_bytes(labels.read_bytes()[:3])
    cli_error(capsys, ["info", str(store / "train")], "train")
    with pytest.raises(OnedetError, match="train"):
        Store(store / "train")


_KILLED_CLI_PREPARE = """
import sys, time
from pathlib import Path
import onedet.data.prepare as P
from onedet.cli import main

decode, flag = P._decode, Path(sys.argv[3])
def slow_decode(task):
    if task[0] == 1:
        flag.write_text("ok")
        time.sleep(60)  # killed here, half-way through the train split
    return decode(task)
P._decode = slow_decode
main(["prepare", sys.argv[1], "--out", sys.argv[2], "--image-size", "64", "--workers", "1", "--layout", "compact"])
"""


def test_prepare_killed_while_replacing_a_store_keeps_the_old_one(tmp_path: Path, capsys) -> None:
    """`onedet prepare` (compact layout) SIGKILLed while it rewrites an existing store: the previous store still
    opens, whole, and the next run replaces it. (test_prepare kills a first prepare through the Python API.)"""
    out = tmp_path / "store"
    prepared_report(capsys, coco_source(tmp_path / "old", {"a.png": _rgb(), "b.png": _rgb(seed=1)}), out)
    before = Store(out / "train").meta
    source = coco_source(tmp_path / "new", {f"{i}.png": _rgb(seed=i) for i in range(3)})
    flag = tmp_path / "flag"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    code = textwrap.dedent(_KILLED_CLI_PREPARE)
    proc = subprocess.Popen([sys.executable, "-c", code, str(source), str(out), str(flag)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert flag.exists(), "the prepare subprocess did not reach its second image"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert sorted(p.name for p in out.iterdir()) == [f".train.tmp-{proc.pid}", "train", "val"]
    assert Store(out / "train").meta == before and len(Store(out / "train")) == 2
    prepared_report(capsys, source, out)
    assert sorted(p.name for p in out.iterdir()) == ["train", "val"]  # the dead run's leftovers removed
    assert len(Store(out / "train")) == 3 and Store(out / "train").layout == "raw"


def test_a_closed_stdout_stops_the_command_quietly() -> None:
    # `onedet presets | head -0`: the reader goes away before the table is written. A Unix tool stops without a
    # message (status 128 + SIGPIPE); onedet used to print "error: [Errno 32] Broken pipe".
    proc = subprocess.Popen([sys.executable, "-m", "onedet", "presets"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, stderr
    assert stderr == ""
