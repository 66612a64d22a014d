"""detect.py end to end at tiny sizes (CPU), plus its drawing and run-folder helpers."""

from __future__ import annotations

import functools
import http.server
import json
import os
import threading
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import detect
from utils.annotate import class_color, draw_detections
from utils.checkpoint import save_checkpoint
from utils.run_dir import increment_path
from tests.helpers import run_script, untrained_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_VAL = ROOT / "data" / "hit-uav-sample" / "images" / "val"
VW, VH, VN, FPS = 160, 128, 8, 12.0


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy shared CPU threads spin and crawl."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A randomly initialised 2-class yolov5n-p2 checkpoint (detections are noise; we test plumbing)."""
    return untrained_checkpoint(tmp_path_factory.mktemp("weights") / "best.pt", ROOT / "models" / "yolov5n-p2.yaml",
                                ["person", "car"])


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_script("detect.py", *args, cwd=cwd)


def test_video_from_command_line(tmp_path, weights):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (VW, VH))
    for i in range(VN):
        img = np.full((VH, VW, 3), 60, np.uint8)
        cv2.circle(img, (20 + 15 * i, 64), 8, (255, 255, 255), -1)
        writer.write(img)
    writer.release()
    r = run_cli("--source", str(video), "--weights", str(weights), "--imgsz", "64", "--save-txt",
                "--save-conf", "--device", "cpu", "--project", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out" / "exp"
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == VN
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (VW, VH)
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS)
    assert sum(cap.read()[0] for _ in range(VN + 1)) == VN  # frames really decode
    labels = sorted((out / "labels").iterdir())
    assert [p.name for p in labels] == sorted(f"clip_{i}.txt" for i in range(1, VN + 1))
    for p in labels:  # rows: cls cx cy w h conf, normalized
        for row in p.read_text().split("\n")[:-1]:
            v = [float(x) for x in row.split()]
            assert len(v) == 6 and v[0] in (0, 1) and all(0 <= x <= 1 for x in v[1:])
    assert f"{VN} frames" in r.stdout and "FPS" in r.stdout and "Results saved to out/exp" in r.stdout


def test_images_folder_sliced_with_crops_and_json(tmp_path, weights, capsys):
    src = tmp_path / "imgs"
    src.mkdir()
    for name in sorted(os.listdir(SAMPLE_VAL))[:2]:
        img = cv2.imread(str(SAMPLE_VAL / name))
        cv2.imwrite(str(src / name), cv2.resize(img, (200, 160)))
    (src / "readme.md").write_text("ignored")
    argv = ["--source", str(src), "--weights", str(weights), "--imgsz", "64", "--slice", "96",
            "--overlap", "0.25", "--slice-merge", "nmm", "--conf-thres", "0.001", "--max-det", "20",
            "--save-txt", "--save-json", "--save-crop", "--device", "cpu", "--project", str(tmp_path / "runs")]
    assert detect.main(argv) == 0
    out = tmp_path / "runs" / "exp"
    names = sorted(p.name for p in src.glob("*.jpg"))
    assert sorted(p.name for p in out.glob("*.jpg")) == names
    assert cv2.imread(str(out / names[0])).shape == (160, 200, 3)
    assert sorted(p.name for p in (out / "labels").iterdir()) == [n.replace(".jpg", ".txt") for n in names]
    preds = json.loads((out / "predictions.json").read_text())
    assert preds and {"image_id", "category_id", "bbox", "score"} <= set(preds[0])
    n_boxes = sum(len(p.read_text().splitlines()) for p in (out / "labels").iterdir())
    assert len(preds) == n_boxes == sum(1 for _ in (out / "crops").rglob("*.jpg"))
    assert "6 tiles of 96px" in capsys.readouterr().out  # 3 x 2 tiles on 200x160
    assert detect.main(argv) == 0 and (tmp_path / "runs" / "exp2").is_dir()  # next run: exp2


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_http_stream_gives_annotated_video(tmp_path, weights):
    clip = tmp_path / "cam.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (VW, VH))
    for i in range(5):
        writer.write(np.full((VH, VW, 3), 40 * i, np.uint8))
    writer.release()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/cam.avi"
        assert detect.main(["--source", url, "--weights", str(weights), "--imgsz", "64", "--save-txt",
                            "--project", str(tmp_path / "runs")]) == 0
    finally:
        server.shutdown()
        server.server_close()
    out = tmp_path / "runs" / "exp"
    assert int(cv2.VideoCapture(str(out / "cam.mp4")).get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    assert len(list((out / "labels").glob("cam_*.txt"))) == 5


def test_missing_source_one_line_exit_1(tmp_path, weights):
    r = run_cli("--source", "nope.mp4", "--weights", str(weights), cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip() == "detect.py: error: source 'nope.mp4' does not exist"
    assert not (tmp_path / "runs").exists()  # nothing written for a bad source


@pytest.mark.parametrize("make_args,match", [
    (lambda d, w: ["--weights", str(d / "none.pt")], "weights not found"),
    (lambda d, w: ["--weights", str(d / "seg.pt")], "'segment' checkpoint"),
    (lambda d, w: ["--weights", str(d / "junk.pt")], "cannot read weights"),
    (lambda d, w: ["--weights", str(w), "--classes", "7"], "--classes"),
    (lambda d, w: ["--weights", str(w), "--overlap", "1.5"], "--overlap"),
])
def test_bad_weights_and_flags_exit_1(tmp_path, weights, capsys, make_args, match):
    img = tmp_path / "a.jpg"
    cv2.imwrite(str(img), np.zeros((32, 32, 3), np.uint8))
    ckpt = torch.load(weights, weights_only=True)
    save_checkpoint({**ckpt, "task": "segment"}, tmp_path / "seg.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    rc = detect.main(["--source", str(img), *make_args(tmp_path, weights), "--project", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and match in err


def test_default_weights_newest_train_run(tmp_path, weights, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    img = tmp_path / "a.jpg"
    cv2.imwrite(str(img), np.zeros((32, 32, 3), np.uint8))
    assert detect.main(["--source", str(img)]) == 1
    assert "no --weights given" in capsys.readouterr().err
    for i, name in enumerate(("exp", "exp2")):
        p = tmp_path / "runs" / "train" / name / "weights" / "best.pt"
        p.parent.mkdir(parents=True)
        p.write_bytes(weights.read_bytes())
        os.utime(p, (1e9 + i, 1e9 + i))
    assert detect.newest_weights() == Path("runs/train/exp2/weights/best.pt")
    assert detect.main(["--source", str(img), "--imgsz", "32", "--nosave"]) == 0
    assert "Using weights runs/train/exp2/weights/best.pt" in capsys.readouterr().out


def test_draw_detections_and_palette():
    img = np.zeros((64, 64, 3), np.uint8)
    det = torch.tensor([[10.0, 20.0, 40.0, 50.0, 0.9, 1.0]])
    draw_detections(img, det, ["a", "b"], line_thickness=2, hide_labels=True)
    assert tuple(int(v) for v in img[35, 10]) == class_color(1)  # left edge in the class colour
    assert img[35, 25].sum() == 0  # box interior untouched
    assert len({class_color(c) for c in range(20)}) == 20


def test_increment_path(tmp_path):
    assert increment_path(tmp_path / "exp") == tmp_path / "exp"
    assert increment_path(tmp_path / "exp") == tmp_path / "exp2"
    (tmp_path / "exp7").mkdir()
    assert increment_path(tmp_path / "exp") == tmp_path / "exp8"
    assert increment_path(tmp_path / "exp", exist_ok=True) == tmp_path / "exp"
    assert (tmp_path / "exp8").is_dir()
