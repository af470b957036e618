"""FSDP2 and sharded checkpoints in real ``torchrun`` jobs on CPU (gloo): sharded
training equals one process, a save killed half-way is never loaded, resumes are
exact (and re-shard onto another world size), a stop on rank 0 ends every rank, and
two launchers make one job whose lost node ends the other with a clear message."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evloop import Recipe
from evloop.distributed.checkpoint import is_complete, latest_sharded

SCRIPT = Path(__file__).parent / "scripts" / "fsdp_train.py"
pytestmark = pytest.mark.slow


def torchrun(run_dir: Path, *args: str, processes: int = 2, timeout: float = 120):
    run_dir.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", str(processes), str(SCRIPT), str(run_dir), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def one_process(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    run_dir.mkdir(exist_ok=True)
    command = [sys.executable, str(SCRIPT), str(run_dir), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def ok(process: subprocess.CompletedProcess) -> None:
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]


def report(run_dir: Path, rank: int = 0) -> dict:
    return json.loads((run_dir / f"rank{rank}.json").read_text())


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "final.pt", weights_only=True)


def test_fsdp_on_two_ranks_trains_as_one_process_on_their_union(tmp_path):
    sharded, single = tmp_path / "sharded", tmp_path / "single"
    ok(torchrun(sharded, "--epochs", "2", "--batch", "16", "--reduce-every", "4"))
    ok(one_process(single, "--epochs", "2", "--batch", "32"))  # both ranks' batches at once
    assert [report(sharded, r)["param"] for r in (0, 1)] == ["DTensor", "DTensor"]
    assert report(sharded)["module"] == "FSDPSequential"
    assert report(single)["param"] == "Parameter"  # one process: nothing to shard
    for name, weights in final_weights(single).items():
        torch.testing.assert_close(final_weights(sharded)[name], weights, rtol=1e-5, atol=1e-6)
    assert report(sharded)["epoch_loss"] == pytest.approx(report(single)["epoch_loss"], rel=1e-5)
    # each rank wrote its own shard of every save
    assert sorted(p.name for p in (sharded / "ckpt_1").glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    metric_means_are_reduced_together_only_on_published_steps(sharded)


def metric_means_are_reduced_together_only_on_published_steps(run_dir: Path) -> None:
    ranks = [report(run_dir, r) for r in (0, 1)]
    # 16 steps, two averagers: one all-reduce every 4 steps for both, plus each epoch's
    # two means (it was one all-reduce per averager per step: 36)
    assert [r["metric_collectives"] for r in ranks] == [4 + 2 * 2, 4 + 2 * 2]
    assert [step for step, _, _ in ranks[0]["reduced"]] == [0, 4, 8, 12]
    assert ranks[0]["reduced"] == ranks[1]["reduced"]  # every rank holds the global mean
    first_five = [sum(r["losses"][:5]) / 5 for r in ranks]
    _, loss, score = ranks[0]["reduced"][1]
    assert loss == pytest.approx(sum(first_five) / 2, rel=1e-5)
    assert score == pytest.approx(2 * loss, rel=1e-5)


def test_a_save_killed_midway_is_skipped_and_the_resume_is_exact(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    common = ("--epochs", "3", "--shuffle", "--dropout", "0.2")
    ok(torchrun(whole, *common))
    killed = torchrun(split, *common, "--kill-in-save", "1")  # rank 1 dies mid-save
    assert killed.returncode != 0
    assert not (split / "ckpt_1").exists() and (split / "ckpt_1.partial").is_dir()
    assert not is_complete(str(split / "ckpt_1.partial"))
    assert latest_sharded(str(split / "ckpt_*")) == str(split / "ckpt_0")
    a_two_process_save_resumes_in_one_process(split / "ckpt_0", tmp_path / "moved")
    resumed = torchrun(split, *common, "--resume")  # with resume='auto'
    ok(resumed)
    assert f"resumed from {split / 'ckpt_0'} (epoch 0, iteration 7)" in resumed.stderr
    assert not (split / "ckpt_1.partial").exists()  # removed at the resumed run's start
    for name, weights in final_weights(whole).items():
        assert torch.equal(final_weights(split)[name], weights), name
    # resumed after epoch 0: two epochs of 8 batches per rank, counters continued
    assert report(split)["iters"] == report(whole)["iters"] == 23
    assert len(report(split)["losses"]) == 16


def a_two_process_save_resumes_in_one_process(save: Path, run_dir: Path) -> None:
    shutil.copytree(save, run_dir / "ckpt_0")
    # --epochs 1: nothing left to train, so final.pt holds what was loaded
    loaded = one_process(run_dir, "--epochs", "1", "--resume")
    ok(loaded)
    assert "RNG states of 2 ranks" in loaded.stderr
    assert f"resumed from {run_dir / 'ckpt_0'} (epoch 0, iteration 7)" in loaded.stderr
    weights = final_weights(run_dir)
    for name, saved in saved_weights(save, like=weights).items():
        assert torch.equal(weights[name], saved), name


def saved_weights(save: Path, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's weights in a sharded save, read with DCP alone."""
    import torch.distributed.checkpoint as dcp

    state = {"modules": {f"model.{k}": torch.empty_like(v) for k, v in like.items()}}
    dcp.load(state, checkpoint_id=str(save), no_dist=True)
    return {k.removeprefix("model."): v for k, v in state["modules"].items()}


