import pytest
import torch
from helpers import make_batches
from torch import nn

import evloop.callbacks as ecb
from evloop import Recipe


def _recipe(batches, model, opt, **kwargs):
    def forward(batch):
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return {"loss": loss}

    recipe = Recipe(forward, batches)
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.Optimizer(opt, **kwargs)])
    return recipe


def _manual_accumulation(batches, model, opt, accumulation, epochs):
    """Reference: windows counted within each epoch, the short last one scaled by its size."""
    for _ in range(epochs):
        for start in range(0, len(batches), accumulation):
            window = batches[start : start + accumulation]
            opt.zero_grad()
            for x, y in window:
                nn.functional.cross_entropy(model(x), y).backward()
            for p in model.parameters():
                p.grad /= len(window)
            opt.step()


@pytest.mark.parametrize("accumulation", [1, 3, 4])
def test_accumulation_windows_flush_the_last_partial_window(accumulation):
    batches = make_batches(10)
    torch.manual_seed(0)
    model, reference = nn.Linear(4, 3), nn.Linear(4, 3)
    reference.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.5, momentum=0.9)
    callback_steps = []

    class CountSteps:
        def on_batch_end(self, state):
            callback_steps.append(state["_optimizer_stepped"])

    recipe = _recipe(batches, model, opt, accumulation=accumulation)
    recipe.callbacks.add_callback(CountSteps())
    recipe.run(2)
    _manual_accumulation(batches, reference, ref_opt, accumulation, epochs=2)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    windows_per_epoch = -(-10 // accumulation)
    optimizer_cb = recipe.callbacks.cbs[1][1]
    assert optimizer_cb.steps == 2 * windows_per_epoch
    assert sum(callback_steps) == 2 * (10 // accumulation)  # full windows step at batch end


def test_clip_grad_norm_posts_a_device_norm_and_clips():
    batches = make_batches(2)
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    recipe = _recipe(batches, model, opt, clip_grad_norm=1e-3, log_lr=True, log_mom=True)
    state = recipe.run(1)
    assert isinstance(state["metrics"]["grad_norm"], torch.Tensor)
    assert state["metrics"]["grad_norm"] > 1e-3
    total = torch.norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert total <= 1e-3 * 1.0001
    assert state["metrics"]["lr_0"] == 0.0 and state["metrics"]["mom_0"] == 0


def test_lrsched_steps_on_optimizer_steps_not_micro_batches():
    batches = make_batches(10)
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    recipe = _recipe(batches, model, opt, accumulation=4)
    recipe.callbacks.add_callback(ecb.LRSched(sched, metric=None, step_each_batch=True))
    recipe.run(1)
    # 10 batches, windows of 4: two full windows step the schedule at batch end.
    assert sched.last_epoch == 2
    assert opt.param_groups[0]["lr"] == 0.25


def test_a_scheduler_made_after_the_optimizer_callback_sees_its_steps(recwarn):
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    recipe = _recipe(make_batches(3), model, opt)  # its Optimizer callback first
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)  # wraps opt.step
    recipe.callbacks.add_callback(ecb.LRSched(sched, metric=None, step_each_batch=True))
    recipe.run(1)
    assert sched.last_epoch == 3
    # torch warns when the scheduler steps before any optimizer step it saw
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]


def test_lrsched_feeds_plateau_the_epoch_mean():
    batches = make_batches(4)
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    recipe = _recipe(batches, model, opt)
    recipe.callbacks.add_callbacks(
        [ecb.EpochMetricAvg("loss", post_each_batch=True), ecb.LRSched(sched)]
    )
    losses = []

    class Spy:
        def on_batch_end(self, state):
            losses.append(float(state["loss"].detach()))

    recipe.callbacks.add_callback(Spy())
    recipe.run(1)
    # the scheduler saw one value: the epoch's mean (Torchélie's is the mean of the
    # running means posted each batch)
    assert sched.best == pytest.approx(sum(losses) / 4, rel=1e-5)


