"""The training and scoring stages of benchmarks/vs_ultralytics.py, each cached as JSON in the work dir.

Cached files: ``ultralytics.json`` and ``ours_<tag>.json`` (tag ``equal_epochs`` or
``equal_time``), each ``{"train": {...timing and thread facts}, "coco": {AP ... AR100 ...}, ...}``.
Training runs as a child process so that its wall time and its CPU time (user + sys of the child
and everything it waited for, e.g. data-loader workers) can be measured alone.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from utils.coco_eval import parse_area_ranges
from utils.errors import MissingFileError, TrainingError

REPO = Path(__file__).resolve().parents[1]
SIDE = Path(__file__).with_name("ultralytics_side.py")


def load_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def save_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def run_timed(cmd: list[str], log: Path, env: dict | None = None, cwd: Path = REPO) -> dict:
    """Run ``cmd`` with stdout+stderr to ``log``; returns wall_s, user_s, sys_s, cpu_s of the child.

    CPU time is the RUSAGE_CHILDREN delta: the child and all descendants it reaped (loader workers).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        raise TrainingError(f"{cmd[1]} {cmd[2] if len(cmd) > 2 else ''} failed (exit {rc}); see {log}")
    user, sys_ = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    return {"wall_s": wall, "user_s": user, "sys_s": sys_, "cpu_s": user + sys_}


def score(gt: str, pred: Path) -> dict[str, float]:
    """``val.py --coco-gt GT --pred PRED`` in-process (same function), default extra bins included."""
    import val

    from utils.coco_eval import DEFAULT_AREA_RANGES
    return val.run_files(gt, str(pred), parse_area_ranges(DEFAULT_AREA_RANGES))


def ultra_to_our_ids(raw: list[dict], gt: dict, names: dict[int, str]) -> list[dict]:
    """Map ultralytics COCO results onto our GT: image id by file name, category by class name.

    ``raw`` entries carry ``file_name`` and ``category_id`` = ultralytics class index + 1;
    ``names`` is its class index -> name. Boxes stay ``[x, y, w, h]`` in original pixels.
    """
    img_ids = {Path(im["file_name"]).name: int(im["id"]) for im in gt["images"]}
    cat_ids = {c["name"]: int(c["id"]) for c in gt["categories"]}
    out = []
    for d in raw:
        name = Path(d["file_name"]).name
        if name not in img_ids:
            raise MissingFileError(f"ultralytics predicted on {name}, which is not in the ground truth")
        out.append({"image_id": img_ids[name], "category_id": cat_ids[names[int(d["category_id"]) - 1]],
                    "bbox": [float(v) for v in d["bbox"]], "score": float(d["score"])})
    return out


