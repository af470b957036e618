"""TrainAndTest written the evloop way: test_pass takes the model by name, so each
evaluation runs on a snapshot of the weights in its own thread while training goes on."""

import tempfile

from _common import DEVICE, EPOCHS, data_loader, test_loader
from torch import nn

import evloop.callbacks as ecb
import evloop.recipes as erp
from evloop.demo import small_cnn
from evloop.optim import RAdamW

model = small_cnn()
opt = RAdamW(model.parameters(), lr=3e-3)


def forward_pass(batch):
    x, y = batch
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return {"loss": loss}


def test_pass(batch, model):  # `model` is a snapshot, in eval mode, under no_grad
    x, y = batch
    pred = model(x)
    return {
        "loss": nn.functional.cross_entropy(pred, y),
        "acc": (pred.argmax(1) == y).float().mean(),
    }


run_dir = tempfile.mkdtemp(prefix="evloop-concurrent-")
recipe = erp.TrainAndTest(
    model,
    forward_pass,
    test_pass,
    data_loader,
    test_loader,
    test_every=20,
    checkpoint=run_dir + "/model",
    key_best=lambda saved: saved["test_loop"]["callbacks"]["state"]["metrics"]["acc"],
)
recipe.callbacks.add_callbacks([ecb.Optimizer(opt), ecb.EpochMetricAvg("loss")])
recipe.test_loop.callbacks.add_callbacks(
    [
        ecb.EpochMetricAvg("loss", post_each_batch=False),
        ecb.EpochMetricAvg("acc", post_each_batch=False),
    ]
)
recipe.to(DEVICE)
state = recipe.run(EPOCHS)
print(
    "test accuracy:",
    float(state["test_metrics"]["acc"]),
    "evaluations skipped:",
    recipe.callbacks.cbs[2][1].skipped,
)
