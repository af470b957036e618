"""Checkpoints and exact resume, with real files."""

import glob
import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import evloop.callbacks as ecb
import evloop.context
from evloop import Recipe
from evloop.checkpoint_io import load, load_latest

EPOCHS = 3


class StopAt:
    def __init__(self, iters):
        self.iters = iters

    def on_batch_end(self, state):
        if state["iters"] == self.iters:
            evloop.context.current().stop()


def _make_recipe(ckpt_dir, extra=()):
    """Dropout, a shuffling loader, momentum, accumulation windows that do not divide
    the epoch, a per-step LR schedule and epoch averages: everything resume must restore."""
    data = torch.randn(100, 6, generator=torch.Generator().manual_seed(1))
    labels = (data.sum(1) > 0).long()
    loader = DataLoader(TensorDataset(data, labels), batch_size=8, shuffle=True)
    model = nn.Sequential(nn.Linear(6, 32), nn.Dropout(0.3), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.9)

    def forward(batch):
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return {"loss": loss}

    recipe = Recipe(forward, loader)
    recipe.register("model", model)
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.Optimizer(opt, accumulation=3),
            ecb.LRSched(sched, metric=None, step_each_batch=True),
            ecb.EpochMetricAvg("loss"),
            *extra,
            ecb.Checkpoint(
                os.path.join(ckpt_dir, "ckpt_{iters}.pth"), recipe, max_saves=3, every=5
            ),
        ]
    )
    return recipe


def test_interrupted_and_resumed_run_ends_with_bit_identical_weights(tmp_path):
    torch.manual_seed(0)
    straight = _make_recipe(str(tmp_path / "straight"))
    straight_state = straight.run(total_epochs=EPOCHS)

    torch.manual_seed(0)
    first = _make_recipe(str(tmp_path / "resumed"), extra=[StopAt(17)])
    first.run(total_epochs=EPOCHS)
    assert first.progress.iters == 17 and not first.progress.epoch_done

    torch.manual_seed(1234)  # a new process: other RNG state, fresh objects
    path, saved = load_latest(str(tmp_path / "resumed"))
    assert path.endswith("ckpt_17.pth")  # the final checkpoint of the stopped run
    second = _make_recipe(str(tmp_path / "resumed"))
    second.load_state_dict(saved)
    resumed_state = second.run(total_epochs=EPOCHS)

    for p, q in zip(straight.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert resumed_state["iters"] == straight_state["iters"] == 38
    assert torch.equal(resumed_state["metrics"]["loss"], straight_state["metrics"]["loss"])
    assert second.progress.completed_epochs == EPOCHS
    assert second.run(total_epochs=EPOCHS)["iters"] == 38  # nothing left to do


def test_run_arguments_are_checked():
    recipe = Recipe(lambda b: {}, range(2))
    with pytest.raises(TypeError, match="either epochs"):
        recipe.run(1, total_epochs=2)
    with pytest.raises(ValueError, match="epochs must be >= 0"):
        recipe.run(-1)


def test_checkpoints_rotate_keep_the_best_and_hold_no_batch_or_outputs(tmp_path):
    torch.manual_seed(0)
    recipe = _make_recipe(str(tmp_path))
    scores = iter([3.0, 5.0, 4.0, 6.0, 8.0, 0.0, 2.0])
    checkpoint = recipe.callbacks.cbs[1][-1]
    checkpoint.key_best = lambda saved: next(scores)
    recipe.run(2)  # 26 steps: files at iters 4, 9, 12 (epoch end), 14, 19, 24, 25
    names = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "*.pth")))
    assert names == ["ckpt_19.pth", "ckpt_19_best.pth", "ckpt_24.pth", "ckpt_25.pth"]
    assert checkpoint.best == 8.0 and checkpoint.saved == [
        str(tmp_path / n) for n in ("ckpt_19.pth", "ckpt_24.pth", "ckpt_25.pth")
    ]

    saved = load(str(tmp_path / "ckpt_25.pth"))  # weights_only=True
    state = saved["callbacks"]["state"]
    assert not {"batch", "loss", "_batch_gpu", "_loader", "_recipe"} & state.keys()

    def tensors(x):
        if isinstance(x, torch.Tensor):
            yield x
        elif isinstance(x, dict):
            for v in x.values():
                yield from tensors(v)
        elif isinstance(x, list | tuple):
            for v in x:
                yield from tensors(v)

    shapes = {tuple(t.shape) for t in tensors(saved)}
    assert (8, 6) not in shapes and (8,) not in shapes  # no batch tensors anywhere
    assert not glob.glob(str(tmp_path / "*.partial"))


