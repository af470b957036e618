"""No silent mistakes: what a user gets told when a script is subtly wrong."""

import contextlib
import io
import time

import pytest
import torch
from torch import nn

import evloop.callbacks as ecb
import evloop.recipes as erp
from evloop import Recipe


def _batches(n=6):
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)
    ]


def _sgd():
    return torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)


@pytest.mark.parametrize(
    "loader, says",
    [
        ([], "the loader of 0 batches yielded no batch in epoch 0: list"),
        (
            torch.utils.data.DataLoader(range(3), batch_size=4, drop_last=True),
            "yielded no batch in epoch 0: DataLoader \\(drop_last=True with fewer samples",
        ),
    ],
    ids=["empty-list", "drop-last"],
)
def test_a_loader_that_yields_nothing_is_an_error_not_an_empty_run(loader, says):
    recipe = Recipe(lambda b: {"loss": torch.tensor(1.0)}, loader)
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.EpochMetricAvg("loss")])
    with pytest.raises(ValueError, match=says):
        recipe.run(2)


def test_a_forward_without_backward_warns_once_and_says_why():
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def forward(batch):
        x, y = batch
        return {"loss": nn.functional.cross_entropy(model(x), y)}  # no backward()

    recipe = Recipe(forward, _batches())
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.Optimizer(opt)])
    with pytest.warns(RuntimeWarning, match=r"loss\.backward\(\)") as caught:
        recipe.run(2)
    assert len([w for w in caught if "backward" in str(w.message)]) == 1


def test_an_average_of_a_key_that_never_appears_names_it_and_what_exists():
    recipe = Recipe(lambda b: {"loss": torch.tensor(1.0)}, range(4))
    recipe.callbacks.add_callback(ecb.EpochMetricAvg("lsos"))
    with pytest.warns(RuntimeWarning, match=r"state\['lsos'\].*'loss'") as caught:
        recipe.run(3)
    assert len(caught) == 1  # once, not every epoch


def test_skipped_evaluations_are_printed():
    model = nn.Linear(4, 3)

    def slow_test(batch, model):
        time.sleep(0.05)
        return {"loss": nn.functional.cross_entropy(model(batch[0]), batch[1])}

    recipe = erp.TrainAndTest(
        model, lambda b: {}, slow_test, _batches(30), _batches(3), test_every=2, checkpoint=None
    )
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        recipe.run(1)
    assert "test evaluation skipped at iteration" in printed.getvalue()


def _dict_batches(n=10):
    g = torch.Generator().manual_seed(0)
    return [
        {
            "pixels": torch.randn(8, 3, 8, 8, generator=g),
            "labels": torch.randint(0, 3, (8,), generator=g),
        }
        for _ in range(n)
    ]


def test_classification_takes_dict_batches_by_key(tmp_path):
    from evloop.demo import small_cnn

    recipe = erp.CrossEntropyClassification(
        small_cnn(3),
        _dict_batches(),
        _dict_batches(3),
        ["a", "b", "c"],
        input="pixels",
        target="labels",
        test_every=5,
        log_every=5,
        checkpoint=None,
    )
    with contextlib.redirect_stdout(io.StringIO()):
        state = recipe.run(1)
    assert 0 <= float(state["test_metrics"]["acc"]) <= 1
    assert "cm" in recipe.test_loop.state


def test_accuracy_on_a_dict_batch_says_which_key_to_give():
    recipe = Recipe(lambda b: {"pred": torch.randn(8, 3)}, _dict_batches(2))
    recipe.callbacks.add_callback(ecb.AccAvg())
    with pytest.raises(KeyError, match=r"batch\[1\].*keys \['labels', 'pixels'\].*target="):
        recipe.run(1)


