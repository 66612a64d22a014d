"""Inference inputs: image files, folders, globs, videos, .txt lists, webcams and stream URLs.

``load_source(source)`` checks the source up front (missing files, unreadable videos and
streams that cannot be opened raise :class:`SourceError` before any output is written) and
returns an iterable of :class:`SourceItem`, one per image or video frame, each holding the
original BGR image. Letterboxing is left to the predictor, which knows the model's input size.
"""

from __future__ import annotations

import glob
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import cv2
import numpy as np

from utils.errors import SourceError
from utils.image_formats import IMG_FORMATS, file_suffix

LOGGER = logging.getLogger(__name__)

VID_FORMATS = ("asf", "avi", "gif", "m4v", "mkv", "mov", "mp4", "mpeg", "mpg", "ts", "wmv", "webm")
STREAM_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://")
STREAM_TIMEOUT_MS = 10000  # give up on a stream URL that does not answer within 10 s
MAX_BAD_FRAMES = 30  # consecutive undecodable frames after which a video is treated as ended


@dataclass(frozen=True)
class VideoMeta:
    """What a video writer needs to reproduce a video or stream.

    fps: frames per second reported by the container (30 when it reports none).
    count: frame count reported by the container (0 for live streams).
    size: (width, height) of the frames in pixels.
    """

    fps: float
    count: int
    size: tuple[int, int]


class SourceItem(NamedTuple):
    """One image or video frame.

    path: the image or video file, or the stream URL / webcam index.
    img0: HxWx3 uint8 BGR image at its original size.
    frame: 1-based frame number within the video or stream (0 for still images).
    kind: 'image', 'video' or 'stream'.
    meta: video properties (None for still images).
    """

    path: str
    img0: np.ndarray
    frame: int
    kind: str
    meta: VideoMeta | None


def is_stream(source: str) -> bool:
    """True for a webcam index ('0', '1', ...) or an rtsp/rtmp/http(s) URL."""
    return source.isnumeric() or source.lower().startswith(STREAM_PREFIXES)


def _open_capture(source: str | int) -> cv2.VideoCapture:
    """Open a video file, webcam index or URL; URLs get an open/read timeout."""
    if isinstance(source, str) and source.lower().startswith(STREAM_PREFIXES):
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS,
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS]
        return cv2.VideoCapture(source, cv2.CAP_ANY, params)
    return cv2.VideoCapture(source)


def _video_meta(cap: cv2.VideoCapture, live: bool) -> VideoMeta:
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if math.isfinite(fps) and 0 < fps < 1000 else 30.0  # streams may report 0 or junk
    count = 0 if live else max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    return VideoMeta(fps=fps, count=count, size=size)


def _list_files(source: str) -> list[Path]:
    """Expand a file, folder, glob or .txt list into image/video files (sorted, checked)."""
    if any(ch in source for ch in "*?["):
        # A pattern such as 'data/*' may also match labels or notes: keep the media silently.
        files = [Path(p) for p in sorted(glob.glob(source, recursive=True))]
        files = [p for p in files if file_suffix(p) in IMG_FORMATS + VID_FORMATS]
        if not files:
            raise SourceError(f"no images or videos match the pattern '{source}'")
    elif Path(source).is_dir():
        files = sorted(p for p in Path(source).iterdir() if p.is_file())
        files = [p for p in files if file_suffix(p) in IMG_FORMATS + VID_FORMATS]
        if not files:
            raise SourceError(f"no images or videos in folder '{source}' "
                              f"(images: {', '.join(IMG_FORMATS)}; videos: {', '.join(VID_FORMATS)})")
    elif Path(source).is_file() and file_suffix(source) == "txt":
        files = _read_list(Path(source))
    elif Path(source).is_file():
        files = [Path(source)]
    else:
        raise SourceError(f"source '{source}' does not exist")
    files = [p for p in files if p.is_file()]
    for p in files:
        if file_suffix(p) not in IMG_FORMATS + VID_FORMATS:
            raise SourceError(f"'{p}' is neither an image ({', '.join(IMG_FORMATS)}) "
                              f"nor a video ({', '.join(VID_FORMATS)})")
    if not files:
        raise SourceError(f"no image or video files in '{source}'")
    return files


def _read_list(txt: Path) -> list[Path]:
    """Paths listed one per line in ``txt``; relative ones are relative to the list's folder."""
    files = []
    for line in txt.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line)
        p = p if p.is_absolute() or p.exists() else txt.parent / p
        if not p.is_file():
            raise SourceError(f"'{line}' listed in {txt} does not exist")
        files.append(p)
    return files


