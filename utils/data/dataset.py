"""YoloDataset: images + YOLO labels -> augmented, letterboxed training/validation samples.

Per item: load (OpenCV, long side resized to ``imgsz``, or in training with probability hyp
``native_crop`` an imgsz x imgsz crop of the image at native resolution times ``native_scale``,
see utils/data/native_crop.py) -> small-object copy-paste (training)
-> mosaic of 4 or 9 images or letterbox -> random perspective -> albumentations, HSV, flips
(training) -> ``(img uint8 (3, H, W) RGB, labels float32 (n, 6) [0, cls, cx, cy, w, h]
normalized, path, shapes)``. Boxes are xyxy pixels of the current image until the very end.

``shapes`` is ``((h0, w0), ((ratio_h, ratio_w), (padw, padh)))``: a box in the output maps back to
the original image by ``x0 = (x - padw) / ratio_w``, ``y0 = (y - padh) / ratio_h`` (YOLOv5
convention). Mosaic samples and native crops have no such mapping and get ``None``.

Small-object oversampling (hyp ``small_oversample`` = k) is an index list: ``dataset.indices`` holds
every image once and each image with a small object (box area < 32x32 px at the original size)
k times, so ``len(dataset)`` grows and any sampler (shuffle or not) sees the repeats.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from utils.boxes import xywhn2xyxy, xyxy2xywhn
from utils.data.augment import (PixelAugment, Sample, augment_hsv, flip_lr, flip_ud, letterbox, rand_bool,
                                random_perspective, resize_long_side)
from utils.data.copy_paste import copy_paste_small
from utils.data.image_check import read_image
from utils.data.label_cache import load_labels
from utils.data.mosaic import mixup, mosaic4, mosaic9
from utils.data.native_crop import native_crop
from utils.errors import ConfigError
from utils.hyp import load_hyp

LOGGER = logging.getLogger(__name__)
SMALL_AREA = 32 * 32  # COCO "small", in original-image pixels


def rect_batch_shapes(shapes_wh: np.ndarray, batch_size: int, imgsz: int, stride: int,
                      pad: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """YOLOv5 rectangular batches for images already sorted by aspect ratio (h / w).

    shapes_wh: (N, 2) original (w, h). Returns (batch index (N,), batch shapes int (nb, 2) as
    (h, w)): the smallest stride multiples that hold every image of the batch at long side imgsz.
    """
    ar = shapes_wh[:, 1] / shapes_wh[:, 0]
    bi = np.arange(len(ar)) // batch_size
    nb = int(bi[-1]) + 1
    rel = np.ones((nb, 2))
    for b in range(nb):
        ari = ar[bi == b]
        lo, hi = ari.min(), ari.max()
        if hi < 1:  # all landscape: full width, height of the tallest
            rel[b] = [hi, 1]
        elif lo > 1:  # all portrait: full height, width of the widest
            rel[b] = [1, 1 / lo]
    return bi, (np.ceil(rel * imgsz / stride + pad).astype(int) * stride)


def small_object_indices(labels: list[np.ndarray], shapes_wh: np.ndarray, repeats: int) -> list[int]:
    """Index list where images with a box under 32x32 px (original size) appear ``repeats`` times."""
    out = []
    for i, (lb, (w, h)) in enumerate(zip(labels, shapes_wh)):
        small = len(lb) and bool(((lb[:, 3] * w) * (lb[:, 4] * h) < SMALL_AREA).any())
        out += [i] * (repeats if small else 1)
    return out


def _check_repeats(value: Any) -> int:
    """hyp small_oversample must be an integer >= 1."""
    if isinstance(value, bool) or not float(value).is_integer() or value < 1:
        raise ConfigError(f"hyp 'small_oversample' must be an integer >= 1, got {value!r}")
    return int(value)


def _check_native(hyp: dict[str, Any]) -> None:
    """hyp native_crop and crop_bias are probabilities; native_scale is a positive factor."""
    for key in ("native_crop", "crop_bias"):
        if not 0 <= hyp[key] <= 1:
            raise ConfigError(f"hyp '{key}' must be a probability in [0, 1], got {hyp[key]!r}")
    if not hyp["native_scale"] > 0:
        raise ConfigError(f"hyp 'native_scale' must be > 0, got {hyp['native_scale']!r}")


class YoloDataset(Dataset):
    """Detection dataset over image files with YOLO txt labels (see the module docstring).

    Attributes: img_files (list[str]), label_files, labels (list of float32 (n, 5) [cls, cx, cy, w,
    h] normalized), segments, shapes (int (N, 2) original (w, h)), damaged (bool per image: decode
    quietly), indices (item -> image index), batch_shapes / batch_index (rect only).
    ``nc`` (the dataset YAML's number of names) skips images with class ids >= nc.
    """

    def __init__(self, img_files: list[str], imgsz: int = 640, augment: bool = False,
                 hyp: dict[str, Any] | None = None, rect: bool = False, batch_size: int = 16,
                 stride: int = 32, cache: str | None = None, pad: float = 0.0, prefix: str = "",
                 nc: int | None = None) -> None:
        if cache not in (None, "ram"):
            raise ConfigError(f"cache must be None or 'ram', got {cache!r}")
        if augment and hyp is None:
            raise ValueError("augment=True needs a hyp dict (augmentation settings)")
        self.imgsz, self.augment, self.rect, self.stride, self.prefix = imgsz, augment, rect, stride, prefix
        self.hyp = {**load_hyp(), **(hyp or {})}  # keys a partial hyp dict leaves out: the defaults file
        _check_native(self.hyp)
        ls = load_labels(list(img_files), prefix=prefix, nc=nc)
        self.img_files, self.label_files, self.damaged = ls.img_files, ls.label_files, ls.damaged
        self.labels, self.segments, self.shapes = ls.labels, ls.segments, ls.shapes
        self.ims: list[np.ndarray | None] = [None] * len(self.img_files)
        self.mosaic = augment and not rect  # rect keeps each batch's aspect; mosaic would undo it
        if rect:
            self._sort_by_aspect()
            self.batch_index, self.batch_shapes = rect_batch_shapes(self.shapes, batch_size, imgsz, stride, pad)
        self.indices = self._build_indices()
        self.native_p = self._native_probability()
        self.rng = np.random.default_rng(0)
        self.pixel_aug = PixelAugment(seed=0) if augment and self.hyp["albumentations"] > 0 else None
        if cache == "ram":
            self._cache_images()

    def _sort_by_aspect(self) -> None:
        """Order every per-image list by h / w so that rect batches group similar shapes."""
        order = np.argsort(self.shapes[:, 1] / self.shapes[:, 0], kind="stable")
        for name in ("img_files", "label_files", "labels", "segments", "damaged", "ims"):
            seq = getattr(self, name)
            setattr(self, name, [seq[i] for i in order])
        self.shapes = self.shapes[order]

    def _build_indices(self) -> list[int]:
        """Item -> image index; repeats images with small objects when training (small_oversample)."""
        repeats = _check_repeats(self.hyp["small_oversample"]) if self.augment else 1
        if repeats > 1 and self.rect:
            LOGGER.warning("%sWARNING: small_oversample ignored with rect batches (it would mix shapes)", self.prefix)
            repeats = 1
        if repeats == 1:
            return list(range(len(self.img_files)))
        return small_object_indices(self.labels, self.shapes, repeats)

    def _native_probability(self) -> float:
        """hyp native_crop when training, else 0 (validation sees whole frames or uses --slice)."""
        p = float(self.hyp["native_crop"]) if self.augment else 0.0
        if p > 0 and self.rect:
            LOGGER.warning("%sWARNING: native_crop ignored with rect batches (crops are square)", self.prefix)
            p = 0.0
        return p

    def _read(self, i: int) -> np.ndarray:
        """Read image i from disk as 3-channel BGR at its original size (damaged files: decoder quiet)."""
        img = read_image(self.img_files[i], quiet=self.damaged[i])  # grayscale files come back 3-channel
        if img is None:
            raise FileNotFoundError(f"image {self.img_files[i]} can no longer be read")
        return img

    def _read_resized(self, i: int) -> np.ndarray:
        """Read image i from disk as 3-channel BGR with long side imgsz."""
        return resize_long_side(self._read(i), self.imgsz, fast_down=self.augment)

    def _cache_images(self) -> None:
        """Keep every resized image in memory (uint8), decoded by a small thread pool."""
        with ThreadPoolExecutor(2) as pool:
            self.ims = list(pool.map(self._read_resized, range(len(self.img_files))))
        mb = sum(im.nbytes for im in self.ims) / 2**20
        LOGGER.info("%sCached %d images in RAM (%.0f MB)", self.prefix, len(self.ims), mb)

    def reseed(self, seed: int) -> None:
        """Restart the augmentation random streams (once per DataLoader worker, or by build_dataloader)."""
        self.rng = np.random.default_rng(seed)
        if self.pixel_aug is not None:
            self.pixel_aug.reseed(seed)

    def __len__(self) -> int:
        return len(self.indices)

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """Image i resized to long side imgsz -> (img (h, w, 3) BGR, (h0, w0) original, (h, w) resized)."""
        img = self.ims[i] if self.ims[i] is not None else self._read_resized(i)
        w0, h0 = (int(v) for v in self.shapes[i])
        return img, (h0, w0), img.shape[:2]

    def _labelled(self, i: int, img: np.ndarray) -> Sample:
        """Image i's labels in pixels of ``img`` (image i at any size): xyxy boxes, polygons."""
        h, w = img.shape[:2]
        lb = self.labels[i]
        segs = [s * np.array([w, h], np.float32) for s in self.segments[i]]
        return Sample(img, xywhn2xyxy(lb[:, 1:], w, h), lb[:, 0].astype(np.int64), segs)

    def _draw_native(self) -> bool:
        """Whether the next training sample is a native-resolution crop (probability hyp native_crop)."""
        return rand_bool(self.rng, self.native_p)

    def load_sample(self, i: int, native: bool = False) -> Sample:
        """Image i with pixel xyxy boxes; small-object copy-paste when training.

        The image is the whole frame at long side imgsz, or with ``native`` an imgsz x imgsz crop of
        the original (always read from disk: the RAM cache holds resized frames) times native_scale.
        """
        if native:
            hp = self.hyp
            sample = native_crop(self._labelled(i, self._read(i)), self.imgsz, scale=float(hp["native_scale"]),
                                 bias=float(hp["crop_bias"]), rng=self.rng)
        else:
            sample = self._labelled(i, self.load_image(i)[0])
        img, boxes, cls, segs = sample
        if self.augment and self.hyp["copy_paste"] > 0:
            img, boxes, cls, seg_out = copy_paste_small(
                img, boxes, cls, segs if segs else None, p=self.hyp["copy_paste"], max_area=self.hyp["cp_area"],
                times=int(self.hyp["cp_times"]), rng=self.rng)
            segs = seg_out or []
        return Sample(img, boxes, cls, segs)

    def _target_shape(self, i: int) -> tuple[int, int]:
        """Letterbox target (h, w): the batch's rect shape, or a square imgsz."""
        if self.rect:
            return tuple(int(v) for v in self.batch_shapes[self.batch_index[i]])
        return self.imgsz, self.imgsz

    def _letterboxed(self, i: int, sample: Sample, scaleup: bool) -> tuple[Sample, tuple]:
        """Letterbox a loaded sample to its target shape -> (sample, shapes for mapping back)."""
        w0, h0 = (int(v) for v in self.shapes[i])
        h, w = sample.img.shape[:2]
        img, (rw, rh), (padw, padh) = letterbox(sample.img, self._target_shape(i), scaleup=scaleup)
        gain = np.array([rw, rh, rw, rh], np.float32)
        boxes = sample.boxes * gain + np.array([padw, padh, padw, padh], np.float32)
        segs = [s * gain[:2] + np.array([padw, padh], np.float32) for s in sample.segments]
        shapes = ((h0, w0), ((h / h0 * rh, w / w0 * rw), (padw, padh)))
        return Sample(img, boxes, sample.cls, segs), shapes

    def _perspective(self, sample: Sample, border: tuple[int, int]) -> Sample:
        """random_perspective with this dataset's hyp and RNG."""
        hp = self.hyp
        return random_perspective(sample, degrees=hp["degrees"], translate=hp["translate"], scale=hp["scale"],
                                  shear=hp["shear"], perspective=hp["perspective"], border=border, rng=self.rng)

    def _mosaic(self, i: int) -> Sample:
        """4- or 9-image mosaic around image i (partners drawn from the index list), cropped to imgsz."""
        k = 9 if rand_bool(self.rng, self.hyp["mosaic9"]) else 4
        others = self.rng.integers(0, len(self.indices), k - 1)
        samples = [self.load_sample(j, self._draw_native()) for j in [i, *(self.indices[o] for o in others)]]
        m = (mosaic9 if k == 9 else mosaic4)(samples, self.imgsz, self.rng)
        return self._perspective(m, (-self.imgsz // 2, -self.imgsz // 2))

    def _train_sample(self, i: int) -> tuple[Sample, tuple | None]:
        """Full training augmentation of image i -> (sample, shapes or None for mosaics)."""
        hp, rng = self.hyp, self.rng
        shapes = None
        if self.mosaic and rand_bool(rng, hp["mosaic"]):
            sample = self._mosaic(i)
            if rand_bool(rng, hp["mixup"]):
                sample = mixup(sample, self._mosaic(self.indices[int(rng.integers(len(self.indices)))]), rng)
        elif self._draw_native():  # already imgsz x imgsz at native scale: no letterbox, no mapping back
            sample = self._perspective(self.load_sample(i, native=True), (0, 0))
        else:
            sample, shapes = self._letterboxed(i, self.load_sample(i), scaleup=True)
            sample = self._perspective(sample, (0, 0))
        img, boxes = sample.img, sample.boxes
        if self.pixel_aug is not None and rand_bool(rng, hp["albumentations"]):
            img = self.pixel_aug(img)
        augment_hsv(img, hp["hsv_h"], hp["hsv_s"], hp["hsv_v"], rng)
        if rand_bool(rng, hp["flipud"]):
            img, boxes = flip_ud(img, boxes)
        if rand_bool(rng, hp["fliplr"]):
            img, boxes = flip_lr(img, boxes)
        return Sample(img, boxes, sample.cls, []), shapes

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str, tuple | None]:
        """-> (img uint8 (3, H, W) RGB, labels float32 (n, 6) [0, cls, cx, cy, w, h] normalized, path, shapes)."""
        i = self.indices[index]
        if self.augment:
            sample, shapes = self._train_sample(i)
        else:  # validation: exact geometry, no filtering, so the ground truth stays complete
            sample, shapes = self._letterboxed(i, self.load_sample(i), scaleup=False)
        img = sample.img
        labels = np.zeros((len(sample.boxes), 6), np.float32)
        labels[:, 1] = sample.cls
        labels[:, 2:] = xyxy2xywhn(sample.boxes, img.shape[1], img.shape[0])
        chw_rgb = np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB).transpose(2, 0, 1))
        return torch.from_numpy(chw_rgb), torch.from_numpy(labels), self.img_files[i], shapes

    @staticmethod
    def collate_fn(batch: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...], tuple]:
        """Stack images (B, 3, H, W) uint8 and concatenate labels (N, 6) with column 0 = image index in batch."""
        imgs, labels, paths, shapes = zip(*batch)
        for k, lb in enumerate(labels):
            lb[:, 0] = k
        return torch.stack(imgs, 0), torch.cat(labels, 0), paths, shapes
