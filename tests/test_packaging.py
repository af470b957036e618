"""The wheel as a user installs it: its dashboard, and every module importable with the
declared dependencies alone (no dev extras, no source checkout)."""

import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("packaging")]

PUBLIC_MODULES = [
    "evloop",
    "evloop.bus",
    "evloop.callbacks",
    "evloop.checkpoint_io",
    "evloop.cli",
    "evloop.context",
    "evloop.distributed",
    "evloop.events",
    "evloop.host",
    "evloop.kinds",
    "evloop.lifecycle",
    "evloop.loggers",
    "evloop.loop",
    "evloop.mailbox",
    "evloop.optim",
    "evloop.recipe",
    "evloop.recipes",
    "evloop.remote",
    "evloop.remote.runs",
    "evloop.remote.replay",
    "evloop.reports",
    "evloop.utils",
]


def _closure(requirements):
    """The installed distributions these requirements need, transitively (markers for
    extras left out)."""
    seen, todo = {}, list(requirements)
    while todo:
        name = re.split(r"[ <>=!~;\[(]", todo.pop().strip(), maxsplit=1)[0]
        key = name.lower().replace("_", "-")
        if not name or key in seen:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # an optional need of a dependency, not installed
        seen[key] = dist
        todo += [r for r in dist.requires or [] if "extra ==" not in r]
    return seen.values()


def _view_of(dists, folder):
    """A folder holding only these distributions (links into this environment)."""
    folder.mkdir()
    for dist in dists:
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source = Path(str(dist.locate_file(top)))
            target = folder / top
            if source.exists() and not target.exists() and not top.endswith(".pth"):
                target.symlink_to(source)
    return folder


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh virtual environment with the wheel installed and, beside it, only the
    declared dependencies (and the demo extra's scikit-learn) of this environment."""
    work = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next(work.glob("evloop-*.whl"))
    env = work / "env"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    declared = importlib.metadata.requires("evloop")
    needed = [r for r in declared if "extra ==" not in r or 'extra == "demo"' in r]
    view = _view_of(_closure(needed), work / "dependencies")
    site = next((env / "lib").glob("python3*/site-packages"))
    (site / "dependencies.pth").write_text(str(view) + "\n")
    return wheel, python, work


def test_the_wheel_carries_the_dashboard(installed):
    import zipfile

    wheel, _, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    assets = ("index.html", "app.js", "notices.js", "insight.js", "runs.html", "runs.js")
    assets += ("charts.js", "style.css")
    for asset in (*assets, "uPlot.iife.min.js", "uPlot.min.css"):
        assert f"evloop/_dashboard/{asset}" in names


def test_every_public_module_imports_with_the_declared_dependencies_alone(installed):
    _, python, work = installed
    code = "; ".join(f"import {m}" for m in PUBLIC_MODULES)
    code += "; print(evloop.__file__)"
    result = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, cwd=work, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(work / "env") in result.stdout  # the wheel, not the source checkout
    # the dev environment has trio (and sniffio): the view must not
    trio = subprocess.run([str(python), "-c", "import trio"], capture_output=True, cwd=work)
    assert trio.returncode != 0


def test_evloop_demo_serve_outside_the_repo_serves_a_working_page(installed):
    _, python, work = installed
    command = [str(python), "-m", "evloop.cli", "demo", "--epochs", "1", "--serve"]
    command += ["--run-dir", str(work / "run")]
    demo = subprocess.Popen(
        command,
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "EVLOOP_DASHBOARD_DIR"},
    )
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = demo.stderr.readline()
            found = re.search(r"live dashboard at (\S+)", line)
            url = found.group(1) if found else None
        assert url, "the demo never printed its dashboard's URL"
        for path in ("", "static/app.js", "static/uPlot.iife.min.js", "static/style.css"):
            with urllib.request.urlopen(url.split("?")[0] + path, timeout=30) as response:
                assert response.status == 200
                body = response.read()
                assert body
        # after training the dashboard stays up until Ctrl-C
        for line in demo.stdout:
            if "stays up" in line:
                break
        with urllib.request.urlopen(url, timeout=30) as response:
            assert b"uPlot" in response.read()
        demo.send_signal(signal.SIGINT)
        assert demo.wait(30) == 0
    finally:
        demo.kill()


def test_the_readme_example_leaves_a_run_folder_that_evloop_serve_lists(installed):
    """The newcomer's first steps, from the wheel: the README's complete example, then
    the next command the README names, `evloop serve runs/`."""
    _, python, work = installed
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"## A complete example\n\n```python\n(.*?)```", readme, re.S)
    where = work / "readme"
    where.mkdir()
    (where / "example.py").write_text(example.group(1))
    ran = subprocess.run(
        [str(python), "example.py"], cwd=where, capture_output=True, text=True, timeout=300
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "Ep. 6/6 It 16 | loss=" in ran.stdout
    summary = json.loads((where / "runs" / "quickstart" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epoch"] == 5
    serve = subprocess.Popen(
        [str(python.parent / "evloop"), "serve", "runs/"],
        cwd=where,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        listed = None
        deadline = time.monotonic() + 60
        while listed is None and time.monotonic() < deadline:
            found = re.search(r"quickstart at (http://\S+)", serve.stdout.readline())
            listed = found.group(1) if found else None
        assert listed, "evloop serve runs/ did not list the README's run within 60 s"
        api = listed.split("/run/")[0] + "/api/runs"
        with urllib.request.urlopen(api, timeout=30) as response:
            runs = json.loads(response.read())
        assert "quickstart" in json.dumps(runs)
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(30)
