import pytest
import torch

from models.yolo import build_model
from utils.checkpoint import load_checkpoint, load_model, save_checkpoint
from utils.errors import CheckpointError
from utils.hyp import load_hyp


def _ckpt(model, task="detect"):
    return {"task": task, "model_cfg": model.yaml, "model": model.state_dict(), "names": ["a", "b"], "nc": 2}


def test_checkpoint_round_trip_keeps_weights_and_anchors(tmp_path):
    model = build_model("models/yolov5n-p2.yaml", nc=2)
    with torch.no_grad():
        model.detect.anchors.mul_(1.5)  # e.g. refitted by AutoAnchor
    save_checkpoint(_ckpt(model), tmp_path / "w" / "last.pt")
    assert [p.name for p in (tmp_path / "w").iterdir()] == ["last.pt"]  # no temp files left
    loaded, ckpt = load_model(tmp_path / "w" / "last.pt")
    assert ckpt["names"] == ["a", "b"] and not loaded.training
    assert torch.equal(loaded.detect.anchors, model.detect.anchors)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.predict(x), model.eval().predict(x))


def test_bad_checkpoints_raise_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(junk)
    model = build_model("models/yolov5n.yaml", nc=2)
    save_checkpoint(_ckpt(model, task="segment"), tmp_path / "seg.pt")
    with pytest.raises(CheckpointError, match="segment"):
        load_checkpoint(tmp_path / "seg.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_hyp_defaults_unknown_keys_and_bad_values(tmp_path):
    hyp = load_hyp()
    assert hyp["fdl"] == 0 and hyp["anchor_t"] == 4.0
    f = tmp_path / "h.yaml"
    f.write_text("lr0: 0.02\n")
    assert load_hyp(f)["lr0"] == 0.02 and load_hyp(f)["momentum"] == hyp["momentum"]
    f.write_text("lr0: 0.02\nlearning_rate: 1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        load_hyp(f)
    f.write_text("lr0: fast\n")
    with pytest.raises(ValueError, match="lr0"):
        load_hyp(f)
    assert load_hyp("hyp.scratch.yaml") == hyp  # found by name under data/hyps/
