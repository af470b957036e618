"""Data-parallel training: the same script in one process or under torchrun.

    python examples/distributed_digits.py
    torchrun --nproc_per_node 2 examples/distributed_digits.py

Each process trains on its share of the digits (``evloop.distributed.sampler``) with
the model wrapped in DistributedDataParallel; the logged loss and accuracy are the
means over processes, and only rank 0 prints, evaluates into its logs and writes
checkpoints. On GPUs, each process uses the GPU of its LOCAL_RANK (NCCL).
"""

import tempfile

import torch
from _common import DEVICE, EPOCHS, testset, trainset
from torch import nn
from torch.utils.data import DataLoader

import evloop.callbacks as ecb
import evloop.distributed as edist
import evloop.recipes as erp
from evloop.demo import small_cnn
from evloop.optim import RAdamW

torch.manual_seed(0)  # the same initial weights on every rank (DDP broadcasts rank 0's)
train_loader = DataLoader(trainset, batch_size=32, sampler=edist.sampler(trainset))
test_loader = DataLoader(testset, batch_size=128, sampler=edist.sampler(testset, shuffle=False))
model = small_cnn()
opt = RAdamW(model.parameters(), lr=3e-3)


def forward_pass(batch, model):  # by name: the recipe passes the DDP wrapper
    x, y = batch
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return {"loss": loss}


def test_pass(batch, model):
    x, y = batch
    pred = model(x)
    return {
        "loss": nn.functional.cross_entropy(pred, y),
        "acc": (pred.argmax(1) == y).float().mean(),
    }


run_dir = tempfile.mkdtemp(prefix="evloop-distributed-")
recipe = erp.TrainAndTest(
    model, forward_pass, test_pass, train_loader, test_loader, checkpoint=run_dir + "/model"
)
recipe.distributed()  # joins torchrun's process group; a no-op in one process
recipe.callbacks.add_callbacks([ecb.Optimizer(opt), ecb.EpochMetricAvg("loss")])
recipe.test_loop.callbacks.add_callbacks(
    [
        ecb.EpochMetricAvg("loss", post_each_batch=False),
        ecb.EpochMetricAvg("acc", post_each_batch=False),
    ]
)
recipe.to(DEVICE)
state = recipe.run(EPOCHS)
if edist.world().is_main:
    print(
        f"{edist.world().size} process(es); test accuracy:",
        float(state["test_metrics"]["acc"]),
        "checkpoints in",
        run_dir,
    )
