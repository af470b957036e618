"""What survives: full disks, killed writers, seeded loaders, bad loads, corrupt files."""

import contextlib
import glob
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.checkpoint_io import atomic_save, load, load_latest
from evloop.events import CheckpointFailed

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "train_process.py")


@contextlib.contextmanager
def small_disk(folder, size="1m", read_only=False):
    """A tmpfs of ``size`` at ``folder`` (needs root; skipped otherwise)."""
    folder.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@contextlib.contextmanager
def freezable_disk(folder):
    """An ext4 image mounted at ``folder``; yields ``freeze()``, after which every write
    there blocks (as on a disk or share that stopped answering) until the block ends
    (needs root and loop devices; skipped otherwise)."""
    folder.mkdir()
    image = str(folder) + ".img"
    with open(image, "wb") as file:
        file.truncate(32 * 1024 * 1024)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", image], capture_output=True, text=True)
    mounted = made.returncode == 0 and subprocess.run(
        ["mount", "-o", "loop", image, str(folder)], capture_output=True, text=True
    )
    if not mounted or mounted.returncode != 0:
        pytest.skip(f"cannot mount an ext4 image here: {(made.stderr or '').strip()}")

    def freeze():
        subprocess.run(["fsfreeze", "-f", str(folder)], check=True, timeout=30)

    try:
        yield freeze
    finally:  # a writer blocked there would hold this process at exit
        subprocess.run(["fsfreeze", "-u", str(folder)], capture_output=True, timeout=30)
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)


def _fill(folder, leave):
    """A file filling the disk but ``leave`` bytes."""
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    path = folder / "filler"
    with open(path, "wb") as file:
        file.write(b"\0" * max(0, free - leave))
    return path


def test_a_full_disk_fails_a_checkpoint_plainly_keeps_the_last_and_retries(tmp_path):
    with small_disk(tmp_path / "disk", "2m") as disk:
        model = nn.Linear(300, 300)  # ~360 kB a checkpoint
        recipe = Recipe(lambda b: None, range(4))
        recipe.register("model", model)
        failures = []
        recipe.bus.subscribe(failures.append, types=[CheckpointFailed])
        recipe.callbacks.add_callbacks(
            [ecb.Counter(), ecb.Checkpoint(str(disk / "ck_{epoch}.pth"), recipe, max_saves=5)]
        )
        recipe.run(1)  # ck_0 fits
        filler = _fill(disk, leave=100_000)
        recipe.run(1)  # ck_1 cannot
        assert len(failures) == 1 and failures[0].path.endswith("ck_1.pth")
        assert failures[0].error.startswith("no space left on device")
        assert sorted(os.listdir(disk)) == ["ck_0.pth", "filler"]  # no torn or partial file
        assert load(str(disk / "ck_0.pth"))["progress"]["epoch"] == 0
        filler.unlink()
        recipe.run(1)  # space is back: the next one is written
        assert sorted(os.listdir(disk)) == ["ck_0.pth", "ck_2.pth"]


def test_the_event_log_on_a_full_disk_keeps_whole_lines_and_reports_the_gap(tmp_path):
    with small_disk(tmp_path / "disk", "1m") as disk:
        recipe = Recipe(lambda b: {"loss": torch.tensor(float(b))}, range(300))
        recipe.callbacks.add_callbacks(
            [ecb.Counter(), ecb.Log("loss", "loss"), ecb.JsonlWriter(disk / "events.jsonl")]
        )
        filler = _fill(disk, leave=8_000)
        recipe.run(1)
        lines = (disk / "events.jsonl").read_bytes().split(b"\n")
        assert lines[-1] == b""  # ends with a whole line
        written = [json.loads(line) for line in lines[:-1]]  # every line parses
        assert len(written) < 300
        filler.unlink()
        recipe.run(1)  # space is back: logging resumes, the gap is recorded
        events = [json.loads(x) for x in (disk / "events.jsonl").read_text().splitlines()]
        gaps = [e for e in events if e["type"] == "subscriber_dropped"]
        assert gaps and all(gap["dropped"] > 0 for gap in gaps)  # each loss is recorded
        second = [e["iters"] for e in events if e["type"] == "batch_ended" and e["iters"] >= 300]
        assert second == list(range(300, 600))  # nothing lost once there was room
        assert events[-1]["type"] == "run_finished" and events[-1]["iters"] == 599