def test_commands_and_a_stop_on_rank_0_reach_every_rank_at_the_same_step(tmp_path):
    ok(torchrun(tmp_path, "--epochs", "3", "--steer-at", "2", "--stop-at", "9", timeout=90))
    ranks = [report(tmp_path, r) for r in (0, 1)]
    # stop asked at step 9 on rank 0: both ranks end at the same step, at the latest
    # at the epoch's end (8 steps an epoch), where the vote is settled at once
    stopped = ranks[0]["iters"]
    assert ranks[1]["iters"] == stopped and 10 <= stopped <= 15
    # set lr and pause sent to rank 0 after step 2: applied on both at one boundary
    changed = []
    for r in ranks:
        lrs = {iters: lr for iters, lr, _ in r["steps"]}
        first = min(i for i, lr in lrs.items() if lr == 0.01)
        assert lrs[first - 1] == 0.05 and lrs[stopped] == 0.01
        times = {iters: t for iters, _, t in r["steps"]}
        assert times[first] - times[first - 1] > 0.8  # both paused there until the resume
        assert max(times[i + 1] - times[i] for i in range(first, stopped)) < 0.8
        changed.append(first)
    assert changed[0] == changed[1] and changed[0] >= 4
    # the final checkpoint of a run stopped mid-epoch, written by both ranks
    assert is_complete(str(tmp_path / "ckpt_0"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_launchers(run_dir: Path, *args: str) -> list[subprocess.CompletedProcess]:
    """One job of two 'nodes' of one process each, meeting at a c10d rendezvous on the
    loopback address (run_dir stands for their shared file system)."""
    run_dir.mkdir(exist_ok=True)
    endpoint = f"127.0.0.1:{free_port()}"
    launchers = []
    for node in (0, 1):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2"]
        command += ["--nproc_per_node", "1", "--node_rank", str(node), "--rdzv_backend", "c10d"]
        command += ["--rdzv_endpoint", endpoint, "--rdzv_id", "evloop-test"]
        command += [str(SCRIPT), str(run_dir), *args]
        launchers.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    finished = []
    for launcher in launchers:
        out, err = launcher.communicate(timeout=120)
        finished.append(subprocess.CompletedProcess(launcher.args, launcher.returncode, out, err))
    return finished


def test_two_launchers_make_one_job_and_a_lost_node_ends_the_other_clearly(tmp_path):
    # 8 steps per epoch: the first epoch's sharded save has completed (the second's
    # waited for it) when one "node" dies in the third
    launchers = two_launchers(tmp_path, "--epochs", "3", "--kill-at", "20")
    assert is_complete(str(tmp_path / "ckpt_0"))  # both nodes wrote their shards
    assert sorted(p.name for p in (tmp_path / "ckpt_0").glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    assert [launcher.returncode != 0 for launcher in launchers] == [True, True]
    said = b"".join(launcher.stderr for launcher in launchers).decode()
    # the collective it waited in, named when it is one of evloop's own
    assert re.search(r"PeerLost: rank 0 of 2: another rank stopped answering (during|while) ", said)
    assert not (tmp_path / "rank0.json").exists()


def test_strategy_options_are_checked():
    recipe = Recipe(lambda batch: None, [1])
    with pytest.raises(ValueError, match="strategy must be one of"):
        recipe.distributed(strategy="zero3")
    with pytest.raises(ValueError, match="blocks= is an FSDP option"):
        recipe.distributed(blocks=(torch.nn.Linear,))
    assert recipe.distributed(strategy="fsdp").strategy == "fsdp"
    assert recipe.distributed(ddp=False).strategy is None


def test_a_single_file_checkpoint_refuses_a_sharded_recipe(tmp_path, monkeypatch):
    import evloop.callbacks as ecb

    recipe = Recipe(lambda batch: None, [1]).distributed(strategy="fsdp")  # one process
    monkeypatch.setenv("WORLD_SIZE", "2")  # as seen by rank 0 of two
    with pytest.raises(RuntimeError, match="use ShardedCheckpoint"):
        ecb.Checkpoint(str(tmp_path / "ckpt.pth"), recipe).save({})
    assert not list(tmp_path.iterdir())
