"""The ``evloop`` command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .bus import Subscriber

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evloop", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="train CrossEntropyClassification on an embedded data set"
    )
    demo.add_argument("--dataset", choices=["digits", "cifar10"], default="digits")
    demo.add_argument("--data-dir", default="data", help="where CIFAR-10 is (or goes)")
    demo.add_argument(
        "--epochs", type=int, default=None, help="default: 5 for digits, 30 for cifar10"
    )
    demo.add_argument("--run-dir", default=None, help="default: runs/<dataset>-<time>")
    demo.add_argument(
        "--serve", action="store_true", help="also serve the live dashboard (its URL is printed)"
    )

    attach = commands.add_parser(
        "attach", help="run a logger here on the events of a recipe served elsewhere"
    )
    attach.add_argument("url", help="ws://HOST:PORT of a recipe started with serve()")
    attach.add_argument("--token", default=None)
    attach.add_argument(
        "--to", nargs="+", required=True, metavar="LOGGER", help="stdout | jsonl FILE | visdom"
    )
    attach.add_argument("--env", default="main", help="visdom env (with --to visdom)")
    attach.add_argument("--log-every", type=int, default=10)
    attach.add_argument("--prefix", default="")
    return parser


def _logger(args: argparse.Namespace) -> Subscriber:
    from .loggers import JsonlWriter, StdoutLogger

    kind, *rest = args.to
    if kind == "stdout" and not rest:
        return StdoutLogger(log_every=args.log_every, prefix=args.prefix)
    if kind == "jsonl" and len(rest) == 1:
        return JsonlWriter(rest[0])
    if kind == "visdom" and not rest:
        from .loggers.visdom import VisdomLogger

        return VisdomLogger(args.env, log_every=args.log_every, prefix=args.prefix)
    raise SystemExit(
        f"evloop attach: --to takes `stdout`, `jsonl FILE` or `visdom`, not {' '.join(args.to)!r}"
    )


def _attach(args: argparse.Namespace) -> int:
    import anyio

    from .remote import attach

    logger = _logger(args)
    try:
        anyio.run(lambda: attach(args.url, [logger], token=args.token))
    except OSError as error:
        raise SystemExit(f"evloop attach: cannot reach {args.url}: {error}") from None
    except Exception as error:  # a refused handshake (token), a closed connection
        raise SystemExit(f"evloop attach: {error}") from None
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        epochs = args.epochs or (5 if args.dataset == "digits" else 30)
        run_demo(
            epochs=epochs,
            run_dir=args.run_dir,
            dataset=args.dataset,
            data_dir=args.data_dir,
            serve=args.serve,
        )
    elif args.command == "attach":
        return _attach(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
