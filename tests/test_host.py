"""Host copies on the consumer side, and no host<->device sync in a served training run.

The CUDA tests are skipped without a GPU; ``make gpu-check`` runs them on one.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import anyio
import pytest
import torch

from evloop import Recipe
from evloop.checkpoint_io import host_snapshot, load
from evloop.events import BatchEnded
from evloop.host import EventCopies, HostCopy
from evloop.reports import Report

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
ROOT = Path(__file__).resolve().parent.parent


def test_cpu_values_pass_through_untouched():
    metrics = {"loss": torch.tensor(0.5), "lr": 0.1, "nested": [torch.ones(2), "x"]}
    copy = HostCopy(metrics)
    assert not copy.pending
    assert copy.wait() is metrics


def test_a_snapshot_clones_tensors_and_rebuilds_containers():
    weights = torch.zeros(3)
    state = {"model": {"w": weights}, "plain": {"best": 1.0}, "seen": defaultdict(list)}
    snapshot = host_snapshot(state).wait()
    weights += 1
    state["plain"]["best"] = 2.0
    assert snapshot["model"]["w"].tolist() == [0.0, 0.0, 0.0]
    assert snapshot["plain"] == {"best": 1.0}
    assert snapshot["seen"]["new"] == []  # a defaultdict keeps its factory


def test_events_without_device_tensors_are_delivered_as_published():
    event = BatchEnded(epoch=0, iters=1, epoch_batch=1, metrics={"loss": torch.tensor(1.0)})
    [delivered] = anyio.run(EventCopies().to_host, [event])
    assert delivered is event


@needs_cuda
def test_cuda_tensors_reach_consumers_as_host_copies_without_a_sync():
    loss = torch.tensor(0.25, device="cuda")
    image = torch.rand(3, 4, 4, device="cuda")
    report = Report(lambda t: f"{t.sum().item():.3f}", image)
    event = BatchEnded(
        epoch=0, iters=1, epoch_batch=1, metrics={"loss": loss, "lr": 0.1, "report": report}
    )
    copies = EventCopies()
    torch.cuda.set_sync_debug_mode("error")
    try:
        first, again = anyio.run(copies.to_host, [event, event])
        rendered = first.metrics["report"].render()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert first.metrics["loss"].device.type == "cpu"
    assert first.metrics["loss"].is_pinned()
    assert first.metrics["loss"].item() == 0.25
    assert first.metrics["lr"] == 0.1
    assert rendered == f"{image.sum().item():.3f}"
    assert again.metrics["loss"] is first.metrics["loss"]  # one copy per event
    assert event.metrics["loss"].is_cuda  # the published event is unchanged


@needs_cuda
def test_the_served_tutorial_sample_never_syncs_in_steady_state(tmp_path):
    """The tutorial's final sample (StdoutLogger, EpochMetricAvg, Optimizer, an inline
    test loop) with a Checkpoint and the dashboard server, a websocket client attached:
    a steady-state epoch under ``set_sync_debug_mode('error')``, where any sync — in
    the training thread, a logger, the server or the checkpoint writer — raises."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_check import served_tutorial

    with served_tutorial(str(tmp_path), batches=60) as run:
        frames_before = run.received[0]
        lines_before = run.log.getvalue().count("\n")
        torch.cuda.set_sync_debug_mode("error")
        try:
            run.recipe.run(1)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
    recipe = run.recipe
    failed = [s.name for r in (recipe, recipe.test_recipe) for s in r.bus.subscriptions if s.failed]
    assert failed == []
    assert run.log.getvalue().count("\n") >= lines_before + 60 // 10
    assert run.received[0] > frames_before
    saved = load(str(tmp_path / "ckpt_1.pth"))
    assert saved["progress"]["epoch"] == 1
    assert isinstance(recipe, Recipe)