def test_space_freed_during_the_run_loses_no_event_and_the_end_counts_the_lost(tmp_path, caplog):
    with small_disk(tmp_path / "disk", "1m") as disk:
        filler = _fill(disk, leave=8_000)

        class FreeSpaceAt150:
            def on_batch_end(self, state):
                if state["iters"] == 150:
                    filler.unlink()

        recipe = Recipe(lambda b: {"loss": torch.tensor(float(b))}, range(300))
        writer = ecb.JsonlWriter(disk / "events.jsonl")
        recipe.callbacks.add_callbacks(
            [ecb.Counter(), ecb.Log("loss", "loss"), FreeSpaceAt150(), writer]
        )
        recipe.run(1)
        events = [json.loads(x) for x in (disk / "events.jsonl").read_text().splitlines()]
        steps = [e["iters"] for e in events if e["type"] == "batch_ended"]
        assert steps == list(range(300))  # the backlog waited for room: nothing lost
        assert writer.lost == 0 and not any(e["type"] == "subscriber_dropped" for e in events)

        small = ecb.JsonlWriter(disk / "small.jsonl", backlog_bytes=4_000)
        recipe = Recipe(lambda b: {"loss": torch.tensor(float(b))}, range(300))
        recipe.callbacks.add_callbacks([ecb.Counter(), ecb.Log("loss", "loss"), small])
        filler = _fill(disk, leave=0)
        with caplog.at_level(logging.WARNING, logger="evloop"):
            recipe.run(1)
        assert small.lost > 0
        assert f"{small.lost} events were not written to {disk / 'small.jsonl'}" in caplog.text
        filler.unlink()
        recipe.run(1)  # room again: the summary says how many the first run lost
        summary = json.loads((disk / "summary.json").read_text())
        assert summary["events_lost"] == small.lost


def test_an_event_log_that_cannot_be_written_fails_before_the_first_step(tmp_path):
    (tmp_path / "a_file").write_text("")
    steps = []
    recipe = Recipe(lambda b: steps.append(b), range(5))
    recipe.callbacks.add_callback(ecb.JsonlWriter(tmp_path / "a_file" / "events.jsonl"))
    with pytest.raises(OSError, match="JsonlWriter cannot write its event log"):
        recipe.run(1)
    assert steps == []


@pytest.mark.parametrize("where", ["under a file", "on a read-only disk"])
def test_a_checkpoint_folder_that_cannot_be_written_fails_before_the_first_step(tmp_path, where):
    steps = []
    recipe = Recipe(lambda b: steps.append(b), range(5))
    with contextlib.ExitStack() as cleanup:
        if where == "under a file":
            (tmp_path / "a_file").write_text("")
            folder = tmp_path / "a_file"
        else:
            folder = cleanup.enter_context(small_disk(tmp_path / "ro", read_only=True))
        recipe.callbacks.add_callbacks(
            [ecb.Counter(), ecb.Checkpoint(str(folder / "ck_{iters}.pth"), recipe)]
        )
        with pytest.raises(OSError, match=r"Checkpoint\[.*\] cannot write into .*"):
            recipe.run(1)
    assert steps == []


@pytest.mark.slow
def test_random_kills_leave_the_rotation_and_no_temporary_file(tmp_path):
    ckpt_dir, jsonl = tmp_path / "ck", tmp_path / "events.jsonl"
    rng = random.Random(0)
    for attempt in range(3):
        args = [sys.executable, SCRIPT, str(ckpt_dir), str(jsonl), "--width", "256"]
        args += ["--every", "3", "--step-sleep", "0.002"] + (["--resume"] if attempt else [])
        size = jsonl.stat().st_size if jsonl.exists() else 0
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while (not jsonl.exists() or jsonl.stat().st_size == size) and time.monotonic() < deadline:
            time.sleep(0.05)  # training is under way
        time.sleep(rng.uniform(0.1, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    files = glob.glob(str(ckpt_dir / "*"))
    checkpoints = [f for f in files if f.endswith(".pth")]
    assert 0 < len(checkpoints) <= 3 + 1  # max_saves=3, the one being replaced at the kill
    # temporary files of killed writes are removed at the next start (one may remain
    # from the last kill, which no start followed)
    assert len([f for f in files if f.endswith(".partial")]) <= 1
    assert load_latest(str(ckpt_dir)) is not None


def _seeded_run(tmp_path, epochs, resume_from=None, save_at_end=None):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    generator = torch.Generator().manual_seed(1234)
    loader = DataLoader(data, batch_size=8, shuffle=True, generator=generator)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def forward(batch):
        x, y = batch
        nn.functional.cross_entropy(model(x), y).backward()

    recipe = Recipe(forward, loader)
    recipe.register("model", model)
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.Optimizer(opt)])
    if resume_from is not None:
        recipe.load_state_dict(load(resume_from))
    recipe.run(total_epochs=epochs)
    if save_at_end is not None:
        atomic_save(recipe.state_dict(), save_at_end)
    return model.state_dict()


