"""DivergenceGuard: a planted NaN rolls the run back to finite weights, without a sync."""

import io

import torch
from torch import nn

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.events import DivergenceRolledBack


def _training(poisoned, n=120, **guard):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))

    def forward(batch):
        loss = nn.functional.cross_entropy(model(x), y)
        if batch in poisoned:
            loss = loss * float("nan")  # a bad batch: NaN gradients, NaN weights
        loss.backward()
        return {"loss": loss}

    recipe = Recipe(forward, range(n))
    recipe.register("model", model)
    printed = io.StringIO()
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.Optimizer(opt),
            ecb.DivergenceGuard(check_every=10, **guard),
            ecb.StdoutLogger(log_every=-1, stream=printed),
        ]
    )
    events = []
    recipe.bus.subscribe(events.append, types=[DivergenceRolledBack])
    return recipe, model, opt, events, printed


def test_a_planted_nan_is_rolled_back_and_training_goes_on_with_finite_weights():
    recipe, model, opt, events, printed = _training(poisoned={47})
    recipe.run(1)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert len(events) == 1 and not events[0].stopped
    assert events[0].restored_to == 9  # the last snapshot (every 50 steps) known to be good
    assert opt.param_groups[0]["lr"] == 0.05  # × lr_factor
    assert recipe.progress.iters == 119  # the run went on to its end
    assert "back to iteration 9" in printed.getvalue()


def test_a_run_that_keeps_diverging_is_stopped_with_a_reason():
    recipe, model, opt, events, printed = _training(
        poisoned={25, 45, 65, 85}, n=400, max_rollbacks=2
    )
    recipe.run(1)
    assert events[-1].stopped and "3 rollbacks within 1000 steps" in events[-1].reason
    assert recipe.progress.iters < 399


def test_diverging_before_any_good_weights_stops():
    recipe, model, opt, events, printed = _training(poisoned={3})
    recipe.run(1)
    assert events[-1].stopped and "no good weights" in events[-1].reason
