"""The tutorial's samples, run as files in their own processes (two at a time: each is
mostly a Python start-up importing torch, and the machine has cores to spare)."""

import concurrent.futures
import os
import pathlib
import re
import subprocess
import sys

import pytest

# one worker runs this module: its module-scoped fixture is made once
pytestmark = pytest.mark.xdist_group("examples")

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"
SERVERS = {"training_service.py"}  # they run until stopped: see test_service.py
SCRIPTS = sorted(
    p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_") and p.name not in SERVERS
)


def _run(script: str, where: pathlib.Path) -> subprocess.CompletedProcess:
    # run where they may write (checkpoints, logs), with the examples importable
    where.mkdir()
    path = os.pathsep.join([str(EXAMPLES), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, EVLOOP_EXAMPLE_QUICK="1", PYTHONPATH=path)
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Every example's outcome and folder, run two at a time."""
    folders = {script: tmp_path_factory.mktemp("example") / "run" for script in SCRIPTS}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {s: pool.submit(_run, s, folder) for s, folder in folders.items()}
        return {s: (future.result(), folders[s]) for s, future in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs(script, ran):
    result, folder = ran[script]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    if script.startswith("tutorial_4"):
        assert re.search(r"^Ep\. 1/\d+ It 1 \| loss=", result.stdout, re.M)
        assert "final epoch loss:" in result.stdout
    if script.startswith(("tutorial_5", "tutorial_6")):
        assert "Test | Ep. 1 It " in result.stdout
        assert "test loss:" in result.stdout
    if script.startswith(("tutorial_7", "tutorial_8")):
        assert "Test | Ep. 1 It 1 " in result.stdout
        assert "test accuracy:" in result.stdout
    if script == "quickstart.py":
        assert "Ep. 6/6 It 16 | loss=" in result.stdout
        checkpoints = folder / "runs" / "quickstart" / "checkpoints"
        assert sorted(os.listdir(checkpoints)) == ["epoch_4.pth", "epoch_5.pth"]
        assert (folder / "runs" / "quickstart" / "summary.json").exists()
    if script.startswith("train_and_test_concurrent"):
        assert "test accuracy:" in result.stdout
