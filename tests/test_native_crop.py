"""Native-resolution crops: window choice, labels in crop pixels, padding, scale, dataset wiring."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.boxes import xywh2xyxy
from utils.data.augment import Sample
from utils.data.dataset import YoloDataset
from utils.data.native_crop import choose_window, crop_at, native_crop
from utils.errors import ConfigError

GRAY = 114  # letterbox/pad gray (YOLOv5 convention)


def white_boxes_image(w: int, h: int, boxes: list[tuple[int, int, int, int]]) -> Sample:
    """Black (h, w, 3) image with white filled integer xyxy boxes, labelled class k for box k."""
    img = np.zeros((h, w, 3), np.uint8)
    for x1, y1, x2, y2 in boxes:
        img[y1:y2, x1:x2] = 255
    return Sample(img, np.array(boxes, np.float32).reshape(-1, 4), np.arange(len(boxes)), [])


def inside(box: np.ndarray, x0: int, y0: int, size: int) -> bool:
    return bool(box[0] >= x0 and box[1] >= y0 and box[2] <= x0 + size and box[3] <= y0 + size)


def test_biased_window_contains_the_object_and_stays_in_the_image():
    one = np.array([[300, 200, 310, 212]], np.float32)
    for seed in range(40):
        x0, y0 = choose_window((480, 640), 64, one, bias=1.0, rng=np.random.default_rng(seed))
        assert 0 <= x0 <= 640 - 64 and 0 <= y0 <= 480 - 64
        assert inside(one[0], x0, y0, 64)
    several = np.array([[5, 5, 20, 20], [600, 400, 630, 450], [300, 10, 340, 30]], np.float32)
    held = set()
    for seed in range(60):
        x0, y0 = choose_window((480, 640), 64, several, bias=1.0, rng=np.random.default_rng(seed))
        hit = [k for k, b in enumerate(several) if inside(b, x0, y0, 64)]
        assert hit, f"seed {seed}: window ({x0}, {y0}) holds no object"
        held.update(hit)
    assert held == {0, 1, 2}  # the object is chosen at random, not always the same one
    big = np.array([[100, 100, 300, 180]], np.float32)  # wider and taller than the window
    x0, y0 = choose_window((480, 640), 64, big, bias=1.0, rng=np.random.default_rng(0))
    assert (x0, y0) == (168, 108)  # centred on it: ((100 + 300 - 64) / 2, (100 + 180 - 64) / 2)


def test_unbiased_window_is_uniform_over_the_image():
    one = np.array([[300, 200, 310, 212]], np.float32)
    starts = np.array([choose_window((480, 640), 64, one, bias=0.0, rng=np.random.default_rng(s)) for s in range(200)])
    assert (starts >= 0).all() and (starts[:, 0] <= 576).all() and (starts[:, 1] <= 416).all()
    holding = sum(inside(one[0], x0, y0, 64) for x0, y0 in starts)
    assert holding < 20  # a 64 px window holds this object for about 1-2% of uniform starts
    assert starts[:, 0].min() < 100 and starts[:, 0].max() > 476  # spread over the whole width


def test_crop_labels_are_in_crop_pixels_hand_computed():
    smp = white_boxes_image(200, 100, [(50, 20, 60, 30), (30, 40, 80, 50), (150, 50, 160, 60), (102, 10, 106, 20)])
    out = crop_at(smp, 40, 5, 64)  # window x 40..104, y 5..69
    assert out.img.shape == (64, 64, 3)
    # box 0 whole: minus (40, 5); box 1 cut at x = 40; box 2 outside -> dropped; box 3 cut at x = 104
    expected = np.array([[10, 15, 20, 25], [0, 35, 40, 45], [62, 5, 64, 15]], np.float32)
    np.testing.assert_array_equal(out.boxes, expected)
    assert out.cls.tolist() == [0, 1, 3]
    assert np.array_equal(out.img, smp.img[5:69, 40:104])  # pixels are the window itself


def test_image_smaller_than_the_window_is_padded():
    smp = white_boxes_image(40, 30, [(5, 5, 15, 10)])
    out = crop_at(smp, -12, -17, 64)
    np.testing.assert_array_equal(out.boxes, [[17, 22, 27, 27]])
    assert (out.img[22:27, 17:27] == 255).all()
    assert (out.img[:17] == GRAY).all() and (out.img[:, :12] == GRAY).all() and (out.img[47:] == GRAY).all()
    assert (out.img[17:47, 12:52] != GRAY).all()  # the whole image is inside the window
    for seed in range(10):  # the window may start anywhere that keeps the image inside it
        x0, y0 = choose_window((30, 40), 64, smp.boxes, 0.5, np.random.default_rng(seed))
        assert -24 <= x0 <= 0 and -34 <= y0 <= 0


def test_polygon_cut_by_the_window_gives_the_box_of_its_visible_part():
    tri = np.array([[10, 10], [90, 10], [10, 90]], np.float32)  # right triangle, box [10, 10, 90, 90]
    smp = Sample(np.zeros((100, 100, 3), np.uint8), np.array([[10, 10, 90, 90]], np.float32), np.array([0]), [tri])
    out = crop_at(smp, 50, 0, 50)  # window x 50..100: the triangle's part there is x 50..90, y 10..50
    np.testing.assert_allclose(out.boxes, [[0, 10, 40, 50]], atol=1e-4)
    assert len(out.segments) == 1 and out.segments[0][:, 0].min() >= 0


def test_native_scale_resizes_before_cropping():
    smp = white_boxes_image(200, 200, [(100, 100, 120, 140)])
    out = native_crop(smp, 64, scale=0.5, bias=1.0, rng=np.random.default_rng(0))
    assert out.img.shape == (64, 64, 3) and len(out.boxes) == 1
    np.testing.assert_allclose(out.boxes[0, 2:] - out.boxes[0, :2], [10, 20], atol=1e-4)


def write_split(root: Path, w: int, h: int, n: int, seed: int, obj_wh: tuple[int, int] | None = None) -> list[str]:
    """n images (w x h, gray 40) with 3 coloured rectangles each and YOLO labels; returns image paths.

    Rectangles are obj_wh pixels when given, else random sizes 6..29 px.
    """
    rng = np.random.default_rng(seed)
    files = []
    for k in range(n):
        img = np.full((h, w, 3), 40, np.uint8)
        lines = []
        for j in range(3):
            bw, bh = obj_wh if obj_wh else (int(rng.integers(6, 30)), int(rng.integers(6, 30)))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            img[y:y + bh, x:x + bw] = (60 + 50 * j, 200 - 40 * k, 90 + 30 * j)
            lines.append(f"{j} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
        p = root / "images" / "train" / f"{k}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), img)
        lbl = root / "labels" / "train" / f"{k}.txt"
        lbl.parent.mkdir(parents=True, exist_ok=True)
        lbl.write_text("\n".join(lines) + "\n")
        files.append(str(p))
    return files


STILL = {"hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "albumentations": 0.0, "degrees": 0.0, "translate": 0.0,
         "scale": 0.0, "fliplr": 0.0, "flipud": 0.0}


@pytest.mark.parametrize("mosaic", [1.0, 0.0])
def test_training_samples_keep_objects_at_native_size(tmp_path: Path, mosaic: float):
    # 320 x 240 frames at imgsz 64: a whole-frame resize would shrink the 8 x 12 objects 5 times
    files = write_split(tmp_path, 320, 240, 4, seed=1, obj_wh=(8, 12))
    ds = YoloDataset(files, imgsz=64, augment=True,
                     hyp={**STILL, "mosaic": mosaic, "mosaic9": 0.0, "native_crop": 1.0, "crop_bias": 1.0})
    whole = 0
    for k in range(12):
        img, labels, _, shapes = ds[k % 4]
        assert img.shape == (3, 64, 64) and shapes is None
        wh = (labels[:, 4:6] * 64).numpy()
        assert (wh <= np.array([8, 12]) + 1e-3).all()  # never larger than the original objects
        whole += int(np.all(np.abs(wh - [8, 12]) < 1e-3, 1).sum())
    assert whole >= 6  # biased crops show whole objects at their native 8 x 12 px


def test_dataset_native_crop_boxes_follow_pixels(tmp_path: Path):
    files = write_split(tmp_path, 300, 200, 4, seed=2)
    ds = YoloDataset(files, imgsz=64, augment=True, hyp={**STILL, "mosaic": 1.0, "native_crop": 1.0})
    for k in range(8):
        img, labels, _, _ = ds[k % 4]
        bgr = np.ascontiguousarray(img.permute(1, 2, 0).numpy())
        for x1, y1, x2, y2 in (xywh2xyxy(labels[:, 2:]) * 64).numpy():
            patch = bgr[int(round(y1)):int(round(y2)), int(round(x1)):int(round(x2))]
            assert patch.size and (patch.max(2) > 45).all() and not (patch == GRAY).all(2).any()  # object, no bg or pad


def test_native_crop_off_is_byte_identical_to_the_whole_frame_pipeline(tmp_path: Path):
    """With native_crop 0 (the default) a seeded run gives the bytes of the whole-frame pipeline.

    Recorded before native crops existed; re-recorded for two deliberate pipeline changes since
    (filter_boxes' minimum from 2 px to 1 px, vectorised copy-paste drawing its numbers in another order).
    """
    files = write_split(tmp_path, 160, 120, 4, seed=7)
    ds = YoloDataset(files, imgsz=64, augment=True,
                     hyp={"albumentations": 0.0, "mosaic9": 0.5, "copy_paste": 0.5, "degrees": 5.0})
    ds.reseed(3)
    h = hashlib.sha256()
    for k in range(8):
        img, labels, _, _ = ds[k % 4]
        h.update(img.numpy().tobytes())
        h.update(labels.numpy().tobytes())
    assert h.hexdigest() == "dbce42f1ee7f73d3cfb1d9b5366f82cd41c257ec5038e0fd736cfed1d8afe32f"


@pytest.mark.parametrize("bad", [{"native_crop": 1.5}, {"crop_bias": -0.1}, {"native_scale": 0.0}])
def test_bad_native_crop_hyps_raise(tmp_path: Path, bad: dict):
    files = write_split(tmp_path, 64, 48, 1, seed=0)
    with pytest.raises(ConfigError, match=next(iter(bad))):
        YoloDataset(files, imgsz=32, augment=True, hyp=bad)
