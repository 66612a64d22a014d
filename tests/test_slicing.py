"""Sliced inference: tile layout, mapping boxes back to the frame, merging across tiles."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from utils.data.augment import letterbox
from utils.slicing import greedy_nmm, merge_detections, predict_image, sliced_predict, tile_coordinates
from utils.tta import TTA_PASSES


class BlobModel(nn.Module):
    """Fake detector: one box around the bright pixels of each input image.

    predict(x): x (B, 3, H, W) in [0, 1] -> (B, 1, 5 + 2) rows [cx, cy, w, h (input px), obj, cls0, cls1];
    objectness 0 when nothing is bright. The confidence grows with the box area so that the
    most complete view of a cut object ranks first. Records every batch size it is called with.
    """

    stride = torch.tensor([8.0, 16.0, 32.0])

    def __init__(self) -> None:
        super().__init__()
        self.batch_sizes: list[int] = []
        self.detect = SimpleNamespace(decode=lambda raw: raw)  # forward already returns decoded rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        out = torch.zeros(x.shape[0], 1, 7)
        for b, mask in enumerate(x.mean(1) > 0.9):
            ys, xs = mask.nonzero(as_tuple=True)
            if len(xs):
                x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
                w, h = float(x2 - x1), float(y2 - y1)
                out[b, 0] = torch.tensor([x1 + w / 2, y1 + h / 2, w, h, 0.5 + w * h / 1e4, 1.0, 0.0])
        return out


def frame_with_box(w: int, h: int, box: tuple[int, int, int, int]) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[box[1]:box[3], box[0]:box[2]] = 255
    return img


@pytest.mark.parametrize("w,h,size,overlap", [(1920, 1080, 640, 0.2), (1000, 700, 256, 0.25),
                                              (640, 512, 640, 0.2), (300, 900, 320, 0.5), (97, 61, 32, 0.0)])
def test_tiles_cover_image_with_overlap(w, h, size, overlap):
    tiles = tile_coordinates(w, h, size, overlap)
    cover = np.zeros((h, w), bool)
    for x1, y1, x2, y2 in tiles:
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert x2 - x1 == min(size, w) and y2 - y1 == min(size, h)  # all tiles full size
        cover[y1:y2, x1:x2] = True
    assert cover.all()
    xs = sorted({t[0] for t in tiles})
    ys = sorted({t[1] for t in tiles})
    assert max(t[2] for t in tiles) == w and max(t[3] for t in tiles) == h  # flush with the border
    for starts in (xs, ys):  # neighbours share at least overlap * size pixels
        assert all(size - (b - a) >= overlap * size - 1 for a, b in zip(starts, starts[1:]))
    assert len(tiles) == len(xs) * len(ys)


def test_image_smaller_than_tile_gives_one_tile():
    assert tile_coordinates(100, 80, 640, 0.2) == [(0, 0, 100, 80)]
    tiles = tile_coordinates(1000, 80, 640, 0.2)  # wide strip: one row of short tiles
    assert [t[1::2] for t in tiles] == [(0, 80), (0, 80)] and tiles[-1][2] == 1000


def test_tile_arguments_validated():
    with pytest.raises(ValueError, match="overlap"):
        tile_coordinates(100, 100, 32, 1.0)
    with pytest.raises(ValueError, match="slice size"):
        tile_coordinates(100, 100, 0, 0.2)


def test_letterbox_ratio_pad_round_trip():
    img = np.zeros((50, 100, 3), np.uint8)
    out, ratio, pad = letterbox(img, 64, stride=32)
    assert out.shape == (64, 64, 3) and ratio == (64 / 100, 32 / 50) and pad == (0, 16)
    out, _, pad = letterbox(img, 64, stride=32, auto=True)  # rectangle: pad only to the stride
    assert out.shape == (32, 64, 3) and pad == (0, 0)


def test_boxes_shifted_back_exactly_and_object_in_two_tiles_comes_out_once():
    # Tiles along x: [0, 100), [80, 180), [100, 200). The object sits in the first two only.
    box = (85, 40, 95, 60)
    img = frame_with_box(200, 100, box)
    model = BlobModel()
    for merge in ("nms", "nmm"):
        det = sliced_predict(model, img, slice_size=100, overlap=0.2, imgsz=100, full_frame=False, merge=merge)
        assert det.shape == (1, 6), merge
        assert det[0, :4].tolist() == list(map(float, box))
        assert det[0, 5].item() == 0


def test_full_frame_pass_and_batching():
    box = (85, 40, 95, 60)
    model = BlobModel()
    det = sliced_predict(model, frame_with_box(200, 100, box), 100, 0.2, imgsz=100, batch_size=2)
    assert model.batch_sizes == [2, 1, 1]  # 3 tiles in batches of 2, then the full frame
    assert det.shape[0] == 1 and torch.allclose(det[0, :4], torch.tensor(box, dtype=torch.float), atol=1.0)


def test_scaled_tiles_map_back_close():
    box = (130, 150, 146, 170)
    img = frame_with_box(400, 300, box)
    det = sliced_predict(BlobModel(), img, slice_size=128, overlap=0.25, imgsz=64, full_frame=False)
    assert det.shape[0] >= 1
    assert torch.allclose(det[0, :4], torch.tensor(box, dtype=torch.float), atol=2.0)  # 2x downscale


def test_nmm_joins_an_object_cut_by_a_tile_edge():
    # x 95..110 is cut by tile 0's right edge (100) and tile 2's left edge (100).
    box = (95, 40, 110, 60)
    img = frame_with_box(200, 100, box)
    nms = sliced_predict(BlobModel(), img, 100, 0.2, imgsz=100, full_frame=False, merge="nms")
    nmm = sliced_predict(BlobModel(), img, 100, 0.2, imgsz=100, full_frame=False, merge="nmm")
    # Views: 95..100 (tile 0), 95..110 (tile 1), 100..110 (tile 2). NMS drops 100..110 (IoU 2/3
    # with the whole box) but keeps the 5 px sliver (IoU 1/3); NMM absorbs both (IoS 1).
    assert nms.shape[0] == 2
    assert nmm.shape[0] == 1 and nmm[0, :4].tolist() == list(map(float, box))


def test_greedy_nmm_merges_by_union_keeps_max_score_and_class():
    det = torch.tensor([[2, 0, 20, 10, 0.8, 0],   # IoS with the first = 80 / 100 -> merged
                        [0, 0, 10, 10, 0.9, 0],
                        [0, 0, 10, 10, 0.7, 1],   # other class -> kept
                        [50, 50, 60, 60, 0.6, 0]])  # no overlap -> kept
    out = greedy_nmm(det, match_thres=0.5, match_metric="ios")
    expected = torch.tensor([[0, 0, 20, 10, 0.9, 0], [0, 0, 10, 10, 0.7, 1], [50, 50, 60, 60, 0.6, 0]])
    assert torch.allclose(out, expected)
    assert greedy_nmm(det, 0.5, "ios", agnostic=True).shape[0] == 2
    assert greedy_nmm(det, 0.5, "iou").shape[0] == 4  # IoU 80 / 200 = 0.4 < 0.5: not merged


def test_merge_nms_is_class_aware():
    det = torch.tensor([[0, 0, 10, 10, 0.9, 0], [1, 0, 11, 10, 0.8, 0], [1, 0, 11, 10, 0.7, 1]])
    assert merge_detections(det, "nms", 0.45).shape[0] == 2
    assert merge_detections(det, "nms", 0.45, agnostic=True).shape[0] == 1
    with pytest.raises(ValueError, match="merge"):
        merge_detections(det, "wbf")


def test_predict_image_maps_to_original_pixels_and_times():
    box = (30, 20, 50, 44)
    times = [0.0, 0.0, 0.0]
    det = predict_image(BlobModel(), frame_with_box(160, 96, box), 64, times=times)
    assert det.shape[0] == 1
    assert torch.allclose(det[0, :4], torch.tensor(box, dtype=torch.float), atol=2.5)
    assert all(t > 0 for t in times)


def test_test_time_augmentation_maps_flipped_and_scaled_passes_back():
    box = (30, 20, 50, 44)
    model = BlobModel()
    det = predict_image(model, frame_with_box(160, 96, box), 64, augment=True)
    assert len(model.batch_sizes) == len(TTA_PASSES)  # full size, mirrored, 0.83, 0.67
    assert det.shape[0] == 1  # a wrongly mirrored pass would leave a second box
    assert torch.allclose(det[0, :4], torch.tensor(box, dtype=torch.float), atol=3.0)
