"""Tracking (`onedet.track.Tracker`, ByteTrack from the trackers package) on scripted detections, and
`predict_video(track=True)` / `onedet predict --track` on a video."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from test_predict import CATEGORY_IDS, KEYS, _image, make_run

from onedet.errors import OnedetError
from onedet.runtime import Detections

pytest.importorskip("trackers")

from onedet.track import LOW_SCORE, Tracker, _confidence


def _frame(boxes: list[list[float]], scores: list[float], ids: list[int]) -> Detections:
    return Detections(
        boxes_xyxy=np.array(boxes, np.float32).reshape(-1, 4),
        scores=np.array(scores, np.float32),
        category_ids=np.array(ids, np.int64),
        class_names=[f"c{i}" for i in ids],
    )


def _walk(t: int, x0: float, y0: float, dx: float) -> list[float]:
    """A 40 x 30 box moving `dx` pixels a frame."""
    return [x0 + dx * t, y0, x0 + dx * t + 40, y0 + 30]


def _ids_of(frames: list[Detections], name: str) -> dict[int, int]:
    """Frame -> track id of the detection of class `name` in each frame that reports one."""
    return {t: int(d.track_ids[d.class_names.index(name)]) for t, d in enumerate(frames) if name in d.class_names}


def test_mapped_scores_put_each_class_threshold_at_one_half() -> None:
    scores = np.array([0.0, 0.1, 0.2, 0.5, 0.8, 1.0], np.float32)
    for t in (0.05, 0.2, 0.5, 0.8):
        mapped = _confidence(scores, np.full_like(scores, t))
        assert np.all(np.diff(mapped) > 0), "order is kept"
        assert mapped[0] == 0 and mapped[-1] == pytest.approx(1)
        np.testing.assert_allclose(_confidence(np.float32([t]), np.float32([t])), [0.5], atol=1e-6)


def test_ids_survive_a_score_dip_and_a_missed_frame_and_a_blip_is_never_reported() -> None:
    """Two objects walk towards each other on two rows. In frame 8 the first scores 0.2 (below its 0.5, above
    LOW_SCORE): ByteTrack's second stage keeps it in its track. In frames 12-13 the second is not detected at all;
    it comes back under its id. A detection seen in one frame only (frame 5) never becomes a track."""
    frames = []
    for t in range(20):
        boxes, scores, ids = [_walk(t, 10, 10, 4)], [0.2 if t == 8 else 0.9], [1]
        if t not in (12, 13):
            boxes.append(_walk(t, 200, 60, -4))
            scores.append(0.8)
            ids.append(2)
        if t == 5:
            boxes.append([300, 200, 340, 230])
            scores.append(0.95)
            ids.append(3)
        frames.append(_frame(boxes, scores, ids))
    tracker = Tracker(0.5, fps=10)
    tracked = [tracker.update(d) for d in frames]

    first, second = _ids_of(tracked, "c1"), _ids_of(tracked, "c2")
    assert sorted(first) == list(range(1, 20)), "reported from its second frame on, the dip included"
    assert len(set(first.values())) == 1
    assert sorted(second) == [t for t in range(1, 20) if t not in (12, 13)]
    assert len(set(second.values())) == 1, "the same id after two missed frames"
    assert set(first.values()) != set(second.values())
    assert not _ids_of(tracked, "c3"), "one frame is not a track"
    assert tracked[8].scores[tracked[8].class_names.index("c1")] == pytest.approx(0.2), "its own score is kept"
    for d in tracked:
        assert np.all(np.diff(d.scores) <= 0), "best first"
        assert d.track_ids is not None and d.track_ids.dtype == np.int64


def test_a_dip_below_the_low_score_is_not_matched() -> None:
    frames = [_frame([_walk(t, 10, 10, 4)], [LOW_SCORE / 2 if t == 4 else 0.9], [1]) for t in range(8)]
    tracker = Tracker(0.5, fps=10)
    tracked = [tracker.update(d) for d in frames]
    assert [len(d) for d in tracked] == [0, 1, 1, 1, 0, 1, 1, 1]
    assert len({int(d.track_ids[0]) for d in tracked if len(d)}) == 1, "the track outlives the missed frame"


def test_a_weaker_copy_of_a_detection_does_not_feed_a_hidden_objects_track() -> None:
    """B stands still; A walks towards it. In frames 5-7 B is hidden and the detector (NMS-free) gives a weaker copy
    of A shifted towards B (IoU 0.54 with A, 0.18-0.33 with B). ByteTrack's second stage would hand that copy to B's
    track; the duplicate filter drops it, so B is simply not reported while hidden."""
    frames = []
    for t in range(10):
        a = _walk(t, 40, 50, 4)
        boxes, scores, ids = [a], [0.9], [1]
        if 5 <= t <= 7:
            boxes.append([a[0] + 12, a[1], a[2] + 12, a[3]])
            scores.append(0.2)
            ids.append(1)
        else:
            boxes.append([100, 50, 140, 80])
            scores.append(0.8)
            ids.append(2)
        frames.append(_frame(boxes, scores, ids))

    def b_frames(tracker: Tracker) -> list[int]:
        tracked = [tracker.update(d) for d in frames]
        b_id = _ids_of(tracked, "c2")[1]
        return [t for t, d in enumerate(tracked) if d.track_ids is not None and b_id in d.track_ids.tolist()]

    assert b_frames(Tracker(0.5, fps=10)) == [1, 2, 3, 4, 8, 9]
    assert b_frames(Tracker(0.5, fps=10, duplicate_iou=None)) == list(range(1, 10)), "the copy taken as B"


def test_each_class_starts_tracks_from_its_own_threshold() -> None:
    """Per class thresholds (the model's own, as predict uses them): class 1 (threshold 0.2) is tracked at 0.3;
    class 2 (threshold 0.8) at 0.6 never starts a track; one threshold of 0.5 for both does the opposite."""
    frames = [_frame([_walk(t, 10, 10, 3), _walk(t, 10, 100, 3)], [0.6, 0.3], [2, 1]) for t in range(6)]
    tracker = Tracker({1: 0.2, 2: 0.8}, fps=10)
    assert tracker.low_score == LOW_SCORE
    tracked = [tracker.update(d) for d in frames]
    assert sorted(_ids_of(tracked, "c1")) == [1, 2, 3, 4, 5] and not _ids_of(tracked, "c2")
    tracker = Tracker(0.5, fps=10)
    tracked = [tracker.update(d) for d in frames]
    assert sorted(_ids_of(tracked, "c2")) == [1, 2, 3, 4, 5] and not _ids_of(tracked, "c1")
    assert Tracker(0.05).low_score == 0.05, "the detector must keep what the tracker starts tracks from"


def test_bad_settings_and_a_missing_package_are_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(OnedetError, match=r"threshold must be a score in 0\.\.1"):
        Tracker({1: 1.5})
    with pytest.raises(OnedetError, match="fps must be positive"):
        Tracker(0.5, fps=0)
    with pytest.raises(OnedetError, match="min_frames >= 1"):
        Tracker(0.5, min_frames=0)
    with pytest.raises(OnedetError, match=r"duplicate_iou must be in \(0, 1\]"):
        Tracker(0.5, duplicate_iou=0)
    monkeypatch.setitem(sys.modules, "trackers", None)  # as where trackers is not installed
    with pytest.raises(OnedetError, match=r"pip install 'onedet\[track\]'"):
        Tracker(0.5)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    pytest.importorskip("av")
    from onedet.export import export
    from onedet.video import VideoWriter

    root = tmp_path_factory.mktemp("track")
    run = make_run(root / "run")
    [onnx_file] = export(run, root / "model.onnx")
    still = _image(96, 128, 0)
    with VideoWriter(root / "still.mp4", 10) as writer:
        for _ in range(6):
            writer.write(still)
    return {"root": root, "run": run, "onnx": onnx_file, "video": root / "still.mp4"}


def test_predict_video_tracks_a_still_scene_under_fixed_ids(models: dict) -> None:
    """A scene that does not move: every detection of the test model keeps one id from its second frame to the
    last (the first frame is not yet a track), and is one that `predict` finds in that frame."""
    from onedet.predict import load_predictor, predict_video

    detector = load_predictor(models["onnx"])
    out = models["root"] / "tracked.mp4"
    tracked = predict_video(detector, models["video"], out, threshold=0.2, track=True)
    plain = predict_video(detector, models["video"], threshold=LOW_SCORE)
    assert len(tracked) == 6 and len(tracked[0]) == 0 and len(tracked[1]) > 0
    for t in range(1, 6):
        assert len(tracked[t]) == len(tracked[1])
        by_id = dict(zip(tracked[t].track_ids.tolist(), tracked[t].boxes_xyxy))
        for track_id, box in zip(tracked[1].track_ids.tolist(), tracked[1].boxes_xyxy):
            np.testing.assert_allclose(by_id[track_id], box, atol=2.0)
        found = {tuple(np.round(b, 3)) for b in plain[t].boxes_xyxy}
        assert {tuple(np.round(b, 3)) for b in tracked[t].boxes_xyxy} <= found
    assert out.is_file()
    from onedet import OneDet  # the facade, on the run folder (PyTorch): the same tracks

    facade = OneDet.from_run(models["run"]).predict_video(models["video"], threshold=0.2, track=True)
    assert [d.track_ids.tolist() for d in facade] == [d.track_ids.tolist() for d in tracked]
    for a, b in zip(facade, tracked):
        np.testing.assert_allclose(a.boxes_xyxy, b.boxes_xyxy, atol=1e-2)


def test_predict_cli_tracks_videos(models: dict, capsys: pytest.CaptureFixture) -> None:
    from onedet.cli import main

    out = models["root"] / "out"
    args = ["predict", "--model", str(models["onnx"]), str(models["video"]), "--out", str(out)]
    assert main([*args, "--threshold", "0.2", "--track", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(set(r) == KEYS | {"frame", "track_id"} for r in rows)
    assert all(r["category_id"] in CATEGORY_IDS and r["frame"] >= 1 for r in rows)
    per_frame = {}
    for r in rows:
        per_frame.setdefault(r["frame"], set()).add(r["track_id"])
    assert len({frozenset(ids) for ids in per_frame.values()}) == 1, "the same tracks in every frame"
    assert json.loads((out / "detections.json").read_text()) == rows


def test_track_without_the_package_fails_before_any_file_is_read(models: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from onedet.predict import predict_files

    monkeypatch.setitem(sys.modules, "trackers", None)
    out = models["root"] / "never"
    with pytest.raises(OnedetError, match=r"pip install 'onedet\[track\]'"):
        predict_files(models["onnx"], [models["video"]], out, track=True)
    assert not out.exists()
    predict_files(models["onnx"], [models["video"]], out, threshold=0.2)  # without --track it does not need it
    assert (out / "still.mp4").is_file()
