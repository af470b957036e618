"""Torchélie's own recipe and callback tests and its GAN example, ported with only the
package renamed (and tiny models and data), plus what its users import."""

import copy
import importlib
import io
import json
import math
import warnings
from contextlib import redirect_stdout

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

import evloop.callbacks as tcb
import evloop.optim
import evloop.recipes
from evloop.recipes import CrossEntropyClassification, Recipe, TrainAndCall
from evloop.recipes.gan import GANRecipe


class FakeData:
    def __len__(self):
        return 10

    def __getitem__(self, i):
        cls = 0 if i < 5 else 1
        return torch.randn(10) + cls * 3, cls


class FakeImg:
    def __len__(self):
        return 10

    def __getitem__(self, i):
        cls = 0 if i < 5 else 1
        return torch.randn(1, 4, 4) + cls * 3, cls


# -- Torchélie's tests/test_recipes.py -------------------------------------------------
def test_classification(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # its checkpoints go to ./model
    trainloader = DataLoader(FakeImg(), 4, shuffle=True)
    testloader = DataLoader(FakeImg(), 4, shuffle=True)

    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))

    clf_recipe = CrossEntropyClassification(model, trainloader, testloader, ["foo", "bar"])
    with redirect_stdout(io.StringIO()):
        clf_recipe.run(1)


def test_trainandcall(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = nn.Linear(10, 2)

    def train_step(batch):
        x, y = batch
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out, y)
        loss.backward()
        return {"loss": loss}

    def after_train():
        print("Yup.")
        return {}

    trainloader = DataLoader(FakeData(), 4, shuffle=True)
    trainer = TrainAndCall(model, train_step, after_train, trainloader)
    trainer.callbacks.add_callbacks([tcb.Optimizer(torch.optim.Adam(model.parameters(), lr=1e-3))])

    printed = io.StringIO()
    with redirect_stdout(printed):
        trainer.run(1)
    assert "Yup." in printed.getvalue()


def test_callbacks(tmp_path):
    def train(b):
        x, y = b
        return {"pred": torch.randn(y.shape[0])}

    m = nn.Linear(2, 2)

    r = Recipe(train, DataLoader(FakeImg(), 4))
    r.callbacks.add_callbacks(
        [
            tcb.Counter(),
            tcb.AccAvg(),
            tcb.Checkpoint(str(tmp_path / "m"), m),
            tcb.ClassificationInspector(1, ["1", "2"]),
            tcb.ConfusionMatrix(["one", "two"]),
            tcb.ImageGradientVis(),
            tcb.MetricsTable(),
        ]
    )
    r.run(1)
    assert (tmp_path / "m").exists() and "cm" in r.state["metrics"]


# -- Torchélie's examples/gan.py, tiny --------------------------------------------------
BS = 8


