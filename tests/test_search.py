"""Hyper-parameter search with the real libraries: an Optuna study pruning trials that
run two at a time in one process through arun, and Ray Train reporting metrics and
checkpoints (Ray Train's local mode: the training function in this process)."""

import asyncio
import copy
import json
import pathlib
import threading

import pytest
import torch
from torch import nn

import evloop.callbacks as ecb
import evloop.recipes as erp
from evloop.checkpoint_io import load

optuna = pytest.importorskip("optuna")

GOOD, BAD = 0.5, 1e-7  # learning rates: one learns, the other does not move
torch.manual_seed(0)
MODEL = nn.Linear(4, 3)
X = torch.randn(64, 4)
DATA = list(zip(X.split(8), (X[:, 0] > 0).long().add(X[:, 1] > 0.5).split(8), strict=True))


def _steps(model):
    """The training step of ``model`` and an evaluation step (of its snapshot)."""

    def train(batch):
        loss = nn.functional.cross_entropy(model(batch[0]), batch[1])
        loss.backward()
        return {"loss": loss}

    def test(batch, model):
        return {"loss": nn.functional.cross_entropy(model(batch[0]), batch[1])}

    return train, test


def _trial_recipe(trial, run_dir, barrier=None):
    """A small classifier whose learning rate the trial picks, evaluated every 4 steps."""
    model = copy.deepcopy(MODEL)  # every trial starts from the same weights
    opt = torch.optim.SGD(model.parameters(), lr=trial.suggest_categorical("lr", [GOOD, BAD]))
    train, test = _steps(model)
    recipe = erp.TrainAndTest(  # inline: every trial is evaluated at the same steps
        model, train, test, DATA, DATA[:2], test_every=4, checkpoint=None, test_mode="inline"
    )
    recipe.test_loop.callbacks.add_callback(ecb.EpochMetricAvg("loss"))
    pruning = ecb.OptunaPruning(trial, "test_metrics.loss")
    recipe.callbacks.add_callbacks(
        [ecb.Optimizer(opt), pruning, ecb.JsonlWriter(run_dir / "events.jsonl")]
    )
    if barrier is not None:

        class BothRunning:  # the two trials of a pair train at the same time
            def on_run_start(self, state):
                barrier.wait()

        recipe.callbacks.add_callback(BothRunning())
    return recipe, pruning


def test_an_optuna_study_prunes_trials_running_two_at_once_through_arun(tmp_path):
    study = optuna.create_study(
        direction="minimize", pruner=optuna.pruners.MedianPruner(n_startup_trials=2)
    )
    for lr in (GOOD, GOOD, BAD, GOOD, BAD, BAD, GOOD, BAD):
        study.enqueue_trial({"lr": lr})
    reported: dict[int, list] = {}

    async def one(barrier):
        trial = study.ask()
        recipe, pruning = _trial_recipe(trial, tmp_path / f"trial-{trial.number}", barrier)
        try:
            state = await recipe.arun(3)
        except optuna.TrialPruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, float(state["test_metrics"]["loss"]))
        finally:
            reported[trial.number] = pruning.reported

    async def search():
        for _ in range(4):  # two trials at once, four times
            barrier = threading.Barrier(2, timeout=60)
            await asyncio.wait_for(asyncio.gather(one(barrier), one(barrier)), 300)

    asyncio.run(search())

    states = {t.number: t.state for t in study.trials}
    pruned = sorted(n for n, s in states.items() if s == optuna.trial.TrialState.PRUNED)
    assert len(study.trials) == 8
    assert pruned == [2, 4, 5, 7]  # the trials that did not learn, and only those
    for number in range(8):
        steps = [step for step, _ in reported[number]]
        assert steps == sorted(steps) and all(s % 4 == 0 or s == 23 for s in steps)  # evaluations
        if number not in pruned:
            assert steps == [0, 4, 8, 12, 16, 20, 23]  # 23: the final weights, at the run's end
        trial = study.trials[number]
        assert trial.intermediate_values == dict(reported[number])
        summary = json.loads((tmp_path / f"trial-{number}" / "summary.json").read_text())
        assert summary["status"] == ("pruned" if number in pruned else "finished")
    assert max(len(reported[n]) for n in pruned) < min(len(reported[n]) for n in (0, 1, 3, 6))
    log = (tmp_path / "trial-2" / "events.jsonl").read_text().splitlines()
    end = json.loads(log[-1])
    assert end["type"] == "run_finished" and end["stopped"] and end["reason"] == "pruned"


