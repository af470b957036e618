"""Forking a run: a new run folder from a checkpoint with settings changed, its lineage,
and what is refused."""

import json
import os

import pytest
import torch
from helpers import forkable_run as train

from evloop.cli import main
from evloop.control import CommandError
from evloop.fork import ForkError, fork


@pytest.fixture
def parent(tmp_path):
    run = tmp_path / "runs" / "base"
    train(str(run), 3)
    return run


def _files(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_a_fork_continues_from_its_checkpoint_step_with_the_new_setting(parent):
    before = _files(parent)
    made = fork(parent, {"lr": 1e-4}, checkpoint=parent / "checkpoints" / "epoch_1.pth")
    assert made.run_dir == str(parent.with_name("base-fork7"))
    assert (made.iters, made.epoch, made.settings) == (7, 1, {"lr": 1e-4})
    saved = torch.load(made.checkpoint, weights_only=True)

    seen = []
    train(made.run_dir, 3, seen)  # the same script, pointed at the fork's folder
    first_iters, first_lr, first_weight = seen[0]
    assert first_iters == 8 and first_lr == pytest.approx(1e-4)  # the step after the fork's
    assert [s[0] for s in seen] == [8, 9, 10, 11]
    assert all(s[1] == pytest.approx(1e-4) for s in seen)
    assert torch.equal(first_weight, saved["model"]["weight"])  # the checkpoint's weights

    summary = json.loads((parent.with_name("base-fork7") / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["iters"] == 11
    lineage = summary["lineage"]
    assert (lineage["parent"], lineage["iters"], lineage["epoch"]) == ("base", 7, 1)
    assert lineage["checkpoint"] == os.path.join("checkpoints", "epoch_1.pth")
    assert lineage["settings"] == {"lr": 1e-4}
    events = [json.loads(line) for line in open(os.path.join(made.run_dir, "events.jsonl"))]
    assert events[0]["type"] == "run_started" and events[0]["iters"] == 7
    applied = events[1]  # the fork's settings, as a set command at its start
    assert (applied["type"], applied["client"], applied["iters"]) == ("command_applied", "fork", 7)
    assert applied["changes"] == {"lr": [pytest.approx(0.1), pytest.approx(1e-4)]}
    assert _files(parent) == before  # the parent's folder is only read
    # the fork point stays in the fork's folder; the rotation kept 2 of its own besides
    kept = sorted(p.name for p in (parent.with_name("base-fork7") / "checkpoints").iterdir())
    assert kept == ["epoch_1.pth", "epoch_2.pth"]


def test_under_a_schedule_the_fork_scales_it_as_set_does(tmp_path):
    parent = tmp_path / "runs" / "decayed"
    rates = []
    train(str(parent), 3, rates, schedule=True)
    made = fork(parent, {"lr": 1e-4}, checkpoint=parent / "checkpoints" / "epoch_1.pth")
    seen = []
    train(made.run_dir, 3, seen, schedule=True)
    parent_rates = {iters: lr for iters, lr, _ in rates}
    assert seen[0][1] == pytest.approx(1e-4)  # the new rate at its first step, then
    for iters, lr, _ in seen:  # the schedule's shape, scaled by as much
        assert lr == pytest.approx(parent_rates[iters] * 1e-4 / parent_rates[8])


def test_a_fork_without_a_checkpoint_starts_from_the_newest_and_chains(parent, tmp_path):
    made = fork(parent, {"momentum": 0.9}, to=tmp_path / "runs" / "child")
    assert made.iters == 11 and made.source.endswith("epoch_2.pth")
    seen = []
    train(made.run_dir, 4, seen)
    assert seen[0][0] == 12
    grandchild = fork(made.run_dir, {"lr": 0.05})
    assert grandchild.run_dir == str(tmp_path / "runs" / "child-fork15")
    lineage = json.loads((tmp_path / "runs" / "child-fork15" / "fork.json").read_text())
    assert lineage["parent"] == "child" and lineage["iters"] == 15
    first = json.loads((tmp_path / "runs" / "child-fork15" / "summary.json").read_text())
    assert first["status"] == "forked" and first["lineage"]["settings"] == {"lr": 0.05}


def _siblings(parent):
    return sorted(p.name for p in parent.parent.iterdir())


def test_a_checkpoint_outside_the_run_folder_is_refused(parent, tmp_path):
    other = tmp_path / "elsewhere.pth"
    other.write_bytes((parent / "checkpoints" / "epoch_2.pth").read_bytes())
    with pytest.raises(ForkError, match="is not inside the run folder"):
        fork(parent, {"lr": 1e-4}, checkpoint=other)
    with pytest.raises(ForkError, match="is not inside the run folder"):
        fork(parent, checkpoint=os.path.join(parent, "..", "..", "elsewhere.pth"))
    (parent / "checkpoints" / "link.pth").symlink_to(other)  # a link that leads out
    with pytest.raises(ForkError, match="is not inside the run folder"):
        fork(parent, checkpoint=parent / "checkpoints" / "link.pth")
    (parent / "checkpoints" / "link.pth").unlink()
    with pytest.raises(ForkError, match="no checkpoint file"):
        fork(parent, checkpoint="checkpoints/epoch_9.pth")
    with pytest.raises(ForkError, match="is a folder .* sharded checkpoints is not supported"):
        fork(parent, checkpoint=parent / "checkpoints")
    (parent / "weights.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ForkError, match="does not load"):
        fork(parent, checkpoint=parent / "weights.pth")
    torch.save({"weight": torch.ones(2)}, parent / "bare.pth")
    with pytest.raises(ForkError, match="holds no recipe state"):
        fork(parent, checkpoint=parent / "bare.pth")
    with pytest.raises(ForkError, match="not a run folder"):
        fork(tmp_path / "nowhere")
    with pytest.raises(ForkError, match="inside the run it forks"):
        fork(parent, to=parent / "child")
    assert _siblings(parent) == ["base"]  # nothing was written


def test_bad_settings_are_refused_as_set_refuses_them(parent):
    with pytest.raises(ForkError, match=r"lr must be a finite number in \[0, 10\]"):
        fork(parent, {"lr": -1.0})
    with pytest.raises(ForkError, match=r"no setting 'lrr' in base; settings: accumulation, lr"):
        fork(parent, {"lrr": 1e-4})
    with pytest.raises(ForkError, match="momentum must be a finite number in \\[0, 1\\)"):
        fork(parent, {"momentum": 1.0})
    with pytest.raises(ForkError, match="accumulation must be a whole number"):
        fork(parent, {"accumulation": 1.5})
    with pytest.raises(ForkError, match="must be a number, got nan"):
        fork(parent, {"lr": float("nan")})
    with pytest.raises(ForkError, match="must be a number, true or false"):
        fork(parent, {"lr": "1e-4"})
    assert _siblings(parent) == ["base"]


def test_a_run_that_recorded_no_domains_checks_the_fork_at_its_start(parent):
    summary = json.loads((parent / "summary.json").read_text())
    del summary["domains"]  # a run folder written before domains were recorded
    (parent / "summary.json").write_text(json.dumps(summary))
    made = fork(parent, {"bogus": 1.0})
    with pytest.raises(CommandError, match="the fork's setting 'bogus' is not a setting"):
        train(made.run_dir, 4)
    made = fork(parent, {"lr": 99.0})
    with pytest.raises(CommandError, match=r"the fork's settings: lr must be a finite number"):
        train(made.run_dir, 4)


def test_the_command_forks_and_runs_what_follows_with_the_new_folder(parent, capsys):
    marker = parent.parent / "ran.txt"
    code = "import sys; open(sys.argv[2], 'w').write(sys.argv[1])"
    assert main(["fork", str(parent), "--set", "lr=1e-4", "--", "python3", "-c", code,
                 "{run_dir}", str(marker)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "evloop fork: " in out and "(epoch 2, iteration 11), lr=0.0001" in out
    assert marker.read_text() == str(parent.with_name("base-fork11"))

    assert main(["fork", str(parent), "--from", "/etc/passwd"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("evloop fork: the checkpoint '/etc/passwd' is not inside the run")
    assert main(["fork", str(parent), "--set", "lr=-1"]) == 1
    assert "lr must be a finite number in [0, 10]" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["fork", str(parent), "--set", "lr=fast"])
    assert usage.value.code == 2
    assert "lr: 'fast' is not a number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fork", str(parent), "--", "python3", "train.py"])
    assert "must name the new folder as {run_dir}" in capsys.readouterr().err


@pytest.mark.slow
def test_the_demo_forked_by_the_command_trains_on_from_its_step_with_the_new_rate(tmp_path):
    """Real processes: `evloop demo`, `evloop fork`, `evloop demo --resume` of the fork."""
    import subprocess
    import sys

    cli = [sys.executable, "-m", "evloop.cli"]

    def run(*args):
        done = subprocess.run(
            [*cli, *args], capture_output=True, text=True, timeout=300, cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    run("demo", "--epochs", "2", "--run-dir", "runs/base")
    done = run(
        "fork", "runs/base", "--from", "runs/base/checkpoints/ckpt_44.pth", "--set", "lr=1e-3"
    )
    assert "base-fork44 starts from" in done.stdout
    run("demo", "--resume", "runs/base-fork44")
    child = tmp_path / "runs" / "base-fork44"
    events = [json.loads(line) for line in (child / "events.jsonl").open()]
    applied = [e for e in events if e["type"] == "command_applied"]
    assert [(e["client"], e["iters"]) for e in applied] == [("fork", 44)]
    assert applied[0]["changes"]["lr"][1] == pytest.approx(1e-3)
    steps = [e["iters"] for e in events if e["type"] == "batch_ended"]
    assert steps[0] == 45 and steps[-1] == 89
    first_rate = next(e["metrics"]["lr_0"] for e in events if e["type"] == "batch_ended")
    assert first_rate == pytest.approx(1e-3)  # and the schedule goes on from it
    summary = json.loads((child / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["lineage"]["parent"] == "base"
