"""Geometric and pixel transforms: boxes must follow the pixels exactly."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.data.augment import (PixelAugment, Sample, augment_hsv, flip_lr, flip_ud, letterbox, random_perspective,
                                resize_long_side)
from utils.boxes import xywh2xyxy
from utils.data.dataset import YoloDataset
from utils.data.mosaic import mixup, mosaic4, mosaic9
from utils.data.polygon import clip_polygon

WHITE, DARK = 200, 150  # thresholds: inside an object vs. anything else (black image or grey border)


def rect_image(w: int, h: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """Black (h, w, 3) image with a white filled rectangle covering pixel box xyxy (x2, y2 exclusive)."""
    img = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = 255
    return img


def assert_box_matches_pixels(img: np.ndarray, box: np.ndarray, margin: float = 1.5) -> None:
    """The box covers the only white object: all white inside (shrunk by margin), all dark outside (grown)."""
    h, w = img.shape[:2]
    gray = img.max(2)
    ys, xs = np.mgrid[0:h, 0:w] + 0.5  # pixel centres
    x1, y1, x2, y2 = box
    inside = (xs > x1 + margin) & (xs < x2 - margin) & (ys > y1 + margin) & (ys < y2 - margin)
    outside = (xs < x1 - margin) | (xs > x2 + margin) | (ys < y1 - margin) | (ys > y2 + margin)
    assert inside.any(), f"box {box} has no interior pixels"
    assert (gray[inside] > WHITE).all(), f"box {box}: not all white inside"
    assert (gray[outside] < DARK).all(), f"box {box}: white pixels outside"


def assert_boxes_match_objects(img: np.ndarray, boxes: np.ndarray, margin: float = 1.5) -> int:
    """Several objects: every box is white inside, and every white object not cut by the image edge
    has a box whose four sides lie within ``margin`` of its pixel extent. Returns objects matched."""
    gray = img.max(2)
    h, w = gray.shape
    for x1, y1, x2, y2 in boxes:
        if min(x2 - x1, y2 - y1) > 2 * margin + 1:  # thinner slivers have no interior to test
            inner = gray[int(np.ceil(y1 + margin)):int(y2 - margin), int(np.ceil(x1 + margin)):int(x2 - margin)]
            assert (inner > WHITE).all(), f"box {(x1, y1, x2, y2)}: not all white inside"
    n, _, stats, _ = cv2.connectedComponentsWithStats((gray > 127).astype(np.uint8))
    matched = 0
    for x, y, bw, bh, area in stats[1:]:
        if x == 0 or y == 0 or x + bw == w or y + bh == h or area < 4:
            continue  # cut by the image edge: may legitimately have been dropped as mostly invisible
        ext = np.array([x, y, x + bw, y + bh], np.float32)
        close = np.abs(np.asarray(boxes, np.float32).reshape(-1, 4) - ext).max(1) <= margin + 0.5
        assert close.any(), f"object at {ext} has no matching box"
        matched += 1
    return matched


def one_box_sample(w: int = 120, h: int = 80, box: tuple[int, int, int, int] = (30, 20, 70, 50)) -> Sample:
    return Sample(rect_image(w, h, box), np.array([box], np.float32), np.array([3]), [])


def test_resize_long_side_keeps_aspect():
    assert resize_long_side(np.zeros((80, 120, 3), np.uint8), 60).shape == (40, 60, 3)
    assert resize_long_side(np.zeros((120, 80, 3), np.uint8), 240).shape == (240, 160, 3)


@pytest.mark.parametrize("new_shape", [(128, 128), (96, 160), (64, 64)])
def test_letterbox_boxes_follow_pixels(new_shape: tuple[int, int]):
    s = one_box_sample()
    img, (rw, rh), (padw, padh) = letterbox(s.img, new_shape)
    assert img.shape[:2] == new_shape and padw == int(padw) and padh == int(padh)
    box = s.boxes[0] * [rw, rh, rw, rh] + [padw, padh, padw, padh]
    assert_box_matches_pixels(img, box)
    assert (img[:int(padh)] == 114).all() and (img[:, :int(padw)] == 114).all()


def test_flips_boxes_follow_pixels():
    s = one_box_sample()
    for fn in (flip_lr, flip_ud):
        img, boxes = fn(s.img, s.boxes)
        assert_box_matches_pixels(img, boxes[0])
    img, boxes = flip_lr(s.img, s.boxes)
    np.testing.assert_allclose(boxes[0], [50, 20, 90, 50])


@pytest.mark.parametrize("seed", range(6))
def test_random_perspective_without_rotation_boxes_follow_pixels(seed: int):
    s = one_box_sample()
    out = random_perspective(s, degrees=0, translate=0.2, scale=0.5, shear=0, perspective=0,
                             rng=np.random.default_rng(seed))
    assert out.img.shape == s.img.shape
    for box in out.boxes:
        assert_box_matches_pixels(out.img, box)


def test_random_perspective_with_rotation_keeps_valid_boxes():
    s = one_box_sample()
    for seed in range(10):
        out = random_perspective(s, degrees=30, shear=10, perspective=0.001, rng=np.random.default_rng(seed))
        b = out.boxes
        assert (b >= 0).all() and (b[:, [0, 2]] <= 120).all() and (b[:, [1, 3]] <= 80).all()
        assert ((b[:, 2:] - b[:, :2]) >= 2).all() and out.cls.tolist() == [3] * len(b)


def test_mostly_cut_off_objects_are_dropped():
    s = Sample(np.zeros((100, 100, 3), np.uint8), np.array([[0, 0, 40, 40], [40, 40, 60, 60]], np.float32),
               np.array([0, 1]), [])
    # border -45 crops to the 10x10 centre window: object 1 is 25% visible, object 0 not at all
    out = random_perspective(s, translate=0, scale=0, border=(-45, -45), rng=np.random.default_rng(0))
    assert out.img.shape == (10, 10, 3) and out.cls.tolist() == [1]
    out = random_perspective(s, translate=0, scale=0, border=(-45, -45), rng=np.random.default_rng(0),
                             min_visible=0.5)
    assert len(out.boxes) == 0


@pytest.mark.parametrize("nine", [False, True])
def test_mosaic_then_crop_boxes_follow_pixels(nine: bool):
    rng = np.random.default_rng(1 + nine)
    samples = [one_box_sample(64, 48, (10 + 4 * k, 8 + 2 * k, 40 + 2 * k, 30 + k)) for k in range(9 if nine else 4)]
    for _ in range(4):
        m = (mosaic9 if nine else mosaic4)(samples, 64, rng)
        assert m.img.shape == (128, 128, 3) and len(m.boxes) >= 1
        assert assert_boxes_match_objects(m.img, m.boxes) >= 1
        out = random_perspective(m, translate=0.1, scale=0.3, border=(-32, -32), rng=rng)
        assert out.img.shape == (64, 64, 3)
        assert_boxes_match_objects(out.img, out.boxes)


def test_dataset_training_path_boxes_follow_pixels(tmp_path: Path):
    img_dir, lbl_dir = tmp_path / "images" / "train", tmp_path / "labels" / "train"
    img_dir.mkdir(parents=True)
    lbl_dir.mkdir(parents=True)
    for k in range(4):
        box = (10 + 8 * k, 12, 50 + 8 * k, 40)
        cv2.imwrite(str(img_dir / f"{k}.png"), rect_image(120, 80, box))
        (lbl_dir / f"{k}.txt").write_text(f"0 {(box[0] + box[2]) / 240} {(box[1] + box[3]) / 160} "
                                          f"{(box[2] - box[0]) / 120} {(box[3] - box[1]) / 80}\n")
    files = sorted(str(p) for p in img_dir.iterdir())
    still = {"hsv_h": 0, "hsv_s": 0, "hsv_v": 0, "albumentations": 0, "translate": 0.2, "scale": 0.4}
    for extra in ({"mosaic": 0.0, "fliplr": 1.0, "flipud": 1.0}, {"mosaic": 1.0, "fliplr": 0.5}):
        ds = YoloDataset(files, imgsz=96, augment=True, hyp={**still, **extra})
        n = 0
        for k in range(8):
            img, labels, _, _ = ds[k % 4]
            rgb = np.ascontiguousarray(img.permute(1, 2, 0).numpy())
            n += assert_boxes_match_objects(rgb, (xywh2xyxy(labels[:, 2:]) * 96).numpy())
        assert n >= 4


def test_hsv_changes_colour_in_place_and_zero_gain_is_noop():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    same = img.copy()
    augment_hsv(same, 0, 0, 0, rng)
    assert np.array_equal(same, img)
    changed = img.copy()
    augment_hsv(changed, 0.1, 0.7, 0.4, rng)
    assert changed.dtype == np.uint8 and changed.shape == img.shape and not np.array_equal(changed, img)


def test_pixel_augment_keeps_shape_and_is_seeded():
    img = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    a, b = PixelAugment(seed=5), PixelAugment(seed=5)
    outs_a, outs_b = [a(img) for _ in range(6)], [b(img) for _ in range(6)]
    assert all(o.shape == img.shape and o.dtype == np.uint8 for o in outs_a)
    assert all(np.array_equal(x, y) for x, y in zip(outs_a, outs_b))
    assert any(not np.array_equal(o, img) for o in outs_a)


def test_mixup_blends_pixels_and_keeps_all_boxes():
    a = Sample(np.full((16, 16, 3), 200, np.uint8), np.array([[1, 1, 5, 5]], np.float32), np.array([0]), [])
    b = Sample(np.full((16, 16, 3), 0, np.uint8), np.array([[6, 6, 9, 9]], np.float32), np.array([2]), [])
    m = mixup(a, b, np.random.default_rng(0))
    assert 60 < m.img.mean() < 140 and m.cls.tolist() == [0, 2] and m.boxes.shape == (2, 4)
    with pytest.raises(ValueError, match="equal image shapes"):
        mixup(a, Sample(np.zeros((8, 16, 3), np.uint8), b.boxes, b.cls, []), np.random.default_rng(0))


def test_polygons_give_tighter_boxes_under_rotation():
    diamond = np.array([[30, 20], [40, 30], [30, 40], [20, 30]], np.float32)  # extent = box [20, 20, 40, 40]
    img = np.zeros((60, 60, 3), np.uint8)
    boxes, cls = np.array([[20, 20, 40, 40]], np.float32), np.array([0])
    tighter = 0
    for seed in range(5):
        kw = dict(degrees=40, translate=0, scale=0, border=(0, 0))
        a = random_perspective(Sample(img, boxes, cls, [diamond]), rng=np.random.default_rng(seed), **kw).boxes
        b = random_perspective(Sample(img, boxes, cls, []), rng=np.random.default_rng(seed), **kw).boxes
        assert (a[0, :2] >= b[0, :2] - 1e-3).all() and (a[0, 2:] <= b[0, 2:] + 1e-3).all()  # inside
        tighter += (b[0, 2] - b[0, 0]) - (a[0, 2] - a[0, 0]) > 1
    assert tighter >= 3


def shoelace(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def test_clip_polygon_hand_computed():
    tri = np.array([[0, 0], [10, 0], [0, 10]], np.float32)
    cut = clip_polygon(tri, (2, 2, 8, 8))  # the part with x + y <= 10: triangle (2, 2), (8, 2), (2, 8)
    assert abs(shoelace(cut) - 18.0) < 1e-4
    np.testing.assert_allclose([*cut.min(0), *cut.max(0)], [2, 2, 8, 8], atol=1e-5)
    np.testing.assert_allclose(clip_polygon(tri, (-1, -1, 20, 20)), tri)  # inside: unchanged
    assert clip_polygon(tri, (20, 20, 30, 30)).shape == (0, 2)  # outside: nothing left


def white_extents(img: np.ndarray, min_area: int = 4) -> np.ndarray:
    """Pixel xyxy extents (m, 4) of the white connected components of ``img``, edge-cut ones included."""
    n, _, stats, _ = cv2.connectedComponentsWithStats((img.max(2) > 127).astype(np.uint8))
    return np.array([[x, y, x + w, y + h] for x, y, w, h, a in stats[1:] if a >= min_area], np.float32).reshape(-1, 4)


def test_mosaic_clips_polygons_to_the_visible_tile():
    """A triangle cut by the canvas edge gets the box of its visible part, not its clipped full box."""
    tri = np.array([[1, 1], [62, 1], [1, 46]], np.float32)  # fills the top-left half of a 64 x 48 image
    img = np.zeros((48, 64, 3), np.uint8)
    cv2.fillPoly(img, [tri.astype(np.int32)], (255, 255, 255))
    smp = Sample(img, np.array([[1, 1, 62, 46]], np.float32), np.array([0]), [tri])
    cut = 0
    for seed in range(6):
        m = mosaic4([smp] * 4, 64, np.random.default_rng(seed))
        ext = white_extents(m.img)
        assert len(m.boxes) == len(ext) == len(m.segments)
        for box in m.boxes:  # each box hugs one visible triangle part (fillPoly adds up to 1 px)
            assert (np.abs(ext - box).max(1) <= 1.5).any(), f"seed {seed}: box {box} covers no visible part"
        cut += int((np.abs((m.boxes[:, 2:] - m.boxes[:, :2]) - [61, 45]) > 3).any())
    assert cut >= 2  # some triangles were really cut by the canvas edge


def test_perspective_crop_clips_polygons_to_the_output():
    diamond = np.array([[130, 26], [154, 50], [130, 74], [106, 50]], np.float32)
    img = np.zeros((100, 160, 3), np.uint8)
    cv2.fillPoly(img, [diamond.astype(np.int32)], (255, 255, 255))
    smp = Sample(img, np.array([[106, 26, 154, 74]], np.float32), np.array([1]), [diamond])
    out = random_perspective(smp, translate=0, scale=0, border=(-20, -40), rng=np.random.default_rng(0))
    assert out.img.shape == (60, 80, 3)
    # output = input - (40, 20); the diamond is cut at output x = 80 (input 120), where |y - 50| <= 14
    np.testing.assert_allclose(out.boxes, [[66, 16, 80, 44]], atol=1e-4)
    np.testing.assert_allclose(out.boxes[0], white_extents(out.img)[0], atol=1.5)
