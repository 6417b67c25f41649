"""Videos: `onedet.video`'s reader and writer (PyAV), and `onedet predict` / `predict_video` on video files with
an .onnx file and a run folder."""

from __future__ import annotations

import json
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from test_predict import CATEGORY_IDS, KEYS, _image, make_run

from onedet.errors import OnedetError

av = pytest.importorskip("av")

from onedet.video import VideoReader, VideoWriter  # noqa: E402


def _frames(n: int, h: int = 96, w: int = 128) -> list[np.ndarray]:
    """Moving rectangles on a gradient: frames a detector gives different scores."""
    return [np.roll(_image(h, w, 0), 6 * i, axis=1) for i in range(n)]


def _write(path: Path, frames: list[np.ndarray], fps: float = 10) -> Path:
    with VideoWriter(path, fps) as writer:
        for frame in frames:
            writer.write(frame)
    return path


def test_written_frames_read_back(tmp_path: Path) -> None:
    frames = _frames(7)
    path = _write(tmp_path / "clip.mp4", frames, fps=12.5)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"], "no temporary file left"
    with VideoReader(path) as reader:
        assert (reader.width, reader.height, reader.fps) == (128, 96, Fraction(25, 2))
        decoded = list(reader)
    assert len(decoded) == 7 and decoded[0].shape == (96, 128, 3) and decoded[0].dtype == np.uint8
    # lossy, but the same picture: H.264 at constant quality 20
    assert max(np.abs(a.astype(int) - b).mean() for a, b in zip(decoded, frames)) < 3


def test_an_odd_size_is_padded_by_one_edge_pixel(tmp_path: Path) -> None:
    frames = _frames(3, h=47, w=63)
    with VideoReader(_write(tmp_path / "odd.mp4", frames)) as reader:
        decoded = list(reader)
    assert decoded[0].shape == (48, 64, 3)

    def error(dy: int, dx: int) -> float:
        return float(np.abs(decoded[1][dy : 47 + dy, dx : 63 + dx].astype(int) - frames[1]).mean())

    assert error(0, 0) < min(error(1, 0), error(0, 1), error(1, 1)), "the picture at its place, not shifted"


def test_frames_come_upright_as_players_show_them(tmp_path: Path) -> None:
    """A phone video stores its frames sideways with a display matrix saying how to turn them; the reader turns
    them (a quarter turn counter-clockwise here: the stored top-left corner ends bottom-left)."""
    if not hasattr(av.video.stream.VideoStream, "set_display_rotation"):
        pytest.skip("this PyAV cannot write a display matrix")
    picture = np.zeros((32, 64, 3), np.uint8)
    picture[:8, :8] = 255
    container = av.open(str(tmp_path / "turned.mp4"), "w")
    stream = container.add_stream("libx264", rate=10)
    stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
    stream.set_display_rotation(90)
    for _ in range(2):
        for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    with VideoReader(tmp_path / "turned.mp4") as reader:
        frames = list(reader)
    assert frames[0].shape == (64, 32, 3)
    assert frames[0][56:, :8].mean() > 200 and frames[0][:8, :8].mean() < 50


def test_a_failed_write_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(OnedetError, match=r"frame 1 is 64x48, the video's first 128x96"):
        _write(tmp_path / "mixed.mp4", [_frames(1)[0], _frames(1, 48, 64)[0]])
    with pytest.raises(OnedetError, match="no frame to write"):
        _write(tmp_path / "empty.mp4", [])
    with pytest.raises(OnedetError, match=r"frames must be uint8 \[H, W, 3\] RGB"):
        _write(tmp_path / "float.mp4", [np.zeros((8, 8, 3), np.float32)])
    assert list(tmp_path.iterdir()) == []


def test_unreadable_videos_are_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(OnedetError, match=r"notes\.mp4: not a readable video"):
        VideoReader(tmp_path / "notes.mp4")
    monkeypatch.setitem(sys.modules, "av", None)  # as where PyAV is not installed
    with pytest.raises(OnedetError, match=r"needs PyAV: pip install 'onedet\[video\]'"):
        VideoReader(tmp_path / "notes.mp4")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from onedet.export import export

    root = tmp_path_factory.mktemp("video")
    run = make_run(root / "run")
    [onnx_file] = export(run, root / "model.onnx")
    video = _write(root / "clip.mp4", _frames(6))
    return {"root": root, "run": run, "onnx": onnx_file, "video": video}


