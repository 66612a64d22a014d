"""DDP under torchrun: the helpers, and two gloo processes on the CPU that train, stop on SIGTERM and resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.helpers import ROOT, sample_dataset
from utils.checkpoint import load_checkpoint, load_model
from utils.data.stitcher import StitchingLoader
from utils.distributed import DistInfo, elastic_restart_count, env_info, is_peer_failure, per_process_batch
from utils.errors import ConfigError

# A torchrun worker: train.py, plus a dump of what this rank trained on and of its final weights,
# so the test can compare the two processes (only rank 0 writes checkpoints).
WORKER = """
import hashlib, json, os, sys
sys.path.insert(0, {root!r})
import train
from utils import trainer as trainer_module

fit = trainer_module.Trainer.fit

def fit_and_dump(self):
    indices = sorted(int(i) for i in self.train_loader.sampler)  # this rank's share of the epoch
    out = fit(self)
    digest = hashlib.sha256()
    for name, p in sorted(self.model.named_parameters()):
        digest.update(name.encode() + p.detach().cpu().numpy().tobytes())
    with open(os.path.join({dump!r}, f"rank{{self.dist.rank}}.json"), "w") as f:
        json.dump({{"indices": indices, "weights": digest.hexdigest(), "world": self.dist.world_size}}, f)
    return out

trainer_module.Trainer.fit = fit_and_dump
sys.exit(train.main())
"""


def test_env_info_reads_torchrun_variables_and_defaults_to_one_process():
    assert env_info({}) == DistInfo(0, 0, 1) and not env_info({}).enabled and env_info({}).is_main
    info = env_info({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert info == DistInfo(3, 1, 4) and info.enabled and not info.is_main
    with pytest.raises(ConfigError, match="RANK"):
        env_info({"RANK": "x"})
    assert elastic_restart_count({}) == 0 and elastic_restart_count({"TORCHELASTIC_RESTART_COUNT": "2"}) == 2


def test_batch_size_is_the_global_batch_split_across_processes():
    assert per_process_batch(64, 4) == 16 and per_process_batch(16, 1) == 16
    with pytest.raises(ConfigError, match="--batch-size 10 is not a multiple of WORLD_SIZE 4"):
        per_process_batch(10, 4)


def test_peer_failures_are_told_apart_from_bugs():
    gloo = RuntimeError("[../gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:33162: Connection reset by peer")
    assert is_peer_failure(gloo)
    assert not is_peer_failure(RuntimeError("shape mismatch")) and not is_peer_failure(ValueError("gloo"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(worker: Path, *args: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(worker), *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own group, so a timeout can end every worker


def _finish(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.timeout(480)  # the subprocess waits below add up to 470 s on a loaded machine
def test_torchrun_two_processes_train_stop_on_sigterm_and_resume(tmp_path):
    data = tmp_path / "data"
    data_yaml = sample_dataset(data)
    dump = tmp_path / "dump"
    dump.mkdir()
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(root=str(ROOT), dump=str(dump)))
    project, last = tmp_path / "runs", tmp_path / "runs" / "run" / "weights" / "last.pt"
    # global batch 4 = 2 images per process; nbs 4: every iteration is an optimizer step
    args = ["--data", str(data_yaml), "--cfg", "models/yolov5n.yaml", "--imgsz", "64", "--batch-size", "4",
            "--nbs", "4", "--epochs", "3", "--workers", "0", "--noautoanchor", "--noval", "--device", "cpu",
            "--project", str(project), "--name", "run"]

    # 1) preemption: SIGTERM to torchrun (it forwards it to both workers) once epoch 0 is saved
    proc = _torchrun(worker, *args, log=tmp_path / "first.log")
    deadline = time.time() + 180
    while proc.poll() is None and not last.exists() and time.time() < deadline:
        time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    code = _finish(proc, timeout=120)
    out = (tmp_path / "first.log").read_text()
    assert code != 0, "the run ended before SIGTERM reached it\n" + out[-3000:]
    assert "stopped by SIGTERM" in out and "train.py --resume` continues the run" in out, out[-3000:]
    ckpt = load_checkpoint(last)
    assert ckpt["train_model"] is not None and 0 <= ckpt["epoch"] <= 2  # resumable
    assert not list(dump.iterdir())  # the interrupted run never returned from fit()

    # 2) --resume under torchrun finishes the run
    proc = _torchrun(worker, "--resume", str(last), log=tmp_path / "second.log")
    code = _finish(proc, timeout=170)
    out = (tmp_path / "second.log").read_text()
    assert code == 0, out[-3000:]
    assert "continuing from epoch" in out and "2 processes; batch 4 (2 per process)" in out
    assert out.count("Results saved to") == 1  # rank 0 alone reports
    assert [p.name for p in project.iterdir() if not p.name.startswith(".")] == ["run"]  # one run folder
    with open(project / "run" / "results.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 2]
    _, best = load_model(project / "run" / "weights" / "best.pt")
    assert best["names"] == ["Person", "Car", "Bicycle", "OtherVehicle"] and best["optimizer"] is None

    ranks = [json.loads((dump / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    assert ranks[0]["weights"] == ranks[1]["weights"]  # DDP kept the processes' weights identical
    assert not set(ranks[0]["indices"]) & set(ranks[1]["indices"])  # each trained on its own half ...
    assert sorted(ranks[0]["indices"] + ranks[1]["indices"]) == list(range(8))  # ... of the whole split


def test_feedback_ratio_is_the_jobs_mean_so_every_process_stitches_alike(monkeypatch):
    from utils import engine

    other_rank = torch.tensor(0.1)  # what the other process measured

    def all_reduce_mean_with_other_rank(t, op="sum"):
        assert op == "mean"
        return t.copy_((t + other_rank) / 2)

    monkeypatch.setattr(engine, "all_reduce_", all_reduce_mean_with_other_rank)
    loss, loader = SimpleNamespace(r_prev=0.5), StitchingLoader([], tau=0.25)
    engine._agree_feedback({"fdl_ratio": torch.tensor(0.6)}, 0.5, loss, loader, world_size=2)
    assert float(loader.feedback) == pytest.approx(0.35) and float(loss.r_prev) == pytest.approx(0.35)
    assert not loader._want_stitch()  # 0.6 alone would not stitch either; the mean decides
    engine._agree_feedback({"fdl_ratio": torch.tensor(float("nan"))}, 0.3, loss, loader, world_size=2)
    assert float(loader.feedback) == pytest.approx(0.2) and loader._want_stitch()  # nan: this process keeps 0.3


def test_a_non_finite_loss_on_one_process_skips_the_step_on_all(monkeypatch):
    from utils import step_guard

    other_rank = torch.tensor([1.0, 1.0, 3.0, 0.0])  # the other process: one nan at batch 3, no stop

    monkeypatch.setattr(step_guard, "all_reduce_", lambda t, op="sum": t.copy_(torch.maximum(t, other_rank)))
    guard = step_guard.StepGuard(torch.device("cpu"))
    guard.note(torch.tensor(2.0), 3)  # finite here
    verdict = guard.poll(stop_requested=False)
    assert verdict == step_guard.Verdict(nonfinite=1, in_a_row=1, batch=3, stop=False)
    assert guard.value_text() == "non-finite"  # this process saw no bad value itself
