"""Checkpoint files survive kills at any instant, a flipped bit is found, and a file's
digest goes with it."""

import glob
import logging
import multiprocessing
import os
import random
import signal
import time

import pytest
import torch

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.checkpoint_io import (
    CHECKSUM_SUFFIX,
    atomic_save,
    load,
    load_latest,
    remove_checkpoint,
    remove_stale_partials,
)

KILLS = 24


def _write_forever(folder: str, checksum: bool, first: int, done) -> None:
    """In a child process: overwrite ``fixed.pth`` and rotate ``r_<i>.pth`` (2 kept)."""
    weights = torch.randn(256 * 1024)  # 1 MB: a kill lands inside writes too
    i = first
    while True:
        atomic_save({"i": i, "w": weights + i}, os.path.join(folder, "fixed.pth"), checksum)
        atomic_save({"i": i, "w": weights - i}, os.path.join(folder, f"r_{i}.pth"), checksum)
        remove_checkpoint(os.path.join(folder, f"r_{i - 2}.pth"))
        with done.get_lock():
            done.value = i
        i += 1


def _wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.005)


def _check_after_a_kill(folder: str, last_done: int) -> None:
    remove_stale_partials(os.path.join(folder, "*.pth"))
    found = load_latest(os.path.join(folder, "fixed.pth"))
    assert found is not None, "the fixed-name checkpoint was rejected after a kill"
    assert found[1]["i"] >= last_done
    for path in glob.glob(os.path.join(folder, "*.pth")):
        saved = load(path)  # raises if a good file were rejected
        assert torch.equal(saved["w"][:1], saved["w"][:1])
    for digest in glob.glob(os.path.join(folder, "*" + CHECKSUM_SUFFIX)):
        assert os.path.exists(digest[: -len(CHECKSUM_SUFFIX)]), f"orphan {digest}"


@pytest.mark.slow
@pytest.mark.parametrize("checksum", [False, True])
def test_a_kill_at_any_instant_never_leaves_a_good_file_rejected(tmp_path, checksum):
    context = multiprocessing.get_context("fork")
    done = context.Value("l", -1)
    rng = random.Random(1234 + checksum)
    for kill in range(KILLS):
        first = done.value + 1
        child = context.Process(target=_write_forever, args=(str(tmp_path), checksum, first, done))
        child.start()
        _wait_for(lambda first=first: done.value >= first, "a first save after the restart")
        time.sleep(rng.uniform(0, 0.05))  # a random instant, not a synchronisation
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        assert child.exitcode == -signal.SIGKILL, f"kill {kill}: {child.exitcode}"
        _check_after_a_kill(str(tmp_path), done.value)


def _flip_a_bit(path: str, fraction: float = 0.6) -> None:
    with open(path, "r+b") as file:
        file.seek(int(os.path.getsize(path) * fraction))
        byte = file.read(1)
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte[0] ^ 0x10]))


@pytest.mark.parametrize("checksum", [False, True])
def test_a_flipped_bit_is_an_error_naming_the_file_and_load_latest_skips_it(
    tmp_path, caplog, checksum
):
    atomic_save({"w": torch.arange(100_000.0)}, str(tmp_path / "old.pth"), checksum)
    os.utime(tmp_path / "old.pth", (1, 1))
    atomic_save({"w": torch.arange(100_000.0) + 1}, str(tmp_path / "new.pth"), checksum)
    _flip_a_bit(str(tmp_path / "new.pth"))
    expected = "does not match its checksum" if checksum else "does not match its CRC-32"
    with pytest.raises(ValueError, match=f"new.pth.*{expected}"):
        load(str(tmp_path / "new.pth"))
    with caplog.at_level(logging.WARNING, logger="evloop"):
        path, state = load_latest(str(tmp_path))
    assert path.endswith("old.pth") and state["w"][1] == 1.0
    assert f"skipping checkpoint {tmp_path / 'new.pth'}" in caplog.text
    assert expected in caplog.text


def test_rotation_and_best_files_take_their_digests_with_them(tmp_path):
    scores = iter([0.1, 0.5, 0.2, 0.9, 0.3, 0.95, 0.4, 0.8, 0.6, 0.99])
    recipe = Recipe(lambda b: None, range(5))
    recipe.register("w", torch.nn.Linear(2, 2))
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.Checkpoint(
                str(tmp_path / "c_{iters}.pth"),
                recipe,
                max_saves=2,
                every=1,
                key_best=lambda saved: next(scores),
                checksum=True,
            ),
        ]
    )
    recipe.run(2)
    files = sorted(os.listdir(tmp_path))
    checkpoints = [f for f in files if f.endswith(".pth")]
    digests = [f for f in files if f.endswith(CHECKSUM_SUFFIX)]
    assert sorted(f + CHECKSUM_SUFFIX for f in checkpoints) == digests
    assert len([f for f in checkpoints if "_best" in f]) == 1
    for name in checkpoints:
        load(str(tmp_path / name))


def test_a_file_written_without_checksum_over_one_with_loads(tmp_path):
    path = str(tmp_path / "c.pth")
    atomic_save({"v": 1}, path, checksum=True)
    atomic_save({"v": 2}, path, checksum=False)
    assert not os.path.exists(path + CHECKSUM_SUFFIX)
    assert load(path)["v"] == 2


def test_checkpoint_files_are_readable_by_the_group_as_usual(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_save({"v": 1}, str(tmp_path / "c.pth"), checksum=True)
    finally:
        os.umask(previous)
    assert os.stat(tmp_path / "c.pth").st_mode & 0o777 == 0o644
    assert os.stat(tmp_path / ("c.pth" + CHECKSUM_SUFFIX)).st_mode & 0o777 == 0o644


def test_the_writer_thread_ends_when_idle_and_lets_the_model_go():
    """A long-lived process (trials through arun) keeps no thread, nor model, per run."""
    import gc
    import threading
    import time
    import weakref

    def writers():
        return [t for t in threading.enumerate() if t.name == "evloop-checkpoint"]

    import tempfile

    models = []
    with tempfile.TemporaryDirectory() as folder:
        for trial in range(3):
            model = torch.nn.Linear(20, 2000)
            models.append(weakref.ref(model))
            recipe = Recipe(lambda b: None, range(3))
            recipe.register("model", model)
            recipe.callbacks.add_callbacks(
                [
                    ecb.Counter(),
                    ecb.Checkpoint(os.path.join(folder, f"t{trial}_{{epoch}}.pth"), recipe),
                ]
            )
            recipe.run(1)
            del model, recipe
        deadline = time.monotonic() + 30
        while writers() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert writers() == []
    gc.collect()
    assert [ref() for ref in models] == [None, None, None]


def test_the_digest_file_is_sha256sums_and_a_failed_write_leaves_none(tmp_path):
    import shutil
    import subprocess

    atomic_save({"v": 1}, str(tmp_path / "c.pth"), checksum=True)
    if shutil.which("sha256sum"):
        checked = subprocess.run(
            ["sha256sum", "-c", "c.pth.sha256"], cwd=tmp_path, capture_output=True, text=True
        )
        assert checked.returncode == 0 and "c.pth: OK" in checked.stdout
    from tests.test_durability import _fill, small_disk

    with small_disk(tmp_path / "disk", "1m") as disk:
        _fill(disk, leave=20_000)
        with pytest.raises(OSError):
            atomic_save({"w": torch.zeros(100_000)}, str(disk / "big.pth"), checksum=True)
        assert not os.path.exists(disk / "big.pth.sha256")