@pytest.mark.parametrize("model", ["onnx", "run"])
def test_predict_video_detects_every_frame_as_the_images_predict_does(models: dict, model: str) -> None:
    """Each frame's detections equal `predict` on that decoded frame as an image, whatever the batch size; the
    annotated video has every frame, at the source's frame rate."""
    from onedet.predict import load_predictor, predict, predict_video

    detector = load_predictor(models[model])
    with VideoReader(models["video"]) as reader:
        frames = list(reader)
    out = models["root"] / f"annotated_{model}.mp4"
    found = predict_video(detector, models["video"], out, threshold=0.2, batch_size=4)
    assert len(found) == len(frames) == 6
    assert sum(len(d) for d in found) > 0, "the test model finds something at 0.2"
    for frame, detections in zip(frames, found):
        alone = predict(detector, frame, threshold=0.2)
        np.testing.assert_allclose(detections.scores, alone.scores, atol=1e-5)
        np.testing.assert_allclose(detections.boxes_xyxy, alone.boxes_xyxy, atol=1e-3)
    one_at_a_time = predict_video(detector, models["video"], threshold=0.2, batch_size=1)
    assert [len(d) for d in one_at_a_time] == [len(d) for d in found]
    if model == "run":  # the facade calls the same function
        from onedet import OneDet

        facade = OneDet.from_run(models["run"]).predict_video(models["video"], threshold=0.2)
        assert [d.scores.tolist() for d in facade] == [d.scores.tolist() for d in found]
    with VideoReader(out) as written:
        assert (written.width, written.height, written.fps) == (128, 96, Fraction(10))
        annotated = list(written)
    assert len(annotated) == 6
    assert np.abs(annotated[0].astype(int) - frames[0]).max() > 100, "the boxes are drawn"


def test_predict_cli_takes_videos_beside_images(models: dict, capsys: pytest.CaptureFixture) -> None:
    """A folder with a video, an image and a broken video: the video gives rows with its frame index and an
    annotated MP4, the image a PNG, the broken video is skipped, counted and named."""
    from PIL import Image

    from onedet.cli import main

    folder = models["root"] / "media"
    folder.mkdir()
    (folder / "clip.mp4").symlink_to(models["video"])
    Image.fromarray(_image(80, 100, 3)).save(folder / "still.png")
    (folder / "broken.avi").write_bytes(b"\x00" * 64)
    out = models["root"] / "out"
    args = ["predict", "--model", str(models["onnx"]), str(folder), "--out", str(out), "--threshold", "0.2", "--json"]
    assert main(args) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert "skipped 1 unreadable file(s)" in captured.err and "broken.avi: not a readable video" in captured.err
    from_video = [r for r in rows if r["file"].endswith("clip.mp4")]
    assert from_video and all(set(r) == KEYS | {"frame"} and 0 <= r["frame"] < 6 for r in from_video)
    assert all(r["category_id"] in CATEGORY_IDS for r in rows)
    assert all(set(r) == KEYS for r in rows if r["file"].endswith("still.png"))
    assert sorted(p.name for p in out.iterdir()) == ["clip.mp4", "detections.json", "still.png"]