def test_averagers_compute_on_device_values():
    values = [1.0, 2.0, 6.0, 3.0]
    recipe = Recipe(lambda b: {"v": torch.tensor(b)}, values)
    epoch = ecb.EpochMetricAvg("v", post_each_batch=False)
    window = ecb.WindowedMetricAvg("w", k=2)
    expo = ecb.ExponentialMetricAvg("e", beta=0.5)
    recipe.callbacks.add_callbacks([ecb.Log("v", "mirror"), epoch, window, expo])

    class Copy:
        def on_batch_end(self, state):
            state["w"] = state["v"]
            state["e"] = state["v"]

    recipe.callbacks.add_prologue(Copy())
    state = recipe.run(1)
    metrics = state["metrics"]
    assert float(metrics["v"]) == pytest.approx(3.0)
    assert float(metrics["w"]) == pytest.approx(4.5)
    assert float(metrics["e"]) == pytest.approx(((1 * 0.5 + 2 * 0.5) * 0.5 + 6 * 0.5) * 0.5 + 1.5)
    assert float(metrics["mirror"]) == 3.0
    assert all(isinstance(metrics[k], torch.Tensor) for k in "vwe")


def test_windowed_average_stays_exact_over_many_windows():
    values = [float(i % 7) for i in range(1000)]
    recipe = Recipe(lambda b: {"v": torch.tensor(b, dtype=torch.float64)}, values)
    recipe.callbacks.add_callback(ecb.WindowedMetricAvg("v", k=10))
    state = recipe.run(1)
    assert float(state["metrics"]["v"]) == pytest.approx(sum(values[-10:]) / 10, abs=1e-9)


def test_a_steered_learning_rate_scales_the_schedule_instead_of_being_overwritten():
    from evloop.control import Command
    from evloop.lr_scheduler import CosineDecay

    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = CosineDecay(opt, total_iters=20, warmup_ratio=0.0)
    seen = []

    class SteerAt3:
        def on_batch_end(self, state):
            seen.append(opt.param_groups[0]["lr"])
            if state["iters"] == 3:
                recipe.controls.submit(Command(op="set", values={"lr": seen[-1] / 10}))

    recipe = Recipe(lambda b: model(torch.ones(1, 2)).sum().backward(), range(10))
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.Optimizer(opt),
            ecb.LRSched(sched, metric=None, step_each_batch=True),
            SteerAt3(),
        ]
    )
    recipe.run(1)
    # seen after each step's scheduler step: the factor of the next step
    unsteered = [0.5 * sched.factor(step + 1) for step in range(10)]
    assert seen[:4] == pytest.approx(unsteered[:4], rel=1e-9)
    # from the step after the command on, the schedule's values, a tenth as large
    assert seen[4:] == pytest.approx([v / 10 for v in unsteered[4:]], rel=1e-9)


class _RecordsPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    def __init__(self, opt):
        super().__init__(opt)
        self.got = []

    def step(self, metrics, *args, **kwargs):  # type: ignore[override]
        self.got.append(float(metrics))
        return super().step(metrics, *args, **kwargs)


@pytest.mark.parametrize("posted_by", ["EpochMetricAvg", "EpochMetricAvg after LRSched", "Log"])
def test_reduce_lr_on_plateau_gets_the_epochs_mean_loss(posted_by):
    losses = [3.0, 1.0, 2.0, 6.0, 1.0, 1.0, 1.0, 1.0]  # epoch means 3 and 1
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = _RecordsPlateau(opt)

    seen = []

    def forward(batch):
        seen.append(batch)
        loss = model(torch.zeros(1, 1)).sum() * 0 + losses[len(seen) - 1]
        loss.backward()
        return {"loss": loss}

    recipe = Recipe(forward, range(4))
    posting = ecb.EpochMetricAvg("loss") if posted_by != "Log" else ecb.Log("loss", "loss")
    lr_sched = ecb.LRSched(sched)
    after = posted_by == "EpochMetricAvg after LRSched"
    ordered = [lr_sched, posting] if after else [posting, lr_sched]
    recipe.callbacks.add_callbacks([ecb.Optimizer(opt), *ordered])
    recipe.run(2)
    assert sched.got == pytest.approx([3.0, 1.0])  # not the mean of the running means