class Points(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        return torch.tensor([math.cos(i), math.sin(i)]), 0


def hinge_real(preds):
    return torch.relu(1 - preds).mean()


def hinge_fake(preds):
    return torch.relu(1 + preds).mean()


def test_the_gan_example_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    device = "cpu"
    dl = DataLoader(Points(), batch_size=BS, shuffle=True)

    G = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))  # noqa: N806
    G_polyak = copy.deepcopy(G).eval()  # noqa: N806
    D = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1))  # noqa: N806

    def G_fun(batch):  # noqa: N802
        z = torch.randn(BS, 4, device=device)
        fake = G(z)
        preds = D(fake * 2 - 1).squeeze()
        loss = -preds.mean()
        loss.backward()
        return {"loss": loss.item(), "imgs": fake.detach()}

    def G_polyak_fun(batch):  # noqa: N802
        z = torch.randn(BS, 4, device=device)
        fake = G_polyak(z)
        return {"imgs": fake.detach()}

    def D_fun(batch):  # noqa: N802
        z = torch.randn(BS, 4, device=device)
        fake = G(z)
        fake_loss = hinge_fake(D(fake * 2 - 1))
        fake_loss.backward()

        x = batch[0]

        real_loss = hinge_real(D(x * 2 - 1))
        real_loss.backward()

        loss = real_loss.item() + fake_loss.item()
        return {"loss": loss, "real_loss": real_loss.item(), "fake_loss": fake_loss.item()}

    loop = GANRecipe(G, D, G_fun, D_fun, G_polyak_fun, dl, log_every=100, test_every=10)
    loop = loop.to(device)
    loop.register("polyak", G_polyak)
    loop.G_loop.callbacks.add_callbacks(
        [
            tcb.Optimizer(evloop.optim.RAdamW(G.parameters(), lr=1e-4, betas=(0.0, 0.99))),
            tcb.Polyak(G, G_polyak),
        ]
    )
    loop.register("G_polyak", G_polyak)
    loop.callbacks.add_callbacks(
        [
            tcb.Log("batch.0", "x"),
            tcb.WindowedMetricAvg("real_loss"),
            tcb.WindowedMetricAvg("fake_loss"),
            tcb.Optimizer(evloop.optim.RAdamW(D.parameters(), lr=4e-4, betas=(0.0, 0.99))),
        ]
    )
    loop.test_loop.callbacks.add_callbacks([tcb.Log("imgs", "polyak_imgs")])
    before = copy.deepcopy(G_polyak.state_dict())
    # the example averages a key its G_fun never returns ('G_loss'): evloop says so
    with redirect_stdout(io.StringIO()), pytest.warns(RuntimeWarning, match="'G_loss'"):
        loop.to(device).run(2)

    assert loop.progress.iters == 15 and loop.G_loop.progress.iters == 15
    assert "real_loss" in loop.state["metrics"] and loop.G_loop.state["loss"] > -1e9
    assert loop.state["Test_metrics"]["polyak_imgs"].shape == (BS, 2)
    # the average moved, slowly: G's step happened, then Polyak followed it
    moved = [(before[k] - v).abs().max().item() for k, v in G_polyak.state_dict().items()]
    assert 0 < max(moved) < 1e-3
    saved = {p.name for p in (tmp_path / "model").iterdir()}
    assert saved == {"ckpt_0.pth", "ckpt_10.pth", "ckpt_15.pth"}  # after each test


# -- what Torchélie's users import ------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "name", "same_as"),
    [
        ("evloop.recipes.gan", "GANRecipe", evloop.recipes.GANRecipe),
        ("evloop.recipes.recipebase", "Recipe", evloop.recipes.Recipe),
        ("evloop.recipes.trainandtest", "TrainAndTest", evloop.recipes.TrainAndTest),
        ("evloop.recipes.trainandcall", "TrainAndCall", evloop.recipes.TrainAndCall),
        ("evloop.callbacks.avg", "WindowedMetricAvg", tcb.WindowedMetricAvg),
        ("evloop.lr_scheduler", "CosineDecay", None),
        ("evloop.utils", "load_state_dict_forgiving", None),
        ("evloop.optim", "Lookahead", None),
    ],
)
def test_torchelie_module_paths(path, name, same_as):
    found = getattr(importlib.import_module(path), name)
    assert same_as is None or found is same_as


def _steps(opt_factory, steps=4):
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(3, 2))
    opt = opt_factory([w])
    grads = [torch.randn(3, 2) for _ in range(steps)]
    for g in grads:
        w.grad = g.clone()
        opt.step()
    return w.detach(), grads


def test_adabelief_equals_its_equations():
    lr, (b1, b2), eps, wd = 0.1, (0.9, 0.999), 1e-8, 1e-2
    got, grads = _steps(lambda p: evloop.optim.AdaBelief(p, lr=lr, weight_decay=wd))
    torch.manual_seed(0)
    w = torch.randn(3, 2)
    m, s = torch.zeros_like(w), torch.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * (g - m) ** 2 + eps
        w = w * (1 - lr * wd)
        w = w - lr * (m / (1 - b1**t)) / ((s / (1 - b2**t)).sqrt() + eps)
    assert torch.allclose(got, w, atol=1e-6)


def test_lookahead_equals_its_equations():
    lr, alpha, k = 0.5, 0.5, 2
    got, grads = _steps(
        lambda p: evloop.optim.Lookahead(torch.optim.SGD(p, lr=lr), alpha=alpha, k=k), steps=5
    )
    torch.manual_seed(0)
    fast = torch.randn(3, 2)
    slow = fast.clone()
    for step, g in enumerate(grads, start=1):
        fast = fast - lr * g
        if step % k == 0:
            slow = slow + alpha * (fast - slow)
            fast = slow.clone()
    assert torch.allclose(got, fast, atol=1e-6)


