"""One process of the distributed-scaling benchmark (``torchrun --nproc_per_node N``).

The same global work for any N: an MLP on 32,768 samples per epoch, batches of 256 per
process, split by a DistributedSampler. The same processes train a hand-written loop
and the recipe, each on a model of its own, one epoch after the other (the order
swapped every round, after a warm-up epoch of each): the two are measured at the same
moment, on the same machine load, which launches of their own are not. Rank 0 prints
``samples/s <hand-written> <evloop> per-cpu-s <hand-written> <evloop>`` for each of
``--rounds`` rounds (all ranks' samples, per second of wall time and per second of
all ranks' CPU time). ``--fsdp``: FSDP2 (each Linear a unit, then the model) instead of DDP, in
both.
"""

import argparse
import time

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.distributed import average_over_ranks, init_from_env, sampler, world

SAMPLES = 32768


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
    )


def shard(model: nn.Module) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def plain_loop(loader: DataLoader, fsdp: bool):
    """The same epoch as a hand-written DDP or FSDP2 loop (the epoch's mean loss
    all-reduced)."""
    init_from_env()
    model = mlp()
    if world().distributed:
        model = shard(model) if fsdp else DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    epoch = [0]

    def train_epoch() -> None:
        loader.sampler.set_epoch(epoch[0])
        epoch[0] += 1
        total = torch.zeros(())
        for x, y in loader:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            total += loss.detach()
        average_over_ranks(total / len(loader))

    return train_epoch


def recipe_loop(loader: DataLoader, fsdp: bool):
    """The same epoch as a recipe: Counter, Optimizer, the epoch's mean loss."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def forward_pass(batch, model):
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return {"loss": loss}

    recipe = Recipe(forward_pass, loader)
    recipe.register("model", model)
    recipe.distributed(**({"strategy": "fsdp", "blocks": (nn.Linear,)} if fsdp else {}))
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.Optimizer(opt), ecb.EpochMetricAvg("loss")])
    return lambda: recipe.run(1)


def timed(train_epoch) -> tuple[float, float]:
    """Samples per second of wall time, and per second of CPU time of all ranks
    (steadier on a shared machine: another process's load slows the wall clock)."""
    start, cpu = time.perf_counter(), time.process_time()
    train_epoch()
    elapsed = time.perf_counter() - start
    used = torch.tensor([time.process_time() - cpu], dtype=torch.float64)
    if world().distributed:
        torch.distributed.all_reduce(used)
    return SAMPLES / elapsed, SAMPLES / float(used)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fsdp", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(SAMPLES, 256), torch.randint(0, 10, (SAMPLES,)))
    plain_data = DataLoader(data, batch_size=256, sampler=sampler(data))
    recipe_data = DataLoader(data, batch_size=256, sampler=sampler(data))
    plain, ours = plain_loop(plain_data, args.fsdp), recipe_loop(recipe_data, args.fsdp)
    plain()
    ours()
    for round_ in range(args.rounds):
        if round_ % 2:
            ours_rate, plain_rate = timed(ours), timed(plain)
        else:
            plain_rate, ours_rate = timed(plain), timed(ours)
        if world().is_main:
            print(
                f"samples/s {plain_rate[0]:.1f} {ours_rate[0]:.1f} "
                f"per-cpu-s {plain_rate[1]:.1f} {ours_rate[1]:.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
