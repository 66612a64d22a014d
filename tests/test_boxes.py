import numpy as np
import pytest
import torch

from utils.boxes import (bbox_iou, box_iou, clip_boxes, filter_boxes, scale_boxes, xywh2xyxy, xywhn2xyxy,
                         xyxy2xywh, xyxy2xywhn)
from utils.nms import non_max_suppression


def test_conversions_round_trip_torch_and_numpy():
    xyxy = torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 4.0, 2.0]])
    xywh = xyxy2xywh(xyxy)
    assert torch.allclose(xywh[0], torch.tensor([30.0, 50.0, 40.0, 60.0]))
    assert torch.allclose(xywh2xyxy(xywh), xyxy)
    n = xyxy2xywhn(xyxy.numpy(), w=100, h=200)
    assert isinstance(n, np.ndarray)
    np.testing.assert_allclose(n[0], [0.3, 0.25, 0.4, 0.3])
    np.testing.assert_allclose(xywhn2xyxy(n, 100, 200, padw=5, padh=7)[0], [15, 27, 55, 87])


def test_clip_and_filter_drop_degenerate_boxes():
    boxes = np.array([[-5, -5, 10, 10], [50, 50, 50.5, 60], [90, 10, 120, 30], [200, 200, 300, 300],
                      [20, 20, 21, 22]], float)
    cls = np.array([0, 1, 2, 3, 4])
    kept, kept_cls = filter_boxes(boxes, cls, (100, 100))
    np.testing.assert_array_equal(kept_cls, [0, 2, 4])  # 0.5 px wide and fully outside boxes dropped
    np.testing.assert_allclose(kept, [[0, 0, 10, 10], [90, 10, 100, 30], [20, 20, 21, 22]])  # 1 px kept
    assert boxes[0, 0] == -5  # filter_boxes does not modify its input
    t = clip_boxes(torch.tensor([[-1.0, 2.0, 300.0, 50.0]]), (40, 200))
    assert t.tolist() == [[0.0, 2.0, 200.0, 40.0]]


def test_scale_boxes_inverts_letterbox():
    # original 100x200 (h, w) letterboxed into 128x128: gain 0.64, pad 32 px top and bottom
    orig = torch.tensor([[20.0, 10.0, 120.0, 90.0]])
    gain, padw, padh = 0.64, 0.0, 32.0
    boxed = orig * gain + torch.tensor([padw, padh, padw, padh])
    back = scale_boxes((128, 128), boxed.clone(), (100, 200))
    assert torch.allclose(back, orig, atol=1e-4)
    back2 = scale_boxes((128, 128), boxed.clone(), (100, 200), ratio_pad=((gain, gain), (padw, padh)))
    assert torch.allclose(back2, orig, atol=1e-4)


def test_iou_and_ciou():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0]])
    assert box_iou(a, b).item() == pytest.approx(50 / 150)
    assert bbox_iou(a, b, xywh=False).item() == pytest.approx(50 / 150, rel=1e-5)
    same = bbox_iou(a, a, xywh=False, CIoU=True)
    assert same.item() == pytest.approx(1.0, abs=1e-5)
    ciou = bbox_iou(a, b, xywh=False, CIoU=True)
    assert ciou.item() < 50 / 150  # centre-distance penalty


def test_nms_removes_duplicates_per_class_and_keeps_other_classes():
    # two overlapping boxes of class 0, one overlapping box of class 1
    pred = torch.zeros(1, 3, 7)
    pred[0, :, :4] = torch.tensor([[50, 50, 20, 20], [51, 50, 20, 20], [50, 51, 20, 20]], dtype=torch.float)
    pred[0, :, 4] = torch.tensor([0.9, 0.8, 0.7])
    pred[0, :, 5:] = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    out = non_max_suppression(pred, conf_thres=0.25, iou_thres=0.45)[0]
    assert out.shape == (2, 6)
    assert sorted(out[:, 5].tolist()) == [0.0, 1.0]
    agnostic = non_max_suppression(pred, 0.25, 0.45, agnostic=True)[0]
    assert agnostic.shape[0] == 1 and agnostic[0, 4].item() == pytest.approx(0.9)
    only1 = non_max_suppression(pred, 0.25, 0.45, classes=[1])[0]
    assert only1[:, 5].tolist() == [1.0]
    empty = non_max_suppression(torch.zeros(2, 5, 7))
    assert len(empty) == 2 and empty[0].shape == (0, 6)