def test_lookahead_saves_and_loads_both_optimizers():
    w = nn.Parameter(torch.randn(2))
    opt = evloop.optim.Lookahead(torch.optim.Adam([w]), k=3)
    w.grad = torch.ones(2)
    opt.step()
    other = evloop.optim.Lookahead(torch.optim.Adam([w]), k=3)
    other.load_state_dict(opt.state_dict())
    assert other.state[w]["la_steps"] == 1 and other.optimizer.state[w]["step"] == 1


def _cosine_decay_rates(steps):
    """The rate CosineDecay(total_iters=100, warmup_ratio=0.1) gives at each step."""
    from evloop.lr_scheduler import CosineDecay

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = CosineDecay(opt, total_iters=100, warmup_ratio=0.1)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_cosine_decay_warms_up_then_decays():
    lrs = _cosine_decay_rates(101)
    assert lrs[0] == 0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.5) and lrs[100] == pytest.approx(0.0, abs=1e-9)


def test_freeze_unfreeze_and_forgiving_loads():
    from evloop.utils import freeze, load_state_dict_forgiving, unfreeze

    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4))
    assert freeze(net) is net and not any(p.requires_grad for p in net.parameters())
    assert all(p.requires_grad for p in unfreeze(net).parameters())
    other = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 5))
    report = load_state_dict_forgiving(net, {**other.state_dict(), "extra": torch.ones(1)})
    assert report == {"dst_only": set(), "state_only": {"extra"}, "failed": {"1.weight", "1.bias"}}
    assert torch.equal(net[0].weight, other[0].weight)


@pytest.mark.slow
def test_parallel_run_spawns_a_process_group():
    from evloop.utils import parallel_run

    assert parallel_run(_all_reduce_ranks, 10, n_gpus=2) == 21.0


def _all_reduce_ranks(base, rank, world_size):
    import torch.distributed as dist

    value = torch.tensor(float(base + rank))
    dist.all_reduce(value)
    return value.item()


def test_optimizer_takes_torchelies_positional_order():
    w = nn.Parameter(torch.tensor([[1.0, 3.0], [2.0, 6.0]]))
    opt = torch.optim.SGD([w], lr=1.0)
    callback = tcb.Optimizer(opt, 1, None, True, True)  # accumulation, clip, centralize, log_lr
    assert callback.centralize_grad and callback.log_lr

    recipe = Recipe(lambda b: (w * torch.tensor([[1.0, 2.0], [3.0, 4.0]])).sum().backward(), [0])
    recipe.callbacks.add_callbacks([callback])
    recipe.run(1)
    # centralized gradient rows: [1, 2] - 1.5 and [3, 4] - 3.5
    assert torch.allclose(w, torch.tensor([[1.5, 2.5], [2.5, 5.5]]))
    assert recipe.state["metrics"]["lr_0"] == 1.0


def test_confusion_matrix_normalize_and_metrics_table_epoch_ends():
    batches = [(torch.zeros(4, 1), torch.tensor([0, 0, 1, 1]))]

    def forward(batch):
        return {"pred": torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])}

    recipe = Recipe(forward, batches)
    recipe.callbacks.add_callbacks(
        [tcb.ConfusionMatrix(["a", "b"], normalize=True), tcb.MetricsTable(False, epoch_ends=False)]
    )
    recipe.run(1)
    html = recipe.state["metrics"]["cm"].render()
    assert ">0.67<" in html and ">0.33<" in html  # row fractions, not counts
    assert "table" not in recipe.state["metrics"]


def test_register_a_name_already_set_on_the_recipe():
    d_loop, g_loop = Recipe(lambda b: None, [1]), Recipe(lambda b: None, [1])
    d_loop.G_loop = g_loop
    d_loop.register("G_loop", g_loop)  # Torchélie's own pattern
    with pytest.raises(ValueError, match="hide Recipe.run"):
        d_loop.register("run", g_loop)


def test_call_recipe_accepts_anything_with_run():
    class Sampler:
        calls = 0

        def run(self, epochs):
            self.calls += 1
            return {"metrics": {"quality": 0.5}}

    sampler = Sampler()
    recipe = Recipe(lambda b: None, range(6))
    recipe.callbacks.add_callbacks([tcb.Counter(), tcb.CallRecipe(sampler, 2, prefix="s")])
    recipe.run(1)
    assert sampler.calls == 4 and recipe.state["s_metrics"] == {"quality": 0.5}  # 0 2 4 5


