"""Tutorial, "Callbacks and state": the loss flows through the state to the loggers.

With no visdom server on localhost:8097, VisdomLogger warns once and training goes on.
"""

import torchvision
from _common import DEVICE, EPOCHS, data_loader
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


recipe = evloop.recipes.Recipe(forward_pass, data_loader)
recipe.register("model", model)
# there's something new here!
recipe.callbacks.add_callbacks(
    [
        tcb.Counter(),
        tcb.Optimizer(opt),
        tcb.EpochMetricAvg("loss", post_each_batch=True),
        tcb.StdoutLogger(log_every=10),
        tcb.VisdomLogger(visdom_env="main", log_every=10),
    ]
)
recipe.to(DEVICE)
state = recipe.run(EPOCHS)
print("final epoch loss:", float(state["metrics"]["loss"]))
