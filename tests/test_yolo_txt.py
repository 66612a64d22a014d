"""utils/yolo_txt.py: the YOLO txt prediction writer that val.py and detect.py share."""

from __future__ import annotations

import numpy as np
import torch

from utils.yolo_txt import write_yolo_txt, yolo_txt_lines


def test_yolo_txt_lines_and_file(tmp_path):
    det = torch.tensor([[10.0, 20.0, 30.0, 60.0, 0.875, 2.0], [0.0, 0.0, 200.0, 100.0, 0.5, 0.0]])
    assert yolo_txt_lines(det, (100, 200)) == ["2 0.1 0.4 0.1 0.4", "0 0.5 0.5 1 1"]
    assert yolo_txt_lines(det, (100, 200), save_conf=True)[0] == "2 0.1 0.4 0.1 0.4 0.875"
    path = write_yolo_txt(tmp_path / "a.txt", det, (100, 200), save_conf=True)
    assert path.read_text() == "2 0.1 0.4 0.1 0.4 0.875\n0 0.5 0.5 1 1 0.5\n"
    assert write_yolo_txt(tmp_path / "b.txt", torch.zeros((0, 6)), (10, 10)).read_text() == ""


def test_detect_result_writer_uses_the_same_rows(tmp_path):
    from utils.sources import SourceItem
    from utils.video_writer import ResultWriter

    det = torch.tensor([[10.0, 20.0, 30.0, 60.0, 0.875, 2.0]])
    item = SourceItem(path=str(tmp_path / "frame.jpg"), img0=np.zeros((100, 200, 3), np.uint8), frame=0,
                      kind="image", meta=None)
    writer = ResultWriter(tmp_path / "out", ["a", "b", "c"], save_img=False, save_txt=True, save_conf=True)
    writer.add(item, det)
    assert (tmp_path / "out/labels/frame.txt").read_text() == "2 0.1 0.4 0.1 0.4 0.875\n"
