"""Real processes killed mid-checkpoint, interrupted with Ctrl-C, and resumed."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import wait_for

from evloop.checkpoint_io import TMP_SUFFIX, load, load_latest

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "train_process.py")


def _start(ckpt_dir, jsonl, *args):
    return subprocess.Popen(
        [sys.executable, SCRIPT, str(ckpt_dir), str(jsonl), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _size(path):
    """A file's size; 0 once it is gone (a write renamed it into place meanwhile)."""
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def _events(jsonl):
    with open(jsonl, "rb") as file:
        return [json.loads(line) for line in file if line.strip()]


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_checkpoint_write_then_resume(tmp_path):
    ckpt_dir, jsonl = tmp_path / "ck", tmp_path / "events.jsonl"
    # a ~64 MB model so that one write takes long enough to be caught in the middle
    proc = _start(ckpt_dir, jsonl, "--width", "4000", "--every", "2")

    def torn_write_in_progress():
        complete = glob.glob(str(ckpt_dir / "ckpt_*.pth"))
        partial = [p for p in glob.glob(str(ckpt_dir / f".*{TMP_SUFFIX}")) if _size(p) > 1 << 20]
        return complete and partial and partial[0]

    try:
        partial = wait_for(torn_write_in_progress)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL

    # the file being written was torn, the named checkpoints are all intact
    with pytest.raises(Exception):  # noqa: B017 - any load error of a torn file
        torch.load(partial, weights_only=True)
    finished = sorted(glob.glob(str(ckpt_dir / "ckpt_*.pth")), key=os.path.getmtime)
    for path in finished:
        assert "model" in load(path)
    path, state = load_latest(str(ckpt_dir))
    assert path == finished[-1]
    saved_iters = state["progress"]["iters"]

    resumed = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            str(ckpt_dir),
            str(jsonl),
            "--width",
            "4000",
            "--every",
            "1000",
            "--epochs",
            "1",
            "--resume",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"at iteration {saved_iters}" in resumed.stdout
    assert "finished at iteration 49" in resumed.stdout


@pytest.mark.slow
def test_ctrl_c_finishes_the_batch_writes_a_final_checkpoint_and_drains(tmp_path):
    ckpt_dir, jsonl = tmp_path / "ck", tmp_path / "events.jsonl"
    proc = _start(ckpt_dir, jsonl, "--step-sleep", "0.02")
    try:
        wait_for(lambda: jsonl.exists() and len(_events(jsonl)) > 20)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "interrupted; finishing the current batch" in stderr
    assert "KeyboardInterrupt: training interrupted at epoch 0, iteration" in stderr

    events = _events(jsonl)
    assert events[-1]["type"] == "run_finished" and events[-1]["stopped"]
    last_batch = [e for e in events if e["type"] == "batch_ended"][-1]["iters"]
    assert events[-1]["iters"] == last_batch
    # every batch reached the lossless log, in order
    assert [e["iters"] for e in events if e["type"] == "batch_ended"] == list(range(last_batch + 1))
    path, state = load_latest(str(ckpt_dir))
    assert path.endswith(f"ckpt_{last_batch}.pth")
    assert state["progress"]["iters"] == last_batch
    assert not state["progress"]["epoch_done"]


@pytest.mark.slow
def test_a_second_ctrl_c_aborts_at_once(tmp_path):
    ckpt_dir, jsonl = tmp_path / "ck", tmp_path / "events.jsonl"
    # a long batch: both Ctrl-C land in it, however late a loaded machine sees the first
    proc = _start(ckpt_dir, jsonl, "--step-sleep", "20")
    try:
        # told at once, before the first (long) batch ends
        wait_for(lambda: jsonl.exists() and any(e["type"] == "run_started" for e in _events(jsonl)))
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        proc.kill()
    assert took < 10  # did not wait for the 20 s batch to finish
    assert proc.returncode == 130
    assert "aborted by a second Ctrl-C" in stderr
    assert not glob.glob(str(ckpt_dir / "ckpt_*.pth"))
