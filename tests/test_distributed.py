"""Real 2-process ``torchrun`` jobs on CPU (gloo): global metrics, rank-0 logging and
checkpoints, exact resume across ranks, and one failing rank ending the job."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from evloop import Recipe
from evloop.checkpoint_io import load
from evloop.distributed import World, average_over_ranks, sampler, world

SCRIPT = Path(__file__).parent / "scripts" / "ddp_train.py"
pytestmark = pytest.mark.slow


def torchrun(run_dir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    run_dir.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", str(SCRIPT), str(run_dir), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def ok(process: subprocess.CompletedProcess) -> None:
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]


def rank_report(run_dir: Path, rank: int) -> dict:
    return json.loads((run_dir / f"rank{rank}.json").read_text())


def events(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["type"] == kind]


def test_two_ranks_log_the_global_loss_once_and_checkpoint_on_rank_0(tmp_path):
    ok(torchrun(tmp_path, "--epochs", "2", "--offload"))
    ranks = [rank_report(tmp_path, r) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["wrapped"] for r in ranks] == ["DistributedDataParallel"] * 2
    # the logged epoch loss is the mean over ranks, not rank 0's
    logged = [e["metrics"]["loss"] for e in events(tmp_path, "epoch_ended")]
    expected = [(a + b) / 2 for a, b in zip(*(r["epoch_losses"] for r in ranks), strict=True)]
    assert logged == pytest.approx(expected, rel=1e-5)
    assert ranks[0]["epoch_losses"] != pytest.approx(ranks[1]["epoch_losses"])
    # one writer: the script's two runs appear once each, lines on rank 0's stdout only
    assert [e["epoch"] for e in events(tmp_path, "run_started")] == [-1, 0]
    assert (tmp_path / "stdout0.txt").read_text().count("Ep.") >= 2
    assert (tmp_path / "stdout1.txt").read_text() == ""
    # an offloaded writer runs a child on rank 0 alone, which logs the same events
    assert [r["offload_child"] for r in ranks] == [True, False]
    offloaded = (tmp_path / "offloaded" / "log.jsonl").read_text().splitlines()
    logged = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["type"] for line in offloaded] == [
        json.loads(line)["type"] for line in logged
    ]
    assert ranks[0]["saved"] == [str(tmp_path / "ckpt_0.pth"), str(tmp_path / "ckpt_1.pth")]
    assert ranks[1]["saved"] == []
    saved = load(str(tmp_path / "ckpt_1.pth"))
    assert len(saved["progress"]["rng_by_rank"]) == 2
    # throughput counts both ranks' samples (batches of 16)
    last = events(tmp_path, "batch_ended")[-1]["metrics"]
    assert last["forward_throughput"] == pytest.approx(2 * 16 / last["forward_time"], rel=1e-6)


def test_a_resumed_two_rank_run_ends_where_an_uninterrupted_one_does(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    ok(torchrun(whole, "--epochs", "2"))
    ok(torchrun(split, "--epochs", "1"))
    ok(torchrun(split, "--epochs", "2", "--resume"))
    final = load(str(whole / "ckpt_1.pth"))["model"]
    resumed = load(str(split / "ckpt_1.pth"))["model"]
    for name, weights in final.items():
        assert torch.equal(weights, resumed[name]), name
    # the resumed run trained the second epoch only, with each rank's own RNG
    assert len(rank_report(split, 0)["epoch_losses"]) == 1


@pytest.mark.parametrize("how", ["raise", "kill"])
def test_one_failing_rank_ends_the_whole_job(tmp_path, how):
    start = time.monotonic()
    process = torchrun(
        tmp_path,
        "--epochs",
        "50",
        "--fail-rank",
        "1",
        "--fail-at",
        "30",
        "--fail-how",
        how,
        timeout=90,
    )
    elapsed = time.monotonic() - start
    assert process.returncode != 0
    assert elapsed < 60
    output = process.stdout + process.stderr
    assert "rank      : 1" in output
    if how == "raise":
        assert "planted failure on rank 1" in output  # the root cause, with its traceback
    else:
        assert "SIGKILL" in output
    assert not (tmp_path / "rank0.json").exists()  # rank 0 did not finish on its own


def test_a_rank_stuck_in_its_forward_pass_is_reported_with_its_stack_and_the_job_stops(
    tmp_path,
):
    stuck = ("--fail-rank", "1", "--fail-at", "20", "--fail-how", "sleep", "--watchdog", "1.5")
    # step 20 is in the second run; steps of 50 ms: the ranks sample their step times
    # (every 0.1 s) several times before the stall, however fast the machine
    process = torchrun(tmp_path, "--epochs", "2", "--step-s", "0.05", *stuck)
    ok(process)  # rank 0 stopped the run once told, and every rank ended cleanly
    said = process.stdout + process.stderr
    # rank 1 printed its own stall, the user's sleep on its training thread's stack
    assert "evloop: rank 1 of 2: no step boundary for" in said
    assert "time.sleep(4 * args.watchdog)" in said
    # rank 0 waits in a collective that rank 1 has not reached, and says so
    assert "rank(s) 1 have not reached" in said
    stalls = {e["rank"]: e for e in events(tmp_path, "stalled")}  # on rank 0's dashboard
    assert stalls[0]["waiting_for"] == [1] and stalls[1]["waiting_for"] == []
    assert stalls[1]["iters"] == 20
    assert stalls[1]["where"].startswith("forward_pass (") and "time.sleep" in stalls[1]["where"]
    assert stalls[1]["stack"].startswith('training thread "evloop-train"')
    sampled = events(tmp_path, "ranks_sampled")
    assert sampled and all(len(e["step_s"]) == 2 for e in sampled)
    for rank in (0, 1):  # each rank's own step time reached rank 0 (until the stall)
        assert any(e["step_s"][rank] is not None for e in sampled), sampled
    ended = events(tmp_path, "run_finished")[-1]
    assert ended["stopped"] and ended["reason"] == "rank 1 stalled"


def test_a_forward_function_that_bypasses_ddp_is_stopped_at_the_first_step(tmp_path):
    process = torchrun(tmp_path, "--epochs", "1", "--closure")
    assert process.returncode != 0
    output = process.stdout + process.stderr
    assert "without calling the DistributedDataParallel wrapper" in output
    assert not list(tmp_path.glob("ckpt_*.pth"))


def test_every_rank_may_publish_when_asked(tmp_path):
    ok(torchrun(tmp_path, "--epochs", "1", "--all-ranks"))
    for rank in (0, 1):
        assert (tmp_path / f"stdout{rank}.txt").read_text().count("Ep.") >= 2
        assert '"type":"run_finished"' in (tmp_path / f"log{rank}.jsonl").read_text()
    assert rank_report(tmp_path, 1)["saved"] == []  # checkpoints stay rank 0's


def test_a_single_process_is_a_world_of_one(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert world() == World(0, 1, 0)
    assert average_over_ranks(torch.tensor(2.0)).item() == 2.0
    data = list(range(10))
    assert sorted(sampler(data)) == data
    recipe = Recipe(lambda batch: None, [1, 2]).distributed()
    recipe.run(1)
    assert not recipe.bus.muted


def test_torchrun_environment_without_a_rendezvous_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(RuntimeError, match="torchrun --nproc_per_node"):
        Recipe(lambda batch: None, [1]).distributed()


def test_resuming_with_another_world_size_warns_and_uses_rank_0s_rng(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    saver = Recipe(lambda batch: None, [1, 2])
    saver.run(1)
    saved = saver.state_dict()
    saved["progress"]["rng_by_rank"] = [saved["progress"]["rng"], None]  # two ranks
    loader = Recipe(lambda batch: None, [1, 2])
    with pytest.warns(UserWarning, match="RNG states of 2 ranks and this run has 1"):
        loader.load_state_dict(saved)
    assert loader.resume_point.rng is saved["progress"]["rng"]