def _ultra_env(work: Path) -> dict:
    # PYTHONPATH cleared: the venv must find its own packages, not this repository's modules
    return {**os.environ, "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(work / "ultra_config"), "PYTHONPATH": ""}


def _ultra_train(a, work: Path, data: dict) -> dict:
    """Train ultralytics (child process in its venv); returns timing + the facts it wrote."""
    out = work / "ultra"
    cmd = [a.ultra_python, str(SIDE), "train", "--data", data["ultra_yaml"], "--model", a.ultra_model,
           "--epochs", str(a.epochs), "--imgsz", str(a.imgsz), "--batch", str(a.batch_size), "--nbs", str(a.nbs),
           "--optimizer", "auto", "--workers", str(a.workers), "--seed", str(a.seed),
           "--threads", str(a.ultra_threads), "--project", str(out), "--name", "train"]
    timing = run_timed(cmd, out / "train.log", _ultra_env(work), cwd=out)
    facts = load_json(out / "train" / "train_info.json") or {}
    return {**facts, **timing, "epoch_s": _epoch_seconds(facts)}


def _epoch_seconds(facts: dict) -> float:
    """Mean seconds per epoch (train + val) from the epoch-end times after setup."""
    ends = facts.get("epoch_end_s") or []
    return (ends[-1] - facts.get("setup_s", 0.0)) / len(ends) if ends else 0.0


def run_ultralytics(a, work: Path, data: dict) -> dict:
    """Train (unless cached), predict on val, map to our ids, score; caches ``ultralytics.json``."""
    if not Path(a.ultra_python).is_file():
        raise MissingFileError(f"--ultra-python {a.ultra_python} not found (see benchmarks/vs_ultralytics.md)")
    out, cache = work / "ultra", work / "ultralytics.json"
    prev = load_json(cache)
    if prev and "coco" in prev and not a.force:
        return prev
    out.mkdir(parents=True, exist_ok=True)
    train = prev["train"] if prev and not a.force else _ultra_train(a, work, data)
    save_json(cache, {"train": train})  # keep the expensive part even if scoring fails
    raw = out / "val_raw.json"
    cmd = [a.ultra_python, str(SIDE), "predict", "--weights", train["best"], "--data", data["ultra_yaml"],
           "--imgsz", str(a.imgsz), "--batch", str(a.batch_size), "--conf", str(a.conf), "--iou", str(a.iou),
           "--max-det", str(a.max_det), "--project", str(out), "--name", "val", "--out", str(raw)]
    run_timed(cmd, out / "val.log", _ultra_env(work), cwd=out)
    info = load_json(out / "val_raw_info.json") or {}
    gt = json.loads(Path(data["gt"]).read_text())
    names = {int(k): v for k, v in info["names"].items()}
    pred = out / "predictions_our_ids.json"
    pred.write_text(json.dumps(ultra_to_our_ids(json.loads(raw.read_text()), gt, names)))
    result = {"tool": "ultralytics", "model": a.ultra_model, "epochs": a.epochs, "train": train,
              "coco": score(data["gt"], pred), "own_metrics": info.get("own_metrics", {}),
              "predict": {k: info.get(k) for k in ("conf", "iou", "max_det", "imgsz")}, "pred": str(pred)}
    save_json(cache, result)
    return result


def _results_csv_time(run_dir: Path) -> tuple[int, float]:
    """(epochs logged, seconds of the last row's cumulative ``time`` column) of our results.csv."""
    with open(run_dir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return len(rows), float(rows[-1]["time"]) if rows and "time" in rows[-1] else 0.0


def _our_threads(env: dict) -> int:
    """torch's thread count in a fresh process with ``env`` (train.py does not change it)."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def _our_train(a, work: Path, data: dict, epochs: int, tag: str, budget_s: float = 0.0) -> dict:
    env = {**os.environ, **({"OMP_NUM_THREADS": str(a.threads)} if a.threads > 0 else {})}
    run_dir = work / "ours" / tag
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: results.csv must not be appended to
    # train at --train-imgsz (e.g. native-resolution crops), always validate at the scored --imgsz
    cmd = [sys.executable, "train.py", "--cfg", a.cfg, "--data", data["ours_yaml"], "--hyp", a.hyp,
           "--epochs", str(epochs), "--imgsz", str(a.train_imgsz or a.imgsz), "--val-imgsz", str(a.imgsz),
           *(["--time", f"{budget_s / 3600:.6f}"] if budget_s else []), *(["--noval"] if a.noval else []), "--batch-size", str(a.batch_size),
           "--nbs", str(a.nbs), "--optimizer", "auto", "--workers", str(a.workers), "--seed", str(a.seed),
           "--project", str(work / "ours"), "--name", tag, "--exist-ok"]
    timing = run_timed(cmd, work / "ours" / f"{tag}_train.log", env)
    n, loop_s = _results_csv_time(run_dir)
    return {**timing, "epochs_logged": n, "loop_s": loop_s, "epoch_s": loop_s / max(n, 1),
            "torch_threads": _our_threads(env), "workers": a.workers, "best": str(run_dir / "weights" / "best.pt")}


def run_ours(a, work: Path, data: dict, epochs: int, tag: str, budget_s: float = 0.0) -> dict:
    """Train ours for ``epochs`` (unless cached), save val predictions, score; caches ``ours_<tag>.json``.

    With ``budget_s`` the epochs are only a first guess: train.py --time plans them to fit the budget.
    """
    cache = work / f"ours_{tag}.json"
    prev = load_json(cache)
    if prev and not a.force and prev.get("epochs") == epochs and "coco" in prev:
        return prev
    train = _our_train(a, work, data, epochs, tag, budget_s)
    epochs = train["epochs_logged"] if budget_s else epochs
    save_json(cache, {"epochs": epochs, "train": train})
    cmd = [sys.executable, "val.py", "--weights", train["best"], "--data", data["ours_yaml"], "--imgsz",
           str(a.imgsz), "--batch-size", str(a.batch_size), "--conf-thres", str(a.conf), "--iou-thres", str(a.iou),
           "--max-det", str(a.max_det), "--coco-gt", data["gt"], "--save-json", "--no-plots", "--workers",
           str(a.workers), "--project", str(work / "ours"), "--name", f"{tag}_val", "--exist-ok"]
    run_timed(cmd, work / "ours" / f"{tag}_val.log")
    pred = work / "ours" / f"{tag}_val" / "predictions.json"
    result = {"tool": "ours", "model": Path(a.cfg).name, "hyp": Path(a.hyp).name, "epochs": epochs, "tag": tag,
              "train_imgsz": a.train_imgsz or a.imgsz, "time_budget_s": budget_s,
              "train": train, "coco": score(data["gt"], pred), "pred": str(pred),
              "predict": {"conf": a.conf, "iou": a.iou, "max_det": a.max_det, "imgsz": a.imgsz}}
    save_json(cache, result)
    return result


def equal_time_epochs(ours: dict, budget_s: float) -> int:
    """Epochs of ours whose training process would take ``budget_s`` (ultralytics' measured wall time).

    Fixed costs (start-up, label scan, final evaluation) are the process wall time minus the
    epoch loop; the rest of the budget is divided by our measured seconds per epoch.
    """
    t = ours["train"]
    fixed = max(t["wall_s"] - t["loop_s"], 0.0)
    return max(1, round((budget_s - fixed) / t["epoch_s"]))
