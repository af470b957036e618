"""Tutorial, "Handling devices": register the model, let the recipe move it."""

import torch
import torchvision
from _common import DEVICE, EPOCHS, data_loader
from torch import nn

import evloop
import evloop.optim
import evloop.recipe

# notice that we don't move the model to cuda anymore
model = torchvision.models.resnet18(num_classes=10)
opt = evloop.optim.RAdamW(model.parameters(), lr=0.01)


def forward_pass(batch):
    x, y = batch
    opt.zero_grad()
    pred = model(x)
    loss = nn.functional.cross_entropy(pred, y)
    loss.backward()
    opt.step()
    return {}


recipe = evloop.recipe.Recipe(forward_pass, data_loader)
# register the model
recipe.register("model", model)
# 1) recipe.model now exists
# 2) recipe.state_dict() will include the model's state_dict
# 3) moving recipe will move model
assert recipe.model is model and "model" in recipe.state_dict()

# move the training to gpu (the tutorial's recipe.cuda(), when there is one)
recipe.to(DEVICE)
recipe.run(EPOCHS)
assert next(model.parameters()).device.type == torch.device(DEVICE).type
print("devices: done")
