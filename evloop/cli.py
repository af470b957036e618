"""The ``evloop`` command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evloop", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train the demo job on the embedded digits")
    demo.add_argument("--epochs", type=int, default=5)
    demo.add_argument("--run-dir", default="runs/demo")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        run_demo(epochs=args.epochs, run_dir=args.run_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
