"""Dataset YAML loading: split forms, names forms, path resolution and clear errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.data.config import load_data_config

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def _make_images(root: Path, names: list[str]) -> list[Path]:
    files = []
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), np.zeros((16, 16, 3), np.uint8))
        files.append(p)
    return files


def _write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture()
def ds_root(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    _make_images(root, ["images/train/a.jpg", "images/train/sub/b.png", "images/val/c.jpg", "images/extra/d.jpg"])
    (root / "images" / "train" / "notes.txt").write_text("not an image")
    return root


def test_folder_split_is_recursive_and_path_relative_to_yaml(ds_root: Path, tmp_path: Path):
    y = _write_yaml(tmp_path / "d.yaml", "path: ds\ntrain: images/train\nval: images/val\nnames: [a, b]\n")
    cfg = load_data_config(y)
    assert cfg["path"] == ds_root
    assert [Path(f).name for f in cfg["train"]] == ["a.jpg", "b.png"]
    assert [Path(f).name for f in cfg["val"]] == ["c.jpg"]
    assert cfg["test"] is None and cfg["names"] == ["a", "b"] and cfg["nc"] == 2
    assert cfg["yaml_file"] == y


def test_txt_list_and_list_of_sources(ds_root: Path, tmp_path: Path):
    (ds_root / "train.txt").write_text(f"images/train/a.jpg\n\n{ds_root / 'images/extra/d.jpg'}\n")
    y = _write_yaml(tmp_path / "d.yaml", f"path: {ds_root}\ntrain: train.txt\n"
                    "val: [images/val, images/extra]\ntest: images/val/c.jpg\nnames: [x]\n")
    cfg = load_data_config(y)
    assert cfg["train"] == sorted(cfg["train"])  # sorted full paths: a reproducible order
    assert sorted(Path(f).name for f in cfg["train"]) == ["a.jpg", "d.jpg"]
    assert sorted(Path(f).name for f in cfg["val"]) == ["c.jpg", "d.jpg"]
    assert [Path(f).name for f in cfg["test"]] == ["c.jpg"]


def test_names_dict_and_nc(ds_root: Path, tmp_path: Path):
    y = _write_yaml(tmp_path / "d.yaml", "path: ds\ntrain: images/train\nval: images/val\n"
                    "nc: 3\nnames:\n  2: car\n  0: person\n  1: bike\ndownload: https://example.com/x.zip\n")
    cfg = load_data_config(y)
    assert cfg["names"] == ["person", "bike", "car"] and cfg["nc"] == 3


@pytest.mark.parametrize("extra, match", [
    ("colour: red\n", r"unknown key 'colour'.*d\.yaml"),
    ("nc: 5\n", "does not match"),
])
def test_bad_keys_are_errors_naming_key_and_file(ds_root: Path, tmp_path: Path, extra: str, match: str):
    y = _write_yaml(tmp_path / "d.yaml", f"path: ds\ntrain: images/train\nval: images/val\nnames: [a]\n{extra}")
    with pytest.raises(ValueError, match=match):
        load_data_config(y)


def test_names_dict_with_gap_is_error(ds_root: Path, tmp_path: Path):
    y = _write_yaml(tmp_path / "d.yaml", "path: ds\ntrain: images/train\nval: images/val\nnames: {0: a, 2: c}\n")
    with pytest.raises(ValueError, match="without gaps"):
        load_data_config(y)


def test_missing_split_folder_is_clear_error(ds_root: Path, tmp_path: Path):
    y = _write_yaml(tmp_path / "d.yaml", "path: ds\ntrain: images/nope\nval: images/val\nnames: [a]\n")
    with pytest.raises(FileNotFoundError, match=r"'train' path .*images/nope"):
        load_data_config(y)
    y2 = _write_yaml(tmp_path / "e.yaml", "path: ds\ntrain: images/train\nnames: [a]\n")
    with pytest.raises(ValueError, match="missing 'val'"):
        load_data_config(y2)


def test_coco_json_paths_relative_to_path(ds_root: Path, tmp_path: Path):
    (ds_root / "val.json").write_text("{}")
    y = _write_yaml(tmp_path / "d.yaml", "path: ds\ntrain: images/train\nval: images/val\nval_json: val.json\n"
                    "names: [a]\n")
    assert load_data_config(y)["val_json"] == ds_root / "val.json"


def test_bare_name_resolves_in_repo_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)  # nothing of that name here: must fall back to <repo>/data
    for name in ("hit-uav-sample.yaml", "data/hit-uav-sample.yaml"):
        cfg = load_data_config(name)
        assert cfg["yaml_file"] == ROOT / "data" / "hit-uav-sample.yaml"
        assert len(cfg["train"]) == 80 and len(cfg["val"]) == 20
        assert cfg["names"] == ["Person", "Car", "Bicycle", "OtherVehicle"]


def test_hit_uav_yaml_names_the_shared_dataset_and_fails_clearly_without_it(tmp_path: Path):
    """The full-dataset YAML is relative to its own folder: a copy with nothing beside it says so in one error."""
    import yaml

    from utils.errors import MissingFileError

    raw = yaml.safe_load((ROOT / "data" / "hit-uav.yaml").read_text())
    assert (ROOT / "data" / raw["path"]).resolve() == SHARED.resolve() / "hit-uav"
    copy = tmp_path / "repo" / "data" / "hit-uav.yaml"
    copy.parent.mkdir(parents=True)
    copy.write_text((ROOT / "data" / "hit-uav.yaml").read_text())
    with pytest.raises(MissingFileError, match=r"dataset path .*shared/datasets/hit-uav .*does not exist"):
        load_data_config(copy)


@pytest.mark.skipif(not (SHARED / "hit-uav").is_dir(), reason="the full HIT-UAV copy is not beside the repository")
def test_hit_uav_yaml_points_at_shared_dataset():
    cfg = load_data_config(ROOT / "data" / "hit-uav.yaml")
    assert cfg["path"] == SHARED / "hit-uav"
    assert len(cfg["train"]) == 800 and len(cfg["val"]) == 290
    assert cfg["names"] == ["Person", "Car", "Bicycle", "OtherVehicle"]
