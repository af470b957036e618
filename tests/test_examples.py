"""The tutorial's samples, run as files in their own processes."""

import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"
TUTORIAL = sorted(p.name for p in EXAMPLES.glob("tutorial_*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("script", TUTORIAL)
def test_tutorial_sample_runs(script):
    env = dict(os.environ, EVLOOP_EXAMPLE_QUICK="1")
    result = subprocess.run(
        [sys.executable, script],
        cwd=EXAMPLES,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    if script.startswith("tutorial_4"):
        assert " | Ep. 0 It 1 | {'loss': " in result.stdout
        assert "final epoch loss:" in result.stdout
