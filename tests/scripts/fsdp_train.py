"""A sharded (FSDP2) or data-parallel job for the torchrun tests (gloo on CPU); also
runs as a single process (``python fsdp_train.py …``).

usage: [torchrun --nproc_per_node 2] fsdp_train.py RUN_DIR --epochs N
       [--strategy {fsdp,ddp}] [--batch B] [--shuffle] [--dropout P] [--resume]
       [--kill-in-save EPOCH] [--stop-at ITER] [--kill-at ITER] [--reduce-every N]
       [--steer-at ITER]

Every rank writes RUN_DIR/rank<r>.json (what it saw); rank 0 also writes the final
full weights to RUN_DIR/final.pt.
"""

import argparse
import json
import os
import signal
import threading
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.utils.data import DataLoader, TensorDataset

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.control import Command
from evloop.distributed import sampler, world


class Record:
    """Test-only: where this rank stopped, and a planted kill or stop."""

    def __init__(self, args, recipe, checkpoint) -> None:
        self.args, self.recipe, self.checkpoint = args, recipe, checkpoint
        self.iters = 0
        self.losses: list[float] = []
        self.reduced: list[tuple[int, float, float]] = []
        self.steps: list[tuple[int, float, float]] = []  # iters, lr, time

    def on_batch_start(self, state) -> None:
        lr = self.recipe.opt.param_groups[0]["lr"]
        self.steps.append((state["iters"], lr, time.monotonic()))

    def on_batch_end(self, state) -> None:
        if world().rank == 0 and state["iters"] == self.args.steer_at:
            # what rank 0's server does with a controller's commands
            controls = self.recipe.controls
            controls.submit(Command(op="set", values={"lr": 0.01}))
            controls.submit(Command(op="pause"))
            threading.Timer(1.0, controls.submit, [Command(op="resume")]).start()
        self.iters = state["iters"]
        self.losses.append(float(state["loss"].detach()))
        if world().rank == 0 and state["iters"] == self.args.stop_at:
            self.recipe.stop()
        if world().rank == 1 and state["iters"] == self.args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_batch_done(self, state) -> None:  # the posted means, once reduced
        if state["iters"] % self.args.reduce_every == 0:
            metrics = state["metrics"]
            self.reduced.append((state["iters"], float(metrics["loss"]), float(metrics["score"])))

    def on_epoch_done(self, state) -> None:  # after the checkpoint's save started
        if world().rank == 1 and state["epoch"] == self.args.kill_in_save:
            os.kill(os.getpid(), signal.SIGKILL)


def count_metric_collectives() -> list[int]:
    """Test-only: count the all-reduces on the default group (the metrics' — the
    gradients' go through DDP/FSDP, stop votes and checkpoints through groups of
    their own)."""
    calls: list[int] = []
    original = dist.all_reduce

    def counting(tensor, *args, **kwargs):
        group = kwargs.get("group", args[1] if len(args) > 1 else None)
        if group is None:
            calls.append(tensor.numel())
        return original(tensor, *args, **kwargs)

    dist.all_reduce = counting
    return calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--epochs", type=int, required=True, help="in total")
    parser.add_argument("--strategy", default="fsdp")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--shuffle", action="store_true")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-in-save", type=int, default=-1)
    parser.add_argument("--stop-at", type=int, default=-1)
    parser.add_argument("--kill-at", type=int, default=-1, help="rank 1 dies at this step")
    parser.add_argument("--reduce-every", type=int, default=10)
    parser.add_argument("--steer-at", type=int, default=-1, help="rank 0: set lr, pause 1 s")
    args = parser.parse_args()

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 16, generator=g), torch.randint(0, 4, (256,), generator=g)
    data = TensorDataset(x, y)
    loader = DataLoader(data, batch_size=args.batch, sampler=sampler(data, shuffle=args.shuffle))
    model = nn.Sequential(
        nn.Linear(16, 32),
        nn.ReLU(),
        nn.Dropout(args.dropout),
        nn.Linear(32, 32),
        nn.ReLU(),
        nn.Linear(32, 4),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def forward_pass(batch, model):
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return {"loss": loss, "score": 2 * loss.detach()}

    recipe = Recipe(forward_pass, loader)
    recipe.register("model", model)
    recipe.register("opt", opt)
    blocks = (nn.Linear,) if args.strategy == "fsdp" else None
    recipe.distributed(strategy=args.strategy, blocks=blocks, reduce_every=args.reduce_every)
    checkpoint = ecb.ShardedCheckpoint(args.run_dir + "/ckpt_{epoch}", recipe)
    record = Record(args, recipe, checkpoint)
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.Optimizer(opt),
            ecb.EpochMetricAvg("loss"),
            ecb.EpochMetricAvg("score"),
            checkpoint,
            record,
        ]
    )
    collectives = count_metric_collectives()
    state = recipe.run(total_epochs=args.epochs, resume="auto" if args.resume else None)
    full = get_model_state_dict(
        recipe.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    here = world()
    if here.is_main:
        torch.save(full, os.path.join(args.run_dir, "final.pt"))
    with open(f"{args.run_dir}/rank{here.rank}.json", "w") as file:
        json.dump(
            {
                "world_size": here.size,
                "iters": record.iters,
                "losses": record.losses,
                "epoch_loss": float(state["metrics"]["loss"]),
                "module": type(recipe.model).__name__,
                "param": type(next(recipe.model.parameters())).__name__,
                "saved": checkpoint.saved,
                "reduced": record.reduced,
                "steps": record.steps,
                "metric_collectives": len(collectives),
            },
            file,
        )


if __name__ == "__main__":
    main()