def test_resume_is_exact_with_a_loader_seeded_by_its_own_generator(tmp_path):
    straight = _seeded_run(tmp_path, 3)
    path = str(tmp_path / "end_of_epoch_1.pth")
    _seeded_run(tmp_path, 1, save_at_end=path)
    resumed = _seeded_run(tmp_path, 3, resume_from=path)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_a_load_that_does_not_fit_changes_nothing():
    first, second = nn.Linear(2, 2), nn.Linear(2, 3)
    recipe = Recipe(lambda b: None, [1])
    recipe.register("first", first)
    recipe.register("second", second)
    saved = recipe.state_dict()
    saved["first"] = {k: v + 1 for k, v in saved["first"].items()}
    saved["second"] = nn.Linear(2, 4).state_dict()  # the wrong shape
    before = {k: v.clone() for k, v in first.state_dict().items()}
    with pytest.raises(ValueError, match=r"second: 'weight' is \(4, 2\) in the state dict"):
        recipe.load_state_dict(saved)
    assert all(torch.equal(before[k], v) for k, v in first.state_dict().items())


def test_load_latest_skips_a_file_that_fails_its_checksum(tmp_path):
    recipe = Recipe(lambda b: None, range(2))
    recipe.register("model", nn.Linear(4, 4))
    recipe.callbacks.add_callbacks(
        [ecb.Counter(), ecb.Checkpoint(str(tmp_path / "ck_{epoch}.pth"), recipe, checksum=True)]
    )
    recipe.run(2)
    assert os.path.exists(tmp_path / "ck_1.pth.sha256")
    newest = tmp_path / "ck_1.pth"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit… in the middle of a tensor
    newest.write_bytes(bytes(data))
    os.utime(newest)  # still the newest
    with pytest.raises(ValueError, match="does not match its checksum"):
        load(str(newest))
    path, state = load_latest(str(tmp_path))
    assert path.endswith("ck_0.pth") and state["progress"]["epoch"] == 0


@pytest.mark.parametrize("epochs", [2, 4])
def test_a_write_stuck_on_a_frozen_disk_fails_the_run_plainly_and_loses_nothing(tmp_path, epochs):
    with freezable_disk(tmp_path / "disk") as freeze:
        disk = tmp_path / "disk"
        recipe = Recipe(lambda b: None, range(2))
        recipe.register("model", nn.Linear(4, 4))
        checkpoint = ecb.Checkpoint(str(disk / "ck_{epoch}.pth"), recipe, timeout_s=30)

        class FreezeAfterTheFirst:
            def on_epoch_start(self, state):
                if state["epoch"] == 1:
                    checkpoint.wait()  # ck_0 is on disk
                    freeze()
                    checkpoint.timeout_s = 1

        recipe.callbacks.add_callbacks([ecb.Counter(), FreezeAfterTheFirst(), checkpoint])
        if epochs == 2:  # ck_1 is stuck when the run ends
            expected = r"checkpoints not all saved: .*ck_1.pth was still being written after 1 s"
        else:  # ck_1 stuck, ck_2 waiting: no room for ck_3
            expected = r"ck_3.pth was not saved: .*ck_1.pth was still being written after 1 s"
        with pytest.raises(TimeoutError, match=expected):
            recipe.run(epochs)
        subprocess.run(["fsfreeze", "-u", str(disk)], check=True, timeout=30)
        checkpoint.timeout_s = 30
        checkpoint.wait()  # the disk answers again: what was queued is written
        written = sorted(f for f in os.listdir(disk) if f.endswith(".pth"))
        assert written == ["ck_0.pth", "ck_1.pth"] + (["ck_2.pth"] if epochs == 4 else [])
        for name in written:
            assert load(str(disk / name))["progress"]["epoch"] == int(name[3])
        assert checkpoint.saved == [str(disk / name) for name in written]
