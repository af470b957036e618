"""A data-parallel job for the torchrun tests (gloo on CPU).

usage: torchrun --nproc_per_node 2 ddp_train.py RUN_DIR --epochs N [--resume]
       [--fail-rank R --fail-at I --fail-how {raise,kill,sleep}] [--offload]
       [--watchdog STALL_S] [--profile {main,all}]

With --watchdog, every rank has a Watchdog, and rank 0 stops the run once it is told
that another rank stalled (--fail-how sleep: the failing rank sleeps in its forward
pass instead).

With --profile, rank 0 asks for a 3-step profile (on rank 0, or on every rank) during
the second epoch of the second run.

Rank 0 logs (JsonlWriter, StdoutLogger, and with --offload a JsonlWriter in a child
process writing RUN_DIR/offloaded/log.jsonl) and checkpoints; every rank also writes,
for the test alone, what it saw itself to RUN_DIR/rank<r>.json.
"""

import argparse
import json
import os
import signal
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.checkpoint_io import load_latest
from evloop.control import Command
from evloop.distributed import sampler, world
from evloop.events import Stalled


class RankRecord:
    """Test-only: this rank's own epoch-mean losses and where it is."""

    def __init__(self, args, rank: int, offload) -> None:
        self.args, self.rank, self.offload = args, rank, offload
        self.losses: list[float] = []
        self.epoch_losses: list[float] = []
        self.offload_child = False  # whether this rank ever ran the offloaded writer

    def on_batch_end(self, state) -> None:
        self.losses.append(float(state["loss"].detach()))
        if self.args.fail_how == "sleep":
            return
        if self.offload is not None and self.offload.process is not None:
            self.offload_child = True
        if self.rank == self.args.fail_rank and state["iters"] == self.args.fail_at:
            if self.args.fail_how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"planted failure on rank {self.rank}")

    def on_epoch_end(self, state) -> None:
        self.epoch_losses.append(sum(self.losses) / len(self.losses))
        self.losses = []


class AskForAProfile:
    """Test-only: rank 0 submits a ``profile`` command at iteration ``at``."""

    def __init__(self, recipe, ranks: str, at: int) -> None:
        self.recipe, self.ranks, self.at = recipe, ranks, at

    def on_batch_end(self, state) -> None:
        if world().is_main and state["iters"] == self.at:
            values = {"steps": 3, "ranks": self.ranks}
            self.recipe.controls.submit(Command(op="profile", values=values, id="asked"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--epochs", type=int, required=True, help="in total")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--fail-rank", type=int, default=-1)
    parser.add_argument("--fail-at", type=int, default=-1)
    parser.add_argument("--fail-how", choices=("raise", "kill", "sleep"), default="raise")
    parser.add_argument("--watchdog", type=float, default=None, help="stall_s")
    parser.add_argument("--step-s", type=float, default=0.0, help="each step lasts at least")
    parser.add_argument("--closure", action="store_true")
    parser.add_argument("--all-ranks", action="store_true", help="every rank publishes")
    parser.add_argument("--offload", action="store_true")
    parser.add_argument("--profile", choices=("main", "all"), default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(384, 16, generator=g), torch.randint(0, 4, (384,), generator=g)
    data = TensorDataset(x, y)
    loader = DataLoader(data, batch_size=16, sampler=sampler(data))
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    bare_model = model

    def forward_pass(batch, model):
        if args.closure:  # the mistake the recipe must catch: the module, not DDP
            model = bare_model
        if args.fail_how == "sleep" and world().rank == args.fail_rank:
            if recipe.progress.iters == args.fail_at:
                time.sleep(4 * args.watchdog)  # stuck, for a while
        time.sleep(args.step_s)
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return {"loss": loss}

    recipe = Recipe(forward_pass, loader)
    recipe.register("model", model)
    recipe.register("opt", opt)
    recipe.distributed(publish_on_all_ranks=args.all_ranks)
    rank = world().rank
    log = f"/log{rank}.jsonl" if args.all_ranks else "/log.jsonl"
    offload = None
    if args.offload:
        offload = ecb.Offload(ecb.JsonlWriter(args.run_dir + "/offloaded/log.jsonl"))
    record = RankRecord(args, rank, offload)
    checkpoint = ecb.Checkpoint(args.run_dir + "/ckpt_{epoch}.pth", recipe)
    stdout = open(f"{args.run_dir}/stdout{rank}.txt", "a")  # noqa: SIM115
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.Optimizer(opt),
            ecb.EpochMetricAvg("loss"),
            ecb.Throughput(),
            record,
            ecb.StdoutLogger(log_every=5, stream=stdout),
            ecb.JsonlWriter(args.run_dir + log),
            checkpoint,
        ]
    )
    if offload is not None:
        recipe.callbacks.add_callback(offload)
    if args.watchdog is not None:
        recipe.callbacks.add_callback(ecb.Watchdog(stall_s=args.watchdog, sample_s=0.1))

        def stop_when_another_rank_stalls(event: Stalled) -> None:
            if event.rank != 0:
                recipe.stop(f"rank {event.rank} stalled")

        recipe.bus.subscribe(stop_when_another_rank_stalls, types=[Stalled])
    if args.profile is not None:
        recipe.callbacks.add_callback(AskForAProfile(recipe, args.profile, at=14))
    if args.resume:
        found = load_latest(args.run_dir)
        assert found is not None, "nothing to resume"
        recipe.load_state_dict(found[1])
    recipe.run(total_epochs=1)  # two runs in one process: wrapping happens once
    recipe.run(total_epochs=args.epochs)
    with open(f"{args.run_dir}/rank{rank}.json", "w") as file:
        json.dump(
            {
                "world_size": world().size,
                "epoch_losses": record.epoch_losses,
                "saved": checkpoint.saved,
                "wrapped": type(recipe.model).__name__,
                "offload_child": record.offload_child,
            },
            file,
        )


if __name__ == "__main__":
    main()