@pytest.mark.parametrize("returned", [0, [], "loss", torch.tensor([1.0, 2.0])])
def test_a_forward_returning_something_else_than_a_dict_is_a_clear_error(returned):
    def forward_pass(batch):
        return returned

    with pytest.raises(TypeError, match="forward_pass must return a dict of outputs"):
        Recipe(forward_pass, range(2)).run(1)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: ecb.Optimizer(None), TypeError, "wraps a torch optimizer.*got NoneType"),
        (lambda: ecb.Optimizer(nn.Linear(2, 2)), TypeError, "got Linear"),
        (lambda: ecb.EpochMetricAvg(3), TypeError, "averages state\\[name\\], a str; got 3"),
    ],
)
def test_a_callback_given_the_wrong_kind_of_object_says_so_at_once(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_a_progress_bar_shows_a_single_metric_given_as_a_string():
    assert ecb.ProgressBar(metrics="loss").metrics == ("loss",)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: Recipe(3, []), TypeError, "forward function must be callable, got 3"),
        (lambda: Recipe(lambda b: {}, 5), TypeError, "loader must be iterable, got 5"),
        (lambda: Recipe(lambda b: {}, [1]).run("2"), TypeError, "epochs must be an int, got '2'"),
        (lambda: ecb.CallRecipe(3), TypeError, "runs a recipe .* got 3"),
        (lambda: ecb.LRSched(None), TypeError, "steps a learning-rate scheduler, got None"),
        (lambda: ecb.Checkpoint("ck_{epoch.pth", []), ValueError, "bad checkpoint name"),
        (lambda: ecb.Optimizer(_sgd(), clip_grad_norm=-1), ValueError, "clip_grad_norm must be"),
        (
            lambda: ecb.ExponentialMetricAvg("loss", beta=1.5),
            ValueError,
            r"beta must be in \[0, 1\)",
        ),
        (lambda: ecb.TopkAccAvg(k=0), ValueError, "k must be an int of at least 1, got 0"),
        (lambda: ecb.ConfusionMatrix([]), ValueError, "needs the names of at least 2 classes"),
        (
            lambda: erp.TrainAndTest(nn.Linear(2, 2), None, None, [], [], test_every=0),
            ValueError,
            "test_every must be 'epoch' or at least 1, got 0",
        ),
    ],
)
def test_bad_arguments_are_refused_before_any_training(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_a_checkpoint_name_asking_for_what_the_state_lacks_is_said_after_one_step(tmp_path):
    recipe = Recipe(lambda b: {}, range(3))
    checkpoint = ecb.Checkpoint(str(tmp_path / "ck_{epochh}.pth"), recipe)
    recipe.callbacks.add_callbacks([ecb.Counter(), checkpoint])
    with (
        pytest.warns(RuntimeWarning, match=r"asks for 'epochh'.*holds \['batch', 'epoch'"),
        pytest.raises(ValueError, match="asks for 'epochh'"),
    ):
        recipe.run(1)


def test_loading_what_does_not_fit_says_what_and_loads_nothing():
    model = nn.Linear(2, 2)
    recipe = Recipe(lambda b: {}, [1])
    recipe.register("model", model)
    before = model.weight.clone()
    with pytest.raises(TypeError, match="takes what state_dict.. made .a dict., got None"):
        recipe.load_state_dict(None)
    other = Recipe(lambda b: {}, [1])
    other.register("generator", nn.Linear(2, 2))
    with pytest.raises(KeyError, match=r"did not register: \['generator'\]"):
        recipe.load_state_dict(other.state_dict())
    with pytest.raises(KeyError, match=r"state dict has no \['model'\]"):
        recipe.load_state_dict({"progress": other.state_dict()["progress"]})
    assert torch.equal(model.weight, before)
    with pytest.raises(TypeError, match="a registered name is a str, got 3"):
        recipe.register(3, nn.Linear(2, 2))


def _with_evaluation(*callbacks, epochs=2):
    """A run of 3 epochs of 4 steps, evaluated at each epoch end into
    ``state['test_metrics']`` = {acc, loss}; ``callbacks`` after the evaluation."""
    test_loop = Recipe(lambda b: {"acc": torch.tensor(0.5), "loss": torch.tensor(1.0)}, range(2))
    test_loop.callbacks.add_callbacks([ecb.Log("acc", "acc"), ecb.Log("loss", "loss")])
    recipe = Recipe(lambda b: {"loss": torch.tensor(float(b))}, range(4))
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.EpochMetricAvg("loss"),
            ecb.CallRecipe(test_loop, "epoch", mode="inline", at_end=False),
            *callbacks,
        ]
    )
    recipe.run(epochs)
    return recipe