def test_visdom_logger_without_an_env_is_silent():
    recipe = Recipe(lambda b: {"loss": torch.tensor(1.0)}, range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recipe.callbacks.add_callbacks([tcb.Log("loss", "loss"), tcb.VisdomLogger(visdom_env=None)])
        recipe.run(1)


def test_train_and_call_is_positional_like_torchelies(tmp_path):
    model = nn.Linear(2, 2)
    calls = []
    recipe = TrainAndCall(model, lambda b: None, lambda: calls.append(1), range(4), 2, None, None)
    recipe.run(1)
    assert len(calls) == 3  # iterations 0 and 2, and the final weights


def _torchelie_checkpoint(model, opt, counter):
    """What Torchélie's Recipe.state_dict() holds: modules, then the callbacks runner's
    state with callbacks named <Class>_<phase>_<index>, and no progress."""
    return {
        "model": model.state_dict(),
        "callbacks": {
            "state": {"metrics": {"loss": 0.5}, **counter},
            "callbacks": {
                "Counter_prologue_0": dict(counter),
                "Optimizer_middle_0": {
                    "opt": opt.state_dict(),
                    "accumulation": 1,
                    "log_lr": False,
                    "log_mom": False,
                    "clip_grad_norm": None,
                    "centralize_grad": False,
                    "grad_multiplier": 1,
                    "scaler": None,
                },
                "EpochMetricAvg_middle_0": {"name": "loss", "post_each_batch": True, "avg": {}},
            },
        },
    }


def _resumable(model, opt, batches):
    def forward(batch):
        loss = model(batch).sum()
        loss.backward()
        return {"loss": loss}

    recipe = Recipe(forward, batches)
    recipe.register("model", model)
    recipe.callbacks.add_prologue(tcb.Counter())
    recipe.callbacks.add_callbacks([tcb.Optimizer(opt), tcb.EpochMetricAvg("loss")])
    return recipe


def test_a_torchelie_checkpoint_resumes_where_it_stopped():
    model = nn.Linear(2, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.ones(1, 2)).sum().backward()
    opt.step()  # some optimizer state to carry over
    saved = _torchelie_checkpoint(model, opt, {"epoch": 1, "iters": 7, "epoch_batch": 4})

    fresh = nn.Linear(2, 1)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.1)
    recipe = _resumable(fresh, fresh_opt, [torch.ones(1, 2)] * 4)
    with pytest.warns(UserWarning, match="EpochMetricAvg_middle_0"):
        recipe.load_state_dict(saved)
    assert torch.equal(fresh.weight, model.weight)
    assert fresh_opt.state_dict()["state"][0]["step"] == 1
    assert (recipe.progress.epoch, recipe.progress.iters, recipe.progress.epoch_done) == (
        1,
        7,
        True,
    )
    recipe.run(1)
    assert (recipe.progress.epoch, recipe.progress.iters) == (2, 11)


def test_a_torchelie_checkpoint_without_counters_is_an_error():
    model = nn.Linear(2, 1)
    opt = torch.optim.Adam(model.parameters())
    saved = _torchelie_checkpoint(model, opt, {})
    del saved["callbacks"]["callbacks"]["Counter_prologue_0"]
    recipe = _resumable(nn.Linear(2, 1), torch.optim.Adam(model.parameters()), [1])
    recipe.callbacks.cbs[0].clear()  # no Counter here either
    with pytest.raises(ValueError, match="restart training from zero"):
        recipe.load_state_dict(saved)


def test_add_sign_equals_its_equations():
    lr, beta, wd = 0.1, 0.9, 1e-2
    got, grads = _steps(lambda p: evloop.optim.AddSign(p, lr=lr, beta=beta, weight_decay=wd))
    torch.manual_seed(0)
    w = torch.randn(3, 2)
    m = torch.zeros_like(w)
    for g in grads:
        m = beta * m + (1 - beta) * g
        w = w - lr * (1 + torch.sign(g) * torch.sign(m)) * g
        w = w - lr * wd * w
    assert torch.allclose(got, w, atol=1e-6)


def test_deep_dream_optim_equals_its_equations():
    lr, eps, wd = 0.1, 1e-8, 1e-2
    got, grads = _steps(lambda p: evloop.optim.DeepDreamOptim(p, lr=lr, eps=eps, weight_decay=wd))
    torch.manual_seed(0)
    w = torch.randn(3, 2)
    for g in grads:
        w = w * (1 - lr * wd)
        w = w - lr * g / (eps + g.abs().mean())
    assert torch.allclose(got, w, atol=1e-6)


