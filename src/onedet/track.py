"""Multi-object tracking over a video's detections: ByteTrack, from Roboflow's `trackers` package (Apache-2.0), an
optional dependency: `pip install 'onedet[track]'`.

`Tracker(thresholds, fps).update(detections)` takes one frame's `Detections` (best first, as every detector returns
them) and returns the ones that belong to a track, each with its `track_ids`: an object keeps its id from frame to
frame while it is seen, and through `lost_seconds` of frames where it is not (occluded, or missed by the detector).

ByteTrack (Zhang et al., ECCV 2022) associates in two stages: detections the detector is sure of are matched to the
tracks' Kalman-predicted boxes first, then the remaining tracks take the low-score detections (down to
`LOW_SCORE`, 0.1 as in the paper) that overlap them, so an object whose score dips while it is half hidden keeps its
track instead of losing it. A new track starts only from a detection the detector is sure of.

"Sure" means what `onedet predict` keeps: a score at or above the threshold of the detection's class (the model's
own per class, or one for every class). The library compares every detection with one threshold, so each score is
mapped piecewise-linearly so that its class's threshold lands on 0.5 (`_confidence`): order within a class is
kept, and the library's one threshold means each class's own. Torch-free, like `onedet.runtime`.

One change for an NMS-free detector: its confident detections need no NMS, but below them its top-k holds weaker
copies of the same objects (the neighbours of each peak). ByteTrack's second stage hands such a copy to a track
that lost its own object (hidden behind the copied one), a false positive and a drifting track. So a detection
below its class threshold that overlaps a better one by IoU `duplicate_iou` (0.5) or more is dropped before the
association: NMS on the low-score tail only (measured in `benchmarks/track.py`, BENCHMARKS.md "Tracking").

Written on the library rather than by hand: its ByteTrack and SORT are clean-room implementations evaluated on
MOT17, SportsMOT and SoccerNet, and `trackers.eval` computes CLEAR MOT, HOTA and IDF1 from MOT files (what
`benchmarks/track.py` measures with). It needs OpenCV (a GUI build with libGL); the serving image installs the
headless build instead (Dockerfile.runtime).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from onedet.errors import OnedetError
from onedet.runtime import DEFAULT_THRESHOLD, Detections, check_threshold, class_thresholds_of

LOW_SCORE = 0.1
"""ByteTrack's low threshold: detections scoring below it never enter the association."""

_SURE = 0.5  # the library's threshold for "sure" detections, on the mapped scores of `_confidence`


def require_trackers() -> Any:
    """The `trackers` module, or an OnedetError saying how to install it."""
    try:
        import trackers
    except ImportError as err:
        raise OnedetError(
            "tracking needs Roboflow's trackers package: pip install 'onedet[track]' (or: pip install trackers)"
        ) from err
    return trackers