def test_pruning_says_what_is_wrong_before_training():
    study = optuna.create_study(direction="minimize")
    trial = study.ask()
    with pytest.raises(ValueError, match="the study minimizes and test_metrics.acc improves"):
        ecb.OptunaPruning(trial, "test_metrics.acc", mode="max")
    with pytest.raises(ValueError, match="'test_metrics.loss'"):
        ecb.OptunaPruning(trial, "loss")
    recipe = erp.Recipe(lambda b: {"loss": torch.tensor(1.0)}, range(3))
    recipe.callbacks.add_callback(ecb.OptunaPruning(trial, "val_metrics.loss"))
    with pytest.raises(ValueError, match=r"has none: add CallRecipe\(test_loop, run_every, "):
        recipe.run(1)


def test_pruning_on_a_training_metric_reports_at_epoch_ends():
    study = optuna.create_study(direction="minimize")
    trial = study.ask()
    recipe = erp.Recipe(lambda b: {"loss": torch.tensor(float(b))}, range(4))
    pruning = ecb.OptunaPruning(trial, "metrics.loss")
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.EpochMetricAvg("loss"), pruning])
    recipe.run(2)
    assert pruning.reported == [(3, 1.5), (7, 1.5)]


@pytest.mark.slow
def test_ray_train_gets_each_evaluation_and_the_newest_checkpoint(tmp_path):
    pytest.importorskip("ray.train")
    import ray.train
    from ray.train.torch import TorchTrainer

    def train_func():
        model = copy.deepcopy(MODEL)
        opt = torch.optim.SGD(model.parameters(), lr=GOOD)
        train, test = _steps(model)
        recipe = erp.TrainAndTest(
            model, train, test, DATA, DATA[:2], test_every="epoch", checkpoint=None
        )
        recipe.test_loop.callbacks.add_callback(ecb.EpochMetricAvg("loss"))
        saved = ecb.Checkpoint(str(tmp_path / "ckpt" / "epoch_{epoch}.pth"), recipe, max_saves=2)
        report = ecb.RayReport(saved)
        recipe.callbacks.add_callbacks([ecb.Optimizer(opt), ecb.EpochMetricAvg("loss"), saved])
        recipe.callbacks.add_callback(report)  # after the Checkpoint: the epoch's file first
        recipe.run(3)
        return report.reports

    trainer = TorchTrainer(
        train_func,
        scaling_config=ray.train.ScalingConfig(num_workers=0),  # local mode
        run_config=ray.train.RunConfig(storage_path=str(tmp_path / "ray"), name="evloop"),
    )
    result = trainer.fit()
    assert result.error is None and result.return_value == 3  # one report per evaluation
    metrics = result.metrics
    assert metrics["epoch"] == 2 and metrics["iters"] == 23
    assert metrics["test/loss"] < 1.2 and "train/loss" in metrics
    with result.checkpoint.as_directory() as folder:
        (name,) = [p.name for p in pathlib.Path(folder).iterdir()]
        assert name == "epoch_2.pth"  # the newest file, the evaluated epoch's
        state = load(f"{folder}/{name}")
    assert state["progress"]["epoch"] == 2
    reported = list((tmp_path / "ckpt" / ".ray").iterdir())
    assert [p.name for p in reported] == ["epoch_2.pth"]  # the earlier ones went
