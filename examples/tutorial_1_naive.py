"""Tutorial, "Naive code": a bare Recipe running a hand-written training pass."""

import torch
import torchvision
from _common import DEVICE, EPOCHS, data_loader
from torch import nn

import evloop
import evloop.optim
import evloop.recipe

# Let's initialize the model, dataloader, and optimizer
model = torchvision.models.resnet18(num_classes=10).to(DEVICE)
opt = evloop.optim.RAdamW(model.parameters(), lr=0.01)


# define a training pass
def forward_pass(batch):
    x, y = batch
    x, y = x.to(DEVICE), y.to(DEVICE)

    opt.zero_grad()  # Don't be angry at me just now
    pred = model(x)
    loss = nn.functional.cross_entropy(pred, y)
    loss.backward()
    opt.step()

    # For now, just return an empty dict
    return {}


# build our recipe
recipe = evloop.recipe.Recipe(forward_pass, data_loader)
state = recipe.run(EPOCHS)
assert torch.isfinite(next(model.parameters())).all()
print("naive: done")
