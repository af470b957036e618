"""A job for the elastic-restart tests: ``torchrun --max-restarts N`` runs it again
after a worker dies, and it continues with ``resume='auto'`` (gloo on CPU).

usage: torchrun --nproc_per_node 2 --max-restarts 2 elastic_train.py RUN_DIR
       --strategy {ddp,fsdp} [--kill RANK:ITER ...] [--wait-for-sigterm-at ITER]
       [--reference]

Each ``--kill RANK:ITER`` SIGKILLs that rank in that step, once (a marker file in
RUN_DIR remembers it across restarts), once the checkpoint before it is on disk.
``--wait-for-sigterm-at ITER``: rank 0 writes RUN_DIR/waiting once in that step, then
waits there until a SIGTERM has stopped the run. Rank 0 writes the final full weights
to RUN_DIR/final.pt; with ``--reference``, the job then trains the same recipe again
from scratch, uninterrupted, and writes its weights to RUN_DIR/reference.pt.
"""

import argparse
import os
import signal
import time
from pathlib import Path

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.utils.data import DataLoader, TensorDataset

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.distributed import sampler, world


class Faults:
    """Test-only: the planted kills, each once, and the wait for the agent's SIGTERM."""

    def __init__(self, args, recipe) -> None:
        self.run_dir, self.recipe = Path(args.run_dir), recipe
        self.kills = [tuple(int(v) for v in kill.split(":")) for kill in args.kill]
        self.wait_at = args.wait_for_sigterm_at

    def on_batch_end(self, state) -> None:
        rank, iters = world().rank, state["iters"]
        for kill_rank, kill_at in self.kills:
            marker = self.run_dir / f"killed_{kill_rank}_{kill_at}"
            if (rank, iters) == (kill_rank, kill_at) and not marker.exists():
                self.wait_for_checkpoint(kill_at)
                marker.touch()
                os.kill(os.getpid(), signal.SIGKILL)
        waiting = self.run_dir / "waiting"
        if rank == 0 and iters == self.wait_at and not waiting.exists():
            waiting.touch()
            deadline = time.monotonic() + 60
            while not self.recipe.stop_requested and time.monotonic() < deadline:
                time.sleep(0.01)  # the SIGTERM handler runs in the main thread

    def wait_for_checkpoint(self, kill_at: int) -> None:
        """Until the last save before ``kill_at`` (every 5 steps) is complete: the kill
        then comes mid-epoch with a known newest checkpoint, whatever a save's speed."""
        saved_at = (kill_at + 1) // 5 * 5 - 1
        done = [
            self.run_dir / f"ckpt_{saved_at}.pth",
            self.run_dir / f"ckpt_{saved_at}" / ".metadata",
        ]
        deadline = time.monotonic() + 60
        while not any(path.exists() for path in done) and time.monotonic() < deadline:
            time.sleep(0.01)


def build(args, folder: str, faults: bool) -> Recipe:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(384, 16, generator=g), torch.randint(0, 4, (384,), generator=g)
    data = TensorDataset(x, y)
    loader = DataLoader(data, batch_size=16, sampler=sampler(data, shuffle=True))
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def forward_pass(batch, model):
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return {"loss": loss}

    recipe = Recipe(forward_pass, loader)
    recipe.register("model", model)
    recipe.register("opt", opt)
    if args.strategy == "fsdp":
        recipe.distributed(strategy="fsdp", blocks=(nn.Linear,))
        checkpoint = ecb.ShardedCheckpoint(folder + "/ckpt_{iters}", recipe, every=5)
    else:
        recipe.distributed()
        checkpoint = ecb.Checkpoint(folder + "/ckpt_{iters}.pth", recipe, every=5)
    recipe.callbacks.add_callbacks(
        [ecb.Counter(), ecb.Optimizer(opt), ecb.EpochMetricAvg("loss"), checkpoint]
    )
    if faults:
        recipe.callbacks.add_callback(Faults(args, recipe))
        if world().is_main:
            recipe.callbacks.add_callback(ecb.JsonlWriter(folder + "/log.jsonl"))
    return recipe


def save_weights(recipe: Recipe, path: str) -> None:
    full = get_model_state_dict(
        recipe.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if world().is_main:
        torch.save(full, path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--strategy", choices=("ddp", "fsdp"), default="ddp")
    parser.add_argument("--kill", action="append", default=[], help="RANK:ITER")
    parser.add_argument("--wait-for-sigterm-at", type=int, default=-1)
    parser.add_argument("--reference", action="store_true")
    args = parser.parse_args()
    recipe = build(args, args.run_dir, faults=True)
    recipe.run(total_epochs=3, resume="auto")
    save_weights(recipe, os.path.join(args.run_dir, "final.pt"))
    if args.reference:
        reference = build(args, os.path.join(args.run_dir, "reference"), faults=False)
        reference.run(total_epochs=3)
        save_weights(reference, os.path.join(args.run_dir, "reference.pt"))


if __name__ == "__main__":
    main()
