"""Saving detection results: annotated images and videos, label files, crops, COCO JSON.

:class:`VideoSink` writes annotated frames, one .mp4 per source video or stream at the source
frame rate; :class:`ResultWriter` decides, per frame, what goes where under the run folder.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.annotate import class_name, draw_detections, save_crop
from utils.sources import SourceItem, source_stem
from utils.yolo_txt import write_yolo_txt

LOGGER = logging.getLogger(__name__)

FOURCC = "mp4v"  # MPEG-4 part 2: encoded by every OpenCV build, no external codec needed


class VideoSink:
    """Appends frames to the video file named at each call, switching files when the name changes.

    ``write(path, frame, fps)`` opens ``path`` (suffix forced to .mp4) at ``fps`` and the size of
    the first frame; later frames of another size are resized so the file stays valid.
    ``frames_written[path]`` counts the frames of every file. Use as a context manager, or call
    ``close()``, so the last file is finalised.
    """

    def __init__(self) -> None:
        self._path: Path | None = None
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] = (0, 0)
        self.frames_written: dict[Path, int] = {}

    def write(self, path: Path, frame: np.ndarray, fps: float) -> Path:
        """Append ``frame`` (HxWx3 uint8 BGR) to ``path``; return the file actually written."""
        path = Path(path).with_suffix(".mp4")
        if path != self._path:
            self._open(path, frame, fps)
        h, w = frame.shape[:2]
        if (w, h) != self._size:
            frame = cv2.resize(frame, self._size)
        self._writer.write(frame)
        self.frames_written[path] += 1
        return path

    def _open(self, path: Path, frame: np.ndarray, fps: float) -> None:
        self.close()
        h, w = frame.shape[:2]
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCC), fps, (w, h))
        if not writer.isOpened():
            raise OSError(f"cannot write video {path} ({FOURCC}, {w}x{h} at {fps:.2f} fps)")
        self._path, self._writer, self._size = path, writer, (w, h)
        self.frames_written[path] = 0

    def close(self) -> None:
        """Finalise the open file, if any."""
        if self._writer is not None:
            self._writer.release()
        self._path, self._writer = None, None

    def __enter__(self) -> "VideoSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ResultWriter:
    """Writes the results of each frame under ``save_dir`` (YOLOv5 layout).

    * annotated images under their own names; annotated videos/streams as ``<stem>.mp4`` with
      one frame per frame read, at the source fps divided by ``vid_stride``;
    * ``save_txt``: ``labels/<stem>.txt`` per image, ``labels/<stem>_<frame>.txt`` per video frame
      (1-based frame number), rows ``cls cx cy w h [conf]`` normalized to the original image;
      an image without detections gets an empty file, so every processed frame has one;
    * ``save_crop``: ``crops/<class name>/<stem>[_<frame>].jpg`` from the unannotated image;
    * ``save_json``: ``predictions.json`` in COCO results format (``image_id`` = the label-file
      name, an int when numeric; ``category_id`` = class index; ``bbox`` = x, y, w, h pixels).
    """

    def __init__(self, save_dir: Path, names: list[str], save_img: bool = True, save_txt: bool = False,
                 save_conf: bool = False, save_crop: bool = False, save_json: bool = False,
                 view_img: bool = False, line_thickness: int | None = None, hide_labels: bool = False,
                 hide_conf: bool = False, vid_stride: int = 1) -> None:
        self.save_dir, self.names = Path(save_dir), names
        self.save_img, self.save_txt, self.save_conf = save_img, save_txt, save_conf
        self.save_crop, self.save_json, self.view_img = save_crop, save_json, view_img
        self.draw_args = dict(line_thickness=line_thickness, hide_labels=hide_labels, hide_conf=hide_conf)
        self.vid_stride = vid_stride
        self.video = VideoSink()
        self.json_records: list[dict] = []
        self.n_labels = self.n_images = 0
        if save_txt:
            (self.save_dir / "labels").mkdir(parents=True, exist_ok=True)

    def add(self, item: SourceItem, det: torch.Tensor) -> None:
        """Save the results of one frame: ``det`` (n, 6) [x1, y1, x2, y2, conf, cls] in item.img0 pixels."""
        stem = source_stem(item.path)
        name = stem if item.kind == "image" else f"{stem}_{item.frame}"
        det = det.detach().float().cpu()
        if self.save_txt:
            self._write_txt(self.save_dir / "labels" / f"{name}.txt", det, item.img0.shape[:2])
        if self.save_crop:
            for *xyxy, _, cls in det.tolist():
                save_crop(item.img0, xyxy, self.save_dir / "crops" / self._name(int(cls)) / f"{name}.jpg")
        if self.save_json:
            self._add_json(name, det)
        if self.save_img or self.view_img:
            annotated = draw_detections(item.img0.copy(), det, self.names, **self.draw_args)
            if self.save_img:
                self._save_image(item, stem, annotated)
            if self.view_img:
                self._show(str(item.path), annotated)

    def _name(self, cls: int) -> str:
        return class_name(self.names, cls)

    def _write_txt(self, path: Path, det: torch.Tensor, shape_hw: tuple[int, int]) -> None:
        write_yolo_txt(path, det, shape_hw, self.save_conf)
        self.n_labels += 1

    def _add_json(self, name: str, det: torch.Tensor) -> None:
        image_id = int(name) if name.isnumeric() else name
        for x1, y1, x2, y2, conf, cls in det.tolist():
            self.json_records.append({"image_id": image_id, "category_id": int(cls),
                                      "bbox": [round(v, 3) for v in (x1, y1, x2 - x1, y2 - y1)],
                                      "score": round(conf, 5)})

    def _save_image(self, item: SourceItem, stem: str, img: np.ndarray) -> None:
        if item.kind == "image":
            path = self.save_dir / Path(item.path).name
            # Formats OpenCV reads but cannot write (mpo, dng ...) are saved as JPEG.
            if not cv2.imwrite(str(path), img):
                cv2.imwrite(str(path.with_suffix(".jpg")), img)
            self.n_images += 1
        else:
            self.video.write(self.save_dir / stem, img, item.meta.fps / self.vid_stride)

    def _show(self, title: str, img: np.ndarray) -> None:
        try:
            cv2.imshow(title, img)
            cv2.waitKey(1)
        except cv2.error:  # opencv-python-headless has no GUI
            LOGGER.warning("WARNING: --view-img: this OpenCV build cannot open windows; not showing frames")
            self.view_img = False

    def close(self) -> None:
        """Finalise videos and write predictions.json."""
        self.video.close()
        if self.save_json:
            with open(self.save_dir / "predictions.json", "w") as f:
                json.dump(self.json_records, f)

    def report(self) -> str:
        """'Results saved to <dir>' with what was written."""
        parts = [f"{self.n_images} images"] if self.n_images else []
        parts += [f"{len(self.video.frames_written)} videos"] if self.video.frames_written else []
        parts += [f"{self.n_labels} label files in labels/"] if self.save_txt else []
        parts += [f"{len(self.json_records)} boxes in predictions.json"] if self.save_json else []
        return f"Results saved to {self.save_dir}" + (f" ({', '.join(parts)})" if parts else "")