class FrameSource:
    """Iterates over the images and video frames of one source (see :func:`load_source`).

    ``len()`` is the expected number of items (0 for live streams, whose length is unknown).
    ``kind`` is 'stream' for a webcam or URL, else 'files'.
    """

    def __init__(self, source: str, vid_stride: int = 1) -> None:
        if vid_stride < 1:
            raise SourceError(f"--vid-stride must be >= 1, got {vid_stride}")
        self.source = source
        self.vid_stride = vid_stride
        self.kind = "stream" if is_stream(source) else "files"
        self.files: list[Path] = []
        self.metas: dict[Path, VideoMeta] = {}
        if self.kind == "stream":
            self.stream_meta = self._check_stream(source)
        else:
            self.files = _list_files(source)
            for p in self.files:
                if file_suffix(p) in VID_FORMATS:
                    self.metas[p] = self._check_video(p)

    @staticmethod
    def _check_video(path: Path) -> VideoMeta:
        cap = cv2.VideoCapture(str(path))
        try:
            if not cap.isOpened():
                raise SourceError(f"cannot read video '{path}' (unknown codec or corrupt file)")
            return _video_meta(cap, live=False)
        finally:
            cap.release()

    def _check_stream(self, source: str) -> VideoMeta:
        cap = _open_capture(int(source) if source.isnumeric() else source)
        if not cap.isOpened():
            what = "webcam" if source.isnumeric() else "stream"
            raise SourceError(f"cannot open {what} '{source}'")
        self._stream_cap = cap  # kept open: reopening a webcam or stream is slow
        return _video_meta(cap, live=True)

    def __len__(self) -> int:
        if self.kind == "stream":
            return 0
        n_images = sum(1 for p in self.files if p not in self.metas)
        n_frames = sum(math.ceil(m.count / self.vid_stride) for m in self.metas.values())
        return n_images + n_frames

    def __iter__(self) -> Iterator[SourceItem]:
        if self.kind == "stream":
            yield from self._read_stream()
            return
        for p in self.files:
            if p in self.metas:
                yield from self._read_video(p)
            else:
                img = cv2.imread(str(p))
                if img is None:
                    LOGGER.warning(f"WARNING: cannot read image '{p}', skipped")
                    continue
                yield SourceItem(str(p), img, 0, "image", None)

    def _read_video(self, path: Path) -> Iterator[SourceItem]:
        """Frames 1, 1 + s, 1 + 2s ... (s = vid_stride); undecodable frames are skipped."""
        meta = self.metas[path]
        cap = cv2.VideoCapture(str(path))
        frame, bad = 0, 0
        try:
            while True:
                frame += 1
                keep = (frame - 1) % self.vid_stride == 0
                ok, img = cap.read() if keep else (cap.grab(), None)
                if ok:
                    bad = 0
                    if keep:
                        yield SourceItem(str(path), img, frame, "video", meta)
                    continue
                # A failed read before the reported end is a corrupt frame: the decoder
                # resynchronises on the next keyframe, so skip it and keep going.
                bad += 1
                if frame > meta.count or bad >= MAX_BAD_FRAMES:
                    if frame <= meta.count:
                        LOGGER.warning(f"WARNING: {path}: stopped at frame {frame} of {meta.count}, "
                                       f"{bad} frames in a row could not be decoded")
                    break
                LOGGER.warning(f"WARNING: {path}: frame {frame} could not be decoded, skipped")
        finally:
            cap.release()

    def _read_stream(self) -> Iterator[SourceItem]:
        """Frames of a live stream until it ends (a read fails) or the user interrupts."""
        cap = self._stream_cap
        frame = 0
        try:
            while True:
                frame += 1
                keep = (frame - 1) % self.vid_stride == 0
                ok, img = cap.read() if keep else (cap.grab(), None)
                if not ok:
                    if frame == 1:
                        raise SourceError(f"stream '{self.source}' opened but sent no frames")
                    LOGGER.info(f"stream '{self.source}' ended after {frame - 1} frames")
                    break
                if keep:
                    yield SourceItem(self.source, img, frame, "stream", self.stream_meta)
        finally:
            cap.release()


def source_stem(path: str) -> str:
    """File-name stem for outputs of a source item: the file stem, 'webcam0', or the URL's last part."""
    if path.isnumeric():
        return f"webcam{path}"
    if path.lower().startswith(STREAM_PREFIXES):
        parts = [p for p in path.split("?")[0].split("/")[2:] if p]  # drop scheme and query
        stem = Path(parts[-1]).stem if parts else "stream"
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem) or "stream"
    return Path(path).stem


def quiet_video_logs() -> None:
    """Silence OpenCV's and FFmpeg's own console messages (we report problems ourselves).

    Changes process-wide settings, so only entry scripts call it; it must run before the first
    video is opened, when OpenCV reads OPENCV_FFMPEG_LOGLEVEL.
    """
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def load_source(source: str | Path, vid_stride: int = 1) -> FrameSource:
    """Check ``source`` and return an iterable of :class:`SourceItem`.

    Args:
        source: an image or video file, a folder, a glob pattern, a .txt file listing image or
            video paths (one per line), a webcam index ('0') or an rtsp/rtmp/http(s) URL.
        vid_stride: keep every ``vid_stride``-th video/stream frame (1 keeps all).

    Raises:
        SourceError: missing file, empty folder, unsupported file type, a video OpenCV cannot
            open, or a stream that cannot be opened.
    """
    return FrameSource(str(source), vid_stride)
