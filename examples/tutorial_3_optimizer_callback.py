"""Tutorial, "Optimizer Callbacks": a hand-written optimizer callback."""

import torchvision
from _common import DEVICE, EPOCHS, data_loader
from torch import nn

import evloop
import evloop.optim
import evloop.recipes as tcr


# There's a better one in evloop, you'll actually never do that.
class OptimizerCallback:
    def __init__(self, opt):
        self.opt = opt
        self.steps = 0

    # For now, just pretend the state argument isn't there
    def on_batch_start(self, state):
        self.opt.zero_grad()  # the tutorial's `zero_grads()` is a typo

    # For now, just pretend the state argument isn't there
    def on_batch_end(self, state):
        self.opt.step()
        self.steps += 1


model = torchvision.models.resnet18(num_classes=10)
opt = evloop.optim.RAdamW(model.parameters(), lr=0.01)


def forward_pass(batch):
    x, y = batch
    pred = model(x)
    loss = nn.functional.cross_entropy(pred, y)
    loss.backward()
    return {}


recipe = tcr.Recipe(forward_pass, data_loader)
recipe.register("model", model)
# there's something new here!
callback = OptimizerCallback(opt)
recipe.callbacks.add_callbacks([callback])
recipe.to(DEVICE)
recipe.run(EPOCHS)
assert callback.steps == EPOCHS * len(data_loader)
print("optimizer callback: done")
