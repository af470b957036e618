"""A training process for the crash tests: checkpoints, a lossless event log, resume.

usage: train_process.py CKPT_DIR JSONL --width W --every N --step-sleep S [--resume]
       [--auto-resume] [--signals SIGTERM,SIGUSR1] [--grace S] [--sleep-at ITER]
"""

import argparse
import os
import time

import torch
from torch import nn

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.checkpoint_io import load_latest
from evloop.preemption import Preemption


def build(args):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(args.width, args.width), nn.Linear(args.width, 2))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    data = [(torch.randn(4, args.width), torch.randint(0, 2, (4,))) for _ in range(50)]

    def forward(batch):
        time.sleep(args.step_sleep)
        if recipe.progress.iters == args.sleep_at:
            with open(os.path.join(os.path.dirname(args.jsonl), "stuck"), "w"):
                pass  # for the test: the step has begun
            time.sleep(60)  # a step that outlasts any grace period
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return {"loss": loss}

    recipe = Recipe(forward, data)
    recipe.register("model", model)
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.Optimizer(opt),
            ecb.EpochMetricAvg("loss"),
            ecb.JsonlWriter(args.jsonl, batch_starts=True),
            ecb.Checkpoint(
                args.ckpt_dir + "/ckpt_{iters}.pth", recipe, max_saves=3, every=args.every
            ),
        ]
    )
    return recipe


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("ckpt_dir")
    parser.add_argument("jsonl")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument("--step-sleep", type=float, default=0.0)
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--auto-resume", action="store_true")
    parser.add_argument("--signals", default="SIGTERM")
    parser.add_argument("--grace", type=float, default=25.0)
    parser.add_argument("--sleep-at", type=int, default=-1)
    args = parser.parse_args()
    recipe = build(args)
    recipe.preemption = Preemption(signals=tuple(args.signals.split(",")), grace_s=args.grace)
    if args.resume:
        path, state = load_latest(args.ckpt_dir)
        recipe.load_state_dict(state)
        print("resumed from", path, "at iteration", recipe.progress.iters, flush=True)
    recipe.run(total_epochs=args.epochs, resume="auto" if args.auto_resume else None)
    print("finished at iteration", recipe.progress.iters, flush=True)


if __name__ == "__main__":
    main()
