"""Preemption and automatic resume: SIGTERM ends the run like one Ctrl-C (final
checkpoint, lossless log drained, status ``preempted``, exit code 143), the same run
with ``resume='auto'`` continues exactly where it stopped, corrupt and partial
checkpoints are skipped with the reason, and a run that cannot end within its grace
period exits anyway, saying what was not saved. Real signals, to this process and to
a real child process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import linear_recipe, make_batches, wait_for

import evloop.callbacks as ecb
from evloop import Recipe, context
from evloop.preemption import EXIT_CODE, Preempted, Preemption

SCRIPT = Path(__file__).parent / "scripts" / "train_process.py"


def events(folder: Path) -> list[dict]:
    path = folder / "events.jsonl"
    if not path.exists():
        return []
    with open(path, "rb") as file:
        return [json.loads(line) for line in file if line.strip()]


class SignalAt:
    """Test-only: this process gets SIGTERM in the training step ``iters``, and once
    the run took it in, another one (schedulers may send it twice)."""

    def __init__(self, iters: int) -> None:
        self.iters = iters

    def on_batch_end(self, state) -> None:
        if state["iters"] == self.iters:
            recipe = context.current().recipe
            os.kill(os.getpid(), signal.SIGTERM)
            wait_for(lambda: recipe.stop_requested, "the main thread's signal handler")
            os.kill(os.getpid(), signal.SIGTERM)


def checkpointed(folder: Path, *extra) -> Recipe:
    recipe = linear_recipe(make_batches(20))
    checkpoint = ecb.Checkpoint(str(folder / "ckpt_{iters}.pth"), recipe, every=7)
    recipe.callbacks.add_callbacks([ecb.JsonlWriter(folder / "events.jsonl"), checkpoint, *extra])
    return recipe


def test_sigterm_ends_the_run_cleanly_and_resume_auto_continues_it_exactly(tmp_path, capfd):
    with pytest.raises(Preempted) as raised:
        checkpointed(tmp_path, SignalAt(12)).run(total_epochs=2, resume="auto")
    assert raised.value.code == EXIT_CODE and raised.value.cause == "SIGTERM"
    said = capfd.readouterr().err
    assert "no complete checkpoint found" in said  # nothing yet at the first start
    assert "SIGTERM: preempted; finishing the current batch" in said
    assert "SIGTERM again: the run is already ending" in said
    assert "preempted at epoch 0, iteration 12; the run ended cleanly. Exiting with 143" in said
    logged = events(tmp_path)
    assert [e["iters"] for e in logged if e["type"] == "batch_ended"] == list(range(13))
    assert logged[-1]["type"] == "run_finished" and logged[-1]["reason"] == "preempted"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "preempted" and summary["iters"] == 12
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back

    resumed = checkpointed(tmp_path)
    resumed.run(total_epochs=2, resume="auto")
    path = str(tmp_path / "ckpt_12.pth")
    assert resumed.resumed_from == path
    assert f"resumed from {path} (epoch 0, iteration 12)" in capfd.readouterr().err
    whole = linear_recipe(make_batches(20))
    whole.run(total_epochs=2)
    for name, weights in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], weights), name


def test_resume_auto_skips_corrupt_and_partial_checkpoints_saying_why(tmp_path, capfd):
    checkpointed(tmp_path).run(total_epochs=1)  # files at iterations 6, 13 and 19
    newest = tmp_path / "ckpt_19.pth"
    newest.write_bytes(newest.read_bytes()[:-100])  # a copy cut short
    (tmp_path / ".ckpt_20.pth.0123abcd.partial").write_bytes(b"torn")  # a killed write
    capfd.readouterr()
    resumed = checkpointed(tmp_path)
    resumed.run(total_epochs=1, resume="auto")
    said = capfd.readouterr().err
    assert f"resume='auto' skipped {newest}: " in said  # with the loader's reason
    assert f"resumed from {tmp_path / 'ckpt_13.pth'} (epoch 0, iteration 13)" in said
    assert ".partial" not in said
    assert resumed.progress.iters == 19  # and trained the rest of the epoch


@pytest.mark.slow
def test_sigusr1_when_asked_and_a_run_stuck_past_its_grace_period_exits_saying_what_was_lost(
    tmp_path,
):
    command = [sys.executable, str(SCRIPT), str(tmp_path / "ck"), str(tmp_path / "events.jsonl")]
    command += ["--signals", "SIGTERM,SIGUSR1", "--grace", "1", "--sleep-at", "5"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (tmp_path / "stuck").exists(), "the step that never ends")
        process.send_signal(signal.SIGUSR1)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == EXIT_CODE
    assert "SIGUSR1: preempted" in err
    assert "the run did not end within 1 s of SIGUSR1: exiting with 143" in err
    said = err[err.index("Not saved:") :]
    assert (
        "the run's end (its final checkpoint): the training thread is still in iteration 5" in said
    )
    assert "time.sleep(60)" in said  # where it is stuck
    assert not (tmp_path / "ck").exists() or not os.listdir(tmp_path / "ck")


def test_preemption_settings_are_checked():
    with pytest.raises(ValueError, match="'SIGINT' cannot preempt a run"):
        Preemption(signals=("SIGINT",))
    with pytest.raises(ValueError, match="'SIGNOPE' cannot preempt"):
        Preemption(signals=("SIGNOPE",))
    with pytest.raises(TypeError, match="a tuple of names"):
        Preemption(signals="SIGTERM")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grace_s must be positive"):
        Preemption(grace_s=0)
    with pytest.raises(ValueError, match="exit_code must be between 1 and 255"):
        Preemption(exit_code=0)


def test_resume_auto_needs_total_epochs_and_a_checkpoint_of_the_recipe(tmp_path):
    recipe = Recipe(lambda batch: None, [1, 2])
    with pytest.raises(ValueError, match="give total_epochs="):
        recipe.run(2, resume="auto")
    with pytest.raises(ValueError, match="resume must be 'auto' or None"):
        recipe.run(total_epochs=2, resume="latest")
    with pytest.raises(ValueError, match="add a Checkpoint"):
        recipe.run(total_epochs=2, resume="auto")
    assert recipe.progress.iters == -1  # nothing ran


def test_a_run_returns_once_its_last_sharded_save_has_its_final_name(tmp_path, monkeypatch):
    import time

    from evloop.distributed import checkpoint as sharded_io

    renames = sharded_io._finish

    def slow_rename(*args):  # the rename after the shards are written, on a slow disk
        time.sleep(0.5)
        return renames(*args)

    monkeypatch.setattr(sharded_io, "_finish", slow_rename)
    recipe = linear_recipe(make_batches(10))
    recipe.callbacks.add_callback(ecb.ShardedCheckpoint(str(tmp_path / "save_{iters}"), recipe))
    recipe.run(total_epochs=1)
    assert sharded_io.is_complete(str(tmp_path / "save_9"))
    assert not (tmp_path / "save_9.partial").exists()


def test_resume_auto_skips_a_sharded_save_with_a_truncated_shard(tmp_path, capfd):
    def sharded() -> Recipe:
        recipe = linear_recipe(make_batches(10))
        recipe.callbacks.add_callback(
            ecb.ShardedCheckpoint(str(tmp_path / "save_{iters}"), recipe, every=4)
        )
        return recipe

    sharded().run(total_epochs=1)  # saves at iterations 3, 7 and 9
    shard = tmp_path / "save_9" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])
    capfd.readouterr()
    resumed = sharded()
    resumed.run(total_epochs=1, resume="auto")
    said = capfd.readouterr().err
    assert f"skipped {tmp_path / 'save_9'}: its shard __0_0.distcp is truncated (100 of" in said
    assert f"resumed from {tmp_path / 'save_7'} (epoch 0, iteration 7)" in said
    assert resumed.progress.iters == 9
