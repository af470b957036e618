import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.checkpoint_io import load_latest

model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
x = torch.randn(1024, 20)
data = TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 1).long())  # 3 classes


def train_step(batch):  # called for each batch, already on the recipe's device
    x, y = batch
    loss = F.cross_entropy(model(x), y)
    loss.backward()  # the step computes its gradients; the Optimizer callback steps
    return {"loss": loss}  # outputs go to the shared state, on the device


recipe = Recipe(train_step, DataLoader(data, batch_size=64, shuffle=True))
recipe.register("model", model)  # saved in checkpoints, moved by recipe.to(...)
recipe.callbacks.add_callbacks(
    [
        ecb.Counter(),
        ecb.Optimizer(opt),
        ecb.EpochMetricAvg("loss"),
        ecb.StdoutLogger(log_every=-1),
        ecb.ProgressBar(),
        ecb.JsonlWriter("runs/quickstart/events.jsonl"),  # the run folder's event log
        ecb.Checkpoint("runs/quickstart/checkpoints/epoch_{epoch}.pth", recipe, max_saves=2),
    ]
)
recipe.run(total_epochs=3)

# Later, or in another process: continue from the newest checkpoint, up to 6 epochs.
recipe.load_state_dict(load_latest("runs/quickstart/checkpoints")[1])
recipe.run(total_epochs=6)
