"""Small-object copy-paste: placement rules, which objects are copied, and the copied pixels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from utils.data.copy_paste import copy_paste_small


def scene(seed: int = 0):
    """128x96 noise image with two small boxes (16x12, 10x10) and one large box (60x40)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 26, 22], [100, 70, 110, 80], [40, 30, 100, 70]], np.float32)
    return img, boxes, np.array([0, 1, 2])


def pairwise_intersect(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ix = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    iy = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return (ix > 0) & (iy > 0)


@pytest.mark.parametrize("seed", range(8))
def test_pastes_never_overlap_and_keep_the_border(seed: int):
    img, boxes, cls = scene(seed)
    out, nb, ncls, segs = copy_paste_small(img, boxes, cls, p=1.0, max_area=500, times=3,
                                           rng=np.random.default_rng(seed))
    assert segs is None and len(nb) == len(ncls) and len(nb) > 3
    new = nb[3:]
    assert not pairwise_intersect(new, boxes).any()  # no copy on an original object
    inter = pairwise_intersect(new, new)
    assert not (inter & ~np.eye(len(new), dtype=bool)).any()  # nor on another copy
    assert (new[:, :2] >= 5).all() and (new[:, 2] <= 128 - 5).all() and (new[:, 3] <= 96 - 5).all()
    assert np.array_equal(nb[:3], boxes) and np.array_equal(out.shape, img.shape)


def test_only_small_objects_are_copied_and_stay_small():
    img, boxes, cls = scene()
    copies = []
    for seed in range(10):
        _, nb, ncls, _ = copy_paste_small(img, boxes, cls, p=1.0, max_area=500, times=2, scale=0.2,
                                          rng=np.random.default_rng(seed))
        area = (nb[3:, 2] - nb[3:, 0]) * (nb[3:, 3] - nb[3:, 1])
        assert (area < 500).all() and set(ncls[3:].tolist()) <= {0, 1}
        assert 0 < len(nb) - 3 <= 2 * 2  # 1..times copies of each of the 2 small objects
        copies.append(len(nb) - 3)
    assert max(copies) > 2  # cp_times=2 does give a second copy sometimes


def test_copied_pixels_match_the_source_patch():
    img, boxes, cls = scene()
    out, nb, _, _ = copy_paste_small(img, boxes, cls, p=1.0, max_area=500, times=1, scale=0.0, flip=False,
                                     rng=np.random.default_rng(1))
    src = {0: img[10:22, 10:26], 1: img[70:80, 100:110]}
    for k, (x1, y1, x2, y2) in enumerate(nb[3:].astype(int)):
        patch = out[y1:y2, x1:x2]
        assert any(np.array_equal(patch, s) for s in src.values()), f"copy {k} differs from its source"
    untouched = np.ones(img.shape[:2], bool)
    for x1, y1, x2, y2 in nb[3:].astype(int):
        untouched[y1:y2, x1:x2] = False
    assert np.array_equal(out[untouched], img[untouched])  # nothing else changed


def test_flipped_copy_is_mirrored():
    img, boxes, cls = scene()
    seen_flip = False
    for seed in range(8):
        out, nb, _, _ = copy_paste_small(img, boxes[:1], cls[:1], p=1.0, max_area=500, times=1, scale=0.0,
                                         flip=True, rng=np.random.default_rng(seed))
        x1, y1, x2, y2 = nb[1].astype(int)
        patch, src = out[y1:y2, x1:x2], img[10:22, 10:26]
        assert np.array_equal(patch, src) or np.array_equal(patch, src[:, ::-1])
        seen_flip |= np.array_equal(patch, src[:, ::-1])
    assert seen_flip


def test_polygon_copies_only_mask_pixels():
    img = np.zeros((80, 80, 3), np.uint8)
    img[10:30, 10:30] = 100  # inside the box but outside the triangle: must not be copied
    tri = np.array([[10, 10], [30, 10], [10, 30]], np.float32)
    cv2.fillPoly(img, [tri.astype(np.int32)], (255, 255, 255))  # the object: the triangle's pixels
    boxes = np.array([[10, 10, 30, 30]], np.float32)
    out, nb, ncls, segs = copy_paste_small(img, boxes, np.array([4]), [tri], p=1.0, max_area=500, times=1,
                                           scale=0.0, flip=False, rng=np.random.default_rng(0))
    assert len(nb) == 2 and ncls.tolist() == [4, 4] and len(segs) == 2
    x1, y1, x2, y2 = nb[1].astype(int)
    patch = out[y1:y2, x1:x2]
    assert (patch == 100).sum() == 0  # background of the source box stayed behind
    assert (patch == 255).any() and (patch == 0).any()
    np.testing.assert_allclose(segs[1], tri - [10, 10] + [x1, y1])


def test_disabled_or_nothing_small_returns_inputs_unchanged():
    img, boxes, cls = scene()
    before = img.copy()
    out, nb, _, _ = copy_paste_small(img, boxes, cls, p=0.0, rng=np.random.default_rng(0))
    assert out is img and len(nb) == 3
    out, nb, _, _ = copy_paste_small(img, boxes, cls, p=1.0, max_area=50, rng=np.random.default_rng(0))
    assert out is img and len(nb) == 3
    copy_paste_small(img, boxes, cls, p=1.0, max_area=500, times=3, rng=np.random.default_rng(0))
    assert np.array_equal(img, before)  # the caller's (possibly cached) image is never modified


def test_copies_of_objects_just_under_the_limit_stay_under_it():
    img = np.zeros((160, 160, 3), np.uint8)
    boxes = np.array([[10, 10, 41, 41]], np.float32)  # 31x31 = 961 px < 1024
    for seed in range(10):
        _, nb, _, _ = copy_paste_small(img, boxes, np.array([0]), p=1.0, max_area=1024, times=3, scale=0.2,
                                       rng=np.random.default_rng(seed))
        area = (nb[1:, 2] - nb[1:, 0]) * (nb[1:, 3] - nb[1:, 1])
        assert len(area) and (area < 1024).all()
