"""The public API as users import it: top-level names, star imports without extras."""

import subprocess
import sys
import textwrap

import evloop
import evloop.callbacks

# the extras' packages, made unimportable (as when they are not installed)
WITHOUT_EXTRAS = "import sys\nfor name in ('visdom', 'tensorboard', 'mlflow', 'wandb'):\n" + (
    "    sys.modules[name] = None\n"
)


def test_the_top_level_exports_the_user_facing_names_only():
    assert set(evloop.__all__) == {
        "Recipe",
        "RecipeBase",
        "Subscriber",
        "callbacks",
        "context",
        "events",
        "optim",
        "recipes",
        "utils",
    }
    for name in evloop.__all__:
        assert getattr(evloop, name).__doc__, f"evloop.{name} has no docstring"


def test_completion_offers_the_public_names_only():
    import evloop.loop  # noqa: F401  (an implementation module, now an attribute too)
    import evloop.remote

    for package in (evloop, evloop.remote):
        public = {name for name in dir(package) if not name.startswith("_")}
        assert public == set(package.__all__), package.__name__


def test_every_exported_callback_has_a_docstring():
    undocumented = [
        name
        for name in evloop.callbacks.__all__
        if name not in evloop.callbacks.LAZY and not getattr(evloop.callbacks, name).__doc__
    ]
    assert undocumented == []


def test_a_star_import_works_without_the_extras_and_a_logger_needing_one_says_which():
    script = WITHOUT_EXTRAS + textwrap.dedent(
        """
        from evloop.callbacks import *
        from evloop.recipes import *
        from evloop import *
        assert Optimizer and StdoutLogger and TrainAndTest and Recipe
        try:
            VisdomLogger(visdom_env="x")
        except ImportError as error:
            print("refused:", error)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "refused:" in done.stdout and "visdom" in done.stdout


def test_sending_a_command_never_imports_torch():
    """``evloop ctl`` and the Python control client start at once: no torch import."""
    for code in ("import evloop.cli", "import evloop.remote as r; r.control"):
        probe = f"{code}; import sys; print('torch' in sys.modules)"
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        assert out.stdout.strip() == "False", (code, out.stderr[-2000:])