def _typo_warnings(caught):
    return [str(w.message) for w in caught if "(a typo?)" in str(w.message)]


@pytest.mark.parametrize(
    "make, says",
    [
        (
            lambda tmp: ecb.EarlyStopping("test_metrics.accuracy"),
            "EarlyStopping[test_metrics.accuracy] did nothing: state['test_metrics'] has no "
            "'accuracy'; it holds ['acc', 'loss']",
        ),
        (
            lambda tmp: ecb.EarlyStopping("val_metrics.acc"),
            "'val_metrics.acc' never appeared in the state during the run",
        ),
        (
            lambda tmp: ecb.Checkpoint(str(tmp / "ck_{iters}.pth"), {}, monitor="test_metrics.ac"),
            "state['test_metrics'] has no 'ac'; it holds ['acc', 'loss']",
        ),
    ],
    ids=["early-stopping-typo", "early-stopping-never-there", "checkpoint-monitor-typo"],
)
def test_a_watched_metric_that_is_misspelt_is_said_once(tmp_path, make, says):
    with pytest.warns(RuntimeWarning) as caught:
        _with_evaluation(make(tmp_path), epochs=3)
    assert len(_typo_warnings(caught)) == 1
    assert says in _typo_warnings(caught)[0]


def test_a_watched_metric_spelt_right_warns_nothing_and_works(tmp_path, recwarn):
    stopper = ecb.EarlyStopping("test_metrics.acc", patience=1, mode="max")
    checkpoint = ecb.Checkpoint(str(tmp_path / "ck_{iters}.pth"), {}, monitor="test_metrics.acc")
    recipe = _with_evaluation(stopper, checkpoint, epochs=5)
    assert not _typo_warnings(recwarn)
    assert recipe.callbacks.state["epoch"] == 1  # acc never improved after epoch 0
    assert checkpoint.best_file is not None


def test_a_plateau_scheduler_on_a_missing_metric_says_so_and_on_an_epoch_mean_steps():
    def plateau_run(metric, post_each_batch):
        opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
        recipe = Recipe(lambda b: {"loss": torch.tensor(1.0)}, range(4))
        recipe.callbacks.add_callbacks(
            [
                ecb.Counter(),
                ecb.EpochMetricAvg("loss", post_each_batch=post_each_batch),
                ecb.LRSched(sched, metric=metric),
            ]
        )
        recipe.run(3)
        return sched

    with pytest.warns(
        RuntimeWarning,
        match=r"did not step ReduceLROnPlateau: metrics has no "
        r"'los' this epoch; it holds \['loss'\] \(a typo\?\)",
    ):
        assert plateau_run("los", True).last_epoch == 0
    # an average posted at epoch ends only: the scheduler steps on it
    assert plateau_run("loss", False).last_epoch == 3
    assert plateau_run("loss", True).last_epoch == 3


def test_a_log_of_a_key_that_never_appears_says_so_unless_optional():
    recipe = Recipe(lambda b: {"loss": torch.tensor(1.0)}, range(3))
    recipe.callbacks.add_callbacks(
        [ecb.Counter(), ecb.Log("losss", "loss"), ecb.Log("imgs", "imgs", optional=True)]
    )
    with pytest.warns(RuntimeWarning) as caught:
        recipe.run(1)
    (warned,) = _typo_warnings(caught)
    assert warned.startswith("Log[losss → loss] did nothing: 'losss' never appeared")
    assert "'loss'" in warned  # what the state does hold


