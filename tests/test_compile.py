"""recipe.compile(): the training step compiled with torch.compile trains as eager does."""

import pytest
import torch
from torch import nn

import evloop.callbacks as ecb
from evloop import Recipe

pytestmark = pytest.mark.slow


def _train(compiled):
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x[:, 0] > 0).long()
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 256, 32)]
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    def step(batch, model):
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return {"loss": loss.detach()}

    recipe = Recipe(step, batches)
    recipe.register("model", model)
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.Optimizer(opt), ecb.EpochMetricAvg("loss")])
    if compiled:
        recipe.compile()
    losses = [float(recipe.run(1)["metrics"]["loss"]) for _ in range(4)]
    return losses, recipe


def test_a_compiled_step_trains_to_the_same_loss_as_eager():
    eager, _ = _train(False)
    compiled, recipe = _train(True)
    assert hasattr(recipe.call_fun, "_torchdynamo_orig_callable")  # it really is compiled
    assert recipe.parameters_by_name() == ("model",)  # still takes the model by name
    assert compiled[-1] < compiled[0] * 0.7  # it trains
    assert compiled == pytest.approx(eager, rel=1e-4)
