"""Tutorial, "CrossEntropyClassification": model, data, hyper-parameters, nothing else."""

import tempfile

import torchvision
from _common import DEVICE, EPOCHS, data_loader, test_loader, trainset

import evloop
import evloop.recipes

model = torchvision.models.resnet18(num_classes=10)

recipe = evloop.recipes.CrossEntropyClassification(
    model, data_loader, test_loader, trainset.classes, checkpoint=tempfile.mkdtemp() + "/model"
)

recipe.to(DEVICE)
state = recipe.run(EPOCHS)
print("test accuracy:", float(state["test_metrics"]["acc"]))
