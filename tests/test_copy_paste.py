"""Small-object copy-paste: placement rules, which objects are copied, and the copied pixels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from utils.data.copy_paste import candidate_spots, copy_paste_small, place_greedy


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


def crowded_scene(seed: int):
    """96x96 noise image with 40 small boxes (4-12 px): most candidate spots are taken."""
    rng = np.random.default_rng(100 + seed)
    img = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
    xy = rng.uniform(0, 84, (40, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(4, 12, (40, 2))], 1).astype(np.float32)
    return img, boxes, np.arange(40) % 3


@pytest.mark.parametrize("seed", range(6))
def test_crowded_image_keeps_every_rule(seed: int):
    img, boxes, cls = crowded_scene(seed)
    _, nb, _, _ = copy_paste_small(img, boxes, cls, p=1.0, max_area=500, times=3, border=3,
                                        rng=np.random.default_rng(seed))
    new = nb[len(boxes):]
    assert 0 < len(new) < 40 * 3  # some copies found a spot, some were dropped
    assert not pairwise_intersect(new, boxes).any()
    assert not (pairwise_intersect(new, new) & ~np.eye(len(new), dtype=bool)).any()
    assert (new[:, :2] >= 3).all() and (new[:, 2:] <= 96 - 3).all()
    assert ((new[:, 2] - new[:, 0]) * (new[:, 3] - new[:, 1]) < 500).all()


def test_same_seed_same_result_other_seed_other_result():
    img, boxes, cls = crowded_scene(0)
    runs = [copy_paste_small(img, boxes, cls, p=1.0, max_area=500, times=2, rng=np.random.default_rng(s))
            for s in (7, 7, 8)]
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])
    assert np.array_equal(runs[0][2], runs[1][2])
    assert not np.array_equal(runs[0][1], runs[2][1])


def test_candidate_spots_stay_inside_and_flag_patches_that_cannot_fit():
    sizes = np.array([[10, 6], [1, 1], [91, 5], [20, 20]])
    rects, fits = candidate_spots(sizes, (100, 50), border=5, tries=200, rng=np.random.default_rng(0))
    assert rects.shape == (4, 200, 4) and fits.tolist() == [True, True, False, True]
    ok = rects[fits]
    assert (ok[..., :2] >= 5).all() and (ok[..., 2] <= 95).all() and (ok[..., 3] <= 45).all()
    np.testing.assert_array_equal(ok[..., 2:] - ok[..., :2], np.repeat(sizes[fits][:, None], 200, 1))
    assert ok[0, :, 0].min() == 5 and ok[0, :, 0].max() == 85  # both ends of the range are drawn


def test_place_greedy_takes_the_first_free_try_and_respects_earlier_copies():
    occupied = np.array([[0, 0, 10, 10]], np.float32)
    cands = np.array([[[5, 5, 15, 15], [20, 0, 30, 10], [40, 0, 50, 10]],     # try 0 hits occupied
                      [[25, 5, 35, 15], [60, 0, 70, 10], [0, 0, 1, 1]],       # try 0 hits copy 0
                      [[10, 0, 20, 10], [0, 0, 5, 5], [0, 0, 5, 5]],          # touching is allowed
                      [[0, 0, 5, 5], [21, 1, 29, 9], [61, 1, 62, 2]]], np.float32)  # all taken
    fits = np.array([True, True, True, True])
    assert place_greedy(cands, fits, occupied).tolist() == [1, 1, 0, -1]
    # without copy 0, copy 1 takes its try 0, and copy 3's try 2 is no longer under copy 1's spot
    assert place_greedy(cands, np.array([False, True, True, True]), occupied).tolist() == [-1, 0, 0, 2]
    assert place_greedy(cands[:0], fits[:0], occupied).tolist() == []
