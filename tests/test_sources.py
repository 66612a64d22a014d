"""Inference inputs: files, folders, globs, lists, videos, streams, corrupt frames, clear errors."""

from __future__ import annotations

import functools
import http.server
import logging
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.data.config import load_data_config
from utils.errors import SourceError
from utils.sources import load_source, source_stem

W, H = 96, 64


def write_video(path: Path, n: int = 6, fourcc: str = "mp4v", fps: float = 10.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (W, H))
    for i in range(n):
        img = np.full((H, W, 3), 20 * i, np.uint8)
        cv2.rectangle(img, (5 + 10 * i, 20), (20 + 10 * i, 40), (255, 255, 255), -1)
        writer.write(img)
    writer.release()
    return path


def write_image(path: Path, value: int = 128) -> Path:
    cv2.imwrite(str(path), np.full((H, W, 3), value, np.uint8))
    return path


def test_image_folder_glob_and_list(tmp_path):
    a, b = write_image(tmp_path / "a.jpg"), write_image(tmp_path / "b.png")
    (tmp_path / "notes.txt").write_text("not media")
    write_video(tmp_path / "c.mp4", n=3)
    items = list(load_source(tmp_path))
    assert [(Path(i.path).name, i.frame, i.kind) for i in items] == [
        ("a.jpg", 0, "image"), ("b.png", 0, "image"), ("c.mp4", 1, "video"), ("c.mp4", 2, "video"), ("c.mp4", 3, "video")]
    assert items[0].img0.shape == (H, W, 3) and items[0].meta is None
    assert items[2].meta.size == (W, H) and items[2].meta.count == 3 and items[2].meta.fps == pytest.approx(10)
    assert len(load_source(tmp_path)) == 5
    assert [Path(i.path).name for i in load_source(str(tmp_path / "*.*"))] == ["a.jpg", "b.png", "c.mp4", "c.mp4", "c.mp4"]
    lst = tmp_path / "sub" / "list.txt"
    lst.parent.mkdir()
    lst.write_text(f"../b.png\n\n{a}\n")  # relative to the list's folder, and absolute
    assert [Path(i.path).name for i in load_source(lst)] == ["b.png", "a.jpg"]
    assert [i.kind for i in load_source(b)] == ["image"]


def test_datasets_and_sources_accept_the_same_image_files(tmp_path):
    """Inference and training read the same image extensions, in any letter case."""
    folder = tmp_path / "ds" / "images" / "train"
    folder.mkdir(parents=True)
    write_image(folder / "a.JPG")
    write_image(folder / "b.tif")
    write_image(folder / "c.webp")
    cv2.imwrite(str(folder / "d.pfm"), np.full((H, W, 3), 0.5, np.float32))
    (folder / "e.mpo").write_bytes(cv2.imencode(".jpg", np.zeros((H, W, 3), np.uint8))[1].tobytes())  # JPEG inside
    (folder / "notes.txt").write_text("not an image")
    (folder / "f.csv").write_text("1,2\n")
    expected = ["a.JPG", "b.tif", "c.webp", "d.pfm", "e.mpo"]
    assert [Path(i.path).name for i in load_source(folder)] == expected
    yaml_file = tmp_path / "d.yaml"
    yaml_file.write_text("path: ds\ntrain: images/train\nval: images/train\nnames: [x]\n")
    assert [Path(f).name for f in load_data_config(yaml_file)["train"]] == expected


def test_video_frames_and_stride(tmp_path):
    video = write_video(tmp_path / "v.avi", n=7, fourcc="MJPG")
    src = load_source(video, vid_stride=3)
    assert len(src) == 3
    items = list(src)
    assert [i.frame for i in items] == [1, 4, 7]
    assert all(i.img0.shape == (H, W, 3) and i.kind == "video" for i in items)


def test_corrupt_frame_is_skipped_with_warning(tmp_path, caplog):
    data = bytearray(write_video(tmp_path / "v.avi", n=8, fourcc="MJPG").read_bytes())
    jpeg_starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    assert len(jpeg_starts) == 8
    start = jpeg_starts[4]  # wipe the header of frame 5 so it cannot be decoded
    data[start:start + 200] = bytes(200)
    bad = tmp_path / "bad.avi"
    bad.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        frames = [i.frame for i in load_source(bad)]
    assert frames == [1, 2, 3, 4, 6, 7, 8]
    assert "frame 5" in caplog.text


@pytest.mark.parametrize("make,match", [
    (lambda d: d / "missing.jpg", "does not exist"),
    (lambda d: d / "empty_dir", "no images or videos"),
    (lambda d: d / "x.csv", "neither an image"),
    (lambda d: d / "broken.mp4", "cannot read video"),
    (lambda d: d / "list.txt", "does not exist"),
    (lambda d: str(d / "*.png"), "no images or videos match"),
])
def test_bad_sources_raise_one_line(tmp_path, make, match):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "x.csv").write_text("1,2")
    (tmp_path / "broken.mp4").write_bytes(b"this is not a video" * 10)
    (tmp_path / "list.txt").write_text("nowhere.jpg\n")
    with pytest.raises(SourceError, match=match) as e:
        load_source(make(tmp_path))
    assert "\n" not in str(e.value)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_video(tmp_path):
    """URL of a 6-frame video served over HTTP on localhost (a stream without network access)."""
    write_video(tmp_path / "cam.mp4", n=6)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/cam.mp4"
    server.shutdown()
    server.server_close()


def test_http_stream(http_video):
    src = load_source(http_video)
    assert src.kind == "stream" and len(src) == 0  # a stream's length is unknown
    items = list(src)
    assert [i.frame for i in items] == [1, 2, 3, 4, 5, 6]
    assert all(i.kind == "stream" and i.img0.shape == (H, W, 3) and i.path == http_video for i in items)
    assert items[0].meta.size == (W, H) and items[0].meta.fps == pytest.approx(10)
    assert [i.frame for i in load_source(http_video, vid_stride=2)] == [1, 3, 5]


def test_unopenable_stream_raises():
    # Port 9 (discard) on localhost refuses connections at once: no network needed.
    with pytest.raises(SourceError, match="cannot open stream"):
        load_source("rtsp://127.0.0.1:9/live")


def test_output_stems():
    assert source_stem("data/clip.mp4") == "clip"
    assert source_stem("0") == "webcam0"
    assert source_stem("rtsp://user:pw@10.0.0.1:554/live/cam1.sdp?x=1") == "cam1"
