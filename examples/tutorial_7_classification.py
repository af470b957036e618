"""Tutorial, "Classification": TrainAndTest with accuracy, confusion matrix and reports."""

import torchvision
from _common import DEVICE, EPOCHS, data_loader, test_loader, trainset
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
    return {"loss": loss, "pred": pred}


def test_pass(batch):
    x, y = batch
    pred = model(x)
    loss = nn.functional.cross_entropy(pred, y)
    return {"loss": loss, "pred": pred}


recipe = evloop.recipes.Classification(
    model, forward_pass, test_pass, data_loader, test_loader, trainset.classes
)

recipe.callbacks.add_callbacks(
    [
        tcb.Optimizer(opt),
    ]
)

recipe.to(DEVICE)
state = recipe.run(EPOCHS)
print("test accuracy:", float(state["test_metrics"]["acc"]))
