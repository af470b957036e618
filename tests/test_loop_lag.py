"""Training with arun leaves the app's event loop responsive (a real CNN, real data)."""

import anyio
import pytest
import torch

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.demo import digits_loaders, small_cnn
from evloop.lag import LagProbe

SAMPLES = 300
MAX_EPOCHS = 30


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

    probe = LagProbe()

    class UntilSampled:
        """Trains until the probe has woken SAMPLES times during training: the run is
        as long as the measurement needs, whatever the machine's speed."""

        def on_batch_end(self, state):
            if len(probe.lateness_ms) >= SAMPLES:
                recipe.stop()

    recipe = Recipe(forward, train)
    recipe.callbacks.add_callbacks(
        [ecb.Counter(), ecb.Optimizer(opt), ecb.EpochMetricAvg("loss"), UntilSampled()]
    )

    async def app():
        async with probe:
            await recipe.arun(MAX_EPOCHS)

    anyio.run(app, backend=backend)
    # were the loop blocked while training, the probe could not wake and the run would
    # go on to its last epoch with too few samples; its lag would be a whole step
    assert len(probe.lateness_ms) >= SAMPLES
    assert recipe.progress.epoch < MAX_EPOCHS - 1
    assert probe.percentile(50) < 5
    assert max(probe.lateness_ms) < 100
