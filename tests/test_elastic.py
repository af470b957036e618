"""Elastic restarts for real: ``torchrun --max-restarts 2`` on gloo runs the job again
after a worker is SIGKILLed mid-epoch (twice, at different steps and ranks), each time
continuing from the newest checkpoint with ``resume='auto'``; a SIGTERM to the agent
then preempts the job (final checkpoint, status ``preempted``, workers exit 143), and
running the same command again completes it — with the weights of an uninterrupted
run, bit for bit, for DDP with ``Checkpoint`` and FSDP2 with ``ShardedCheckpoint``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "scripts" / "elastic_train.py"
pytestmark = pytest.mark.slow


def torchrun(run_dir: Path, *args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", "--max-restarts", "2", str(SCRIPT), str(run_dir)]
    return subprocess.Popen(
        [*command, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wait_for(condition, what: str, process: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            raise AssertionError(f"the job ended before {what}:\n{process.stdout.read()[-4000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def finish(process: subprocess.Popen, timeout: float = 180.0) -> str:
    try:
        out, _ = process.communicate(timeout=timeout)
    finally:
        process.kill()
    return out


def resumed_at(line: str) -> int:
    """The iteration of an ``evloop: resumed from … (epoch E, iteration I)`` line."""
    return int(line.rsplit("iteration ", 1)[1].rstrip(")"))


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_killed_workers_and_a_preempted_job_end_with_the_weights_of_an_uninterrupted_run(
    tmp_path, strategy
):
    faults = ["--strategy", strategy, "--kill", "1:7", "--kill", "0:17"]
    job = torchrun(tmp_path, *faults, "--wait-for-sigterm-at", "26")
    wait_for(lambda: (tmp_path / "waiting").exists(), "the third attempt's step 26", job)
    job.send_signal(signal.SIGTERM)  # to the agent, which forwards it to its workers
    said = finish(job)
    assert job.returncode != 0, said[-3000:]
    assert (tmp_path / "killed_1_7").exists() and (tmp_path / "killed_0_17").exists()
    # each restart continued from the newest checkpoint before its kill (every 5 steps)
    resumed = [resumed_at(line) for line in said.splitlines() if "evloop: resumed from" in line]
    assert resumed == [4, 14], said[-3000:]
    assert "SIGTERM: preempted" in said
    assert "the run ended cleanly. Exiting with 143" in said
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "preempted"
    stopped_at = summary["iters"]
    assert stopped_at >= 26

    again = torchrun(tmp_path, *faults, "--reference")  # what a requeued job runs
    said = finish(again)
    assert again.returncode == 0, said[-3000:]
    resumed = [resumed_at(line) for line in said.splitlines() if "evloop: resumed from" in line]
    assert resumed == [stopped_at]  # the preempted run's final checkpoint
    final = torch.load(tmp_path / "final.pt", weights_only=True)
    reference = torch.load(tmp_path / "reference.pt", weights_only=True)
    assert final.keys() == reference.keys()
    for name, weights in reference.items():
        assert torch.equal(final[name], weights), name
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "finished"
