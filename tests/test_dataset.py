"""Labels, cache, YoloDataset and build_dataloader on tiny synthetic data and the bundled sample."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from utils.boxes import scale_boxes, xywh2xyxy
from utils.data.config import load_data_config
from utils.data.loader import build_dataloader
from utils.data.dataset import YoloDataset
from utils.hyp import load_hyp
from utils.data.label_cache import cache_path, img2label_paths, load_labels

ROOT = Path(__file__).resolve().parents[1]


def make_split(root: Path, items: dict[str, tuple[int, int, str | None]], split: str = "train") -> list[str]:
    """Write images/<split>/<name> (w x h, noise) and, unless None, labels/<split>/<stem>.txt."""
    rng = np.random.default_rng(0)
    files = []
    for name, (w, h, label) in items.items():
        img_path = root / "images" / split / name
        img_path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(img_path), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        if label is not None:
            lbl = root / "labels" / split / f"{Path(name).stem}.txt"
            lbl.parent.mkdir(parents=True, exist_ok=True)
            lbl.write_text(label)
        files.append(str(img_path))
    return sorted(files)


@pytest.fixture(scope="module")
def sample_cfg() -> dict:
    return load_data_config(ROOT / "data" / "hit-uav-sample.yaml")


def test_img2label_paths_replaces_last_images_component():
    sep = os.sep
    got = img2label_paths([f"{sep}d{sep}images{sep}x{sep}images{sep}train{sep}a.jpg"])
    assert got == [f"{sep}d{sep}images{sep}x{sep}labels{sep}train{sep}a.txt"]


def test_boxes_polygons_duplicates_empty_and_missing(tmp_path: Path):
    files = make_split(tmp_path, {
        "a.png": (40, 20, "0 0.5 0.5 0.2 0.4\n1 0.25 0.25 0.1 0.1\n0 0.5 0.5 0.2 0.4\n"),
        "b.png": (40, 20, "2 0.1 0.1 0.5 0.1 0.5 0.3\n0 0.5 0.5 0.2 0.2\n"),
        "c.png": (40, 20, ""),
        "d.png": (40, 20, None),
    })
    ls = load_labels(files, use_cache=False)
    assert [Path(f).name for f in ls.img_files] == ["a.png", "b.png", "c.png", "d.png"]
    assert ls.shapes.tolist() == [[40, 20]] * 4
    np.testing.assert_allclose(ls.labels[0], [[0, 0.5, 0.5, 0.2, 0.4], [1, 0.25, 0.25, 0.1, 0.1]])  # dup removed
    assert ls.segments[0] == []
    np.testing.assert_allclose(ls.labels[1], [[2, 0.3, 0.2, 0.4, 0.2], [0, 0.5, 0.5, 0.2, 0.2]], atol=1e-6)
    assert len(ls.segments[1]) == 2 and ls.segments[1][0].shape == (3, 2) and ls.segments[1][1].shape == (4, 2)
    assert ls.labels[2].shape == (0, 5) and ls.labels[3].shape == (0, 5)


def test_bad_rows_and_corrupt_images_are_skipped_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    files = make_split(tmp_path, {
        "good.png": (32, 32, "0 0.5 0.5 0.5 0.5\n"),
        "count.png": (32, 32, "0 0.5 0.5 0.5\n"),
        "text.png": (32, 32, "0 0.5 x 0.5 0.5\n"),
        "range.png": (32, 32, "0 1.5 0.5 0.5 0.5\n"),
        "negcls.png": (32, 32, "-1 0.5 0.5 0.5 0.5\n"),
    })
    broken = tmp_path / "images" / "train" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 this is not a jpeg")
    with caplog.at_level(logging.WARNING):
        ds = YoloDataset(files + [str(broken)], imgsz=32)
    assert [Path(f).name for f in ds.img_files] == ["good.png"] and len(ds) == 1
    text = caplog.text
    for name in ("count.txt", "text.txt", "range.txt", "negcls.txt", "broken.jpg"):
        assert text.count(name) == 1, name  # exactly one warning per skipped image


def test_cache_is_reused_and_rebuilt_when_a_label_changes(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    files = make_split(tmp_path, {"a.png": (32, 32, "0 0.1 0.1 0.6 0.1 0.6 0.5\n3 0.5 0.5 0.2 0.2\n"),
                                  "b.png": (32, 32, "")})
    caplog.set_level(logging.INFO)
    scanned = load_labels(files)
    cache = cache_path(img2label_paths(files))
    assert cache == tmp_path / "labels" / "train.cache" and cache.is_file()
    caplog.clear()
    ls = load_labels(files)
    assert "Cached 2 images" in caplog.text and ls.labels[1].shape == (0, 5)
    np.testing.assert_array_equal(ls.labels[0], scanned.labels[0])  # polygons survive the round trip
    assert len(ls.segments[0]) == 2 and all(np.array_equal(x, y) for x, y in zip(ls.segments[0], scanned.segments[0]))
    assert ls.shapes.tolist() == [[32, 32], [32, 32]]
    lbl = tmp_path / "labels" / "train" / "b.txt"
    lbl.write_text("1 0.25 0.25 0.5 0.5\n")
    os.utime(lbl, ns=(lbl.stat().st_mtime_ns + 10**9,) * 2)  # a distinct mtime even on coarse clocks
    caplog.clear()
    ls = load_labels(files)
    assert "Scanned 2 images" in caplog.text
    np.testing.assert_allclose(ls.labels[1], [[1, 0.25, 0.25, 0.5, 0.5]])


def test_cache_write_failure_only_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    files = make_split(tmp_path, {"a.png": (32, 32, "0 0.5 0.5 0.5 0.5\n")})
    labels_dir = tmp_path / "labels"
    labels_dir.chmod(0o555)
    try:
        with caplog.at_level(logging.WARNING):
            ls = load_labels(files)
    finally:
        labels_dir.chmod(0o755)
    assert len(ls.img_files) == 1 and "cache not saved" in caplog.text
    assert not (labels_dir / "train.cache").exists()


@pytest.mark.parametrize("rect", [False, True])
def test_letterbox_shapes_map_boxes_back_exactly(tmp_path: Path, rect: bool):
    files = make_split(tmp_path, {
        "wide.png": (300, 201, "0 0.5 0.5 0.2 0.4\n1 0.1 0.9 0.05 0.1\n"),
        "tall.png": (123, 457, "2 0.3 0.6 0.3 0.2\n"),
        "square.png": (50, 50, "0 0.5 0.5 1.0 1.0\n"),
    })
    ds = YoloDataset(files, imgsz=128, augment=False, rect=rect, batch_size=2, stride=32)
    for k in range(len(ds)):
        img, labels, path, shapes = ds[k]
        i = ds.img_files.index(path)
        (h0, w0), _ = shapes
        assert (w0, h0) == tuple(ds.shapes[i])
        H, W = img.shape[1:]
        out = xywh2xyxy(labels[:, 2:].double()) * torch.tensor([W, H, W, H], dtype=torch.float64)
        back = scale_boxes((H, W), out, (h0, w0), ratio_pad=shapes[1])
        expect = xywh2xyxy(torch.from_numpy(ds.labels[i][:, 1:]).double()) * torch.tensor([w0, h0, w0, h0])
        torch.testing.assert_close(back, expect, atol=1e-3, rtol=0)
        assert torch.equal(labels[:, 1], torch.from_numpy(ds.labels[i][:, 0]))


def test_batch_contract(sample_cfg: dict):
    loader, ds = build_dataloader(sample_cfg["train"][:8], imgsz=128, batch_size=4, stride=32, hyp=load_hyp(),
                                  augment=True, shuffle=True, seed=3)
    imgs, targets, paths, shapes = next(iter(loader))
    assert imgs.dtype == torch.uint8 and imgs.shape == (4, 3, 128, 128)
    assert targets.dtype == torch.float32 and targets.ndim == 2 and targets.shape[1] == 6
    assert set(targets[:, 0].tolist()) <= {0.0, 1.0, 2.0, 3.0}
    assert ((targets[:, 2:] >= 0) & (targets[:, 2:] <= 1)).all()
    assert isinstance(paths, tuple) and len(paths) == 4 and all(isinstance(p, str) for p in paths)
    assert isinstance(shapes, tuple) and len(shapes) == 4
    assert len(loader) == 2 and len(ds) == 8


def test_rect_batches_have_stride_multiple_shapes(tmp_path: Path):
    sizes = [(64, 32), (64, 40), (40, 64), (30, 64), (64, 64)]
    files = make_split(tmp_path, {f"{i}.png": (w, h, "0 0.5 0.5 0.5 0.5\n") for i, (w, h) in enumerate(sizes)})
    loader, ds = build_dataloader(files, imgsz=96, batch_size=2, stride=32, hyp=None, augment=False, rect=True)
    ar = ds.shapes[:, 1] / ds.shapes[:, 0]
    assert (np.diff(ar) >= 0).all()  # sorted by aspect ratio
    seen = 0
    for imgs, targets, paths, shapes in loader:
        H, W = imgs.shape[2:]
        assert H % 32 == 0 and W % 32 == 0 and max(H, W) <= 96
        for (h0, w0), _ in shapes:  # every image fits at long side 96 without being cropped
            r = 96 / max(h0, w0)
            assert round(h0 * r) <= H and round(w0 * r) <= W
        assert (H, W) == tuple(ds.batch_shapes[seen // 2])
        seen += len(paths)
    assert seen == 5 and tuple(ds.batch_shapes[0]) == (64, 96)  # the two widest images: 96x48, 96x60


def test_mosaic9_produces_a_valid_batch(sample_cfg: dict):
    hyp = {**load_hyp(), "mosaic": 1.0, "mosaic9": 1.0}
    loader, _ = build_dataloader(sample_cfg["train"][:12], imgsz=128, batch_size=4, stride=32, hyp=hyp,
                                 augment=True, seed=1)
    imgs, targets, _, shapes = next(iter(loader))
    assert imgs.shape == (4, 3, 128, 128) and shapes == (None,) * 4
    assert len(targets) > 0 and ((targets[:, 2:] >= 0) & (targets[:, 2:] <= 1)).all()
    assert (targets[:, 4:] * 128 >= 1 - 1e-4).all()


def test_heavy_augmentation_keeps_boxes_inside_and_at_least_1px(sample_cfg: dict):
    hyp = {**load_hyp(), "degrees": 15.0, "shear": 5.0, "perspective": 0.001, "mixup": 0.5, "mosaic9": 0.5,
           "copy_paste": 1.0, "cp_times": 2, "albumentations": 1.0, "flipud": 0.5}
    ds = YoloDataset(sample_cfg["train"][:10], imgsz=96, augment=True, hyp=hyp)
    n_boxes = 0
    for k in range(len(ds)):
        img, labels, _, _ = ds[k]
        xyxy = xywh2xyxy(labels[:, 2:]) * 96
        assert ((xyxy >= -1e-4) & (xyxy <= 96 + 1e-4)).all()
        assert ((xyxy[:, 2:] - xyxy[:, :2]) >= 1 - 1e-4).all()
        assert img.shape == (3, 96, 96)
        n_boxes += len(labels)
    assert n_boxes > 0


def test_small_oversample_repeats_images_with_small_objects(tmp_path: Path):
    files = make_split(tmp_path, {
        "a_empty.png": (100, 100, ""),
        "b_large.png": (100, 100, "0 0.5 0.5 0.8 0.8\n"),
        "c_small.png": (100, 100, "0 0.5 0.5 0.8 0.8\n1 0.2 0.2 0.1 0.1\n"),  # 10x10 px
    })
    ds = YoloDataset(files, imgsz=64, augment=True, hyp={"small_oversample": 3})
    names = [Path(ds.img_files[i]).name for i in ds.indices]
    assert names == ["a_empty.png", "b_large.png"] + ["c_small.png"] * 3 and len(ds) == 5
    assert len(YoloDataset(files, imgsz=64, augment=False, hyp={"small_oversample": 3})) == 3
    with pytest.raises(ValueError, match="small_oversample"):
        YoloDataset(files, imgsz=64, augment=True, hyp={"small_oversample": 1.5})


def test_ram_cache_gives_identical_items(sample_cfg: dict):
    a = YoloDataset(sample_cfg["val"][:3], imgsz=64, cache="ram")
    b = YoloDataset(sample_cfg["val"][:3], imgsz=64)
    assert all(im is not None and im.dtype == np.uint8 for im in a.ims)
    for k in range(3):
        assert torch.equal(a[k][0], b[k][0]) and torch.equal(a[k][1], b[k][1])
    # training transforms work on copies: the cached pixels must survive HSV, flips and copy-paste
    hyp = {**load_hyp(), "mosaic": 0.0, "translate": 0.0, "scale": 0.0, "copy_paste": 1.0, "fliplr": 1.0}
    t = YoloDataset(sample_cfg["val"][:3], imgsz=64, augment=True, hyp=hyp, cache="ram")
    before = [im.copy() for im in t.ims]
    for k in range(3):
        t[k]
    assert all(np.array_equal(x, y) for x, y in zip(before, t.ims))


@pytest.mark.parametrize("workers", [0, 2])
def test_seeded_loader_is_reproducible(sample_cfg: dict, workers: int):
    def first_batch(seed: int):
        loader, _ = build_dataloader(sample_cfg["train"][:4], imgsz=64, batch_size=2, stride=32, hyp=load_hyp(),
                                     augment=True, shuffle=True, workers=workers, seed=seed)
        return next(iter(loader))

    a, b, c = first_batch(7), first_batch(7), first_batch(8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    assert not torch.equal(a[0], c[0])


def test_hituav_converter_on_published_format(tmp_path: Path):
    """tests/fixtures/hituav/val.json uses HIT-UAV's layout: "annotation", "filename", ids from 0, 4 = DontCare."""
    from data.scripts import hituav_json_to_yolo as conv  # data/scripts is a namespace package

    images = tmp_path / "images"
    images.mkdir()
    for name in ("0_60_30_0_00001.jpg", "0_60_30_0_00002.jpg", "1_90_60_0_00003.jpg"):  # 00004 is absent
        (images / name).write_bytes(b"")  # the converter only checks that the file is there
    out = tmp_path / "labels"
    n_files, n_boxes = conv.convert(ROOT / "tests" / "fixtures" / "hituav" / "val.json", images, out)
    assert (n_files, n_boxes) == (3, 5)
    assert sorted(p.name for p in out.iterdir()) == ["0_60_30_0_00001.txt", "0_60_30_0_00002.txt",
                                                     "1_90_60_0_00003.txt"]
    # 640x512 images; by hand: cx = (x + w/2) / 640, cy = (y + h/2) / 512, w / 640, h / 512
    assert (out / "0_60_30_0_00001.txt").read_text() == (
        "0 0.171875 0.419922 0.031250 0.058594\n"    # [100, 200, 20, 30] Person
        "1 0.550000 0.531250 0.100000 0.062500\n"    # [320, 256, 64, 32] Car
        "3 0.050000 0.050000 0.100000 0.100000\n")   # [0, 0, 64, 51.2] OtherVehicle
    assert (out / "0_60_30_0_00002.txt").read_text() == ""  # an image without objects
    assert (out / "1_90_60_0_00003.txt").read_text() == (
        # DontCare dropped; [600, 480, 80, 64] clipped to 600..640 x 480..512; [650, 10, ...] lies outside
        "2 0.968750 0.968750 0.062500 0.062500\n"
        "0 0.015625 0.218750 0.031250 0.046875\n")   # [-10, 100, 30, 24] clipped to x 0..20
