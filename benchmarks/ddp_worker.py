"""One process of the distributed-scaling benchmark (``torchrun --nproc_per_node N``).

The same global work for any N: an MLP on 32,768 samples per epoch, batches of 256 per
process, split by a DistributedSampler. Rank 0 prints the samples per second of the
second epoch (the first warms up), over all ranks. ``--plain``: a hand-written loop
instead of the recipe; ``--fsdp``: FSDP2 (each Linear a unit, then the model) instead
of DDP, in both.
"""

import sys
import time

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.distributed import average_over_ranks, init_from_env, sampler, world

SAMPLES = 32768


def shard(model: nn.Module) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def plain_loop(model: nn.Module, loader: DataLoader, fsdp: bool):
    """The same epoch as a hand-written DDP or FSDP2 loop (the epoch's mean loss
    all-reduced)."""
    init_from_env()
    if not world().distributed:
        ddp = model
    else:
        ddp = shard(model) if fsdp else DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    epoch = [0]

    def train_epoch() -> None:
        loader.sampler.set_epoch(epoch[0])
        epoch[0] += 1
        total = torch.zeros(())
        for x, y in loader:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(ddp(x), y)
            loss.backward()
            opt.step()
            total += loss.detach()
        average_over_ranks(total / len(loader))

    return train_epoch


def main() -> None:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(SAMPLES, 256), torch.randint(0, 10, (SAMPLES,)))
    loader = DataLoader(data, batch_size=256, sampler=sampler(data))
    model = nn.Sequential(
        nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    fsdp = "--fsdp" in sys.argv

    def forward_pass(batch, model):
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return {"loss": loss}

    if "--plain" in sys.argv:
        train_epoch = plain_loop(model, loader, fsdp)
    else:
        recipe = Recipe(forward_pass, loader)
        recipe.register("model", model)
        if fsdp:
            recipe.distributed(strategy="fsdp", blocks=(nn.Linear,))
        else:
            recipe.distributed()
        recipe.callbacks.add_callbacks(
            [ecb.Counter(), ecb.Optimizer(opt), ecb.EpochMetricAvg("loss")]
        )

        def train_epoch() -> None:
            recipe.run(1)

    train_epoch()
    start = time.perf_counter()
    train_epoch()
    elapsed = time.perf_counter() - start
    if world().is_main:
        print(f"samples/s {SAMPLES / elapsed:.1f}", flush=True)


if __name__ == "__main__":
    main()