@pytest.fixture(scope="module")
def server(models: dict):
    """An HTTP server on 127.0.0.1 serving `models["root"]`, where `clip.ts` is the test clip as MPEG-TS (a format
    that streams without seeking, as live HTTP video does)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    with VideoReader(models["video"]) as reader:
        _write(models["root"] / "clip.ts", list(reader))

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(models["root"])))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    thread.join()


def test_stream_urls_are_sources(tmp_path: Path) -> None:
    from onedet.predict import _output_name, expand_sources
    from onedet.video import is_stream, is_video

    assert is_stream("rtsp://cam1:554/live") and is_stream("http://host/a.ts") and is_video("udp://@:1234")
    assert not is_stream(Path("rtsp://cam1/live")), "a Path is a file path"
    assert not is_stream("clip.mp4") and not is_stream("C:/videos/clip.mp4")
    (tmp_path / "a.png").write_bytes(b"")
    assert expand_sources(["rtsp://cam1:554/live", tmp_path / "a.png"]) == ["rtsp://cam1:554/live", tmp_path / "a.png"]
    used: set[str] = set()
    names = [_output_name(u, used, ".mp4") for u in ("rtsp://cam1:554/live", "rtsp://cam2/live?x=1", "udp://@:1234")]
    assert names == ["live.mp4", "live_1.mp4", "1234.mp4"]
    assert _output_name("http://host/", used, ".mp4") == "host.mp4"
    from onedet.predict import predict_files

    with pytest.raises(OnedetError, match="max_frames must be at least 1, got 0"):
        predict_files(tmp_path / "no.onnx", ["rtsp://cam1/live"], tmp_path / "out", max_frames=0)
    assert not (tmp_path / "out").exists()


def test_predict_reads_a_stream_url(models: dict, server: str, capsys: pytest.CaptureFixture) -> None:
    """`onedet predict` on an http:// URL: the frames are the clip's (detections equal to the local file's),
    `--max-frames` stops it, the annotated video is named after the URL; a stream that does not open is skipped,
    counted and named."""
    from onedet.cli import main
    from onedet.predict import predict_video

    out = models["root"] / "from_stream"
    url = f"{server}/clip.ts"
    dead = "rtsp://127.0.0.1:9/nothing"  # the discard port: nothing listens
    args = ["predict", "--model", str(models["onnx"]), url, dead, "--out", str(out), "--threshold", "0.2"]
    assert main([*args, "--max-frames", "4", "--json", "--dataset"]) == 0
    captured = capsys.readouterr()
    assert "--dataset: no image was read (videos are not part of it)" in captured.err
    rows = json.loads(captured.out)
    assert "skipped 1 unreadable file(s)" in captured.err and f"{dead}: not a stream that opens" in captured.err
    assert {r["frame"] for r in rows} <= {0, 1, 2, 3} and all(r["file"] == url for r in rows)
    local = predict_video(models["onnx"], models["root"] / "clip.ts", threshold=0.2, max_frames=4)
    assert len(rows) == sum(len(d) for d in local) > 0
    for frame, detections in enumerate(local):
        assert sorted(r["score"] for r in rows if r["frame"] == frame) == sorted(
            round(float(s), 5) for s in detections.scores
        )
    assert sorted(p.name for p in out.iterdir()) == ["clip.mp4", "detections.json"]
    with VideoReader(out / "clip.mp4") as written:
        assert len(list(written)) == 4


def test_ctrl_c_ends_a_stream_but_aborts_a_file(models: dict, server: str, tmp_path: Path) -> None:
    """Ctrl-C (KeyboardInterrupt) is how a live stream is stopped: the frames so far are returned and their
    annotated video is complete. On a file it stops the run and leaves no partial video."""
    from onedet.predict import load_predictor, predict_video

    detector = load_predictor(models["onnx"])
    run_batch, calls = detector.run_batch, []

    def interrupted_on_the_third_batch(batch: np.ndarray) -> tuple:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return run_batch(batch)

    detector.run_batch = interrupted_on_the_third_batch  # type: ignore[method-assign]
    found = predict_video(detector, f"{server}/clip.ts", tmp_path / "live.mp4", threshold=0.2, batch_size=1)
    assert len(found) == 2
    with VideoReader(tmp_path / "live.mp4") as written:
        assert len(list(written)) == 2
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        predict_video(detector, models["root"] / "clip.ts", tmp_path / "file.mp4", threshold=0.2, batch_size=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.mp4"]


def test_a_stream_that_breaks_off_keeps_its_frames(
    models: dict, server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A camera that drops after an hour must not lose the hour: an error reading a stream after its first frame
    ends it like Ctrl-C; the same error on a file fails the run and leaves no partial video."""
    from onedet.predict import predict_video

    def three_frames_then_an_error(self: VideoReader):
        for _ in range(3):
            yield _frames(1)[0]
        raise OnedetError(f"{self.path}: frame 3 cannot be decoded (connection reset)")

    monkeypatch.setattr(VideoReader, "__iter__", three_frames_then_an_error)
    found = predict_video(models["onnx"], f"{server}/clip.ts", tmp_path / "live.mp4", threshold=0.2, batch_size=1)
    assert len(found) == 3 and "the stream ended after 3 frames" in capsys.readouterr().err
    with pytest.raises(OnedetError, match="frame 3 cannot be decoded"):
        predict_video(models["onnx"], models["root"] / "clip.ts", tmp_path / "file.mp4", threshold=0.2)
    monkeypatch.undo()
    with VideoReader(tmp_path / "live.mp4") as written:
        assert len(list(written)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.mp4"]