def test_class_names_that_do_not_match_the_predictions_are_named_at_the_first_batch():
    model = nn.Linear(4, 3)
    recipe = Recipe(lambda batch: {"pred": model(batch[0])}, _batches())
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.ConfusionMatrix(["cat", "dog"])])
    with pytest.raises(
        ValueError,
        match=r"2 class names \['cat', 'dog'\], but the predictions "
        r"\(state\['pred'\] of shape \(8, 3\)\) have 3 classes",
    ):
        recipe.run(1)
    assert recipe.progress.iters == 0  # at the first batch, not after an epoch


class _Images(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.zeros(3), 0


@pytest.mark.parametrize(
    ("call_fun", "loader", "message"),
    [
        (lambda b: {}, nn.Sequential(nn.Linear(2, 2)), r"got a model \(Sequential\).*register"),
        (lambda b: {}, _Images(), r"data set _Images: wrap it in a DataLoader"),
        (lambda b: {}, _sgd(), r"got an optimizer \(SGD\).*Optimizer\(opt\)"),
        (lambda b: {}, "data/train", r"got the str 'data/train': load the data first"),
        ([(1, 2)], lambda b: {}, r"must be callable.*the arguments are swapped"),
    ],
    ids=["model", "dataset", "optimizer", "path", "swapped"],
)
def test_a_recipe_given_the_wrong_kind_of_argument_names_the_fix(call_fun, loader, message):
    with pytest.raises(TypeError, match=message):
        Recipe(call_fun, loader)


def _raise_in_the_step(batch):
    return {"loss": batch[5]}


def test_an_error_in_the_step_is_shown_without_the_engines_frames():
    import traceback

    recipe = Recipe(_raise_in_the_step, [torch.ones(2)] * 2)
    with pytest.raises(IndexError) as caught:
        recipe.run(1)
    frames = traceback.extract_tb(caught.value.__traceback__)
    assert frames[-1].name == "_raise_in_the_step"  # it ends in the user's code
    engine = [f for f in frames if "/evloop/" in f.filename]
    assert [f.name for f in engine] == ["run"]  # one line: the run() that raised it
    assert "EVLOOP_TRACEBACK=full" in engine[0].line
    assert any("frames of evloop's training engine" in n for n in caught.value.__notes__)


def test_an_error_in_an_async_run_is_shown_without_the_engines_frames():
    import traceback

    import anyio

    recipe = Recipe(_raise_in_the_step, [torch.ones(2)] * 2)
    with pytest.raises(IndexError) as caught:
        anyio.run(recipe.arun, 1)
    frames = traceback.extract_tb(caught.value.__traceback__)
    assert frames[-1].name == "_raise_in_the_step"
    engine = [f.name for f in frames if "/evloop/" in f.filename]
    assert engine == ["arun"]  # anyio.run's frames above it are the app's own event loop


def test_evloop_traceback_full_keeps_every_frame(monkeypatch):
    import traceback

    monkeypatch.setenv("EVLOOP_TRACEBACK", "full")
    with pytest.raises(IndexError) as caught:
        Recipe(_raise_in_the_step, [torch.ones(2)]).run(1)
    frames = traceback.extract_tb(caught.value.__traceback__)
    assert any(f.filename.endswith("evloop/loop.py") for f in frames)


@pytest.mark.parametrize(
    ("metric", "says"),
    [
        ("los", "state has no 'los' at the epoch's end; it holds ['batch', 'epoch'"),
        ("acc", "(a typo?); 'metrics.acc' exists"),
    ],
)
def test_a_misspelt_early_stopping_metric_is_said_at_the_first_epochs_end(metric, says):
    import warnings

    said_before_epoch: list[int] = []

    class WhenSaid:
        def on_epoch_start(self, state):
            said_before_epoch.append(len(_typo_warnings(caught)))

    recipe = Recipe(lambda b: {"loss": torch.tensor(1.0)}, range(3))
    recipe.callbacks.add_callbacks(
        [ecb.Counter(), ecb.Log("loss", "acc"), ecb.EarlyStopping(metric), WhenSaid()]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recipe.run(3)
    assert said_before_epoch == [0, 1, 1]  # after the first epoch, not after the run
    assert len(_typo_warnings(caught)) == 1
    assert says in _typo_warnings(caught)[0]