def test_torchelies_optimizer_tests_run_after_a_star_import_alone():
    namespace: dict = {}
    exec(  # Torchélie's tests/test_optims.py: torch comes from the star import
        "from evloop.optim import *\n"
        "a = torch.randn(5, requires_grad=True)\n"
        "for make in (DeepDreamOptim, AddSign, RAdamW, AdaBelief):\n"
        "    opt = make([a])\n"
        "    a.mean().backward()\n"
        "    opt.step()\n"
        "opt = Lookahead(AdaBelief([a]))\n"
        "assert isinstance(opt, Optimizer)\n",
        namespace,
    )
    assert torch.isfinite(namespace["a"]).all()


def test_cosine_decay_past_its_total_goes_on_as_torchelies():
    lrs = _cosine_decay_rates(200)
    # Torchélie's formula, unclamped: the cosine climbs back after total_iters
    expected = [0.5 * (math.cos((t - 10) / 90 * math.pi) + 1) for t in range(10, 200)]
    assert lrs[10:] == pytest.approx(expected, abs=1e-9)
    assert lrs[100] == pytest.approx(0.0, abs=1e-9) and lrs[145] == pytest.approx(0.5)
    assert lrs[190] == pytest.approx(1.0)


def test_forgiving_load_fits_the_shared_part_like_torchelie():
    from evloop.utils import load_state_dict_forgiving

    small = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))  # a checkpoint for 2 classes
    big = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 5))  # the model now has 5
    before = big[1].weight.detach().clone()
    report = load_state_dict_forgiving(
        big, {**small.state_dict(), "0.weight": torch.ones(3)}, fit_dst_size=True
    )
    assert report["failed"] == {"0.weight"}  # another number of dimensions
    assert torch.equal(big[1].weight[:2], small[1].weight)  # the shared rows loaded
    assert torch.equal(big[1].weight[2:], before[2:])  # the rest untouched
    assert torch.equal(big[1].bias[:2], small[1].bias)
    shrunk = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 1))
    load_state_dict_forgiving(shrunk, big.state_dict(), fit_dst_size=True, silent=True)
    assert torch.equal(shrunk[1].weight, big[1].weight[:1])


def test_a_recipes_visdom_logger_is_where_torchelie_scripts_find_it(tmp_path):
    """A Torchélie script gives the test loop's VisdomLogger a client of its own
    through ``callbacks.cbs[-1][0].vis``: the windows go where that client says."""
    visdom = pytest.importorskip("visdom")
    from visdom_server import free_port, visdom_server

    model = nn.Linear(2, 2)
    data = [(torch.randn(4, 2), torch.randint(0, 2, (4,))) for _ in range(3)]

    def test_fun(batch):
        return {"loss": nn.functional.cross_entropy(model(batch[0]), batch[1])}

    recipe = evloop.recipes.TrainAndTest(
        model, lambda b: {}, test_fun, data, data, visdom_env="main", checkpoint=None
    )
    recipe.test_loop.callbacks.add_callback(tcb.EpochMetricAvg("loss"))
    assert isinstance(recipe.callbacks.cbs[-1][0], tcb.VisdomLogger)
    assert isinstance(recipe.test_loop.callbacks.cbs[-1][0], tcb.VisdomLogger)
    port = free_port()
    with visdom_server(port, str(tmp_path)):
        own = visdom.Visdom(
            server="http://127.0.0.1", port=port, env="own_env", use_incoming_socket=False
        )
        recipe.test_loop.callbacks.cbs[-1][0].vis = own
        recipe.callbacks.cbs[-1][0].vis = own
        recipe.run(1)
        window = json.loads(own.get_window_data("test_loss", "own_env"))
    assert window["type"] == "plot"  # a line, sent through the script's own client


def test_without_visdom_the_logger_there_says_how_to_get_one():
    model = nn.Linear(2, 2)
    recipe = evloop.recipes.TrainAndTest(
        model, lambda b: {}, lambda b: {}, [1], [1], checkpoint=None
    )
    with pytest.raises(AttributeError, match=r"no visdom client.*visdom_env=.*add_epilogue"):
        recipe.test_loop.callbacks.cbs[-1][0].vis = object()
