"""What the tutorial's samples take for granted: a data set, a device.

The tutorial trains on CIFAR10 on a GPU; these files train on the 8x8 digits that ship
with scikit-learn (no download) and on CUDA only when there is one.
"""

import os

import torch

from evloop.datasets import Digits

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# EVLOOP_EXAMPLE_QUICK=1 (the test suite) trains one epoch on a few batches.
QUICK = os.environ.get("EVLOOP_EXAMPLE_QUICK") == "1"
EPOCHS = 1 if QUICK else 2

trainset = Digits(train=True)
testset = Digits(train=False)
if QUICK:
    trainset = torch.utils.data.Subset(trainset, range(128))
    testset = torch.utils.data.Subset(testset, range(256))
    trainset.classes = testset.classes = Digits.classes
data_loader = torch.utils.data.DataLoader(trainset, batch_size=32, shuffle=True)
test_loader = torch.utils.data.DataLoader(testset, batch_size=128)
