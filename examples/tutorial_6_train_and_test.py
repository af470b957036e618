"""Tutorial, "TrainAndTest": the predefined recipe with its test loop and checkpoints."""

import tempfile

import torchvision
from _common import DEVICE, EPOCHS, data_loader, test_loader
from torch import nn

import evloop
import evloop.callbacks as tcb
import evloop.optim
import evloop.recipes

model = torchvision.models.resnet18(num_classes=10)
opt = evloop.optim.RAdamW(model.parameters(), lr=0.01)


def forward_pass(batch):
    x, y = batch
    pred = model(x)
    loss = nn.functional.cross_entropy(pred, y)
    loss.backward()
    return {"loss": loss}


def test_pass(batch):
    x, y = batch
    pred = model(x)
    loss = nn.functional.cross_entropy(pred, y)
    return {"loss": loss}


run_dir = tempfile.mkdtemp(prefix="evloop-tutorial-")
recipe = evloop.recipes.TrainAndTest(
    model, forward_pass, test_pass, data_loader, test_loader, checkpoint=run_dir + "/model"
)

recipe.callbacks.add_callbacks(
    [
        tcb.Optimizer(opt),
        tcb.EpochMetricAvg("loss", post_each_batch=True),
    ]
)
recipe.test_loop.callbacks.add_callbacks(
    [
        tcb.EpochMetricAvg("loss", post_each_batch=False),
    ]
)

recipe.to(DEVICE)
state = recipe.run(EPOCHS)
print("test loss:", float(state["test_metrics"]["loss"]), "checkpoints in", run_dir)
