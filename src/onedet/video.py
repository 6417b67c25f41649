"""Video files in and out for `onedet predict`, through PyAV (FFmpeg's libraries): an optional dependency,
`pip install 'onedet[video]'`.

`VideoReader(path)` yields a file's (or a stream URL's: `rtsp://`, `http://`, ...) frames as uint8 `[H, W, 3]` RGB
arrays, the input every detector takes;
`VideoWriter(path, fps, width, height)` encodes frames into a new file (H.264 when this FFmpeg build has an encoder
for it, else MPEG-4 part 2), written under a temporary name and renamed when complete, so a failed run never leaves
a video that looks whole. Torch-free, like `onedet.runtime`.

PyAV rather than OpenCV: its wheels carry FFmpeg (decoders for every common container and codec, and an H.264
encoder) without OpenCV's GUI and image-processing weight, and it decodes straight to RGB arrays.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from onedet.errors import OnedetError

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts"})
"""File suffixes (lower case) that `onedet predict` reads as videos."""

DEFAULT_FPS = Fraction(25)
"""The frame rate written when a file does not say its own."""


def _av() -> Any:
    try:
        import av
    except ImportError as err:
        raise OnedetError(
            "reading and writing videos needs PyAV: pip install 'onedet[video]' (or: pip install av)"
        ) from err
    return av


STREAM_TIMEOUT = 10.0
"""Seconds a stream may take to open, or to deliver its next data, before it is an error."""

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_stream(source: str | Path) -> bool:
    """Whether `source` is a URL FFmpeg opens as a stream (`rtsp://`, `rtmp://`, `http(s)://`, `udp://`, `srt://`,
    ...) rather than a file path. A `Path` never is: pass URLs as strings (`Path` folds `//` to `/`)."""
    return isinstance(source, str) and bool(_URL.match(source))


def is_video(path: str | Path) -> bool:
    """A video file (by its suffix) or a stream URL."""
    return is_stream(path) or Path(path).suffix.lower() in VIDEO_SUFFIXES


class VideoReader:
    """The frames of a video file, decoded in order as uint8 `[H, W, 3]` RGB arrays (the first video stream), upright
    as players show them: a frame whose display matrix says to turn it (a phone held upright) is turned by its
    quarter turns, as `onedet.data.images.load_image` applies an image's EXIF orientation.

    `fps` is the stream's average frame rate (`DEFAULT_FPS` when the file does not say), `frames` its frame count
    as the container reports it (0 when unknown; an estimate for some containers), `width` and `height` the size
    as stored (before any turn). A file that is not a readable video, or has no video stream, raises `OnedetError`
    naming it; so does a frame that fails to decode.

    `path` may also be a stream URL (`is_stream`: a camera's `rtsp://...`, `http://.../live.ts`, ...), read live
    until it ends; `STREAM_TIMEOUT` seconds without data is an error. RTSP is read over TCP.
    """

    def __init__(self, path: str | Path) -> None:
        av = _av()
        self.stream = is_stream(path)
        self.path: str | Path = path if self.stream else Path(path)
        options = {"rtsp_transport": "tcp"} if str(path).lower().startswith("rtsp") else None  # UDP drops frames
        try:
            if self.stream:
                self._container = av.open(str(path), options=options, timeout=STREAM_TIMEOUT)
            else:
                self._container = av.open(str(self.path))
        except (av.FFmpegError, OSError, ValueError) as err:
            what = "not a stream that opens" if self.stream else "not a readable video"
            raise OnedetError(f"{self.path}: {what} ({err})") from err
        if not self._container.streams.video:
            self._container.close()
            raise OnedetError(f"{self.path}: holds no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"  # FFmpeg's own frame/slice threads
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = Fraction(rate) if rate else DEFAULT_FPS
        self.frames = int(self._stream.frames or 0)
        self.width, self.height = int(self._stream.width), int(self._stream.height)

    def __iter__(self) -> Iterator[np.ndarray]:
        av = _av()
        index = 0
        try:
            for frame in self._container.decode(self._stream):
                pixels = frame.to_ndarray(format="rgb24")
                turns = round((getattr(frame, "rotation", 0) or 0) / 90) % 4  # counter-clockwise, as np.rot90
                yield np.ascontiguousarray(np.rot90(pixels, turns)) if turns else pixels
                index += 1
        except av.FFmpegError as err:
            raise OnedetError(f"{self.path}: frame {index} cannot be decoded ({err})") from err

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VideoWriter:
    """Encodes uint8 `[H, W, 3]` RGB frames into `path` (its suffix picks the container, e.g. `.mp4`); the first
    frame sets the size, and every frame must have it.

    The file is written as `.<name>.tmp-<pid><suffix>` beside `path` and renamed to `path` by `close()`; leaving the
    `with` block on an error removes it instead. H.264 (libx264, yuv420p, constant quality) when this FFmpeg has it,
    else MPEG-4 part 2: both play in browsers' and desktops' players. yuv420p needs even sizes, so an odd width or
    height is padded by one edge pixel.
    """

    def __init__(self, path: str | Path, fps: Fraction | float = DEFAULT_FPS) -> None:
        av = _av()
        self.path = Path(path)
        self._tmp = self.path.with_name(f".{self.path.stem}.tmp-{os.getpid()}{self.path.suffix}")
        try:
            self._container = av.open(str(self._tmp), mode="w")
        except (av.FFmpegError, OSError, ValueError) as err:
            raise OnedetError(f"{self.path}: cannot write a video here ({err})") from err
        self.codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self.fps = Fraction(fps).limit_denominator(1_001_000)
        self._stream: Any = None
        self.size: tuple[int, int] | None = None  # (height, width) of the frames
        self.frames = 0

    def _open_stream(self, height: int, width: int) -> None:
        self.size = (height, width)
        stream = self._container.add_stream(self.codec, rate=self.fps)
        stream.height, stream.width, stream.pix_fmt = height + height % 2, width + width % 2, "yuv420p"
        if self.codec == "libx264":
            stream.options = {"crf": "20", "preset": "veryfast"}
        else:
            stream.bit_rate = 8_000_000
        self._stream = stream

    def write(self, frame: np.ndarray) -> None:
        av = _av()
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise OnedetError(f"{self.path}: frames must be uint8 [H, W, 3] RGB, got {frame.dtype} {list(frame.shape)}")
        h, w = frame.shape[:2]
        if self._stream is None:
            self._open_stream(h, w)
        assert self.size is not None  # set by _open_stream on the first frame
        if (h, w) != self.size:
            raise OnedetError(
                f"{self.path}: frame {self.frames} is {w}x{h}, the video's first {self.size[1]}x{self.size[0]}"
            )
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        for packet in self._stream.encode(picture):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> Path:
        """Flush the encoder, close the file and move it to `path`."""
        if self._stream is None:
            self.abort()
            raise OnedetError(f"{self.path}: no frame to write")
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Close and remove the unfinished file."""
        try:
            self._container.close()
        finally:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()
