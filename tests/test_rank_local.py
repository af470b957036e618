"""Callbacks present on some ranks only never hang a distributed job: Torchélie's
rank-0-only checkpoint works and resumes exactly; any other difference is an error
naming it, raised on every rank at the run's start. Real 2-process gloo groups through
Torchélie's ``parallel_run``."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import evloop.callbacks as ecb
import evloop.recipes as erp
from evloop import Recipe
from evloop.checkpoint_io import load_latest
from evloop.distributed import PeerLost, all_gather_objects, sampler
from evloop.utils import parallel_run

pytestmark = pytest.mark.slow


def _train(folder, epochs, resume, extra_on_rank_0, rank, world_size):
    """Torchélie's ImageNet pattern: ``checkpoint=`` on rank 0 only."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.3), nn.Linear(16, 3))
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(48, 4, generator=generator)
    data = TensorDataset(x, (x[:, 0] > 0).long())
    opt = torch.optim.SGD(model.parameters(), lr=0.2)

    def train_fun(batch, model):
        inputs, labels = batch
        loss = nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()
        return {"loss": loss}

    def test_fun(batch, model):
        inputs, labels = batch
        return {"loss": nn.functional.cross_entropy(model(inputs), labels)}

    recipe = erp.TrainAndTest(
        model,
        train_fun,
        test_fun,
        DataLoader(data, batch_size=4, sampler=sampler(data)),
        DataLoader(data, batch_size=16, sampler=sampler(data, shuffle=False)),
        test_every=4,
        checkpoint=folder if rank == 0 else None,
    )
    recipe.register("opt", opt)
    recipe.callbacks.add_callbacks([ecb.Optimizer(opt), ecb.EpochMetricAvg("loss")])
    recipe.test_loop.callbacks.add_callback(ecb.EpochMetricAvg("loss", False))
    if extra_on_rank_0 and rank == 0:
        recipe.callbacks.add_callback(ecb.WindowedMetricAvg("loss"))
    recipe.distributed()
    if resume == "by hand":
        found = load_latest(os.path.join(folder, "ckpt_*[0-9].pth"))
        assert found is not None, "no checkpoint to resume from"
        recipe.load_state_dict(found[1])
    recipe.run(total_epochs=epochs, resume="auto" if resume == "auto" else None)
    recipe.hparams["resumed_from"] = all_gather_objects(recipe.resumed_from)  # every rank's
    return {k: v.clone() for k, v in model.state_dict().items()}, recipe.hparams


def _straight_and_resumed(folder, rank, world_size):
    """Two epochs at once; one, then a resume from the newest checkpoint for one more,
    by hand and with ``resume='auto'``."""
    straight, _ = _train(os.path.join(folder, "straight"), 2, None, False, rank, world_size)
    resumed = {}
    for how in ("by hand", "auto"):
        interrupted = os.path.join(folder, how.replace(" ", "_"))
        _train(interrupted, 1, None, False, rank, world_size)
        files = sorted(os.listdir(interrupted)) if rank == 0 else []
        resumed[how] = _train(interrupted, 2, how, False, rank, world_size)
    return straight, resumed, files


def test_a_rank_0_only_checkpoint_is_written_and_resumes_exactly(tmp_path):
    straight, resumed, files = parallel_run(_straight_and_resumed, str(tmp_path), n_gpus=2)
    assert "ckpt_0.pth" in files and "ckpt_5.pth" in files  # evaluations at 0, 4 and the end
    for how, (weights, _) in resumed.items():
        for name, expected in straight.items():
            assert torch.equal(weights[name], expected), (how, name)
    # resume='auto': rank 0 alone has the Checkpoint; every rank loaded its choice
    newest = os.path.join(tmp_path, "auto", "ckpt_5.pth")
    assert resumed["auto"][1]["resumed_from"] == [newest, newest]


def test_an_averager_on_rank_0_only_is_an_error_on_every_rank_not_a_hang(tmp_path):
    with pytest.raises(Exception, match="RankMismatch") as raised:
        parallel_run(_train, str(tmp_path), 1, None, True, n_gpus=2)
    assert "WindowedMetricAvg[loss] is on rank 0, not on rank 1" in str(raised.value)
    assert "Checkpoint[" not in str(raised.value)  # rank 0's own checkpoint is fine
    assert not any(name.endswith(".pth") for name in os.listdir(tmp_path))


def _lose_rank_1_in_the_vote(folder, rank, world_size):
    """Rank 1 leaves after a step (exit code 0, so that the launcher waits for rank 0);
    rank 0 then waits for it in the step's vote: what does it say?"""
    recipe = Recipe(lambda batch: None, list(range(50)))
    if rank == 1:

        class Leave:
            def on_batch_end(self, state):
                if state["iters"] == 3:
                    os._exit(0)

        recipe.callbacks.add_callbacks([ecb.Counter(), Leave()])
    try:
        recipe.run(1)
    except PeerLost as lost:
        return str(lost)
    return "rank 0 was not told"


def test_a_rank_waiting_for_a_lost_one_says_what_it_waited_for(tmp_path):
    said = parallel_run(_lose_rank_1_in_the_vote, str(tmp_path), n_gpus=2)
    assert said.startswith("rank 0 of 2: another rank stopped answering while the ranks' vote")
