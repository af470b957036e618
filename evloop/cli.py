"""The ``evloop`` command: ``evloop demo``, ``evloop serve``, ``evloop attach``,
``evloop ctl``; ``evloop --version``."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import __version__
from ._cli_messages import connection_failure, failed, profile_summary
from .bus import Subscriber

__all__ = ["main"]

LOGGERS = "stdout | jsonl FILE | visdom"
RESCAN_S = 1.0  # how often `evloop serve` prints the runs that appeared


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be from 0 (any free port) to 65535, got {value}")
    return value


DESCRIPTION = """\
evloop demo      train a small model with a live dashboard (evloop demo --serve)
evloop serve     list, compare and replay runs from their folders (evloop serve runs/)
evloop attach    run loggers here on a served run's events
evloop ctl       steer a served run: pause, resume, stop, set lr=1e-4, profile …
evloop fork      a new run from a run's checkpoint, with settings changed

evloop COMMAND --help says more about each."""


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evloop", description=DESCRIPTION, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"evloop {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="train CrossEntropyClassification on an embedded data set"
    )
    demo.add_argument("--dataset", choices=["digits", "cifar10"], default="digits")
    demo.add_argument("--data-dir", default="data", help="where CIFAR-10 is (or goes)")
    demo.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="default: 5 for digits, 30 for cifar10; with --resume, what the run was asked",
    )
    where = demo.add_mutually_exclusive_group()
    where.add_argument(
        "--run-dir",
        default=None,
        help="default: runs/<dataset>-<time>; a used one gets a new folder inside",
    )
    where.add_argument("--resume", metavar="RUN_DIR", help="continue the run of that folder")
    demo.add_argument(
        "--serve",
        action="store_true",
        help="serve the live dashboard (its URL is printed) until Ctrl-C after training",
    )

    attach = commands.add_parser(
        "attach", help="run loggers here on the events of a recipe served elsewhere"
    )
    attach.add_argument("url", help="ws://HOST:PORT (or HOST:PORT) of a recipe's serve()")
    attach.add_argument("--token", default=None)
    attach.add_argument(
        "--to",
        nargs="+",
        action="append",
        required=True,
        metavar="LOGGER",
        help=f"{LOGGERS}; repeat --to for several",
    )
    attach.add_argument("--env", default="main", help="visdom env (with --to visdom)")
    attach.add_argument("--log-every", type=positive_int, default=10)
    attach.add_argument("--prefix", default="")
    attach.add_argument(
        "--retry-for",
        type=seconds,
        default=60.0,
        metavar="SECONDS",
        help="how long to keep reconnecting to a server that went away (default 60)",
    )
    served = commands.add_parser(
        "serve", help="serve runs from their folders (events.jsonl): list, compare, replay"
    )
    served.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="a run folder, a runs folder, or a live run's URL (as its serve() printed it)",
    )
    served.add_argument("--host", default="127.0.0.1")
    served.add_argument("--port", type=port_number, default=0, help="the runs page's port (0: any)")
    served.add_argument("--token", default=None)

    ctl = commands.add_parser("ctl", help="steer a served recipe: pause, set lr=1e-4 …")
    ctl.add_argument("url", help="ws://HOST:PORT (or HOST:PORT) of a recipe's serve()")
    ctl.add_argument(
        "op",
        choices=["pause", "resume", "stop", "checkpoint", "eval", "set", "profile"],
        help="the command",
    )
    ctl.add_argument("values", nargs="*", metavar="NAME=VALUE", help="with set: lr=1e-4 …")
    ctl.add_argument(
        "--steps", type=positive_int, default=20, help="with profile: how many steps (20)"
    )
    ctl.add_argument(
        "--all-ranks", action="store_true", help="with profile: every rank, not only rank 0"
    )
    ctl.add_argument("--token", default=None, help="the control token")
    ctl.add_argument("--timeout", type=seconds, default=60.0, metavar="SECONDS")
    forked = commands.add_parser(
        "fork",
        help="a new run folder from a run's checkpoint, with settings changed (--set lr=1e-4)",
        description="Make a new run folder that starts from a checkpoint of RUN_DIR with "
        "the settings changed; then run the training script pointed at it with "
        "resume='auto'. After --, a command to run then, {run_dir} replaced by the new "
        "folder: evloop fork runs/a --set lr=1e-4 -- python train.py --run-dir {run_dir}",
    )
    forked.add_argument("run_dir", metavar="RUN_DIR", help="the run to fork")
    forked.add_argument(
        "--from",
        dest="checkpoint",
        metavar="CHECKPOINT",
        help="a checkpoint file inside RUN_DIR (default: its newest that verifies)",
    )
    forked.add_argument(
        "--to", metavar="DIR", help="the new run folder (default: RUN_DIR-fork<step> beside it)"
    )
    forked.add_argument(
        "--set", nargs="+", default=[], metavar="NAME=VALUE", help="lr=1e-4 momentum=0.9 …"
    )
    for command, sub in commands.choices.items():  # its errors show its own usage
        sub.set_defaults(usage=sub, prog=f"evloop {command}")
    return parser


def _values(parser: argparse.ArgumentParser, words: list[str], op: str) -> dict[str, Any]:
    if (op == "set") != bool(words):
        parser.error("set takes NAME=VALUE settings; the other commands take none")
    values: dict[str, Any] = {}
    for word in words:
        name, equals, text = word.partition("=")
        if not equals or not name:
            parser.error(f"expected NAME=VALUE, got {word!r}")
        values[name] = _value(parser, name, text.strip())
    return values


def _value(parser: argparse.ArgumentParser, name: str, text: str) -> Any:
    """true, false, a whole number or a number (nan and inf too: the run's domains
    refuse them, naming the domain)."""
    if text in ("true", "false"):
        return text == "true"
    try:
        whole = int(text)
        if abs(whole) < 2**63:  # what the wire carries
            return whole
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        parser.error(f"{name}: {text!r} is not a number, true or false")


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .remote.follow import is_server_address
    from .remote.runlog import run_folders
    from .remote.runs import RunsServer

    folders = [p for p in args.paths if not is_server_address(p)]
    if folders and not run_folders(folders):
        parser.error(f"no run folder (with an events.jsonl) in {' '.join(folders)}")
    try:
        server = RunsServer(args.paths, args.host, args.port, args.token).start()
    except ValueError as error:  # an empty token, a host that is not one
        parser.error(str(error))
    except OSError as error:  # the address is taken, or not this machine's
        return failed("serve", f"cannot listen on {args.host} port {args.port}: {error}")
    try:
        count = len(server.index.runs)
        runs = "1 run" if count == 1 else f"{count} runs"
        print(f"evloop serve: {runs} at {server.url}", flush=True)
        shown = _print_new_runs(server, set())
        print("evloop serve: Ctrl-C to stop (new runs are listed as they appear)", flush=True)
        while True:  # the server rescans the paths itself
            time.sleep(RESCAN_S)
            shown = _print_new_runs(server, shown)
    except KeyboardInterrupt:
        return 0
    finally:
        server.close()


def _print_new_runs(server: Any, shown: set[str]) -> set[str]:
    listed = list(server.index.runs)
    for run_id in [r for r in listed if r not in shown]:
        print(f"evloop serve: {run_id} at {server.run_url(run_id)}", flush=True)
    return shown | set(listed)


def _ctl(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import anyio

    from .control import CommandError
    from .remote import control

    values = _values(parser, args.values, args.op)

    async def send() -> Any:
        async with control(args.url, args.token, args.timeout) as run:
            if args.op == "profile":
                return await run.profile(args.steps, "all" if args.all_ranks else "main")
            return await run.send(args.op, values)

    try:
        applied = anyio.run(send)
    except CommandError as error:  # refused, or failed in the run
        return failed("ctl", str(error))
    except ValueError as error:  # a URL that is not one
        parser.error(str(error))
    except TimeoutError as error:  # no hello (with a message), or not applied in time
        return failed("ctl", str(error) or f"not applied within {args.timeout:g} s")
    except Exception as error:
        return failed("ctl", connection_failure(args.url, error))
    if args.op == "profile":
        print(profile_summary(applied))
        return 0
    changes = ", ".join(f"{name} {old} → {new}" for name, (old, new) in applied.changes.items())
    print(f"evloop ctl: {args.op} applied" + (f": {changes}" if changes else ""))
    return 0


def _logger(words: list[str], args: argparse.Namespace) -> Subscriber | None:
    from .loggers import JsonlWriter, StdoutLogger

    kind, *rest = words
    if kind == "stdout" and not rest:
        return StdoutLogger(log_every=args.log_every, prefix=args.prefix, evaluations=True)
    if kind == "jsonl" and len(rest) == 1:
        return JsonlWriter(rest[0])
    if kind == "visdom" and not rest:
        from .loggers.visdom import VisdomLogger

        return VisdomLogger(args.env, log_every=args.log_every, prefix=args.prefix)
    return None


def _attach(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import anyio

    from .events import RunFinished
    from .remote import attach
    from .remote.client import RunEnded

    loggers = []
    for words in args.to:
        logger = _logger(words, args)
        if logger is None:
            parser.error(f"--to takes {LOGGERS}, not {' '.join(words)!r}")
        loggers.append(logger)
    try:
        end = anyio.run(
            lambda: attach(args.url, loggers, token=args.token, retry_for=args.retry_for)
        )
    except RunEnded as ended:
        print(f"evloop attach: {ended}", file=sys.stderr)
        return ended.exit_code
    except ValueError as error:  # a URL that is not one
        parser.error(str(error))
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        return failed("attach", connection_failure(args.url, error))
    if isinstance(end, RunFinished):
        how = "was stopped" if end.stopped else "finished"
        print(f"evloop attach: the run {how} in epoch {end.epoch + 1}, at iteration {end.iters}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    accuracy = run_demo(
        epochs=args.epochs,
        run_dir=args.run_dir,
        dataset=args.dataset,
        data_dir=args.data_dir,
        serve=args.serve,
        resume=args.resume,
        keep_serving=args.serve,
    )
    return 130 if accuracy is None else 0


def _fork(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import subprocess

    from .fork import ForkError, fork

    command = args.then
    if command and not any("{run_dir}" in word for word in command):
        parser.error("the command after -- must name the new folder as {run_dir}")
    settings = {}
    for word in args.set:
        name, equals, text = word.partition("=")
        if not equals or not name:
            parser.error(f"--set takes NAME=VALUE, got {word!r}")
        settings[name] = _value(parser, name, text.strip())
    try:
        made = fork(args.run_dir, settings, checkpoint=args.checkpoint, to=args.to)
    except ForkError as error:
        return failed("fork", str(error))
    except OSError as error:  # the new folder cannot be written
        return failed("fork", f"{error.filename or args.run_dir}: {error.strerror or error}")
    changed = ", ".join(f"{k}={v}" for k, v in made.settings.items()) or "no settings changed"
    print(
        f"evloop fork: {made.run_dir} starts from {made.source} (epoch {made.epoch}, "
        f"iteration {made.iters}), {changed}",
        flush=True,
    )
    if not command:
        print(
            "evloop fork: continue it with the run's script pointed at that folder, with "
            f"resume='auto' (a demo run: evloop demo --resume {made.run_dir})",
            flush=True,
        )
        return 0
    return subprocess.run([w.replace("{run_dir}", made.run_dir) for w in command]).returncode


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    then: list[str] = []
    if words[:1] == ["fork"] and "--" in words:  # the command to run after the fork
        at = words.index("--")
        words, then = words[:at], words[at + 1 :]
    args = _parser().parse_args(words)
    args.then = then
    if args.command == "fork":
        return _fork(args.usage, args)
    if args.command == "demo":
        return _demo(args)
    if args.command == "ctl":
        return _ctl(args.usage, args)
    if args.command == "serve":
        return _serve(args.usage, args)
    return _attach(args.usage, args)


if __name__ == "__main__":
    raise SystemExit(main())
