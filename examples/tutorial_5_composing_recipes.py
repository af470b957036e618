"""Tutorial, "Composing recipes": a test recipe called by the training recipe.

As written in the tutorial, test_pass closes over the live model, so CallRecipe runs it
inline (training waits, as in Torchélie). See train_and_test_concurrent.py for the
form that evaluates a snapshot while training goes on.
"""

import torch
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
    with torch.no_grad():
        model.eval()
        pred = model(x)
        loss = nn.functional.cross_entropy(pred, y)
        model.train()
    return {"loss": loss}


test_recipe = evloop.recipes.Recipe(test_pass, test_loader)
test_recipe.callbacks.add_callbacks(
    [
        tcb.Counter(),
        tcb.EpochMetricAvg("loss", post_each_batch=False),
        tcb.StdoutLogger(log_every=-1, prefix="Test"),
        tcb.VisdomLogger(visdom_env="main", log_every=-1, prefix="Test"),
    ]
)

recipe = evloop.recipes.Recipe(forward_pass, data_loader)
recipe.register("model", model)
recipe.register("test_recipe", test_recipe)
recipe.callbacks.add_callbacks(
    [
        tcb.Counter(),
        tcb.Optimizer(opt),
        tcb.EpochMetricAvg("loss", post_each_batch=True),
        tcb.StdoutLogger(log_every=10),
        tcb.VisdomLogger(visdom_env="main", log_every=10),
        tcb.CallRecipe(test_recipe, run_every=100, prefix="test"),
    ]
)
recipe.to(DEVICE)
state = recipe.run(EPOCHS)
print("test loss:", float(state["test_metrics"]["loss"]))
