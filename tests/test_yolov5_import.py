"""Official YOLOv5 checkpoints: restricted unpickling, mapping onto our graph, transfer report."""

from __future__ import annotations

import copy
import os

import pytest
import torch

import detect
from models.yolo import build_model
from tests.helpers import SAMPLE
from tests.yolov5_official import save_official_checkpoint
from utils.checkpoint import build_train_model, load_checkpoint, load_model
from utils.errors import CheckpointError

NAMES = ["person", "car", "bike"]


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """(path of a yolov5s checkpoint in the official format, the model it was made from)."""
    torch.manual_seed(1)
    model = build_model("models/yolov5s.yaml", nc=len(NAMES)).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a missed buffer shows in the outputs
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("yolov5") / "yolov5s.pt"
    return save_official_checkpoint(model, path, NAMES), model


def _fp16_reference(model):
    """What YOLOv5 computes with the file: the same graph with FP16-rounded weights, in FP32."""
    return copy.deepcopy(model).half().float().eval()


def test_official_checkpoint_gives_identical_outputs(official):
    path, model = official
    loaded, ckpt = load_model(path)
    assert ckpt["names"] == NAMES and ckpt["nc"] == 3 and ckpt["source"] == "yolov5"
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        expected = _fp16_reference(model).predict(x)
        got = loaded.predict(x)
    assert got.shape == expected.shape == (2, 3 * (12 * 16 + 6 * 8 + 3 * 4), 8)
    assert torch.equal(got, expected)
    # anchors went back from YOLOv5's grid units to pixels: the YAML's P3 anchors
    assert loaded.detect.anchors[0].flatten().tolist() == [10, 13, 16, 30, 33, 23]


def test_official_checkpoint_into_yolov5s_yaml_transfers_everything(official, capsys):
    path, model = official
    ours = build_train_model("models/yolov5s.yaml", str(path), nc=3).eval()
    report = capsys.readouterr().out
    n = len(ours.state_dict())
    assert f"transferred {n}/{n} tensors" in report and "new" not in report
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours.predict(x), _fp16_reference(model).predict(x))


def test_official_checkpoint_into_p2_graph_reports_shared_and_new_layers(official, capsys):
    path, _ = official
    ours = build_train_model("models/yolov5s-p2.yaml", str(path), nc=3)
    report = capsys.readouterr().out
    src = load_checkpoint(path)["model"]
    # independent expectation: rows 0-17 are the same in both YAMLs; of rows 18+ only a scalar
    # BatchNorm counter happens to share name and shape
    shared = [k for k in ours.state_dict() if int(k.split(".")[1]) <= 17] + ["model.18.bn.num_batches_tracked"]
    assert f"transferred {len(shared)}/{len(ours.state_dict())} tensors" in report
    for k in shared:
        assert torch.equal(ours.state_dict()[k], src[k]), k
    new_line = next(line for line in report.splitlines() if line.startswith("new"))
    new_layers = [part.split(" (")[0] for part in new_line.split(": ", 1)[1].split(", ")]
    assert new_layers == [f"model.{i}" for i in (18, 21, 22, 24, 25, 27, 28, 30, 31)]


class _RunsACommand:
    """Pickles as a call of os.system, as a malicious checkpoint would."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_file_naming_another_global_is_refused_in_one_line(official, tmp_path, capsys):
    _, model = official
    marker = tmp_path / "ran"
    bad = save_official_checkpoint(model, tmp_path / "bad.pt", NAMES, extra={"opt": _RunsACommand(marker)})
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(bad)
    msg = str(e.value)
    assert "\n" not in msg and "refusing to load" in msg and ".system'" in msg and "bad.pt" in msg
    assert not marker.exists()
    capsys.readouterr()
    assert detect.main(["--weights", str(bad), "--source", str(SAMPLE / "images" / "val"), "--nosave"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and ".system'" in err and not marker.exists()


def test_detect_runs_an_official_checkpoint(official, tmp_path):
    path, _ = official
    img = min((SAMPLE / "images" / "val").glob("*.jpg"))
    argv = ["--weights", str(path), "--source", str(img), "--imgsz", "64", "--device", "cpu",
            "--project", str(tmp_path)]
    assert detect.main(argv) == 0
    assert (tmp_path / "exp" / img.name).exists()