def test_loaded_callback_states_follow_ids_not_positions(tmp_path):
    torch.manual_seed(0)
    recipe = _make_recipe(str(tmp_path), extra=[ecb.WindowedMetricAvg("loss", k=4)])
    recipe.run(1)
    path, saved = load_latest(str(tmp_path))

    other = _make_recipe(str(tmp_path / "other"))
    # a new callback first, the saved ones in another order
    other.callbacks.cbs[1].insert(0, ecb.ExponentialMetricAvg("loss"))
    other.callbacks.cbs[1].insert(0, ecb.WindowedMetricAvg("loss", k=4))
    other.callbacks._dispatch.clear()
    other.load_state_dict(saved)
    named, other_named = recipe.callbacks.named_callbacks(), other.callbacks.named_callbacks()
    assert torch.equal(other_named["EpochMetricAvg[loss]"].mean, named["EpochMetricAvg[loss]"].mean)
    assert [float(v) for v in other_named["WindowedMetricAvg[loss]"].values] == [
        float(v) for v in named["WindowedMetricAvg[loss]"].values
    ]
    assert other_named["ExponentialMetricAvg[loss]"].avg is None
    assert other_named["Counter"].iters == 12


def test_load_latest_skips_torn_files(tmp_path):
    good = tmp_path / "a.pth"
    torch.save({"x": torch.ones(2)}, good)
    torn = tmp_path / "b.pth"
    torn.write_bytes(good.read_bytes()[:50])
    os.utime(good, (1, 1))
    path, state = load_latest(str(tmp_path))
    assert path == str(good) and torch.equal(state["x"], torch.ones(2))
    assert load_latest(str(tmp_path / "nothing-here")) is None


def test_early_stopping_ends_the_run_after_patience_epochs(tmp_path):
    epoch_values = iter([1.0, 0.5, 0.7, 0.6, 0.55, 0.1, 0.1])
    current = {"v": None}

    class PerEpoch:
        def on_epoch_start(self, state):
            current["v"] = next(epoch_values)

    recipe = Recipe(lambda b: {"v": torch.tensor(current["v"])}, range(4))
    stopper = ecb.EarlyStopping("metrics.v", patience=3, mode="min")
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            PerEpoch(),
            ecb.EpochMetricAvg("v"),
            stopper,
            ecb.Checkpoint(str(tmp_path / "ck_{epoch}.pth"), recipe),
        ]
    )
    recipe.run(20)
    # best 0.5 at epoch 1; 0.7, 0.6, 0.55 are three epochs without improvement
    assert recipe.progress.epoch == 4 and recipe.progress.epoch_done
    assert stopper.best == 0.5 and stopper.bad_epochs == 3
    assert sorted(os.listdir(tmp_path)) == [f"ck_{e}.pth" for e in range(5)]


def test_stopping_from_the_app_writes_a_final_checkpoint(tmp_path):
    import time

    import anyio

    def slow(batch):
        time.sleep(0.005)
        return {}

    recipe = Recipe(slow, range(1000))
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.Checkpoint(str(tmp_path / "ck_{iters}.pth"), recipe),
        ]
    )

    async def app():
        async with anyio.create_task_group() as tg:
            tg.start_soon(recipe.arun, 1)
            await anyio.sleep(0.2)
            recipe.stop()

    anyio.run(app)
    iters = recipe.progress.iters
    assert 0 < iters < 999
    assert os.listdir(tmp_path) == [f"ck_{iters}.pth"]
    assert load(str(tmp_path / f"ck_{iters}.pth"))["progress"]["iters"] == iters
