"""Training with arun leaves the app's event loop responsive (a real CNN, real data)."""

import anyio
import pytest
import torch

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.demo import digits_loaders, small_cnn
from evloop.lag import LagProbe


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_event_loop_lag_stays_small_while_training(backend):
    torch.manual_seed(0)
    train, _, _ = digits_loaders()
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def forward(batch):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return {"loss": loss}

    recipe = Recipe(forward, train)
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.Optimizer(opt), ecb.EpochMetricAvg("loss")])

    async def app():
        async with LagProbe() as probe:
            await recipe.arun(1)
        return probe

    probe = anyio.run(app, backend=backend)
    # ~45 steps of ~20 ms: were the loop blocked, lag would be a whole step or the run
    assert len(probe.lateness_ms) > 200
    assert probe.percentile(50) < 5
    assert max(probe.lateness_ms) < 100