def _confidence(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Scores mapped so that each one's class threshold `t` lands on `_SURE`: [0, t] -> [0, 0.5], [t, 1] -> [0.5, 1]
    (linear on each side; a threshold of 1 maps only a score of 1 to 0.5 and above)."""
    t = np.clip(thresholds, 1e-6, 1.0)
    below = scores / t * _SURE
    above = _SURE + (scores - t) / np.maximum(1.0 - t, 1e-6) * (1.0 - _SURE)
    return np.where(scores < t, below, np.minimum(above, 1.0)).astype(np.float32)


class Tracker:
    """ByteTrack over one video's frames, in order (a new video needs a new Tracker, or `reset()`).

    `thresholds`: the score a detection needs to start or confirm a track, one for every class or one per category
    id (`BatchDetector.class_thresholds()`; a category id missing from the mapping takes `DEFAULT_THRESHOLD`).
    Detections between `LOW_SCORE` and that threshold only extend tracks that exist, unless they overlap a better
    detection by IoU `duplicate_iou` or more (None: keep them all). `fps`: the video's frame rate; a track survives
    `lost_seconds` without a match. `min_frames`: the frames in a row a new track must be matched before it is
    reported (its first detection is never reported: a single frame is not yet a track). `min_iou`: the least
    overlap between a track's predicted box and a detection for them to match.
    """

    def __init__(
        self,
        thresholds: float | Mapping[int, float] = DEFAULT_THRESHOLD,
        fps: float = 30.0,
        lost_seconds: float = 1.0,
        min_frames: int = 2,
        min_iou: float = 0.1,
        duplicate_iou: float | None = 0.5,
    ) -> None:
        if isinstance(thresholds, Mapping):
            for t in thresholds.values():
                check_threshold(t)
            self.thresholds: float | dict[int, float] = {int(c): float(t) for c, t in thresholds.items()}
        else:
            check_threshold(thresholds)
            self.thresholds = float(thresholds)
        if not fps > 0:
            raise OnedetError(f"fps must be positive, got {fps}")
        if lost_seconds < 0 or min_frames < 1 or not 0.0 <= min_iou <= 1.0:
            raise OnedetError(
                f"need lost_seconds >= 0, min_frames >= 1 and min_iou in 0..1, got {lost_seconds}, {min_frames}, "
                f"{min_iou}"
            )
        if duplicate_iou is not None and not 0.0 < duplicate_iou <= 1.0:
            raise OnedetError(f"duplicate_iou must be in (0, 1] or None, got {duplicate_iou}")
        self.duplicate_iou = duplicate_iou
        self._tracker = require_trackers().ByteTrackTracker(
            lost_track_buffer=round(lost_seconds * 30),  # the library counts it in frames at 30 fps
            frame_rate=float(fps),
            track_activation_threshold=_SURE,
            high_conf_det_threshold=_SURE,
            minimum_consecutive_frames=min_frames,
            minimum_iou_threshold=min_iou,
        )

    @property
    def low_score(self) -> float:
        """The lowest score a detection needs to be looked at: what the detector must keep for the tracker."""
        limits = self.thresholds.values() if isinstance(self.thresholds, dict) else [self.thresholds]
        return min([LOW_SCORE, *limits])

    def update(self, detections: Detections) -> Detections:
        """The detections of the next frame that belong to a track, with their `track_ids` (ids from 0, never
        reused), best first. Detections below `low_score` are ignored."""
        import supervision as sv  # a dependency of trackers

        keep = np.flatnonzero(detections.scores >= self.low_score)
        confidence = _confidence(
            detections.scores[keep], class_thresholds_of(detections.category_ids[keep], self.thresholds)
        )
        boxes = detections.boxes_xyxy[keep].astype(np.float32).reshape(-1, 4)
        if self.duplicate_iou is not None and len(keep):
            keep, confidence, boxes = self._without_duplicates(keep, confidence, boxes, self.duplicate_iou)
        found = self._tracker.update(
            sv.Detections(
                xyxy=boxes,
                confidence=confidence,
                class_id=detections.category_ids[keep].astype(int),
                data={"index": keep},
            )
        )
        tracked = np.asarray(found.tracker_id) >= 0
        index = np.asarray(found.data["index"], np.int64)[tracked] if len(found) else np.zeros(0, np.int64)
        ids = np.asarray(found.tracker_id, np.int64)[tracked] if len(found) else np.zeros(0, np.int64)
        order = np.argsort(-detections.scores[index], kind="stable")  # best first, as every Detections
        index, ids = index[order], ids[order]
        return replace(
            detections,
            boxes_xyxy=detections.boxes_xyxy[index],
            scores=detections.scores[index],
            category_ids=detections.category_ids[index],
            class_names=[detections.class_names[i] for i in index],
            track_ids=ids,
        )

    @staticmethod
    def _without_duplicates(
        keep: np.ndarray, confidence: np.ndarray, boxes: np.ndarray, duplicate_iou: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Drop each unsure detection that overlaps a surer detection still kept by `duplicate_iou` or more (greedy,
        surest first, as NMS, on the mapped scores, so every sure detection comes first and none is dropped)."""
        import supervision as sv

        order = np.argsort(-confidence, kind="stable")
        iou = sv.box_iou_batch(boxes[order], boxes[order])
        unsure = confidence[order] < _SURE
        kept = np.ones(len(order), bool)
        for i in np.flatnonzero(unsure):
            kept[i] = not np.any(iou[i, :i][kept[:i]] >= duplicate_iou)
        chosen = np.sort(order[kept])
        return keep[chosen], confidence[chosen], boxes[chosen]

    def reset(self) -> None:
        """Forget every track (ids start from 0 again): for the next video."""
        self._tracker.reset()
